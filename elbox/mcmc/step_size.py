"""Step-size tuning for gradient kernels: dual averaging toward a target acceptance statistic,
and Stan's heuristic for a first step size. Kernel-free: any kernel whose ``info`` has an
``acceptance_rate`` in [0, 1] can use it.

Dual averaging (Nesterov 2009; Hoffman & Gelman 2014, Algorithm 5) drives the running mean of
the acceptance statistic α_t to the target δ: after step t,

    H̄_t = (1 − 1/(t + t0)) H̄_{t−1} + (δ − α_t) / (t + t0)
    log ε_t = μ − (√t / γ) H̄_t
    log ε̄_t = t^(−κ) log ε_t + (1 − t^(−κ)) log ε̄_{t−1}

with μ = log(10 ε_0), γ = 0.05, t0 = 10, κ = 0.75 (Stan's values). ε_t is used during warm-up,
ε̄ (the average, less noisy) after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from elbox.mcmc import integrators, metric

GAMMA = 0.05
T0 = 10.0
KAPPA = 0.75
HEURISTIC_TARGET = 0.8  # Stan's init_stepsize: one leapfrog step's acceptance crosses this
HEURISTIC_MAX_DOUBLINGS = 64


class DualAveragingState(NamedTuple):
    """``log_step_size`` (log ε_t, used now), ``log_step_size_average`` (log ε̄_t), ``h_bar``
    (H̄_t), ``mu`` (μ) and ``count`` (t, steps since the last restart)."""

    log_step_size: jax.Array
    log_step_size_average: jax.Array
    h_bar: jax.Array
    mu: jax.Array
    count: jax.Array


def init(step_size: jax.Array) -> DualAveragingState:
    """Start (or restart) from ε_0 = ``step_size``, with μ = log(10 ε_0)."""
    log_step_size = jnp.log(step_size)
    zero = jnp.zeros_like(log_step_size)
    return DualAveragingState(log_step_size, zero, zero, jnp.log(10.0) + log_step_size, zero)


def update(state: DualAveragingState, acceptance_rate: jax.Array, target: float) -> DualAveragingState:
    """One step of dual averaging with the step's acceptance statistic α_t."""
    count = state.count + 1
    eta = 1.0 / (count + T0)
    h_bar = (1.0 - eta) * state.h_bar + eta * (target - jnp.nan_to_num(acceptance_rate))
    log_step_size = state.mu - jnp.sqrt(count) / GAMMA * h_bar
    weight = count ** (-KAPPA)
    average = weight * log_step_size + (1.0 - weight) * state.log_step_size_average
    return DualAveragingState(log_step_size, average, h_bar, state.mu, count)


def restart(state: DualAveragingState, where) -> DualAveragingState:
    """Where ``where`` (a window's end, with a new mass matrix): restart from the current ε."""
    fresh = init(jnp.exp(state.log_step_size))
    return jax.tree_util.tree_map(lambda new, old: jnp.where(where, new, old), fresh, state)


def current(state: DualAveragingState) -> jax.Array:
    """ε_t, the step size during warm-up."""
    return jnp.exp(state.log_step_size)


def final(state: DualAveragingState) -> jax.Array:
    """ε̄, the step size after warm-up (ε_t if no step has been averaged yet)."""
    return jnp.exp(jnp.where(state.count > 0, state.log_step_size_average, state.log_step_size))


def initial_step_size(
    key: jax.Array,
    state: integrators.GradientState,
    log_density_and_grad: Callable,
    inverse_mass: jax.Array,
    step_size: jax.Array,
) -> jax.Array:
    """Stan's heuristic: from ``step_size``, double (or halve) ε until the acceptance probability
    of one leapfrog step from ``state`` (with a random momentum) crosses 0.8.

    Keeps a first step size from being absurd on targets whose scale is far from 1; a
    non-finite log density after the step counts as acceptance 0.
    """
    momentum = metric.sample_momentum(key, inverse_mass, state.position)
    start = integrators.IntegratorState(state.position, momentum, state.log_density, state.log_density_grad)
    step = integrators.leapfrog(log_density_and_grad)
    start_energy = integrators.energy(start, inverse_mass)
    log_target = jnp.log(HEURISTIC_TARGET)

    def log_acceptance(step_size):
        end = step(start, step_size, inverse_mass)
        return jnp.nan_to_num(start_energy - integrators.energy(end, inverse_mass), nan=-jnp.inf)

    # One loop, whose first pass only measures ε_0 and picks the direction, so that the model's
    # gradient appears once in the compiled program (its compilation is most of the cost).
    def keep_going(carry):
        _, count, log_accept, direction = carry
        return (count < 0) | ((count < HEURISTIC_MAX_DOUBLINGS) & (direction * log_accept > direction * log_target))

    def change(carry):
        step_size, count, _, direction = carry
        step_size = jnp.where(count < 0, step_size, step_size * 2.0**direction)
        log_accept = log_acceptance(step_size)
        direction = jnp.where(count < 0, jnp.where(log_accept > log_target, 1.0, -1.0), direction)
        return step_size, count + 1, log_accept, direction

    dtype = jnp.result_type(step_size)
    step_size, _, _, direction = jax.lax.while_loop(
        keep_going, change, (step_size, -1, jnp.zeros((), dtype), jnp.ones((), dtype)))
    # The loop stops one step past the crossing going up; going down it stops at the first
    # step size that is accepted often enough.
    return jnp.where(direction > 0, step_size / 2.0, step_size)
