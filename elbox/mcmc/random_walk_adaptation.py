"""Warm-up adaptation of a random-walk proposal: its scale and a diagonal preconditioner.

The proposal is z' = z + s * d * e with e ~ N(0, I), a global scale s and per-coordinate
scales d (the posterior standard deviations, estimated during warm-up).

* The scale follows a Robbins–Monro recursion toward a target acceptance rate a*:
  log s <- log s + t^(-kappa) (alpha_t - a*), kappa = 0.6, with alpha_t the step's acceptance
  probability. a* = 0.234 in several dimensions, 0.44 in one (Roberts, Gelman & Gilks 1997;
  Roberts & Rosenthal 2001).
* d is re-estimated at the end of each "slow" window from the window's draws (Welford's
  running variance, shrunk toward 1e-3 as Stan does), in windows that double in length
  (Stan's warm-up schedule, :mod:`elbox.mcmc.warmup`: a fast initial buffer, slow windows of
  25, 50, 100, ... steps, and a fast terminal buffer in which only s adapts).

After warm-up the kernel is fixed: s is the average of log s over the terminal buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from elbox.mcmc import welford

SCALE_LEARNING_EXPONENT = 0.6


class AdaptationState(NamedTuple):
    """Per-chain warm-up state.

    Attributes:
        log_scale: current log s.
        log_scale_sum, log_scale_count: running sum and count of log s since the last restart
            of the recursion, whose ratio is the scale kept after warm-up.
        step: steps since the recursion last restarted.
        diagonal: current per-coordinate proposal scales d.
        window: running moments of the window's draws (:mod:`elbox.mcmc.welford`).
    """

    log_scale: jax.Array
    log_scale_sum: jax.Array
    log_scale_count: jax.Array
    step: jax.Array
    diagonal: jax.Array
    window: welford.WelfordState


def default_target_acceptance(dimension: int) -> float:
    """0.44 for one dimension, 0.234 otherwise (the optimal random-walk acceptance rates)."""
    return 0.44 if dimension == 1 else 0.234


def initial_scale(dimension: int) -> float:
    """2.38 / sqrt(d), optimal for a standard Gaussian target in d dimensions."""
    return 2.38 / np.sqrt(dimension)


def init(dimension: int, dtype, scale: float | None = None) -> AdaptationState:
    log_scale = jnp.log(jnp.asarray(scale if scale is not None else initial_scale(dimension), dtype))
    return AdaptationState(
        log_scale=log_scale,
        log_scale_sum=jnp.zeros((), dtype),
        log_scale_count=jnp.zeros((), dtype),
        step=jnp.zeros((), jnp.int32),
        diagonal=jnp.ones(dimension, dtype),
        window=welford.init(dimension, dtype),
    )


def proposal_scale(state: AdaptationState) -> jax.Array:
    """Per-coordinate random-walk standard deviations s * d."""
    return jnp.exp(state.log_scale) * state.diagonal


def final_proposal_scale(state: AdaptationState) -> jax.Array:
    """The fixed per-coordinate scale after warm-up: exp(mean log s over the last buffer) * d."""
    mean_log_scale = jnp.where(
        state.log_scale_count > 0, state.log_scale_sum / jnp.maximum(state.log_scale_count, 1), state.log_scale
    )
    return jnp.exp(mean_log_scale) * state.diagonal


def update(
    state: AdaptationState,
    acceptance_rate: jax.Array,
    position: jax.Array,
    in_slow_window: jax.Array,
    window_end: jax.Array,
    target_acceptance: float,
) -> AdaptationState:
    """One warm-up step's update from the step's acceptance probability and new position."""
    step = state.step + 1
    log_scale = state.log_scale + step.astype(position.dtype) ** (-SCALE_LEARNING_EXPONENT) * (
        acceptance_rate - target_acceptance
    )

    window = welford.update(state.window, position, in_slow_window)

    # At a window's end: new diagonal (Stan's regularisation), fresh moments, and the scale
    # recursion restarts from the scale that is optimal for a well-preconditioned target.
    diagonal = jnp.where(window_end, jnp.sqrt(welford.regularized_variance(window)), state.diagonal)
    dimension = position.shape[0]
    restart_log_scale = jnp.log(jnp.asarray(initial_scale(dimension), position.dtype))
    log_scale = jnp.where(window_end, restart_log_scale, log_scale)
    step = jnp.where(window_end, 0, step)
    log_scale_sum = jnp.where(window_end, 0.0, state.log_scale_sum + log_scale)
    log_scale_count = jnp.where(window_end, 0.0, state.log_scale_count + 1)
    return AdaptationState(
        log_scale=log_scale,
        log_scale_sum=log_scale_sum,
        log_scale_count=log_scale_count,
        step=step,
        diagonal=diagonal,
        window=welford.reset(window, window_end),
    )
