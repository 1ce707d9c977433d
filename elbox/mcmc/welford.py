"""Running means and (co)variances of a window of draws (Welford 1962), and Stan's regularised
estimate of a variance from them. Kernel-free: MH's scales, the mass matrices of the gradient
kernels and their gradient-based variant all use it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Stan's shrinkage of a window's variance estimate toward a small constant: with n draws,
# (n / (n + 5)) var + 1e-3 (5 / (n + 5)).
SHRINKAGE_DRAWS = 5
SHRINKAGE_TARGET = 1e-3


class WelfordState(NamedTuple):
    """Running moments: ``mean``, ``m2`` (Σ (x − mean)² per coordinate, or the matrix of
    cross-products Σ (x − mean)(x − mean)ᵀ when ``dense``) and ``count``."""

    mean: jax.Array
    m2: jax.Array
    count: jax.Array


def init(dimension: int, dtype, dense: bool = False) -> WelfordState:
    m2 = jnp.zeros((dimension, dimension) if dense else (dimension,), dtype)
    return WelfordState(jnp.zeros(dimension, dtype), m2, jnp.zeros((), dtype))


def update(state: WelfordState, value: jax.Array, include) -> WelfordState:
    """Add ``value`` to the window where ``include`` is true (a traced boolean); else unchanged."""
    count = state.count + include
    delta = value - state.mean
    mean = state.mean + jnp.where(include, delta / jnp.maximum(count, 1), 0.0)
    if state.m2.ndim == 1:
        m2 = state.m2 + jnp.where(include, delta * (value - mean), 0.0)
    else:
        m2 = state.m2 + jnp.where(include, jnp.outer(delta, value - mean), 0.0)
    return WelfordState(mean, m2, count)


def reset(state: WelfordState, where) -> WelfordState:
    """An empty window where ``where`` is true (a window's end); else ``state``."""
    return jax.tree_util.tree_map(lambda x: jnp.where(where, jnp.zeros_like(x), x), state)


def variance(state: WelfordState) -> jax.Array:
    """The window's sample variance (or covariance matrix), divisor n − 1."""
    return state.m2 / jnp.maximum(state.count - 1, 1)


def regularized_variance(state: WelfordState) -> jax.Array:
    """Stan's estimate: (n / (n + 5)) var + 1e-3 (5 / (n + 5)) (times I for a covariance)."""
    n = state.count
    shrink = SHRINKAGE_TARGET * (SHRINKAGE_DRAWS / (n + SHRINKAGE_DRAWS))
    estimate = (n / (n + SHRINKAGE_DRAWS)) * variance(state)
    if state.m2.ndim == 1:
        return estimate + shrink
    return estimate + shrink * jnp.eye(state.m2.shape[0], dtype=state.m2.dtype)
