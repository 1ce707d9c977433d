"""The three ways to build a Model, bad input, and the built-in models.

(a) Eight schools written three ways (a NumPyro model, a hand-written log density of the
    unconstrained pytree, a prior dict plus a log-likelihood) gives one log joint, which is also
    minus NumPyro's own ``potential_energy``.
(b) A log-density model has no prior/likelihood split and says how to get one.
(c) Bad input is a ``ModelError`` that names the culprit.
(d) Every built-in model builds, is finite where it starts, labels its known moments with
    parameters that exist, and every closed-form log evidence (the conjugate models, and the
    normalised funnel and 100-d Gaussian) equals a numerical integral of exp(log_joint) over
    the unconstrained space (float64, enabled only locally with the ``jax.enable_x64(True)``
    context manager): quadrature in 1-d, Laplace where the log joint is quadratic, a grid in
    2-d, and quadrature over the funnel's neck with the Gaussian conditional done exactly.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy import stats as jstats
from numpyro.infer.util import potential_energy
from scipy import integrate, optimize

from elbox import models
from elbox.errors import ModelError, NoPriorLikelihoodSplit
from elbox.model import Model

# -- (a) eight schools, three ways ---------------------------------------------------------------
Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y, sigma):
    """Non-centred: theta_j = mu + tau * theta_trans_j."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", len(y)):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + tau * theta_trans, sigma), obs=y)


def eight_schools_log_density(u):
    """log p(y, mu, tau, theta_trans) + log |d tau / d log tau| by hand; ``u["tau"]`` is log tau."""
    mu, log_tau, theta_trans = u["mu"], u["tau"], u["theta_trans"]
    tau = jnp.exp(log_tau)
    log_prior = (
        jstats.norm.logpdf(mu, 0.0, 5.0)
        + jnp.log(2.0) + jstats.cauchy.logpdf(tau, 0.0, 5.0)  # half-Cauchy on tau > 0
        + log_tau  # Jacobian of tau = exp(log tau)
        + jnp.sum(jstats.norm.logpdf(theta_trans))
    )
    return log_prior + jnp.sum(jstats.norm.logpdf(Y, mu + tau * theta_trans, SIGMA))


def eight_schools_likelihood(z):
    return jnp.sum(dist.Normal(z["mu"] + z["tau"] * z["theta_trans"], SIGMA).log_prob(Y))


EIGHT_SCHOOLS_PRIOR = {
    "mu": dist.Normal(0.0, 5.0),
    "tau": dist.HalfCauchy(5.0),
    "theta_trans": dist.Normal(0.0, 1.0).expand([8]),
}

# Float32 throughout: each log joint is a sum of ~20 terms of size up to ~50, so round-off is a
# few 1e-6 absolute; rtol 1e-5 on values of 40-200 leaves a margin of ~100.
RTOL = 1e-5


@pytest.fixture(scope="module")
def eight_schools_forms():
    forms = {
        "numpyro": Model.from_numpyro(eight_schools, Y, SIGMA),
        "log_density": Model.from_log_density(
            eight_schools_log_density,
            {"mu": jnp.zeros(()), "tau": jnp.zeros(()), "theta_trans": jnp.zeros(8)},
        ),
        "prior_and_likelihood": Model.from_prior_and_likelihood(EIGHT_SCHOOLS_PRIOR, eight_schools_likelihood),
    }
    reference = forms["numpyro"]
    points = 2.0 * jax.random.normal(jax.random.PRNGKey(42), (6, reference.dimension))
    points = points.at[0].set(0.0)
    us = jax.vmap(reference.unravel)(points)  # a batch of pytrees, leading axis = point
    values = {}
    for name, model in forms.items():
        structure = jax.tree_util.tree_structure
        assert structure(model.init_position) == structure(reference.init_position)
        fns = {"log_joint": model.log_joint}
        if model.has_split:
            fns.update(log_prior=model.log_prior, log_likelihood=model.log_likelihood)
        values[name] = jax.device_get(jax.jit(jax.vmap(lambda u, fns=fns: {k: f(u) for k, f in fns.items()}))(us))
    values["potential_energy"] = np.array([
        float(potential_energy(eight_schools, (Y, SIGMA), {}, jax.tree_util.tree_map(lambda x, i=i: x[i], us)))
        for i in range(points.shape[0])
    ])
    return forms, us, values


