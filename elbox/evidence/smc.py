"""Sequential Monte Carlo with adaptive tempering (Del Moral, Doucet & Jasra 2006; Jasra et al.
2011): log p(x) as the sum of the logs of the mean incremental weights.

R independent runs of N particles each step together. Each stage, at β:

1. choose the next β' > β as the largest with ESS(exp((β' − β) ℓ)) ≥ ρ R N (ρ = 0.5) over all
   R N particles pooled, or 1;
2. in each run r, add log (1/N) Σ_i exp((β' − β) ℓ(u_ri)) to its log Ẑ_r;
3. resample each run's N particles in proportion to those weights (systematic resampling);
4. move all particles with HMC on π_β' (:mod:`elbox.evidence.tempering`).

Each Ẑ_r estimates p(x) without bias but for the choice of β' from the particles, an O(1/(R N))
effect once the choice pools all runs. The reported log p(x) is the log of the runs' mean Ẑ, its
standard error the runs' relative spread over sqrt(R) (:func:`elbox.estimate.log_mean_exp`).
The runs share only β and the moves' tuning.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from elbox.evidence import tempering

TARGET_ESS_FRACTION = 0.5
MAX_STAGES = 1_000
BISECTION_STEPS = 60


def effective_sample_size(log_weights: jax.Array) -> jax.Array:
    """ESS = (Σ w)² / Σ w² of unnormalised log weights."""
    return jnp.exp(2 * jax.nn.logsumexp(log_weights) - jax.nn.logsumexp(2 * log_weights))


def next_beta_step(increments: jax.Array, beta, target_ess):
    """The largest Δ in (0, 1 − β] with ESS(exp(Δ ℓ)) ≥ target_ess, by bisection (ESS falls as Δ
    grows); 1 − β when the whole remaining step keeps that ESS."""
    remaining = 1.0 - beta

    def ess(delta):
        return effective_sample_size(jnp.where(jnp.isfinite(increments), delta * increments, -jnp.inf))

    def bisect(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        ok = ess(middle) >= target_ess
        return jnp.where(ok, middle, low), jnp.where(ok, high, middle)

    low, _ = jax.lax.fori_loop(0, BISECTION_STEPS, bisect, (jnp.zeros_like(remaining), remaining))
    # At least a step the dtype can see, so that β always grows.
    step = jnp.maximum(low, jnp.finfo(increments.dtype).tiny)
    return jnp.where(ess(remaining) >= target_ess, remaining, step)


def run(key, path: tempering.Path, start: jax.Array, num_moves: int,
        target_ess_fraction: float = TARGET_ESS_FRACTION):
    """R SMC runs from the particles ``start`` (shape ``(R, N, dimension)``, draws of the base).
    Returns a dict: ``log_z`` (per run), ``stages``, ``acceptance`` (mean over stages),
    ``reached_one`` (β = 1 before ``MAX_STAGES``), ``step_size`` (the moves' last, in units of the
    particles' spread)."""
    runs, n, dimension = start.shape
    dtype = start.dtype
    target_ess = target_ess_fraction * runs * n

    def flat(x):
        return x.reshape((runs * n,) + x.shape[2:])

    init = dict(key=key, positions=start, increments=tempering.increments(path, flat(start)).reshape(runs, n),
                beta=jnp.zeros((), dtype), log_z=jnp.zeros(runs, dtype), stage=jnp.int32(0),
                acceptance_sum=jnp.zeros((), dtype),
                step_size=jnp.asarray(tempering.initial_step_size(dimension), dtype))

    def keep_going(c):
        return (c["beta"] < 1.0) & (c["stage"] < MAX_STAGES)

    def stage(c):
        key, key_resample, key_move = jax.random.split(c["key"], 3)
        delta = next_beta_step(flat(c["increments"]), c["beta"], target_ess)
        log_weights = jnp.where(jnp.isfinite(c["increments"]), delta * c["increments"], -jnp.inf)
        log_z = c["log_z"] + jax.nn.logsumexp(log_weights, axis=1) - jnp.log(jnp.asarray(n, dtype))
        chosen = jax.vmap(tempering.systematic_resample)(jax.random.split(key_resample, runs), log_weights)
        positions = jnp.take_along_axis(c["positions"], chosen[:, :, None], axis=1)
        beta = jnp.where(delta >= 1.0 - c["beta"], jnp.ones((), dtype), c["beta"] + delta)
        moved, step_size, acceptance = tempering.move(key_move, flat(positions), beta, c["step_size"],
                                                      tempering.particle_variance(flat(positions)), path, num_moves)
        return dict(key=key, positions=moved.reshape(runs, n, dimension),
                    increments=tempering.increments(path, moved).reshape(runs, n), beta=beta, log_z=log_z,
                    stage=c["stage"] + 1, acceptance_sum=c["acceptance_sum"] + acceptance, step_size=step_size)

    c = jax.lax.while_loop(keep_going, stage, init)
    return dict(log_z=c["log_z"], stages=c["stage"], acceptance=c["acceptance_sum"] / jnp.maximum(c["stage"], 1),
                reached_one=c["beta"] >= 1.0, step_size=c["step_size"])
