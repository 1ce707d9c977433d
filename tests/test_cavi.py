"""CAVI (Blei, Kucukelbir & McAuliffe 2017) for conditionally conjugate models: elbox.vi.cavi.

What is checked, and against what (never against the module's own formulas where avoidable):

* mixture of Gaussians: the closed-form ELBO trace never decreases (CAVI's defining property);
  the fitted q(mu_k) recover simulated component means; on a tiny data set the final ELBO is
  below the exact log evidence by enumeration, the enumeration itself agrees with a dense
  multivariate-normal computation in scipy, and the closed-form ELBO agrees with a Monte Carlo
  estimate of E_q[log p(x, c, mu) - log q(c, mu)] written independently here in numpy/scipy
  (at the CAVI optimum and at an arbitrary q, where every term of the bound is exercised);
* normal-normal: one update gives the exact posterior (checked through Bayes' rule) and the gap
  log p(y) - ELBO is 0;
* normal-gamma: the ELBO increases monotonically, stays strictly below the exact log evidence
  (checked by 2-D quadrature), and matches Monte Carlo.

All runs are in float64, with ``jax.enable_x64(True)`` as a local context manager (JAX 0.10 has
no ``jax.experimental.enable_x64``).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from elbox.vi import cavi

# Monte Carlo checks pass when |closed form - MC mean| < 4 standard errors of the MC mean.
NUM_SE = 4.0


# ----------------------------------------------------------------------------------------------
# Independent numpy/scipy reference for the mixture's log p(x, c, mu) and log q(c, mu)
# ----------------------------------------------------------------------------------------------

def _mixture_log_joint_minus_log_q(x, m, s2, phi, prior_sd, mu, c):
    """f = log p(x, c, mu) - log q(c, mu) for draws mu (S, K, d), c (S, n)."""
    S, K, d = mu.shape
    n = x.shape[0]
    log_p_mu = stats.norm.logpdf(mu, 0.0, prior_sd).sum(axis=(1, 2))
    log_p_c = -n * math.log(K)
    mu_c = np.take_along_axis(mu, c[:, :, None], axis=1)                    # (S, n, d)
    log_p_x = stats.norm.logpdf(x[None], mu_c, 1.0).sum(axis=(1, 2))
    log_q_mu = stats.norm.logpdf(mu, m[None], np.sqrt(s2)[None, :, None]).sum(axis=(1, 2))
    log_q_c = np.log(phi[np.arange(n)[None, :], c]).sum(axis=1)
    return log_p_mu + log_p_c + log_p_x - log_q_mu - log_q_c


def _mixture_mc_elbo(x, m, s2, phi, prior_sd, num_draws, seed):
    rng = np.random.default_rng(seed)
    K, d = m.shape
    mu = m[None] + np.sqrt(s2)[None, :, None] * rng.standard_normal((num_draws, K, d))
    u = rng.random((num_draws, x.shape[0], 1))
    c = (u > np.cumsum(phi, axis=1)[None]).sum(axis=2)                      # inverse-cdf draws
    c = np.minimum(c, K - 1)
    f = _mixture_log_joint_minus_log_q(x, m, s2, phi, prior_sd, mu, c)
    return f.mean(), f.std(ddof=1) / math.sqrt(num_draws)


def _dense_log_evidence(x, K, prior_sd):
    """log p(x) by brute force: for each assignment c, vec(x) ~ N(0, I + sigma^2 (A A^T) ⊗ I_d)
    with A the n x K one-hot matrix of c (scipy multivariate normal, no sufficient statistics)."""
    n, d = x.shape
    terms = []
    for c in itertools.product(range(K), repeat=n):
        A = np.eye(K)[list(c)]
        cov = np.eye(n * d) + prior_sd**2 * np.kron(A @ A.T, np.eye(d))
        terms.append(-n * math.log(K) + stats.multivariate_normal.logpdf(x.ravel(), cov=cov))
    return logsumexp(terms)


# ----------------------------------------------------------------------------------------------
# Mixture of Gaussians
# ----------------------------------------------------------------------------------------------

def test_mixture_elbo_never_decreases():
    # Overlapping components (prior_sd = 2, K = 4) so CAVI takes many iterations.
    with jax.enable_x64(True):
        x, _, _ = cavi.simulate_gaussian_mixture(jax.random.key(3), 300, 4, 2, 2.0)
        assert x.dtype == np.float64
        longest = 0
        for seed in range(3):
            res = cavi.cavi_gaussian_mixture(jax.random.key(seed), x, 4, 2.0,
                                             max_iterations=500, tolerance=1e-10)
            trace = res.elbo_trace
            assert trace.shape == (res.iterations,) and np.all(np.isfinite(trace))
            assert res.elbo == trace[-1]
            # float64 round-off in a sum of n K terms is ~1e-13 relative; 1e-10 leaves room.
            assert np.all(np.diff(trace) >= -1e-10 * np.abs(trace[1:])), np.diff(trace).min()
            assert np.allclose(res.phi.sum(axis=1), 1.0)
            longest = max(longest, res.iterations)
        assert longest >= 20, longest  # the monotonicity check covered a long run


def test_mixture_recovers_components():
    K, d, n, prior_sd = 3, 2, 500, 5.0
    with jax.enable_x64(True):
        x, true_means, labels = cavi.simulate_gaussian_mixture(jax.random.key(0), n, K, d, prior_sd)
        dists = [np.linalg.norm(a - b) for a, b in itertools.combinations(true_means, 2)]
        assert min(dists) > 6.0  # precondition: well separated (misclassification ~ Phi(-3))
        res = cavi.cavi_gaussian_mixture(jax.random.key(1), x, K, prior_sd)
    assert res.converged
    # Match fitted components to true ones by the best permutation.
    perm = min(itertools.permutations(range(K)),
               key=lambda p: np.sum((res.m[list(p)] - true_means) ** 2))
    m = res.m[list(perm)]
    counts = np.bincount(labels, minlength=K)
    # Tolerance: given the assignments, the posterior of mu_k is N(., I / (n_k + 1/sigma^2)),
    # and the true mu_k is a draw from it, so each coordinate of m_k - mu_k has sd about
    # 1/sqrt(n_k) (~0.08 here). Allow 4 such sds per coordinate (6 coordinates: a false alarm
    # has probability ~4e-4 for a correct fit).
    posterior_sd = 1.0 / np.sqrt(counts + 1.0 / prior_sd**2)
    err = np.abs(m - true_means)
    assert np.all(err < 4.0 * posterior_sd[:, None]), (err, posterior_sd)
    # q's own sd agrees with that posterior sd (the assignments are nearly certain here).
    np.testing.assert_allclose(np.sqrt(res.s2[list(perm)]), posterior_sd, rtol=0.05)
    # Assignments: argmax phi, relabelled, matches the truth except for rare boundary points.
    inverse = np.argsort(perm)
    accuracy = np.mean(inverse[res.phi.argmax(axis=1)] == labels)
    assert accuracy > 0.98, accuracy


def test_enumeration_matches_dense_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2)) * 2.0
    for K in (2, 3):
        np.testing.assert_allclose(cavi.log_evidence_gaussian_mixture_by_enumeration(x, K, 1.7),
                                   _dense_log_evidence(x, K, 1.7), rtol=1e-12)
    # n = 1: x ~ N(0, (1 + sigma^2) I) whatever K is.
    np.testing.assert_allclose(
        cavi.log_evidence_gaussian_mixture_by_enumeration(x[:1], 3, 1.7),
        stats.multivariate_normal.logpdf(x[0], cov=(1 + 1.7**2) * np.eye(2)), rtol=1e-12)


# Separated (q(c) one-hot at the optimum), overlapping (one point at phi ~ 0.5) and K = 3.
@pytest.mark.parametrize("n,K,d,prior_sd,seed", [(7, 2, 2, 3.0, 2), (8, 2, 2, 1.5, 4),
                                                 (6, 3, 1, 2.0, 5)])
def test_mixture_tiny_elbo_below_evidence_and_matches_monte_carlo(n, K, d, prior_sd, seed):
    with jax.enable_x64(True):
        x, _, _ = cavi.simulate_gaussian_mixture(jax.random.key(seed), n, K, d, prior_sd)
        res = cavi.cavi_gaussian_mixture(jax.random.key(0), x, K, prior_sd)
        log_evidence = cavi.log_evidence_gaussian_mixture_by_enumeration(x, K, prior_sd)
        assert res.converged
        assert np.all(np.diff(res.elbo_trace) >= -1e-10 * np.abs(res.elbo_trace[1:]))
        assert res.elbo < log_evidence, (res.elbo, log_evidence)

        # The closed form against Monte Carlo at the CAVI optimum ...
        mc, se = _mixture_mc_elbo(x, res.m, res.s2, res.phi, prior_sd, 40_000, seed=1)
        assert abs(res.elbo - mc) < NUM_SE * se, (res.elbo, mc, se)

        # ... and at an arbitrary q, where phi is far from one-hot and s2 is not the CAVI value.
        rng = np.random.default_rng(7)
        m = rng.normal(size=(K, d)) * 2.0
        s2 = rng.uniform(0.2, 2.0, size=K)
        phi = rng.dirichlet(np.ones(K), size=n)
        closed = float(cavi.gaussian_mixture_elbo(np.asarray(x), m, s2, phi, prior_sd))
        mc, se = _mixture_mc_elbo(x, m, s2, phi, prior_sd, 40_000, seed=2)
        assert abs(closed - mc) < NUM_SE * se, (closed, mc, se)
        assert closed < res.elbo  # CAVI's optimum beats an arbitrary q

        # A CAVI fixed point is a stationary point of the closed-form ELBO: its gradient in
        # (m, log s2, logits of phi), by autodiff, vanishes. This ties the updates to the bound
        # (a wrong update, e.g. phi without the d s2 / 2 term, leaves a gradient ~0.1).
        res = cavi.cavi_gaussian_mixture(jax.random.key(0), x, K, prior_sd,
                                         max_iterations=5000, tolerance=0.0)

        def elbo_of(params):
            m, log_s2, logits = params
            return cavi.gaussian_mixture_elbo(jnp.asarray(x), m, jnp.exp(log_s2),
                                              jax.nn.softmax(logits, axis=1), prior_sd)

        grads = jax.grad(elbo_of)((jnp.asarray(res.m), jnp.log(res.s2),
                                   jnp.log(jnp.clip(res.phi, 1e-300))))
        assert max(float(jnp.abs(g).max()) for g in grads) < 1e-6, grads


# ----------------------------------------------------------------------------------------------
# Normal-normal (one factor: exact)
# ----------------------------------------------------------------------------------------------

def test_normal_normal_gap_is_zero_and_q_is_the_posterior():
    y = np.random.default_rng(1).normal(1.5, 2.0, size=20)
    sigma, m0, s0 = 2.0, -1.0, 3.0
    res = cavi.cavi_normal_normal(y, sigma, m0, s0)
    # The evidence, densely: y ~ N(m0 1, sigma^2 I + s0^2 1 1^T).
    dense = stats.multivariate_normal.logpdf(y, mean=np.full(y.size, m0),
                                             cov=sigma**2 * np.eye(y.size) + s0**2)
    np.testing.assert_allclose(res.log_evidence, dense, rtol=1e-12)
    assert abs(res.gap) < 1e-12 * abs(res.log_evidence), res.gap
    assert abs(res.log_evidence - res.elbo - res.gap) < 1e-12
    # q is the posterior: by Bayes' rule log p(y | mu) + log p(mu) - log q(mu) must equal
    # log p(y) at every mu, which holds only if q(mu) = p(mu | y).
    for mu in (-3.0, 0.0, res.m, 2.5):
        value = (stats.norm.logpdf(y, mu, sigma).sum() + stats.norm.logpdf(mu, m0, s0)
                 - stats.norm.logpdf(mu, res.m, math.sqrt(res.s2)))
        np.testing.assert_allclose(value, res.log_evidence, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Normal-gamma (two factors: a strict gap)
# ----------------------------------------------------------------------------------------------

NG = dict(mu0=0.5, lambda0=2.0, a0=3.0, b0=2.0)


def _normal_gamma_log_joint(y, mu, tau, mu0, lambda0, a0, b0):
    """log p(y, mu, tau) on broadcast arrays mu, tau (numpy/scipy, via sufficient statistics)."""
    n, ybar = y.size, y.mean()
    ss = np.sum((y - ybar) ** 2) + n * (ybar - mu) ** 2                 # sum_i (y_i - mu)^2
    log_lik = 0.5 * n * np.log(tau) - 0.5 * n * math.log(2 * math.pi) - 0.5 * tau * ss
    log_p_mu = stats.norm.logpdf(mu, mu0, 1.0 / np.sqrt(lambda0 * tau))
    log_p_tau = stats.gamma.logpdf(tau, a0, scale=1.0 / b0)
    return log_lik + log_p_mu + log_p_tau


def _normal_gamma_quadrature_log_evidence(y, mu0, lambda0, a0, b0):
    """log ∫∫ p(y, mu, tau) dmu dtau by the trapezoid rule on a fine (mu, log tau) grid."""
    mu = np.linspace(y.mean() - 6.0, y.mean() + 6.0, 1601)
    log_tau = np.linspace(-8.0, 4.0, 1601)
    M, LT = np.meshgrid(mu, log_tau, indexing="ij")
    log_f = _normal_gamma_log_joint(y, M, np.exp(LT), mu0, lambda0, a0, b0) + LT  # dtau = tau dlog tau
    top = log_f.max()
    integral = np.trapezoid(np.trapezoid(np.exp(log_f - top), log_tau, axis=1), mu)
    return top + math.log(integral)


def test_normal_gamma_monotone_below_evidence_and_matches_monte_carlo():
    y = np.random.default_rng(2).normal(1.0, 1.5, size=12)
    with jax.enable_x64(True):
        res = cavi.cavi_normal_gamma(y, **NG)
    trace = res.elbo_trace
    assert res.converged and res.iterations >= 3
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:])), np.diff(trace)
    assert trace[-1] > trace[0]

    # The exact log evidence against quadrature, then the strict mean-field gap.
    np.testing.assert_allclose(res.log_evidence, _normal_gamma_quadrature_log_evidence(y, **NG),
                               rtol=1e-8)
    assert res.elbo < res.log_evidence and res.gap > 1e-3, res.gap

    # Closed-form ELBO against Monte Carlo: at the CAVI optimum and at q(tau) = prior.
    rng = np.random.default_rng(3)
    S = 200_000
    for mu_n, lambda_n, a_n, b_n in [(res.mu_n, res.lambda_n, res.a_n, res.b_n),
                                     (res.mu_n, 1.0, NG["a0"], NG["b0"])]:
        tau = rng.gamma(a_n, 1.0 / b_n, size=S)
        mu = rng.normal(mu_n, 1.0 / math.sqrt(lambda_n), size=S)
        f = (_normal_gamma_log_joint(y, mu, tau, **NG)
             - stats.norm.logpdf(mu, mu_n, 1.0 / math.sqrt(lambda_n))
             - stats.gamma.logpdf(tau, a_n, scale=1.0 / b_n))
        mc, se = f.mean(), f.std(ddof=1) / math.sqrt(S)
        with jax.enable_x64(True):
            closed = float(cavi.normal_gamma_elbo(y, NG["mu0"], NG["lambda0"], NG["a0"], NG["b0"],
                                                  mu_n, lambda_n, a_n, b_n))
        assert abs(closed - mc) < NUM_SE * se, (closed, mc, se)
    # The fixed point is a stationary point of the closed-form ELBO in (mu_n, log lambda_n,
    # log a_n, log b_n): checks the updates against the bound (by autodiff).
    with jax.enable_x64(True):
        def elbo_of(params):
            mu_n, log_lambda_n, log_a_n, log_b_n = params
            return cavi.normal_gamma_elbo(jnp.asarray(y), NG["mu0"], NG["lambda0"], NG["a0"],
                                          NG["b0"], mu_n, jnp.exp(log_lambda_n),
                                          jnp.exp(log_a_n), jnp.exp(log_b_n))

        grads = jax.grad(elbo_of)(tuple(jnp.asarray(v) for v in (
            res.mu_n, math.log(res.lambda_n), math.log(res.a_n), math.log(res.b_n))))
        assert max(abs(float(g)) for g in grads) < 1e-6, grads

    # The reported ELBO is the closed form at the reported q.
    with jax.enable_x64(True):
        at_fit = float(cavi.normal_gamma_elbo(y, NG["mu0"], NG["lambda0"], NG["a0"], NG["b0"],
                                              res.mu_n, res.lambda_n, res.a_n, res.b_n))
    np.testing.assert_allclose(res.elbo, at_fit, rtol=1e-12)
