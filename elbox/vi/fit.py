"""Fitting q by stochastic gradient ascent on the ELBO (optax), in compiled chunks.

``fit(model, key, method="meanfield")`` is the public entry point (``elbox.fit``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from elbox.errors import FittingError, SettingsError
from elbox.loop import ChunkedLoop
from elbox.models import resolve
from elbox.progress import ProgressBar
from elbox.vi.elbo import ESTIMATORS, evaluate_elbo, surrogate_loss
from elbox.vi.families import FAMILIES, make_family
from elbox.vi.results import FitResults

# The stopping rule compares the mean ELBO of consecutive windows of at least this many steps;
MIN_WINDOW = 100
# after this many windows in a row without a significant rise the step size is halved,
PATIENCE = 3
LEARNING_RATE_FACTOR = 0.5
# and once it is this small a fraction of the initial one, fitting stops.
MIN_LEARNING_RATE_SCALE = 1 / 1024


def fit(
    model: Any,
    key: jax.Array,
    *,
    method: str = "meanfield",
    steps: int = 10_000,
    learning_rate: float | optax.Schedule = 0.01,
    optimizer: optax.GradientTransformation | None = None,
    num_samples: int = 1,
    estimator: str = "reparam",
    stop_when_flat: bool = True,
    eval_samples: int = 4096,
    draws: int = 4000,
    init: dict[str, Any] | None = None,
    family_options: dict | None = None,
    progress: bool | Callable[[str, int, int], None] = True,
) -> FitResults:
    """Fit q in a variational family by maximising the ELBO; report the bound beside log p(x).

    Args:
        model: a built-in model name, a NumPyro model function or an :class:`~elbox.Model`.
        key: a JAX PRNG key; the same key gives the same fit.
        method: the family: ``"meanfield"``, ``"fullrank"`` or ``"flow"``.
        steps: the largest number of optimisation steps.
        learning_rate: Adam's step size (a float or an optax schedule); ignored with ``optimizer``.
        optimizer: any optax ``GradientTransformation`` (default ``optax.adam(learning_rate)``).
        num_samples: draws from q per gradient estimate.
        estimator: ``"reparam"``, ``"stl"`` (sticking the landing) or ``"score"``
            (score function with a leave-one-out control variate).
        stop_when_flat: the stopping rule on the smoothed ELBO. The trace is cut into windows
            (of max(100, steps / 100) steps); when the window mean has not risen by more than
            two standard errors for three windows in a row, the step size is halved, and after
            ten halvings (1/1024 of the initial step size) fitting stops. ``False`` runs all
            ``steps`` at the initial step size.
        eval_samples: draws for the final ELBO estimates and their standard errors.
        draws: draws from q returned as ArviZ ``InferenceData``.
        init: constrained starting values for q's location (default: a uniform draw in
            [-2, 2] on the unconstrained space, as for MCMC).
        family_options: passed to the family (e.g. ``flow_layers``, ``nn_width`` for ``flow``).
        progress: a progress bar (``True``), none, or a callback ``(phase, done, total)``.

    Returns:
        :class:`~elbox.vi.results.FitResults`: the ELBO in both forms with standard errors,
        log p(x) where known, the gap, the ELBO trace, draws from q and timings.
    """
    from elbox.mcmc.run import _check_count, initial_positions

    tic_total = time.perf_counter()
    model = resolve(model)
    if method not in FAMILIES:
        raise SettingsError(f"Unknown method {method!r}; choose one of {', '.join(FAMILIES)} (or cavi).")
    if estimator not in ESTIMATORS:
        raise SettingsError(f"Unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}.")
    _check_count("steps", steps, minimum=1)
    _check_count("num_samples", num_samples, minimum=1)
    _check_count("eval_samples", eval_samples, minimum=2)
    _check_count("draws", draws, minimum=1)
    if estimator == "score" and num_samples < 2:
        raise SettingsError("The score-function estimator needs num_samples >= 2 for its control variate.")
    if optimizer is None:
        if not callable(learning_rate) and not (np.isfinite(learning_rate) and learning_rate > 0):
            raise SettingsError(f"learning_rate must be a positive number, got {learning_rate}.")
        optimizer = optax.adam(learning_rate)

    key_init, key_family, key_fit, key_eval, key_draws = jax.random.split(key, 5)
    loc, _ = initial_positions(model, key_init, 1, init)
    family = make_family(method, model.dimension, key_family, **(family_options or {}))
    params = family.init(loc[0])
    opt_state = optimizer.init(params)
    loss_fn = surrogate_loss(estimator, model.flat_log_joint, family, num_samples)

    def step(carry, step_key, t, phase):
        params, opt_state = carry
        (_, elbo), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, step_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        updates = jax.tree_util.tree_map(lambda u: phase["learning_rate_scale"] * u, updates)
        return (optax.apply_updates(params, updates), opt_state), elbo

    window = max(MIN_WINDOW, steps // 100)
    loop = ChunkedLoop(step, window)
    carry = (params, opt_state)
    windows: list[np.ndarray] = []
    scale, flat_in_a_row, seconds_fitting = 1.0, 0, 0.0
    with ProgressBar(progress, total=steps, description=f"{method} {model.name}") as bar:
        bar.phase("fitting")
        for index in range(-(-steps // window)):
            length = min(window, steps - index * window)
            run = loop.run(carry, jax.random.fold_in(key_fit, index), length,
                           {"learning_rate_scale": jnp.asarray(scale, loc.dtype)})
            carry, seconds_fitting = run.carry, seconds_fitting + run.seconds
            windows.append(np.asarray(run.outputs, dtype=np.float64))
            _check_finite(windows, window, learning_rate, method, model.name)
            bar.update(length, elbo=f"{windows[-1].mean():.3f}")
            if not stop_when_flat or len(windows) < 2:
                continue
            flat_in_a_row = flat_in_a_row + 1 if not _rose(windows[-2], windows[-1]) else 0
            if flat_in_a_row >= PATIENCE:
                scale, flat_in_a_row = scale * LEARNING_RATE_FACTOR, 0
                if scale < MIN_LEARNING_RATE_SCALE:
                    break
    params, _ = carry
    trace = np.concatenate(windows)

    report = evaluate_elbo(key_eval, model, family, params, num_samples=eval_samples)
    seconds = {"compile": loop.compile_seconds, "fitting": seconds_fitting}
    results = FitResults.build(
        model=model, method=method, estimator=estimator, family=family, params=params,
        report=report, trace=trace, steps=steps, key=key_draws, draws=draws, seconds=seconds,
        stopped_early=trace.size < steps,
    )
    results.seconds["total"] = time.perf_counter() - tic_total
    return results


def _rose(previous: np.ndarray, last: np.ndarray) -> bool:
    """Whether the window mean rose by more than two standard errors of the difference."""
    noise = np.sqrt(previous.var(ddof=1) / previous.size + last.var(ddof=1) / last.size)
    return last.mean() - previous.mean() > 2 * noise


def _check_finite(windows: list[np.ndarray], window: int, learning_rate, method: str, model_name: str):
    bad = np.flatnonzero(~np.isfinite(windows[-1]))
    if bad.size:
        step = (len(windows) - 1) * window + int(bad[0])
        rate = f"{learning_rate:g}" if not callable(learning_rate) else "the schedule's"
        raise FittingError(
            f"The ELBO became non-finite at step {step} of fitting {method} q to '{model_name}'. "
            f"The step size is probably too large: try a smaller learning rate than {rate} "
            "(a tenth of it, say), or more draws per step (num_samples)."
        )
