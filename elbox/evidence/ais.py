"""Annealed importance sampling (Neal 2001), forwards for a stochastic lower bound on log p(x) and
in reverse for a stochastic upper bound (bidirectional Monte Carlo, Grosse, Ghahramani & Adams
2015).

Forwards, each of N independent chains starts at a draw of the base b (β_0 = 0) and, for
t = 1..T, adds (β_t − β_{t−1}) ℓ(u) to its log weight and then moves by HMC on π_{β_t}
(:mod:`elbox.evidence.tempering`). Its weight w is an unbiased estimate of p(x), so
E[log w] ≤ log p(x): the log of the chains' mean weight is a stochastic lower bound, with the
delta-method standard error of :func:`elbox.estimate.log_mean_exp`.

In reverse, the chains start at exact posterior draws (β = 1) and anneal down to β = 0 along the
same schedule; their weights w' estimate 1 / p(x) without bias, so −log (mean w') is a
stochastic upper bound. Exact posterior draws exist for simulated data (the latent that
generated x is one) and for conjugate models; elbox runs the reverse direction where the model
can give them (:attr:`elbox.model.Known.posterior_sampler`).

The schedule is β_t = (t / T)^4: steps are small near the prior, where the likelihood's first
powers change the density most.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCHEDULE_POWER = 4


def schedule(num_steps: int, dtype) -> jax.Array:
    """β_0 = 0 < β_1 < ... < β_T = 1, β_t = (t / T)^4."""
    return (jnp.arange(num_steps + 1, dtype=dtype) / num_steps) ** SCHEDULE_POWER
