"""The pieces of the gradient kernels, deterministic and fast: the leapfrog integrator, the
kinetic energy and momentum draws, MALA as one-step HMC, NUTS's trajectory against a plain NumPy
reference, and the step-size heuristics.

Everything runs in float64 (``jax.enable_x64(True)``, JAX 0.10 has no
``jax.experimental.enable_x64``) so that identities can be checked to near rounding error; each
tolerance says why it is what it is. The NumPy references below are written from the papers
(Hoffman & Gelman 2014; Betancourt 2017, appendix A.4) and from Stan's ``base_nuts.hpp``, not
from elbox's code.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Z  # the z-threshold of the statistical tests

from elbox.mcmc import hmc, integrators, mala, metric, nuts, step_size
from elbox.mcmc.integrators import GradientState, IntegratorState, StepParams


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# -- targets -------------------------------------------------------------------------------------
def banana_log_density(z):
    """A non-Gaussian 2-d target: z1 ~ N(0, 1), z2 | z1 ~ N(z1^2 / 2, 0.7^2)."""
    return -0.5 * z[0] ** 2 - 0.5 * ((z[1] - 0.5 * z[0] ** 2) / 0.7) ** 2


def gaussian(precision):
    """log N(z; 0, P^-1) up to a constant, and its gradient, for JAX and for NumPy."""
    precision = np.asarray(precision, dtype=np.float64)

    def log_density(z):
        return -0.5 * z @ jnp.asarray(precision) @ z

    def np_log_density(z):
        return -0.5 * z @ precision @ z

    def np_grad(z):
        return -precision @ z

    return log_density, np_log_density, np_grad


DIAGONAL = np.array([1.0, 0.5])
DENSE = np.array([[1.0, 0.3], [0.3, 0.5]])


def trajectory(log_density, z0, p0, eps, inverse_mass, n):
    """The states after 1..n leapfrog steps from (z0, p0), stacked."""
    step = integrators.leapfrog(integrators.value_and_grad(log_density))
    logp, grad = integrators.value_and_grad(log_density)(z0)
    start = IntegratorState(z0, p0, logp, grad)

    def body(state, _):
        state = step(state, eps, inverse_mass)
        return state, state

    return jax.lax.scan(body, start, None, length=n)[1]


# -- leapfrog ------------------------------------------------------------------------------------
def euler_step(log_density):
    """Explicit Euler for Hamilton's equations: not reversible (a negative control)."""
    grad = jax.grad(log_density)

    def step(state, eps, inverse_mass):
        position = state.position + eps * metric.velocity(inverse_mass, state.momentum)
        momentum = state.momentum + eps * grad(state.position)
        return IntegratorState(position, momentum, log_density(position), grad(position))

    return step


def forward_flip_back(step, log_density, z0, p0, eps, inverse_mass, n):
    logp, grad = integrators.value_and_grad(log_density)(z0)
    state = IntegratorState(z0, p0, logp, grad)
    state = jax.lax.fori_loop(0, n, lambda _, s: step(s, eps, inverse_mass), state)
    state = state._replace(momentum=-state.momentum)
    state = jax.lax.fori_loop(0, n, lambda _, s: step(s, eps, inverse_mass), state)
    return state.position, -state.momentum


