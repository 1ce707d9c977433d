"""Importance sampling from a fitted q: the importance-weighted bound and the plain estimate of
log p(x).

With log weights l_k = log p(x, u_k) − log q(u_k), u_k ~ q:

* IWAE_K = E[log (1/K) Σ_k exp(l_k)] (Burda, Grosse & Salakhutdinov 2016): the ELBO at K = 1,
  non-decreasing in K, tending to log p(x). Estimated from M independent groups of K draws:
  the mean over groups, with its standard error.
* The importance-sampling estimate log (1/S) Σ_s exp(l_s) over all S draws, with the delta-method
  standard error and the Pareto k̂ of the weights' tail (PSIS, Vehtari et al. 2024, through
  ArviZ): above 0.7 the weights' variance is effectively infinite and neither the estimate nor
  its standard error can be trusted.
"""

from __future__ import annotations

import jax
import numpy as np

from elbox import arviz_compat
from elbox.estimate import Estimate, log_mean_exp, mean_and_stderr

PARETO_K_LIMIT = 0.7


def log_weights(key, model, fit, num_draws: int) -> np.ndarray:
    """log p(x, u) − log q(u) at ``num_draws`` draws u ~ q, in float64."""

    def compute(key):
        draws, log_q = fit.family.sample_and_log_prob(key, fit.params, num_draws)
        return jax.vmap(model.flat_log_joint)(draws) - log_q

    values = np.asarray(jax.jit(compute)(key), dtype=np.float64)
    return np.where(np.isnan(values), -np.inf, values)


def iwae_bound(weights: np.ndarray, k: int) -> Estimate:
    """IWAE_K from the log weights split into groups of K: mean and standard error over groups."""
    groups = weights[: (weights.size // k) * k].reshape(-1, k)
    top = groups.max(axis=1, keepdims=True)
    values = top[:, 0] + np.log(np.mean(np.exp(groups - top), axis=1))
    return mean_and_stderr(values)


def pareto_k(weights: np.ndarray) -> float:
    """Pareto k̂ of the importance weights' right tail (ArviZ's PSIS)."""
    return arviz_compat.pareto_k(weights)


def importance_estimate(weights: np.ndarray) -> tuple[Estimate, float]:
    """The plain importance-sampling estimate of log p(x) and the weights' Pareto k̂."""
    return log_mean_exp(weights), pareto_k(weights)
