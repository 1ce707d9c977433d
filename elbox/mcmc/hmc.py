"""Hamiltonian Monte Carlo with a fixed or jittered number of leapfrog steps (Duane et al. 1987;
Neal 2011).

Each transition draws a momentum p ~ N(0, M), integrates Hamilton's equations for
H(z, p) = −log p(x, z) + ½ pᵀ M⁻¹ p with L leapfrog steps of size ε
(:mod:`elbox.mcmc.integrators`), and accepts the end point with probability
min(1, exp(H(start) − H(end))). The leapfrog map is reversible and volume-preserving, so this is
a Metropolis step with a symmetric proposal in phase space.

L is ``num_steps``, or ``ceil(trajectory_length / ε)`` when a trajectory length is given. With
``jitter`` each transition draws its number of steps uniformly from {1, ..., 2L − 1} (mean L),
which breaks the periodic trajectories a fixed L can fall into. A transition whose energy error
exceeds 1000 is flagged ``diverging``: the integrator has left the posterior's typical set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from elbox import checks
from elbox.errors import SettingsError
from elbox.mcmc import integrators, metric, window_adaptation
from elbox.mcmc.base import Sampler
from elbox.mcmc.integrators import GradientState, IntegratorState, StepParams
from elbox.mcmc.window_adaptation import DEFAULT_MASS_MATRIX

TARGET_ACCEPTANCE = 0.65
DEFAULT_NUM_STEPS = 10
DIVERGENCE_THRESHOLD = 1000.0


class HMCInfo(NamedTuple):
    """What one transition did.

    Attributes:
        acceptance_rate: min(1, exp(H(start) − H(end))).
        is_accepted: whether the chain moved to the end point.
        diverging: the energy error H(end) − H(start) exceeded 1000 (or was not a number).
        energy: H at the state the chain is in after the transition.
        n_steps: leapfrog steps taken (gradient evaluations).
    """

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    diverging: jax.Array
    energy: jax.Array
    n_steps: jax.Array


def build_kernel(log_density_fn: Callable, num_steps: int | None = None, trajectory_length: float | None = None,
                 jitter: bool = True) -> Callable:
    """``kernel(key, state, params) -> (state, info)``: one HMC transition."""
    step = integrators.leapfrog(integrators.value_and_grad(log_density_fn))

    def kernel(key, state: GradientState, params: StepParams):
        key_momentum, key_steps, key_accept = jax.random.split(key, 3)
        momentum = metric.sample_momentum(key_momentum, params.inverse_mass, state.position)
        start = IntegratorState(state.position, momentum, state.log_density, state.log_density_grad)
        if trajectory_length is not None:
            steps = jnp.maximum(1, jnp.ceil(trajectory_length / params.step_size)).astype(jnp.int32)
        else:
            steps = jnp.int32(num_steps)
        if jitter:
            uniform = 1.0 - jax.random.uniform(key_steps, dtype=state.position.dtype)  # in (0, 1]
            steps = jnp.maximum(1, jnp.ceil(uniform * (2 * steps - 1))).astype(jnp.int32)
        end = jax.lax.fori_loop(0, steps, lambda _, s: step(s, params.step_size, params.inverse_mass), start)
        start_energy = integrators.energy(start, params.inverse_mass)
        end_energy = integrators.energy(end, params.inverse_mass)
        log_ratio = start_energy - end_energy
        log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        is_accepted = jnp.log(jax.random.uniform(key_accept, dtype=log_ratio.dtype)) < log_ratio
        proposed = GradientState(end.position, end.log_density, end.log_density_grad)
        new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(is_accepted, new, old), proposed, state)
        info = HMCInfo(
            acceptance_rate=jnp.exp(jnp.minimum(log_ratio, 0.0)),
            is_accepted=is_accepted,
            diverging=-log_ratio > DIVERGENCE_THRESHOLD,
            energy=jnp.where(is_accepted, end_energy, start_energy),
            n_steps=steps,
        )
        return new_state, info

    return kernel


def sampler(dimension: int, dtype, *, step_size: float | None = None, num_steps: int | None = None,
            trajectory_length: float | None = None, jitter: bool = True, mass_matrix: str = DEFAULT_MASS_MATRIX,
            target_acceptance: float = TARGET_ACCEPTANCE) -> Sampler:
    """HMC for the driver, with Stan's windowed warm-up of ε and M⁻¹
    (:mod:`elbox.mcmc.window_adaptation`); ``num_steps`` (default 10) or ``trajectory_length``."""
    if num_steps is not None and trajectory_length is not None:
        raise SettingsError("num_steps and trajectory_length both set the length of HMC's trajectories; give one.")
    if trajectory_length is not None:
        trajectory_length = checks.positive("trajectory_length", trajectory_length)
    else:
        num_steps = checks.count("num_steps", DEFAULT_NUM_STEPS if num_steps is None else num_steps, minimum=1)
    if not isinstance(jitter, bool):
        raise SettingsError(f"jitter must be True or False, got {jitter!r}.")
    return window_adaptation.gradient_sampler(
        "hmc", lambda fn: build_kernel(fn, num_steps, trajectory_length, jitter), _stats, dimension, dtype,
        target_acceptance=target_acceptance, mass_matrix=mass_matrix, step_size=step_size,
        settings={"num_steps": num_steps, "trajectory_length": trajectory_length, "jitter": jitter})


def _stats(info: HMCInfo, state: GradientState) -> dict:
    return {"lp": state.log_density, "acceptance_rate": info.acceptance_rate, "diverging": info.diverging,
            "energy": info.energy, "n_steps": info.n_steps}
