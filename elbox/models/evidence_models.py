"""Models with simulated data whose evidence log p(x) and posterior are known in closed form.

The data are simulated once, with a fixed NumPy seed, from the model itself: first the latent
z* from the prior, then x from the likelihood given z*. The generating latent is kept with the
data; for data simulated this way it is one exact draw of the posterior p(z | x).

Closed forms are computed in float64 with NumPy/SciPy, independently of the JAX log densities
that the samplers see. Each model's ``Known.posterior_sampler`` draws the exact posterior.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from elbox.model import Known, Model
from elbox.models._registry import register


# -- 100 independent normal means -----------------------------------------------------------------
class GaussianEvidenceData(NamedTuple):
    """The data of ``gaussian_evidence_100d``: z_j ~ N(0, prior_sd^2), y_j | z_j ~ N(z_j, sigma_j^2)."""

    y: np.ndarray  # (100,) the observations
    sigma: np.ndarray  # (100,) their known sds, log-spaced from 0.01 to 10
    prior_sd: float
    z_true: np.ndarray  # (100,) the latent the data were simulated from


GAUSSIAN_EVIDENCE_SEED = 20261202


# Not cached: every model built gets its own arrays. JAX keeps the device copy of a NumPy array
# it has converted, so an array shared by a float32 model and a float64 one (models.build under
# jax.enable_x64) would reach the second in the first one's dtype.
def gaussian_evidence_100d_data() -> GaussianEvidenceData:
    """Simulated once: z* ~ N(0, 100^2 I), then y ~ N(z*, diag(sigma^2)), sigma = logspace(-2, 1, 100),
    with ``np.random.default_rng(20261202)``."""
    prior_sd = 100.0
    sigma = np.logspace(-2, 1, 100)
    rng = np.random.default_rng(GAUSSIAN_EVIDENCE_SEED)
    z_true = rng.normal(0.0, prior_sd, size=sigma.size)
    y = rng.normal(z_true, sigma)
    return GaussianEvidenceData(y, sigma, prior_sd, z_true)


def gaussian_evidence_100d_numpyro(y, sigma, prior_sd):
    """z ~ N(0, prior_sd^2 I); y_j | z ~ N(z_j, sigma_j^2)."""
    z = numpyro.sample("z", dist.Normal(0.0, prior_sd).expand([len(y)]).to_event(1))
    numpyro.sample("y", dist.Normal(z, sigma).to_event(1), obs=y)


def gaussian_evidence_100d_exact(y, sigma, prior_sd) -> Known:
    """Posterior z_j | y ~ N(m_j, v_j), independent, with v_j = 1 / (1/s0^2 + 1/sigma_j^2) and
    m_j = v_j y_j / sigma_j^2; evidence log p(y) = sum_j log N(y_j; 0, s0^2 + sigma_j^2)."""
    from scipy import stats  # imported when the model is built: it adds 0.2 s to importing elbox

    y = np.asarray(y, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    var = 1.0 / (1.0 / prior_sd**2 + 1.0 / sigma**2)
    mean = var * y / sigma**2
    sd = np.sqrt(var)
    log_evidence = stats.norm(0.0, np.sqrt(prior_sd**2 + sigma**2)).logpdf(y).sum()
    dtype = jnp.result_type(float)

    def posterior_sampler(key, n):
        draws = jax.random.normal(key, (n, y.size), dtype)
        return {"z": jnp.asarray(mean, dtype) + jnp.asarray(sd, dtype) * draws}

    return Known(
        posterior_mean={f"z[{j}]": float(mean[j]) for j in range(y.size)},
        posterior_sd={f"z[{j}]": float(sd[j]) for j in range(y.size)},
        moments="exact",
        log_evidence=float(log_evidence),
        source="closed form (independent normal means, normal prior, known variances)",
        posterior_sampler=posterior_sampler,
    )


@register(
    "gaussian_evidence_100d",
    "100 independent normal means, one observation each with sd 0.01 to 10; N(0, 100^2) prior",
)
def gaussian_evidence_100d() -> Model:
    data = gaussian_evidence_100d_data()
    args = (data.y, data.sigma, data.prior_sd)
    return Model.from_numpyro(
        gaussian_evidence_100d_numpyro, *args, name="gaussian_evidence_100d", known=gaussian_evidence_100d_exact(*args)
    )


# -- normal-inverse-gamma linear regression -------------------------------------------------------
class NIGRegressionData(NamedTuple):
    """The data and prior of ``nig_regression``: sigma2 ~ InvGamma(a0, b0),
    beta | sigma2 ~ N(0, sigma2 v0 I), y | beta, sigma2 ~ N(X beta, sigma2 I)."""

    X: np.ndarray  # (50, 4): an intercept column and 3 standard normal predictors
    y: np.ndarray  # (50,)
    v0: float
    a0: float
    b0: float
    beta_true: np.ndarray  # (4,) the latents the data were simulated from
    sigma2_true: float


NIG_REGRESSION_SEED = 20261203


def nig_regression_data() -> NIGRegressionData:
    """Simulated once with ``np.random.default_rng(20261203)``: the 3 predictors (standard
    normal), then sigma2* ~ InvGamma(3, 2), beta* ~ N(0, 4 sigma2* I), y ~ N(X beta*, sigma2* I)."""
    v0, a0, b0 = 4.0, 3.0, 2.0
    n, predictors = 50, 3
    rng = np.random.default_rng(NIG_REGRESSION_SEED)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, predictors))])
    sigma2_true = float(b0 / rng.gamma(a0))  # 1 / Gamma(a0, rate b0)
    beta_true = rng.normal(0.0, math.sqrt(sigma2_true * v0), size=X.shape[1])
    y = rng.normal(X @ beta_true, math.sqrt(sigma2_true))
    return NIGRegressionData(X, y, v0, a0, b0, beta_true, sigma2_true)


def nig_regression_numpyro(X, y, v0, a0, b0):
    """sigma2 ~ InvGamma(a0, b0); beta | sigma2 ~ N(0, sigma2 v0 I); y | beta, sigma2 ~ N(X beta, sigma2 I)."""
    sigma2 = numpyro.sample("sigma2", dist.InverseGamma(a0, b0))
    beta = numpyro.sample("beta", dist.Normal(0.0, jnp.sqrt(sigma2 * v0)).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ beta, jnp.sqrt(sigma2)), obs=y)


def nig_regression_posterior(X, y, v0, a0, b0):
    """The posterior's parameters (mn, Vn, an, bn): beta | sigma2, y ~ N(mn, sigma2 Vn),
    sigma2 | y ~ InvGamma(an, bn), with Vn = (V0^-1 + X^T X)^-1, mn = Vn X^T y, an = a0 + n/2,
    bn = b0 + (y^T y - mn^T Vn^-1 mn) / 2 (V0 = v0 I; float64)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, p = X.shape
    precision = np.eye(p) / v0 + X.T @ X
    Vn = np.linalg.inv(precision)
    mn = np.linalg.solve(precision, X.T @ y)
    an = a0 + n / 2
    bn = b0 + (y @ y - mn @ precision @ mn) / 2
    return mn, Vn, an, bn