@pytest.mark.parametrize("inverse_mass", [DIAGONAL, DENSE], ids=["diagonal", "dense"])
def test_leapfrog_is_reversible(inverse_mass):
    """n steps, negate p, n steps, negate p: back at the start.

    In float64 each step rounds at ~1e-16 relative; over 2 x 100 steps of a smooth 2-d target the
    accumulated error is ~1e-13, so 1e-9 leaves four orders of magnitude of margin while an
    integrator that is not reversible misses by O(eps) (explicit Euler, checked below).
    """
    z0, p0 = jnp.array([0.8, 0.2]), jnp.array([0.5, -1.0])
    inverse_mass = jnp.asarray(inverse_mass)
    step = integrators.leapfrog(integrators.value_and_grad(banana_log_density))
    z, p = forward_flip_back(step, banana_log_density, z0, p0, 0.1, inverse_mass, 100)
    np.testing.assert_allclose(z, z0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(p, p0, rtol=0, atol=1e-9)
    # Negative control: the same check on explicit Euler (10 steps; it blows up over 100) fails by far.
    z, p = forward_flip_back(euler_step(banana_log_density), banana_log_density, z0, p0, 0.1, inverse_mass, 10)
    assert np.max(np.abs(np.concatenate([z - z0, p - p0]))) > 1e-3


def test_leapfrog_matches_the_textbook_step():
    """One step against Neal (2011) eq. 5.18-5.20 written out in NumPy, and negative step sizes
    integrate backwards."""
    z0, p0 = np.array([0.8, 0.2]), np.array([0.5, -1.0])
    grad = jax.grad(banana_log_density)
    states = jax.tree_util.tree_map(lambda x: x[0], trajectory(banana_log_density, jnp.asarray(z0),
                                                               jnp.asarray(p0), 0.3, jnp.asarray(DENSE), 1))
    p_half = p0 + 0.15 * np.asarray(grad(jnp.asarray(z0)))
    z1 = z0 + 0.3 * DENSE @ p_half
    p1 = p_half + 0.15 * np.asarray(grad(jnp.asarray(z1)))
    np.testing.assert_allclose(states.position, z1, rtol=1e-14)
    np.testing.assert_allclose(states.momentum, p1, rtol=1e-14)
    np.testing.assert_allclose(states.log_density, banana_log_density(jnp.asarray(z1)), rtol=1e-14)
    back = trajectory(banana_log_density, states.position, states.momentum, -0.3, jnp.asarray(DENSE), 1)
    np.testing.assert_allclose(back.position[0], z0, atol=1e-14)


@pytest.mark.parametrize("inverse_mass", [DIAGONAL, DENSE], ids=["diagonal", "dense"])
def test_leapfrog_energy_error_is_second_order(inverse_mass):
    """max |H - H0| over a trajectory of fixed length T falls as eps^2 (the leapfrog is a
    second-order method): the slope of log max|dH| against log eps is within [1.8, 2.2]."""
    z0, p0 = jnp.array([0.8, 0.2]), jnp.array([0.5, -1.0])
    inverse_mass = jnp.asarray(inverse_mass)
    total_time = 2.0
    steps = np.array([16, 32, 64, 128, 256])
    start = IntegratorState(z0, p0, *integrators.value_and_grad(banana_log_density)(z0))
    h0 = integrators.energy(start, inverse_mass)
    errors = []
    for n in steps:
        states = trajectory(banana_log_density, z0, p0, total_time / n, inverse_mass, int(n))
        energies = jax.vmap(lambda s: integrators.energy(s, inverse_mass))(states)
        errors.append(float(jnp.max(jnp.abs(energies - h0))))
    slope = np.polyfit(np.log(total_time / steps), np.log(errors), 1)[0]
    assert 1.8 <= slope <= 2.2, (slope, errors)


def test_energy_is_infinite_off_the_support():
    state = IntegratorState(jnp.zeros(2), jnp.ones(2), jnp.asarray(jnp.nan), jnp.zeros(2))
    assert integrators.energy(state, jnp.ones(2)) == jnp.inf


# -- metric --------------------------------------------------------------------------------------
INVERSE_MASS_3 = {
    "diagonal": np.array([0.5, 2.0, 4.0]),
    "dense": np.array([[2.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 0.5]]),
}


def second_moment_z(draws, covariance):
    """(E_hat[x x^T] - C) / standard error, entrywise, for mean-zero Gaussian draws with
    covariance C: Var(x_i x_j) = C_ii C_jj + C_ij^2."""
    n = draws.shape[0]
    estimate = draws.T @ draws / n
    variance = np.outer(np.diag(covariance), np.diag(covariance)) + covariance**2
    return (estimate - covariance) / np.sqrt(variance / n)


@pytest.mark.parametrize("form", ["diagonal", "dense"])
def test_sample_momentum_has_covariance_m(form):
    """p ~ N(0, M): with 400,000 draws each entry of the sample second moment is within Z
    standard errors of M (6 distinct entries); against M^-1 instead it is far off."""
    inverse_mass = INVERSE_MASS_3[form]
    dense = np.diag(inverse_mass) if form == "diagonal" else inverse_mass
    mass = np.linalg.inv(dense)
    keys = jax.random.split(jax.random.key(0), 400_000)
    like = jnp.zeros(3)
    draws = np.asarray(jax.vmap(lambda k: metric.sample_momentum(k, jnp.asarray(inverse_mass), like))(keys))
    assert draws.dtype == np.float64
    assert np.max(np.abs(second_moment_z(draws, mass))) < Z
    assert np.max(np.abs(second_moment_z(draws, dense))) > 10 * Z  # negative control
    # Langevin's proposal noise (M^-1)^1/2 e has covariance M^-1.
    noise = np.asarray(jax.vmap(lambda k: metric.scale_noise(jnp.asarray(inverse_mass),
                                                             jax.random.normal(k, (3,))))(keys))
    assert np.max(np.abs(second_moment_z(noise, dense))) < Z


@pytest.mark.parametrize("form", ["diagonal", "dense"])
def test_kinetic_energy_and_mahalanobis_against_numpy(form):
    inverse_mass = INVERSE_MASS_3[form]
    dense = np.diag(inverse_mass) if form == "diagonal" else inverse_mass
    rng = np.random.default_rng(1)
    for p in rng.standard_normal((5, 3)):
        kinetic = metric.kinetic_energy(jnp.asarray(inverse_mass), jnp.asarray(p))
        np.testing.assert_allclose(kinetic, 0.5 * p @ dense @ p, rtol=1e-13)
        np.testing.assert_allclose(metric.velocity(jnp.asarray(inverse_mass), jnp.asarray(p)), dense @ p, rtol=1e-13)
        squared, half_log_det = metric.mahalanobis_squared(jnp.asarray(inverse_mass), jnp.asarray(p))
        np.testing.assert_allclose(squared, p @ np.linalg.solve(dense, p), rtol=1e-12)
        np.testing.assert_allclose(half_log_det, 0.5 * np.linalg.slogdet(dense)[1], rtol=1e-12)


# -- MALA is HMC with one leapfrog step -----------------------------------------------------------
def one_step_acceptance(log_density, position, momentum, params):
    """min(1, exp(H(z, p) - H(z', p'))) after one leapfrog step."""
    start = IntegratorState(position, momentum, *integrators.value_and_grad(log_density)(position))
    end = integrators.leapfrog(integrators.value_and_grad(log_density))(start, params.step_size, params.inverse_mass)
    log_ratio = integrators.energy(start, params.inverse_mass) - integrators.energy(end, params.inverse_mass)
    return jnp.exp(jnp.minimum(log_ratio, 0.0)), end.position


def momentum_from_noise(inverse_mass, noise):
    """The momentum whose velocity M^-1 p is MALA's noise direction (M^-1)^1/2 e: p = L^-T e with
    M^-1 = L L^T (p = e / sqrt(M^-1) for a diagonal), which is also how p ~ N(0, M) is drawn."""
    if inverse_mass.ndim == 1:
        return noise / jnp.sqrt(inverse_mass)
    factor = jnp.linalg.cholesky(inverse_mass)
    return jax.scipy.linalg.solve_triangular(factor, noise, lower=True, trans="T")


def mala_log_ratio(log_density, position, noise, params):
    """MALA's Hastings log ratio for the proposal made from ``noise``, from its definition."""
    state = integrators.init_state(position, log_density(position), log_density)
    drift = 0.5 * params.step_size**2 * metric.velocity(params.inverse_mass, state.log_density_grad)
    proposed = position + drift + params.step_size * metric.scale_noise(params.inverse_mass, noise)
    grad = jax.grad(log_density)(proposed)
    log_ratio = (log_density(proposed) - log_density(position)
                 + mala.proposal_log_density(position, proposed, grad, params)
                 - mala.proposal_log_density(proposed, position, state.log_density_grad, params))
    return log_ratio, proposed


@pytest.mark.parametrize("form", ["diagonal", "dense"])
def test_mala_acceptance_is_one_step_hmc(form):
    """For the same position, noise e and (eps, M^-1): MALA's proposal is the end of one leapfrog
    step from p = L^-T e, and its Hastings ratio is exp(H(start) - H(end)). Checked on the
    kernels themselves, each against the other's formula: MALA's kernel (noise from the first
    half of its key) against one leapfrog step, and HMC's kernel with one step and no jitter
    (momentum from the first third of its key) against MALA's ratio. Float64 arithmetic on
    O(1) energies: agreement to 1e-10."""
    inverse_mass = jnp.asarray(DIAGONAL if form == "diagonal" else DENSE)
    params = StepParams(jnp.asarray(0.9), inverse_mass)
    mala_kernel = jax.jit(mala.build_kernel(banana_log_density))
    hmc_kernel = jax.jit(hmc.build_kernel(banana_log_density, num_steps=1, jitter=False))
    one_step = jax.jit(lambda z, p, params: one_step_acceptance(banana_log_density, z, p, params))
    mala_ratio = jax.jit(lambda z, e, params: mala_log_ratio(banana_log_density, z, e, params))
    rng = np.random.default_rng(2)
    acceptances = []
    for i, position in enumerate(rng.normal(size=(20, 2)) * [1.0, 1.5]):
        position = jnp.asarray(position)
        state = integrators.init_state(position, banana_log_density(position), banana_log_density)
        key = jax.random.key(i)

        _, info = mala_kernel(key, state, params)
        noise = jax.random.normal(jax.random.split(key)[0], (2,), position.dtype)
        expected, end = one_step(position, momentum_from_noise(inverse_mass, noise), params)
        np.testing.assert_allclose(info.acceptance_rate, expected, rtol=1e-10, atol=1e-12)
        log_ratio, proposed = mala_ratio(position, noise, params)
        np.testing.assert_allclose(proposed, end, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(jnp.exp(jnp.minimum(log_ratio, 0.0)), expected, rtol=1e-10, atol=1e-12)

        _, info = hmc_kernel(key, state, params)
        momentum = metric.sample_momentum(jax.random.split(key, 3)[0], inverse_mass, position)
        if form == "diagonal":
            noise = momentum * jnp.sqrt(inverse_mass)
        else:  # e = L^T p inverts p = L^-T e
            noise = jnp.linalg.cholesky(inverse_mass).T @ momentum
        log_ratio, _ = mala_ratio(position, noise, params)
        np.testing.assert_allclose(info.acceptance_rate, jnp.exp(jnp.minimum(log_ratio, 0.0)), rtol=1e-10, atol=1e-12)
        assert int(info.n_steps) == 1
        acceptances.append(float(info.acceptance_rate))
    # The identity is checked where it matters: some proposals are rejected with fair probability.
    assert min(acceptances) < 0.9


# -- NUTS: the trajectory against a NumPy reference ----------------------------------------------
DIVERGENCE = 1000.0


class ReferenceNUTS:
    """Stan's multinomial NUTS trajectory (``base_nuts.hpp``: recursive doubling; generalised U-turn
    criterion of Betancourt 2017, A.4.2) in plain NumPy, on the integer lattice of leapfrog steps
    (0 the start, negative indices backward in time).

    * ``subtree(edge, direction, depth)``: 2^depth leaves from ``edge``; a half that is invalid
      (turned or diverged) stops the build; the merged block of two halves is checked with
      v_lo . rho <= 0 or v_hi . rho <= 0, rho the sum of its momenta; with
      ``seams_in_subtrees`` (the default; Stan's rule) also the two checks across the seam of
      the halves (first half plus the second's first leaf, first half's last leaf plus the
      second half); without it only the top-level merges get them (a rule whose outcome
      depends on the start: see SEAM_CASE).
    * ``trajectory(directions, max_depth)``: doubling until an invalid subtree (thrown away),
      a turn of the merged trajectory or of either seam extension (kept), or max_depth.
    * a leaf diverges when H - H0 > 1000.

    The counts follow elbox's documented conventions: ``depth`` includes a last subtree thrown
    away, ``turning`` is true when the trajectory stopped on a U-turn (not on a divergence).
    """

    def __init__(self, np_log_density, np_grad, z0, p0, eps, inverse_mass, seams_in_subtrees=True):
        self.log_density, self.grad = np_log_density, np_grad
        self.eps, self.inverse_mass = eps, np.asarray(inverse_mass)
        self.seams_in_subtrees = seams_in_subtrees
        self.states = {0: (np.asarray(z0, dtype=np.float64), np.asarray(p0, dtype=np.float64))}
        self.h0 = self.energy(0)
        self.n_steps, self.acceptance_sum, self.diverging = 0, 0.0, False

    def velocity(self, p):
        return self.inverse_mass * p if self.inverse_mass.ndim == 1 else self.inverse_mass @ p

    def state(self, i):
        if i not in self.states:
            z, p = self.state(i - 1 if i > 0 else i + 1)
            eps = self.eps if i > 0 else -self.eps
            p = p + 0.5 * eps * self.grad(z)
            z = z + eps * self.velocity(p)
            p = p + 0.5 * eps * self.grad(z)
            self.states[i] = (z, p)
        return self.states[i]

    def energy(self, i):
        z, p = self.state(i)
        h = -self.log_density(z) + 0.5 * p @ self.velocity(p)
        return np.inf if np.isnan(h) else h

    def turns(self, lo, hi):
        rho = sum(self.state(i)[1] for i in range(lo, hi + 1))
        return bool(self.velocity(self.state(lo)[1]) @ rho <= 0 or self.velocity(self.state(hi)[1]) @ rho <= 0)

    def seam_turns(self, first, second):
        """``first`` then ``second``, adjacent blocks of leaves listed in build order."""
        a, b = first + second[:1], first[-1:] + second
        return self.turns(min(a), max(a)) or self.turns(min(b), max(b))

    def leaf(self, i):
        h = self.energy(i)
        self.n_steps += 1
        self.acceptance_sum += min(1.0, np.exp(min(self.h0 - h, 0.0)))
        self.diverging |= bool(h - self.h0 > DIVERGENCE)

    def subtree(self, edge, direction, depth):
        if depth == 0:
            self.leaf(edge + direction)
            return not self.diverging, [edge + direction]
        valid, first = self.subtree(edge, direction, depth - 1)
        if not valid:
            return False, first
        valid, second = self.subtree(first[-1], direction, depth - 1)
        if not valid:
            return False, first + second
        leaves = first + second
        turned = self.turns(min(leaves), max(leaves))
        if self.seams_in_subtrees:
            turned = turned or self.seam_turns(first, second)
        return not turned, leaves

    def trajectory(self, directions, max_depth):
        lo = hi = depth = 0
        turning = False
        while depth < max_depth:
            direction = int(directions[depth])
            edge = hi if direction > 0 else lo
            valid, new = self.subtree(edge, direction, depth)
            if not valid:  # Stan's treedepth__ counts kept doublings only
                turning = not self.diverging
                break
            depth += 1
            old = list(range(lo, hi + 1)) if direction > 0 else list(range(hi, lo - 1, -1))
            lo, hi = min(lo, *new), max(hi, *new)
            if self.turns(lo, hi) or self.seam_turns(old, new):
                turning = True
                break
        log_weight = np.logaddexp.reduce([self.h0 - self.energy(i) for i in range(lo, hi + 1)])
        return dict(lo=lo, hi=hi, tree_depth=depth, n_steps=self.n_steps, turning=turning,
                    diverging=self.diverging, log_weight=log_weight,
                    acceptance_rate=self.acceptance_sum / max(self.n_steps, 1))


def elbox_trajectory(log_density, max_tree_depth):
    """``(z0, p0, eps, inverse_mass, directions, key) -> (tree, info)``: nuts.build_trajectory, jitted."""
    step = integrators.leapfrog(integrators.value_and_grad(log_density))

    @jax.jit
    def run(z0, p0, eps, inverse_mass, directions, key):
        start = IntegratorState(z0, p0, *integrators.value_and_grad(log_density)(z0))
        params = StepParams(eps, inverse_mass)
        return nuts.build_trajectory(step, key, start, integrators.energy(start, inverse_mass), params,
                                     directions, max_tree_depth)

    return run


CORRELATED = np.linalg.inv(np.array([[1.0, 1.8], [1.8, 4.0]]))  # sds 1 and 2, correlation 0.9

# (name, precision, inverse masses, step sizes, max_tree_depth)
NUTS_CASES = [
    ("correlated_2d", CORRELATED, [np.ones(2), np.array([1.0, 4.0]), np.linalg.inv(CORRELATED)], [0.1, 0.35, 0.8], 6),
    ("gaussian_1d_turns_early", np.array([[1.0]]), [np.ones(1), np.array([[2.0]])], [0.9, 1.3, 1.9], 6),
    ("max_depth_4", CORRELATED, [np.ones(2), np.array([[1.0, 1.8], [1.8, 4.0]])], [0.005, 0.02], 4),
    ("diverging", np.diag([1.0, 400.0]), [np.ones(2)], [0.3, 0.6], 6),
]


def direction_sequences(max_tree_depth, rng):
    if max_tree_depth <= 4:
        return np.array(list(itertools.product([-1, 1], repeat=max_tree_depth)))
    return rng.choice([-1, 1], size=(12, max_tree_depth))


@pytest.mark.parametrize("case", NUTS_CASES, ids=[c[0] for c in NUTS_CASES])
def test_nuts_trajectory_matches_reference(case):
    """nuts.build_trajectory with explicit directions against ReferenceNUTS (Stan's rule: the seam
    checks in every merge, as nuts.py's docstring describes): depth, leapfrog steps, turning,
    diverging, the trajectory's end positions, log sum of weights over the kept leaves, the
    acceptance statistic (mean of min(1, exp(H0 - H)) over all steps taken), and the draw
    being one of the kept leaves. Both sides compute the same float64 leapfrog states, so
    positions and log weights agree to 1e-9 (rounding only)."""
    name, precision, inverse_masses, step_sizes, max_tree_depth = case
    log_density, np_log_density, np_grad = gaussian(precision)
    run = elbox_trajectory(log_density, max_tree_depth)
    rng = np.random.default_rng(3)
    dimension = precision.shape[0]
    outcomes = set()
    for inverse_mass, eps in itertools.product(inverse_masses, step_sizes):
        dense = np.diag(inverse_mass) if inverse_mass.ndim == 1 else inverse_mass
        for _ in range(3):
            z0 = rng.normal(size=dimension) / np.sqrt(np.diag(precision))
            p0 = np.linalg.cholesky(np.linalg.inv(dense)) @ rng.normal(size=dimension)
            for directions in direction_sequences(max_tree_depth, rng):
                ref = ReferenceNUTS(np_log_density, np_grad, z0, p0, eps, inverse_mass)
                expected = ref.trajectory(directions, max_tree_depth)
                tree, info = run(jnp.asarray(z0), jnp.asarray(p0), jnp.asarray(eps), jnp.asarray(inverse_mass),
                                 jnp.asarray(directions), jax.random.key(int(rng.integers(1 << 30))))
                where = f"{name} M^-1={inverse_mass.tolist()} eps={eps} z0={z0} p0={p0} directions={directions}"
                assert int(info.tree_depth) == expected["tree_depth"], where
                assert int(info.n_steps) == expected["n_steps"], where
                assert bool(info.diverging) == expected["diverging"], where
                if not expected["diverging"]:  # (a diverging trajectory: see the test below)
                    assert bool(info.turning) == expected["turning"], where
                np.testing.assert_allclose(tree.left.position, ref.state(expected["lo"])[0], atol=1e-9, err_msg=where)
                np.testing.assert_allclose(tree.right.position, ref.state(expected["hi"])[0], atol=1e-9, err_msg=where)
                np.testing.assert_allclose(tree.log_weight, expected["log_weight"], atol=1e-9, err_msg=where)
                np.testing.assert_allclose(info.acceptance_rate, expected["acceptance_rate"], atol=1e-9, err_msg=where)
                kept = [ref.state(i)[0] for i in range(expected["lo"], expected["hi"] + 1)]
                assert min(np.max(np.abs(np.asarray(tree.proposal.position) - z)) for z in kept) < 1e-9, where
                outcomes.add("diverging" if expected["diverging"] else "turning" if expected["turning"] else "depth")
                outcomes.add(f"depth {expected['tree_depth']}")
    # What each case is there for did happen.
    wanted = {"correlated_2d": {"turning", "depth 3"}, "gaussian_1d_turns_early": {"turning", "depth 1"},
              "max_depth_4": {"depth", "depth 4"}, "diverging": {"diverging"}}[name]
    assert wanted <= outcomes, outcomes



def test_nuts_seam_checks_inside_subtrees_match_reference():
    """On a grid of starts on a standard 2-d Gaussian (max_tree_depth 4, all 16 direction
    sequences) some trajectories end differently when the seam checks are made inside subtrees
    too (Stan's rule) than at the top level only: on all of them elbox matches the reference
    with Stan's rule (ends, steps, depth, turning, log weight)."""
    log_density, np_log_density, np_grad = gaussian(np.eye(2))
    run = elbox_trajectory(log_density, 4)
    rule_matters = 0
    for z0, p0, eps, directions in itertools.product(
            [np.array(z) for z in itertools.product([-1.0, 1.0], repeat=2)],
            [np.array(p) for p in [(1.0, 2.0), (2.0, 1.0), (-1.0, 2.0), (2.0, -1.0)]],
            [0.25, 0.5], [np.array(d) for d in itertools.product([-1, 1], repeat=4)]):
        ref = ReferenceNUTS(np_log_density, np_grad, z0, p0, eps, np.ones(2), seams_in_subtrees=True)
        expected = ref.trajectory(directions, 4)
        top_only = ReferenceNUTS(np_log_density, np_grad, z0, p0, eps, np.ones(2),
                                 seams_in_subtrees=False).trajectory(directions, 4)
        rule_matters += (top_only["lo"], top_only["hi"], top_only["n_steps"]) != (
            expected["lo"], expected["hi"], expected["n_steps"])
        tree, info = run(jnp.asarray(z0), jnp.asarray(p0), jnp.asarray(eps), jnp.ones(2), jnp.asarray(directions),
                         jax.random.key(0))
        where = f"z0={z0} p0={p0} eps={eps} directions={directions}"
        assert (int(info.tree_depth), int(info.n_steps), bool(info.turning)) == (
            expected["tree_depth"], expected["n_steps"], expected["turning"]), where
        np.testing.assert_allclose(tree.left.position, ref.state(expected["lo"])[0], atol=1e-9, err_msg=where)
        np.testing.assert_allclose(tree.right.position, ref.state(expected["hi"])[0], atol=1e-9, err_msg=where)
        np.testing.assert_allclose(tree.log_weight, expected["log_weight"], atol=1e-9, err_msg=where)
    assert rule_matters >= 4, rule_matters  # 8 of the 512 cases

def test_is_turning():
    inverse_mass = jnp.ones(2)
    rho = jnp.array([1.0, 0.0])
    assert not nuts.is_turning(inverse_mass, jnp.array([1.0, 0.5]), jnp.array([0.2, -3.0]), rho)
    assert nuts.is_turning(inverse_mass, jnp.array([1.0, 0.5]), jnp.array([-0.2, 3.0]), rho)
    assert nuts.is_turning(inverse_mass, jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0]), rho)  # v . rho = 0 turns
    # The metric matters: M^-1 p, not p.
    dense = jnp.array([[1.0, -2.0], [-2.0, 5.0]])
    assert nuts.is_turning(dense, jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0]), rho)


