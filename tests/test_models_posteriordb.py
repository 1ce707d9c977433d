"""The posteriordb models (and the logistic regression) against independent computations.

* Deterministic: the log joint, log prior and log likelihood at a fixed point, mapped with
  ``model.unconstrain``, against the same densities written with scipy.stats, including the
  log-Jacobian of the map to the unconstrained space. JAX runs in float32, hence rtol 1e-4.
* Statistical (``slow``): NumPyro's own NUTS on the same model functions must reproduce the
  posteriordb reference means within 5 Monte Carlo standard errors (ref sd / sqrt(ESS)).
"""

from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from elbox import models
from elbox.models import load_data, logistic, posteriordb

RTOL = 1e-4

ALL = list(posteriordb.NAMES)


def _point(model, z):
    """``u`` for the constrained point ``z``, and the constrained values the model sees at ``u``
    (float64 numpy), so the scipy side is evaluated exactly where the model is."""
    z = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in z.items()}
    u = model.unconstrain(z)
    back = {k: np.asarray(v, dtype=np.float64) for k, v in model.constrain(u).items()}
    for k in z:  # the round trip itself must be accurate
        np.testing.assert_allclose(back[k], np.asarray(z[k]), rtol=1e-4, atol=1e-5)
    return u, back


def _check(model, u, expected_prior, expected_likelihood):
    got_prior = float(model.log_prior(u))
    got_lik = float(model.log_likelihood(u))
    got_joint = float(model.log_joint(u))
    assert got_prior == pytest.approx(expected_prior, rel=RTOL)
    assert got_lik == pytest.approx(expected_likelihood, rel=RTOL)
    assert got_joint == pytest.approx(expected_prior + expected_likelihood, rel=RTOL)


def _halfcauchy(x, scale):
    return stats.halfcauchy.logpdf(x, scale=scale)


def _logit_jacobian(x, low, high):
    """log |dx/du| for x = low + (high - low) * sigmoid(u)."""
    return np.log(x - low) + np.log(high - x) - np.log(high - low)


# -- (a) deterministic -------------------------------------------------------------------------
def test_eight_schools_noncentered_log_joint():
    model = models.get("eight_schools-eight_schools_noncentered")
    data = load_data("eight_schools.json")
    z = {
        "theta_trans": [0.3, -0.2, 1.1, -1.4, 0.05, 0.7, -0.6, 2.0],
        "mu": 3.7,
        "tau": 2.6,
    }
    u, z = _point(model, z)
    prior = (
        stats.norm.logpdf(z["theta_trans"], 0, 1).sum()
        + stats.norm.logpdf(z["mu"], 0, 5)
        + _halfcauchy(z["tau"], 5)
        + np.log(z["tau"])  # tau = exp(u)
    )
    theta = z["mu"] + z["tau"] * z["theta_trans"]
    lik = stats.norm.logpdf(data["y"], theta, data["sigma"]).sum()
    _check(model, u, prior, lik)
    # theta is reported as a deterministic site
    np.testing.assert_allclose(z["theta"], theta, rtol=1e-5)


def test_kidiq_log_joint():
    model = models.get("kidiq-kidscore_momiq")
    data = load_data("kidiq.json")
    u, z = _point(model, {"beta": [24.0, 0.62], "sigma": 18.5})
    prior = 0.0 + _halfcauchy(z["sigma"], 2.5) + np.log(z["sigma"])  # flat beta
    mean = z["beta"][0] + z["beta"][1] * np.asarray(data["mom_iq"])
    lik = stats.norm.logpdf(data["kid_score"], mean, z["sigma"]).sum()
    _check(model, u, prior, lik)
    assert not model.prior_is_proper


def test_arK_log_joint():
    model = models.get("arK-arK")
    data = load_data("arK.json")
    K, T, y = data["K"], data["T"], np.asarray(data["y"])
    u, z = _point(model, {"alpha": 0.01, "beta": [0.7, 0.4, 0.1, -0.05, -0.3], "sigma": 0.16})
    prior = (
        stats.norm.logpdf(z["alpha"], 0, 10)
        + stats.norm.logpdf(z["beta"], 0, 10).sum()
        + _halfcauchy(z["sigma"], 2.5)
        + np.log(z["sigma"])
    )
    lik = 0.0
    for t in range(K, T):  # Stan's t = K+1..T
        mean = z["alpha"] + sum(z["beta"][k - 1] * y[t - k] for k in range(1, K + 1))
        lik += stats.norm.logpdf(y[t], mean, z["sigma"])
    _check(model, u, prior, lik)


