"""Diffusion: schedules, the forward process's closed forms, the reverse model, the decoders.

Deterministic checks first (formulas, Bayes' rule by quadrature, CDFs against scipy); the one
statistical check (q(x_t | x0) against composed single steps) uses a fixed key and a tolerance
of Z Monte Carlo standard errors.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Z
from scipy import integrate, special, stats

from elbox.diffusion.decoders import (
    DiscretizedGaussian,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
)
from elbox.diffusion.process import (
    gaussian_kl,
    p_mean_variance,
    predict_x0_from_eps,
    q_mean_variance,
    q_posterior,
    q_sample,
)
from elbox.diffusion.schedules import cosine_schedule, linear_schedule, schedule_from_betas
from elbox.errors import SettingsError
from elbox.vi.elbo import gaussian_kl as full_gaussian_kl

# --- schedules -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: linear_schedule(1000), lambda: cosine_schedule(1000)],
                         ids=["linear", "cosine"])
def test_schedule_is_float64_and_alpha_bar_decreases_to_near_zero(make):
    s = make()
    for name, field in s._asdict().items():
        assert field.dtype == np.float64, name
        assert field.shape == (1000,), name
    assert np.all(np.diff(s.alpha_bars) < 0)
    assert 0 < s.alpha_bars[-1] < 1e-4
    np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - s.betas), rtol=1e-12)
    np.testing.assert_allclose(s.one_minus_alpha_bars, 1 - s.alpha_bars, rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(s.alpha_bars_prev, np.concatenate([[1.0], s.alpha_bars[:-1]]))
    ab, abp, b = s.alpha_bars, s.alpha_bars_prev, s.betas
    np.testing.assert_allclose(s.posterior_variance, b * (1 - abp) / (1 - ab), rtol=1e-9, atol=1e-300)
    assert s.posterior_variance[0] == 0.0
    np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(s.posterior_variance[1:]), rtol=1e-12)
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    np.testing.assert_allclose(s.posterior_mean_coef_x0, b * np.sqrt(abp) / (1 - ab), rtol=1e-9)
    np.testing.assert_allclose(s.posterior_mean_coef_xt, (1 - abp) * np.sqrt(1 - b) / (1 - ab), rtol=1e-9)


def test_linear_schedule_matches_ddpm_and_keeps_its_curve_for_any_T():
    s = linear_schedule(1000)
    assert s.betas[0] == 1e-4 and s.betas[-1] == pytest.approx(0.02, rel=1e-15)
    # log alpha_bar at the same fraction t / T: sum log(1 - beta) with beta scaled by 1000 / T
    # agrees to first order in beta (up to the (fT - 1) / (T - 1) spacing of the linspace); the
    # second-order term sum beta^2 / 2 is 0.067 of log alpha_bar_T = -10.1 at T = 1000.
    fine = linear_schedule(4000)
    fractions = np.array([0.1, 0.25, 0.5, 0.75, 1.0])
    coarse_log = np.log(s.alpha_bars[(fractions * 1000).astype(int) - 1])
    fine_log = np.log(fine.alpha_bars[(fractions * 4000).astype(int) - 1])
    np.testing.assert_allclose(fine_log, coarse_log, rtol=0.01)  # observed: at most 0.6%
    with pytest.raises(SettingsError, match="beta_end"):
        linear_schedule(10)


def test_cosine_alpha_bar_is_its_formula():
    T, s_offset = 1000, 0.008
    s = cosine_schedule(T, s=s_offset)

    def f(t):
        return np.cos((t / T + s_offset) / (1 + s_offset) * np.pi / 2) ** 2

    t = np.arange(1, T + 1)
    unclipped = np.cumsum(s.betas >= 0.999) == 0  # no clipped beta up to and including t
    assert unclipped.sum() >= T - 2
    np.testing.assert_allclose(s.alpha_bars[unclipped], (f(t) / f(0))[unclipped], rtol=1e-9)
    assert s.betas.max() <= 0.999


def test_cast_gives_jax_arrays_of_the_dtype():
    s = cosine_schedule(50).cast(jnp.float32)
    assert all(field.dtype == jnp.float32 for field in s)
    np.testing.assert_allclose(np.asarray(s.alpha_bars), cosine_schedule(50).alpha_bars.astype(np.float32))
    with pytest.raises(SettingsError, match="outside"):
        schedule_from_betas([0.1, 1.0])


# --- the forward process ---------------------------------------------------------------------


def test_q_of_xt_given_x0_matches_composed_single_steps():
    """x_t from t single steps x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) z_s: its mean and
    variance match q(x_t | x0) within Z standard errors (variance's SE: v sqrt(2 / (n - 1)))."""
    s = cosine_schedule(10)
    x0 = jnp.array([0.5, -1.2])
    n = 20_000
    z = jax.random.normal(jax.random.key(0), (10, n, 2))
    x = jnp.broadcast_to(x0, (n, 2))
    for t in range(1, 11):
        x = jnp.sqrt(1 - s.betas[t - 1]) * x + jnp.sqrt(s.betas[t - 1]) * z[t - 1]
        if t in (1, 4, 10):
            mean, variance, log_variance = (np.asarray(a) for a in q_mean_variance(s, x0, t))
            np.testing.assert_allclose(log_variance, np.log(variance), rtol=1e-6)
            sample_mean = np.asarray(x.mean(0), np.float64)
            sample_var = np.asarray(x.var(0, ddof=1), np.float64)
            assert np.all(np.abs(sample_mean - mean) / np.sqrt(variance / n) < Z), (t, sample_mean, mean)
            z_var = np.abs(sample_var - variance) / (variance * np.sqrt(2 / (n - 1)))
            assert np.all(z_var < Z), (t, sample_var, variance)


def test_q_sample_and_predict_x0_are_inverse():
    with jax.enable_x64(True):
        s = linear_schedule(1000)
        x0 = jnp.array([0.3, -0.7, 1.1])
        noise = jnp.array([1.0, -0.5, 0.2])
        for t in (1, 10, 500, 1000):
            xt = q_sample(s, x0, t, noise)
            mean, variance, _ = q_mean_variance(s, x0, t)
            np.testing.assert_allclose(xt, mean + jnp.sqrt(variance) * noise, rtol=1e-14)
            np.testing.assert_allclose(predict_x0_from_eps(s, xt, t, noise), x0, rtol=1e-9)


@pytest.mark.parametrize("t", [2, 5, 10])
def test_posterior_is_bayes_rule_by_quadrature(t):
    """q(x_{t-1} | x_t, x0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x0); normalised by
    the trapezoid rule on a grid of x_{t-1} (1-D), it matches the closed form pointwise."""
    s = cosine_schedule(10)
    x0, xt = 0.7, 0.4
    with jax.enable_x64(True):
        mean, variance, log_variance = (float(a) for a in q_posterior(s, jnp.float64(x0), jnp.float64(xt), t))
    np.testing.assert_allclose(log_variance, np.log(variance), rtol=1e-12)
    beta, alpha_bar_prev = s.betas[t - 1], s.alpha_bars_prev[t - 1]
    prior_mean, prior_sd = np.sqrt(alpha_bar_prev) * x0, np.sqrt(1 - alpha_bar_prev)
    grid = np.linspace(prior_mean - 12 * prior_sd, prior_mean + 12 * prior_sd, 20_001)
    likelihood = stats.norm.pdf(xt, np.sqrt(1 - beta) * grid, np.sqrt(beta))
    unnormalised = likelihood * stats.norm.pdf(grid, prior_mean, prior_sd)
    numeric = unnormalised / integrate.trapezoid(unnormalised, grid)
    closed = stats.norm.pdf(grid, mean, np.sqrt(variance))
    assert np.max(np.abs(numeric - closed)) < 1e-8 * closed.max()


def test_posterior_at_t1_is_the_point_mass_at_x0():
    with jax.enable_x64(True):
        s = linear_schedule(1000)
        x0, xt = jnp.array([0.25, -0.5]), jnp.array([0.3, 0.1])
        mean, variance, log_variance = q_posterior(s, x0, xt, 1)
        np.testing.assert_allclose(mean, x0, rtol=1e-12)
        assert np.all(variance == 0) and np.all(np.isfinite(log_variance))


# --- the reverse model and the KL ------------------------------------------------------------


def test_reverse_mean_with_true_noise_is_the_posterior_mean_and_variances():
    with jax.enable_x64(True):
        s = cosine_schedule(100)
        x0 = jnp.array([0.2, -0.9])
        noise = jnp.array([0.7, 1.3])
        for t in (2, 50, 100):
            xt = q_sample(s, x0, t, noise)
            posterior_mean, posterior_var, _ = q_posterior(s, x0, xt, t)
            mean, var, log_var = p_mean_variance(s, xt, t, noise, "beta_tilde")
            np.testing.assert_allclose(mean, posterior_mean, rtol=1e-8, atol=1e-12)
            np.testing.assert_allclose(var, posterior_var, rtol=1e-12)
            np.testing.assert_allclose(p_mean_variance(s, xt, t, noise, "beta")[1], s.betas[t - 1], rtol=1e-12)
            for v, expected in [(1.0, s.log_betas[t - 1]), (-1.0, np.log(s.posterior_variance[t - 1]))]:
                log_var = p_mean_variance(s, xt, t, noise, "learned_range", jnp.full(2, v))[2]
                np.testing.assert_allclose(log_var, expected, rtol=1e-12)
            middle = p_mean_variance(s, xt, t, noise, "learned_range", jnp.zeros(2))[1]
            np.testing.assert_allclose(middle, np.sqrt(s.betas[t - 1] * s.posterior_variance[t - 1]), rtol=1e-12)
    xt, noise = jnp.zeros(2), jnp.ones(2)
    with pytest.raises(SettingsError, match="learned_range"):
        p_mean_variance(s, xt, 2, noise, "learned_range")
    with pytest.raises(SettingsError, match="Unknown"):
        p_mean_variance(s, xt, 2, noise, "fixed")


def test_gaussian_kl_matches_the_covariance_formula():
    with jax.enable_x64(True):
        m1, m2 = np.array([0.1, -2.0, 3.0]), np.array([0.4, 0.5, -1.0])
        v1, v2 = np.array([0.5, 2.0, 1e-3]), np.array([1.5, 0.1, 2.0])
        kl = float(jnp.sum(gaussian_kl(jnp.asarray(m1), jnp.log(v1), jnp.asarray(m2), jnp.log(v2))))
        assert kl == pytest.approx(full_gaussian_kl(m1, np.diag(v1), m2, v2), rel=1e-12)
        assert float(jnp.sum(gaussian_kl(jnp.asarray(m1), jnp.log(v1), jnp.asarray(m1), jnp.log(v1)))) == 0.0


# --- decoders --------------------------------------------------------------------------------

BIN_WIDTH, LOW, HIGH = 2 / 255, -1.0, 1.0
CENTRES = LOW + np.arange(256) * BIN_WIDTH
# (mean, sd): central, narrow, tiny scales (at a centre, off-centre, on a bin edge), 50 sds
# beyond either end of the range, wide, and a scale where the bins are narrow (series branch).
SUM_CASES = [
    (0.0, 1.0),
    (0.3, 0.01),
    (0.1234, 0.003),
    (CENTRES[200], 1e-6),
    (0.5, 1e-6),
    (LOW + 0.5 * BIN_WIDTH, 1e-7),
    (0.2 + BIN_WIDTH / 4, 1e-9),
    (HIGH + 50 * 0.1, 0.1),
    (LOW - 50 * 0.1, 0.1),
    (HIGH + 50 * 1e-4, 1e-4),
    (0.0, 1e3),
    (0.2, 0.05),
]


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-6), (jnp.float64, 1e-12)])
def test_discretized_probabilities_sum_to_one(dtype, tolerance):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(CENTRES, dtype)
        for mean, sd in SUM_CASES:
            log_p = discretized_gaussian_log_likelihood(x, jnp.asarray(mean, dtype), jnp.log(jnp.asarray(sd, dtype)),
                                                        BIN_WIDTH, LOW, HIGH)
            assert log_p.dtype == dtype
            assert np.all(np.asarray(log_p) <= 0)
            total = math.fsum(np.exp(np.asarray(log_p, np.float64)))
            assert abs(total - 1) < tolerance, (mean, sd, total)


