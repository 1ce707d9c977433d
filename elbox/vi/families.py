"""Variational families q(u) on the model's flat unconstrained space (dimension d).

Every family is an object with the same methods, its parameters a pytree:

* ``init(loc)`` -> params, centred at ``loc``
* ``sample_and_log_prob(key, params, n)`` -> (u of shape (n, d), log q(u) of shape (n,)),
  reparameterised: u = T_params(eps), eps from a fixed base distribution
* ``log_prob(params, u)`` -> log q(u), shape (n,)
* ``entropy(params)`` -> H[q] in closed form, or ``None``
* ``gaussian(params)`` -> (mean, covariance) when q is Gaussian, else ``None``

Families, from the poorest to the richest:

* :class:`MeanField`: q(u) = prod_i N(u_i; m_i, s_i^2), s = exp(log_scale).
* :class:`FullRank`: q(u) = N(u; m, L L^T), L = diag(exp(log_scale)) (I + S), S strictly lower.

Scales are parameterised by their logarithm: Adam moves each parameter by about the learning
rate per step, so a scale can travel from 0.01 to 100 in a few hundred steps.
* :class:`Flow`: a masked autoregressive flow with rational-quadratic spline transformers
  (flowjax), base N(0, I); sampling is one pass, as VI needs.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elbox.errors import SettingsError

LOG_2PI = math.log(2 * math.pi)
INITIAL_SCALE = 0.1


def standard_normal(key, shape: tuple[int, ...], dtype) -> jax.Array:
    """N(0, I) draws of ``shape``, drawn flat and reshaped: the same numbers as
    ``jax.random.normal(key, shape)``, but XLA compiles the flat draw several times faster."""
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def gaussian_entropy(log_diag_chol: jax.Array) -> jax.Array:
    """H[N(m, L L^T)] = sum(log diag L) + d/2 (1 + log 2 pi)."""
    d = log_diag_chol.shape[-1]
    return jnp.sum(log_diag_chol) + 0.5 * d * (1 + LOG_2PI)


class MeanField:
    """q(u) = prod_i N(u_i; m_i, s_i^2) with s_i = exp(log_scale_i)."""

    name = "meanfield"

    def __init__(self, dimension: int):
        self.dimension = dimension

    def init(self, loc: jax.Array) -> dict:
        return {"loc": jnp.asarray(loc), "log_scale": jnp.full_like(loc, math.log(INITIAL_SCALE))}

    def scale(self, params) -> jax.Array:
        return jnp.exp(params["log_scale"])

    def sample_and_log_prob(self, key, params, n: int):
        eps = standard_normal(key, (n, self.dimension), params["loc"].dtype)
        scale = self.scale(params)
        u = params["loc"] + scale * eps
        log_q = -0.5 * jnp.sum(eps**2, axis=-1) - jnp.sum(jnp.log(scale)) - 0.5 * self.dimension * LOG_2PI
        return u, log_q

    def log_prob(self, params, u):
        scale = self.scale(params)
        eps = (u - params["loc"]) / scale
        return -0.5 * jnp.sum(eps**2, axis=-1) - jnp.sum(jnp.log(scale)) - 0.5 * self.dimension * LOG_2PI

    def entropy(self, params):
        return gaussian_entropy(jnp.log(self.scale(params)))

    def gaussian(self, params):
        """(mean, covariance) in float64 NumPy, exp(log_scale) taken in float64 so that a collapsed
        q keeps a finite log-determinant."""
        scale = np.exp(np.asarray(params["log_scale"], np.float64))
        return np.asarray(params["loc"], np.float64), np.diag(scale**2)


class FullRank:
    """q(u) = N(u; m, L L^T) with L = diag(exp(log_scale)) (I + S), S strictly lower-triangular.

    Scaling each row of the unit-diagonal factor by its own scale makes the off-diagonal
    parameters relative (like correlations): Adam's steps of about the learning rate then mean
    the same thing whether the posterior's scales are 100 or 0.001. log det L = sum(log_scale).
    """

    name = "fullrank"

    def __init__(self, dimension: int):
        self.dimension = dimension
        self._rows, self._cols = np.tril_indices(dimension, -1)

    def init(self, loc: jax.Array) -> dict:
        d = self.dimension
        return {
            "loc": jnp.asarray(loc),
            "log_scale": jnp.full((d,), math.log(INITIAL_SCALE), jnp.asarray(loc).dtype),
            "off_diagonal": jnp.zeros((d * (d - 1) // 2,), jnp.asarray(loc).dtype),
        }

    def cholesky(self, params) -> jax.Array:
        d = self.dimension
        unit = jnp.eye(d, dtype=params["loc"].dtype).at[self._rows, self._cols].set(params["off_diagonal"])
        return jnp.exp(params["log_scale"])[:, None] * unit

    def sample_and_log_prob(self, key, params, n: int):
        eps = standard_normal(key, (n, self.dimension), params["loc"].dtype)
        chol = self.cholesky(params)
        u = params["loc"] + eps @ chol.T
        log_q = -0.5 * jnp.sum(eps**2, axis=-1) - jnp.sum(params["log_scale"]) - 0.5 * self.dimension * LOG_2PI
        return u, log_q

    def log_prob(self, params, u):
        chol = self.cholesky(params)
        eps = jax.scipy.linalg.solve_triangular(chol, (u - params["loc"]).T, lower=True).T
        return -0.5 * jnp.sum(eps**2, axis=-1) - jnp.sum(params["log_scale"]) - 0.5 * self.dimension * LOG_2PI

    def entropy(self, params):
        return gaussian_entropy(params["log_scale"])

    def gaussian(self, params):
        """(mean, covariance) in float64 NumPy (see :meth:`MeanField.gaussian`)."""
        unit = np.eye(self.dimension)
        unit[self._rows, self._cols] = np.asarray(params["off_diagonal"], np.float64)
        chol = np.exp(np.asarray(params["log_scale"], np.float64))[:, None] * unit
        return np.asarray(params["loc"], np.float64), chol @ chol.T


class Flow:
    """A masked autoregressive flow (Papamakarios et al. 2017) with rational-quadratic spline
    transformers (Durkan et al. 2019), from flowjax, shifted to start near ``loc``.

    u = loc + s * f(eps), eps ~ N(0, I), s = exp(log_scale) per coordinate: the flow starts near
    the identity, so q starts as the same narrow Gaussian as the other families and the flow
    only has to learn the shape. With ``invert=False`` the flow's forward map samples in one
    pass and returns log q(u) alongside, which is all the ELBO needs.
    """

    name = "flow"

    def __init__(self, dimension: int, key: jax.Array, flow_layers: int = 4, nn_width: int = 32, knots: int = 8):
        import equinox as eqx
        import paramax
        from flowjax.bijections import RationalQuadraticSpline
        from flowjax.distributions import Normal
        from flowjax.flows import masked_autoregressive_flow

        if dimension < 2:
            # An autoregressive flow needs at least two coordinates; a spline on one is enough.
            flow_layers = max(flow_layers, 1)
        self.dimension = dimension
        flow = masked_autoregressive_flow(
            key,
            base_dist=Normal(jnp.zeros(dimension)),
            transformer=RationalQuadraticSpline(knots=knots, interval=4.0),
            flow_layers=flow_layers,
            nn_width=nn_width,
            invert=False,
        )
        self._params0, self._static = eqx.partition(
            flow, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable)
        )
        self._unwrap = paramax.unwrap
        self._combine = eqx.combine

    def _flow(self, params):
        return self._unwrap(self._combine(params["flow"], self._static))

    def init(self, loc: jax.Array) -> dict:
        loc = jnp.asarray(loc)
        return {"loc": loc, "log_scale": jnp.full_like(loc, math.log(INITIAL_SCALE)), "flow": self._params0}

    def sample_and_log_prob(self, key, params, n: int):
        x, log_q = self._flow(params).sample_and_log_prob(key, (n,))
        return params["loc"] + jnp.exp(params["log_scale"]) * x, log_q - jnp.sum(params["log_scale"])

    def log_prob(self, params, u):
        x = (u - params["loc"]) * jnp.exp(-params["log_scale"])
        return self._flow(params).log_prob(x) - jnp.sum(params["log_scale"])

    def entropy(self, params):
        return None

    def gaussian(self, params):
        return None


FAMILIES = ("meanfield", "fullrank", "flow")


def make_family(name: str, dimension: int, key: jax.Array | None = None, **options: Any):
    """The family called ``name`` for a d-dimensional unconstrained space."""
    if name == "meanfield":
        return MeanField(dimension)
    if name == "fullrank":
        return FullRank(dimension)
    if name == "flow":
        return Flow(dimension, key if key is not None else jax.random.key(0), **options)
    raise SettingsError(f"Unknown variational family {name!r}; choose one of {', '.join(FAMILIES)}.")
