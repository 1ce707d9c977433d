"""Data sets for diffusion models: built-in densities with known entropy, 8x8 digits, the user's own.

Every loader returns a :class:`Dataset`: ``train`` and ``test`` as float32 arrays of shape (n, d)
in the data's ORIGINAL units, the number of ``levels`` (None for continuous data, K for integers
0..K-1), and the affine map to the units a model is trained in,

    y = scale * x + shift                (scale > 0 a number, shift a number or one per column),

with ``log_jacobian_per_dim`` the correction that turns a model's negative log-likelihood per
dimension on y back into the original units:

    nats/dim(x) = nats/dim(y) - log_jacobian_per_dim,

    log_jacobian_per_dim = log|scale|   continuous data (p_x(x) = p_y(y) |scale|^d),
                         = 0            discrete data (a probability mass does not change with
                                        the units: bin k of x is bin k of y).

``true_entropy_per_dim`` is the entropy of the data-generating distribution in nats per
dimension in the original units (differential for continuous data, Shannon for discrete data),
or None where it is unknown. A model's bound (in nats/dim of x) can never beat it on average:
E[-log p_theta(x)] = H + KL(p_data || p_theta) >= H.

Built-in data sets (:func:`get_dataset` by name):

* ``gmm8``: 8 equally weighted isotropic Gaussians, sd 0.1, centred on the circle of radius 2
  at angles 2 pi k / 8; exact log density :func:`gmm8_log_density`.
* ``checkerboard``: uniform on the 8 unit squares (i, j) of [-2, 2]^2 with i + j even
  (i, j = floor of the coordinates); exact log density :func:`checkerboard_log_density`,
  entropy log(8) / 2 nats/dim.
* ``moons``: two interleaving half circles with Gaussian noise (scikit-learn's ``make_moons``
  construction, written with NumPy); no known entropy.
* ``gmm8_quantized``: ``gmm8`` quantised to 256 levels per dimension on [-3, 3]; its exact
  discrete entropy from the bin probabilities (:func:`gmm8_quantized_probabilities`).
* ``digits``: the 1,797 8x8 handwritten digits bundled with scikit-learn (UCI Optical
  Recognition of Handwritten Digits; Alpaydin & Kaynak), 64 pixels with levels 0..16.

The samplers draw with NumPy's ``default_rng`` from fixed seeds: the same ``seed`` gives the same
data, the train and test sets come from independent streams (the test set does not change
with ``n_train``), and each row uses its own block of uniforms (a larger ``n_train`` extends a
smaller one). A user's ``.npy`` or ``.csv`` file is read by :func:`load_array`, which checks
it before anything starts and raises :class:`elbox.errors.DataError` naming the problem.
"""

from __future__ import annotations

import difflib
import functools
import io
import math
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from scipy.special import entr, ndtr, ndtri

from elbox import checks
from elbox.errors import DataError, SettingsError

__all__ = [
    "Dataset",
    "gmm8",
    "checkerboard",
    "moons",
    "gmm8_quantized",
    "digits",
    "gmm8_log_density",
    "checkerboard_log_density",
    "gmm8_quantized_probabilities",
    "independent_categorical_baseline_bits_per_dim",
    "uniform_bits_per_dim",
    "load_array",
    "check_width",
    "check_float32_range",
    "get_dataset",
    "builtin_names",
    "DataError",
]

# ---------------------------------------------------------------------------------------------
# The Dataset container
# ---------------------------------------------------------------------------------------------