def nig_regression_exact(X, y, v0, a0, b0) -> Known:
    """Posterior: sigma2 | y ~ InvGamma(an, bn) (mean bn/(an-1), sd bn/((an-1) sqrt(an-2))), and
    beta | y ~ Student-t(2 an, mn, (bn/an) Vn) (sd of beta_i sqrt(bn/(an-1) Vn_ii)); see
    :func:`nig_regression_posterior`. Evidence: y ~ Student-t(2 a0, 0, (b0/a0) (I + v0 X X^T))."""
    from scipy import stats  # imported when the model is built

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, p = X.shape
    mn, Vn, an, bn = nig_regression_posterior(X, y, v0, a0, b0)
    shape = (b0 / a0) * (np.eye(n) + v0 * X @ X.T)
    log_evidence = stats.multivariate_t(np.zeros(n), shape, df=2 * a0).logpdf(y)
    beta_sd = np.sqrt(bn / (an - 1) * np.diag(Vn))
    dtype = jnp.result_type(float)
    chol = np.linalg.cholesky(Vn)
    an_, bn_ = float(an), float(bn)

    def posterior_sampler(key, n_draws):
        key_sigma2, key_beta = jax.random.split(key)
        sigma2 = bn_ / jax.random.gamma(key_sigma2, an_, (n_draws,), dtype)
        noise = jax.random.normal(key_beta, (n_draws, p), dtype) @ jnp.asarray(chol.T, dtype)
        beta = jnp.asarray(mn, dtype) + jnp.sqrt(sigma2)[:, None] * noise
        return {"sigma2": sigma2, "beta": beta}

    return Known(
        posterior_mean={**{f"beta[{i}]": float(mn[i]) for i in range(p)}, "sigma2": float(bn / (an - 1))},
        posterior_sd={**{f"beta[{i}]": float(beta_sd[i]) for i in range(p)},
                      "sigma2": float(bn / ((an - 1) * math.sqrt(an - 2)))},
        moments="exact",
        log_evidence=float(log_evidence),
        source="closed form (conjugate normal-inverse-gamma prior)",
        posterior_sampler=posterior_sampler,
    )


@register(
    "nig_regression",
    "y = X beta + noise (n=50, intercept + 3 predictors), unknown noise variance; normal-inverse-gamma prior",
)
def nig_regression() -> Model:
    data = nig_regression_data()
    args = (data.X, data.y, data.v0, data.a0, data.b0)
    return Model.from_numpyro(nig_regression_numpyro, *args, name="nig_regression", known=nig_regression_exact(*args))
