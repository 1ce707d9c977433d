"""Sequential Monte Carlo with adaptive tempering (Del Moral, Doucet & Jasra 2006; Jasra et al.
2011): log p(x) as the sum of the logs of the mean incremental weights.

Each stage, with N equally weighted particles at β:

1. choose the next β' > β as the largest with ESS(exp((β' − β) ℓ)) ≥ ρ N (ρ = 0.5), or 1;
2. add log (1/N) Σ_i exp((β' − β) ℓ(u_i)) to log Ẑ;
3. resample N particles in proportion to those weights (systematic resampling);
4. move them with HMC on π_β' (:mod:`elbox.evidence.tempering`).

Choosing β' from the same particles that then estimate the increment biases Ẑ by O(1/N) per
stage, which adds up over a hundred stages. So a pilot run chooses the schedule, and the
estimate comes from independent runs along that fixed schedule: each run's Ẑ is then an
unbiased estimate of p(x). The reported log p(x) is the log of the runs' mean Ẑ, its standard
error the runs' relative spread over sqrt(runs) (:func:`elbox.estimate.log_mean_exp`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from elbox.evidence import tempering

TARGET_ESS_FRACTION = 0.5
MAX_STAGES = 2_000
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


def adaptive_schedule(key, path: tempering.Path, start: jax.Array, num_moves: int,
                      target_ess_fraction: float = TARGET_ESS_FRACTION):
    """A pilot SMC run from ``start`` that chooses each next β adaptively. Returns
    ``(betas, num_betas)``: the schedule β_0 = 0 < ... < β_{num_betas−1} = 1, padded with 1 to
    ``MAX_STAGES + 1`` entries (``num_betas`` is MAX_STAGES + 1 without reaching 1)."""
    n = start.shape[0]
    dtype = start.dtype
    target_ess = target_ess_fraction * n
    betas = jnp.ones(MAX_STAGES + 1, dtype).at[0].set(0.0)
    init = dict(key=key, positions=start, increments=tempering.increments(path, start), beta=jnp.zeros((), dtype),
                betas=betas, stage=jnp.int32(0),
                step_size=jnp.asarray(tempering.initial_step_size(start.shape[1]), dtype))

    def keep_going(c):
        return (c["beta"] < 1.0) & (c["stage"] < MAX_STAGES)

    def stage(c):
        key, key_resample, key_move = jax.random.split(c["key"], 3)
        delta = next_beta_step(c["increments"], c["beta"], target_ess)
        log_weights = jnp.where(jnp.isfinite(c["increments"]), delta * c["increments"], -jnp.inf)
        positions = c["positions"][tempering.systematic_resample(key_resample, log_weights)]
        beta = jnp.where(delta >= 1.0 - c["beta"], jnp.ones((), dtype), c["beta"] + delta)
        positions, step_size, _ = tempering.move(key_move, positions, beta, c["step_size"],
                                                 tempering.particle_variance(positions), path, num_moves)
        return dict(key=key, positions=positions, increments=tempering.increments(path, positions), beta=beta,
                    betas=c["betas"].at[c["stage"] + 1].set(beta), stage=c["stage"] + 1, step_size=step_size)

    c = jax.lax.while_loop(keep_going, stage, init)
    return c["betas"], c["stage"] + 1
