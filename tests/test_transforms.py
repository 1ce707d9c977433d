"""The maps between constrained parameters and elbox's unconstrained space, site by site.

For every support that NumPyro can map to the real line with ``biject_to`` there is a latent
site below (``CASES``; ``sphere`` has no such map, see the tests at the end), and for each:

* round trip: ``unconstrain(constrain(u)) == u`` and ``constrain(unconstrain(z)) == z`` in
  float32 (the precision elbox runs in);
* log-Jacobian: the term elbox adds to the prior equals log |det J| of the constraining map,
  with J computed by central finite differences of the *forward* map in float64, independently
  of NumPyro's ``log_abs_det_jacobian``. Where the constrained space has more coordinates than
  ``u`` (simplex, correlation and Cholesky factors, matrices) J is taken of a chart of the
  constrained space, the coordinates with respect to which the distribution's density is
  defined: the first K-1 entries of a simplex, the strictly-lower entries of a correlation
  matrix or of its Cholesky factor, the lower triangle (with the diagonal) of a covariance
  matrix or of a Cholesky factor. The zero-sum vector is the exception: ZeroSumNormal's density
  is with respect to the surface measure of the hyperplane, so the volume factor there is
  sqrt(det(J^T J)) of the full K-vector (the first-(K-1) chart would be off by log sqrt(K));
* normalisation, for the proper one- and two-dimensional cases: the prior pushed to ``u``,
  exp(log_prior(u)), integrates to 1 over R^d. This checks that each chart above is the one
  that matches the reference measure of the NumPyro density, i.e. that the convention elbox
  inherits from NumPyro is the right one, not just a self-consistent one.

Runtime: all sites live in ONE NumPyro model, built once and compiled once per property (one
model per support costs a build and a compile each, ~1 s apiece on two cores); the tests are
parametrised over the sites and read their own entries. Per-site prior terms come from
``Model.site_log_densities`` (log p of the site plus its ``_<site>_log_det`` term); the total
is also checked against ``Model.log_prior``, and the same sites built with
``Model.from_prior_and_likelihood`` must give the same terms.

x64 is enabled only locally, with the ``jax.enable_x64(True)`` context manager (JAX 0.10 has
no ``jax.experimental.enable_x64``); every function is traced and called inside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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
    Case("greater_than_eq", lambda: dist.TruncatedNormal(0.0, 1.0, low=1.0)),  # support depends on low
    Case("unit_interval", lambda: dist.Beta(2.0, 3.0)),
    Case("simplex", lambda: dist.Dirichlet(np.array([1.5, 2.0, 3.0, 0.7])), chart=lambda z: z[..., :-1]),
    Case("simplex_plate", lambda: dist.Dirichlet(np.array([[1.5, 2.0, 3.0], [0.8, 1.0, 4.0]])),
         chart=lambda z: z[..., :-1], plate=2),
    Case("ordered_vector", lambda: dist.TransformedDistribution(
        dist.Normal(0.0, 1.0).expand([4]).to_event(1), transforms.OrderedTransform())),
    Case("positive_ordered_vector",
         lambda: dist.ImproperUniform(constraints.positive_ordered_vector, (), (3,)), proper=False),
    Case("corr_cholesky", lambda: dist.LKJCholesky(3, 2.0), chart=lambda z: _tril(z, -1)),
    Case("lower_cholesky", lambda: dist.WishartCholesky(5.0, scale_matrix=_eye(3)), chart=lambda z: _tril(z, 0)),
    Case("positive_definite", lambda: dist.Wishart(5.0, scale_matrix=2.0 * _eye(3)), chart=lambda z: _tril(z, 0)),
    Case("corr_matrix", lambda: dist.LKJ(3, 1.5), chart=lambda z: _tril(z, -1)),
    Case("circular", lambda: dist.VonMises(1.0, 2.0)),
    Case("real_vector", lambda: dist.MultivariateNormal(np.zeros(3), np.array(
        [[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]]))),
    Case("zero_sum", lambda: dist.ZeroSumNormal(1.5, event_shape=(4,)), volume="gram"),
    # Supports without a (proper) NumPyro distribution, through ImproperUniform.
    Case("softplus_positive", lambda: dist.ImproperUniform(constraints.softplus_positive, (), (2,)), proper=False),
    Case("l1_ball", lambda: dist.ImproperUniform(constraints.l1_ball, (), (3,)), proper=False),
    Case("softplus_lower_cholesky", lambda: dist.ImproperUniform(constraints.softplus_lower_cholesky, (), (3, 3)),
         chart=lambda z: _tril(z, 0), proper=False),
    Case("scaled_unit_lower_cholesky",
         lambda: dist.ImproperUniform(constraints.scaled_unit_lower_cholesky, (), (3, 3)),
         chart=lambda z: _tril(z, 0), proper=False),
]
# Left out, to save build and compile time: supports whose biject_to is one of the above
# (less_than_eq and greater_than_eq; nonnegative and positive; open_interval and interval;
# positive_semidefinite and positive_definite; real_matrix and real_vector), and complex.
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
# steep (stick-breaking, LKJ and l1-ball maps compound ~10 operations), so we allow 2e-5
# relative + 2e-5 absolute, ~100 eps at unit scale; observed errors are below 1e-5.
RT = dict(rtol=2e-5, atol=2e-5)
EPS32 = float(np.finfo(np.float32).eps)
# Where the inverse map is a Cholesky factorisation of the constrained matrix z, float32 cannot
# do better than ~eps * cond(z) in u (the perturbation bound of the Cholesky factor), and a
# random u easily gives cond(z) ~ 1e4: for these the tolerance in u is 10 * eps * cond(z).
CHOLESKY_INVERSE = {"positive_definite"}


@pytest.fixture(scope="module")
def round_trip(model):
    """Both round trips for every site, in float32, for two random draws: one compiled call.

    ``u`` is N(0, 1) per coordinate. The constrained points ``z`` are images of wider draws,
    N(0, 2.5^2), spread over each support out to ~1e-3 of its boundaries; prior draws would do
    too, but compiling NumPyro's Gamma, Beta and LKJ samplers takes ~20 s on this machine.
    """

    def both_ways(flat_u, flat_other):
        u = model.unravel(flat_u)
        z = model.constrain(u)
        draws = {k: v for k, v in model.constrain(model.unravel(flat_other)).items()}
        again = model.constrain(model.unconstrain(draws))
        return u, z, model.unconstrain(z), draws, again

    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    flat_u = jax.vmap(lambda k: jax.random.normal(k, (model.dimension,)))(keys[:2])
    flat_other = 2.5 * jax.vmap(lambda k: jax.random.normal(k, (model.dimension,)))(keys[2:])
    u, z, back, draws, again = jax.jit(jax.vmap(both_ways))(flat_u, flat_other)

    return {
        name: dict(u=np.asarray(u[name]), z=np.asarray(z[name]), back=np.asarray(back[name]),
                   draw=np.asarray(draws[name]), again=np.asarray(again[name]))
        for name in NAMES
    }


# Supports whose membership test is an eigendecomposition: a float32 eigh can call a PD matrix
# with cond ~ 1e7 indefinite, which says nothing about the map, so these are checked in float64.
EIGEN_CHECKED = {"positive_definite", "corr_matrix"}


def _in_support(name, value):
    value = value.astype(np.float64) if name in EIGEN_CHECKED else value
    return bool(np.all(BY_NAME[name].make().support(value)))


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(round_trip, name):
    r = round_trip[name]
    assert r["z"].dtype == np.float32
    for z, draw in zip(r["z"], r["draw"]):
        assert _in_support(name, z) and _in_support(name, draw), f"{name}: a value is outside the support"
    np.testing.assert_allclose(r["again"], r["draw"], **RT, err_msg=f"{name}: constrain(unconstrain(z)) != z")
    if name in CHOLESKY_INVERSE:
        for u, back, z in zip(r["u"], r["back"], r["z"]):
            tol = 10 * EPS32 * np.linalg.cond(z.astype(np.float64))
            np.testing.assert_allclose(back, u, rtol=tol, atol=tol, err_msg=f"{name}: unconstrain(constrain(u)) != u")
    else:
        np.testing.assert_allclose(r["back"], r["u"], **RT, err_msg=f"{name}: unconstrain(constrain(u)) != u")


# -- (b) the log-Jacobian, float64 -------------------------------------------------------------
# Central differences in float64: truncation error ~ h^2 |f'''| / 6 ~ 1e-10 and round-off
# ~ eps |f| / h ~ 1e-11 per Jacobian entry with h = 1e-5.
FD_STEP = 1e-5


def _fd_jacobian(f, x):
    """Central-difference Jacobian of ``f`` at ``x`` (float64), all 2n points in one compiled call.
    Returns (f(x), J)."""
    n = x.size
    steps = FD_STEP * jnp.eye(n, dtype=x.dtype)
    values = jax.vmap(f)(jnp.concatenate([x[None], x + steps, x - steps]))
    return values[0], (values[1 : n + 1] - values[n + 1 :]).T / (2 * FD_STEP)


@pytest.fixture(scope="module")
def jacobian_check(model):
    """Everything for the log-Jacobian tests, computed in float64 in one compiled call."""
    # the columns of each site in the flat u, found by ravelling an indicator
    cols = {}
    for name in NAMES:
        indicator = {k: jnp.full(v.shape, k == name) for k, v in model.init_position.items()}
        cols[name] = np.flatnonzero(np.asarray(model.ravel(indicator)))

    def flat_charts(v):
        z = model.constrain(model.unravel(v))
        return jnp.concatenate([jnp.ravel(c.chart(z[c.name])) for c in CASES])

    def expected_log_prob(z):
        out = {}
        for case in CASES:
            d = case.make()
            if case.plate:
                d = d.expand((case.plate,))
            out[case.name] = jnp.sum(d.log_prob(z[case.name]))
        return out

    def everything(flat):
        u = model.unravel(flat)
        z = model.constrain(u)
        _, J = _fd_jacobian(flat_charts, flat)
        return dict(
            J=J,
            dtype_probe=z[NAMES[0]],
            log_prob=expected_log_prob(z),
            elbox=_prior_terms(model, u),
            log_prior=model.log_prior(u),
        )

    with jax.enable_x64(True):
        # the same sites through the third constructor, which sums the log-Jacobians itself
        split = Model.from_prior_and_likelihood(
            {c.name: c.make().expand((c.plate,)) if c.plate else c.make() for c in CASES}, lambda z: 0.0
        )

        def everything_and_split(flat):
            out = everything(flat)
            out["split"] = split.site_log_densities(split.unravel(flat))
            return out

        flat = 0.7 * jax.random.normal(jax.random.PRNGKey(7), (model.dimension,), dtype=jnp.float64)
        out = jax.device_get(jax.jit(everything_and_split)(flat))

    shapes = jax.eval_shape(model.constrain, model.init_position)
    sizes = [BY_NAME[n].chart(np.zeros(shapes[n].shape)).size for n in NAMES]
    row_starts = np.concatenate([[0], np.cumsum(sizes)])
    J = np.asarray(out["J"])
    sites = {}
    for i, case in enumerate(CASES):
        rows, c = slice(row_starts[i], row_starts[i + 1]), cols[case.name]
        block = J[rows][:, c]
        sites[case.name] = dict(
            elbox=float(out["elbox"][case.name]),
            split=float(out["split"][case.name]),
            log_prob=float(out["log_prob"][case.name]),
            log_det=_log_volume(case, block),
            off_block=np.abs(np.delete(J[rows], c, axis=1)).max(initial=0.0),
        )
    return dict(sites=sites, log_prior=float(out["log_prior"]), dtype=out["dtype_probe"].dtype)


@pytest.mark.parametrize("name", NAMES)
def test_log_jacobian(jacobian_check, name):
    r = jacobian_check["sites"][name]
    # the chart of this site moves with its own u only (off-block entries are exact zeros)
    assert r["off_block"] == 0.0
    # what elbox adds to the prior for this site is log p(z) + log|det J|; the finite-difference
    # log-determinant carries the ~1e-9 relative error of its entries (see FD_STEP), so 1e-7.
    assert r["elbox"] == pytest.approx(r["log_prob"] + r["log_det"], rel=1e-7, abs=1e-7)
    # Model.from_prior_and_likelihood adds the same term (its own code path), float64 round-off
    assert r["split"] == pytest.approx(r["elbox"], rel=1e-12, abs=1e-12)


def test_log_prior_is_the_sum_of_the_site_terms(jacobian_check):
    assert jacobian_check["dtype"] == np.float64  # the x64 context really took effect
    expected = sum(r["log_prob"] + r["log_det"] for r in jacobian_check["sites"].values())
    assert jacobian_check["log_prior"] == pytest.approx(expected, rel=1e-7)


def test_x64_stays_local():
    """Float64 is switched on only inside ``jax.enable_x64(True)`` blocks, as in the checks of
    this module: after elbox has computed in float64, the caller's default dtype is float32
    again. Self-contained (its own float64 block first), so it fails on a leak whichever tests
    ran before it; run after the module's other float64 blocks, it checks those too."""
    model = Model.from_numpyro(dependent)
    with jax.enable_x64(True):
        inside = jax.jit(model.log_prior)(model.unravel(jnp.array([0.4, -0.9], dtype=jnp.float64)))
    assert inside.dtype == jnp.float64  # the block really computed in float64
    assert not jax.config.jax_enable_x64
    assert jnp.zeros(()).dtype == jnp.float32
    assert jnp.asarray(1.0).dtype == jnp.float32
    assert jax.jit(model.log_prior)(model.init_position).dtype == jnp.float32