class Dataset(NamedTuple):
    """A train/test pair with what is known about its distribution.

    Fields:
        name: the built-in name, or the file's path for a user's data.
        train, test: float32 arrays of shape (n_train, d) and (n_test, d), original units.
        levels: None for continuous data; K for data on the integers 0..K-1.
        scale, shift: the map to model units, y = scale * x + shift (scale > 0 a float, shift a
            float or a float32 array of shape (d,)). Discrete data with K levels map to the bin
            centres -1, -1 + 2/(K-1), ..., 1 (``DiscretizedGaussian(2/(K-1), -1, 1)``).
        log_jacobian_per_dim: nats/dim(x) = nats/dim(y) - log_jacobian_per_dim; log(scale) for
            continuous data, 0 for discrete data.
        true_entropy_per_dim: the data distribution's entropy in nats per dimension in the
            original units (differential if continuous, Shannon if discrete), or None.
        description: one line on where the data come from.

    Example:
        >>> data = gmm8(seed=0)
        >>> y = data.to_model(data.train)                   # what the model sees
        >>> data.nats_per_dim_original(1.0)                 # a bound of 1 nat/dim on y
        1.6931...
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    levels: int | None
    scale: float
    shift: float | np.ndarray
    log_jacobian_per_dim: float
    true_entropy_per_dim: float | None
    description: str = ""

    @property
    def dim(self) -> int:
        """d, the number of columns."""
        return int(self.train.shape[1])

    @property
    def true_bits_per_dim(self) -> float | None:
        """``true_entropy_per_dim`` in bits (divided by log 2), or None."""
        return None if self.true_entropy_per_dim is None else self.true_entropy_per_dim / math.log(2.0)

    def to_model(self, x):
        """y = scale * x + shift (dtype follows x)."""
        return x * self.scale + _as_shift(self.shift, x)

    def from_model(self, y):
        """x = (y - shift) / scale, the inverse of :meth:`to_model` (dtype follows y)."""
        return (y - _as_shift(self.shift, y)) / self.scale

    def nats_per_dim_original(self, nats_per_dim_model):
        """A negative log-likelihood per dimension on model units, in the data's own units:
        nats/dim(x) = nats/dim(y) - log_jacobian_per_dim."""
        return nats_per_dim_model - self.log_jacobian_per_dim

    def bits_per_dim_original(self, nats_per_dim_model):
        """As :meth:`nats_per_dim_original`, in bits: (nats/dim(y) - log_jacobian_per_dim) / log 2."""
        return self.nats_per_dim_original(nats_per_dim_model) / math.log(2.0)

    def decoder_bins(self) -> tuple[float, float, float]:
        """(bin_width, low, high) of the bins in model units, for ``DiscretizedGaussian``:
        (scale, shift, scale (K - 1) + shift). Only for discrete data."""
        if self.levels is None:
            raise DataError(
                f"data set {self.name!r} is continuous (levels=None), so it has no bins; use the "
                "Gaussian decoder, or load the data with levels=K if they are integers 0..K-1"
            )
        shift = float(np.asarray(self.shift).reshape(-1)[0])
        return (self.scale, shift, self.scale * (self.levels - 1) + shift)


def _as_shift(shift, like):
    if np.ndim(shift) == 0:
        return shift
    dtype = getattr(like, "dtype", np.float32)
    if not np.issubdtype(np.dtype(dtype), np.floating):
        dtype = np.float32
    return np.asarray(shift).astype(dtype)


def _discrete_map(levels: int) -> tuple[float, float]:
    """scale, shift mapping the integers 0..K-1 onto the bin centres -1 ... 1 (width 2/(K-1))."""
    return 2.0 / (levels - 1), -1.0


def _check_sizes(n_train, n_test):
    for label, n in (("n_train", n_train), ("n_test", n_test)):
        checks.count(label, n, 1)


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for the train and the test set, from one seed."""
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(train_seq), np.random.default_rng(test_seq)


# ---------------------------------------------------------------------------------------------
# gmm8
# ---------------------------------------------------------------------------------------------

GMM8_RADIUS = 2.0
GMM8_SD = 0.1
GMM8_CENTRES = np.array(
    [[GMM8_RADIUS * math.cos(2 * math.pi * k / 8), GMM8_RADIUS * math.sin(2 * math.pi * k / 8)] for k in range(8)]
)

# Differential entropy of gmm8 in nats per dimension, H / 2 with H = -E[log p(x)].
#
# Computed by the trapezoid rule in float64 for -p log p on the square [-3, 3]^2 (the mass
# outside is below 1e-40) with steps h = 0.004 and h = 0.002: 0.15607421105051 and
# 0.15607421105055 (the rule converges exponentially fast for a smooth, rapidly decaying
# integrand; total mass 1 to 2e-13). The components are 1.53 / 0.1 = 15 sds apart, so the value
# is also the closed form for disjoint components, (log 8 + log(2 pi e sd^2)) / 2
# = 0.156074211050545, the overlap correction being ~ exp(-15^2 / 8) < 1e-12.
# A Monte Carlo check with 4e6 draws (float64, default_rng(123)) gave 0.15556 +- 0.00025
# (standard error), 2.1 standard errors away. The value 0.149 quoted earlier is not right.
GMM8_ENTROPY_PER_DIM = 0.15607421105054
GMM8_ENTROPY_PER_DIM_ERROR = 1e-12  # bound on the quadrature error, nats per dimension