def test_sblrc_log_joint():
    model = models.get("sblrc-blr")
    data = load_data("sblrc.json")
    X, y = np.asarray(data["X"]), np.asarray(data["y"])
    u, z = _point(model, {"beta": [0.9995, 1.001, 0.998, 0.9991, 1.0003], "sigma": 1.3})
    prior = (
        stats.norm.logpdf(z["beta"], 0, 10).sum()
        + stats.halfnorm.logpdf(z["sigma"], scale=10)
        + np.log(z["sigma"])
    )
    lik = stats.norm.logpdf(y, X @ z["beta"], z["sigma"]).sum()
    _check(model, u, prior, lik)


def test_low_dim_gauss_mix_log_joint():
    model = models.get("low_dim_gauss_mix-low_dim_gauss_mix")
    data = load_data("low_dim_gauss_mix.json")
    y = np.asarray(data["y"])
    u, z = _point(model, {"mu": [-2.5, 3.1], "sigma": [0.9, 1.2], "theta": 0.58})
    mu, sigma, theta = z["mu"], z["sigma"], z["theta"]
    # ordered mu with N(0, 2) components: the order statistics of two N(0, 2), density 2! N N on
    # mu_1 < mu_2; ordered transform mu = (u_1, u_1 + exp(u_2)) has log-Jacobian log(mu_2 - mu_1).
    prior = (
        np.log(2.0)
        + stats.norm.logpdf(mu, 0, 2).sum()
        + np.log(mu[1] - mu[0])
        + stats.halfnorm.logpdf(sigma, scale=2).sum()
        + np.log(sigma).sum()
        + stats.beta.logpdf(theta, 5, 5)
        + _logit_jacobian(theta, 0.0, 1.0)
    )
    lik = special.logsumexp(
        np.stack(
            [
                np.log(theta) + stats.norm.logpdf(y, mu[0], sigma[0]),
                np.log1p(-theta) + stats.norm.logpdf(y, mu[1], sigma[1]),
            ]
        ),
        axis=0,
    ).sum()
    _check(model, u, prior, lik)
    assert model.prior_is_proper


def test_garch11_log_joint():
    model = models.get("garch-garch11")
    data = load_data("garch.json")
    y = np.asarray(data["y"])
    u, z = _point(model, {"mu": 5.0, "alpha0": 1.3, "alpha1": 0.55, "beta1": 0.3})
    mu, alpha0, alpha1, beta1 = z["mu"], z["alpha0"], z["alpha1"], z["beta1"]
    # Stan: no prior statements; the density is constant on {alpha1 in (0,1), beta1 in (0, 1 - alpha1)},
    # normalised: 2 on that triangle (mu and alpha0 flat, contributing 0).
    prior = (
        np.log(2.0)
        + np.log(alpha0)  # alpha0 = exp(u)
        + _logit_jacobian(alpha1, 0.0, 1.0)
        + _logit_jacobian(beta1, 0.0, 1.0 - alpha1)
    )
    sigma = np.empty_like(y)
    sigma[0] = data["sigma1"]
    for t in range(1, len(y)):
        sigma[t] = np.sqrt(alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * sigma[t - 1] ** 2)
    lik = stats.norm.logpdf(y, mu, sigma).sum()
    _check(model, u, prior, lik)


def test_diamonds_log_joint():
    model = models.get("diamonds-diamonds")
    data = load_data("diamonds.json.gz")
    X, Y = np.asarray(data["X"]), np.asarray(data["Y"])
    Xc = X[:, 1:] - X[:, 1:].mean(axis=0)
    rng = np.random.default_rng(0)
    ref = posteriordb.reference("diamonds-diamonds")["parameters"]
    b = np.array([ref[f"b[{k}]"]["mean"] for k in range(1, 25)]) + 0.1 * rng.standard_normal(24) * np.array(
        [ref[f"b[{k}]"]["sd"] for k in range(1, 25)]
    )
    u, z = _point(model, {"b": b, "Intercept": 7.75, "sigma": 1.1})
    prior = (
        stats.norm.logpdf(z["b"], 0, 1).sum()
        + stats.t.logpdf(z["Intercept"], 3, 8, 10)
        + stats.t.logpdf(z["sigma"], 3, 0, 10)
        - stats.t.logsf(0.0, 3, 0, 10)
        + np.log(z["sigma"])
    )
    lik = stats.norm.logpdf(Y, z["Intercept"] + Xc @ z["b"], z["sigma"]).sum()
    _check(model, u, prior, lik)


