"""The maps between constrained parameters and elbox's unconstrained space, site by site.

For every support that NumPyro can map to the real line with ``biject_to`` there is one latent
site below (``CASES``), and for each:

* round trip: ``unconstrain(constrain(u)) == u`` and ``constrain(unconstrain(z)) == z`` in
  float32 (the precision elbox runs in);
* log-Jacobian: the term elbox adds to the prior equals log |det J| of the constraining map,
  computed independently of NumPyro's ``log_abs_det_jacobian`` by central finite differences
  (and by ``jax.jacfwd``) of the *forward* map, in float64. Where the constrained space has
  more coordinates than ``u`` (simplex, correlation and Cholesky factors, matrices) the
  Jacobian is taken of a chart of the constrained space: the coordinates with respect to
  which the distribution's density is defined (e.g. the first K-1 entries of a simplex, the
  strictly-lower entries of a correlation Cholesky factor);
* normalisation, for the proper one- to three-dimensional cases: the prior pushed to ``u``,
  exp(log_prior(u)), integrates to 1 over R^d. This checks that each chart above is the one
  that matches the reference measure of the NumPyro density, i.e. that the convention elbox
  inherits from NumPyro is the right one, not just a self-consistent one.

Runtime: all sites live in ONE NumPyro model, built and jit-compiled once per property (one
model per support costs a build and a compile each, ~1 s apiece on two cores); the tests are
parametrised over the sites and read their own entries. Per-site prior terms come from
``Model.site_log_densities`` (log p of the site plus its ``_<site>_log_det`` term); the totals
are also checked against ``Model.log_prior``.

x64 is enabled only locally, with the ``jax.enable_x64(True)`` context manager (JAX 0.10 has
no ``jax.experimental.enable_x64``); every function is traced and called inside it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.distributions import constraints, transforms
from scipy import stats

from elbox.errors import ModelError
from elbox.model import Model


def _tril(z, k):
    """Entries z[..., i, j] with j <= i + k (k=0: lower triangle incl. diagonal; k=-1: strictly lower)."""
    i, j = np.tril_indices(z.shape[-1], k)
    return z[..., i, j]


def _identity(z):
    return z


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], dist.Distribution]  # built at call time, so dtypes follow the x64 context
    chart: Callable = _identity  # constrained value -> the coordinates the density refers to
    # "square": log|det dchart/du|. "gram": 1/2 log det(J^T J), the surface (Hausdorff) measure of
    # a (K-1)-dimensional subspace embedded in R^K, used where that is the density's reference.
    volume: str = "square"
    plate: int | None = None  # sample the site inside a plate of this size
    proper: bool = True


def _eye(n):
    return np.eye(n)


CASES = [
    Case("real", lambda: dist.Normal(0.5, 2.0)),
    Case("positive", lambda: dist.Gamma(2.0, 3.0)),
    Case("interval", lambda: dist.Uniform(-2.0, 3.0)),  # non-unit bounds
    Case("greater_than", lambda: dist.TransformedDistribution(
        dist.Exponential(2.0), transforms.AffineTransform(1.5, 1.0, domain=constraints.positive))),
    Case("less_than", lambda: dist.TransformedDistribution(
        dist.Exponential(2.0), transforms.AffineTransform(-0.5, -1.0, domain=constraints.positive))),
    Case("greater_than_eq", lambda: dist.TruncatedNormal(0.0, 1.0, low=1.0)),
    Case("less_than_eq", lambda: dist.TruncatedNormal(0.0, 1.0, high=-0.5)),
    Case("pareto", lambda: dist.Pareto(1.5, 3.0)),  # dependent support: greater_than(scale)
    Case("unit_interval", lambda: dist.Beta(2.0, 3.0)),
    Case("unit_interval_plate", lambda: dist.Beta(np.array([2.0, 0.7, 5.0]), 3.0), plate=3),
    Case("simplex", lambda: dist.Dirichlet(np.array([1.5, 2.0, 3.0, 0.7])), chart=lambda z: z[..., :-1]),
    Case("simplex_plate", lambda: dist.Dirichlet(np.array([[1.5, 2.0, 3.0], [0.8, 1.0, 4.0]])),
         chart=lambda z: z[..., :-1], plate=2),
    Case("ordered_vector", lambda: dist.TransformedDistribution(
        dist.Normal(0.0, 1.0).expand([4]).to_event(1), transforms.OrderedTransform())),
    Case("positive_ordered_vector",
         lambda: dist.ImproperUniform(constraints.positive_ordered_vector, (), (3,)), proper=False),
    Case("corr_cholesky", lambda: dist.LKJCholesky(3, 2.0), chart=lambda z: _tril(z, -1)),
    Case("corr_cholesky_plate", lambda: dist.LKJCholesky(3, np.array([0.7, 3.0])),
         chart=lambda z: _tril(z, -1), plate=2),
    Case("lower_cholesky", lambda: dist.WishartCholesky(5.0, scale_matrix=_eye(3)), chart=lambda z: _tril(z, 0)),
    Case("positive_definite", lambda: dist.Wishart(5.0, scale_matrix=2.0 * _eye(3)), chart=lambda z: _tril(z, 0)),
    Case("corr_matrix", lambda: dist.LKJ(3, 1.5), chart=lambda z: _tril(z, -1)),
    Case("circular", lambda: dist.VonMises(1.0, 2.0)),
    Case("real_vector", lambda: dist.MultivariateNormal(np.zeros(3), np.array(
        [[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]]))),
    Case("zero_sum", lambda: dist.ZeroSumNormal(1.5, event_shape=(4,)), volume="gram"),
    # Supports without a (proper) NumPyro distribution, through ImproperUniform.
    Case("nonnegative", lambda: dist.ImproperUniform(constraints.nonnegative, (), (2,)), proper=False),
    Case("open_interval", lambda: dist.ImproperUniform(constraints.open_interval(-1.0, 2.0), (), (2,)), proper=False),
    Case("softplus_positive", lambda: dist.ImproperUniform(constraints.softplus_positive, (), (2,)), proper=False),
    Case("l1_ball", lambda: dist.ImproperUniform(constraints.l1_ball, (), (3,)), proper=False),
    Case("real_matrix", lambda: dist.ImproperUniform(constraints.real_matrix, (), (2, 3)), proper=False),
    Case("softplus_lower_cholesky", lambda: dist.ImproperUniform(constraints.softplus_lower_cholesky, (), (3, 3)),
         chart=lambda z: _tril(z, 0), proper=False),
    Case("scaled_unit_lower_cholesky",
         lambda: dist.ImproperUniform(constraints.scaled_unit_lower_cholesky, (), (3, 3)),
         chart=lambda z: _tril(z, 0), proper=False),
    Case("positive_semidefinite", lambda: dist.ImproperUniform(constraints.positive_semidefinite, (), (3, 3)),
         chart=lambda z: _tril(z, 0), proper=False),
]
BY_NAME = {c.name: c for c in CASES}
NAMES = [c.name for c in CASES]


def _sample_sites(cases):
    for case in cases:
        if case.plate:
            with numpyro.plate(f"{case.name}_plate", case.plate):
                numpyro.sample(case.name, case.make())
        else:
            numpyro.sample(case.name, case.make())


def all_supports():
    _sample_sites(CASES)


def _prior_terms(model, u):
    """Per latent site: what elbox puts in the prior for it (log p + its log-Jacobian term)."""
    terms = model.site_log_densities(u)
    return {name: terms[name] + terms.get(f"_{name}_log_det", 0.0) for name in u}


def _log_volume(case, J):
    if case.volume == "gram":
        return 0.5 * np.linalg.slogdet(J.T @ J)[1]
    assert J.shape[0] == J.shape[1], f"{case.name}: chart must have the dimension of u"
    return np.linalg.slogdet(J)[1]


@pytest.fixture(scope="module")
def model():
    m = Model.from_numpyro(all_supports)
    assert set(m.init_position) == set(NAMES)
    return m


# -- (a) round trips, float32 ------------------------------------------------------------------
# Tolerance: float32 eps is 1.2e-7; the maps and their inverses lose a few digits where they are
# steep (stick-breaking, Cholesky and LKJ maps compound ~10 operations, and |u| reaches ~3), so
# we allow 2e-5 relative + 2e-5 absolute, ~100 eps at unit scale. Observed errors are < 3e-6.
RT = dict(rtol=2e-5, atol=2e-5)


@pytest.fixture(scope="module")
def round_trip(model):
    constrain, unconstrain = jax.jit(model.constrain), jax.jit(model.unconstrain)
    proper = [c for c in CASES if c.proper]

    @jax.jit  # one compiled sampler for all sites (eager Gamma/LKJ samplers take seconds each)
    def prior_draw(key):
        trace = handlers.trace(handlers.seed(_sample_sites, key)).get_trace(proper)
        return {c.name: trace[c.name]["value"] for c in proper}

    out = {name: [] for name in NAMES}
    for seed in (0, 1):
        flat = jax.random.normal(jax.random.PRNGKey(seed), (model.dimension,))
        u = model.unravel(1.5 * flat)
        z = constrain(u)
        back = unconstrain(z)
        # z drawn from the distribution itself where it can be (a prior draw is the typical
        # point), else the image of another random u.
        z_other = constrain(model.unravel(jax.random.normal(jax.random.PRNGKey(seed + 10), (model.dimension,))))
        draws = {**z_other, **prior_draw(jax.random.PRNGKey(seed + 20))}
        again = constrain(unconstrain(draws))
        for name in NAMES:
            out[name].append((u[name], z[name], back[name], draws[name], again[name]))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(round_trip, name):
    for u, z, back, draw, again in round_trip[name]:
        assert z.dtype == jnp.float32
        assert bool(jnp.all(BY_NAME[name].make().support(z))), f"{name}: constrain left the support"
        np.testing.assert_allclose(back, u, **RT, err_msg=f"{name}: unconstrain(constrain(u)) != u")
        assert bool(jnp.all(BY_NAME[name].make().support(draw)))
        np.testing.assert_allclose(again, draw, **RT, err_msg=f"{name}: constrain(unconstrain(z)) != z")


# -- (b) the log-Jacobian, float64 -------------------------------------------------------------
FD_STEP = 1e-5


@pytest.fixture(scope="module")
def jacobian_check(model):
    """Everything for the log-Jacobian tests, computed in float64 in one compiled pass."""
    with jax.enable_x64(True):
        n = model.dimension
        flat = 0.7 * jax.random.normal(jax.random.PRNGKey(7), (n,), dtype=jnp.float64)
        u = model.unravel(flat)
        # the columns of each site in the flat u, found by ravelling an indicator
        cols = {}
        for name in NAMES:
            indicator = {k: jnp.full(v.shape, k == name) for k, v in model.init_position.items()}
            cols[name] = np.flatnonzero(np.asarray(model.ravel(indicator)))

        def charts(v):
            z = model.constrain(model.unravel(v))
            return {c.name: jnp.ravel(c.chart(z[c.name])) for c in CASES}

        def flat_charts(v):
            c = charts(v)
            return jnp.concatenate([c[name] for name in NAMES])

        out = jax.jit(charts)(flat)
        rows, start = {}, 0
        for name in NAMES:
            rows[name] = slice(start, start + out[name].size)
            start += out[name].size

        J_ad = np.asarray(jax.jit(jax.jacfwd(flat_charts))(flat))
        # central differences: all 2n perturbed points in one vectorised call
        steps = FD_STEP * jnp.eye(n)
        plus_minus = jax.jit(jax.vmap(flat_charts))(jnp.concatenate([flat + steps, flat - steps]))
        J_fd = np.asarray((plus_minus[:n] - plus_minus[n:]).T / (2 * FD_STEP))

        def expected_log_prob(v):
            z = model.constrain(model.unravel(v))
            out = {}
            for case in CASES:
                d = case.make()
                if case.plate:
                    d = d.expand((case.plate,))
                out[case.name] = jnp.sum(d.log_prob(z[case.name]))
            return out

        log_prob = jax.jit(expected_log_prob)(flat)
        got = jax.jit(lambda u: _prior_terms(model, u))(u)
        log_prior = float(jax.jit(model.log_prior)(u))
        log_likelihood = float(jax.jit(model.log_likelihood)(u))
        dtype = model.constrain(u)[NAMES[0]].dtype

    results = {}
    for case in CASES:
        r, c = rows[case.name], cols[case.name]
        results[case.name] = dict(
            elbox=float(got[case.name]),
            log_prob=float(log_prob[case.name]),
            log_det_fd=_log_volume(case, J_fd[r, c]),
            log_det_ad=_log_volume(case, J_ad[r, c]),
            J_fd=J_fd[r, c],
            J_ad=J_ad[r, c],
            off_block=np.abs(np.delete(J_ad[r], np.arange(n)[c], axis=1)).max(initial=0.0),
        )
    return dict(sites=results, log_prior=log_prior, log_likelihood=log_likelihood, dtype=dtype)


@pytest.mark.parametrize("name", NAMES)
def test_log_jacobian(jacobian_check, name):
    r = jacobian_check["sites"][name]
    # The finite-difference Jacobian itself: truncation error ~ h^2 |f'''| ~ 1e-10 and round-off
    # ~ eps / h ~ 1e-11 with h = 1e-5 in float64, so 1e-7 leaves a wide margin.
    np.testing.assert_allclose(r["J_fd"], r["J_ad"], atol=1e-7)
    assert r["off_block"] == 0.0  # each site's chart depends on its own u only
    # What elbox adds to the prior for this site is log p(z) + log|det J|. Float64 throughout;
    # the finite-difference log-determinant carries the ~1e-9 relative error of its entries.
    expected_fd = r["log_prob"] + r["log_det_fd"]
    expected_ad = r["log_prob"] + r["log_det_ad"]
    assert r["elbox"] == pytest.approx(expected_fd, rel=1e-7, abs=1e-7)
    assert r["elbox"] == pytest.approx(expected_ad, rel=1e-10, abs=1e-10)


def test_log_prior_is_the_sum_of_the_site_terms(jacobian_check):
    assert jacobian_check["dtype"] == jnp.float64  # the x64 context really took effect
    sites = jacobian_check["sites"].values()
    expected = sum(r["log_prob"] + r["log_det_fd"] for r in sites)
    assert jacobian_check["log_prior"] == pytest.approx(expected, rel=1e-8)
    assert jacobian_check["log_likelihood"] == 0.0  # no observed sites


def test_x64_stays_local():
    assert jnp.zeros(()).dtype == jnp.float32


# -- normalisation: the chart is the density's reference measure --------------------------------
def low_dimensional():
    _sample_sites(LOW_DIM_CASES)


LOW_DIM_CASES = [c for c in CASES if c.name in {
    "real", "positive", "interval", "greater_than", "less_than", "greater_than_eq", "less_than_eq",
    "pareto", "unit_interval", "circular",
}] + [
    Case("simplex3", lambda: dist.Dirichlet(np.array([1.5, 2.0, 3.0])), chart=lambda z: z[..., :-1]),
    Case("zero_sum3", lambda: dist.ZeroSumNormal(1.5, event_shape=(3,)), volume="gram"),
    Case("ordered2", lambda: dist.TransformedDistribution(
        dist.Normal(0.0, 1.0).expand([2]).to_event(1), transforms.OrderedTransform())),
    Case("corr_cholesky2", lambda: dist.LKJCholesky(2, 2.5), chart=lambda z: _tril(z, -1)),
    Case("corr_matrix2", lambda: dist.LKJ(2, 0.8), chart=lambda z: _tril(z, -1)),
    Case("lower_cholesky2", lambda: dist.WishartCholesky(4.0, scale_matrix=_eye(2)), chart=lambda z: _tril(z, 0)),
    Case("positive_definite2", lambda: dist.Wishart(4.0, scale_matrix=0.5 * _eye(2)), chart=lambda z: _tril(z, 0)),
]


@pytest.fixture(scope="module")
def normalisation():
    """Trapezoid integrals of exp(site prior) over a grid of u, per site, in float64.

    All sites are independent, so one batch of N points moves all of them at once: the
    1-d sites along a line, the 2-d sites over an N^(1/2) square grid, the 3-d ones over an
    N^(1/3) cube. The integrands are analytic in a strip about the real axis (their poles are
    those of the logistic function, at distance pi) with tails at most like exp(-|u|) beyond
    |u| = 40; the trapezoid rule on such functions converges geometrically, ~exp(-2 pi^2 / h),
    so the grid error is far below the 1e-6 tolerance even at spacing h = 0.5.
    """
    with jax.enable_x64(True):
        model = Model.from_numpyro(low_dimensional)
        side = {1: np.linspace(-40, 40, 8001), 2: np.linspace(-40, 40, 161), 3: np.linspace(-20, 20, 81)}
        count = {k: v.size**k for k, v in side.items()}
        n_points = max(count.values())
        batch, weights = {}, {}
        for name, u0 in model.init_position.items():
            dim = u0.size
            axes = np.meshgrid(*([side[dim]] * dim), indexing="ij")
            points = np.stack([a.ravel() for a in axes], axis=-1)
            # pad with copies of the last point (weight 0) so every site has n_points rows
            pad = n_points - points.shape[0]
            points = np.concatenate([points, np.repeat(points[-1:], pad, axis=0)])
            h = side[dim][1] - side[dim][0]
            w1 = np.full(side[dim].size, h)
            w1[[0, -1]] = h / 2  # trapezoid
            w = np.ones(1)
            for _ in range(dim):
                w = np.multiply.outer(w, w1).ravel()
            weights[name] = np.concatenate([w, np.zeros(pad)])
            batch[name] = jnp.asarray(points.reshape((n_points,) + u0.shape))
        terms = jax.jit(jax.vmap(lambda u: _prior_terms(model, u)))(batch)
        return {name: float(np.sum(weights[name] * np.exp(np.asarray(terms[name])))) for name in batch}


@pytest.mark.parametrize("name", [c.name for c in LOW_DIM_CASES])
def test_prior_on_u_is_normalised(normalisation, name):
    # Float64 sums of ~1e4 positive terms: round-off ~1e-12. A wrong chart would be off by a
    # factor such as sqrt(K) (zero-sum) or by an O(1) density, not by 1e-6.
    assert normalisation[name] == pytest.approx(1.0, abs=1e-6)


# -- (c) a dependent support ---------------------------------------------------------------------
def dependent():
    y = numpyro.sample("y", dist.Beta(2.0, 2.0))
    numpyro.sample("x", dist.Uniform(0.0, 1.0 - y))


def test_dependent_support_round_trip_and_jacobian():
    model = Model.from_numpyro(dependent)
    constrain, unconstrain = jax.jit(model.constrain), jax.jit(model.unconstrain)
    for seed in range(3):
        u = model.unravel(2.0 * jax.random.normal(jax.random.PRNGKey(seed), (2,)))
        z = constrain(u)
        assert 0 < float(z["x"]) < 1 - float(z["y"])
        back = unconstrain(z)
        for k in u:
            np.testing.assert_allclose(back[k], u[k], **RT)
        # a prior draw, mapped down and back
        draw = handlers.trace(handlers.seed(dependent, seed)).get_trace()
        z = {k: draw[k]["value"] for k in ("x", "y")}
        again = constrain(unconstrain(z))
        for k in z:
            np.testing.assert_allclose(again[k], z[k], **RT)

    # the map (u_y, u_x) -> (y, x) is triangular (x depends on u_y through its bound); its
    # full 2x2 Jacobian by central differences, float64
    with jax.enable_x64(True):
        flat = jnp.array([0.4, -0.9])

        def forward(v):
            z = model.constrain(model.unravel(v))
            return jnp.stack([z["x"], z["y"]])

        steps = FD_STEP * jnp.eye(2)
        J = np.stack([(forward(flat + s) - forward(flat - s)) / (2 * FD_STEP) for s in steps], axis=1)
        x, y = np.asarray(forward(flat))
        expected = stats.beta(2, 2).logpdf(y) + stats.uniform(0, 1 - y).logpdf(x) + np.linalg.slogdet(J)[1]
        assert float(model.log_prior(model.unravel(flat))) == pytest.approx(expected, rel=1e-8)
        assert abs(J[0, 1]) > 0.01  # the cross term the bound introduces is really there


# -- sphere: not mappable; NumPyro's reparameterisation works ------------------------------------
def test_sphere_site_is_a_model_error_with_a_fix():
    def on_sphere():
        numpyro.sample("s", dist.ProjectedNormal(np.ones(3)))

    with pytest.raises(ModelError, match="(?s)'s'.*ProjectedNormalReparam"):
        Model.from_numpyro(on_sphere)


def test_sphere_via_projected_normal_reparam():
    from numpyro.infer.reparam import ProjectedNormalReparam

    def on_sphere():
        numpyro.sample("s", dist.ProjectedNormal(np.array([1.0, 2.0, 0.0])))

    model = Model.from_numpyro(handlers.reparam(on_sphere, config={"s": ProjectedNormalReparam()}))
    u = model.unravel(jax.random.normal(jax.random.PRNGKey(0), (model.dimension,)))
    z = model.constrain(u)
    assert "s" in z  # the point on the sphere is a deterministic site
    assert float(jnp.linalg.norm(z["s"])) == pytest.approx(1.0, rel=1e-6)
    assert np.isfinite(float(model.log_joint(u)))
    back = model.unconstrain({k: z[k] for k in model.init_position})
    for k in u:
        np.testing.assert_allclose(back[k], u[k], **RT)


# -- (d) factors, deterministic sites, plates, improper priors -----------------------------------
def test_factor_counts_in_the_likelihood_and_deterministic_sites_in_constrain():
    def model_fn():
        x = numpyro.sample("x", dist.LogNormal(0.2, 0.5))
        numpyro.deterministic("x_squared", x**2)
        numpyro.factor("penalty", -2.0 * (x - 1.0) ** 2)
        numpyro.sample("y", dist.Normal(x, 1.0), obs=0.3)

    model = Model.from_numpyro(model_fn)
    assert set(model.init_position) == {"x"}
    u = {"x": jnp.array(0.37)}
    x = float(np.exp(0.37))
    z = model.constrain(u)
    assert set(z) == {"x", "x_squared"}
    assert float(z["x_squared"]) == pytest.approx(x**2, rel=1e-6)
    # float32 evaluation of O(1) quantities: rel 1e-5 is ~100 eps
    assert float(model.log_prior(u)) == pytest.approx(stats.lognorm(0.5, scale=np.exp(0.2)).logpdf(x) + 0.37, rel=1e-5)
    expected_lik = -2.0 * (x - 1.0) ** 2 + stats.norm(x, 1.0).logpdf(0.3)
    assert float(model.log_likelihood(u)) == pytest.approx(expected_lik, rel=1e-5)
    assert float(model.log_joint(u)) == pytest.approx(float(model.log_prior(u)) + expected_lik, rel=1e-5)
    assert model.prior_is_proper


def test_plates():
    a = np.array([2.0, 0.7, 5.0])
    trials, k = np.array([10, 4, 7]), np.array([3, 4, 0])

    def model_fn():
        with numpyro.plate("groups", 3):
            p = numpyro.sample("p", dist.Beta(a, 3.0))
            numpyro.sample("k", dist.Binomial(trials, p), obs=k)
        with numpyro.plate("rows", 2, dim=-2), numpyro.plate("cols", 4, dim=-1):
            numpyro.sample("s", dist.HalfNormal(1.5))

    model = Model.from_numpyro(model_fn)
    assert model.init_position["p"].shape == (3,) and model.init_position["s"].shape == (2, 4)
    u = model.unravel(jax.random.normal(jax.random.PRNGKey(3), (model.dimension,)))
    z = {key: np.asarray(v, dtype=np.float64) for key, v in model.constrain(u).items()}
    p, s = z["p"], z["s"]
    expected_prior = (
        np.sum(stats.beta(a, 3.0).logpdf(p) + np.log(p) + np.log1p(-p))  # logistic Jacobian
        + np.sum(stats.halfnorm(scale=1.5).logpdf(s) + np.log(s))  # exp Jacobian
    )
    expected_lik = np.sum(stats.binom(trials, p).logpmf(k))
    assert float(model.log_prior(u)) == pytest.approx(expected_prior, rel=1e-5)
    assert float(model.log_likelihood(u)) == pytest.approx(expected_lik, rel=1e-5)


@pytest.mark.parametrize(
    "support, jacobian",
    [(constraints.real, lambda u: 0.0), (constraints.positive, lambda u: u)],
    ids=["real", "positive"],
)
def test_improper_flat_prior(support, jacobian):
    def model_fn():
        x = numpyro.sample("x", dist.ImproperUniform(support, (), ()))
        with numpyro.plate("n", 2):
            v = numpyro.sample("v", dist.ImproperUniform(support, (), ()))
        numpyro.sample("y", dist.Normal(x + v.sum(), 1.0), obs=1.0)

    model = Model.from_numpyro(model_fn)
    assert model.prior_is_proper is False
    assert model.init_position["v"].shape == (2,)
    for value in (-1.3, 0.0, 2.1):
        u = {"x": jnp.array(value), "v": jnp.array([value, 0.5])}
        # flat in z: only the log-Jacobian of the map remains (0 for real, u for exp)
        expected = jacobian(value) + jacobian(value) + jacobian(0.5)
        assert float(model.log_prior(u)) == pytest.approx(expected, abs=1e-6)
        assert np.isfinite(float(model.log_joint(u)))


def test_proper_prior_is_flagged_proper():
    def model_fn():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    assert Model.from_numpyro(model_fn).prior_is_proper is True