def gmm8_log_density(x):
    """Exact log density of ``gmm8`` at x of shape (..., 2), in nats (dtype follows x):

        log p(x) = logsumexp_k [-|x - c_k|^2 / (2 s^2)] - log 8 - log(2 pi s^2),

    c_k = 2 (cos(2 pi k / 8), sin(2 pi k / 8)), s = 0.1.

    Example:
        >>> float(gmm8_log_density(jnp.array([2.0, 0.0])))   # at a centre: -log(8 * 2 pi 0.01)
        0.6878...
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.shape[-1:] != (2,):
        raise DataError(f"gmm8_log_density needs points of shape (..., 2); got shape {x.shape}")
    centres = jnp.asarray(GMM8_CENTRES, x.dtype)
    squared = jnp.sum(jnp.square(x[..., None, :] - centres), axis=-1)
    const = math.log(8.0) + math.log(2 * math.pi * GMM8_SD**2)
    return logsumexp(-squared / (2 * GMM8_SD**2), axis=-1) - const


def _uniforms(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """An (n, k) block of uniforms on the open interval (0, 1), row by row from the stream, so that
    the first m rows of n draws are the m draws (a larger data set extends a smaller one)."""
    return rng.random((n, k)) + 2.0**-54


def _sample_gmm8(rng: np.random.Generator, n: int) -> np.ndarray:
    # Row i uses uniforms u_i1..u_i3: component floor(8 u_i1), coordinates c + s Phi^{-1}(u_i2, u_i3).
    u = _uniforms(rng, n, 3)
    component = np.minimum((8 * u[:, 0]).astype(np.int64), 7)
    return GMM8_CENTRES[component] + GMM8_SD * ndtri(u[:, 1:])


def _half_scaled_2d(name, sampler, n_train, n_test, seed, entropy_per_dim, description) -> Dataset:
    """A continuous 2-D data set on about [-2, 2]^2, mapped to model units by y = x / 2."""
    _check_sizes(n_train, n_test)
    train_rng, test_rng = _streams(seed)
    return Dataset(
        name=name,
        train=sampler(train_rng, n_train).astype(np.float32),
        test=sampler(test_rng, n_test).astype(np.float32),
        levels=None,
        scale=0.5,
        shift=0.0,
        log_jacobian_per_dim=math.log(0.5),
        true_entropy_per_dim=entropy_per_dim,
        description=description,
    )


def gmm8(n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Dataset:
    """Eight Gaussians: p(x) = (1/8) sum_k N(x; c_k, 0.1^2 I), c_k = 2 (cos 2 pi k/8, sin 2 pi k/8).

    Model units: y = x / 2 (the circle of radius 1). True entropy: :data:`GMM8_ENTROPY_PER_DIM`
    (0.156074 nats/dim), exact to 1e-12.
    """
    return _half_scaled_2d("gmm8", _sample_gmm8, n_train, n_test, seed, GMM8_ENTROPY_PER_DIM,
                           "8 Gaussians (sd 0.1) on the circle of radius 2")


# ---------------------------------------------------------------------------------------------
# checkerboard
# ---------------------------------------------------------------------------------------------

CHECKERBOARD_ENTROPY_PER_DIM = 0.5 * math.log(8.0)


def checkerboard_log_density(x):
    """Exact log density of ``checkerboard`` at x of shape (..., 2) (dtype follows x):

        log p(x) = -log 8   if -2 <= x_1, x_2 < 2 and floor(x_1) + floor(x_2) is even,
                 = -inf     otherwise

    (8 unit squares of a 4x4 board, total area 8; the squares are half-open, so the board's
    edges x = 2 and y = 2 are outside).
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.shape[-1:] != (2,):
        raise DataError(f"checkerboard_log_density needs points of shape (..., 2); got shape {x.shape}")
    cells = jnp.floor(x)
    on_board = jnp.all((x >= -2) & (x < 2), axis=-1)
    black = jnp.mod(cells[..., 0] + cells[..., 1], 2) == 0
    return jnp.where(on_board & black, jnp.asarray(-math.log(8.0), x.dtype), jnp.asarray(-jnp.inf, x.dtype))


def _sample_checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    # The 8 squares with lower-left corners (i, j), i, j in {-2, -1, 0, 1}, i + j even.
    corners = np.array([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0], dtype=float)
    u = _uniforms(rng, n, 3)
    square = np.minimum((8 * u[:, 0]).astype(np.int64), 7)
    return corners[square] + u[:, 1:]