# -- NUTS: the same trajectory from every state in it ---------------------------------------------
def directions_from(k, lo, kept_depth, directions):
    """The directions that rebuild the aligned block [lo, lo + 2^kept_depth) from leaf k, then the
    original ones (a subtree thrown away lies on the same side whoever starts)."""
    relative = k - lo
    own = [-1 if (relative >> j) & 1 else 1 for j in range(kept_depth)]
    return np.array(own + list(directions[kept_depth:]))


def rebuilt_from_every_state(trajectory_of, states, expected, directions):
    """For every kept leaf k: the trajectory built from (z_k, p_k) with the matching directions,
    as (lo, hi, turning) on the lattice of the first start; those that differ from ``expected``."""
    lo, hi = expected["lo"], expected["hi"]
    kept_depth = (hi - lo + 1).bit_length() - 1
    different = []
    for k in range(lo, hi + 1):
        z, p = states(k)
        got = trajectory_of(z, p, directions_from(k, lo, kept_depth, directions))
        if (got["lo"] + k, got["hi"] + k, got["turning"]) != (lo, hi, expected["turning"]):
            different.append((k, got["lo"] + k, got["hi"] + k))
    return different


# A standard 2-d Gaussian where seam checks at the top level only disagree with themselves: from
# the start such a rule doubles to [-3, 12] (depth 4, U-turn of the merged trajectory), while from
# leaf 5 the doubling that rebuilds it merges [5, 8] and [9, 12] at the top level, where a seam
# check fires, and stops at [5, 12]; from the start, [5, 8] + [9, 12] was a depth-3 subtree,
# checked without them. With the seam checks in every merge (Stan's rule) the depth-3 subtree
# turns at its seam and every state rebuilds the same trajectory.
SEAM_CASE = dict(z0=np.array([-1.0, -1.0]), p0=np.array([1.0, 2.0]), eps=0.25, directions=np.array([-1, -1, 1, 1]))


