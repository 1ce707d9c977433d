"""Variational inference: the bound against exact evidences, both ELBO forms, the gradient
estimators, determinism and errors.

Tolerances come from Monte Carlo standard errors (Z below); the gap KL(q || p(z | x)) is
positive by construction, so "ELBO within its standard error of log p(x)" is tested as
|log p(x) - ELBO| <= Z * stderr.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Z  # the z-threshold of the statistical tests

import elbox
from elbox.errors import FittingError, NoPriorLikelihoodSplit
from elbox.models.conjugate import linear_regression_data, linear_regression_posterior_covariance
from elbox.vi.elbo import gaussian_kl, loglik_minus_kl, surrogate_loss
from elbox.vi.families import FullRank, MeanField


@pytest.mark.parametrize("name", ["normal_normal", "linear_regression", "beta_binomial"])
def test_fullrank_reaches_the_exact_posterior(name):
    results = elbox.fit(name, jax.random.key(0), method="fullrank", steps=10_000, progress=False)
    gap = results.gap
    assert gap.value < 0.01
    assert abs(gap.value) <= Z * gap.stderr, gap
    known = results.model.known
    table = results.parameter_table()
    for label, mean in known.posterior_mean.items():
        # q's draws: 4000 of them, so the mean is within Z * sd / sqrt(4000) of q's mean.
        sd = known.posterior_sd[label]
        assert abs(table[label]["mean"] - mean) < Z * sd / np.sqrt(4000) + 0.01 * sd, label
        assert abs(table[label]["sd"] / sd - 1) < 0.05, label


def test_meanfield_gap_is_the_kl_to_the_exact_posterior():
    """log p(x) - ELBO(q) = KL(q || posterior) for any q; with a correlated Gaussian posterior
    the mean-field optimum has a strictly positive gap, computed here in closed form."""
    results = elbox.fit("linear_regression", jax.random.key(1), method="meanfield", steps=10_000, progress=False)
    X, y, noise_sd, prior_sd = linear_regression_data()
    posterior_cov = linear_regression_posterior_covariance(X, noise_sd, prior_sd)
    posterior_mean = np.array([results.model.known.posterior_mean[f"w[{i}]"] for i in range(3)])
    q_mean, q_cov = results.family.gaussian(results.params)
    kl = gaussian_kl(q_mean, q_cov, posterior_mean, posterior_cov)
    gap = results.gap
    assert gap.value > Z * gap.stderr  # strictly positive
    assert abs(gap.value - kl) < Z * gap.stderr, (gap, kl)


KNOWN_EVIDENCE = ["normal_normal", "linear_regression", "beta_binomial", "normal_gamma", "funnel", "gaussian_100d"]


@pytest.mark.parametrize("method", ["meanfield", "fullrank"])
@pytest.mark.parametrize("name", KNOWN_EVIDENCE)
def test_elbo_below_evidence_and_forms_agree(name, method):
    results = elbox.fit(name, jax.random.key(2), method=method, steps=2000, progress=False)
    report = results.report
    evidence = results.model.known.log_evidence
    assert report.elbo.value <= evidence + Z * report.elbo.stderr
    for form in (report.joint_minus_entropy, report.loglik_minus_kl):
        assert form.value <= evidence + Z * form.stderr
    a, b = report.joint_minus_entropy, report.loglik_minus_kl
    assert abs(a.value - b.value) <= Z * np.hypot(a.stderr, b.stderr)
    assert abs(a.value - report.elbo.value) <= Z * np.hypot(a.stderr, report.elbo.stderr)


def test_flow_bound_on_known_evidence():
    results = elbox.fit("beta_binomial", jax.random.key(3), method="flow", steps=1500, progress=False)
    report = results.report
    assert report.elbo.value <= results.model.known.log_evidence + Z * report.elbo.stderr
    a, b = report.joint_minus_entropy, report.loglik_minus_kl
    assert abs(a.value - b.value) <= Z * np.hypot(a.stderr, b.stderr)
    assert report.kl_method == "monte carlo"


# -- gradient estimators --------------------------------------------------------------------------
def gradient_draws(estimator, model, family, params, keys, num_samples, control_variate=True):
    loss = surrogate_loss(estimator, model.flat_log_joint, family, num_samples, control_variate)
    grad = jax.jit(jax.vmap(lambda k: jax.grad(lambda p: loss(p, k)[0])(params)))
    g = grad(keys)
    return np.concatenate([np.asarray(g["loc"]), np.asarray(g["log_scale"])], axis=1)


def test_score_function_and_reparameterisation_agree_and_control_variate_helps():
    model = elbox.models.get("linear_regression")
    family = MeanField(model.dimension)
    params = {"loc": jnp.array([0.8, -1.5, 0.2]), "log_scale": jnp.log(jnp.array([0.3, 0.2, 0.25]))}
    keys = jax.random.split(jax.random.key(4), 4000)
    reparam = gradient_draws("reparam", model, family, params, keys, num_samples=8)
    score = gradient_draws("score", model, family, params, keys, num_samples=8)
    plain = gradient_draws("score", model, family, params, keys, num_samples=8, control_variate=False)
    stderr = np.sqrt(reparam.var(0) / len(keys) + score.var(0) / len(keys))
    z = (reparam.mean(0) - score.mean(0)) / stderr
    assert np.all(np.abs(z) < Z), z
    # The gradient is far from zero here, so agreement is not trivial.
    assert np.all(np.abs(reparam.mean(0)) > 10 * reparam.std(0) / np.sqrt(len(keys)))
    # The leave-one-out baseline lowers the variance of every coordinate, by a wide margin.
    ratio = score.var(0) / plain.var(0)
    assert np.all(ratio < 0.5), ratio


# -- determinism and errors -------------------------------------------------------------------------
def test_same_key_same_fit():
    first = elbox.fit("eight_schools", jax.random.key(5), method="meanfield", steps=300, progress=False)
    second = elbox.fit("eight_schools", jax.random.key(5), method="meanfield", steps=300, progress=False)
    np.testing.assert_array_equal(first.params["loc"], second.params["loc"])
    np.testing.assert_array_equal(first.trace, second.trace)
    assert first.report.elbo == second.report.elbo


def test_non_finite_elbo_names_the_step_and_a_remedy():
    with pytest.raises(FittingError, match=r"non-finite at step \d+.*smaller learning rate"):
        elbox.fit("eight_schools", jax.random.key(6), method="meanfield", steps=2000,
                  learning_rate=1e6, progress=False)


def test_form_b_needs_a_prior_likelihood_split():
    base = elbox.models.get("normal_normal")
    lone = elbox.Model.from_log_density(base.log_joint, base.init_position, name="lone")
    results = elbox.fit(lone, jax.random.key(7), method="fullrank", steps=1000, progress=False)
    assert results.report.loglik_minus_kl is None
    # The single-density model has the same ELBO as the split one, within error.
    assert abs(results.elbo.value - base.known.log_evidence) < 0.01
    with pytest.raises(NoPriorLikelihoodSplit, match="from_numpyro"):
        loglik_minus_kl(jax.random.key(0), lone, FullRank(1), results.params)


def test_q_starts_near_a_posterior_far_from_the_drawn_start():
    """gaussian_evidence_100d's posterior means lie up to 300 prior units from the drawn start,
    with sds down to 0.01: Adam alone cannot travel there. The mean-field posterior is exact for
    this model, so from the start on the L-BFGS path the fit closes the gap to within 0.5 nats."""
    results = elbox.fit("gaussian_evidence_100d", jax.random.key(0), method="meanfield", progress=False)
    gap = results.gap
    assert -Z * gap.stderr <= gap.value < 0.5, gap


def test_the_start_stops_at_the_mouth_of_a_funnel():
    """On centred eight schools log p grows without bound into the funnel's neck; the start is
    chosen by q's ELBO, which falls there, so it stays at the mouth: log τ is not driven down."""
    from elbox.initialization import initial_positions
    from elbox.vi.start import best_start

    model = elbox.models.get("eight_schools_centered")
    drawn, _ = initial_positions(model, jax.random.key(0), 1)
    start = best_start(model, jax.random.key(1), drawn[0])
    log_tau = float(model.unravel(start)["tau"])
    assert log_tau > -3.0, log_tau
    assert float(model.flat_log_joint(start)) > float(model.flat_log_joint(drawn[0]))


def test_curvature_by_differences_of_the_gradient_matches_the_hessian():
    """The start's preconditioner: |diag H| by central differences of the gradient, against the
    Hessian by automatic differentiation, on logistic regression in the model's own float32
    (its steps of about 1e-2 keep float32 rounding and the third derivatives small)."""
    from elbox.vi.start import curvature_diagonal

    model = elbox.models.get("logistic_regression")
    u = model.ravel(model.init_position) + 0.3
    exact = np.abs(np.diag(np.asarray(jax.hessian(model.flat_log_joint)(u), dtype=np.float64)))
    by_differences = np.asarray(curvature_diagonal(model.flat_log_joint, u), dtype=np.float64)
    np.testing.assert_allclose(by_differences, exact, rtol=1e-2)
