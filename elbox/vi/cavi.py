"""Coordinate-ascent variational inference (CAVI) with the ELBO in closed form.

Blei, Kucukelbir & McAuliffe (2017), "Variational Inference: A Review for Statisticians",
JASA 112(518), Section 2.4 (CAVI, Algorithm 1) and Section 3 (the Bayesian mixture of
Gaussians, Algorithm 2). For a conditionally conjugate model, CAVI sets each mean-field factor
in turn to its optimum given the others,

    q*(z_j) ∝ exp{ E_{-j}[ log p(z_j | z_{-j}, x) ] },

which can only increase the ELBO, so the ELBO trace of a correct implementation never
decreases. Every model here has the ELBO in closed form (no Monte Carlo), with all constants,
so that it is a true lower bound on log p(x):

    log p(x) = ELBO(q) + KL(q || p(. | x)) >= ELBO(q).

Contents
--------
* :func:`cavi_gaussian_mixture`: the mixture of Gaussians of the paper, with d-dimensional data
  and unit observation covariance.
* :func:`cavi_normal_normal`: the unknown mean of a Normal with known variance; a single factor,
  so one update gives the exact posterior and the gap ``log p(x) - ELBO`` is 0.
* :func:`cavi_normal_gamma`: unknown mean and precision (Bishop 2006, PRML Section 10.1.3);
  q(mu) q(tau) cannot represent the posterior dependence of mu on tau, so the ELBO stays
  strictly below the exact log evidence (returned alongside).
* :func:`log_evidence_gaussian_mixture_by_enumeration`: exact log p(x) of the mixture for tiny
  data sets (a sum over all K^n assignments).
* :func:`simulate_gaussian_mixture`: data from the mixture's generative process.

Iterations run in a ``jax.lax.while_loop`` in the dtype of the input (pass float64 arrays inside
``jax.enable_x64(True)`` for float64). Each iteration is one full sweep over the factors followed
by one evaluation of the ELBO; the loop stops when

    |ELBO_t - ELBO_{t-1}| <= max(tolerance, 10 * eps(dtype)) * |ELBO_t|

(a relative tolerance, floored at a few units of round-off so float32 runs can converge too),
or after ``max_iterations`` sweeps.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln
from scipy.special import logsumexp as np_logsumexp

from elbox.errors import DataError, SettingsError
from elbox.models.conjugate import normal_gamma_log_evidence

LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "CaviResult",
    "NormalNormalResult",
    "NormalGammaResult",
    "cavi_gaussian_mixture",
    "gaussian_mixture_elbo",
    "gaussian_mixture_elbo_parts",
    "cavi_normal_normal",
    "cavi_normal_gamma",
    "normal_gamma_elbo",
    "normal_gamma_elbo_parts",
    "normal_gamma_log_evidence",
    "log_evidence_gaussian_mixture_by_enumeration",
    "simulate_gaussian_mixture",
]


# ----------------------------------------------------------------------------------------------
# The shared iteration loop
# ----------------------------------------------------------------------------------------------

def _iterate(sweep: Callable, state0, max_iterations: int, tolerance, dtype):
    """Run ``state, elbo = sweep(state)`` until the relative ELBO change is below tolerance.

    Returns ``(state, trace, iterations, converged)``; ``trace`` has length ``max_iterations``,
    its first ``iterations`` entries are the ELBO after each sweep and the rest are NaN.
    """
    threshold = jnp.maximum(jnp.asarray(tolerance, dtype), 10 * jnp.finfo(dtype).eps)

    def cond(carry):
        t, _, _, _, converged = carry
        return (t < max_iterations) & ~converged

    def body(carry):
        t, state, trace, previous, _ = carry
        state, elbo = sweep(state)
        converged = jnp.abs(elbo - previous) <= threshold * jnp.abs(elbo)
        return t + 1, state, trace.at[t].set(elbo), elbo, converged

    carry0 = (jnp.asarray(0), state0, jnp.full((max_iterations,), jnp.nan, dtype),
              jnp.asarray(-jnp.inf, dtype), jnp.asarray(False))
    t, state, trace, _, converged = jax.lax.while_loop(cond, body, carry0)
    return state, trace, t, converged


def _float_array(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


# ----------------------------------------------------------------------------------------------
# Bayesian mixture of Gaussians (Blei et al. 2017, Section 3, Algorithm 2)
# ----------------------------------------------------------------------------------------------

class CaviResult(NamedTuple):
    """CAVI fit of the Bayesian mixture of Gaussians.

    Attributes:
        m: (K, d) means of q(mu_k) = N(m_k, s2_k I).
        s2: (K,) variances of q(mu_k) (the same in every coordinate).
        phi: (n, K) assignment probabilities, q(c_i = k) = phi_ik.
        elbo_trace: np.ndarray, the closed-form ELBO after every iteration.
        elbo: the final ELBO (``elbo_trace[-1]``).
        iterations: the number of sweeps run.
        converged: whether the tolerance was met before ``max_iterations``.
    """

    m: np.ndarray
    s2: np.ndarray
    phi: np.ndarray
    elbo_trace: np.ndarray
    elbo: float
    iterations: int
    converged: bool


def gaussian_mixture_elbo(x, m, s2, phi, prior_sd):
    """The closed-form ELBO of the mixture for q(mu_k) = N(m_k, s2_k I_d), q(c_i) = Cat(phi_i).

    With E[mu_k] = m_k and E[mu_k . mu_k] = ||m_k||^2 + d s2_k, the five terms are

        E[log p(mu)]      = sum_k [ -d/2 log(2 pi sigma^2) - (||m_k||^2 + d s2_k) / (2 sigma^2) ]
        E[log p(c)]       = -n log K
        E[log p(x|c,mu)]  = sum_ik phi_ik [ -d/2 log(2 pi)
                                            - (||x_i||^2 - 2 x_i.m_k + ||m_k||^2 + d s2_k) / 2 ]
        -E[log q(mu)]     = sum_k d/2 [ log(2 pi s2_k) + 1 ]                 (Gaussian entropy)
        -E[log q(c)]      = -sum_ik phi_ik log phi_ik                        (0 log 0 = 0)

    and ELBO = E[log p(mu)] + E[log p(c)] + E[log p(x|c,mu)] - E[log q(mu)] - E[log q(c)]
    (Blei et al. 2017, eq. 21, with every constant kept).
    """
    expected_log_likelihood, kl_to_prior = gaussian_mixture_elbo_parts(x, m, s2, phi, prior_sd)
    return expected_log_likelihood - kl_to_prior


def gaussian_mixture_elbo_parts(x, m, s2, phi, prior_sd):
    """The mixture's ELBO split as form (b): (E[log p(x | c, mu)], KL(q(c, mu) || p(c, mu))),
    the KL being -(E[log p(mu)] + E[log p(c)] - E[log q(mu)] - E[log q(c)]) from the five terms
    of :func:`gaussian_mixture_elbo`."""
    n, d = x.shape
    K = m.shape[0]
    sigma2 = jnp.asarray(prior_sd, x.dtype) ** 2
    e_mu_sq = jnp.sum(m**2, axis=1) + d * s2                                   # E[mu_k . mu_k]
    log_p_mu = jnp.sum(-0.5 * d * jnp.log(2 * jnp.pi * sigma2) - e_mu_sq / (2 * sigma2))
    log_p_c = -n * jnp.log(jnp.asarray(K, x.dtype))
    sq = jnp.sum(x**2, axis=1)[:, None] - 2 * x @ m.T + e_mu_sq[None, :]       # E||x_i - mu_k||^2
    log_p_x = jnp.sum(phi * (-0.5 * d * LOG_2PI - 0.5 * sq))
    entropy_mu = jnp.sum(0.5 * d * (jnp.log(2 * jnp.pi * s2) + 1))
    entropy_c = -jnp.sum(jnp.where(phi > 0, phi * jnp.log(jnp.where(phi > 0, phi, 1)), 0))
    return log_p_x, -(log_p_mu + log_p_c + entropy_mu + entropy_c)


def _kmeanspp_means(key, x, num_components):
    """k-means++ seeding: the first mean a uniformly drawn data point, each next one a data point
    drawn with probability proportional to its squared distance to the nearest mean so far.
    Points already chosen have distance 0, so the K points are distinct (given distinct data)."""
    n = x.shape[0]
    keys = jax.random.split(key, num_components)
    first = x[jax.random.randint(keys[0], (), 0, n)]
    means = jnp.zeros((num_components, x.shape[1]), x.dtype).at[0].set(first)
    d2 = jnp.sum((x - first) ** 2, axis=1)

    def add(k, carry):
        means, d2 = carry
        logits = jnp.where(d2 > 0, jnp.log(jnp.where(d2 > 0, d2, 1)), -jnp.inf)
        new = x[jax.random.categorical(keys[k], logits)]
        return means.at[k].set(new), jnp.minimum(d2, jnp.sum((x - new) ** 2, axis=1))

    means, _ = jax.lax.fori_loop(1, num_components, add, (means, d2))
    return means


@functools.partial(jax.jit, static_argnames=("num_components", "max_iterations"))
def _cavi_gaussian_mixture(key, x, num_components, prior_sd, max_iterations, tolerance):
    n, d = x.shape
    sigma2 = jnp.asarray(prior_sd, x.dtype) ** 2

    def sweep(state):
        m, s2, _ = state                                      # phi is recomputed first
        # q(c_i): phi_ik ∝ exp{ E[mu_k].x_i - E[mu_k.mu_k]/2 }          (Blei et al. eq. 16)
        logits = x @ m.T - 0.5 * (jnp.sum(m**2, axis=1) + d * s2)[None, :]
        phi = jax.nn.softmax(logits, axis=1)
        # q(mu_k): s2_k = 1/(1/sigma^2 + sum_i phi_ik), m_k = s2_k sum_i phi_ik x_i  (eq. 17)
        s2 = 1.0 / (1.0 / sigma2 + jnp.sum(phi, axis=0))
        m = s2[:, None] * (phi.T @ x)
        return (m, s2, phi), gaussian_mixture_elbo(x, m, s2, phi, prior_sd)

    m0 = _kmeanspp_means(key, x, num_components)
    s20 = jnp.ones((num_components,), x.dtype)
    phi0 = jnp.full((n, num_components), 1.0 / num_components, x.dtype)
    (m, s2, phi), trace, t, converged = _iterate(
        sweep, (m0, s20, phi0), max_iterations, tolerance, x.dtype)
    return m, s2, phi, trace, t, converged


def cavi_gaussian_mixture(key, x, num_components: int, prior_sd: float,
                          max_iterations: int = 500, tolerance: float = 1e-8) -> CaviResult:
    """CAVI for the Bayesian mixture of Gaussians (Blei et al. 2017, Algorithm 2), in d dims.

    Model:  mu_k ~ N(0, sigma^2 I_d), k = 1..K;  c_i ~ Categorical(1/K);
            x_i | c_i, mu ~ N(mu_{c_i}, I_d),    i = 1..n;   sigma = ``prior_sd``.
    Family: q(mu_k) = N(m_k, s2_k I_d),  q(c_i) = Categorical(phi_i).

    One iteration (sweep) is

        phi_ik ∝ exp{ m_k . x_i - (||m_k||^2 + d s2_k) / 2 }     for all i, then
        s2_k = 1 / (1/sigma^2 + sum_i phi_ik),  m_k = s2_k sum_i phi_ik x_i   for all k,

    then the closed-form ELBO (:func:`gaussian_mixture_elbo`). Each update maximises the ELBO in
    its own factor, so ``elbo_trace`` is non-decreasing (up to round-off).

    Initialisation: m_k by k-means++ seeding on the data with ``key`` (K distinct data points,
    spread out), s2_k = 1; the first sweep starts with the phi update, so no phi is needed.

    Args:
        key: a JAX PRNG key (used only for the initialisation).
        x: (n, d) data, or (n,) for d = 1. Computation runs in x's floating dtype.
        num_components: K.
        prior_sd: sigma, the prior sd of each coordinate of each mu_k.
        max_iterations: the largest number of sweeps.
        tolerance: stop when |ELBO_t - ELBO_{t-1}| <= max(tolerance, 10 eps) |ELBO_t|.
    """
    x = _float_array(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise DataError(f"x must have shape (n, d) or (n,), got {x.shape}.")
    if not 1 <= num_components <= x.shape[0]:
        raise SettingsError(
            f"num_components must lie in 1..n (the number of points), got K={num_components}, n={x.shape[0]}.")
    m, s2, phi, trace, t, converged = _cavi_gaussian_mixture(
        key, x, int(num_components), prior_sd, int(max_iterations), tolerance)
    t = int(t)
    trace = np.asarray(trace)[:t]
    return CaviResult(m=np.asarray(m), s2=np.asarray(s2), phi=np.asarray(phi), elbo_trace=trace,
                      elbo=float(trace[-1]), iterations=t, converged=bool(converged))


def log_evidence_gaussian_mixture_by_enumeration(x, num_components: int, prior_sd: float,
                                                 max_assignments: int = 2_000_000) -> float:
    """Exact log p(x) of the mixture of Gaussians, by summing over all K^n assignments.

        p(x) = sum_c K^{-n} prod_k  ∫ N(mu_k; 0, sigma^2 I) prod_{i: c_i = k} N(x_i; mu_k, I) dmu_k.

    Each integral factorises over the d coordinates; in coordinate j the n_k points of
    component k are jointly N(0, I + sigma^2 1 1^T), whose log density, with S = sum_i x_ij and
    Q = sum_i x_ij^2 over those points, is (matrix determinant lemma and Sherman-Morrison)

        -n_k/2 log(2 pi) - 1/2 log(1 + n_k sigma^2) - 1/2 [ Q - sigma^2 S^2 / (1 + n_k sigma^2) ].

    The sum over assignments is a log-sum-exp in float64 numpy. Feasible only for tiny n.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n, d = x.shape
    K = int(num_components)
    if K**n > max_assignments:
        raise SettingsError(f"Enumerating K^n = {K}^{n} assignments is too many; "
                            "exact log p(x) by enumeration is for tiny data sets.")
    sigma2 = float(prior_sd) ** 2
    assignments = np.array(list(itertools.product(range(K), repeat=n)), dtype=np.int64)  # (M, n)
    onehot = (assignments[:, :, None] == np.arange(K)).astype(np.float64)               # (M, n, K)
    n_k = onehot.sum(axis=1)                                                             # (M, K)
    S = np.einsum("mik,ij->mkj", onehot, x)                                              # (M, K, d)
    Q = np.einsum("mik,ij->mkj", onehot, x**2)
    denom = 1.0 + n_k * sigma2
    log_marginal = (-0.5 * n_k * d * LOG_2PI - 0.5 * d * np.log(denom)
                    - 0.5 * np.sum(Q - sigma2 * S**2 / denom[:, :, None], axis=2))       # (M, K)
    log_joint = -n * math.log(K) + log_marginal.sum(axis=1)
    return float(np_logsumexp(log_joint))