def checkerboard(n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Dataset:
    """Uniform on the 8 black squares of a 4x4 board over [-2, 2]^2 (see
    :func:`checkerboard_log_density`); entropy log(8) / 2 = 1.0397 nats/dim. Model units: y = x / 2."""
    return _half_scaled_2d("checkerboard", _sample_checkerboard, n_train, n_test, seed, CHECKERBOARD_ENTROPY_PER_DIM,
                           "uniform on the 8 black unit squares of a 4x4 board over [-2, 2]^2")


# ---------------------------------------------------------------------------------------------
# moons
# ---------------------------------------------------------------------------------------------


def _sample_moons(rng: np.random.Generator, n: int, noise: float) -> np.ndarray:
    # scikit-learn's make_moons: the upper half circle (cos t, sin t) and the lower one
    # (1 - cos t, 1/2 - sin t), t in [0, pi], plus N(0, noise^2) in each coordinate. make_moons
    # spaces t evenly (linspace); here t is uniform, so that the points are i.i.d. draws from a
    # density, and each point picks its moon with probability 1/2.
    u = _uniforms(rng, n, 4)
    t = math.pi * u[:, 0]
    lower = u[:, 1] < 0.5
    x = np.where(lower, 1.0 - np.cos(t), np.cos(t))
    y = np.where(lower, 0.5 - np.sin(t), np.sin(t))
    return np.stack([x, y], axis=1) + noise * ndtri(u[:, 2:])


def moons(n_train: int = 50_000, n_test: int = 10_000, seed: int = 0, noise: float = 0.05) -> Dataset:
    """Two interleaving half circles with Gaussian noise of sd ``noise`` (scikit-learn's
    ``make_moons`` construction, angles drawn uniformly); no known entropy. Model units:
    y = x - (0.5, 0.25) (centred; the scale is already about 1)."""
    _check_sizes(n_train, n_test)
    if not noise > 0:
        raise SettingsError(f"noise must be positive, got {noise!r}")
    train_rng, test_rng = _streams(seed)
    return Dataset(
        name="moons",
        train=_sample_moons(train_rng, n_train, noise).astype(np.float32),
        test=_sample_moons(test_rng, n_test, noise).astype(np.float32),
        levels=None,
        scale=1.0,
        shift=np.array([-0.5, -0.25], dtype=np.float32),
        log_jacobian_per_dim=0.0,
        true_entropy_per_dim=None,
        description=f"two moons with Gaussian noise of sd {noise}",
    )


# ---------------------------------------------------------------------------------------------
# gmm8_quantized
# ---------------------------------------------------------------------------------------------

QUANTIZED_LEVELS = 256
QUANTIZED_LOW = -3.0
QUANTIZED_HIGH = 3.0
QUANTIZED_BIN_WIDTH = (QUANTIZED_HIGH - QUANTIZED_LOW) / (QUANTIZED_LEVELS - 1)


def _quantize(x: np.ndarray) -> np.ndarray:
    """Level k = round((x + 3) / w), clipped to 0..255: bin k is [-3 + (k - 1/2) w, -3 + (k + 1/2) w),
    the two edge bins also everything beyond."""
    k = np.rint((x - QUANTIZED_LOW) / QUANTIZED_BIN_WIDTH)
    return np.clip(k, 0, QUANTIZED_LEVELS - 1)


def _normal_interval(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Phi(b) - Phi(a) for a <= b, on the lower tails when the interval lies above 0 (no cancellation)."""
    upper_side = a > 0
    return np.where(upper_side, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))


@functools.cache
def _gmm8_quantized_probabilities() -> np.ndarray:
    k = np.arange(QUANTIZED_LEVELS)
    lower = QUANTIZED_LOW + (k - 0.5) * QUANTIZED_BIN_WIDTH
    upper = QUANTIZED_LOW + (k + 0.5) * QUANTIZED_BIN_WIDTH
    lower[0], upper[-1] = -np.inf, np.inf
    total = np.zeros((QUANTIZED_LEVELS, QUANTIZED_LEVELS))
    for cx, cy in GMM8_CENTRES:
        px = _normal_interval((lower - cx) / GMM8_SD, (upper - cx) / GMM8_SD)
        py = _normal_interval((lower - cy) / GMM8_SD, (upper - cy) / GMM8_SD)
        total += np.outer(px, py)
    total /= 8.0
    total.setflags(write=False)
    return total


def gmm8_quantized_probabilities() -> np.ndarray:
    """Exact probabilities P[i, j] of the 256 x 256 bins of ``gmm8_quantized`` (float64):

        P[i, j] = (1/8) sum_k P_1(i; c_k1) P_1(j; c_k2),
        P_1(i; c) = Phi((u_i - c) / s) - Phi((l_i - c) / s),

    with bin i = [l_i, u_i) = [-3 + (i - 1/2) w, -3 + (i + 1/2) w), w = 6/255, l_0 = -inf,
    u_255 = +inf: each component is isotropic, so its mass in a square bin is a product of
    1-D normal CDF differences. Read-only; computed once."""
    return _gmm8_quantized_probabilities()


@functools.cache
def _gmm8_quantized_entropy_per_dim() -> float:
    """-sum P log P over the 65,536 bins, halved (nats per dimension)."""
    return float(np.sum(entr(gmm8_quantized_probabilities())) / 2.0)


def gmm8_quantized(n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Dataset:
    """``gmm8`` quantised to 8 bits on [-3, 3]^2: level k = round((x + 3) / w), w = 6/255,
    clipped to 0..255 (``levels=256``). The same draws as :func:`gmm8` with the same seed.

    True entropy: the Shannon entropy of the bin probabilities
    (:func:`gmm8_quantized_probabilities`), -sum P log P / 2 nats per dimension (about
    3.90788 nats = 5.63788 bits per dimension; for bins narrow against the sd s this is
    h - log w + w^2 / (24 s^2) = 3.90558 + 0.00231, h = gmm8's differential entropy per dimension,
    w / s = 0.235).
    Model units: y = 2 k / 255 - 1, the DDPM grid (``DiscretizedGaussian(2/255, -1, 1)``).
    """
    _check_sizes(n_train, n_test)
    train_rng, test_rng = _streams(seed)
    scale, shift = _discrete_map(QUANTIZED_LEVELS)
    return Dataset(
        name="gmm8_quantized",
        train=_quantize(_sample_gmm8(train_rng, n_train)).astype(np.float32),
        test=_quantize(_sample_gmm8(test_rng, n_test)).astype(np.float32),
        levels=QUANTIZED_LEVELS,
        scale=scale,
        shift=shift,
        log_jacobian_per_dim=0.0,
        true_entropy_per_dim=_gmm8_quantized_entropy_per_dim(),
        description="gmm8 quantised to 256 levels per dimension on [-3, 3]",
    )


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------

DIGITS_LEVELS = 17
DIGITS_N_TEST = 297


@functools.cache
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The bundled file: pixels (1797, 64) uint8 in 0..16 and labels (1797,) uint8 in 0..9."""
    resource = resources.files("elbox.diffusion").joinpath("datasets/digits.npz")
    with resource.open("rb") as handle:
        with np.load(io.BytesIO(handle.read()), allow_pickle=False) as archive:
            pixels, labels = archive["pixels"], archive["labels"]
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits: 1,797 images, 64 pixels, levels 0..16 (``levels=17``).

    Split: the first 1,500 images in the file's order are the training set, the last 297 the
    test set (fixed; no random permutation, so the split is the same on every NumPy version).
    Model units: y = x / 8 - 1 (bins of width 1/8 centred at -1 ... 1). No known entropy; see
    :func:`independent_categorical_baseline_bits_per_dim` for a baseline (2.366 bits/dim on
    this split) and :func:`uniform_bits_per_dim` (log2 17 = 4.09).
    Source: UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak), as bundled with
    scikit-learn (see ``datasets/PROVENANCE.md``).
    """
    pixels, _ = _digits_raw()
    data = pixels.astype(np.float32)
    scale, shift = _discrete_map(DIGITS_LEVELS)
    return Dataset(
        name="digits",
        train=data[:-DIGITS_N_TEST].copy(),
        test=data[-DIGITS_N_TEST:].copy(),
        levels=DIGITS_LEVELS,
        scale=scale,
        shift=shift,
        log_jacobian_per_dim=0.0,
        true_entropy_per_dim=None,
        description="8x8 handwritten digits (UCI, via scikit-learn), levels 0..16",
    )


# ---------------------------------------------------------------------------------------------
# Baselines for discrete data
# ---------------------------------------------------------------------------------------------


def uniform_bits_per_dim(levels: int) -> float:
    """Code length of the uniform distribution over K levels: log2 K bits per dimension."""
    levels = _check_levels(levels)
    return math.log2(levels)


def independent_categorical_baseline_bits_per_dim(train, test, levels: int) -> float:
    """Test code length, in bits/dim, of independent per-pixel categoricals fitted with add-one smoothing.

    For column j and level k, with n training rows and counts N_jk,

        p_j(k) = (N_jk + 1) / (n + K)                       (Laplace smoothing),
        bits/dim = -(1 / (m d)) sum_i sum_j log2 p_j(x_ij)  over the m test rows.

    A diffusion model that cannot beat this has not learned dependence between pixels.

    Args:
        train, test: arrays of shape (n, d) and (m, d) with integer values in 0..K-1.
        levels: K.

    Example:
        >>> independent_categorical_baseline_bits_per_dim([[0], [0]], [[0]], levels=2)  # p = 3/4
        0.4150...
    """
    levels = _check_levels(levels)
    train = np.asarray(train, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    for label, array in (("training", train), ("test", test)):
        if array.ndim != 2 or array.shape[0] == 0:
            raise DataError(f"the {label} set must be a non-empty 2-D array (rows, columns); got shape {array.shape}")
        _check_finite(array, f"the {label} set")
        _check_levels_values(array, levels, f"the {label} set")
    check_width(test, train.shape[1], what="the test set")
    n, d = train.shape
    train_int = train.astype(np.int64)
    counts = np.bincount((np.arange(d) * levels + train_int).ravel(), minlength=d * levels).reshape(d, levels)
    log2_p = np.log2(counts + 1.0) - math.log2(n + levels)
    test_int = test.astype(np.int64)
    return float(-np.mean(log2_p[np.arange(d), test_int]))


# ---------------------------------------------------------------------------------------------
# The user's own data
# ---------------------------------------------------------------------------------------------

SUPPORTED_SUFFIXES = (".npy", ".csv")
FLOAT32_MAX = float(np.finfo(np.float32).max)
MIN_ROWS = 10
TEST_FRACTION = 0.1


def _check_levels(levels) -> int:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise DataError(f"levels must be an integer K >= 2 (data on 0..K-1), got {levels!r}")
    return int(levels)


def _where(index: tuple[int, ...]) -> str:
    row, column = int(index[0]), int(index[1])
    return f"row {row}, column {column} (counting from 0)"


def _check_finite(array: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(array[first]) else "infinity"
        raise DataError(
            f"{what} has {int(bad.sum())} value(s) that are NaN or infinite; the first is {kind} at "
            f"{_where(first)}. Remove or impute those rows before training."
        )


def _check_levels_values(array: np.ndarray, levels: int, what: str) -> None:
    fractional = array != np.round(array)
    if fractional.any():
        first = tuple(np.argwhere(fractional)[0])
        raise DataError(
            f"{what} was declared discrete with levels={levels}, but {int(fractional.sum())} value(s) are "
            f"not integers; the first is {float(array[first])!r} at {_where(first)}. Drop levels for continuous "
            "data, or round the data to the integers 0..K-1."
        )
    outside = (array < 0) | (array > levels - 1)
    if outside.any():
        first = tuple(np.argwhere(outside)[0])
        raise DataError(
            f"{what} was declared discrete with levels={levels}, so its values must lie in 0..{levels - 1}, but "
            f"{int(outside.sum())} value(s) are outside (min {array.min():g}, max {array.max():g}); the first is "
            f"{array[first]:g} at {_where(first)}. Shift the data to start at 0, or raise levels."
        )


def _read_csv(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8-sig") as handle:
        first_line = handle.readline()
    if not first_line.strip():
        raise DataError(f"{path} is empty (or its first line is blank); expected numeric comma-separated rows")
    try:
        [float(field) for field in first_line.strip().split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header line: names, not numbers
    try:
        array = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2, encoding="utf-8-sig")
    except ValueError as error:
        raise DataError(
            f"{path} is not a numeric CSV file (comma-separated numbers, at most one header line): {error}"
        ) from None
    return array


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DataError(f"{path} could not be read as a NumPy .npy array of numbers: {error}") from None
    if not (np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)):
        raise DataError(f"{path} holds an array of dtype {array.dtype}; expected numbers")
    if np.iscomplexobj(array):
        raise DataError(f"{path} holds complex numbers; expected real numbers")
    return array.astype(np.float64)


def read_array(path, levels: int | None = None) -> np.ndarray:
    """The checked array of shape (n, d) in a ``.npy`` or ``.csv`` file (float64).

    A :class:`~elbox.errors.DataError` names the problem: no such file, an unknown extension,
    not 2-D, no columns, NaN or infinity (with the first position), and with ``levels=K`` values
    that are not integers in 0..K-1. A CSV file is comma-separated numbers; a first line that
    does not parse as numbers is taken as a header and skipped.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"no data file at {path} (resolved to {path.resolve()}); check the path")
    if not path.is_file():
        raise DataError(f"{path} is a directory, not a data file; give a .npy or .csv file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"unknown data file extension {path.suffix!r} for {path}; elbox reads "
            f"{' and '.join(SUPPORTED_SUFFIXES)} files of shape (rows, columns)"
        )
    if levels is not None:
        levels = _check_levels(levels)
    array = _read_npy(path) if suffix == ".npy" else _read_csv(path)
    if array.ndim != 2:
        hint = " (a single column? reshape it to (n, 1))" if array.ndim == 1 else ""
        raise DataError(f"{path} holds an array of shape {array.shape}; expected 2-D (rows, columns){hint}")
    n, d = array.shape
    if n == 0:
        raise DataError(f"{path} has no rows")
    if d == 0:
        raise DataError(f"{path} has {n} rows but no columns")
    _check_finite(array, str(path))
    if levels is not None:
        _check_levels_values(array, levels, str(path))
    return array