# -- normalisation: the chart is the density's reference measure --------------------------------
def low_dimensional():
    _sample_sites(LOW_DIM_CASES)


LOW_DIM_CASES = [c for c in CASES if c.name in {
    "real", "positive", "interval", "greater_than", "less_than", "greater_than_eq", "unit_interval", "circular",
}] + [
    Case("simplex3", lambda: dist.Dirichlet(np.array([1.5, 2.0, 3.0])), chart=lambda z: z[..., :-1]),
    Case("zero_sum3", lambda: dist.ZeroSumNormal(1.5, event_shape=(3,)), volume="gram"),
    Case("ordered2", lambda: dist.TransformedDistribution(
        dist.Normal(0.0, 1.0).expand([2]).to_event(1), transforms.OrderedTransform())),
    Case("corr_cholesky2", lambda: dist.LKJCholesky(2, 2.5), chart=lambda z: _tril(z, -1)),
    Case("corr_matrix2", lambda: dist.LKJ(2, 0.8), chart=lambda z: _tril(z, -1)),
]


@pytest.fixture(scope="module")
def normalisation():
    """Trapezoid integrals of exp(site prior) over a grid of u, per site, in float64.

    The sites are independent, so each batch of points moves all of them at once: the 1-d
    sites along a line (h = 0.01), the 2-d ones over a square grid (h = 0.25), both on
    [-30, 30]. Beyond |u| = 30 every integrand is below exp(-30). They are analytic in a strip
    about the real axis of half-width at least pi/4 (logistic poles at distance pi; terms like
    exp(-e^(2u)) blow up at Im u = pi/2), where the trapezoid rule converges geometrically, with
    error ~exp(-2 pi w / h) = exp(-pi^2 / (2 h)): ~3e-9 at h = 0.25, nothing at h = 0.01. (The 3-d
    Wishart-type cases would need ~10^5.5 points at that accuracy; they are left to the
    Jacobian test.) Batches of 8192 points: one compiled call each, the same compilation for all.
    """
    model = Model.from_numpyro(low_dimensional)  # sites and shapes; built in float32 (cheaper)
    side = {1: np.linspace(-30, 30, 6001), 2: np.linspace(-30, 30, 241)}
    chunk = 8192
    n_points = -(-max(v.size**k for k, v in side.items()) // chunk) * chunk
    points, weights = {}, {}
    for name, u0 in model.init_position.items():
        dim = u0.size
        grid = side[dim]
        axes = np.meshgrid(*([grid] * dim), indexing="ij")
        p = np.stack([a.ravel() for a in axes], axis=-1)
        w1 = np.full(grid.size, grid[1] - grid[0])
        w1[[0, -1]] /= 2  # trapezoid
        w = np.ones(1)
        for _ in range(dim):
            w = np.multiply.outer(w, w1).ravel()
        pad = n_points - p.shape[0]  # padding: copies of the last point, with weight 0
        points[name] = np.concatenate([p, np.repeat(p[-1:], pad, axis=0)]).reshape((n_points,) + u0.shape)
        weights[name] = np.concatenate([w, np.zeros(pad)])

    totals = dict.fromkeys(points, 0.0)
    with jax.enable_x64(True):
        density = jax.jit(jax.vmap(lambda u: jax.tree_util.tree_map(jnp.exp, _prior_terms(model, u))))
        for start in range(0, n_points, chunk):
            part = density({k: jnp.asarray(v[start : start + chunk]) for k, v in points.items()})
            for name in totals:
                totals[name] += float(np.dot(weights[name][start : start + chunk], np.asarray(part[name])))
    return totals


@pytest.mark.parametrize("name", [c.name for c in LOW_DIM_CASES])
def test_prior_on_u_is_normalised(normalisation, name):
    # Float64 sums of ~1e4 positive terms: round-off ~1e-12. A wrong chart would be off by a
    # factor such as sqrt(K) (zero-sum) or by an O(1) density, not by 1e-8.
    assert normalisation[name] == pytest.approx(1.0, abs=1e-8)


# -- (c) a dependent support ---------------------------------------------------------------------
def dependent():
    y = numpyro.sample("y", dist.Beta(2.0, 2.0))
    numpyro.sample("x", dist.Uniform(0.0, 1.0 - y))


def test_dependent_support_round_trip_and_jacobian():
    model = Model.from_numpyro(dependent)
    assert set(model.init_position) == {"x", "y"}

    @jax.jit
    def round_trips(flat_u, z):
        u = model.unravel(flat_u)
        image = model.constrain(u)
        return u, image, model.unconstrain(image), model.constrain(model.unconstrain(z))

    # valid points, some close to the moving boundary x = 1 - y
    points = {"y": jnp.array([0.3, 0.9, 0.01, 0.5]), "x": jnp.array([0.5, 0.05, 0.98, 0.4999])}
    flat_u = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    u, image, back, again = jax.vmap(round_trips)(flat_u, points)
    assert bool(jnp.all((image["x"] > 0) & (image["x"] < 1 - image["y"])))
    for k in ("x", "y"):
        np.testing.assert_allclose(back[k], u[k], **RT)
        np.testing.assert_allclose(again[k], points[k], **RT)

    # the map (u_x, u_y) -> (x, y) is triangular (x depends on u_y through its bound); its full
    # 2x2 Jacobian by central differences, float64
    with jax.enable_x64(True):

        def forward(v):
            z = model.constrain(model.unravel(v))
            return jnp.stack([z["x"], z["y"]])

        @jax.jit
        def check(flat):
            (x, y), J = _fd_jacobian(forward, flat)
            return x, y, J, model.log_prior(model.unravel(flat))

        x, y, J, got = jax.device_get(check(jnp.array([0.4, -0.9])))
    assert model.unravel(jnp.array([1.0, 2.0]))["x"] == 1.0  # flat = (u_x, u_y)
    expected = stats.beta(2, 2).logpdf(y) + stats.uniform(0, 1 - y).logpdf(x) + np.linalg.slogdet(J)[1]
    assert float(got) == pytest.approx(expected, rel=1e-8)  # float64, FD error ~1e-9 relative
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
    split = Model.from_prior_and_likelihood({"x": dist.ImproperUniform(support, (), ())}, lambda z: 0.0)
    assert split.prior_is_proper is False
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
    assert Model.from_prior_and_likelihood({"x": dist.Normal(0.0, 1.0)}, lambda z: 0.0).prior_is_proper is True
