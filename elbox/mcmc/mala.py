"""The Metropolis-adjusted Langevin algorithm (MALA; Roberts & Tweedie 1996).

From z, with g = ∇ log p(x, z), propose a step of the Langevin diffusion preconditioned by M⁻¹:

    z' = z + (ε²/2) M⁻¹ g(z) + ε (M⁻¹)^½ e,   e ~ N(0, I),

so q(z' | z) = N(z'; z + (ε²/2) M⁻¹ g(z), ε² M⁻¹). The proposal is not symmetric, so it is
accepted with the Hastings-corrected probability

    α = min(1, p(x, z') q(z | z') / (p(x, z) q(z' | z))).

The gradient at the current position is cached in the state: one gradient per step. The
target acceptance rate during warm-up is 0.574, optimal for MALA in high dimension (Roberts &
Rosenthal 1998).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from elbox.mcmc import integrators, metric, window_adaptation
from elbox.mcmc.base import Sampler
from elbox.mcmc.integrators import GradientState, StepParams
from elbox.mcmc.window_adaptation import DEFAULT_MASS_MATRIX

TARGET_ACCEPTANCE = 0.574


class MALAInfo(NamedTuple):
    """``acceptance_rate``: α, the Hastings-corrected acceptance probability; ``is_accepted``."""

    acceptance_rate: jax.Array
    is_accepted: jax.Array


def proposal_log_density(to, from_, grad_from, params: StepParams) -> jax.Array:
    """log q(to | from) up to a constant that is the same in both directions."""
    drift = 0.5 * params.step_size**2 * metric.velocity(params.inverse_mass, grad_from)
    squared, _ = metric.mahalanobis_squared(params.inverse_mass, to - from_ - drift)
    return -0.5 * squared / params.step_size**2


def build_kernel(log_density_fn: Callable) -> Callable:
    """``kernel(key, state, params) -> (state, info)``: one MALA step."""
    value_and_grad = integrators.value_and_grad(log_density_fn)

    def kernel(key, state: GradientState, params: StepParams):
        key_noise, key_accept = jax.random.split(key)
        noise = jax.random.normal(key_noise, state.position.shape, state.position.dtype)
        drift = 0.5 * params.step_size**2 * metric.velocity(params.inverse_mass, state.log_density_grad)
        proposed = state.position + drift + params.step_size * metric.scale_noise(params.inverse_mass, noise)
        log_density, grad = value_and_grad(proposed)
        log_ratio = (
            log_density
            - state.log_density
            + proposal_log_density(state.position, proposed, grad, params)
            - proposal_log_density(proposed, state.position, state.log_density_grad, params)
        )
        log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        is_accepted = jnp.log(jax.random.uniform(key_accept, dtype=log_ratio.dtype)) < log_ratio
        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(is_accepted, new, old), GradientState(proposed, log_density, grad), state)
        return new_state, MALAInfo(jnp.exp(jnp.minimum(log_ratio, 0.0)), is_accepted)

    return kernel


def sampler(dimension: int, dtype, *, step_size: float | None = None, mass_matrix: str = DEFAULT_MASS_MATRIX,
            target_acceptance: float = TARGET_ACCEPTANCE) -> Sampler:
    """MALA for the driver, with Stan's windowed warm-up of ε and M⁻¹
    (:mod:`elbox.mcmc.window_adaptation`)."""
    return window_adaptation.gradient_sampler(
        "mala", build_kernel, _stats, dimension, dtype,
        target_acceptance=target_acceptance, mass_matrix=mass_matrix, step_size=step_size)


def _stats(info: MALAInfo, state: GradientState) -> dict:
    return {"lp": state.log_density, "acceptance_rate": info.acceptance_rate, "n_steps": jnp.ones((), jnp.int32)}
