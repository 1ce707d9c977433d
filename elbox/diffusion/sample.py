"""Ancestral sampling from a trained diffusion model.

    x_T ~ N(0, I),   x_{t-1} ~ p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I),  t = T..2,

and at t = 1 the decoder's point estimate of x0 given x_1 (``decoder.point_estimate``): the mean
mu_theta(x_1, 1) for continuous data (no noise is added at the last step, as in DDPM), or, for
data on bins (:class:`~elbox.diffusion.decoders.DiscretizedGaussian`), the bin of highest
probability under the decoder (Ho, Jain & Abbeel 2020, Algorithm 2). One example is a ``lax.scan`` over t;
examples are batched with ``jax.vmap``. Everything is in the model's units (see
:class:`~elbox.diffusion.data.Dataset` for the map back to the data's units).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from elbox.diffusion.decoders import Gaussian, most_likely_bin
from elbox.diffusion.process import VARIANCES, p_mean_variance
from elbox.errors import SettingsError

__all__ = ["sample", "most_likely_bin"]  # most_likely_bin is defined in decoders and also importable from here


def sample(key, network, schedule, num_samples: int, dim: int, variance: str = "beta_tilde",
           num_steps: int | None = None, decoder=Gaussian(), dtype=None):
    """``num_samples`` draws of x0 from the diffusion model, in model units, shape (num_samples, dim).

    Args:
        key: a JAX PRNG key; draw i uses the i-th key of ``jax.random.split(key, num_samples)``
            (x_T and the noise of every step), so the first m draws do not depend on num_samples.
        network: a denoiser ``network(x_t, t, num_steps) -> (eps_hat, v or None)`` for one example
            of shape (dim,) (:class:`~elbox.diffusion.networks.MLPDenoiser`,
            :class:`~elbox.diffusion.networks.ConvDenoiser`).
        schedule: the :class:`~elbox.diffusion.schedules.Schedule` the network was trained with.
        num_samples, dim: how many draws, of what length.
        variance: the reverse variance (``"beta_tilde"``, ``"beta"`` or ``"learned_range"``), as in
            training.
        num_steps: the T passed to the network (default ``schedule.num_steps``).
        decoder: the last step returns ``decoder.point_estimate``: the mean for ``Gaussian()``,
            the most likely bin centre for a ``DiscretizedGaussian``.
        dtype: the floating dtype of the draws (default: JAX's default float).

    Returns:
        an array of shape (num_samples, dim).

    Example:
        >>> x = sample(jax.random.key(0), net, cosine_schedule(1000), 64, 2)
    """
    if variance not in VARIANCES:
        raise SettingsError(f"Unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}.")
    if int(num_samples) < 1 or int(dim) < 1:
        raise SettingsError(f"num_samples and dim must be positive; got {num_samples} and {dim}.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    T = schedule.num_steps
    num_steps = T if num_steps is None else int(num_steps)
    return _sample(key, network, schedule.cast(dtype), int(num_samples), int(dim), variance, num_steps, decoder, dtype)


@eqx.filter_jit
def _sample(key, network, schedule, num_samples, dim, variance, num_steps, decoder, dtype):
    T = schedule.num_steps

    def reverse(x, t):
        eps_hat, v = network(x, t, num_steps)
        mean, _, log_variance = p_mean_variance(schedule, x, t, eps_hat, variance, v)
        return mean, log_variance

    def one(draw_key):
        key_prior, key_steps = jax.random.split(draw_key)
        x_T = jax.random.normal(key_prior, (dim,), dtype)

        def body(x, inputs):
            t, step_key = inputs
            mean, log_variance = reverse(x, t)
            return mean + jnp.exp(0.5 * log_variance) * jax.random.normal(step_key, (dim,), dtype), None

        ts = jnp.arange(T, 1, -1)  # T, T-1, ..., 2
        x1, _ = jax.lax.scan(body, x_T, (ts, jax.random.split(key_steps, max(T - 1, 1))[: T - 1]))
        mean, log_variance = reverse(x1, jnp.asarray(1))
        return decoder.point_estimate(mean, 0.5 * log_variance)

    return jax.vmap(one)(jax.random.split(key, num_samples))
