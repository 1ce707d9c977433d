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

Between changes of β the particles move by elbox's HMC kernel (:mod:`elbox.mcmc.hmc`, 4 leapfrog
steps on average, drawn per move) on π_β, which leaves π_β invariant. Its tuning
comes from the particles themselves: the inverse mass matrix is their variance (diagonal), and
the step size is multiplied after every move by exp(ā − 0.65), ā the particles' mean acceptance,
so it follows the path's changing curvature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from elbox.evidence import progress
from elbox.mcmc import hmc
from elbox.mcmc.integrators import GradientState, StepParams

TARGET_ACCEPTANCE = 0.65
NUM_LEAPFROG = 4


class Path(NamedTuple):
    """log π_β = log b + β ℓ, from one flat unconstrained vector.

    Attributes:
        base_and_increment: ``u -> (log b(u), ℓ(u))`` in one evaluation, b a normalised density
            (the prior, or q) and ℓ(u) = log p(x, u) − log b(u).
        start: ``"prior"`` or ``"q"``, in words for reports.
    """

    base_and_increment: Callable
    start: str

    def log_density(self, u, beta):
        """log π_β(u) = log b(u) + β ℓ(u)."""
        log_base, increment = self.base_and_increment(u)
        return log_base + beta * increment

    def increment(self, u):
        """ℓ(u)."""
        return self.base_and_increment(u)[1]


def prior_path(model) -> Path:
    """From the prior p(u) to the posterior: ℓ is the log-likelihood."""
    return Path(model.flat_log_prior_and_likelihood, "prior")


def fitted_path(model, fit) -> Path:
    """From a fitted q(u) to the posterior: ℓ = log p(x, u) − log q(u)."""

    def base_and_increment(u):
        log_q = fit.family.log_prob(fit.params, u)
        return log_q, model.flat_log_joint(u) - log_q

    return Path(base_and_increment, "q")


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
    particles' mean acceptance after each. Returns ``(positions, step_size, mean_acceptance)``.

    Each transition takes L leapfrog steps, L drawn uniformly from 1..2·4 − 1 per transition and
    shared by all particles (a vectorised batch waits for its longest trajectory, so one L per
    particle would cost the longest of them every time)."""

    def log_target(u):
        return path.log_density(u, beta)

    log_density, gradient = jax.vmap(jax.value_and_grad(log_target))(positions)
    states = GradientState(positions, log_density, gradient)

    def one_move(carry, key_move):
        states, step_size = carry
        key_steps, key_kernel = jax.random.split(key_move)
        num_steps = jax.random.randint(key_steps, (), 1, 2 * NUM_LEAPFROG)
        kernel = jax.vmap(hmc.build_kernel(log_target, num_steps=num_steps, jitter=False), in_axes=(0, 0, None))
        states, info = kernel(jax.random.split(key_kernel, positions.shape[0]), states,
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


def anneal(key, path: Path, start: jax.Array, betas: jax.Array, num_moves: int, phase: int):
    """Carry the particles ``start`` (draws of π_{β_0}) along ``betas`` without resampling (AIS):
    at each new β_t every particle's log weight gains (β_t − β_{t−1}) ℓ(u), then the particles
    move on π_{β_t}. Returns a dict: ``log_weights`` (per particle), ``acceptance`` (mean over
    steps), ``positions``. Each step is reported as ``phase`` (:mod:`elbox.evidence.progress`)."""
    n, dimension = start.shape
    dtype = start.dtype

    def anneal_step(t, c):
        beta = betas[t]
        log_weights = c["log_weights"] + jnp.where(jnp.isfinite(c["increments"]),
                                                   (beta - betas[t - 1]) * c["increments"], -jnp.inf)
        positions, step_size, acceptance = move(jax.random.fold_in(key, t), c["positions"], beta, c["step_size"],
                                                particle_variance(c["positions"], log_weights), path, num_moves)
        progress.report(phase, beta)
        return dict(positions=positions, increments=increments(path, positions), log_weights=log_weights,
                    step_size=step_size, acceptance_sum=c["acceptance_sum"] + acceptance)

    init = dict(positions=start, increments=increments(path, start), log_weights=jnp.zeros(n, dtype),
                step_size=jnp.asarray(initial_step_size(dimension), dtype), acceptance_sum=jnp.zeros((), dtype))
    c = jax.lax.fori_loop(1, betas.shape[0], anneal_step, init)
    return dict(log_weights=c["log_weights"], positions=c["positions"],
                acceptance=c["acceptance_sum"] / (betas.shape[0] - 1))