def load_array(path, levels: int | None = None, seed: int = 0) -> Dataset:
    """A user's data from a ``.npy`` or ``.csv`` file of shape (n, d), split 90/10 into train/test.

    The file is checked before anything starts (:func:`read_array`), and it needs at least 10
    rows.

    Split: a permutation from ``numpy.random.default_rng(seed)``; the first round(n / 10) rows
    of the permuted data are the test set, the rest the training set.

    Model units: continuous data are centred per column and divided by the overall standard
    deviation s of the centred training data (scale = 1/s, log_jacobian_per_dim = -log s);
    discrete data with K levels map to -1 ... 1 (scale 2/(K-1)).

    Args:
        path: the file.
        levels: None for continuous data, or K for data on the integers 0..K-1.
        seed: seeds the train/test permutation.
    """
    path = Path(path)
    array = read_array(path, levels)
    if levels is not None:
        levels = _check_levels(levels)
    n, d = array.shape
    n_test = max(1, round(TEST_FRACTION * n))
    if n < MIN_ROWS or n - n_test < 1:
        raise DataError(
            f"{path} has only {n} row(s); at least {MIN_ROWS} are needed to split off a test set "
            f"({int(TEST_FRACTION * 100)}%) and still train"
        )
    if levels is None:
        check_float32_range(array, str(path))
    permutation = np.random.default_rng(seed).permutation(n)
    test = array[permutation[:n_test]].astype(np.float32)
    train = array[permutation[n_test:]].astype(np.float32)
    if levels is not None:
        scale, shift = _discrete_map(levels)
        log_jacobian = 0.0
    else:
        centre = train.astype(np.float64).mean(axis=0)
        spread = float(np.std(train.astype(np.float64) - centre))
        if not spread > 0:
            if np.ptp(array[permutation[n_test:]], axis=0).max() > 0:
                raise DataError(
                    f"the training values in {path} differ only beyond float32's precision (about 7 significant "
                    "digits), in which elbox trains, so in float32 every column is constant; subtract each "
                    "column's mean (or a constant near it) before saving the data"
                )
            raise DataError(
                f"every training value in {path} is the same in each column, so the data have no density to "
                "learn; if they are integer codes, pass levels=K"
            )
        if not 1.0 / spread <= FLOAT32_MAX:
            raise DataError(
                f"the training values in {path} spread by only {spread:.3g} (standard deviation), so the scale "
                f"1 / {spread:.3g} that maps them to unit spread overflows float32; multiply the data by a power "
                "of ten first"
            )
        scale = 1.0 / spread
        shift = (-centre * scale).astype(np.float32)
        log_jacobian = math.log(scale)
    return Dataset(
        name=str(path),
        train=train,
        test=test,
        levels=levels,
        scale=scale,
        shift=shift,
        log_jacobian_per_dim=log_jacobian,
        true_entropy_per_dim=None,
        description=f"user data from {path} ({n} rows, {d} columns)",
    )


