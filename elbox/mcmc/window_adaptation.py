"""Warm-up of a gradient kernel (MALA, HMC, NUTS): its step size and inverse mass matrix.

Stan's windowed adaptation (Stan Reference Manual, "HMC algorithm parameters"), on the schedule
of :mod:`elbox.mcmc.warmup`:

* the step size ε follows dual averaging toward a target acceptance statistic throughout
  warm-up (:mod:`elbox.mcmc.step_size`), from Stan's heuristic first value, and restarts (μ =
  log 10ε) whenever the mass matrix changes;
* the inverse mass matrix M⁻¹ is re-estimated at the end of each slow window from that window's
  draws, and the estimate is used from the next step on. Three estimators:

  - ``"diagonal_gradient"`` (the default; nutpie, Seyboldt et al.): M⁻¹_ii = sqrt(var(z_i) /
    var(g_i)) from the window's draws z *and* gradients g = ∇ log p, which is exact for a Gaussian target
    (var z_i = σ_i², var g_i = 1/σ_i²) and uses what the gradient kernels compute anyway. Its
    first estimate, before any window has ended, is M⁻¹_ii = 1 / |g_i| at the start (nutpie's),
    which puts far-apart scales right from the first step;
  - ``"low_rank"`` (nutpie): that diagonal D, corrected in the few directions where the window
    shows it is most wrong. In the space scaled by D^½ (draws z' = D^-½ z, gradients
    g' = D^½ g) the Gaussian that minimises the sample Fisher divergence has covariance
    Σ = C_g'⁻¹ # C_z' (the geometric mean of the SPD matrices C_z' and C_g'⁻¹, the solution of
    Σ C_g' Σ = C_z'), fitted in the span of the window's draws and gradients (with fewer draws
    than dimensions the rest is unseen and left to D); its eigenvalues λ outside [1/2, 2] (at
    most 10 of them, the farthest) give
    M⁻¹ = D^½ (I + Σ_k (λ_k − 1) v_k v_kᵀ) D^½ (:class:`~elbox.mcmc.metric.LowRankInverseMass`,
    O(10 d) per leapfrog step). The window's covariances cost O(d²) per warm-up step and the fit
    O(d³) per window: meant for up to a few hundred dimensions;
  - ``"diagonal"`` (Stan): M⁻¹ = diag of the window's regularised variances;
  - ``"dense"`` (Stan): M⁻¹ = the window's regularised covariance matrix.

After warm-up the kernel is fixed: ε̄ of the last buffer and the last window's M⁻¹.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

from elbox import checks
from elbox.mcmc import integrators, metric, step_size, welford
from elbox.mcmc.base import Sampler, Tuner

MASS_MATRICES = ("diagonal_gradient", "low_rank", "diagonal", "dense")
# The estimator with the most effective draws per second on three of the four benchmark
# problems (eight schools, the 100-d Gaussian, the funnel): 3-5x fewer gradient evaluations per
# effective draw than Stan's on the 100-d Gaussian, about 2x fewer on the funnel. "low_rank"
# needs fewer still on correlated posteriors (2.5x on logistic regression, 60x on diamonds) but
# its per-window fit costs more than it saves on the others.
DEFAULT_MASS_MATRIX = "diagonal_gradient"
# Bounds on a diagonal estimated from gradients: a coordinate whose gradient does not vary over
# a window (or vanishes at the start) must not get an infinite or zero mass.
GRADIENT_DIAGONAL_BOUNDS = (1e-10, 1e10)
# The low-rank correction: eigenvalues of the scaled Fisher-optimal covariance within a factor
# LOW_RANK_CUTOFF of 1 are left out (the diagonal already has them right), at most LOW_RANK_MAX
# directions are kept, and both window covariances are regularised by LOW_RANK_RIDGE (in the
# space where the diagonal has made them about the identity).
LOW_RANK_CUTOFF = 2.0
LOW_RANK_MAX = 10
LOW_RANK_RIDGE = 1e-5
LOW_RANK_SHRINKAGE_DRAWS = welford.SHRINKAGE_DRAWS  # Stan's 5
LOW_RANK_SEEN = 1e-5  # directions with a smaller share of the window's spread count as unseen


class WindowAdaptationState(NamedTuple):
    """Per-chain warm-up state: the dual-averaging state, the current inverse mass matrix, and
    the window's running moments of the draws and (for the estimators that use them) the
    gradients."""

    step_size: step_size.DualAveragingState
    inverse_mass: jax.Array
    draws: welford.WelfordState
    gradients: welford.WelfordState


def tuner(
    dimension: int,
    dtype,
    *,
    target_acceptance: float,
    mass_matrix: str = DEFAULT_MASS_MATRIX,
    initial_step_size: float | None = None,
) -> Tuner:
    """The warm-up of ``StepParams(step_size, inverse_mass)`` for the driver.

    Args:
        dimension, dtype: of the flat positions.
        target_acceptance: δ, the acceptance statistic dual averaging aims for.
        mass_matrix: one of :data:`MASS_MATRICES`.
        initial_step_size: ε_0; default: Stan's heuristic from 1.
    """
    low_rank = mass_matrix == "low_rank"
    dense = mass_matrix == "dense"
    by_gradient = mass_matrix in ("diagonal_gradient", "low_rank")

    def init(key, state: integrators.GradientState, log_density_fn: Callable) -> WindowAdaptationState:
        if by_gradient:
            inverse_mass = jnp.clip(1.0 / jnp.abs(state.log_density_grad), *GRADIENT_DIAGONAL_BOUNDS)
            inverse_mass = jnp.where(jnp.isfinite(inverse_mass), inverse_mass, 1.0).astype(dtype)
            if low_rank:  # no correction yet
                rank = min(LOW_RANK_MAX, dimension)
                inverse_mass = metric.LowRankInverseMass(jnp.sqrt(inverse_mass), jnp.eye(dimension, rank, dtype=dtype),
                                                         jnp.ones(rank, dtype))
        elif dense:
            inverse_mass = jnp.eye(dimension, dtype=dtype)
        else:
            inverse_mass = jnp.ones(dimension, dtype)
        if initial_step_size is None:  # Stan's heuristic; a step size the user gave is kept as it is
            first = step_size.initial_step_size(key, state, integrators.value_and_grad(log_density_fn),
                                                inverse_mass, jnp.asarray(1.0, dtype))
        else:
            first = jnp.asarray(initial_step_size, dtype)
        return WindowAdaptationState(
            step_size=step_size.init(first),
            inverse_mass=inverse_mass,
            draws=welford.init(dimension, dtype, dense=dense or low_rank),
            gradients=welford.init(dimension if by_gradient else 0, dtype, dense=low_rank),
        )

    def params(ts: WindowAdaptationState) -> integrators.StepParams:
        return integrators.StepParams(step_size.current(ts.step_size), ts.inverse_mass)

    def update(ts: WindowAdaptationState, info, state: integrators.GradientState, window) -> WindowAdaptationState:
        in_window, window_end = window["in_slow_window"], window["window_end"]
        dual = step_size.update(ts.step_size, info.acceptance_rate, target_acceptance)
        draws = welford.update(ts.draws, state.position, in_window)
        gradients = ts.gradients
        if low_rank:
            gradients = welford.update(gradients, state.log_density_grad, in_window)
            # Computed only at a window's end (a real branch: eigendecompositions are not free).
            estimate = jax.lax.cond(window_end, lambda: low_rank_inverse_mass(
                welford.variance(draws), welford.variance(gradients), draws.count), lambda: ts.inverse_mass)
        elif by_gradient:
            gradients = welford.update(gradients, state.log_density_grad, in_window)
            estimate = gradient_diagonal(welford.variance(draws), welford.variance(gradients))
        else:
            estimate = welford.regularized_variance(draws)
        return WindowAdaptationState(
            step_size=step_size.restart(dual, window_end),
            inverse_mass=jax.tree_util.tree_map(lambda new, old: jnp.where(window_end, new.astype(dtype), old),
                                                estimate, ts.inverse_mass),
            draws=welford.reset(draws, window_end),
            gradients=welford.reset(gradients, window_end),
        )

    def final(ts: WindowAdaptationState) -> integrators.StepParams:
        return integrators.StepParams(step_size.final(ts.step_size), ts.inverse_mass)

    def report(params: integrators.StepParams) -> dict:
        return {"step_size": np.asarray(params.step_size),
                "inverse_mass": np.asarray(jax.vmap(metric.as_matrix)(params.inverse_mass))}

    return Tuner(init=init, params=params, update=update, final=final, report=report)


def gradient_diagonal(draws_variance, gradients_variance):
    """nutpie's diagonal: sqrt(var z / var g), bounded, 1 where undefined."""
    ratio = jnp.sqrt(draws_variance / gradients_variance)
    return jnp.clip(jnp.where(jnp.isfinite(ratio), ratio, 1.0), *GRADIENT_DIAGONAL_BOUNDS)