def reference_log_mass(a, b):
    """log of the N(0, 1) mass of [a, b] by quadrature, scaled at the interval's densest point."""
    peak = min(max(0.0, a), b)

    def scaled(x):
        return np.exp(-(x * x - peak * peak) / 2)

    value, _ = integrate.quad(scaled, a, b, epsabs=0, epsrel=1e-13, limit=200)
    return -0.5 * math.log(2 * math.pi) - peak * peak / 2 + math.log(value)


@pytest.mark.parametrize("mean, sd", [(0.1, 0.3), (0.0, 0.02), (-0.95, 0.004), (3.0, 0.1), (-1.5, 0.05), (0.4, 5.0)])
def test_discretized_log_probabilities_match_references(mean, sd):
    """Against scipy.stats.norm where its CDF difference is accurate (mass > 1e-6), and against
    quadrature of the density (independent of any CDF) far into the tails."""
    with jax.enable_x64(True):
        log_p = np.asarray(
            discretized_gaussian_log_likelihood(jnp.asarray(CENTRES), mean, math.log(sd), BIN_WIDTH, LOW, HIGH)
        )
    upper = (CENTRES + BIN_WIDTH / 2 - mean) / sd
    lower = (CENTRES - BIN_WIDTH / 2 - mean) / sd
    direct = stats.norm.cdf(upper) - stats.norm.cdf(lower)
    direct[0], direct[-1] = stats.norm.cdf(upper[0]), stats.norm.sf(lower[-1])
    accurate = direct > 1e-6
    np.testing.assert_allclose(log_p[accurate], np.log(direct[accurate]), rtol=1e-8, atol=1e-9)
    # Quadrature everywhere in the interior (log masses down to about -2e4 nats), scipy's
    # log_ndtr at the open edges.
    reference = np.array([reference_log_mass(a, b) for a, b in zip(lower[1:-1], upper[1:-1])])
    np.testing.assert_allclose(log_p[1:-1], reference, rtol=1e-10, atol=1e-10)
    assert log_p[0] == pytest.approx(special.log_ndtr(upper[0]), rel=1e-12, abs=1e-12)
    assert log_p[-1] == pytest.approx(special.log_ndtr(-lower[-1]), rel=1e-12, abs=1e-12)