def test_eight_schools_three_forms_same_log_joint(eight_schools_forms):
    _, _, values = eight_schools_forms
    hand = values["log_density"]["log_joint"]
    assert np.all(np.isfinite(hand))
    np.testing.assert_allclose(values["numpyro"]["log_joint"], hand, rtol=RTOL)
    np.testing.assert_allclose(values["prior_and_likelihood"]["log_joint"], hand, rtol=RTOL)
    np.testing.assert_allclose(-values["potential_energy"], hand, rtol=RTOL)


def test_eight_schools_same_split(eight_schools_forms):
    _, _, values = eight_schools_forms
    a, b = values["numpyro"], values["prior_and_likelihood"]
    np.testing.assert_allclose(a["log_prior"], b["log_prior"], rtol=RTOL)
    np.testing.assert_allclose(a["log_likelihood"], b["log_likelihood"], rtol=RTOL)
    np.testing.assert_allclose(a["log_prior"] + a["log_likelihood"], a["log_joint"], rtol=RTOL)


def test_eight_schools_same_constrained_values(eight_schools_forms):
    forms, us, _ = eight_schools_forms
    u = jax.tree_util.tree_map(lambda x: x[1], us)
    z_numpyro = forms["numpyro"].constrain(u)
    z_split = forms["prior_and_likelihood"].constrain(u)
    assert set(z_numpyro) == set(z_split) == {"mu", "tau", "theta_trans"}
    for k in z_numpyro:
        np.testing.assert_allclose(z_numpyro[k], z_split[k], rtol=1e-6)
    assert float(z_numpyro["tau"]) == pytest.approx(float(np.exp(u["tau"])), rel=1e-6)
    # the log-density form has no map: its parameters are u itself, under the same names
    assert set(forms["log_density"].constrain(u)) == {"mu", "tau", "theta_trans"}
    back = forms["prior_and_likelihood"].unconstrain(z_split)
    for k in u:
        np.testing.assert_allclose(back[k], u[k], rtol=1e-5, atol=1e-5)


# -- (b) no split ----------------------------------------------------------------------------------
def test_log_density_form_has_no_split(eight_schools_forms):
    forms, us, _ = eight_schools_forms
    model = forms["log_density"]
    u = jax.tree_util.tree_map(lambda x: x[0], us)
    assert not model.has_split
    assert np.isfinite(float(model.log_joint(u)))
    assert set(model.site_log_densities(u)) == {"log_density"}
    for method in (model.log_prior, model.log_likelihood):
        with pytest.raises(NoPriorLikelihoodSplit) as info:
            method(u)
        message = str(info.value)
        assert method.__name__ in message  # what was asked for
        assert "from_numpyro" in message and "from_prior_and_likelihood" in message  # how to fix it
        assert isinstance(info.value, ModelError)


