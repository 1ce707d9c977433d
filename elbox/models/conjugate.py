"""Conjugate models: the posterior and log p(x) are known in closed form.

Closed forms are computed once in float64 with NumPy/SciPy, independently of the JAX log
densities that the samplers see, so that agreement between the two is a real check.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from scipy import special

from elbox.model import Conjugacy, Known, Model
from elbox.models._registry import load_data, register


# -- normal-normal ------------------------------------------------------------------------------
def normal_normal_numpyro(y, sigma, prior_mean, prior_sd):
    """mu ~ N(prior_mean, prior_sd^2); y_i | mu ~ N(mu, sigma^2), sigma known."""
    mu = numpyro.sample("mu", dist.Normal(prior_mean, prior_sd))
    with numpyro.plate("data", len(y)):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def normal_normal_exact(y, sigma, prior_mean, prior_sd) -> Known:
    """Posterior N(m, s^2) with 1/s^2 = 1/s0^2 + n/sigma^2, m = s^2 (m0/s0^2 + sum(y)/sigma^2);
    evidence y ~ N(m0 1, sigma^2 I + s0^2 1 1^T)."""
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    precision = 1 / prior_sd**2 + n / sigma**2
    mean = (prior_mean / prior_sd**2 + y.sum() / sigma**2) / precision
    cov = sigma**2 * np.eye(n) + prior_sd**2 * np.ones((n, n))
    from scipy import stats  # imported when a model is built: it adds 0.2 s to importing elbox

    log_evidence = stats.multivariate_normal(np.full(n, prior_mean), cov).logpdf(y)
    dtype = jnp.result_type(float)
    mean_, sd_ = float(mean), float(precision**-0.5)

    def posterior_sampler(key, draws):
        """Exact posterior draws: mu = m + s * N(0, 1)."""
        return {"mu": mean_ + sd_ * jax.random.normal(key, (draws,), dtype)}

    return Known(
        posterior_mean={"mu": mean_},
        posterior_sd={"mu": sd_},
        moments="exact",
        log_evidence=float(log_evidence),
        source="closed form (conjugate normal prior, known variance)",
        posterior_sampler=posterior_sampler,
    )


@register("normal_normal", "unknown mean of 20 normal draws with known sd 2; N(0, 10^2) prior")
def normal_normal() -> Model:
    data = load_data("normal_normal.json")
    args = (np.asarray(data["y"]), data["sigma"], data["prior_mean"], data["prior_sd"])
    conjugacy = Conjugacy("normal_normal", dict(zip(("y", "sigma", "prior_mean", "prior_sd"), args)))
    return Model.from_numpyro(
        normal_normal_numpyro, *args, name="normal_normal", known=normal_normal_exact(*args), conjugacy=conjugacy
    )


# -- Bayesian linear regression -------------------------------------------------------------------
def linear_regression_numpyro(X, y, noise_sd, prior_sd):
    """w ~ N(0, prior_sd^2 I); y | w ~ N(X w, noise_sd^2 I)."""
    w = numpyro.sample("w", dist.Normal(0.0, prior_sd).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, noise_sd), obs=y)


def linear_regression_exact(X, y, noise_sd, prior_sd) -> Known:
    """Posterior N(m, S), S = (X^T X / s^2 + I / s0^2)^-1, m = S X^T y / s^2;
    evidence y ~ N(0, s^2 I + s0^2 X X^T)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    cov = np.linalg.inv(X.T @ X / noise_sd**2 + np.eye(d) / prior_sd**2)
    mean = cov @ X.T @ y / noise_sd**2
    marginal = noise_sd**2 * np.eye(n) + prior_sd**2 * X @ X.T
    from scipy import stats

    log_evidence = stats.multivariate_normal(np.zeros(n), marginal).logpdf(y)
    sd = np.sqrt(np.diag(cov))
    dtype = jnp.result_type(float)
    chol = np.linalg.cholesky(cov)

    def posterior_sampler(key, draws):
        """Exact posterior draws: w = m + L N(0, I), L L^T = S."""
        noise = jax.random.normal(key, (draws, d), dtype)
        return {"w": jnp.asarray(mean, dtype) + noise @ jnp.asarray(chol.T, dtype)}

    return Known(
        posterior_mean={f"w[{i}]": float(mean[i]) for i in range(d)},
        posterior_sd={f"w[{i}]": float(sd[i]) for i in range(d)},
        moments="exact",
        log_evidence=float(log_evidence),
        source="closed form (Gaussian prior, Gaussian likelihood with known noise)",
        posterior_sampler=posterior_sampler,
    )


