"""Leapfrog integration of Hamilton's equations for H(z, p) = −log p(x, z) + K(p).

One leapfrog step of size ε (Neal 2011, eq. 5.18-5.20), with g = ∇ log p(x, z):

    p ← p + (ε/2) g(z);   z ← z + ε M⁻¹ p;   p ← p + (ε/2) g(z)

It is reversible (negate p, step, negate p: back where it started) and volume-preserving, and
its energy error over a fixed time grows as ε², which is what makes HMC's acceptance high. The
gradient at the end of a step is kept, so each step costs one gradient evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from elbox.mcmc import metric


class GradientState(NamedTuple):
    """Where a chain of a gradient kernel (MALA, HMC, NUTS) is.

    Attributes:
        position: the flat unconstrained position z.
        log_density: log p(x, z) at ``position``.
        log_density_grad: ∇ log p(x, z) at ``position`` (cached: the next step needs it).
    """

    position: jax.Array
    log_density: jax.Array
    log_density_grad: jax.Array


class StepParams(NamedTuple):
    """The tunable parameters of a gradient kernel: ``step_size`` ε (a scalar) and the
    ``inverse_mass`` matrix M⁻¹ (a vector for a diagonal, a matrix for a dense one, a
    :class:`~elbox.mcmc.metric.LowRankInverseMass`, or None for the identity in whitened
    coordinates)."""

    step_size: jax.Array
    inverse_mass: jax.Array


class IntegratorState(NamedTuple):
    """A point in phase space: position, momentum, and the log density and its gradient there."""

    position: jax.Array
    momentum: jax.Array
    log_density: jax.Array
    log_density_grad: jax.Array


def value_and_grad(log_density_fn: Callable) -> Callable:
    """``z -> (log p(x, z), ∇ log p(x, z))``."""
    return jax.value_and_grad(log_density_fn)


def init_state(position: jax.Array, log_density: jax.Array, log_density_fn: Callable) -> GradientState:
    """The state at ``position`` whose log density is known; the gradient is computed here."""
    return GradientState(position, log_density, jax.grad(log_density_fn)(position))


def leapfrog(log_density_and_grad: Callable) -> Callable:
    """``step(state, step_size, inverse_mass) -> state``: one leapfrog step (negative step sizes
    integrate backwards in time)."""

    def step(state: IntegratorState, step_size, inverse_mass) -> IntegratorState:
        momentum = state.momentum + 0.5 * step_size * state.log_density_grad
        position = state.position + step_size * metric.velocity(inverse_mass, momentum)
        log_density, grad = log_density_and_grad(position)
        momentum = momentum + 0.5 * step_size * grad
        return IntegratorState(position, momentum, log_density, grad)

    return step


def whitened_leapfrog(log_density_and_grad: Callable, factor: metric.Factor) -> Callable:
    """``step(state, step_size, None) -> state``: the leapfrog step of :func:`leapfrog` for the
    metric M⁻¹ = L Lᵀ, taken in coordinates where that metric is the identity
    (:class:`~elbox.mcmc.metric.Factor`). The state's position and log density are the model's
    (z); its momentum and gradient are the whitened ones, p_w = Lᵀ p and g_w = Lᵀ ∇ log p(z):

        p_w ← p_w + (ε/2) g_w;   z ← z + ε L p_w;   p_w ← p_w + (ε/2) Lᵀ ∇ log p(z)

    the same path as :func:`leapfrog` with M⁻¹ (up to rounding), with two products with L per
    step and none for the kinetic energy or a U-turn check (½ |p_w|² and p_w · ρ_w).
    """

    def step(state: IntegratorState, step_size, inverse_mass=None) -> IntegratorState:
        momentum = state.momentum + 0.5 * step_size * state.log_density_grad
        position = state.position + step_size * factor.apply(momentum)
        log_density, grad = log_density_and_grad(position)
        grad = factor.apply_transpose(grad)
        momentum = momentum + 0.5 * step_size * grad
        return IntegratorState(position, momentum, log_density, grad)

    return step


def energy(state: IntegratorState, inverse_mass) -> jax.Array:
    """H = −log p(x, z) + K(p); +inf where the log density is not a number (outside the support)."""
    hamiltonian = -state.log_density + metric.kinetic_energy(inverse_mass, state.momentum)
    return jnp.where(jnp.isnan(hamiltonian), jnp.inf, hamiltonian)
