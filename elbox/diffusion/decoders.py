"""The reconstruction likelihood log p_theta(x0 | x1) of a diffusion model.

Every decoder has one contract, so that the bounds and the samplers never ask which one they hold:

    decoder.log_likelihood(x0, mean, log_scale, prior_logits=None) -> log p(x0), elementwise, nats
    decoder.point_estimate(mean, log_scale, prior_logits=None)     -> what a sampler returns for x0

``mean`` and ``log_scale`` come from the reverse model at its last step; ``prior_logits`` is a
per-coordinate prior over the levels (shape (d, K)) for the decoder that takes one
(:class:`GridPosterior`); the others accept only ``None``.

The decoders are Gaussian around the reverse model's mean at t = 1 with the reverse model's
scale at t = 1 (Ho, Jain & Abbeel 2020, section 3.3):

* :class:`Gaussian`: a density, for continuous data. Its negative log is a differential
  entropy-like quantity (it changes with the units of x0 and can be negative), not a code length.
* :class:`DiscretizedGaussian`: a probability mass function, for data on a grid of bins of width
  w with centres low, low + w, ..., high (8-bit images scaled to [-1, 1]: w = 2/255). Bin x gets
  the Gaussian mass of [x - w/2, x + w/2], the two edge bins also everything beyond. Then
  -log2 p(x0) is the length in bits of a code for x0, and the bound in bits per dimension is an
  achievable compression rate (with bits-back coding) for the quantised data.
* :class:`GridPosterior`: a probability mass function over the same kind of bins, VDM's decoder
  (the posterior of the bin given a Gaussian observation, with an optional per-coordinate prior).

All functions are elementwise (sum over the dimensions for the log-likelihood of x0); their dtype
follows the inputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from elbox.errors import SettingsError

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)

# Below this value of h (1 + |c|) (half a bin width h and bin centre c in standard units) the
# bin's mass comes from its Taylor series, whose first omitted term is ~ (h (1 + |c|))^6 / 5040
# relative (< 2e-16 here); above it the log-difference of CDFs loses at most ~ ulp / (2 h phi/Phi).
SERIES_THRESHOLD = 1e-2


def gaussian_log_likelihood(x0, mean, log_scale):
    """Elementwise log N(x0; mean, sigma^2) with sigma = exp(log_scale):

        -1/2 log(2 pi) - log_scale - 1/2 ((x0 - mean) / sigma)^2.
    """
    z = (x0 - mean) * jnp.exp(-log_scale)
    return -HALF_LOG_TWO_PI - log_scale - 0.5 * jnp.square(z)


def log1mexp(x):
    """log(1 - exp(x)) for x <= 0, accurate for all x (Maechler 2012: -expm1 near 0, log1p in the tail)."""
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def log_diff_ndtr(a, b):
    """log(Phi(b) - Phi(a)) for a < b, Phi the standard normal CDF, without forming the difference.

    With log_ndtr exact in both tails,

        log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b)))          (centre <= 0)
                             = log Phi(-a) + log(1 - exp(log Phi(-b) - log Phi(-a)))       (centre > 0),

    the second the same identity on upper tails, Phi(b) - Phi(a) = Phi(-a) - Phi(-b), so that the
    larger CDF value is never close to 1 where precision would be lost. a may be -inf and b +inf.
    """
    flip = (a + b) > 0
    lo = jnp.where(flip, -b, a)
    hi = jnp.where(flip, -a, b)
    log_hi = log_ndtr(hi)
    return log_hi + log1mexp(log_ndtr(lo) - log_hi)


def discretized_gaussian_log_likelihood(x0, mean, log_scale, bin_width, low, high):
    """Elementwise log-probability of the bin centred at x0 under N(mean, sigma^2), sigma = exp(log_scale):

        P(x) = Phi((x + w/2 - mean) / sigma) - Phi((x - w/2 - mean) / sigma)     interior bins,
        P(low)  = Phi((low + w/2 - mean) / sigma)                                lowest bin (open below),
        P(high) = 1 - Phi((high - w/2 - mean) / sigma)                           highest bin (open above),

    so the probabilities of the bins low, low + w, ..., high sum to 1 for any mean and scale.
    Computed in log space with the exact log normal CDF (``log_ndtr``) and :func:`log_diff_ndtr`,
    accurate far into both tails (no clamping of P like DDPM's ``clamp(cdf_delta, min=1e-12)``);
    when the bin is narrow in standard units (h (1 + |c|) < 1e-2, with c = (x - mean) / sigma
    and h = w / (2 sigma)), from the series

        P = 2 h phi(c) [1 + He_2(c) h^2 / 6 + He_4(c) h^4 / 120],  He_2 = c^2 - 1,
        He_4 = c^4 - 6 c^2 + 3,

    where the difference of CDFs would cancel. DDPM's decoder for 8-bit images is
    ``bin_width=2/255, low=-1, high=1`` (Ho, Jain & Abbeel 2020, eq. 13).

    Args:
        x0: data on the bin centres low + k w, k = 0..K-1, K - 1 = round((high - low) / w); a
            value off the grid is taken to its nearest centre.
        mean, log_scale: the Gaussian's mean and log standard deviation (broadcast with x0).
        bin_width, low, high: w and the centres of the lowest and highest bins (Python numbers).

    Returns:
        log P(x0), elementwise, in nats.
    """
    # Bin k = 0..K-1 has centre low + k w and edges low + (k -+ 1/2) w, computed from k so that
    # the upper edge of bin k and the lower edge of bin k + 1 are the same floating-point number
    # (the masses then telescope to 1 up to the rounding of each log-CDF, whatever the scale).
    dtype = jnp.result_type(x0, mean, log_scale)
    x0, mean, log_scale = (jnp.asarray(a, dtype) for a in (x0, mean, log_scale))
    last = round((high - low) / bin_width)
    k = jnp.clip(jnp.round((x0 - low) / bin_width), 0, last)
    inv_scale = jnp.exp(-log_scale)
    centred = (low + k * bin_width - mean) * inv_scale
    half = 0.5 * bin_width * inv_scale
    upper = (low + (k + 0.5) * bin_width - mean) * inv_scale
    lower = (low + (k - 0.5) * bin_width - mean) * inv_scale
    is_lowest = k == 0
    is_highest = k == last
    narrow = (half * (1.0 + jnp.abs(centred)) < SERIES_THRESHOLD) & ~is_lowest & ~is_highest
    # Each branch gets safe inputs where it is not used, so that no branch is non-finite (a
    # non-finite unused branch would still poison gradients through jnp.where).
    use_difference = ~(is_lowest | is_highest | narrow)
    safe_lower = jnp.where(use_difference, lower, -1.0)
    safe_upper = jnp.where(use_difference, upper, 1.0)
    log_interior = log_diff_ndtr(safe_lower, safe_upper)
    c = jnp.where(narrow, centred, 0.0)
    h = jnp.where(narrow, half, 1e-3)
    c2, h2 = jnp.square(c), jnp.square(h)
    correction = (c2 - 1.0) * h2 / 6.0 + (jnp.square(c2) - 6.0 * c2 + 3.0) * jnp.square(h2) / 120.0
    log_narrow = jnp.log(2.0 * h) - HALF_LOG_TWO_PI - 0.5 * c2 + jnp.log1p(correction)
    log_lowest = log_ndtr(upper)
    log_highest = log_ndtr(-lower)
    # (With a single bin, low == high, that bin holds all the mass: log P = 0.)
    return jnp.where(
        is_lowest & is_highest,
        jnp.zeros_like(centred),
        jnp.where(
            is_lowest,
            log_lowest,
            jnp.where(is_highest, log_highest, jnp.where(narrow, log_narrow, log_interior)),
        ),
    )


def most_likely_bin(mean, log_scale, decoder):
    """Elementwise the bin centre low + k w (k = 0..K-1) of highest probability under
    N(mean, exp(log_scale)^2) with a :class:`DiscretizedGaussian`'s open-ended edge bins (an
    argmax over all K bins, so an edge bin wins where its tail mass beats the nearest interior bin)."""
    last = round((decoder.high - decoder.low) / decoder.bin_width)
    centres = decoder.low + jnp.arange(last + 1, dtype=mean.dtype) * decoder.bin_width
    shape = (last + 1,) + (1,) * mean.ndim
    log_p = decoder.log_likelihood(centres.reshape(shape), mean[None], log_scale[None])
    return centres[jnp.argmax(log_p, axis=0)]


def _no_prior(decoder, prior_logits):
    if prior_logits is not None:
        raise SettingsError(
            f"{type(decoder).__name__} takes no prior over the levels, but prior_logits were given; use "
            "GridPosterior for a model with prior logits, or build the model without them."
        )


class Gaussian(NamedTuple):
    """Continuous decoder: log p(x0 | x1) = sum_i log N(x0_i; mean_i, sigma_i^2)."""

    def log_likelihood(self, x0, mean, log_scale, prior_logits=None):
        """Elementwise log density, in nats (see :func:`gaussian_log_likelihood`)."""
        _no_prior(self, prior_logits)
        return gaussian_log_likelihood(x0, mean, log_scale)

    def point_estimate(self, mean, log_scale, prior_logits=None):
        """The mean (as DDPM's sampler returns at its last step, without noise)."""
        _no_prior(self, prior_logits)
        return mean


class DiscretizedGaussian(NamedTuple):
    """Decoder for data on bins of width ``bin_width`` centred at ``low``, ..., ``high``
    (defaults: 8-bit images scaled to [-1, 1]); see :func:`discretized_gaussian_log_likelihood`."""

    bin_width: float = 2.0 / 255.0
    low: float = -1.0
    high: float = 1.0

    def log_likelihood(self, x0, mean, log_scale, prior_logits=None):
        """Elementwise log-probability of x0's bins, in nats."""
        _no_prior(self, prior_logits)
        return discretized_gaussian_log_likelihood(x0, mean, log_scale, self.bin_width, self.low, self.high)

    def point_estimate(self, mean, log_scale, prior_logits=None):
        """The bin centre of highest probability, elementwise (:func:`most_likely_bin`)."""
        _no_prior(self, prior_logits)
        return most_likely_bin(mean, log_scale, self)


class GridPosterior(NamedTuple):
    """Decoder for data on the bins ``low, low + w, ..., high``: each coordinate's bin drawn from
    the posterior of a per-coordinate categorical prior given a Gaussian observation,

        p(x_i = c_k | mean, sigma) = pi_i(k) N(mean_i; c_k, sigma^2) / sum_j pi_i(j) N(mean_i; c_j, sigma^2),

    with log pi_i the ``prior_logits`` (shape (d, K); None: uniform). With mean = z_0 / alpha_0
    and sigma = sigma_0 / alpha_0 this is q(z_0 | x) turned into a distribution over the grid
    by Bayes' rule, VDM's decoder (Kingma et al. 2021, appendix C) with a prior over the levels:
    for large sigma it tends to the independent categorical model pi, for small sigma to the bin
    of z_0 / alpha_0. A probability mass function, so bits/dim is a code length.
    """

    bin_width: float
    low: float
    high: float

    @property
    def num_levels(self) -> int:
        return round((self.high - self.low) / self.bin_width) + 1

    def centres(self, dtype):
        return self.low + jnp.arange(self.num_levels, dtype=dtype) * self.bin_width

    def log_probabilities(self, mean, log_scale, prior_logits=None):
        """log p(x_i = c_k), shape mean.shape + (K,)."""
        centres = self.centres(mean.dtype)
        logits = -0.5 * jnp.square((mean[..., None] - centres) * jnp.exp(-log_scale)[..., None])
        if prior_logits is not None:
            logits = logits + jax.nn.log_softmax(prior_logits, axis=-1)
        return jax.nn.log_softmax(logits, axis=-1)

    def log_likelihood(self, x0, mean, log_scale, prior_logits=None):
        """Elementwise log-probability of x0's bins, in nats."""
        k = jnp.clip(jnp.round((x0 - self.low) / self.bin_width), 0, self.num_levels - 1).astype(jnp.int32)
        log_p = self.log_probabilities(mean, jnp.broadcast_to(log_scale, mean.shape), prior_logits)
        return jnp.take_along_axis(log_p, k[..., None], axis=-1)[..., 0]

    def most_likely(self, mean, log_scale, prior_logits=None):
        """The bin centre of highest probability, elementwise."""
        log_p = self.log_probabilities(mean, jnp.broadcast_to(log_scale, mean.shape), prior_logits)
        return self.centres(mean.dtype)[jnp.argmax(log_p, axis=-1)]

    def point_estimate(self, mean, log_scale, prior_logits=None):
        """The bin centre of highest probability, elementwise (:meth:`most_likely`)."""
        return self.most_likely(mean, log_scale, prior_logits)