def linear_regression_posterior_covariance(X, noise_sd, prior_sd) -> np.ndarray:
    """The exact posterior covariance (X^T X / s^2 + I / s0^2)^-1, for tests of full-rank fits."""
    X = np.asarray(X, dtype=np.float64)
    return np.linalg.inv(X.T @ X / noise_sd**2 + np.eye(X.shape[1]) / prior_sd**2)


def linear_regression_data():
    data = load_data("linear_regression.json")
    x1, x2 = np.asarray(data["x1"]), np.asarray(data["x2"])
    X = np.column_stack([np.ones_like(x1), x1, x2])
    return X, np.asarray(data["y"]), data["noise_sd"], data["prior_sd"]


@register(
    "linear_regression",
    "y = w0 + w1 x1 + w2 x2 + noise (n=50, noise sd 0.8 known); w ~ N(0, 5^2 I)",
)
def linear_regression() -> Model:
    args = linear_regression_data()
    return Model.from_numpyro(
        linear_regression_numpyro, *args, name="linear_regression", known=linear_regression_exact(*args)
    )


# -- beta-binomial --------------------------------------------------------------------------------
def beta_binomial_numpyro(trials, successes, alpha, beta):
    """p ~ Beta(alpha, beta); k_i | p ~ Binomial(n_i, p)."""
    p = numpyro.sample("p", dist.Beta(alpha, beta))
    with numpyro.plate("data", len(trials)):
        numpyro.sample("k", dist.Binomial(trials, p), obs=successes)


def beta_binomial_exact(trials, successes, alpha, beta) -> Known:
    """Posterior Beta(alpha + sum k, beta + sum(n - k));
    log p(x) = sum log C(n_i, k_i) + log B(alpha + sum k, beta + sum(n - k)) - log B(alpha, beta)."""
    n = np.asarray(trials)
    k = np.asarray(successes)
    a, b = alpha + k.sum(), beta + (n - k).sum()
    log_choose = special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
    log_evidence = log_choose.sum() + special.betaln(a, b) - special.betaln(alpha, beta)
    from scipy import stats

    posterior = stats.beta(a, b)
    return Known(
        posterior_mean={"p": float(posterior.mean())},
        posterior_sd={"p": float(posterior.std())},
        moments="exact",
        log_evidence=float(log_evidence),
        source="closed form (beta prior, binomial likelihood)",
    )


@register("beta_binomial", "success probability of 6 binomial counts; Beta(2, 2) prior")
def beta_binomial() -> Model:
    data = load_data("beta_binomial.json")
    args = (np.asarray(data["trials"]), np.asarray(data["successes"]), data["alpha"], data["beta"])
    return Model.from_numpyro(
        beta_binomial_numpyro, *args, name="beta_binomial", known=beta_binomial_exact(*args)
    )


# -- normal with unknown mean and precision (normal-gamma) ---------------------------------------
NORMAL_GAMMA_PRIOR = {"mu0": 0.0, "lambda0": 0.01, "a0": 2.0, "b0": 2.0}