def test_reference_with_stans_checks_builds_the_same_trajectory_from_every_state():
    """The property NUTS's correctness rests on (Hoffman & Gelman 2014, sec. 3.1.1; every state of
    the final trajectory would have built it with the same probability): holds for the
    reference with Stan's rule (seam checks in every merge), not for the rule with the seam
    checks at the top level only (the negative control that shows the property test bites)."""
    _, np_log_density, np_grad = gaussian(np.eye(2))
    case = SEAM_CASE

    def check(seams_in_subtrees):
        base = ReferenceNUTS(np_log_density, np_grad, case["z0"], case["p0"], case["eps"], np.ones(2),
                             seams_in_subtrees)
        expected = base.trajectory(case["directions"], 4)

        def trajectory_of(z, p, directions):
            return ReferenceNUTS(np_log_density, np_grad, z, p, case["eps"], np.ones(2),
                                 seams_in_subtrees).trajectory(directions, 4)

        return expected, rebuilt_from_every_state(trajectory_of, base.state, expected, case["directions"])

    expected, different = check(seams_in_subtrees=True)
    assert not different, (expected, different)
    expected, different = check(seams_in_subtrees=False)
    assert (expected["lo"], expected["hi"], expected["turning"]) == (-3, 12, True)
    assert different and different[0] == (5, 5, 12), different

    # The same on random Gaussian targets: Stan's rule never differs.
    rng = np.random.default_rng(4)
    for _ in range(200):
        d = int(rng.integers(1, 4))
        a = rng.normal(size=(d, d))
        _, np_log_density, np_grad = gaussian(a @ a.T + 0.3 * np.eye(d))
        z0, p0, eps, directions = rng.normal(size=d), rng.normal(size=d), float(np.exp(rng.uniform(-3, 0))), \
            rng.choice([-1, 1], size=5)
        base = ReferenceNUTS(np_log_density, np_grad, z0, p0, eps, np.ones(d), True)
        expected = base.trajectory(directions, 5)
        trajectory_of = lambda z, p, dirs, f=np_log_density, g=np_grad, e=eps, d=d: ReferenceNUTS(
            f, g, z, p, e, np.ones(d), True).trajectory(dirs, 5)
        assert not rebuilt_from_every_state(trajectory_of, base.state, expected, directions)


