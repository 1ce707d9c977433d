"""The models with a closed-form log p(x) and exact posterior draws.

(a) Each model's log joint equals a hand computation in float64 NumPy/SciPy.
(b) Its log p(x) is checked independently: by quadrature per coordinate and by the candidate's
    formula log p(x) = log p(x, z) - log p(z | x), which holds at every z.
(c) Its exact posterior sampler (and those of normal_normal and linear_regression) agrees with
    the posterior means and sds within Monte Carlo standard errors.
(d) ``elbox.models.describe`` lists the log evidence.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Z
from scipy import integrate, special, stats

from elbox import models
from elbox.models.evidence_models import (
    gaussian_evidence_100d_data,
    nig_regression_data,
    nig_regression_posterior,
)

NEW_MODELS = ["gaussian_evidence_100d", "nig_regression"]
SAMPLED_MODELS = ["normal_normal", "linear_regression", *NEW_MODELS]

# The sampler tests make about 2 x 110 comparisons in all at one fixed key; at 4.5 standard
# errors a two-sided excursion has probability 7e-6 each, so about 1.5e-3 that any one of them
# would fail by chance (at conftest's Z = 4 it would be 1.4e-2).
Z_MANY = 4.5
DRAWS = 20_000


# -- hand computations in float64 ----------------------------------------------------------------
def gaussian_log_joint(z) -> float:
    data = gaussian_evidence_100d_data()
    return float(stats.norm(0.0, data.prior_sd).logpdf(z).sum() + stats.norm(z, data.sigma).logpdf(data.y).sum())


def gaussian_log_posterior(z) -> float:
    data = gaussian_evidence_100d_data()
    var = 1.0 / (1.0 / data.prior_sd**2 + 1.0 / data.sigma**2)
    return float(stats.norm(var * data.y / data.sigma**2, np.sqrt(var)).logpdf(z).sum())


def nig_log_joint(beta, sigma2) -> float:
    """log p(y, beta, sigma2) (no Jacobian)."""
    d = nig_regression_data()
    return float(
        stats.invgamma(d.a0, scale=d.b0).logpdf(sigma2)
        + stats.norm(0.0, np.sqrt(sigma2 * d.v0)).logpdf(beta).sum()
        + stats.norm(d.X @ beta, np.sqrt(sigma2)).logpdf(d.y).sum()
    )


def nig_log_posterior(beta, sigma2) -> float:
    """log p(beta, sigma2 | y) = log N(beta; mn, sigma2 Vn) + log InvGamma(sigma2; an, bn)."""
    d = nig_regression_data()
    mn, Vn, an, bn = nig_regression_posterior(d.X, d.y, d.v0, d.a0, d.b0)
    return float(stats.multivariate_normal(mn, sigma2 * Vn).logpdf(beta) + stats.invgamma(an, scale=bn).logpdf(sigma2))


def nig_log_evidence_by_hand() -> float:
    """log p(y) = lgamma(an) - lgamma(a0) + a0 log b0 - an log bn + 1/2 log(det Vn / det V0) - n/2 log 2 pi."""
    d = nig_regression_data()
    n, p = d.X.shape
    _, Vn, an, bn = nig_regression_posterior(d.X, d.y, d.v0, d.a0, d.b0)
    return float(
        special.gammaln(an) - special.gammaln(d.a0) + d.a0 * np.log(d.b0) - an * np.log(bn)
        + 0.5 * (np.linalg.slogdet(Vn)[1] - p * np.log(d.v0)) - 0.5 * n * np.log(2 * np.pi)
    )


# -- (a) the log joint ---------------------------------------------------------------------------
def test_gaussian_log_joint_by_hand():
    data = gaussian_evidence_100d_data()
    z = data.z_true + 0.5 * data.sigma  # half an observation sd off the generating latent
    model = models.get("gaussian_evidence_100d")
    assert model.dimension == 100
    assert float(model.log_joint({"z": jnp.asarray(z, jnp.float32)})) == pytest.approx(gaussian_log_joint(z), rel=1e-5)
    with jax.enable_x64(True):
        model64 = models.build("gaussian_evidence_100d")
        value = float(model64.log_joint({"z": jnp.asarray(z, jnp.float64)}))
    assert value == pytest.approx(gaussian_log_joint(z), rel=1e-12)


def test_nig_log_joint_by_hand():
    d = nig_regression_data()
    beta, sigma2 = d.beta_true + 0.1, 1.3
    # the unconstrained space: sigma2 = exp(u), so log_joint has the log-Jacobian log sigma2
    expected = nig_log_joint(beta, sigma2) + np.log(sigma2)
    model = models.get("nig_regression")
    assert model.dimension == 5
    u = model.unconstrain({"sigma2": jnp.float32(sigma2), "beta": jnp.asarray(beta, jnp.float32)})
    assert float(u["sigma2"]) == pytest.approx(np.log(sigma2), rel=1e-6)
    assert float(model.log_joint(u)) == pytest.approx(expected, rel=1e-5)
    with jax.enable_x64(True):
        model64 = models.build("nig_regression")
        value = float(model64.log_joint({"sigma2": jnp.float64(np.log(sigma2)), "beta": jnp.asarray(beta)}))
    assert value == pytest.approx(expected, rel=1e-12)


def test_generating_latents_are_kept_and_data_fixed():
    data = gaussian_evidence_100d_data()
    np.testing.assert_allclose(data.sigma, np.logspace(-2, 1, 100))
    rng = np.random.default_rng(20261202)
    z = rng.normal(0.0, 100.0, 100)
    np.testing.assert_array_equal(data.z_true, z)
    np.testing.assert_array_equal(data.y, rng.normal(z, data.sigma))
    d = nig_regression_data()
    assert d.X.shape == (50, 4) and np.all(d.X[:, 0] == 1.0)
    assert d.beta_true.shape == (4,) and d.sigma2_true > 0


# -- (b) the log evidence, independently ---------------------------------------------------------
def _log_normal(x, mean, sd):
    return -0.5 * ((x - mean) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)


def _log_evidence_1d(y, sigma, prior_sd):
    """log of int N(z; 0, s0^2) N(y; z, sigma^2) dz by adaptive quadrature over the posterior
    mode +- 40 posterior sds (the integrand scaled by its peak)."""
    var = 1.0 / (1.0 / prior_sd**2 + 1.0 / sigma**2)
    mode, width = var * y / sigma**2, math.sqrt(var)
    log_f = lambda z: _log_normal(z, 0.0, prior_sd) + _log_normal(y, z, sigma)
    peak = log_f(mode)
    integral, _ = integrate.quad(lambda z: math.exp(log_f(z) - peak), mode - 40 * width, mode + 40 * width,
                                 points=[mode], epsabs=0.0, epsrel=1e-12, limit=200)
    return peak + math.log(integral)


def test_gaussian_log_evidence_by_quadrature_per_coordinate():
    data = gaussian_evidence_100d_data()
    total = sum(_log_evidence_1d(float(y), float(s), data.prior_sd) for y, s in zip(data.y, data.sigma))
    assert total == pytest.approx(models.get("gaussian_evidence_100d").known.log_evidence, abs=1e-8)


def test_gaussian_log_evidence_by_candidates_formula():
    data = gaussian_evidence_100d_data()
    exact = models.get("gaussian_evidence_100d").known.log_evidence
    for z in (data.z_true, np.zeros(100), data.y):
        assert gaussian_log_joint(z) - gaussian_log_posterior(z) == pytest.approx(exact, abs=1e-6)


def test_nig_log_evidence_by_candidates_formula_and_by_hand():
    d = nig_regression_data()
    exact = models.get("nig_regression").known.log_evidence
    for beta, sigma2 in ((d.beta_true, d.sigma2_true), (np.array([1.0, -2.0, 0.5, 3.0]), 2.5)):
        assert nig_log_joint(beta, sigma2) - nig_log_posterior(beta, sigma2) == pytest.approx(exact, abs=1e-6)
    # scipy's multivariate t (in the model) against the closed form by hand
    assert nig_log_evidence_by_hand() == pytest.approx(exact, abs=1e-9)


# -- (c) the exact posterior samplers ------------------------------------------------------------
def _label_draws(draws: dict) -> dict[str, np.ndarray]:
    """{label as ArviZ writes it: draws}, from {site: array with leading axis n}."""
    out = {}
    for site, values in draws.items():
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            out[site] = values
        else:
            for i in range(values.shape[1]):
                out[f"{site}[{i}]"] = values[:, i]
    return out


@pytest.mark.parametrize("name", SAMPLED_MODELS)
def test_posterior_sampler_moments(name):
    model = models.get(name)
    known = model.known
    draws = known.posterior_sampler(jax.random.key(7), DRAWS)
    assert set(draws) == set(model.parameter_names)  # latent sites only
    for site, values in draws.items():
        assert isinstance(values, jax.Array) and values.dtype == model.flat_dtype, site
        assert values.shape == (DRAWS, *model.init_position[site].shape), site
    labelled = _label_draws(draws)
    assert set(labelled) == set(known.posterior_mean)
    for label, x in labelled.items():
        mean, sd = known.posterior_mean[label], known.posterior_sd[label]
        # the mean's standard error is sd / sqrt(n); the sample sd's, by the delta method,
        # sqrt(var((x - mean)^2) / n) / (2 sd), with the fourth moment from the draws (the t
        # marginals of beta and the inverse gamma of sigma2 are heavier-tailed than a normal)
        assert abs(x.mean() - mean) <= Z_MANY * sd / np.sqrt(DRAWS), (label, x.mean(), mean)
        squares = (x - mean) ** 2
        sd_error = squares.std() / np.sqrt(DRAWS) / (2 * sd)
        assert abs(np.sqrt(squares.mean()) - sd) <= Z_MANY * sd_error, (label, np.sqrt(squares.mean()), sd)
    if name == "nig_regression":
        assert np.all(labelled["sigma2"] > 0)


def test_linear_regression_sampler_covariance():
    from elbox.models.conjugate import linear_regression_data, linear_regression_posterior_covariance

    X, _, noise_sd, prior_sd = linear_regression_data()
    cov = linear_regression_posterior_covariance(X, noise_sd, prior_sd)
    w = np.asarray(models.get("linear_regression").known.posterior_sampler(jax.random.key(3), DRAWS)["w"], np.float64)
    sd = np.sqrt(np.diag(cov))
    corr = np.corrcoef(w.T)
    # a sample correlation's standard error is (1 - rho^2) / sqrt(n)
    exact = cov / np.outer(sd, sd)
    assert np.all(np.abs(corr - exact) <= Z * (1 - exact**2) / np.sqrt(DRAWS) + 1e-12)


def test_nig_sampler_beta_given_sigma2():
    """Joint structure: beta - mn scaled by 1/sqrt(sigma2) is N(0, Vn), independent of sigma2."""
    d = nig_regression_data()
    mn, Vn, _, _ = nig_regression_posterior(d.X, d.y, d.v0, d.a0, d.b0)
    draws = models.get("nig_regression").known.posterior_sampler(jax.random.key(11), DRAWS)
    beta, sigma2 = np.asarray(draws["beta"], np.float64), np.asarray(draws["sigma2"], np.float64)
    whitened = np.linalg.solve(np.linalg.cholesky(Vn), ((beta - mn) / np.sqrt(sigma2)[:, None]).T).T
    np.testing.assert_array_less(np.abs(whitened.mean(0)), Z * np.full(4, 1 / np.sqrt(DRAWS)))
    np.testing.assert_array_less(np.abs(np.cov(whitened.T) - np.eye(4)), Z * np.sqrt(2 / DRAWS))
    for i in range(4):
        rho = np.corrcoef(whitened[:, i] ** 2, sigma2)[0, 1]
        assert abs(rho) <= Z / np.sqrt(DRAWS), (i, rho)


def test_posterior_sampler_follows_its_key():
    sampler = models.get("nig_regression").known.posterior_sampler
    a, b = sampler(jax.random.key(0), 10), sampler(jax.random.key(0), 10)
    c = sampler(jax.random.key(1), 10)
    np.testing.assert_array_equal(a["beta"], b["beta"])
    assert not np.array_equal(a["beta"], c["beta"])


# -- (d) the models' description ------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_MODELS)
def test_describe_lists_log_evidence(name):
    described = models.describe(name)
    assert name in models.names()
    assert described["known"]["posterior_moments"] == "exact"
    assert described["known"]["log_evidence"] == models.get(name).known.log_evidence
    assert np.isfinite(described["known"]["log_evidence"])
    assert described["dimension"] == {"gaussian_evidence_100d": 100, "nig_regression": 5}[name]