def normal_gamma_numpyro(y, mu0, lambda0, a0, b0):
    """tau ~ Gamma(a0, rate b0); mu | tau ~ N(mu0, 1/(lambda0 tau)); y_i ~ N(mu, 1/tau)."""
    tau = numpyro.sample("tau", dist.Gamma(a0, b0))
    mu = numpyro.sample("mu", dist.Normal(mu0, 1.0 / jnp.sqrt(lambda0 * tau)))
    with numpyro.plate("data", len(y)):
        numpyro.sample("y", dist.Normal(mu, 1.0 / jnp.sqrt(tau)), obs=y)


def normal_gamma_log_evidence(y, mu0, lambda0, a0, b0) -> float:
    """Exact log p(y) of the Normal-Gamma model (conjugate; float64 numpy):

        log p(y) = lgamma(a_N) - lgamma(a0) + a0 log b0 - a_N log b_N
                   + 1/2 log(lambda0 / lambda_N) - n/2 log(2 pi),
    with lambda_N = lambda0 + n, a_N = a0 + n/2,
    b_N = b0 + 1/2 sum_i (y_i - ybar)^2 + lambda0 n (ybar - mu0)^2 / (2 (lambda0 + n)).
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    n = y.size
    ybar = y.mean()
    lambda_N = lambda0 + n
    a_N = a0 + 0.5 * n
    b_N = b0 + 0.5 * np.sum((y - ybar) ** 2) + lambda0 * n * (ybar - mu0) ** 2 / (2 * lambda_N)
    return float(special.gammaln(a_N) - special.gammaln(a0) + a0 * math.log(b0) - a_N * math.log(b_N)
                 + 0.5 * math.log(lambda0 / lambda_N) - 0.5 * n * math.log(2 * math.pi))


def normal_gamma_exact(y, mu0, lambda0, a0, b0) -> Known:
    """Posterior tau | y ~ Gamma(a_n, b_n), mu | y ~ Student-t(2 a_n, mu_n, b_n / (a_n lambda_n)):
    lambda_n = lambda0 + n, mu_n = (lambda0 mu0 + n ybar) / lambda_n, a_n = a0 + n/2,
    b_n = b0 + 1/2 sum (y_i - ybar)^2 + lambda0 n (ybar - mu0)^2 / (2 lambda_n);
    log p(y) = lgamma(a_n) - lgamma(a0) + a0 log b0 - a_n log b_n + 1/2 log(lambda0/lambda_n) - n/2 log 2 pi."""
    y = np.asarray(y, dtype=np.float64)
    n, ybar = y.size, y.mean()
    lambda_n = lambda0 + n
    mu_n = (lambda0 * mu0 + n * ybar) / lambda_n
    a_n = a0 + n / 2
    b_n = b0 + 0.5 * np.sum((y - ybar) ** 2) + lambda0 * n * (ybar - mu0) ** 2 / (2 * lambda_n)
    return Known(
        posterior_mean={"mu": float(mu_n), "tau": float(a_n / b_n)},
        posterior_sd={"mu": float(np.sqrt(b_n / (lambda_n * (a_n - 1)))), "tau": float(np.sqrt(a_n) / b_n)},
        moments="exact",
        log_evidence=normal_gamma_log_evidence(y, mu0, lambda0, a0, b0),
        source="closed form (conjugate normal-gamma prior)",
    )


def normal_gamma_data():
    y = np.asarray(load_data("normal_normal.json")["y"], dtype=float)
    p = NORMAL_GAMMA_PRIOR
    return y, p["mu0"], p["lambda0"], p["a0"], p["b0"]


@register("normal_gamma", "mean and precision of 20 normal draws; normal-gamma prior (the data of normal_normal)")
def normal_gamma() -> Model:
    args = normal_gamma_data()
    conjugacy = Conjugacy("normal_gamma", dict(zip(("y", "mu0", "lambda0", "a0", "b0"), args)))
    return Model.from_numpyro(normal_gamma_numpyro, *args, name="normal_gamma", known=normal_gamma_exact(*args),
                              conjugacy=conjugacy)