def simulate_gaussian_mixture(key, n: int, num_components: int, d: int, prior_sd: float):
    """Draw (x, true_means, assignments) from the mixture's generative process:
    mu_k ~ N(0, prior_sd^2 I_d), c_i ~ Categorical(1/K), x_i ~ N(mu_{c_i}, I_d).

    Returns numpy arrays x (n, d), true_means (K, d), assignments (n,) in the default float dtype
    (float64 inside ``jax.enable_x64(True)``)."""
    k_mu, k_c, k_x = jax.random.split(key, 3)
    means = prior_sd * jax.random.normal(k_mu, (num_components, d))
    c = jax.random.randint(k_c, (n,), 0, num_components)
    x = means[c] + jax.random.normal(k_x, (n, d))
    return np.asarray(x), np.asarray(means), np.asarray(c)


# ----------------------------------------------------------------------------------------------
# Normal-normal: unknown mean, known variance (a single factor: exact in one update)
# ----------------------------------------------------------------------------------------------

class NormalNormalResult(NamedTuple):
    """q(mu) = N(m, s2) after one CAVI update, its ELBO, the exact log p(y), and the gap."""

    m: float
    s2: float
    elbo: float
    log_evidence: float
    gap: float


def cavi_normal_normal(y, sigma: float, prior_mean: float, prior_sd: float) -> NormalNormalResult:
    """CAVI for y_i ~ N(mu, sigma^2) (sigma known), mu ~ N(m0, s0^2), q(mu) = N(m, s2).

    q(mu) is the only factor, so its CAVI update q*(mu) ∝ exp E[log p(mu, y)] = p(mu | y) is the
    exact posterior, reached in one update from any start:

        1/s2 = 1/s0^2 + n/sigma^2,      m = s2 (m0/s0^2 + sum_i y_i / sigma^2).

    ELBO(m, s2) = E[log p(y|mu)] + E[log p(mu)] + H[q] with
        E[log p(y|mu)] = -n/2 log(2 pi sigma^2) - (sum_i (y_i - m)^2 + n s2) / (2 sigma^2)
        E[log p(mu)]   = -1/2 log(2 pi s0^2) - ((m - m0)^2 + s2) / (2 s0^2)
        H[q]           =  1/2 log(2 pi e s2).
    The exact evidence: y ~ N(m0 1, sigma^2 I + s0^2 1 1^T), so with r = y - m0 and
    rho = 1 + n s0^2/sigma^2,
        log p(y) = -n/2 log(2 pi sigma^2) - 1/2 log rho
                   - [ sum r_i^2 - (s0^2/sigma^2) (sum r_i)^2 / rho ] / (2 sigma^2).
    At the optimum KL(q || p(mu|y)) = 0, so ``gap = log_evidence - elbo`` is 0 up to round-off.
    Computed in float64 numpy (closed form, no iteration).
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    n = y.size
    sigma2, s02, m0 = float(sigma) ** 2, float(prior_sd) ** 2, float(prior_mean)
    s2 = 1.0 / (1.0 / s02 + n / sigma2)
    m = s2 * (m0 / s02 + y.sum() / sigma2)
    e_loglik = -0.5 * n * math.log(2 * math.pi * sigma2) - (np.sum((y - m) ** 2) + n * s2) / (2 * sigma2)
    e_logprior = -0.5 * math.log(2 * math.pi * s02) - ((m - m0) ** 2 + s2) / (2 * s02)
    entropy = 0.5 * math.log(2 * math.pi * math.e * s2)
    elbo = float(e_loglik + e_logprior + entropy)
    r = y - m0
    rho = 1.0 + n * s02 / sigma2
    log_evidence = float(-0.5 * n * math.log(2 * math.pi * sigma2) - 0.5 * math.log(rho)
                         - (np.sum(r**2) - (s02 / sigma2) * r.sum() ** 2 / rho) / (2 * sigma2))
    return NormalNormalResult(m=float(m), s2=float(s2), elbo=elbo, log_evidence=log_evidence,
                              gap=log_evidence - elbo)


# ----------------------------------------------------------------------------------------------
# Normal-gamma: unknown mean and precision (Bishop 2006, PRML Section 10.1.3)
# ----------------------------------------------------------------------------------------------

class NormalGammaResult(NamedTuple):
    """CAVI fit of q(mu) q(tau) = N(mu | mu_n, 1/lambda_n) Gamma(tau | a_n, b_n) (rate b_n).

    ``log_evidence`` is the exact log p(y) of the Normal-Gamma model, ``gap = log_evidence - elbo``
    (= KL(q || posterior) > 0)."""

    mu_n: float
    lambda_n: float
    a_n: float
    b_n: float
    elbo_trace: np.ndarray
    elbo: float
    log_evidence: float
    gap: float
    iterations: int
    converged: bool


def normal_gamma_elbo(y, mu0, lambda0, a0, b0, mu_n, lambda_n, a_n, b_n):
    """Closed-form ELBO of y_i ~ N(mu, 1/tau), mu | tau ~ N(mu0, 1/(lambda0 tau)),
    tau ~ Gamma(a0, rate b0), for q(mu) = N(mu_n, 1/lambda_n), q(tau) = Gamma(a_n, rate b_n).

    With E[tau] = a_n/b_n, E[log tau] = psi(a_n) - log b_n, and
    E_mu[sum_i (y_i - mu)^2] = sum_i (y_i - mu_n)^2 + n/lambda_n,
    E_mu[(mu - mu0)^2] = (mu_n - mu0)^2 + 1/lambda_n:

        E[log p(y|mu,tau)] = n/2 E[log tau] - n/2 log(2 pi) - E[tau]/2 E_mu[sum (y_i - mu)^2]
        E[log p(mu|tau)]   = 1/2 log(lambda0/(2 pi)) + 1/2 E[log tau]
                             - lambda0 E[tau]/2 E_mu[(mu - mu0)^2]
        E[log p(tau)]      = a0 log b0 - lgamma(a0) + (a0 - 1) E[log tau] - b0 E[tau]
        H[q(mu)]           = 1/2 log(2 pi e / lambda_n)
        H[q(tau)]          = a_n - log b_n + lgamma(a_n) + (1 - a_n) psi(a_n).
    """
    expected_log_likelihood, kl_to_prior = normal_gamma_elbo_parts(y, mu0, lambda0, a0, b0, mu_n, lambda_n, a_n, b_n)
    return expected_log_likelihood - kl_to_prior


def normal_gamma_elbo_parts(y, mu0, lambda0, a0, b0, mu_n, lambda_n, a_n, b_n):
    """Form (b) of :func:`normal_gamma_elbo`: (E[log p(y | mu, tau)], KL(q(mu, tau) || p(mu, tau)))."""
    n = y.shape[0]
    e_tau = a_n / b_n
    e_log_tau = digamma(a_n) - jnp.log(b_n)
    e_sq_data = jnp.sum((y - mu_n) ** 2) + n / lambda_n
    e_sq_prior = (mu_n - mu0) ** 2 + 1.0 / lambda_n
    e_loglik = 0.5 * n * e_log_tau - 0.5 * n * LOG_2PI - 0.5 * e_tau * e_sq_data
    e_log_p_mu = 0.5 * jnp.log(lambda0) - 0.5 * LOG_2PI + 0.5 * e_log_tau - 0.5 * lambda0 * e_tau * e_sq_prior
    e_log_p_tau = a0 * jnp.log(b0) - gammaln(a0) + (a0 - 1) * e_log_tau - b0 * e_tau
    h_mu = 0.5 * (LOG_2PI + 1 - jnp.log(lambda_n))
    h_tau = a_n - jnp.log(b_n) + gammaln(a_n) + (1 - a_n) * digamma(a_n)
    return e_loglik, -(e_log_p_mu + e_log_p_tau + h_mu + h_tau)


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def _cavi_normal_gamma(y, mu0, lambda0, a0, b0, max_iterations, tolerance):
    n = y.shape[0]
    dtype = y.dtype
    mu0, lambda0, a0, b0 = (jnp.asarray(v, dtype) for v in (mu0, lambda0, a0, b0))
    mu_n = (lambda0 * mu0 + jnp.sum(y)) / (lambda0 + n)      # the same at every iteration
    a_n = a0 + 0.5 * (n + 1)                                  # the same after the first update

    def sweep(state):
        _, _, a, b = state
        lambda_n = (lambda0 + n) * a / b                       # q(mu) given E[tau] = a/b
        e_sq = jnp.sum((y - mu_n) ** 2) + n / lambda_n + lambda0 * ((mu_n - mu0) ** 2 + 1 / lambda_n)
        b_new = b0 + 0.5 * e_sq                                # q(tau) given q(mu)
        state = (mu_n, lambda_n, a_n, b_new)
        return state, normal_gamma_elbo(y, mu0, lambda0, a0, b0, *state)

    state0 = (mu_n, lambda0, a0, b0)                           # q(tau) starts at the prior
    return _iterate(sweep, state0, max_iterations, tolerance, dtype)


def cavi_normal_gamma(y, mu0: float, lambda0: float, a0: float, b0: float,
                      max_iterations: int = 500, tolerance: float = 1e-12) -> NormalGammaResult:
    """CAVI for the Normal with unknown mean and precision (Bishop 2006, PRML Section 10.1.3).

    Model:  y_i ~ N(mu, 1/tau), mu | tau ~ N(mu0, 1/(lambda0 tau)), tau ~ Gamma(a0, rate b0).
    Family: q(mu) q(tau) = N(mu | mu_n, 1/lambda_n) Gamma(tau | a_n, b_n)   (mean field).

    Updates (PRML eqs. 10.26-10.27, 10.29-10.30):
        mu_n     = (lambda0 mu0 + n ybar) / (lambda0 + n)
        lambda_n = (lambda0 + n) E[tau],                  E[tau] = a_n / b_n
        a_n      = a0 + (n + 1)/2
        b_n      = b0 + 1/2 E_mu[ sum_i (y_i - mu)^2 + lambda0 (mu - mu0)^2 ].
    Initialisation: q(tau) = the prior Gamma(a0, b0); each iteration updates q(mu) then q(tau)
    and evaluates :func:`normal_gamma_elbo`. The exact log evidence
    (:func:`normal_gamma_log_evidence`) is returned for comparison: the true posterior couples
    mu and tau (Var[mu | tau] ∝ 1/tau), which q(mu) q(tau) cannot represent, so the ELBO stays
    strictly below log p(y).

    Runs in the floating dtype of ``y`` (float64 inside ``jax.enable_x64(True)``).
    """
    y = _float_array(y).ravel()
    state, trace, t, converged = _cavi_normal_gamma(y, mu0, lambda0, a0, b0, int(max_iterations),
                                                    tolerance)
    t = int(t)
    trace = np.asarray(trace)[:t]
    mu_n, lambda_n, a_n, b_n = (float(v) for v in state)
    log_evidence = normal_gamma_log_evidence(np.asarray(y), mu0, lambda0, a0, b0)
    return NormalGammaResult(mu_n=mu_n, lambda_n=lambda_n, a_n=a_n, b_n=b_n, elbo_trace=trace,
                             elbo=float(trace[-1]), log_evidence=log_evidence,
                             gap=log_evidence - float(trace[-1]), iterations=t,
                             converged=bool(converged))
