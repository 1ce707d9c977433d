"""The bound of a trained diffusion run on its test set (or on a file), as a typed report.

:func:`evaluate_run` returns a :class:`BoundReport`; :func:`elbo_run` its JSON-ready dict. Each
model kind gives its bounds through one small contract (a function of the run, the keys and the
examples, in :data:`BOUNDS`); the report around them (units, entropy, paired gap, baselines) is
built once for all.

Every number is in the data's ORIGINAL units: the bound computed on model units y minus
``log_jacobian_per_dim`` (see :class:`~elbox.diffusion.data.Dataset`), which is part of the
reconstruction term (the decoder being the density on the data).

Example:
    >>> report = evaluate_run("runs/gmm8")
    >>> report.nats_per_dim, report.stderr, report.terms.denoising
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from elbox import checks
from elbox.diffusion import elbo, vdm
from elbox.diffusion.bound import (
    BoundEstimate,
    importance_weighted_bounds,
    per_example_in_batches,
    spread_over_devices,
)
from elbox.diffusion.data import (
    builtin_names,
    check_float32_range,
    check_width,
    exact_log_density,
    get_dataset,
    independent_categorical_baseline_bits_per_dim,
    read_array,
    uniform_bits_per_dim,
)
from elbox.diffusion.elbo import bound_estimate
from elbox.diffusion.likelihood import ATOL, RTOL, DDPMFlow, ProbabilityFlow, VDMFlow, ode_nll
from elbox.diffusion.networks import as_eps_fn
from elbox.diffusion.run_folder import Run, dataset_of, load_run
from elbox.errors import DataError, SettingsError
from elbox.estimate import json_ready, mean_and_stderr

DISCRETE_EVAL_MAX_EXAMPLES = 1000  # each costs T network evaluations
CONTINUOUS_T_SAMPLES = 128
IW_MAX_EXAMPLES = 100  # each costs K T network evaluations
IW_GROUP = 16  # IW_K is reported for K = 1, 16, 256, ... up to the K asked for


@dataclasses.dataclass(frozen=True)
class BoundTerms:
    """The bound's three terms in nats per dimension; they add up to the bound."""

    reconstruction: float
    denoising: float
    prior: float

    def as_dict(self) -> dict:
        return json_ready(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class DiscreteTimeBound:
    """A vdm's bound with T discrete steps, reported beside its continuous-time bound."""

    T: int
    num_examples: int
    nats_per_dim: float
    bits_per_dim: float
    stderr: float
    terms: BoundTerms
    estimator: str

    def as_dict(self) -> dict:
        return json_ready({**dataclasses.asdict(self), "terms": self.terms.as_dict()})


@dataclasses.dataclass(frozen=True)
class BoundReport:
    """The bound on -log p(x) per dimension of a trained run over a set of examples.

    Attributes:
        data: the evaluated data (the run's data set name, or a file path).
        model: ``"vdm"`` or ``"ddpm"``.
        bound: ``"continuous time"`` (vdm) or ``"discrete time"`` (ddpm).
        T: the discrete steps summed over (None for the continuous-time bound).
        num_examples: the examples evaluated.
        nats_per_dim, bits_per_dim: the bound, mean over the examples.
        stderr, stderr_bits: its standard error across examples (NaN with one example).
        terms: reconstruction, denoising and prior, nats per dimension (they add up to
            ``nats_per_dim``).
        denoising_per_step: mean L_{t-1} for t = 2..T (ddpm) or the T steps' KLs (vdm), nats per
            dimension, of the discrete-time bound; ``denoising_per_step_T`` its T.
        discrete_time: vdm: the same model's bound with the recipe's T steps; ddpm: None.
        schedule: vdm: the learned gamma(t) = -log SNR at its ends and on a grid of t; ddpm: None.
        true_entropy_per_dim: the data's entropy, nats per dimension, where known (built-in
            test set), else None; ``gap_to_entropy`` the bound minus it.
        test_nll_per_dim: the mean exact -log p(x) / d of the examples evaluated (where the
            distribution is known), with ``gap_to_test_nll`` and ``gap_to_test_nll_stderr``, the
            mean and standard error of bound - (-log p) per example (paired: a much smaller
            standard error than the bound's).
        categorical_baseline_bits_per_dim, uniform_bits_per_dim: discrete data's baselines.
        estimator: how the bound's terms were estimated.
        seconds: wall-clock seconds of the evaluation.
        likelihood: with ``likelihood=True``, -log p(x) under the probability-flow ODE (for
            binned data the dequantised upper bound on -log P(x)), per dimension, original
            units, with the parts of its error (:meth:`~elbox.diffusion.likelihood.LikelihoodEstimate.as_dict`).
        importance_weighted: with ``iw=K``, the importance-weighted bounds -IW_K' / d for
            K' = 1, 16, ..., K over ``T`` steps on the first examples (:func:`importance_weighted_run`).
        side_by_side: every per-example number above on the examples they share (exact -log p,
            ODE, -IW_K from the largest K down, the T-step and the continuous-time -ELBO), each
            with its standard error and its paired differences to the row above and to the first.
    """

    data: str
    model: str
    bound: str
    T: int | None
    num_examples: int
    nats_per_dim: float
    bits_per_dim: float
    stderr: float
    stderr_bits: float
    terms: BoundTerms
    denoising_per_step: np.ndarray
    denoising_per_step_T: int
    discrete_time: DiscreteTimeBound | None
    schedule: vdm.ScheduleSummary | None
    true_entropy_per_dim: float | None
    gap_to_entropy: float | None
    test_nll_per_dim: float | None
    gap_to_test_nll: float | None
    gap_to_test_nll_stderr: float | None
    categorical_baseline_bits_per_dim: float | None
    uniform_bits_per_dim: float | None
    estimator: str
    seconds: float
    likelihood: dict | None = None
    importance_weighted: dict | None = None
    side_by_side: dict | None = None

    def as_dict(self) -> dict:
        """The JSON-ready dict (the keys of :func:`elbo_run`): NaN and infinity become None."""
        out = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        out["terms"] = self.terms.as_dict()
        out["denoising_per_step"] = np.asarray(self.denoising_per_step).tolist()
        out["discrete_time"] = None if self.discrete_time is None else self.discrete_time.as_dict()
        if self.schedule is not None:
            out["schedule"] = {"gamma_0": self.schedule.gamma_0, "gamma_1": self.schedule.gamma_1,
                               "t": self.schedule.t.tolist(), "gamma": self.schedule.gamma.tolist()}
        return json_ready(out)


# -- each model's bounds ------------------------------------------------------------------------------
class ModelBounds(NamedTuple):
    """What a model kind's bound function returns (see :data:`BOUNDS`).

    Attributes:
        main: the reported bound.
        evaluated: the examples (original units) behind ``main``.
        kind: ``"continuous time"`` or ``"discrete time"``.
        T: the discrete steps summed over in ``main`` (None for a continuous-time bound).
        per_step: the discrete-time bound's per-step denoising terms (nats, not per dimension).
        per_step_T: its T.
        discrete: a discrete-time bound reported beside ``main`` (or None) and ``discrete_T``.
        schedule: a learned schedule's summary (or None).
    """

    main: BoundEstimate
    evaluated: np.ndarray
    kind: str
    T: int | None
    per_step: np.ndarray
    per_step_T: int
    discrete: BoundEstimate | None = None
    discrete_T: int | None = None
    schedule: vdm.ScheduleSummary | None = None


def _vdm_bounds(run: Run, key_main, key_discrete, rows, discrete_rows, batch_size, num_t_samples) -> ModelBounds:
    """The continuous-time bound (``num_t_samples`` stratified t per example) and, beside it, the
    bound with the recipe's T steps."""
    T = int(run.meta["recipe"]["T"])
    main = vdm.bound_estimate(key_main, run.network, run.to_model(rows), run.decoder, T=None,
                              num_t_samples=num_t_samples)
    discrete = vdm.bound_estimate(key_discrete, run.network, run.to_model(discrete_rows), run.decoder, T=T,
                                  batch_size=batch_size)
    return ModelBounds(main, rows, "continuous time", None, discrete.denoising_per_step, T, discrete, T,
                       vdm.schedule_summary(run.network))


def _ddpm_bounds(run: Run, key_main, key_discrete, rows, discrete_rows, batch_size, num_t_samples) -> ModelBounds:
    """The sum of all T steps' terms."""
    T = run.schedule.num_steps
    main = bound_estimate(key_main, run.schedule, as_eps_fn(run.network, T), run.to_model(discrete_rows),
                          variance=run.meta["recipe"]["variance"], decoder=run.decoder, batch_size=batch_size)
    return ModelBounds(main, discrete_rows, "discrete time", T, main.denoising_per_step, T)


# model kind -> f(run, key_main, key_discrete, rows, discrete_rows, batch_size, num_t_samples) -> ModelBounds
BOUNDS: dict[str, Callable[..., ModelBounds]] = {"vdm": _vdm_bounds, "ddpm": _ddpm_bounds}

# model kind -> the probability-flow ODE of a run's model (a kind without a score has no entry).
FLOWS: dict[str, Callable[[Run], ProbabilityFlow]] = {
    "vdm": lambda run: VDMFlow(run.network),
    "ddpm": lambda run: DDPMFlow(run.network, run.schedule),
}


def _vdm_paths(run: Run, keys, rows, num_paths: int):
    T = int(run.meta["recipe"]["T"])
    return vdm.path_log_weights(run.network, keys, rows, num_paths, T, run.decoder)


def _ddpm_paths(run: Run, keys, rows, num_paths: int):
    T = run.schedule.num_steps
    return elbo.path_log_weights(as_eps_fn(run.network, T), run.schedule, keys, rows, num_paths,
                                 run.meta["recipe"]["variance"], run.decoder)


# model kind -> f(run, keys, rows, num_paths) -> log p(x, path) - log q(path | x), shape (n, num_paths)
PATHS: dict[str, Callable[..., Any]] = {"vdm": _vdm_paths, "ddpm": _ddpm_paths}


def iw_sizes(k: int) -> list[int]:
    """The K reported for ``iw=k``: 1, 16, 256, ... below k, and k."""
    sizes, size = [], 1
    while size < k:
        sizes.append(size)
        size *= IW_GROUP
    return sizes + [k]


def _flow_of(run: Run) -> ProbabilityFlow:
    kind = run.meta["recipe"]["model"]
    if kind not in FLOWS:
        raise SettingsError(
            f"a {kind} model has no score function, so it has no probability-flow ODE and no likelihood to "
            f"solve for; the ODE likelihood is defined for {', '.join(sorted(FLOWS))} runs. Use its bound "
            "(and --iw K for a tighter one) instead."
        )
    return FLOWS[kind](run)


def likelihood_run(run: Run, key, rows, rtol: float = RTOL, atol: float = ATOL):
    """-log p(x) of ``rows`` (original units) under the run's probability-flow ODE, in model units:
    a :class:`~elbox.diffusion.likelihood.LikelihoodEstimate` (for binned data the dequantised
    bound, with the bins' width in model units)."""
    bin_width = None if run.meta["levels"] is None else float(run.meta["scaling"]["scale"])
    return ode_nll(key, _flow_of(run), run.to_model(rows), bin_width=bin_width, rtol=rtol, atol=atol)


def importance_weighted_run(run: Run, key, rows, k: int, batch_size: int | None = None) -> tuple[dict, int]:
    """({K': every example's -IW_K' in nats (model units)} for K' in :func:`iw_sizes`, T): the
    importance-weighted bounds of the run's T-step model from k paths per example."""
    kind = run.meta["recipe"]["model"]
    T = int(run.meta["recipe"]["T"]) if kind == "vdm" else run.schedule.num_steps
    if batch_size is None:  # k paths of T steps per example: bound the memory of one call
        batch_size = max(1, 4096 // k)
    weights = per_example_in_batches(lambda keys, part: PATHS[kind](run, *spread_over_devices(keys, part), k), key,
                                     run.to_model(rows), batch_size)
    return importance_weighted_bounds(weights, iw_sizes(k)), T


def side_by_side(rows: list[tuple[str, str, np.ndarray]]) -> dict:
    """The per-example numbers ``(name, what, nats per dim per example)``, in the order given, on
    the examples they all have (the first ones: every list is a prefix of the same examples), each
    with its mean and standard error and the paired differences to the row above and to the first."""
    m = min(values.shape[0] for _, _, values in rows)
    table = [(name, what, np.asarray(values[:m], np.float64)) for name, what, values in rows]
    out, previous, first = [], None, table[0]
    for name, what, values in table:
        entry = {"name": name, "what": what, **_per_dim(values)}
        if previous is not None:
            gap = mean_and_stderr(values - previous[1])
            from_first = mean_and_stderr(values - first[2])
            entry.update({"minus_previous_nats_per_dim": gap.value, "minus_previous_stderr": gap.stderr,
                          "previous": previous[0], "minus_first_nats_per_dim": from_first.value,
                          "minus_first_stderr": from_first.stderr})
        out.append(entry)
        previous = (name, values)
    return json_ready({"num_examples": m, "rows": out})


# -- the report --------------------------------------------------------------------------------------
def _evaluation_data(run: Run, data_path):
    """(name, rows in original units, the Dataset of the training data or None, the name of the
    built-in data set the rows are the test set of, or None)."""
    meta = run.meta
    if data_path is None:
        data = dataset_of(meta)
        return meta["data"], data.test, data, meta["data"] if meta["data"] in builtin_names() else None
    spec = os.fspath(data_path)
    if spec in builtin_names():
        data = get_dataset(spec, seed=meta["seed"])
        if data.levels != meta["levels"]:
            raise DataError(f"{spec} has levels {data.levels}, but the run was trained with levels {meta['levels']}")
        check_width(data.test, meta["dim"], what=f"the evaluation data {spec}")
        return spec, data.test, None, spec
    rows = read_array(spec, levels=meta["levels"])  # all checks: file, NaN, levels
    check_width(rows, meta["dim"], what=f"the evaluation data {spec}")
    if meta["levels"] is None:
        check_float32_range(rows, f"the evaluation data {spec}")
    return spec, rows.astype(np.float32), None, None


def _terms(estimate: BoundEstimate, log_jacobian: float) -> BoundTerms:
    d = estimate.num_dims
    return BoundTerms(
        reconstruction=estimate.reconstruction / d - log_jacobian,
        denoising=estimate.denoising / d,
        prior=estimate.prior / d,
    )


def evaluate_run(out_dir, data_path=None, seed: int = 0, max_examples: int | None = None,
                 batch_size: int | None = None, num_t_samples: int = CONTINUOUS_T_SAMPLES, likelihood: bool = False,
                 iw: int | None = None, iw_max_examples: int = IW_MAX_EXAMPLES, rtol: float = RTOL,
                 atol: float = ATOL) -> BoundReport:
    """The bound on -log p(x) per dimension of the run's EMA network on its test set (or on the
    file ``data_path``, same width, same scaling as training), in the data's ORIGINAL units.

    A ``ddpm`` run's bound is the sum of all its T steps' terms. A ``vdm`` run's bound is the
    continuous-time bound (``num_t_samples`` stratified t per example); beside it,
    ``discrete_time`` holds the same model's bound with the recipe's T steps.

    ``max_examples`` caps the examples evaluated (the first ones of the test set or file;
    default: all for the continuous-time bound, 1000 for a discrete-time bound, whose examples
    each cost T network evaluations); ``batch_size`` examples go through one compiled call.
    Nothing is written to the run folder.

    ``likelihood=True`` adds -log p(x) under the model's probability-flow ODE on the same examples
    (solver tolerances ``rtol``, ``atol``); ``iw=K`` the importance-weighted bounds -IW_K' for
    K' = 1, 16, ..., K over the T-step model's noisy path on the first ``iw_max_examples``
    examples (each costs K T network evaluations). With either, ``side_by_side`` lines every
    number up on the examples they share: the exact -log p (where known) <= the ODE's -log p
    (a different model, so not a bound) and, for the T-step model, -log p <= -IW_K <= ... <=
    -IW_1 ~ the T-step bound.

    Returns:
        :class:`BoundReport`.

    Raises:
        SettingsError: ``iw`` below 1, or ``likelihood`` for a model kind without a score.
        FittingError: the ODE solver did not reach the end for some example.
    """
    tic = time.perf_counter()
    seed = checks.seed(seed)
    if max_examples is not None:
        max_examples = checks.count("max_examples", max_examples, 1)
    if batch_size is not None:
        batch_size = checks.count("batch_size", batch_size, 1)
    num_t_samples = checks.count("num_t_samples", num_t_samples, 1)
    if iw is not None:
        iw = checks.count("iw", iw, 1)
    iw_max_examples = checks.count("iw_max_examples", iw_max_examples, 1)
    run = load_run(out_dir)
    if likelihood:
        _flow_of(run)  # a model without a score fails here, before any work
    meta = run.meta
    name, rows, data, builtin_test = _evaluation_data(run, data_path)
    if max_examples is not None:
        rows = rows[:max_examples]
    discrete_rows = rows[:DISCRETE_EVAL_MAX_EXAMPLES] if max_examples is None else rows
    log_jacobian = float(meta["scaling"]["log_jacobian_per_dim"])
    key_main, key_discrete, key_ode, key_iw = jax.random.split(jax.random.key(seed), 4)
    if batch_size is None:  # examples per compiled call, each with T steps: bound the memory
        batch_size = max(4, 128 // run.dim)
    bounds = BOUNDS[meta["recipe"]["model"]](run, key_main, key_discrete, rows, discrete_rows, batch_size,
                                             num_t_samples)
    main = bounds.main
    d = main.num_dims
    nats_per_dim = float(main.nats_per_dim.value) - log_jacobian
    stderr = float(main.nats_per_dim.stderr)
    discrete_time = None
    if bounds.discrete is not None:
        discrete_nats = float(bounds.discrete.nats_per_dim.value) - log_jacobian
        discrete_time = DiscreteTimeBound(
            T=bounds.discrete_T,
            num_examples=int(bounds.discrete.num_examples),
            nats_per_dim=discrete_nats,
            bits_per_dim=discrete_nats / math.log(2.0),
            stderr=float(bounds.discrete.nats_per_dim.stderr),
            terms=_terms(bounds.discrete, log_jacobian),
            estimator=bounds.discrete.estimator,
        )
    entropy = meta.get("true_entropy_per_dim") if builtin_test == meta["data"] else None
    test_nll = gap_nll = gap_nll_stderr = nll = None
    log_density = exact_log_density(builtin_test) if builtin_test is not None else None
    if log_density is not None:
        nll = -log_density(bounds.evaluated) / d
        gap = mean_and_stderr(np.asarray(main.per_example, np.float64) / d - log_jacobian - nll)
        test_nll = float(nll.mean())
        gap_nll, gap_nll_stderr = gap.value, gap.stderr
    categorical = uniform = None
    if meta["levels"] is not None:
        uniform = uniform_bits_per_dim(meta["levels"])
        train_data = data if data is not None else dataset_of(meta)
        categorical = independent_categorical_baseline_bits_per_dim(train_data.train, bounds.evaluated,
                                                                    meta["levels"])
    extra = _likelihood_and_iw(run, bounds, rows, nll, key_ode, key_iw, likelihood, iw, iw_max_examples, rtol, atol,
                               log_jacobian)
    return BoundReport(
        data=name,
        model=meta["recipe"]["model"],
        bound=bounds.kind,
        T=bounds.T,
        num_examples=int(main.num_examples),
        nats_per_dim=nats_per_dim,
        bits_per_dim=nats_per_dim / math.log(2.0),
        stderr=stderr,
        stderr_bits=stderr / math.log(2.0),
        terms=_terms(main, log_jacobian),
        denoising_per_step=np.asarray(bounds.per_step, np.float64) / d,
        denoising_per_step_T=bounds.per_step_T,
        discrete_time=discrete_time,
        schedule=bounds.schedule,
        true_entropy_per_dim=entropy,
        gap_to_entropy=None if entropy is None else nats_per_dim - entropy,
        test_nll_per_dim=test_nll,
        gap_to_test_nll=gap_nll,
        gap_to_test_nll_stderr=gap_nll_stderr,
        categorical_baseline_bits_per_dim=categorical,
        uniform_bits_per_dim=uniform,
        estimator=main.estimator,
        seconds=time.perf_counter() - tic,
        **extra,
    )


def _likelihood_and_iw(run: Run, bounds: ModelBounds, rows, nll, key_ode, key_iw, likelihood: bool, iw, iw_max_examples,
                       rtol, atol, log_jacobian) -> dict:
    """The ``likelihood``, ``importance_weighted`` and ``side_by_side`` fields of the report."""
    if not likelihood and iw is None:
        return {}
    d = run.dim
    kind = bounds.kind
    t_step = bounds.discrete if bounds.discrete is not None else bounds.main
    T = bounds.discrete_T if bounds.discrete is not None else bounds.T
    entries = []
    if nll is not None:
        entries.append(("test_nll", "exact -log p(x) (the data's own density)", nll))
    out = {}
    if likelihood:
        ode = likelihood_run(run, key_ode, rows, rtol=rtol, atol=atol)
        out["likelihood"] = ode.as_dict(d, log_jacobian)
        what = "ODE bound on -log P(x) (dequantised)" if ode.dequantized else "ODE -log p(x) (probability flow)"
        entries.append(("ode_nll", what, ode.per_example / d - log_jacobian))
    if iw is not None:
        iw_rows = rows[:iw_max_examples]
        bounds_iw, iw_T = importance_weighted_run(run, key_iw, iw_rows, iw)
        out["importance_weighted"] = json_ready({
            "T": iw_T, "num_paths": iw, "num_examples": int(iw_rows.shape[0]),
            "bounds": [{"K": k, **_per_dim(values, d, log_jacobian)} for k, values in bounds_iw.items()],
        })
        for k in sorted(bounds_iw, reverse=True):
            entries.append((f"iw_{k}", f"-IW_{k} ({k} paths), T = {iw_T}",
                            bounds_iw[k] / d - log_jacobian))
    entries.append((f"elbo_{T}_steps", f"-ELBO, T = {T} steps",
                    np.asarray(t_step.per_example, np.float64) / d - log_jacobian))
    if kind == "continuous time":
        entries.append(("elbo_continuous", "-ELBO, continuous time",
                        np.asarray(bounds.main.per_example, np.float64) / d - log_jacobian))
    out["side_by_side"] = side_by_side(entries)
    return out


def _per_dim(per_example_nats, d: int = 1, log_jacobian: float = 0.0) -> dict:
    """Mean and standard error of per-example nats / d - log_jacobian, and the mean in bits."""
    estimate = mean_and_stderr(np.asarray(per_example_nats, np.float64) / d - log_jacobian)
    return {"nats_per_dim": estimate.value, "stderr_nats_per_dim": estimate.stderr,
            "bits_per_dim": estimate.value / math.log(2.0)}


def elbo_run(out_dir, data_path=None, seed: int = 0, max_examples: int | None = None,
             batch_size: int | None = None, num_t_samples: int = CONTINUOUS_T_SAMPLES, likelihood: bool = False,
             iw: int | None = None, iw_max_examples: int = IW_MAX_EXAMPLES, rtol: float = RTOL,
             atol: float = ATOL) -> dict[str, Any]:
    """:func:`evaluate_run` as a JSON-ready dict: ``data``, ``model``, ``bound``, ``T``,
    ``num_examples``, ``nats_per_dim``, ``bits_per_dim``, ``stderr`` (of nats_per_dim),
    ``stderr_bits``, ``terms`` (``reconstruction``, ``denoising``, ``prior``), ``denoising_per_step``
    with ``denoising_per_step_T``, ``discrete_time`` (vdm: ``T``, ``num_examples``,
    ``nats_per_dim``, ``bits_per_dim``, ``stderr``, ``terms``, ``estimator``; ddpm: None),
    ``schedule`` (vdm: ``gamma_0``, ``gamma_1``, ``t``, ``gamma``; ddpm: None),
    ``true_entropy_per_dim``, ``gap_to_entropy``, ``test_nll_per_dim``, ``gap_to_test_nll``,
    ``gap_to_test_nll_stderr``, ``categorical_baseline_bits_per_dim``, ``uniform_bits_per_dim``,
    ``estimator``, ``seconds``, and with ``likelihood`` or ``iw``: ``likelihood``,
    ``importance_weighted``, ``side_by_side`` (see :class:`BoundReport`). A value that is undefined (the standard
    error of a single example) is None."""
    return evaluate_run(out_dir, data_path=data_path, seed=seed, max_examples=max_examples, batch_size=batch_size,
                        num_t_samples=num_t_samples, likelihood=likelihood, iw=iw, iw_max_examples=iw_max_examples,
                        rtol=rtol, atol=atol).as_dict()