def check_float32_range(array: np.ndarray, what: str) -> None:
    """Raise :class:`~elbox.errors.DataError` unless the values of ``array`` (rows, columns) and
    each column's range (max - min) are finite in float32, in which continuous data are trained
    and evaluated (``what`` names the data in the message)."""
    array = np.asarray(array, np.float64)
    largest = float(np.max(np.abs(array)))
    if not largest <= FLOAT32_MAX:
        first = tuple(np.argwhere(np.abs(array) > FLOAT32_MAX)[0])
        raise DataError(
            f"{what} has values beyond float32's range (largest magnitude {FLOAT32_MAX:.3g}), in which elbox "
            f"trains: the first is {array[first]:.3g} at {_where(first)}, the largest magnitude {largest:.3g}; "
            "divide the data by a power of ten first"
        )
    ranges = np.ptp(array, axis=0)
    if not float(ranges.max()) <= FLOAT32_MAX:
        column = int(np.argmax(ranges))
        raise DataError(
            f"the values of column {column} of {what} range over {ranges[column]:.3g} (from "
            f"{array[:, column].min():.3g} to {array[:, column].max():.3g}), beyond float32's range "
            f"({FLOAT32_MAX:.3g}), in which elbox trains; divide the data by a power of ten first"
        )


def check_width(array, d: int, *, what: str = "the data") -> None:
    """Raise :class:`~elbox.errors.DataError` unless ``array`` has shape (n, d).

    For evaluating a model trained on d columns on a new file.
    """
    shape = np.shape(array)
    if len(shape) != 2:
        raise DataError(f"{what} must be 2-D (rows, columns) with {d} columns; got shape {shape}")
    if shape[1] != d:
        raise DataError(
            f"{what} has {shape[1]} columns but the model was trained on data with {d} columns "
            f"(shape {shape}); use a file with the same columns as the training data"
        )


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------

