"""Fitting q by stochastic gradient ascent on the ELBO (optax), in compiled chunks.

``fit(model, key, method="meanfield")`` is the public entry point (``elbox.fit``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from elbox import checks
from elbox.errors import SettingsError
from elbox.initialization import initial_positions
from elbox.loop import ChunkedLoop
from elbox.models import resolve
from elbox.precision import full_precision
from elbox.progress import ProgressBar
from elbox.vi.elbo import ESTIMATORS, evaluate_elbo, surrogate_loss
from elbox.vi.families import FAMILIES, make_family
from elbox.vi.results import FitResults
from elbox.vi.start import best_start

METHODS = (*FAMILIES, "cavi")
# The host looks at the ELBO trace after every window of at least this many steps.
MIN_WINDOW = 100


@full_precision
def fit(
    model: Any,
    key: jax.Array,
    *,
    method: str = "meanfield",
    steps: int = 10_000,
    learning_rate: float | optax.Schedule | None = None,
    optimizer: optax.GradientTransformation | None = None,
    num_samples: int | None = None,
    estimator: str | None = None,
    stop_when_flat: bool = True,
    eval_samples: int = 4096,
    init: dict[str, Any] | None = None,
    family_options: dict | None = None,
    progress: bool | Callable[[str, int, int], None] = True,
    evidence: str | None = None,
) -> FitResults:
    """Fit q in a variational family by maximising the ELBO; report the bound beside log p(x).

    Args:
        model: a built-in model name, a NumPyro model function or an :class:`~elbox.Model`.
        key: a JAX PRNG key; the same key gives the same fit.
        method: the family: ``"meanfield"``, ``"fullrank"`` or ``"flow"``; or ``"cavi"``:
            coordinate ascent with the ELBO in closed form, for a model that declares a
            conjugate form (:class:`~elbox.model.Conjugacy`; the built-in ``normal_normal``,
            ``normal_gamma`` and ``gaussian_mixture`` do). CAVI takes only ``steps`` (its
            largest number of sweeps) and ``eval_samples`` (draws from q).
        steps: the largest number of optimisation steps.
        learning_rate: Adam's step size (a float or an optax schedule); ignored with ``optimizer``.
            Default: 0.01 for the Gaussian families, 0.003 for the flow.
        optimizer: any optax ``GradientTransformation`` (default ``optax.adam(learning_rate)``).
        num_samples: draws from q per gradient estimate. Default: 1 for the Gaussian families
            (their entropy gradient is exact), 8 for the flow and for the score-function
            estimator (their gradients are noisier; the control variate needs several draws).
        estimator: ``"reparam"``, ``"stl"`` (sticking the landing), ``"score"`` (score
            function with a leave-one-out control variate) or ``"auto"``: ``reparam`` while the
            ELBO rises (lowest variance far from the optimum, where the entropy gradient is
            exact), then ``stl`` during the final anneal (its variance vanishes as q reaches the
            posterior, so small gaps are resolved). Default: ``"auto"`` for the Gaussian
            families, ``"reparam"`` for the flow, whose log density needs its slow inverse.
        stop_when_flat: the stopping rule on the smoothed ELBO. The trace is cut into windows
            (of max(100, steps / 100) steps); when the window mean has not risen by more than
            two standard errors for three windows in a row, the step size is halved, and after
            ten halvings (1/1024 of the initial step size) fitting stops. ``False`` runs all
            ``steps`` at the initial step size.
        eval_samples: draws for each final ELBO estimate and its standard error; the draws of
            the headline estimate are returned as ArviZ ``InferenceData``.
        init: constrained starting values for q's location. Default: a uniform draw in [-2, 2]
            on the unconstrained space (as for MCMC), then moved to the point of a short,
            curvature-scaled L-BFGS path toward the mode where q's starting shape has the highest
            ELBO (:mod:`elbox.vi.start`), so that Adam starts near the posterior.
        family_options: passed to the family (e.g. ``flow_layers``, ``nn_width`` for ``flow``).
        progress: a progress bar (``True``), none, or a callback ``(phase, done, total)``.
        evidence: ``"smc"``, ``"ais"`` or ``"iwae"``: also estimate log p(x) with that method
            (:func:`elbox.evidence`, from the prior; ``iwae`` from this q), so that the gap
            log p(x) − ELBO is reported with its standard error where no exact value is known.

    Returns:
        :class:`~elbox.vi.results.FitResults`: the ELBO in both forms with standard errors,
        log p(x) where known, the gap, the ELBO trace, draws from q and timings.
    """
    tic_total = time.perf_counter()
    model = resolve(model)
    checks.one_of("method", method, METHODS)
    if evidence is not None:
        from elbox.evidence import METHODS as EVIDENCE_METHODS

        checks.one_of("evidence", evidence, EVIDENCE_METHODS)
        options = dict(learning_rate=learning_rate, optimizer=optimizer, num_samples=num_samples, estimator=estimator,
                       stop_when_flat=stop_when_flat, eval_samples=eval_samples, init=init,
                       family_options=family_options, progress=progress)
        key_fit, key_evidence = jax.random.split(key)
        results = fit(model, key_fit, method=method, steps=steps, **options)
        results.evidence_estimate = _estimate_evidence(model, key_evidence, evidence, results, progress)
        results.seconds["evidence"] = results.evidence_estimate.seconds["total"]
        results.seconds["total"] = time.perf_counter() - tic_total
        return results
    if method == "cavi":
        return _fit_cavi(model, key, steps=steps, eval_samples=eval_samples, tic_total=tic_total,
                         ignored={"learning_rate": learning_rate, "optimizer": optimizer, "num_samples": num_samples,
                                  "estimator": estimator, "init": init, "family_options": family_options,
                                  "stop_when_flat": None if stop_when_flat else False})
    flow = method == "flow"
    if learning_rate is None:
        learning_rate = 0.003 if flow else 0.01
    if num_samples is None:
        num_samples = 8 if flow or estimator == "score" else 1
    if estimator is None:
        estimator = "reparam" if method == "flow" else "auto"
    if estimator not in ESTIMATORS:
        raise SettingsError(f"Unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}.")
    steps = checks.count("steps", steps, minimum=1)
    num_samples = checks.count("num_samples", num_samples, minimum=1)
    eval_samples = checks.count("eval_samples", eval_samples, minimum=2)
    if estimator == "score" and num_samples < 2:
        raise SettingsError("The score-function estimator needs num_samples >= 2 for its control variate.")
    optimizer_given = optimizer is not None
    if optimizer is None:
        learning_rate = checks.learning_rate(learning_rate)
        optimizer = optax.adam(learning_rate)

    key_init, key_family, key_fit, key_eval = jax.random.split(key, 4)
    loc, _ = initial_positions(model, key_init, 1, init)
    if init is None:
        loc = best_start(model, key_init, loc[0])[None]
    family = make_family(method, model.dimension, key_family, **(family_options or {}))
    params = family.init(loc[0])
    opt_state = optimizer.init(params)
    window = max(MIN_WINDOW, steps // 100)

    def build_loop():
        loss_fn = surrogate_loss(estimator, model.flat_log_joint, family, num_samples)

        def step(carry, step_key, t, phase):
            params, opt_state = carry
            (_, elbo), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, step_key, phase["stl_weight"])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            updates = jax.tree_util.tree_map(lambda u: phase["learning_rate_scale"] * u, updates)
            return (optax.apply_updates(params, updates), opt_state), elbo

        return ChunkedLoop(step, window)

    # The compiled loop is kept with the model when everything it closes over is described by
    # settings (Adam at a fixed rate); a user's optimizer or schedule gets a fresh one.
    cacheable = not optimizer_given and isinstance(learning_rate, int | float)
    loop_key = ("fit", method, estimator, num_samples, window, learning_rate,
                tuple(sorted((family_options or {}).items()))) if cacheable else None
    try:
        hash(loop_key)
    except TypeError:
        loop_key = None
    loop = model.program(loop_key, build_loop)
    compiled_before = loop.compiled is not None
    carry = (params, opt_state)
    windows: list[np.ndarray] = []
    schedule = PlateauThenAnneal(steps, window, enabled=stop_when_flat)
    seconds_fitting = 0.0
    with ProgressBar(progress, total=steps, description=f"{method} {model.name}") as bar:
        bar.phase("fitting")
        for index in range(-(-steps // window)):
            length = min(window, steps - index * window)
            run = loop.run(carry, jax.random.fold_in(key_fit, index), length,
                           {"learning_rate_scale": jnp.asarray(schedule.scale(), loc.dtype),
                            "stl_weight": jnp.asarray(float(schedule.annealing), loc.dtype)})
            carry, seconds_fitting = run.carry, seconds_fitting + run.seconds
            windows.append(np.asarray(run.outputs, dtype=np.float64))
            bad = np.flatnonzero(~np.isfinite(windows[-1]))
            if bad.size:
                raise checks.non_finite_loss(
                    f"ELBO of fitting {method} q to '{model.name}'", index * window + int(bad[0]), steps,
                    learning_rate, optimizer_given, "or more draws per step (num_samples)")
            bar.update(length, elbo=f"{windows[-1].mean():.3f}")
            if schedule.observe(np.concatenate(windows)):
                break
    params, _ = carry
    trace = np.concatenate(windows)

    report, constrained = evaluate_elbo(key_eval, model, family, params, num_samples=eval_samples, keep_draws=True)
    seconds = {"compile": 0.0 if compiled_before else loop.compile_seconds, "fitting": seconds_fitting}
    results = FitResults(
        model=model, method=method, estimator=estimator, family=family, params=params,
        report=report, trace=trace, steps=steps, constrained_draws=constrained, seconds=seconds,
        stopped_early=trace.size < steps, converged=schedule.plateau_step is not None if stop_when_flat else None,
    )
    results.seconds["total"] = time.perf_counter() - tic_total
    return results


def _estimate_evidence(model, key, method: str, results: FitResults, progress):
    """log p(x) by ``method``: SMC and AIS from the prior (or from this q where the prior cannot
    start them), importance sampling from this q."""
    from elbox.evidence import evidence

    from_q = method == "iwae" or not model.has_split or not model.prior_is_proper
    return evidence(model, key, method=method, start=results if from_q else "prior", progress=progress)


def _fit_cavi(model, key, *, steps, eval_samples, tic_total, ignored) -> FitResults:
    """``fit(method="cavi")``: the model's declared closed-form updates, ``steps`` sweeps at most."""
    from elbox.vi.cavi_models import fit_cavi

    given = [name for name, value in ignored.items() if value is not None]
    if given:
        raise SettingsError(
            f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no meaning for CAVI, whose updates are "
            "closed-form coordinate steps (no optimiser, draws, estimator or starting point); drop "
            f"{'it' if len(given) == 1 else 'them'} or choose a gradient family: {', '.join(FAMILIES)}."
        )
    results = fit_cavi(model, key, max_iterations=steps, num_draws=eval_samples)
    results.seconds["total"] = time.perf_counter() - tic_total
    return results


