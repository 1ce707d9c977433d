"""The evidence log p(x) of any model with a prior/likelihood split (or a fitted q to start from),
with a standard error, and the bounds around it: ELBO ≤ IWAE_K ≤ log p(x) ≤ reverse AIS.

* ``smc``: sequential Monte Carlo with adaptive tempering (:mod:`elbox.evidence.smc`);
* ``ais``: annealed importance sampling (:mod:`elbox.evidence.ais`), and where the model has
  exact posterior draws, reverse AIS for an upper bound;
* ``iwae``: importance sampling from a fitted q (:mod:`elbox.evidence.importance`), with the
  importance-weighted bounds IWAE_K and the Pareto k̂ that says whether to trust it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from elbox import checks
from elbox.errors import ModelError, NoPriorLikelihoodSplit, SettingsError
from elbox.estimate import Estimate, log_mean_exp, log_mean_of_log_normal
from elbox.evidence import ais, importance, smc, tempering
from elbox.evidence import progress as stage_progress
from elbox.evidence.results import EvidenceResults

METHODS = ("smc", "ais", "iwae")
DEFAULTS = {
    "smc": {"particles": 1000, "runs": 8, "moves": 10},
    "ais": {"particles": 1000, "steps": 500, "moves": 1},
    "iwae": {"particles": 100_000},
}
IWAE_SIZES = (1, 10, 100, 1000)
ESS_WARNING_FRACTION = 0.01
# Above this spread (sd of the runs' log Ẑ) the runs' Ẑ are skewed enough that a handful of them
# understates the error: on gaussian_evidence_100d from the prior, runs spread by 0.19-0.61 nats
# gave z-scores of -3.6 to +1.3 over six seeds.
RUN_SPREAD_WARNING = 0.2


def evidence(model: Any, key: jax.Array, method: str = "smc", *, particles: int | None = None,
             runs: int | None = None, moves: int | None = None, steps: int | None = None,
             start: Any = "prior", progress: bool | Callable[[str, int, int | None], None] = True
             ) -> EvidenceResults:
    """Estimate log p(x) = log ∫ p(x | z) p(z) dz with its standard error.

    Args:
        model: a built-in model name, a NumPyro model function or an :class:`~elbox.Model`.
        key: a JAX PRNG key; the same key gives the same estimate.
        method: ``"smc"`` (default), ``"ais"`` or ``"iwae"``.
        particles: SMC: particles per run (1000); AIS: independent chains (1000); IWAE: draws
            from q (100,000).
        runs: SMC's independent runs (8), stepping together; their spread gives the standard
            error.
        moves: HMC transitions per change of β (SMC 10, AIS 1).
        steps: AIS's number of temperatures T (500; β_t = (t/T)^4).
        start: ``"prior"``; a family (``"meanfield"``, ``"fullrank"``, ``"flow"``), fitted
            first with :func:`elbox.fit`; or a fit (:func:`elbox.fit`'s result). From q the path
            runs from q to the posterior instead of from the prior: needed where the prior is
            improper or the model has no prior/likelihood split, and much shorter where the
            posterior is far narrower than the prior (the fit's seconds are counted in
            ``seconds["fit"]`` and ``seconds["total"]``). From the prior the particles can find
            modes that a fitted q missed. ``iwae`` always starts from q and fits a full-rank
            Gaussian when given none.
        progress: a progress bar counting SMC's stages or AIS's temperatures (forwards, then
            in reverse) (``True``), none, or a callback ``(phase, done, total)``.

    Returns:
        :class:`~elbox.evidence.results.EvidenceResults`.
    """
    from elbox.models import resolve

    model = resolve(model)
    if method not in METHODS:
        raise SettingsError(f"Unknown evidence method {method!r}; choose one of {', '.join(METHODS)}.")
    given = {"particles": particles, "runs": runs, "moves": moves, "steps": steps}
    settings = dict(DEFAULTS[method])
    for name, value in given.items():
        if value is None:
            continue
        if name not in settings:
            raise SettingsError(f"{name} is not an option of the {method} estimator (it takes "
                                f"{', '.join(settings)}).")
        settings[name] = checks.count(name, value, minimum=2 if name in ("particles", "runs") else 1)
    tic = time.perf_counter()
    fit = _resolve_start(model, key, method, start)
    seconds_fit = time.perf_counter() - tic if isinstance(start, str) and fit is not None else 0.0
    path = tempering.prior_path(model) if fit is None else tempering.fitted_path(model, fit)
    total = None
    if method == "ais":
        total = settings["steps"] * (2 if fit is None and model.known.posterior_sampler is not None else 1)
    with stage_progress.shown(progress if method != "iwae" else False, total, f"{method} {model.name}") as bar:
        bar.phase("compiling")
        estimate, upper, diagnostics, seconds = ESTIMATORS[method](model, key, path, fit, settings)
    seconds = {"fit": seconds_fit, **seconds, "total": time.perf_counter() - tic}
    results = EvidenceResults(model=model, method=method, log_evidence=estimate,
                              start="prior" if fit is None else f"{fit.method} q", seconds=seconds,
                              settings=settings, diagnostics=diagnostics, upper_bound=upper)
    results.warnings = _warnings(results)
    return results


def _resolve_start(model, key, method: str, start):
    """None to start from the prior, else the fit whose q starts the estimate (fitted here when
    ``start`` names a family)."""
    from elbox.vi.families import FAMILIES

    if isinstance(start, str):
        if start not in ("prior", *FAMILIES):
            raise SettingsError(f"start must be 'prior', a family to fit first ({', '.join(FAMILIES)}) or a fit "
                                f"(elbox.fit's result), got {start!r}.")
        if method == "iwae" or start != "prior":
            from elbox.vi.fit import fit as fit_q

            family = "fullrank" if start == "prior" else start
            return fit_q(model, jax.random.fold_in(key, 7), method=family, progress=False)
        if not model.has_split:
            raise NoPriorLikelihoodSplit(
                f"Model '{model.name}' was given as one log density, so it cannot be tempered from "
                "its prior. Build it with Model.from_numpyro or Model.from_prior_and_likelihood, or "
                "start from a fitted q: elbox.evidence(model, key, start=\"meanfield\").")
        if not model.prior_is_proper:
            raise ModelError(
                f"Model '{model.name}' has an improper prior: annealing cannot start from it. Start "
                "from a fitted q instead: elbox.evidence(model, key, start=\"meanfield\").")
        return None
    if not hasattr(start, "family") or getattr(start, "model", None) is None:
        raise SettingsError("start must be 'prior' or the result of elbox.fit on the same model.")
    if start.model.dimension != model.dimension:
        raise SettingsError(f"The fit given as start is of a model with {start.model.dimension} parameters; "
                            f"this one has {model.dimension}.")
    return start


def _timed(model, settings: tuple, fit, function, *args):
    """``function(*args)`` compiled (once per model and ``settings`` in a process: a second estimate
    reuses the program; not kept when it closes over a fit's q), then run: (outputs on the host,
    seconds)."""
    tic = time.perf_counter()
    key = None if fit is not None else ("evidence",) + settings
    compiled = model.program(key, lambda: jax.jit(function).lower(*args).compile())
    compiled_at = time.perf_counter()
    outputs = jax.device_get(compiled(*args))
    return outputs, {"compile": compiled_at - tic, "running": time.perf_counter() - compiled_at}


def _smc(model, key, path, fit, settings):
    n, runs, moves = settings["particles"], settings["runs"], settings["moves"]

    def program(key):
        key_start, key_runs = jax.random.split(key)
        start = tempering.draw_start(path, model, fit, key_start, (runs + 1) * n).reshape(runs + 1, n,
                                                                                          model.dimension)
        out = smc.run(key_runs, path, start, moves,
                      max_beta_step=1.0 if fit is None else smc.MAX_BETA_STEP_FROM_Q)
        return out["log_z"], out["acceptance"], out["stages"], out["reached_one"], out["step_size"]

    (log_z, acceptance, stages, reached_one, step_size), seconds = _timed(
        model, ("smc", path.start, n, runs, moves), fit, program, key)
    diagnostics = {"stages": int(stages), "acceptance": float(acceptance), "step_size": float(step_size),
                   "run_spread": float(np.std(np.asarray(log_z, dtype=np.float64), ddof=1)),
                   "run_log_evidence": [float(v) for v in log_z], "reached_posterior": bool(reached_one)}
    return log_mean_of_log_normal(log_z), None, diagnostics, seconds


def _ais(model, key, path, fit, settings):
    n, steps, moves = settings["particles"], settings["steps"], settings["moves"]
    sampler = model.known.posterior_sampler if fit is None else None

    def program(key):
        key_start, key_run, key_exact, key_reverse = jax.random.split(key, 4)
        betas = ais.schedule(steps, model.flat_dtype)
        forward = tempering.anneal(key_run, path, tempering.draw_start(path, model, fit, key_start, n), betas, moves,
                                   stage_progress.FORWARD)
        reverse = None
        if sampler is not None:
            exact = jax.vmap(lambda z: model.ravel(model.unconstrain(z)))(sampler(key_exact, n))
            reverse = tempering.anneal(key_reverse, path, exact.astype(model.flat_dtype), betas[::-1], moves,
                                       stage_progress.REVERSE)["log_weights"]
        return forward["log_weights"], forward["acceptance"], reverse

    (log_weights, acceptance, reverse), seconds = _timed(model, ("ais", path.start, n, steps, moves), fit,
                                                         program, key)
    log_weights = np.asarray(log_weights, dtype=np.float64)
    ess = float(smc.effective_sample_size(log_weights))
    upper = None
    if reverse is not None:
        inverse = log_mean_exp(np.asarray(reverse, dtype=np.float64))
        upper = Estimate(-inverse.value, inverse.stderr)
    diagnostics = {"acceptance": float(acceptance), "effective_sample_size": ess}
    return log_mean_exp(log_weights), upper, diagnostics, seconds


def _iwae(model, key, path, fit, settings):
    tic = time.perf_counter()
    weights = importance.log_weights(jax.random.fold_in(key, 1), model, fit, settings["particles"])
    seconds = {"compile": 0.0, "running": time.perf_counter() - tic}
    estimate, k_hat = importance.importance_estimate(weights)
    bounds = {str(k): importance.iwae_bound(weights, k).as_dict() for k in IWAE_SIZES if k * 2 <= weights.size}
    diagnostics = {"pareto_k": k_hat, "elbo": fit.elbo.as_dict(), "iwae": bounds, "family": fit.method}
    return estimate, None, diagnostics, seconds


def _warnings(results: EvidenceResults) -> list[str]:
    messages = []
    d = results.diagnostics
    if results.method == "iwae" and d["pareto_k"] > importance.PARETO_K_LIMIT:
        messages.append(f"Pareto k̂ = {d['pareto_k']:.2f} > {importance.PARETO_K_LIMIT}: q's tails are too light for "
                        "importance sampling; the estimate and its standard error cannot be trusted. Use smc.")
    if results.method == "ais" and d["effective_sample_size"] < ESS_WARNING_FRACTION * results.settings["particles"]:
        messages.append(f"the AIS weights' effective sample size is {d['effective_sample_size']:.1f} of "
                        f"{results.settings['particles']} chains: the standard error is unreliable; raise steps.")
    if results.method == "smc" and d["run_spread"] > RUN_SPREAD_WARNING:
        messages.append(f"the {results.settings['runs']} runs' log estimates spread by {d['run_spread']:.2f} "
                        f"nats (sd), more than {RUN_SPREAD_WARNING}: their estimates of p(x) are skewed and the "
                        "standard error likely understates the error. Use more particles or moves, or start from a "
                        "fitted q (start=\"meanfield\").")
    if results.method == "smc" and not d["reached_posterior"]:
        messages.append(f"SMC stopped after {smc.MAX_STAGES} stages before reaching the posterior (β = 1).")
    if not np.isfinite(results.log_evidence.value):
        messages.append("the estimate is not finite: every weight vanished; check the model's log density.")
    return messages


ESTIMATORS = {"smc": _smc, "ais": _ais, "iwae": _iwae}

__all__ = ["evidence", "EvidenceResults", "METHODS"]


def bounds(model: Any, key: jax.Array, evidence_results: EvidenceResults | None = None,
           families: tuple[str, ...] = ("meanfield", "fullrank"), iwae_draws: int = 100_000) -> dict:
    """The ladder ELBO ≤ IWAE_K ≤ log p(x) (≤ reverse AIS) for one model, each with its standard
    error: the ELBO of each family, IWAE_K for K = 1, 10, 100, 1000 from the last family's q, and
    log p(x) exact or estimated (by SMC unless ``evidence_results`` is given).

    Returns ``{"log_evidence": {"value", "stderr", "method"}, "upper_bound": {...} | None,
    "elbo": {family: {"value", "stderr"}}, "iwae": {K: {"value", "stderr"}}}``.
    """
    from elbox.models import resolve
    from elbox.vi.fit import fit

    model = resolve(model)
    key_evidence, key_fit, key_iwae = jax.random.split(key, 3)
    if model.known.log_evidence is not None:
        log_evidence = {"value": model.known.log_evidence, "stderr": 0.0, "method": "exact"}
    else:
        if evidence_results is None:
            evidence_results = evidence(model, key_evidence, progress=False)
        log_evidence = {**evidence_results.log_evidence.as_dict(), "method": evidence_results.method}
    upper = evidence_results.upper_bound if evidence_results is not None else None
    fits = {family: fit(model, jax.random.fold_in(key_fit, i), method=family, progress=False)
            for i, family in enumerate(families)}
    weights = importance.log_weights(key_iwae, model, fits[families[-1]], iwae_draws)
    return {
        "log_evidence": log_evidence,
        "upper_bound": None if upper is None else upper.as_dict(),
        "elbo": {family: result.elbo.as_dict() for family, result in fits.items()},
        "iwae": {k: importance.iwae_bound(weights, k).as_dict() for k in IWAE_SIZES},
        "iwae_family": families[-1],
    }