def test_logistic_regression_log_joint():
    model = models.get("logistic_regression")
    X, y = logistic.standardized_data()
    assert X.shape == (569, 30) and set(np.unique(y)) == {0, 1}
    np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(X.std(axis=0), 1.0, rtol=1e-10)
    beta = np.linspace(-0.8, 0.8, 30)
    u, z = _point(model, {"alpha": 0.4, "beta": beta})
    prior = stats.norm.logpdf(z["alpha"], 0, 5) + stats.norm.logpdf(z["beta"], 0, 1).sum()
    eta = z["alpha"] + X @ z["beta"]
    lik = (y * -np.logaddexp(0, -eta) + (1 - y) * -np.logaddexp(0, eta)).sum()
    _check(model, u, prior, lik)


@pytest.mark.parametrize("name", ALL)
def test_reference_labels_name_model_values(name):
    """Every reference label names a constrained value of the model, with a 0-based index."""
    model = models.get(name)
    known = model.known
    assert known.moments == "reference" and known.log_evidence is None
    assert set(known.posterior_mean) == set(known.posterior_sd)
    stan_labels = posteriordb.reference(name)["parameters"]
    assert len(known.posterior_mean) == len(stan_labels)
    values = model.constrain(model.init_position)
    for label in known.posterior_mean:
        site, index = _split_label(label)
        assert site in values, label
        np.asarray(values[site])[index]  # raises if out of range
        assert known.posterior_sd[label] > 0


def _split_label(label):
    match = re.fullmatch(r"(.+)\[([0-9,]+)\]", label)
    if match is None:
        return label, ()
    return match[1], tuple(int(i) for i in match[2].split(","))


def test_numpyro_models_mapping():
    assert list(posteriordb.NUMPYRO_MODELS) == ALL
    assert callable(posteriordb.NUMPYRO_MODELS["kidiq-kidscore_momiq"])
    with pytest.raises(KeyError):
        posteriordb.NUMPYRO_MODELS["no-such-model"]


# -- (b) statistical: NumPyro NUTS reproduces the reference means ------------------------------
# (warmup, draws per chain, extra NUTS options); 4 chains, vectorised, PRNGKey(0).
# The criterion counts only the Monte Carlo error of these runs, not that of the reference
# summaries themselves (posteriordb gives no ESS for them). For diamonds (26 strongly correlated
# parameters) that matters once runs get long: with 1000+2000 draws per chain the largest
# error was 4.5 MCSE with one seed and 2.8 with another (and 2.7 in float64), no consistent
# pattern, which points to the reference's own Monte Carlo error, not to the model. Its run
# here is the short one the test was set up with.
NUTS_SETTINGS = {
    "eight_schools-eight_schools_noncentered": (1000, 2000, {}),
    "kidiq-kidscore_momiq": (1000, 1000, {}),
    "arK-arK": (1000, 1000, {}),
    "sblrc-blr": (1000, 1000, {}),
    "low_dim_gauss_mix-low_dim_gauss_mix": (500, 500, {}),
    "garch-garch11": (1000, 1000, {}),
    # badly conditioned (correlated predictors): a dense mass matrix makes it cheap
    "diamonds-diamonds": (500, 500, {"dense_mass": True}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_numpyro_nuts_matches_reference(name):
    import arviz as az
    from numpyro.infer import MCMC, NUTS

    warmup, draws, options = NUTS_SETTINGS[name]
    fn = posteriordb.NUMPYRO_MODELS[name]
    known = models.get(name).known
    start = time.perf_counter()
    mcmc = MCMC(
        NUTS(fn, **options),
        num_warmup=warmup,
        num_samples=draws,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(0))
    samples = {k: np.asarray(v, dtype=np.float64) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    elapsed = time.perf_counter() - start

    failures, worst = [], 0.0
    for label, ref_mean in known.posterior_mean.items():
        site, index = _split_label(label)
        x = samples[site][(slice(None), slice(None)) + index]  # (chain, draw)
        ess = float(az.ess(x[None] if x.ndim == 1 else x))
        mcse = known.posterior_sd[label] / np.sqrt(ess)
        z = abs(x.mean() - ref_mean) / mcse
        worst = max(worst, z)
        if not z < 5:
            failures.append(f"{label}: mean {x.mean():.5g} vs ref {ref_mean:.5g} ({z:.1f} MCSE, ESS {ess:.0f})")
    print(f"{name}: NUTS {warmup}+{draws} x 4 chains in {elapsed:.1f} s, largest error {worst:.2f} MCSE")
    assert not failures, "\n".join(failures)
