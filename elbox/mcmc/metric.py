"""The kinetic energy of Langevin and Hamiltonian kernels, K(p) = ½ pᵀ M⁻¹ p with p ~ N(0, M).

The inverse mass matrix M⁻¹ is the kernels' preconditioner: a vector (a diagonal M⁻¹) or a
square matrix (dense). A well-chosen M⁻¹ is close to the posterior covariance, so that the
target looks like a standard Gaussian to the integrator. Which form it takes is read from its
shape when the kernel is traced, so no branch is left in the compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg


def velocity(inverse_mass: jax.Array, momentum: jax.Array) -> jax.Array:
    """dz/dt = M⁻¹ p."""
    return inverse_mass * momentum if inverse_mass.ndim == 1 else inverse_mass @ momentum


def kinetic_energy(inverse_mass: jax.Array, momentum: jax.Array) -> jax.Array:
    """K(p) = ½ pᵀ M⁻¹ p (the log-determinant of M is constant and left out)."""
    return 0.5 * jnp.dot(momentum, velocity(inverse_mass, momentum))


def sample_momentum(key: jax.Array, inverse_mass: jax.Array, like: jax.Array) -> jax.Array:
    """p ~ N(0, M): p = e / sqrt(M⁻¹) for a diagonal, p = L⁻ᵀ e with M⁻¹ = L Lᵀ for a dense M⁻¹."""
    noise = jax.random.normal(key, like.shape, like.dtype)
    if inverse_mass.ndim == 1:
        return noise / jnp.sqrt(inverse_mass)
    factor = jnp.linalg.cholesky(inverse_mass)
    return jax.scipy.linalg.solve_triangular(factor, noise, lower=True, trans="T")


def scale_noise(inverse_mass: jax.Array, noise: jax.Array) -> jax.Array:
    """(M⁻¹)^½ e, a draw from N(0, M⁻¹) for e ~ N(0, I) (Langevin's proposal noise)."""
    if inverse_mass.ndim == 1:
        return jnp.sqrt(inverse_mass) * noise
    return jnp.linalg.cholesky(inverse_mass) @ noise


def mahalanobis_squared(inverse_mass: jax.Array, vector: jax.Array) -> jax.Array:
    """vᵀ M v = vᵀ (M⁻¹)⁻¹ v, and ½ log det M⁻¹, as a pair (Langevin's proposal density)."""
    if inverse_mass.ndim == 1:
        return jnp.sum(vector**2 / inverse_mass), 0.5 * jnp.sum(jnp.log(inverse_mass))
    factor = jnp.linalg.cholesky(inverse_mass)
    whitened = jax.scipy.linalg.solve_triangular(factor, vector, lower=True)
    return jnp.sum(whitened**2), jnp.sum(jnp.log(jnp.diagonal(factor)))