def test_decoders_float32_agree_with_float64_and_have_finite_gradients():
    x = jnp.asarray(CENTRES, jnp.float32)
    for mean, sd in SUM_CASES:
        log_p32 = discretized_gaussian_log_likelihood(x, jnp.float32(mean), jnp.log(jnp.float32(sd)), BIN_WIDTH, LOW,
                                                      HIGH)
        grads = jax.grad(
            lambda m, ls: jnp.sum(discretized_gaussian_log_likelihood(x, m, ls, BIN_WIDTH, LOW, HIGH)), argnums=(0, 1)
        )(jnp.float32(mean), jnp.log(jnp.float32(sd)))
        assert all(np.isfinite(g) for g in grads), (mean, sd, grads)
        with jax.enable_x64(True):
            log_p64 = discretized_gaussian_log_likelihood(
                jnp.asarray(x, jnp.float64), jnp.float64(np.float32(mean)), jnp.log(jnp.float64(np.float32(sd))),
                BIN_WIDTH, LOW, HIGH,
            )
        if sd < 1e-4:
            continue  # float32 places the bin edges only to ~6e-8, i.e. 6e-8 / sd standard units
        # Compare where the bin holds non-negligible mass.
        big = np.asarray(log_p64) > -20
        np.testing.assert_allclose(np.asarray(log_p32)[big], np.asarray(log_p64)[big], atol=1e-4, rtol=1e-4)
    decoder = DiscretizedGaussian()
    assert decoder.log_likelihood(x[:3], 0.0, 0.0).shape == (3,)


def test_gaussian_log_likelihood_matches_scipy():
    x, mean, log_scale = np.array([0.3, -2.0, 5.0]), np.array([0.0, -1.0, 4.5]), np.array([0.0, -1.0, 2.0])
    with jax.enable_x64(True):
        ours = np.asarray(gaussian_log_likelihood(jnp.asarray(x), jnp.asarray(mean), jnp.asarray(log_scale)))
    np.testing.assert_allclose(ours, stats.norm.logpdf(x, mean, np.exp(log_scale)), rtol=1e-13)