def test_nuts_builds_the_same_trajectory_from_every_state():
    log_density, np_log_density, np_grad = gaussian(np.eye(2))
    run = elbox_trajectory(log_density, 4)
    case = SEAM_CASE
    reference = ReferenceNUTS(np_log_density, np_grad, case["z0"], case["p0"], case["eps"], np.ones(2))

    def trajectory_of(z, p, directions):
        tree, info = run(jnp.asarray(z), jnp.asarray(p), jnp.asarray(case["eps"]), jnp.ones(2),
                         jnp.asarray(directions), jax.random.key(0))
        lattice = ReferenceNUTS(np_log_density, np_grad, z, p, case["eps"], np.ones(2))
        lo = hi = None
        for i in range(-16, 17):  # locate the ends on the lattice of this start
            zi = lattice.state(i)[0]
            lo = i if lo is None and np.allclose(zi, tree.left.position, atol=1e-9) else lo
            hi = i if np.allclose(zi, tree.right.position, atol=1e-9) else hi
        return dict(lo=lo, hi=hi, turning=bool(info.turning))

    expected = trajectory_of(case["z0"], case["p0"], case["directions"])
    stan = reference.trajectory(case["directions"], 4)
    assert (expected["lo"], expected["hi"]) == (stan["lo"], stan["hi"])
    different = rebuilt_from_every_state(trajectory_of, reference.state, expected, case["directions"])
    assert not different, different


