"""The continuous-time bound of variational diffusion models: the learned schedule, the closed
form for Gaussian data with the exact optimal denoiser, the discrete-time bound's limit, the
variance gradient of the schedule's shape, training and sampling."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Z

from elbox.diffusion import vdm
from elbox.diffusion.decoders import DiscretizedGaussian, Gaussian
from elbox.diffusion.networks import MLPDenoiser
from elbox.diffusion.train import train
from elbox.errors import SettingsError


def _randomised_schedule(key, learn=True):
    """A LearnedSchedule with every parameter moved away from its initial value."""
    schedule = vdm.LearnedSchedule(jax.random.key(0), -10.0, 6.0, hidden=16, learn=learn)
    params, static = eqx.partition(schedule, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [leaf + jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, leaves), static)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_learned_schedule_is_monotone_between_its_ends(seed):
    schedule = _randomised_schedule(jax.random.key(seed))
    t = jnp.linspace(0.0, 1.0, 2001)
    gamma = jax.vmap(schedule)(t)
    gamma_0, gamma_1 = schedule.ends()
    assert float(gamma[0]) == pytest.approx(float(gamma_0), abs=1e-4)
    assert float(gamma[-1]) == pytest.approx(float(gamma_1), abs=1e-4)
    assert np.all(np.diff(np.asarray(gamma)) > 0)
    _, derivative = jax.vmap(schedule.value_and_derivative)(t)
    assert np.all(np.asarray(derivative) > 0)


def test_schedule_derivative_matches_finite_differences():
    schedule = _randomised_schedule(jax.random.key(5))
    for t in (0.1, 0.5, 0.93):
        h = 1e-3
        finite = (float(schedule(jnp.float32(t + h))) - float(schedule(jnp.float32(t - h)))) / (2 * h)
        _, derivative = schedule.value_and_derivative(jnp.float32(t))
        assert float(derivative) == pytest.approx(finite, rel=2e-3)


def test_fixed_schedule_is_linear_and_gets_no_gradient():
    schedule = vdm.LearnedSchedule(jax.random.key(0), -12.0, 4.0, learn=False)
    t = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(np.asarray(jax.vmap(schedule)(t)), -12.0 + 16.0 * np.asarray(t), atol=1e-4)
    grads = jax.grad(lambda s: s(jnp.float32(0.3)))(schedule)
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree_util.tree_leaves(grads))


# -- Gaussian data with the exact optimal denoiser ---------------------------------------------------
class OptimalGaussianDenoiser(eqx.Module):
    """E[eps | z] for x ~ N(0, s^2 I): sigma z / (alpha^2 s^2 + sigma^2), reading gamma back from
    the conditioning the VDM gives (TIME_RESOLUTION (gamma - low) / (high - low))."""

    data_sd: float = eqx.field(static=True)
    low: float = eqx.field(static=True)
    high: float = eqx.field(static=True)

    def __call__(self, z, s, resolution):
        gamma = self.low + s / resolution * (self.high - self.low)
        alpha_sq, sigma_sq = jax.nn.sigmoid(-gamma), jax.nn.sigmoid(gamma)
        return jnp.sqrt(sigma_sq) * z / (alpha_sq * self.data_sd**2 + sigma_sq), None


def _gaussian_closed_forms(data_sd, gamma_0, gamma_1, T=None):
    """Expected bound per dimension for x ~ N(0, s^2), the optimal denoiser and the Gaussian decoder:

        recon = 1/2 (log 2 pi e + gamma_0),  prior = 1/2 (alpha_1^2 (s^2 - 1) + softplus(-gamma_1)),
        continuous: 1/2 int s^2 / (s^2 + e^gamma) dgamma = 1/2 [gamma - log(1 + e^gamma / s^2)] from gamma_0 to gamma_1,
        T steps (linear gamma): sum_i 1/2 expm1(gamma_i - gamma_{i-1}) s^2 / (s^2 + e^gamma_i).
    """
    s2 = data_sd**2
    recon = 0.5 * (math.log(2 * math.pi * math.e) + gamma_0)
    alpha_sq_1 = 1 / (1 + math.exp(gamma_1))
    prior = 0.5 * (alpha_sq_1 * (s2 - 1) + math.log1p(math.exp(-gamma_1)))
    if T is None:
        antiderivative = lambda g: g - math.log1p(math.exp(g) / s2)
        diffusion = 0.5 * (antiderivative(gamma_1) - antiderivative(gamma_0))
    else:
        g = np.linspace(gamma_0, gamma_1, T + 1)
        diffusion = float(np.sum(0.5 * np.expm1(np.diff(g)) * s2 / (s2 + np.exp(g[1:]))))
    return recon + diffusion + prior


def _optimal_gaussian_model(data_sd, gamma_0, gamma_1):
    denoiser = OptimalGaussianDenoiser(data_sd, gamma_0, gamma_1)
    return vdm.VDM(jax.random.key(0), denoiser, gamma_0, gamma_1, learn_schedule=False)


def test_gaussian_closed_form_tends_to_the_entropy():
    s = 0.7
    entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
    assert _gaussian_closed_forms(s, -30.0, 30.0) == pytest.approx(entropy, abs=1e-9)


@pytest.mark.parametrize("T", [None, 10, 1000])
def test_bound_of_the_optimal_model_on_gaussian_data_matches_its_closed_form(T):
    s, gamma_0, gamma_1, d = 0.7, -8.0, 6.0, 2
    model = _optimal_gaussian_model(s, gamma_0, gamma_1)
    x = s * jax.random.normal(jax.random.key(11), (4000, d))
    estimate = vdm.bound_estimate(jax.random.key(12), model, x, Gaussian(), T=T, num_t_samples=16)
    expected = _gaussian_closed_forms(s, gamma_0, gamma_1, T)
    value, stderr = estimate.nats_per_dim
    assert abs(value - expected) / stderr < Z, (value, stderr, expected)
    terms = (estimate.reconstruction + estimate.denoising + estimate.prior) / d
    assert terms == pytest.approx(value, rel=1e-6)
    if T == 10:  # ten steps are visibly looser than the continuous-time bound
        assert expected - _gaussian_closed_forms(s, gamma_0, gamma_1) > 10 * stderr


def test_discrete_time_sum_tends_to_the_continuous_integral_for_one_noise():
    # With eps fixed, sum_i 1/2 expm1(gamma_i - gamma_{i-1}) ||eps - eps_hat(z_{t_i})||^2 is a
    # Riemann sum of int 1/2 gamma'(t) ||eps - eps_hat(z_t)||^2 dt: its error shrinks like 1/T.
    net = MLPDenoiser(jax.random.key(1), 3, width=16, depth=2, final_scale=1.0)
    model = vdm.VDM(jax.random.key(2), net, -9.0, 5.0)
    model = eqx.tree_at(lambda m: m.schedule, model, _randomised_schedule(jax.random.key(4)))
    x = jnp.array([0.3, -1.2, 0.8])
    eps = jnp.array([0.5, 1.1, -0.7])

    def discrete(T):
        terms = jax.vmap(lambda i: vdm.discrete_step_term(model, x, i, T, eps))(jnp.arange(1, T + 1))
        return float(jnp.sum(terms))

    t = (jnp.arange(200_000) + 0.5) / 200_000  # midpoint rule
    gammas, slopes = jax.vmap(model.schedule.value_and_derivative)(t)
    integral = float(jnp.mean(jax.vmap(lambda g, dg: vdm.diffusion_term(model, x, g, dg, eps))(gammas, slopes)))
    sums = {T: discrete(T) for T in (250, 1000, 4000)}
    errors = [abs(sums[T] - integral) for T in (250, 1000, 4000)]
    assert errors[1] < errors[0] / 2.5 and errors[2] < errors[1] / 2.5
    # First order: Richardson's extrapolation (4 D(4T) - D(T)) / 3 removes the 1/T term.
    extrapolated = (4 * sums[4000] - sums[1000]) / 3
    assert abs(extrapolated - integral) < errors[2] / 10


def test_schedule_shape_follows_the_variance_gradient():
    with jax.enable_x64(True):  # float64: the two orders of summation agree to rounding
        _check_variance_gradient()


def _check_variance_gradient():
    net = MLPDenoiser(jax.random.key(1), 2, width=16, depth=1, final_scale=1.0, dtype=jnp.float64)
    model = vdm.VDM(jax.random.key(2), net, -9.0, 5.0, hidden=8, dtype=jnp.float64)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    batch = jax.random.normal(jax.random.key(3), (32, 2), jnp.float64)
    key = jax.random.key(4)
    value, grads = vdm.loss_and_grad(key, params, static, batch, Gaussian())

    # The same draws, differentiated directly.
    key_t, key_eps, key_eps0 = jax.random.split(key, 3)
    t = vdm.antithetic_times(key_t, 32, batch.dtype)
    eps = jax.random.normal(key_eps, batch.shape, batch.dtype)
    eps_0 = jax.random.normal(key_eps0, batch.shape, batch.dtype)

    def terms(p):
        m = eqx.combine(p, static)
        g, dg = jax.vmap(m.schedule.value_and_derivative)(t)
        diffusion = jax.vmap(lambda x, gi, dgi, e: vdm.diffusion_term(m, x, gi, dgi, e))(batch, g, dg, eps)
        gamma_0, gamma_1 = m.schedule.ends()
        recon = jax.vmap(lambda x, e: vdm.reconstruction_term(gamma_0, x, e, Gaussian()))(batch, eps_0)
        prior = jax.vmap(lambda x: vdm.prior_term(gamma_1, x))(batch)
        return recon + diffusion + prior, diffusion

    bound_grad = jax.grad(lambda p: jnp.mean(terms(p)[0]))(params)
    variance_grad = jax.grad(lambda p: jnp.mean(jnp.square(terms(p)[1])))(params)
    assert float(value) == pytest.approx(float(jnp.mean(terms(params)[0])), rel=1e-12)
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    for got, want in zip(jax.tree_util.tree_leaves(grads.denoiser), jax.tree_util.tree_leaves(bound_grad.denoiser)):
        close(got, want)
    for name in ("gamma_0", "range_raw"):
        close(getattr(grads.schedule, name), getattr(bound_grad.schedule, name))
    for name in ("slope_raw", "unit_slope_raw", "unit_offset", "unit_weight_raw"):
        close(getattr(grads.schedule, name), getattr(variance_grad.schedule, name))
        assert float(jnp.max(jnp.abs(getattr(variance_grad.schedule, name)))) > 0


def test_training_lowers_the_bound_and_resumes_exactly(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(512, 2)) * np.array([0.3, 1.0])).astype(np.float32)
    make = lambda: vdm.VDM(jax.random.key(0), MLPDenoiser(jax.random.key(1), 2, width=32, depth=2), hidden=8)
    settings = dict(network=make(), steps=60, batch_size=64, learning_rate=3e-3, loss="vdm", progress=False)
    before = vdm.bound_estimate(jax.random.key(9), make(), data[:256], num_t_samples=32)
    whole = train(jax.random.key(3), data, **settings)
    after = vdm.bound_estimate(jax.random.key(9), whole.network, data[:256], num_t_samples=32)
    gap = before.nats_per_dim.value - after.nats_per_dim.value
    assert gap > Z * math.hypot(before.nats_per_dim.stderr, after.nats_per_dim.stderr)

    folder = tmp_path / "checkpoints"
    train(jax.random.key(3), data, **{**settings, "steps": 40}, checkpoint_every=20, checkpoint_dir=folder)
    resumed = train(jax.random.key(3), data, **settings, checkpoint_every=20, checkpoint_dir=folder, resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(whole.network, eqx.is_inexact_array)),
                    jax.tree_util.tree_leaves(eqx.filter(resumed.network, eqx.is_inexact_array))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(whole.loss_trace, resumed.loss_trace)


def test_vdm_and_ddpm_losses_need_their_own_networks():
    data = np.zeros((8, 2), np.float32)
    with pytest.raises(SettingsError, match="vdm"):
        train(jax.random.key(0), data, network=MLPDenoiser(jax.random.key(1), 2, width=4, depth=1), steps=1, loss="vdm",
              progress=False)
    with pytest.raises(SettingsError, match="learn_variance"):
        vdm.VDM(jax.random.key(0), MLPDenoiser(jax.random.key(1), 2, width=4, depth=1, learn_variance=True))


def test_sampler_draws_gaussian_data_with_the_optimal_denoiser():
    # With the exact E[eps | z] for x ~ N(0, s^2 I) and many steps, ancestral draws of z_0 are
    # close to N(0, alpha_0^2 s^2 + sigma_0^2), and the returned z_0 / alpha_0 to N(0, s^2 + e^gamma_0).
    s, gamma_0, gamma_1, n = 0.7, -8.0, 8.0, 4000
    model = _optimal_gaussian_model(s, gamma_0, gamma_1)
    x = np.asarray(vdm.sample(jax.random.key(5), model, n, 2, T=400), np.float64)
    variance = s**2 + math.exp(gamma_0)
    # The prior's z_1 ~ N(0, 1) against the process's N(0, alpha_1^2 s^2 + sigma_1^2) is a
    # mismatch of 3e-4 in variance at gamma_1 = 8: far below the test's resolution.
    assert np.all(np.abs(x.mean(axis=0)) / math.sqrt(variance / n) < Z)
    assert np.all(np.abs(x.var(axis=0) - variance) / (variance * math.sqrt(2 / n)) < Z)


def test_discretised_decoder_gives_a_code_length():
    # On a grid of 5 levels, the reconstruction term with a tiny gamma_0 is about 0 nats (the bin
    # holds all the mass); with a wide one it is positive, and never negative.
    decoder = DiscretizedGaussian(0.5, -1.0, 1.0)
    x = jnp.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    eps_0 = jax.random.normal(jax.random.key(0), (200, 5))
    narrow = jax.vmap(lambda e: vdm.reconstruction_term(jnp.float32(-12.0), x, e, decoder))(eps_0)
    wide = jax.vmap(lambda e: vdm.reconstruction_term(jnp.float32(0.0), x, e, decoder))(eps_0)
    assert float(jnp.max(narrow)) < 1e-6 and float(jnp.min(narrow)) >= 0
    assert float(jnp.min(wide)) > 0


def test_grid_posterior_is_a_distribution_with_the_right_limits():
    from elbox.diffusion.decoders import GridPosterior

    decoder = GridPosterior(0.25, -1.0, 1.0)  # 9 levels
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 9)))
    mean = jnp.asarray(rng.normal(size=3))
    centres = np.linspace(-1.0, 1.0, 9)
    for log_scale in (-6.0, -1.0, 4.0):
        log_p = np.stack([np.asarray(decoder.log_likelihood(jnp.full(3, c), mean, jnp.float32(log_scale), logits))
                          for c in centres], axis=-1)
        np.testing.assert_allclose(np.exp(log_p).sum(axis=-1), 1.0, rtol=1e-5)
    # Wide: the prior. Narrow: the bin of the mean.
    wide = np.stack([np.asarray(decoder.log_likelihood(jnp.full(3, c), mean, jnp.float32(8.0), logits))
                     for c in centres], -1)
    np.testing.assert_allclose(wide, np.asarray(jax.nn.log_softmax(logits, axis=-1)), atol=1e-4)
    nearest = np.clip(np.round((np.asarray(mean) + 1) / 0.25), 0, 8)
    narrow = decoder.most_likely(mean, jnp.float32(-8.0), logits)
    np.testing.assert_allclose(np.asarray(narrow), -1.0 + 0.25 * nearest, atol=1e-6)


def test_grid_posterior_with_the_training_frequencies_starts_at_the_categorical_baseline():
    # With a wide gamma_0 the reconstruction term is the independent categorical model's code
    # length under the prior logits, whatever z_0.
    from elbox.diffusion.data import independent_categorical_baseline_bits_per_dim
    from elbox.diffusion.decoders import GridPosterior
    from elbox.diffusion.run import initial_prior_logits

    rng = np.random.default_rng(1)
    train = rng.integers(0, 5, size=(400, 3)) * np.array([1, 0, 1]) + rng.integers(0, 2, size=(400, 3))
    logits = jnp.asarray(initial_prior_logits(train, 6))
    decoder = GridPosterior(0.4, -1.0, 1.0)
    y = jnp.asarray(-1.0 + 0.4 * train, jnp.float32)
    eps = jax.random.normal(jax.random.key(0), y.shape)
    nats = jax.vmap(lambda x, e: vdm.reconstruction_term(jnp.float32(30.0), x, e, decoder, logits))(y, eps)
    bits_per_dim = float(jnp.mean(nats)) / 3 / math.log(2)
    # The baseline's smoothing is its own; both are the frequencies up to half a count.
    assert bits_per_dim == pytest.approx(independent_categorical_baseline_bits_per_dim(train, train, 6), abs=0.02)


def test_both_samplers_and_both_bounds_use_only_the_decoder_contract():
    # A decoder of no known class: its point estimate is what both ancestral samplers return,
    # and its log-likelihood is what both reconstruction terms use.
    from elbox.diffusion.elbo import reconstruction_term
    from elbox.diffusion.sample import sample
    from elbox.diffusion.schedules import cosine_schedule

    class Offset:
        def log_likelihood(self, x0, mean, log_scale, prior_logits=None):
            return jnp.full_like(mean, -7.0)

        def point_estimate(self, mean, log_scale, prior_logits=None):
            return jnp.full_like(mean, 100.0) + 0.0 * log_scale

    net = MLPDenoiser(jax.random.key(0), 2, width=4, depth=1)
    model = vdm.VDM(jax.random.key(1), net)
    assert np.all(np.asarray(vdm.sample(jax.random.key(2), model, 3, 2, T=5, decoder=Offset())) == 100.0)
    schedule = cosine_schedule(5)
    ddpm = sample(jax.random.key(2), lambda x, t, n: net(x, t, n), schedule, 3, 2, decoder=Offset())
    assert np.all(np.asarray(ddpm) == 100.0)
    x = jnp.zeros(2)
    assert float(vdm.reconstruction_term(jnp.float32(-5.0), x, x, Offset())) == 14.0
    assert float(reconstruction_term(jax.random.key(3), schedule, lambda x, t: net(x, t, 5), x, Offset())) == 14.0
    # A decoder that takes no prior over the levels says so when given one.
    with pytest.raises(SettingsError, match="prior_logits"):
        vdm.reconstruction_term(jnp.float32(-5.0), x, x, DiscretizedGaussian(0.5, -1.0, 1.0), jnp.zeros((2, 5)))


def test_the_vdm_module_does_not_reach_into_the_ddpm_sampler():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(vdm))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "elbox.diffusion.sample" not in imported and "elbox.diffusion.elbo" not in imported
