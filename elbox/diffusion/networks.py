"""Denoisers for diffusion models: eps_theta(x_t, t) as equinox modules.

Both networks take one example as a vector (``MLPDenoiser``: shape (dim,); ``ConvDenoiser``:
an image flattened to (size * size,)) and the step t in 1..T, and return
``(eps_hat, v_or_None)``: the predicted noise, of x_t's shape, and with ``learn_variance=True``
the variance output v in [-1, 1] of improved DDPM's learned range (Nichol & Dhariwal 2021,
eq. 15: log sigma_t^2 = w log beta_t + (1 - w) log beta_tilde_t, w = (v + 1) / 2). Batch with
``jax.vmap``; adapt to the ``eps_fn(x_t, t)`` of :mod:`elbox.diffusion.elbo` with
:func:`as_eps_fn` (or ``lambda x, t: net(x, t, T)``).

The time enters through Fourier features of s = t / T (Vaswani et al. 2017's sinusoidal
embedding, as in DDPM): sin(omega_k s) and cos(omega_k s) at angular frequencies spaced
geometrically from pi (half a period over the whole diffusion) to pi T (half a period per step),
so both coarse and step-by-step differences in t are visible to the network.

The last layer starts near zero (its weights scaled by ``final_scale``, bias zero), so the
initial eps_hat is close to 0 and the initial v to 0 (the middle of the range): training starts
from the model whose reverse mean is x_t / sqrt(alpha_t), a stable, finite bound.

Example:
    >>> net = MLPDenoiser(jax.random.key(0), dim=2)
    >>> eps_hat, v = net(jnp.zeros(2), 10, 100)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from elbox.errors import DataError, SettingsError

FINAL_SCALE = 1e-2


def fourier_features(t, num_steps, num_features: int, dtype=jnp.float32):
    """Sinusoidal features of s = t / num_steps, shape (2 * num_features,):

        [sin(omega_k s), cos(omega_k s)],  omega_k = pi * num_steps^(k / (num_features - 1)),

    k = 0..num_features - 1 (a single feature uses omega = pi).
    """
    s = jnp.asarray(t, dtype) / jnp.asarray(num_steps, dtype)
    if num_features == 1:
        exponents = jnp.zeros((1,), dtype)
    else:
        exponents = jnp.linspace(0.0, 1.0, num_features, dtype=dtype)
    omegas = math.pi * jnp.power(jnp.asarray(num_steps, dtype), exponents)
    angles = omegas * s
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])


def _shrink(layer, scale: float):
    """``layer`` with its weight multiplied by ``scale`` and its bias zero."""
    layer = eqx.tree_at(lambda m: m.weight, layer, layer.weight * scale)
    if getattr(layer, "bias", None) is not None:
        layer = eqx.tree_at(lambda m: m.bias, layer, jnp.zeros_like(layer.bias))
    return layer


def _split_output(out, dim: int, learn_variance: bool):
    if learn_variance:
        return out[:dim], jnp.tanh(out[dim:])
    return out, None


class MLPDenoiser(eqx.Module):
    """eps_theta(x_t, t) as an MLP on [x_t, Fourier features of t / T], SiLU activations.

    Args:
        key: a JAX PRNG key for the initial weights.
        dim: the length of x_t.
        width: hidden units per layer.
        depth: hidden layers (at least 1).
        fourier_features: frequencies in the time embedding (2 features each: sin and cos).
        learn_variance: also output v = tanh(.) in [-1, 1] for ``variance="learned_range"``.
        final_scale: factor on the last layer's initial weights (near 0: eps_hat starts near 0).
        dtype: the parameters' dtype (default: JAX's default float).
        input_frequencies: angular frequencies omega of extra inputs sin(omega x_t), cos(omega x_t)
            per coordinate. For data on a grid of bin width w, omega = 2 pi / w gives the position
            of x_t within its bin, which the denoiser needs at low noise to move x_t onto the grid
            (the Fourier features of the input in VDM, appendix C).

    ``__call__(x_t, t, num_steps) -> (eps_hat, v or None)`` for one example x_t of shape (dim,).
    """

    layers: tuple
    final: eqx.nn.Linear
    dim: int = eqx.field(static=True)
    fourier_features: int = eqx.field(static=True)
    learn_variance: bool = eqx.field(static=True)
    input_frequencies: tuple = eqx.field(static=True)

    def __init__(self, key, dim: int, width: int = 256, depth: int = 3, fourier_features: int = 16,
                 learn_variance: bool = False, final_scale: float = FINAL_SCALE, dtype=None,
                 input_frequencies: tuple = ()):
        if depth < 1 or width < 1 or dim < 1 or fourier_features < 1:
            raise SettingsError(
                f"MLPDenoiser needs dim, width, depth and fourier_features >= 1; got dim={dim}, "
                f"width={width}, depth={depth}, fourier_features={fourier_features}."
            )
        keys = jax.random.split(key, depth + 1)
        self.input_frequencies = tuple(float(w) for w in input_frequencies)
        sizes = [dim * (1 + 2 * len(self.input_frequencies)) + 2 * fourier_features] + [width] * depth
        self.layers = tuple(
            eqx.nn.Linear(sizes[i], sizes[i + 1], key=keys[i], dtype=dtype) for i in range(depth)
        )
        out = 2 * dim if learn_variance else dim
        self.final = _shrink(eqx.nn.Linear(width, out, key=keys[depth], dtype=dtype), final_scale)
        self.dim = dim
        self.fourier_features = fourier_features
        self.learn_variance = learn_variance

    def __call__(self, x_t, t, num_steps):
        if x_t.shape != (self.dim,):
            raise DataError(
                f"MLPDenoiser(dim={self.dim}) takes one example of shape ({self.dim},); got shape "
                f"{x_t.shape}. Batch with jax.vmap, and flatten images to vectors."
            )
        dtype = self.final.weight.dtype
        x = x_t.astype(dtype)
        periodic = [f(omega * x) for omega in self.input_frequencies for f in (jnp.sin, jnp.cos)]
        h = jnp.concatenate([x, *periodic, fourier_features(t, num_steps, self.fourier_features, dtype)])
        for layer in self.layers:
            h = jax.nn.silu(layer(h))
        eps_hat, v = _split_output(self.final(h), self.dim, self.learn_variance)
        return eps_hat.astype(x_t.dtype), None if v is None else v.astype(x_t.dtype)


class ConvDenoiser(eqx.Module):
    """eps_theta(x_t, t) as a small convolutional network for single-channel square images
    (8 x 8 by default), on the flattened vector interface: x_t of shape (size * size,).

    Layers: a 3x3 convolution from 1 to ``channels`` channels, then ``num_layers`` blocks of
    SiLU(conv3x3(h) + a per-channel shift from the time embedding), and a final 3x3 convolution
    to 1 channel (2 with ``learn_variance``), initialised near zero. 'Same' padding throughout.

    Args:
        key: a JAX PRNG key.
        image_size: the image's side (size * size pixels).
        channels: feature maps per layer.
        num_layers: hidden convolution blocks (at least 1).
        fourier_features: frequencies in the time embedding.
        learn_variance: also output v in [-1, 1] per pixel.
        final_scale: factor on the last layer's initial weights.
        dtype: the parameters' dtype.
    """

    stem: eqx.nn.Conv2d
    blocks: tuple
    time_proj: tuple
    time_mlp: eqx.nn.Linear
    final: eqx.nn.Conv2d
    image_size: int = eqx.field(static=True)
    fourier_features: int = eqx.field(static=True)
    learn_variance: bool = eqx.field(static=True)

    def __init__(self, key, image_size: int = 8, channels: int = 32, num_layers: int = 3,
                 fourier_features: int = 16, learn_variance: bool = False,
                 final_scale: float = FINAL_SCALE, dtype=None):
        if num_layers < 1 or channels < 1 or image_size < 1:
            raise SettingsError(
                f"ConvDenoiser needs image_size, channels and num_layers >= 1; got image_size="
                f"{image_size}, channels={channels}, num_layers={num_layers}."
            )
        keys = jax.random.split(key, 2 * num_layers + 3)
        conv = lambda cin, cout, k: eqx.nn.Conv2d(cin, cout, 3, padding=1, key=k, dtype=dtype)
        self.stem = conv(1, channels, keys[0])
        self.time_mlp = eqx.nn.Linear(2 * fourier_features, channels, key=keys[1], dtype=dtype)
        self.blocks = tuple(conv(channels, channels, keys[2 + i]) for i in range(num_layers))
        self.time_proj = tuple(
            eqx.nn.Linear(channels, channels, key=keys[2 + num_layers + i], dtype=dtype) for i in range(num_layers)
        )
        out = 2 if learn_variance else 1
        self.final = _shrink(conv(channels, out, keys[-1]), final_scale)
        self.image_size = image_size
        self.fourier_features = fourier_features
        self.learn_variance = learn_variance

    def __call__(self, x_t, t, num_steps):
        size = self.image_size
        if x_t.shape != (size * size,):
            raise DataError(
                f"ConvDenoiser(image_size={size}) takes one flattened image of shape ({size * size},); "
                f"got shape {x_t.shape}. Batch with jax.vmap."
            )
        dtype = self.final.weight.dtype
        embedding = jax.nn.silu(self.time_mlp(fourier_features(t, num_steps, self.fourier_features, dtype)))
        h = self.stem(x_t.astype(dtype).reshape(1, size, size))
        for conv, proj in zip(self.blocks, self.time_proj):
            h = jax.nn.silu(conv(h) + proj(embedding)[:, None, None])
        out = self.final(h)  # (1 or 2, size, size)
        eps_hat = out[0].reshape(-1)
        v = jnp.tanh(out[1]).reshape(-1) if self.learn_variance else None
        return eps_hat.astype(x_t.dtype), None if v is None else v.astype(x_t.dtype)


class EpsFn(eqx.Module):
    """``eps_fn(x_t, t) = network(x_t, t, num_steps)``: a denoiser with its T, as a pytree, so
    that a compiled bound traced for one network is reused for another of the same shapes."""

    network: eqx.Module
    num_steps: int = eqx.field(static=True)

    def __call__(self, x_t, t):
        return self.network(x_t, t, self.num_steps)


def as_eps_fn(network, num_steps: int) -> Callable:
    """The ``eps_fn(x_t, t) -> (eps_hat, v or None)`` of :mod:`elbox.diffusion.elbo` for a
    denoiser ``network(x_t, t, num_steps)`` (an :class:`EpsFn`).

    Example:
        >>> result = bound_estimate(key, schedule, as_eps_fn(net, schedule.num_steps), data)
    """
    return EpsFn(network, int(num_steps))