class PlateauThenAnneal:
    """The stopping rule and step-size schedule, decided on the host between windows.

    The full step size is used until the smoothed ELBO reaches a plateau: the median of the
    last quarter of the trace is not above that of the quarter before it by more than two
    standard errors (a horizon that grows with the run, so slow but steady progress is not
    mistaken for a plateau), looked for once a fifth of the budget is spent. Then the step
    size falls linearly to 1% over a quarter as many steps again as were taken, and fitting
    stops. Without a plateau, the anneal takes the last fifth of the budget. With
    ``enabled=False`` the step size stays at its initial value.
    """

    FINAL_SCALE = 0.01

    def __init__(self, steps: int, window: int, enabled: bool = True):
        self.steps, self.window, self.enabled = steps, window, enabled
        self.done = 0
        self.anneal_start: int | None = None
        self.anneal_length = 0
        self.plateau_step: int | None = None  # where the ELBO was found flat, if it was

    @property
    def annealing(self) -> bool:
        return self.anneal_start is not None

    def scale(self) -> float:
        """The step-size multiplier for the next window."""
        if self.anneal_start is None:
            return 1.0
        progress = min(1.0, (self.done - self.anneal_start + 0.5 * self.window) / self.anneal_length)
        return 1.0 - (1.0 - self.FINAL_SCALE) * progress

    def observe(self, trace: np.ndarray) -> bool:
        """Take the trace so far; return True when fitting should stop."""
        self.done = trace.size
        if not self.enabled:
            return False
        if self.anneal_start is None:
            if self.done >= max(4 * self.window, self.steps // 5) and plateaued(trace):
                self.plateau_step = self.done
                self._start_anneal(max(2 * self.window, self.done // 4))
            elif self.done >= 0.8 * self.steps:
                self._start_anneal(self.steps - self.done)
            return False
        return self.done >= self.anneal_start + self.anneal_length

    def _start_anneal(self, length: int):
        self.anneal_start = self.done
        self.anneal_length = max(1, -(-length // self.window) * self.window)


def plateaued(trace: np.ndarray) -> bool:
    """Whether the last quarter's median ELBO is within two standard errors of the third quarter's.

    Medians, with standard errors from the median absolute deviation, so that a few wild
    draws (heavy-tailed q early on) neither hide a rise nor fake one.
    """
    n = trace.size
    third, last = trace[n // 2: 3 * n // 4], trace[3 * n // 4:]
    noise = np.hypot(_median_stderr(third), _median_stderr(last))
    return np.median(last) - np.median(third) <= 2 * noise


def _median_stderr(values: np.ndarray) -> float:
    """sqrt(pi/2) * sigma / sqrt(n), sigma estimated as 1.4826 * MAD (exact for a normal sample)."""
    sigma = 1.4826 * np.median(np.abs(values - np.median(values)))
    return float(1.2533 * sigma / np.sqrt(values.size))