BUILTINS: dict[str, Callable[..., Dataset]] = {
    "gmm8": gmm8,
    "checkerboard": checkerboard,
    "moons": moons,
    "gmm8_quantized": gmm8_quantized,
    "digits": digits,
}


def exact_log_density(name: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """For a built-in data set whose distribution is known exactly, the function taking examples
    of shape (n, d) in original units to log p(x) per example (a density for continuous data, the
    probability of the bin for discrete data), in nats summed over dimensions, float64; else None.

    The test-set mean of -log p(x) / d estimates the true entropy per dimension with the same
    examples as a bound, so bound - (-log p) per example gives the gap with a small standard error.
    """
    if name == "gmm8":
        return lambda x: np.asarray(gmm8_log_density(np.asarray(x, np.float64)), np.float64)
    if name == "checkerboard":
        return lambda x: np.asarray(checkerboard_log_density(np.asarray(x, np.float64)), np.float64)
    if name == "gmm8_quantized":
        def log_probability(x):
            k = np.asarray(x).astype(np.int64)
            return np.log(gmm8_quantized_probabilities()[k[:, 0], k[:, 1]])

        return log_probability
    return None


def builtin_names() -> list[str]:
    """Names of the built-in data sets."""
    return list(BUILTINS)


def get_dataset(name_or_path, *, levels: int | None = None, seed: int = 0, **options) -> Dataset:
    """A built-in data set by name, or a user's ``.npy``/``.csv`` file by path.

    Args:
        name_or_path: one of :func:`builtin_names` (``gmm8``, ``checkerboard``, ``moons``,
            ``gmm8_quantized``, ``digits``) or a path (a string with a file extension or a
            directory separator, or a ``pathlib.Path``).
        levels: for a file only: K if the data are integers 0..K-1.
        seed: the sampling seed of a synthetic data set, or the split seed of a file (``digits``
            has a fixed split and ignores it).
        **options: passed to the built-in's function (``n_train``, ``n_test``, ``noise``).

    Example:
        >>> get_dataset("gmm8", n_train=1000).train.shape
        (1000, 2)
    """
    if isinstance(name_or_path, str) and name_or_path in BUILTINS:
        if levels is not None:
            raise DataError(f"the built-in data set {name_or_path!r} has fixed levels; do not pass levels")
        builder = BUILTINS[name_or_path]
        if builder is digits:
            if options:
                raise DataError(f"the digits data set takes no options; got {sorted(options)}")
            return digits()
        return builder(seed=seed, **options)
    is_path = isinstance(name_or_path, Path) or (
        isinstance(name_or_path, str) and (Path(name_or_path).suffix or "/" in name_or_path or "\\" in name_or_path)
    )
    if is_path:
        if options:
            raise DataError(f"options {sorted(options)} apply to built-in data sets, not to the file {name_or_path}")
        return load_array(name_or_path, levels=levels, seed=seed)
    if not isinstance(name_or_path, str):
        raise DataError(f"expected a data set name or a path, got {type(name_or_path).__name__} {name_or_path!r}")
    close = difflib.get_close_matches(name_or_path, builtin_names(), n=2)
    suggestion = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise DataError(
        f"unknown data set {name_or_path!r}.{suggestion} Built-in data sets: {', '.join(builtin_names())}; "
        "or give the path of a .npy or .csv file of shape (rows, columns)."
    )
