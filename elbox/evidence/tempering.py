"""Annealing from a normalised base density to the posterior: the path and the moves that
annealed importance sampling (:mod:`elbox.evidence.ais`) and sequential Monte Carlo
(:mod:`elbox.evidence.smc`) share.

The path of densities, for β from 0 to 1, is

    log π_β(u) = log b(u) + β ℓ(u),   ℓ(u) = log p(x, u) − log b(u),

from the base b (the prior p(u), or a fitted q(u)) to the unnormalised posterior p(x, u):
π_0 = b integrates to 1 and π_1 to p(x). With the prior as base ℓ is the log-likelihood and
π_β = p(u) p(x | u)^β. Moving a particle from β to β' multiplies its weight by
exp((β' − β) ℓ(u)), and E_{π_β}[exp((β' − β) ℓ(u))] = Z_β' / Z_β, so a product of such
averages along the path estimates Z_1 / Z_0 = p(x).

Between changes of β the particles move by elbox's HMC kernel (:mod:`elbox.mcmc.hmc`, jittered
trajectory of 10 leapfrog steps on average) on π_β, which leaves π_β invariant. Its tuning
comes from the particles themselves: the inverse mass matrix is their variance (diagonal), and
the step size is multiplied after every move by exp(ā − 0.65), ā the particles' mean acceptance,
so it follows the path's changing curvature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from elbox.mcmc import hmc
from elbox.mcmc.integrators import GradientState, StepParams

TARGET_ACCEPTANCE = 0.65
NUM_LEAPFROG = 4
NUM_MOVES = 20


class Path(NamedTuple):
    """log π_β = log_base + β increment, functions of one flat unconstrained vector.

    Attributes:
        log_base: log b(u), a normalised density (the prior, or q).
        increment: ℓ(u) = log p(x, u) − log b(u).
        start: ``"prior"`` or ``"q"``, in words for reports.
    """

    log_base: Callable
    increment: Callable
    start: str


def prior_path(model) -> Path:
    """From the prior p(u) to the posterior: ℓ is the log-likelihood."""
    return Path(model.flat_log_prior, model.flat_log_likelihood, "prior")


def fitted_path(model, fit) -> Path:
    """From a fitted q(u) to the posterior: ℓ = log p(x, u) − log q(u)."""

    def log_q(u):
        return fit.family.log_prob(fit.params, u)

    return Path(log_q, lambda u: model.flat_log_joint(u) - log_q(u), "q")


def draw_start(path: Path, model, fit, key, n: int) -> jax.Array:
    """``n`` draws of the base b, flat, shape ``(n, dimension)``."""
    if path.start == "q":
        return fit.family.sample_and_log_prob(key, fit.params, n)[0]
    return model.sample_prior(key, n)


def increments(path: Path, positions: jax.Array) -> jax.Array:
    """ℓ at each particle; NaN (outside the support) counts as −inf, a weight of zero."""
    values = jax.vmap(path.increment)(positions)
    return jnp.where(jnp.isnan(values), -jnp.inf, values)


def particle_variance(positions: jax.Array, log_weights: jax.Array | None = None) -> jax.Array:
    """The (weighted) variance of each coordinate over the particles: the moves' inverse mass
    matrix. Floored at a tiny multiple of the mean square, so that collapsed coordinates still move."""
    if log_weights is None:
        weights = jnp.full(positions.shape[0], 1.0 / positions.shape[0], positions.dtype)
    else:
        weights = jax.nn.softmax(log_weights)
    mean = weights @ positions
    variance = weights @ (positions - mean) ** 2
    floor = 1e-10 * (1.0 + weights @ positions**2)
    return jnp.maximum(variance, floor)


def initial_step_size(dimension: int) -> float:
    """ε = d^(−1/4): the scale at which HMC's acceptance stays away from zero on a whitened
    Gaussian target in d dimensions (the energy error grows as ε⁴ d)."""
    return float(dimension) ** -0.25


def move(key, positions: jax.Array, beta, step_size, inverse_mass, path: Path, num_moves: int):
    """``num_moves`` HMC transitions of every particle on π_β, the step size following the
    particles' mean acceptance after each. Returns ``(positions, step_size, mean_acceptance)``."""

    def log_target(u):
        return path.log_base(u) + beta * path.increment(u)

    kernel = jax.vmap(hmc.build_kernel(log_target, num_steps=NUM_LEAPFROG, jitter=True), in_axes=(0, 0, None))
    log_density, gradient = jax.vmap(jax.value_and_grad(log_target))(positions)
    states = GradientState(positions, log_density, gradient)

    def one_move(carry, key_move):
        states, step_size = carry
        states, info = kernel(jax.random.split(key_move, positions.shape[0]), states,
                              StepParams(step_size, inverse_mass))
        acceptance = jnp.mean(info.acceptance_rate)
        return (states, step_size * jnp.exp(acceptance - TARGET_ACCEPTANCE)), acceptance

    (states, step_size), acceptance = jax.lax.scan(one_move, (states, step_size), jax.random.split(key, num_moves))
    return states.position, step_size, jnp.mean(acceptance)