# -- (c) bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_data_is_a_model_error_naming_the_site(bad):
    data = np.array([0.3, 1.2, bad, -0.4])

    def model_fn(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("measurements", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ModelError, match=r"measurements.*(NaN|infinity)"):
        Model.from_numpyro(model_fn, data)


def test_discrete_latent_is_a_model_error_naming_the_site():
    def model_fn():
        rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
        numpyro.sample("n_events", dist.Poisson(rate))

    with pytest.raises(ModelError, match=r"n_events.*discrete"):
        Model.from_numpyro(model_fn)
    with pytest.raises(ModelError, match=r"n_events.*discrete"):
        Model.from_prior_and_likelihood({"n_events": dist.Poisson(3.0)}, lambda z: 0.0)


def test_support_without_a_map_is_a_model_error_naming_the_site():
    from numpyro.distributions import constraints

    with pytest.raises(ModelError, match=r"direction.*[Ss]phere"):
        prior = {"direction": dist.ImproperUniform(constraints.sphere, (), (3,))}
        Model.from_prior_and_likelihood(prior, lambda z: 0.0)


def test_model_that_raises_is_a_model_error():
    def broken():
        numpyro.sample("mu", dist.Normal(0.0, 1.0))
        raise ValueError("shapes (3,) and (4,) do not match")

    with pytest.raises(ModelError, match=r"broken.*ValueError.*shapes \(3,\) and \(4,\)") as info:
        Model.from_numpyro(broken)
    assert isinstance(info.value.__cause__, ValueError)


def test_model_with_no_latent_sites_is_a_model_error():
    def observed_only(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)
        numpyro.deterministic("twice", 2 * y)

    with pytest.raises(ModelError, match="no latent"):
        Model.from_numpyro(observed_only, np.array([0.5, 1.0]))


# -- (d) the built-in models ---------------------------------------------------------------------
_LABEL = re.compile(r"^(?P<site>[^\[\]]+)(?:\[(?P<index>\d+(?:,\s*\d+)*)\])?$")


@pytest.mark.parametrize("name", models.names())
def test_builtin_model(name):
    model = models.get(name)
    assert model.dimension >= 1
    assert np.isfinite(float(jax.jit(model.log_joint)(model.init_position))), f"{name}: log joint not finite at init"
    shapes = {k: v.shape for k, v in jax.eval_shape(model.constrain, model.init_position).items()}
    labels = list(model.known.posterior_mean or {})
    if model.known.posterior_sd is not None:
        assert set(model.known.posterior_sd) == set(labels)
    for label in labels:
        match = _LABEL.match(label)
        assert match, f"{name}: label {label!r} is not site or site[i,...]"
        site = match["site"]
        assert site in shapes, f"{name}: label {label!r} names no parameter (have {sorted(shapes)})"
        index = tuple(int(i) for i in match["index"].split(",")) if match["index"] else ()
        shape = shapes[site]
        assert len(index) == len(shape), f"{name}: {label!r} has {len(index)} indices for shape {shape}"
        assert all(0 <= i < n for i, n in zip(index, shape)), f"{name}: {label!r} out of range for shape {shape}"


def _evidence_1d(model):
    """log of the integral of exp(log_joint) over the one unconstrained coordinate (float64).

    The integrand is scaled by its maximum and integrated by adaptive quadrature over the mode
    +- 40 curvature-scale widths; outside that it is below exp(-40^2 / 2) for these log-concave
    posteriors.
    """
    (site,) = model.init_position
    with jax.enable_x64(True):
        f = jax.jit(lambda x: model.log_joint({site: x}))
        d2 = jax.jit(jax.grad(jax.grad(lambda x: model.log_joint({site: x}))))
        mode = optimize.minimize_scalar(lambda x: -float(f(jnp.float64(x))), bracket=(-1.0, 1.0), tol=1e-12).x
        peak = float(f(jnp.float64(mode)))
        width = 1.0 / np.sqrt(-float(d2(jnp.float64(mode))))
        integral, _ = integrate.quad(
            lambda x: np.exp(float(f(jnp.float64(x))) - peak),
            mode - 40 * width, mode + 40 * width, points=[mode], epsabs=0.0, epsrel=1e-12, limit=200,
        )
    return peak + np.log(integral)


def _evidence_laplace(model):
    """Laplace's approximation, exact when log_joint is quadratic (Gaussian prior and likelihood,
    identity map): log_joint(mode) + d/2 log 2 pi - 1/2 log det(-H)."""
    with jax.enable_x64(True):
        f = lambda v: model.log_joint(model.unravel(v))
        grad, hess = jax.jit(jax.grad(f)), jax.jit(jax.hessian(f))
        v = jnp.zeros(model.dimension, dtype=jnp.float64)
        for _ in range(3):  # Newton: exact in one step for a quadratic, the rest polish round-off
            v = v - jnp.linalg.solve(hess(v), grad(v))
        H = np.asarray(hess(v))
        # quadratic: the Hessian is the same everywhere
        np.testing.assert_allclose(np.asarray(hess(v + 1.0)), H, rtol=1e-10)
        sign, logdet = np.linalg.slogdet(-H)
        assert sign > 0
        return float(jax.jit(f)(v)) + 0.5 * model.dimension * np.log(2 * np.pi) - 0.5 * logdet


def _evidence_grid_2d(model):
    """Trapezoid rule over a 2-d grid in whitened coordinates u = mode + L w, w in [-12, 12]^2
    with step 0.2, L L^T = (-H)^-1 at the mode. The integrand is smooth (analytic in a strip
    several units of w wide), so the rule converges geometrically and the step contributes
    nothing at 1e-8; the posterior mass beyond 12 whitened units is below 1e-10 (the heaviest
    tail, of mu, is a Student-t with 2 a_n > 20 degrees of freedom)."""
    assert model.dimension == 2
    with jax.enable_x64(True):
        f = jax.jit(lambda v: model.log_joint(model.unravel(v)))
        grad, hess = jax.jit(jax.grad(lambda v: f(v))), jax.jit(jax.hessian(lambda v: f(v)))
        found = optimize.minimize(lambda v: -float(f(jnp.asarray(v))), np.zeros(2),
                                  jac=lambda v: -np.asarray(grad(jnp.asarray(v))), method="BFGS", tol=1e-12)
        mode = found.x
        L = np.linalg.cholesky(np.linalg.inv(-np.asarray(hess(jnp.asarray(mode)))))
        w = np.linspace(-12, 12, 121)
        W = np.stack(np.meshgrid(w, w, indexing="ij"), -1).reshape(-1, 2)
        values = np.asarray(jax.jit(jax.vmap(f))(jnp.asarray(mode + W @ L.T)))
    peak = values.max()
    weights = np.full(w.size, w[1] - w[0])
    weights[[0, -1]] /= 2
    integral = np.einsum("i,j,ij->", weights, weights, np.exp(values - peak).reshape(w.size, w.size))
    return peak + np.log(integral) + np.log(np.linalg.det(L))


def _evidence_funnel(model):
    """x | v is Gaussian, so the integral over x is exact by Laplace at any fixed v (the log joint
    is quadratic in x): quad over v of exp(log_joint(v, 0)) (2 pi)^(d/2) det(-H_x(v))^(-1/2)."""
    with jax.enable_x64(True):
        d = model.init_position["x"].size

        def marginal(v):
            joint = lambda x: model.log_joint({"v": v, "x": x})
            x0 = jnp.zeros(d, dtype=jnp.float64)
            sign, logdet = jnp.linalg.slogdet(-jax.hessian(joint)(x0))
            return joint(x0) + 0.5 * d * jnp.log(2 * jnp.pi) - 0.5 * logdet

        g = jax.jit(marginal)
        # the v-marginal is N(0, 3^2) if log Z = 0; its mass beyond +-60 is nil
        integral, _ = integrate.quad(lambda v: np.exp(float(g(jnp.float64(v)))), -60, 60,
                                     points=[0.0], epsabs=0.0, epsrel=1e-12, limit=200)
    return np.log(integral)


def _evidence_nig(model):
    """beta | sigma2 is Gaussian, so the integral over beta is exact by Laplace at any fixed
    s = log sigma2; quad over s of that marginal (its mass outside [-8, 6] is nil: sigma2's
    posterior is an inverse gamma with 28 degrees of freedom around 0.7)."""
    with jax.enable_x64(True):
        d = model.init_position["beta"].size

        def marginal(s):
            joint = lambda beta: model.log_joint({"sigma2": s, "beta": beta})
            hessian = jax.hessian(joint)(jnp.zeros(d, dtype=jnp.float64))
            mode = jnp.linalg.solve(-hessian, jax.grad(joint)(jnp.zeros(d, dtype=jnp.float64)))
            sign, logdet = jnp.linalg.slogdet(-hessian)
            return joint(mode) + 0.5 * d * jnp.log(2 * jnp.pi) - 0.5 * logdet

        g = jax.jit(marginal)
        peak = max(float(g(jnp.float64(s))) for s in np.linspace(-8, 6, 57))
        integral, _ = integrate.quad(lambda s: np.exp(float(g(jnp.float64(s))) - peak), -8, 6,
                                     epsabs=0.0, epsrel=1e-12, limit=200)
    return peak + np.log(integral)


# Built-in models with a closed-form log p(x), and how each is integrated numerically.
EVIDENCE_CHECKS = {
    "normal_normal": _evidence_1d,
    "beta_binomial": _evidence_1d,
    "linear_regression": _evidence_laplace,
    "gaussian_100d": _evidence_laplace,
    "normal_gamma": _evidence_grid_2d,
    "funnel": _evidence_funnel,
    "gaussian_evidence_100d": _evidence_laplace,
    "nig_regression": _evidence_nig,
}


def test_every_known_log_evidence_is_checked():
    known = {n for n in models.names() if models.get(n).known.log_evidence is not None}
    assert known <= set(EVIDENCE_CHECKS), f"add a numerical check for {sorted(known - set(EVIDENCE_CHECKS))}"


@pytest.mark.parametrize("name", list(EVIDENCE_CHECKS))
def test_known_log_evidence(name):
    model = models.build(name)  # its own instance: integrated in float64 below
    exact = model.known.log_evidence
    assert exact is not None
    # Both sides in float64 (the closed forms with NumPy/SciPy, the integral through the model's
    # own JAX log density), the integrals to ~1e-10 relative or better, so 1e-8 absolute on
    # log p(x), i.e. 1e-8 relative on p(x), leaves a margin (observed agreement: ~1e-12).
    assert EVIDENCE_CHECKS[name](model) == pytest.approx(exact, abs=1e-8)