def _spd_powers(matrix: np.ndarray, powers) -> tuple:
    """matrix^p for each p, from one eigendecomposition of a symmetric positive definite matrix
    (eigenvalues floored at 1e-12)."""
    values, vectors = np.linalg.eigh(matrix)
    values = np.maximum(values, 1e-12)
    return tuple((vectors * values**power) @ vectors.T for power in powers)


def fit_low_rank(draws_covariance, gradients_covariance, count) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nutpie's diagonal with a low-rank correction fitted by the sample Fisher divergence (see the
    module docstring), from the window's covariances of the draws and of the gradients and its
    number of draws: ``(scale, vectors, values)`` of :class:`~elbox.mcmc.metric.LowRankInverseMass`,
    in float64 NumPy (LAPACK's double-precision eigensolver, 10-100 times faster on a CPU than
    the single-precision one XLA calls, and more accurate)."""
    draws_covariance = np.asarray(draws_covariance, np.float64)
    gradients_covariance = np.asarray(gradients_covariance, np.float64)
    count = float(count)
    dimension = draws_covariance.shape[0]
    rank = min(LOW_RANK_MAX, dimension)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt(np.diagonal(draws_covariance) / np.diagonal(gradients_covariance))
    diagonal = np.clip(np.where(np.isfinite(ratio), ratio, 1.0), *GRADIENT_DIAGONAL_BOUNDS)
    scale = np.sqrt(diagonal)
    draws_scaled = draws_covariance / np.outer(scale, scale)
    gradients_scaled = gradients_covariance * np.outer(scale, scale)
    identity = np.eye(dimension)
    fallback = (scale, identity[:, :rank], np.ones(rank))
    if not (np.all(np.isfinite(draws_scaled)) and np.all(np.isfinite(gradients_scaled))) or count < 2:
        return fallback
    # Only the span of the window's draws and gradients is seen (fewer draws than dimensions
    # leave the rest unseen): fit there, and leave the unseen directions to the diagonal. n draws
    # and n gradients span at most 2 (n - 1) directions; rounding error fills the rest.
    seen_values, basis = np.linalg.eigh(draws_scaled + gradients_scaled)
    order = np.argsort(np.argsort(-seen_values))
    seen = (seen_values > LOW_RANK_SEEN * seen_values.max()) & (order < 2 * (count - 1))
    both_seen = np.outer(seen, seen)
    # Shrunk toward the identity (no correction) as Stan shrinks its variances, more so for short
    # windows: n / (n + 5) of the window's estimate.
    weight = count / (count + LOW_RANK_SHRINKAGE_DRAWS)
    unseen_or_shrunk = np.where(seen, 1.0 - weight, 1.0)
    draws_seen = np.where(both_seen, weight * (basis.T @ draws_scaled @ basis), 0.0) + np.diag(unseen_or_shrunk)
    gradients_seen = (np.where(both_seen, weight * (basis.T @ gradients_scaled @ basis), 0.0)
                      + np.diag(unseen_or_shrunk))
    draws_seen += LOW_RANK_RIDGE * identity
    gradients_seen += LOW_RANK_RIDGE * identity
    # Σ = A^-½ (A^½ C A^½)^½ A^-½ with A = C_g', C = C_z': the SPD solution of Σ A Σ = C.
    root, inverse_root = _spd_powers(gradients_seen, (0.5, -0.5))
    (middle,) = _spd_powers(root @ draws_seen @ root, (0.5,))
    sigma = inverse_root @ middle @ inverse_root
    values, vectors = np.linalg.eigh(0.5 * (sigma + sigma.T))
    values = np.maximum(values, 1e-12)
    distance = np.abs(np.log(values))
    farthest = np.argsort(-distance)[:rank]
    values, vectors, distance = values[farthest], vectors[:, farthest], distance[farthest]
    values = np.where(distance > np.log(LOW_RANK_CUTOFF), values, 1.0)
    vectors = basis @ vectors  # back from the basis of the seen span
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(vectors))):
        return fallback
    return scale, vectors, values


def low_rank_inverse_mass(draws_covariance, gradients_covariance, count) -> metric.LowRankInverseMass:
    """:func:`fit_low_rank` from compiled code (a host callback, once per window and chain)."""
    dimension = draws_covariance.shape[0]
    rank = min(LOW_RANK_MAX, dimension)
    dtype = draws_covariance.dtype
    shapes = (jax.ShapeDtypeStruct((dimension,), dtype), jax.ShapeDtypeStruct((dimension, rank), dtype),
              jax.ShapeDtypeStruct((rank,), dtype))

    def on_host(draws, gradients, n):
        # One BLAS thread: the matrices are small, and BLAS threads that compete with XLA's for
        # the same cores made this fit ten times slower.
        with threadpoolctl.threadpool_limits(1):
            return tuple(np.asarray(part, dtype) for part in fit_low_rank(draws, gradients, n))

    scale, vectors, values = jax.pure_callback(on_host, shapes, draws_covariance, gradients_covariance, count,
                                               vmap_method="sequential")
    return metric.LowRankInverseMass(scale, vectors, values)


def gradient_sampler(
    name: str,
    build_kernel: Callable,
    stats: Callable,
    dimension: int,
    dtype,
    *,
    target_acceptance: float,
    mass_matrix: str,
    step_size: float | None,
    settings: dict | None = None,
) -> Sampler:
    """A gradient kernel with Stan's windowed warm-up, for the driver; the kernel's options
    (``step_size``, ``mass_matrix``, ``target_acceptance``) checked here, once for all."""
    mass_matrix = checks.one_of("mass_matrix", mass_matrix, MASS_MATRICES)
    target_acceptance = checks.probability("target_acceptance", target_acceptance)
    if step_size is not None:
        step_size = checks.positive("step_size", step_size)
    return Sampler(
        name=name,
        init=integrators.init_state,
        build_kernel=build_kernel,
        tuner=tuner(dimension, dtype, target_acceptance=target_acceptance, mass_matrix=mass_matrix,
                    initial_step_size=step_size),
        stats=stats,
        settings={"target_acceptance": target_acceptance, "mass_matrix": mass_matrix, **(settings or {})},
    )