def systematic_resample(key, log_weights: jax.Array) -> jax.Array:
    """Indices of N particles drawn in proportion to exp(log_weights), one uniform offset for all
    (systematic resampling: lower variance than multinomial, same expectation)."""
    n = log_weights.shape[0]
    cumulative = jnp.cumsum(jax.nn.softmax(log_weights))
    points = (jax.random.uniform(key, dtype=cumulative.dtype) + jnp.arange(n, dtype=cumulative.dtype)) / n
    return jnp.clip(jnp.searchsorted(cumulative, points), 0, n - 1)


def anneal(key, path: Path, start: jax.Array, betas: jax.Array, num_betas, num_moves: int, resample: bool):
    """Carry the particles ``start`` (draws of π_{β_0}) along ``betas[:num_betas]``.

    At each new β_t every particle's log weight gains (β_t − β_{t−1}) ℓ(u); with ``resample``
    (SMC) the particles are then resampled in proportion to their weights and the log of the
    mean weight is added to log Ẑ; without (AIS) the weights accumulate per particle. Then the
    particles move on π_{β_t}. ``num_betas`` may be traced (a schedule padded to a fixed shape).
    Returns a dict: ``log_z`` (SMC: log Ẑ), ``log_weights`` (AIS: per particle; SMC: zeros),
    ``acceptance`` (mean over steps), ``positions``.
    """
    n, dimension = start.shape
    dtype = start.dtype

    def anneal_step(t, c):
        key_resample, key_move = jax.random.split(jax.random.fold_in(key, t))
        beta = betas[t]
        log_weights = c["log_weights"] + jnp.where(jnp.isfinite(c["increments"]),
                                                   (beta - betas[t - 1]) * c["increments"], -jnp.inf)
        positions, log_z = c["positions"], c["log_z"]
        if resample:
            log_z = log_z + jax.nn.logsumexp(log_weights) - jnp.log(jnp.asarray(n, dtype))
            positions = positions[systematic_resample(key_resample, log_weights)]
            log_weights = jnp.zeros_like(log_weights)
        inverse_mass = particle_variance(positions, log_weights)
        positions, step_size, acceptance = move(key_move, positions, beta, c["step_size"], inverse_mass, path,
                                                num_moves)
        return dict(positions=positions, increments=increments(path, positions), log_weights=log_weights,
                    log_z=log_z, step_size=step_size, acceptance_sum=c["acceptance_sum"] + acceptance)

    init = dict(positions=start, increments=increments(path, start), log_weights=jnp.zeros(n, dtype),
                log_z=jnp.zeros((), dtype), step_size=jnp.asarray(initial_step_size(dimension), dtype),
                acceptance_sum=jnp.zeros((), dtype))
    c = jax.lax.fori_loop(1, num_betas, anneal_step, init)
    return dict(log_z=c["log_z"], log_weights=c["log_weights"], positions=c["positions"],
                acceptance=c["acceptance_sum"] / jnp.maximum(num_betas - 1, 1))