# -- step size -----------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_initial_step_size_crosses_the_heuristic_target(scale):
    """Stan's heuristic returns eps with one-step acceptance >= 0.8 at eps and < 0.8 at 2 eps, for
    the momentum it draws from its key; eps follows the target's scale."""
    log_density, _, _ = gaussian(np.diag([1.0, 0.25]) / scale**2)
    position = jnp.array([0.3, -0.5]) * scale
    state = integrators.init_state(position, log_density(position), log_density)
    inverse_mass = jnp.ones(2)
    key = jax.random.key(7)
    eps = float(step_size.initial_step_size(key, state, integrators.value_and_grad(log_density), inverse_mass,
                                            jnp.asarray(1.0)))
    momentum = metric.sample_momentum(key, inverse_mass, position)
    params = lambda e: StepParams(jnp.asarray(e), inverse_mass)
    acceptance = lambda e: float(one_step_acceptance(log_density, position, momentum, params(e))[0])
    assert acceptance(eps) >= step_size.HEURISTIC_TARGET
    assert acceptance(2 * eps) < step_size.HEURISTIC_TARGET
    assert np.log2(eps) == round(np.log2(eps))  # doublings or halvings of 1
    assert 0.05 * scale < eps < 20 * scale


def test_dual_averaging_converges_to_the_target_acceptance():
    """With a synthetic acceptance function acc(eps) = exp(-eps), dual averaging's averaged step
    size converges to eps* = -log(target), where acc = target, for several targets.

    The iterate log eps_t = mu - sqrt(t)/gamma H_bar_t is shrunk toward mu = log(10 eps_0) by a bias
    of order gamma (mu - log eps*) / sqrt(t), so the check is the limit and the rate: within 1%
    after 10^5 steps, and the error 10^3 -> 10^5 steps falls by a factor near sqrt(100) = 10.
    """

    @jax.jit
    def run(target):
        def body(state, _):
            state = step_size.update(state, jnp.exp(-step_size.current(state)), target)
            return state, step_size.final(state)

        return jax.lax.scan(body, step_size.init(jnp.asarray(1.0)), None, length=100_000)[1]

    for target in (0.6, 0.8, 0.95):
        averages = np.asarray(run(target))
        error = np.abs(averages / -np.log(target) - 1)
        assert error[-1] < 0.01, (target, error[-1])
        assert 5 < error[999] / error[-1] < 20, (target, error[999], error[-1])
    # A wrong target is not reached (the check tells targets apart).
    assert abs(float(run(0.7)[-1]) / -np.log(0.8) - 1) > 0.5


