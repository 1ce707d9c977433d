"""Tests for elbox.diffusion.data: built-in data sets, exact densities and entropies, user files."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Z
from scipy.stats import multivariate_normal

from elbox.diffusion import data as D
from elbox.errors import DataError, ElboxError

SYNTHETIC = ["gmm8", "checkerboard", "moons", "gmm8_quantized"]


# --- shapes, dtypes, determinism -------------------------------------------------------------


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_shapes_dtypes_and_determinism(name):
    a = D.get_dataset(name, n_train=300, n_test=70, seed=3)
    b = D.get_dataset(name, n_train=300, n_test=70, seed=3)
    c = D.get_dataset(name, n_train=300, n_test=70, seed=4)
    longer = D.get_dataset(name, n_train=500, n_test=70, seed=3)
    assert a.name == name
    assert a.train.shape == (300, 2) and a.test.shape == (70, 2)
    assert a.train.dtype == np.float32 and a.test.dtype == np.float32
    assert a.dim == 2
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.train, c.train)
    # the test set comes from its own stream: it does not change with n_train
    np.testing.assert_array_equal(a.test, longer.test)
    np.testing.assert_array_equal(a.train, longer.train[:300])
    assert not np.array_equal(a.train[:70], a.test)


def test_default_sizes():
    data = D.gmm8()
    assert data.train.shape == (50_000, 2) and data.test.shape == (10_000, 2)


def test_bad_sizes_raise():
    with pytest.raises(ElboxError, match="n_train must be a whole number >= 1"):
        D.gmm8(n_train=0)
    with pytest.raises(ElboxError, match="n_test must be a whole number >= 1"):
        D.checkerboard(n_test=2.5)


def test_scaling_round_trip_and_jacobian():
    data = D.gmm8(n_train=1000, n_test=10)
    y = data.to_model(data.train)
    assert y.dtype == np.float32
    np.testing.assert_allclose(data.from_model(y), data.train, rtol=1e-6)
    # p_y(y) = p_x(x) / scale^d, so the mean NLL per dim on y, corrected by log_jacobian_per_dim,
    # is the mean NLL per dim on x.
    nll_x = -np.mean(np.asarray(D.gmm8_log_density(data.train.astype(np.float64)))) / 2
    log_p_y = np.asarray(D.gmm8_log_density(data.train)) - 2 * math.log(data.scale)
    nll_y = -np.mean(log_p_y) / 2
    assert data.nats_per_dim_original(nll_y) == pytest.approx(nll_x, rel=1e-5)
    assert data.log_jacobian_per_dim == pytest.approx(math.log(0.5))
    moons = D.moons(n_train=2000, n_test=10)
    np.testing.assert_allclose(moons.to_model(moons.train).mean(axis=0), 0.0, atol=0.05)
    with pytest.raises(DataError, match="continuous"):
        data.decoder_bins()


# --- gmm8 -----------------------------------------------------------------------------------


def test_gmm8_log_density_matches_scipy():
    x = np.random.default_rng(0).normal(scale=2.0, size=(50, 2))
    expected = np.log(
        sum(multivariate_normal(mean=c, cov=0.01 * np.eye(2)).pdf(x) for c in D.GMM8_CENTRES) / 8
    )
    np.testing.assert_allclose(np.asarray(D.gmm8_log_density(x.astype(np.float32))), expected, rtol=1e-4, atol=1e-4)
    assert D.gmm8_log_density(jnp.zeros((3, 2), jnp.float32)).dtype == jnp.float32
    with pytest.raises(DataError, match=r"shape \(\.\.\., 2\)"):
        D.gmm8_log_density(jnp.zeros((3, 3)))


def test_gmm8_log_density_integrates_to_one():
    # Midpoint rule on [-3, 3]^2 with h = 0.01 (sd / 10): for a smooth, rapidly decaying
    # integrand the error is far below float32 summation error (~1e-6); the mass outside < 1e-40.
    h = 0.01
    grid = np.arange(-3 + h / 2, 3, h, dtype=np.float32)
    points = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1)
    total = float(jnp.sum(jnp.exp(D.gmm8_log_density(points)))) * h * h
    assert total == pytest.approx(1.0, abs=1e-4)


def test_gmm8_entropy_agrees_with_fresh_monte_carlo():
    # H/2 = -E[log p(x)] / 2, estimated from 5e5 fresh draws with its standard error.
    draws = D.gmm8(n_train=500_000, n_test=1, seed=11).train
    values = -np.asarray(D.gmm8_log_density(draws), dtype=np.float64) / 2
    estimate = values.mean()
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert abs(estimate - D.GMM8_ENTROPY_PER_DIM) / se < Z
    # negative control: the value 0.149 nats/dim quoted in the issue is rejected
    assert abs(estimate - 0.149) / se > Z
    # and the stored value is the disjoint-components closed form (overlap ~ 1e-12)
    closed_form = (math.log(8) + math.log(2 * math.pi * math.e * 0.01)) / 2
    assert D.GMM8_ENTROPY_PER_DIM == pytest.approx(closed_form, abs=1e-11)


# --- checkerboard ---------------------------------------------------------------------------


def test_checkerboard_log_density_integrates_to_one_and_covers_samples():
    # Midpoint rule with h = 0.01 over [-2.5, 2.5]^2: the squares' edges are multiples of h, so
    # each midpoint lies inside or outside one square and the rule is exact up to rounding.
    h = 0.01
    grid = np.arange(-2.5 + h / 2, 2.5, h)
    points = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1)
    total = float(np.sum(np.exp(np.asarray(D.checkerboard_log_density(points))))) * h * h
    assert total == pytest.approx(1.0, abs=1e-6)
    data = D.checkerboard(n_train=80_000, n_test=10, seed=2)
    log_p = np.asarray(D.checkerboard_log_density(data.train))
    np.testing.assert_allclose(log_p, -math.log(8))  # every draw lies on a black square
    assert data.true_entropy_per_dim == pytest.approx(math.log(8) / 2)
    # each of the 8 squares holds 1/8 of the draws: binomial sd sqrt(p (1 - p) / n)
    cells = np.floor(data.train).astype(int)
    _, counts = np.unique(cells[:, 0] * 10 + cells[:, 1], return_counts=True)
    assert counts.size == 8
    se = math.sqrt(1 / 8 * 7 / 8 / 80_000)
    assert np.all(np.abs(counts / 80_000 - 1 / 8) / se < Z)
    assert float(D.checkerboard_log_density(jnp.array([0.5, 0.5]))) == pytest.approx(-math.log(8))
    assert float(D.checkerboard_log_density(jnp.array([0.5, 1.5]))) == -math.inf
    assert float(D.checkerboard_log_density(jnp.array([2.5, 2.5]))) == -math.inf


# --- moons ----------------------------------------------------------------------------------


def test_moons_lie_near_the_half_circles():
    data = D.moons(n_train=5000, n_test=10, seed=0)
    x, y = data.train[:, 0].astype(np.float64), data.train[:, 1].astype(np.float64)
    upper = np.hypot(x, y) - 1.0
    lower = np.hypot(x - 1.0, y - 0.5) - 1.0
    distance = np.minimum(np.abs(upper), np.abs(lower))
    assert np.quantile(distance, 0.99) < 4 * 0.05
    assert data.true_entropy_per_dim is None and data.levels is None


# --- gmm8_quantized -------------------------------------------------------------------------


def test_gmm8_quantized_probabilities_and_entropy():
    p = D.gmm8_quantized_probabilities()
    assert p.shape == (256, 256) and p.dtype == np.float64
    assert np.all(p >= 0)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(p, p.T, atol=1e-15)  # the centres are symmetric under x <-> y
    data = D.gmm8_quantized(n_train=200, n_test=50)
    h_discrete = data.true_entropy_per_dim
    positive = p[p > 0]
    assert h_discrete == pytest.approx(-np.sum(positive * np.log(positive)) / 2, rel=1e-12)
    # For bins of width w narrow against the sd s, the discrete entropy per dimension is
    # h - log w + w^2 / (24 s^2) + O((w/s)^4) (the second-order Sheppard correction; each
    # component is a product of 1-D Gaussians and the components barely overlap). Here
    # w / s = 0.235: the correction is 0.0023 nats and the next term ~ (w/s)^4 / 100 ~ 3e-5,
    # so 2e-4 is a safe tolerance that a missing correction (0.0023) would fail.
    w, s = 6 / 255, 0.1
    relation = D.GMM8_ENTROPY_PER_DIM - math.log(w) + w**2 / (24 * s**2)
    assert h_discrete == pytest.approx(relation, abs=2e-4)
    assert abs(h_discrete - (D.GMM8_ENTROPY_PER_DIM - math.log(w))) > 1e-3
    assert data.levels == 256 and data.log_jacobian_per_dim == 0.0
    assert data.decoder_bins() == pytest.approx((2 / 255, -1.0, 1.0))


def test_gmm8_quantized_samples_follow_the_exact_bin_probabilities():
    # -mean log P(bin of each draw) estimates the discrete entropy; the draws and the exact
    # probabilities must agree within Z standard errors.
    data = D.gmm8_quantized(n_train=200_000, n_test=10, seed=5)
    train = data.train
    assert np.all(train == np.round(train)) and train.min() >= 0 and train.max() <= 255
    p = D.gmm8_quantized_probabilities()
    values = -np.log(p[train[:, 0].astype(int), train[:, 1].astype(int)]) / 2
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert abs(values.mean() - data.true_entropy_per_dim) / se < Z
    # the same draws as gmm8 with the same seed, quantised
    continuous = D.gmm8(n_train=200_000, n_test=10, seed=5).train.astype(np.float64)
    assert np.mean(np.abs(continuous - (-3 + train * 6 / 255)) <= 3 / 255 + 1e-6) == 1.0


# --- digits and the discrete baselines ------------------------------------------------------


def test_digits():
    data = D.get_dataset("digits")
    assert data.levels == 17
    assert data.train.shape == (1500, 64) and data.test.shape == (297, 64)
    assert data.train.dtype == np.float32
    both = np.concatenate([data.train, data.test])
    assert both.min() == 0 and both.max() == 16
    assert np.all(both == np.round(both))
    assert data.decoder_bins() == pytest.approx((1 / 8, -1.0, 1.0))
    np.testing.assert_allclose(data.to_model(both).min(), -1.0)
    np.testing.assert_allclose(data.to_model(both).max(), 1.0)
    np.testing.assert_array_equal(D.digits().train, data.train)  # fixed split


def test_categorical_baseline_on_digits():
    data = D.digits()
    bits = D.independent_categorical_baseline_bits_per_dim(data.train, data.test, 17)
    assert D.uniform_bits_per_dim(17) == pytest.approx(math.log2(17))
    assert 0 < bits < D.uniform_bits_per_dim(17)
    assert bits == pytest.approx(2.3662262, abs=1e-6)  # the value stated in the docs


def test_categorical_baseline_hand_example():
    # column 0: counts (2, 1, 0) of n = 3 -> p(0) = (2 + 1) / (3 + 3) = 1/2  -> 1 bit
    # column 1: counts (0, 3, 0)          -> p(2) = (0 + 1) / (3 + 3) = 1/6  -> log2 6 bits
    train = [[0, 1], [0, 1], [1, 1]]
    test = [[0, 2]]
    expected = (1.0 + math.log2(6)) / 2
    assert D.independent_categorical_baseline_bits_per_dim(train, test, 3) == pytest.approx(expected)
    with pytest.raises(DataError, match="0..2"):
        D.independent_categorical_baseline_bits_per_dim(train, [[0, 3]], 3)
    with pytest.raises(DataError, match="columns"):
        D.independent_categorical_baseline_bits_per_dim(train, [[0, 1, 1]], 3)


# --- the user's files -----------------------------------------------------------------------


def test_load_npy_and_csv(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.normal(loc=3.0, scale=2.0, size=(50, 3))
    np.save(tmp_path / "x.npy", array)
    data = D.load_array(tmp_path / "x.npy", seed=1)
    assert data.train.shape == (45, 3) and data.test.shape == (5, 3)
    assert data.train.dtype == np.float32 and data.levels is None
    np.testing.assert_allclose(
        np.sort(np.concatenate([data.train, data.test]), axis=0), np.sort(array.astype(np.float32), axis=0)
    )
    again = D.load_array(tmp_path / "x.npy", seed=1)
    np.testing.assert_array_equal(data.test, again.test)
    assert not np.array_equal(D.load_array(tmp_path / "x.npy", seed=2).test, data.test)
    y = data.to_model(data.train)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    assert data.log_jacobian_per_dim == pytest.approx(math.log(data.scale))

    with_header = tmp_path / "x.csv"
    with_header.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.17g}" for v in row) for row in array) + "\n")
    from_csv = D.get_dataset(str(with_header), seed=1)
    np.testing.assert_array_equal(from_csv.test, data.test)
    no_header = tmp_path / "y.csv"
    no_header.write_text("\n".join(",".join(f"{v:.17g}" for v in row) for row in array) + "\n")
    np.testing.assert_array_equal(D.load_array(no_header, seed=1).train, data.train)

    codes = rng.integers(0, 5, size=(20, 4))
    np.save(tmp_path / "codes.npy", codes)
    discrete = D.load_array(tmp_path / "codes.npy", levels=5)
    assert discrete.levels == 5 and discrete.log_jacobian_per_dim == 0.0
    assert discrete.train.shape == (18, 4) and discrete.test.shape == (2, 4)
    assert discrete.decoder_bins() == pytest.approx((0.5, -1.0, 1.0))


def _save(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, np.asarray(array))
    return path


def test_bad_files_raise_clear_errors(tmp_path):
    good = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(DataError, match="no data file at"):
        D.load_array(tmp_path / "missing.npy")
    (tmp_path / "data.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unknown data file extension '\.txt'.*\.npy and \.csv"):
        D.load_array(tmp_path / "data.txt")
    with pytest.raises(DataError, match="directory"):
        D.load_array(tmp_path)
    with pytest.raises(DataError, match=r"shape \(20,\); expected 2-D.*reshape"):
        D.load_array(_save(tmp_path, "flat.npy", good[:, 0]))
    with pytest.raises(DataError, match=r"shape \(20, 2, 1\); expected 2-D"):
        D.load_array(_save(tmp_path, "cube.npy", good[:, :, None]))
    nan = good.copy()
    nan[7, 1] = np.nan
    with pytest.raises(DataError, match=r"NaN at row 7, column 1"):
        D.load_array(_save(tmp_path, "nan.npy", nan))
    inf = good.copy()
    inf[3, 0] = -np.inf
    with pytest.raises(DataError, match=r"infinity at row 3, column 0"):
        D.load_array(_save(tmp_path, "inf.npy", inf))
    with pytest.raises(DataError, match=r"only 9 row\(s\); at least 10"):
        D.load_array(_save(tmp_path, "short.npy", good[:9]))
    codes = np.random.default_rng(1).integers(0, 4, size=(30, 3)).astype(float)
    fractional = codes.copy()
    fractional[5, 2] = 1.5
    with pytest.raises(DataError, match=r"not integers; the first is 1\.5 at row 5, column 2"):
        D.load_array(_save(tmp_path, "frac.npy", fractional), levels=4)
    with pytest.raises(DataError, match=r"must lie in 0\.\.2.*row"):
        D.load_array(_save(tmp_path, "range.npy", codes), levels=3)
    negative = codes.copy()
    negative[0, 0] = -1
    with pytest.raises(DataError, match=r"must lie in 0\.\.3.*-1 at row 0, column 0"):
        D.load_array(_save(tmp_path, "neg.npy", negative), levels=4)
    with pytest.raises(DataError, match="levels must be an integer K >= 2"):
        D.load_array(_save(tmp_path, "ok.npy", codes), levels=1)
    (tmp_path / "words.csv").write_text("a,b\n1,2\nx,y\n")
    with pytest.raises(DataError, match="not a numeric CSV"):
        D.load_array(tmp_path / "words.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3,4,5\n")
    with pytest.raises(DataError, match="not a numeric CSV"):
        D.load_array(tmp_path / "ragged.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        D.load_array(tmp_path / "empty.csv")
    np.save(tmp_path / "strings.npy", np.array([["a", "b"]] * 20))
    with pytest.raises(DataError, match="expected numbers"):
        D.load_array(tmp_path / "strings.npy")
    constant = np.ones((20, 2))
    with pytest.raises(DataError, match="the same"):
        D.load_array(_save(tmp_path, "constant.npy", constant))
    assert issubclass(DataError, ElboxError)


def test_check_width():
    D.check_width(np.zeros((4, 3)), 3)
    with pytest.raises(DataError, match=r"has 2 columns but the model was trained on data with 3 columns"):
        D.check_width(np.zeros((4, 2)), 3)
    with pytest.raises(DataError, match="must be 2-D"):
        D.check_width(np.zeros(4), 3)


def test_get_dataset_unknown_name_lists_the_builtins():
    with pytest.raises(DataError) as info:
        D.get_dataset("gmm9")
    message = str(info.value)
    for name in ["gmm8", "checkerboard", "moons", "digits", "gmm8_quantized"]:
        assert name in message
    assert "Did you mean 'gmm8'" in message
    with pytest.raises(DataError, match="fixed levels"):
        D.get_dataset("digits", levels=17)
    with pytest.raises(DataError, match="no data file"):
        D.get_dataset("nowhere/data.csv")


def test_large_values_are_scaled_or_rejected_for_what_they_are(tmp_path):
    rng = np.random.default_rng(0)
    varying = 1e30 * (1.0 + rng.normal(size=(40, 2)))  # large, but within float32 and varying
    data = D.load_array(_save(tmp_path, "large.npy", varying))
    y = data.to_model(data.train)
    assert np.all(np.isfinite(y)) and float(np.std(y)) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(DataError, match=r"beyond float32's range.*divide the data") as info:
        D.load_array(_save(tmp_path, "huge.npy", 1e300 * (1.0 + rng.normal(size=(40, 2)))))
    assert "the same" not in str(info.value)
    wide = np.tile([[-3e38, 1.0], [3e38, 2.0]], (20, 1))  # each value fits, the range does not
    with pytest.raises(DataError, match=r"column 0 .* range over 6e\+38"):
        D.load_array(_save(tmp_path, "wide.npy", wide))
    fine = 1e8 + 1e-3 * rng.normal(size=(40, 2))  # varies below float32's resolution at 1e8
    with pytest.raises(DataError, match="float32's precision"):
        D.load_array(_save(tmp_path, "fine.npy", fine))
