"""The kinetic energy of Langevin and Hamiltonian kernels, K(p) = ½ pᵀ M⁻¹ p with p ~ N(0, M).

The inverse mass matrix M⁻¹ is the kernels' preconditioner: a vector (a diagonal M⁻¹), a
square matrix (dense), or a :class:`LowRankInverseMass` (a diagonal with a low-rank correction).
A well-chosen M⁻¹ is close to the posterior covariance, so that the target looks like a
standard Gaussian to the integrator. Which form it takes is read from its type and shape when
the kernel is traced, so no branch is left in the compiled program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg


class LowRankInverseMass(NamedTuple):
    """M⁻¹ = diag(scale) (I + Σ_k (values_k − 1) v_k v_kᵀ) diag(scale), with v_k the orthonormal
    columns of ``vectors`` (d × k) and ``values`` (k,) positive; a value of 1 corrects nothing.
    Applying it costs O(d k) instead of a dense matrix's O(d²)."""

    scale: jax.Array
    vectors: jax.Array
    values: jax.Array


def _low_rank_power(inverse_mass: LowRankInverseMass, vector, power) -> jax.Array:
    """(I + V diag(λ^power − 1) Vᵀ) x: the power of the correction (V orthonormal)."""
    coefficients = (inverse_mass.values**power - 1.0) * (inverse_mass.vectors.T @ vector)
    return vector + inverse_mass.vectors @ coefficients


class Factor(NamedTuple):
    """A square root L of M⁻¹ = L Lᵀ, as the products a kernel needs: ``apply(x)`` = L x,
    ``apply_transpose(x)`` = Lᵀ x and ``solve_transpose(x)`` = L⁻ᵀ x.

    In the coordinates w = L⁻¹ z the metric is the identity: a momentum p_w = Lᵀ p has kinetic
    energy ½ |p_w|², moves z at velocity L p_w = M⁻¹ p, and the gradient there is g_w = Lᵀ g.
    """

    apply: Callable
    apply_transpose: Callable
    solve_transpose: Callable


def factor(inverse_mass) -> Factor:
    """L with L Lᵀ = M⁻¹: sqrt(M⁻¹) for a diagonal, the Cholesky factor for a dense matrix, and
    diag(scale) (I + V diag(λ^½ − 1) Vᵀ) for a :class:`LowRankInverseMass`."""
    if isinstance(inverse_mass, LowRankInverseMass):
        scale = inverse_mass.scale
        return Factor(lambda x: scale * _low_rank_power(inverse_mass, x, 0.5),
                      lambda x: _low_rank_power(inverse_mass, scale * x, 0.5),
                      lambda x: _low_rank_power(inverse_mass, x, -0.5) / scale)
    if inverse_mass.ndim == 1:
        root = jnp.sqrt(inverse_mass)
        return Factor(lambda x: root * x, lambda x: root * x, lambda x: x / root)
    lower = jnp.linalg.cholesky(inverse_mass)
    return Factor(lambda x: lower @ x, lambda x: lower.T @ x,
                  lambda x: jax.scipy.linalg.solve_triangular(lower, x, lower=True, trans="T"))


def as_matrix(inverse_mass) -> jax.Array:
    """M⁻¹ as a vector (diagonal) or a matrix, whatever its form."""
    if isinstance(inverse_mass, LowRankInverseMass):
        vectors, values, scale = inverse_mass.vectors, inverse_mass.values, inverse_mass.scale
        corrected = jnp.eye(scale.shape[0], dtype=scale.dtype) + (vectors * (values - 1.0)) @ vectors.T
        return scale[:, None] * corrected * scale[None, :]
    return inverse_mass


def velocity(inverse_mass: jax.Array | None, momentum: jax.Array) -> jax.Array:
    """dz/dt = M⁻¹ p; ``None`` stands for the identity (whitened coordinates, :class:`Factor`)."""
    if inverse_mass is None:
        return momentum
    if isinstance(inverse_mass, LowRankInverseMass):
        return inverse_mass.scale * _low_rank_power(inverse_mass, inverse_mass.scale * momentum, 1.0)
    return inverse_mass * momentum if inverse_mass.ndim == 1 else inverse_mass @ momentum


def kinetic_energy(inverse_mass: jax.Array | None, momentum: jax.Array) -> jax.Array:
    """K(p) = ½ pᵀ M⁻¹ p (the log-determinant of M is constant and left out)."""
    return 0.5 * jnp.dot(momentum, velocity(inverse_mass, momentum))


def sample_momentum(key: jax.Array, inverse_mass: jax.Array, like: jax.Array) -> jax.Array:
    """p ~ N(0, M): p = e / sqrt(M⁻¹) for a diagonal, p = L⁻ᵀ e with M⁻¹ = L Lᵀ for a dense M⁻¹."""
    noise = jax.random.normal(key, like.shape, like.dtype)
    if isinstance(inverse_mass, LowRankInverseMass):
        return _low_rank_power(inverse_mass, noise, -0.5) / inverse_mass.scale
    if inverse_mass.ndim == 1:
        return noise / jnp.sqrt(inverse_mass)
    factor = jnp.linalg.cholesky(inverse_mass)
    return jax.scipy.linalg.solve_triangular(factor, noise, lower=True, trans="T")


def scale_noise(inverse_mass: jax.Array, noise: jax.Array) -> jax.Array:
    """(M⁻¹)^½ e, a draw from N(0, M⁻¹) for e ~ N(0, I) (Langevin's proposal noise)."""
    if isinstance(inverse_mass, LowRankInverseMass):
        return inverse_mass.scale * _low_rank_power(inverse_mass, noise, 0.5)
    if inverse_mass.ndim == 1:
        return jnp.sqrt(inverse_mass) * noise
    return jnp.linalg.cholesky(inverse_mass) @ noise


def mahalanobis_squared(inverse_mass: jax.Array, vector: jax.Array) -> jax.Array:
    """vᵀ M v = vᵀ (M⁻¹)⁻¹ v, and ½ log det M⁻¹, as a pair (Langevin's proposal density)."""
    if isinstance(inverse_mass, LowRankInverseMass):
        whitened = vector / inverse_mass.scale
        half_log_det = jnp.sum(jnp.log(inverse_mass.scale)) + 0.5 * jnp.sum(jnp.log(inverse_mass.values))
        return jnp.dot(whitened, _low_rank_power(inverse_mass, whitened, -1.0)), half_log_det
    if inverse_mass.ndim == 1:
        return jnp.sum(vector**2 / inverse_mass), 0.5 * jnp.sum(jnp.log(inverse_mass))
    factor = jnp.linalg.cholesky(inverse_mass)
    whitened = jax.scipy.linalg.solve_triangular(factor, vector, lower=True)
    return jnp.sum(whitened**2), jnp.sum(jnp.log(jnp.diagonal(factor)))