def test_dual_averaging_restart():
    state = step_size.init(jnp.asarray(0.5))
    for _ in range(5):
        state = step_size.update(state, jnp.asarray(0.2), 0.8)
    restarted = step_size.restart(state, jnp.bool_(True))
    assert float(restarted.count) == 0
    np.testing.assert_allclose(restarted.mu, np.log(10 * float(step_size.current(state))), rtol=1e-12)
    kept = step_size.restart(state, jnp.bool_(False))
    assert float(kept.count) == 5


def test_gradient_state_caches_the_gradient():
    position = jnp.array([0.8, 0.2])
    state = integrators.init_state(position, banana_log_density(position), banana_log_density)
    assert isinstance(state, GradientState)
    np.testing.assert_allclose(state.log_density_grad, jax.grad(banana_log_density)(position), rtol=1e-14)



def test_a_diverging_trajectory_is_not_reported_as_turning():
    """Standard 1-d Gaussian, eps = 3 (beyond the leapfrog's stability limit 2): one step forward,
    then the backward subtree's second leaf has H - H0 > 1000 and closes a block whose momenta
    turn. Stan stops on the divergence before any U-turn check of that leaf."""
    log_density, np_log_density, np_grad = gaussian(np.eye(1))
    directions = np.array([1, -1, 1, 1, 1, 1])
    expected = ReferenceNUTS(np_log_density, np_grad, np.array([1.0]), np.array([0.5]), 3.0,
                             np.ones(1)).trajectory(directions, 6)
    assert expected["diverging"] and not expected["turning"] and expected["n_steps"] == 3
    _, info = elbox_trajectory(log_density, 6)(jnp.array([1.0]), jnp.array([0.5]), jnp.asarray(3.0), jnp.ones(1),
                                               jnp.asarray(directions), jax.random.key(0))
    assert bool(info.diverging) and int(info.n_steps) == 3
    assert not bool(info.turning)
