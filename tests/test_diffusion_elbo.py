"""Diffusion ELBO: the three-term decomposition against a naive path estimate, the bound for
Gaussian data against its closed form, and the training losses' unbiasedness.

Statistical checks use fixed keys and |estimate - truth| <= Z standard errors (the combined
standard error when both sides are Monte Carlo estimates).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Z

from elbox.diffusion.decoders import DiscretizedGaussian, Gaussian, gaussian_log_likelihood
from elbox.diffusion.elbo import (
    ESTIMATOR_ALL_STEPS,
    ESTIMATOR_SAMPLED_STEP,
    ImportanceHistory,
    bits_per_dim,
    bound_estimate,
    denoising_term,
    exact_terms,
    importance_probabilities,
    init_importance_history,
    loss_hybrid,
    loss_simple,
    loss_vlb_importance,
    loss_vlb_uniform,
    prior_term,
    reconstruction_term,
    term_given_noise,
    update_importance_history,
)
from elbox.diffusion.networks import MLPDenoiser, as_eps_fn
from elbox.diffusion.process import coefficient, p_mean_variance
from elbox.diffusion.schedules import linear_schedule, schedule_from_betas
from elbox.errors import SettingsError
from elbox.estimate import mean_and_stderr

SMALL = schedule_from_betas(np.linspace(0.05, 0.4, 10))  # T = 10, alpha_bar_T = 0.06


def tiny_mlp(d, T, seed=0, hidden=16):
    """A fixed random MLP eps_fn(x_t, t) -> (eps_hat, v), v in (-1, 1)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(d + 2, hidden)) / np.sqrt(d + 2)
    b1 = 0.1 * rng.normal(size=hidden)
    w2 = 0.5 * rng.normal(size=(hidden, 2 * d)) / np.sqrt(hidden)

    def eps_fn(xt, t):
        phase = 2 * jnp.pi * jnp.asarray(t, xt.dtype) / T
        features = jnp.concatenate([xt, jnp.stack([jnp.sin(phase), jnp.cos(phase)])])
        h = jnp.tanh(features @ w1.astype(xt.dtype) + b1.astype(xt.dtype))
        out = h @ w2.astype(xt.dtype)
        return out[:d], jnp.tanh(out[d:])

    return eps_fn


def combined_z(a, b):
    return abs(a.value - b.value) / math.hypot(a.stderr, b.stderr)


def naive_negative_elbo(key, schedule, eps_fn, x0, variance, decoder):
    """log q(x_{1:T} | x0) - log p_theta(x_{0:T}) on one path drawn by composing single steps."""
    T = schedule.num_steps
    z = jax.random.normal(key, (T,) + x0.shape, x0.dtype)
    betas = jnp.asarray(schedule.betas, x0.dtype)

    def forward(x_prev, inputs):
        beta, z_t = inputs
        mean = jnp.sqrt(1 - beta) * x_prev
        x = mean + jnp.sqrt(beta) * z_t
        return x, (x, jnp.sum(gaussian_log_likelihood(x, mean, 0.5 * jnp.log(beta))))

    _, (path, log_q_steps) = jax.lax.scan(forward, x0, (betas, z))
    log_p = jnp.sum(gaussian_log_likelihood(path[-1], 0.0, 0.0))

    def reverse(t, x_t, x_prev):
        eps_hat, v = eps_fn(x_t, t)
        mean, _, log_var = p_mean_variance(schedule, x_t, t, eps_hat, variance, v)
        return jnp.sum(gaussian_log_likelihood(x_prev, mean, 0.5 * log_var))

    log_p += jnp.sum(jax.vmap(reverse)(jnp.arange(2, T + 1), path[1:], path[:-1]))
    eps_hat, v = eps_fn(path[0], 1)
    mean, _, log_var = p_mean_variance(schedule, path[0], 1, eps_hat, variance, v)
    log_p += jnp.sum(decoder.log_likelihood(x0, mean, 0.5 * log_var))
    return jnp.sum(log_q_steps) - log_p


# --- the decomposition -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "variance, decoder, x0",
    [
        ("learned_range", Gaussian(), [0.3, -0.8]),
        ("beta", DiscretizedGaussian(bin_width=0.25, low=-1.0, high=1.0), [0.25, -1.0]),
    ],
    ids=["gaussian-learned_range", "discretized-beta"],
)
def test_three_terms_equal_the_naive_path_estimate(variance, decoder, x0):
    """E_q[log q(x_{1:T} | x0) - log p_theta(x_{0:T})] by whole paths equals
    L_0 + sum_t L_{t-1} + L_T (closed-form KLs given one x_t per step)."""
    x0 = jnp.array(x0)
    eps_fn = tiny_mlp(2, SMALL.num_steps)
    n = 20_000
    keys = jax.random.split(jax.random.key(0), 2 * n)
    naive = jax.jit(jax.vmap(lambda k: naive_negative_elbo(k, SMALL, eps_fn, x0, variance, decoder)))(keys[:n])
    terms = jax.jit(jax.vmap(lambda k: exact_terms(k, SMALL, eps_fn, x0, variance, decoder)))(keys[n:])
    naive_estimate, terms_estimate = mean_and_stderr(naive), mean_and_stderr(terms["total"])
    assert combined_z(naive_estimate, terms_estimate) < Z, (naive_estimate, terms_estimate)
    np.testing.assert_allclose(
        terms["total"], terms["reconstruction"] + terms["denoising_per_step"].sum(1) + terms["prior"], rtol=1e-5
    )


def test_public_terms_agree_with_exact_terms_and_dtype_follows_input():
    eps_fn = tiny_mlp(2, SMALL.num_steps)
    x0 = jnp.array([0.3, -0.8])
    key = jax.random.key(3)
    keys = jax.random.split(key, SMALL.num_steps)
    terms = exact_terms(key, SMALL, eps_fn, x0, "learned_range")
    assert terms["total"].dtype == jnp.float32 and terms["denoising_per_step"].shape == (9,)
    np.testing.assert_allclose(reconstruction_term(keys[0], SMALL, eps_fn, x0, Gaussian(), "learned_range"),
                               terms["reconstruction"], rtol=1e-6)
    for t in (2, 7, 10):
        np.testing.assert_allclose(
            denoising_term(keys[t - 1], SMALL, eps_fn, x0, t, "learned_range"), terms["denoising_per_step"][t - 2],
            rtol=1e-5,
        )
    with pytest.raises(SettingsError, match="reconstruction_term"):
        denoising_term(key, SMALL, eps_fn, x0, 1)
    with jax.enable_x64(True):
        terms64 = exact_terms(key, SMALL, eps_fn, jnp.asarray(x0, jnp.float64), "learned_range")
        assert all(value.dtype == jnp.float64 for value in terms64.values())
        # Same noise in both precisions (random draws differ by dtype): the terms agree.
        noise = np.array([0.4, -1.1])
        for t in (1, 2, 10):
            term64, _ = term_given_noise(SMALL, eps_fn, jnp.asarray(x0, jnp.float64), t, jnp.asarray(noise),
                                         "learned_range")
            term32, _ = term_given_noise(SMALL, eps_fn, x0, t, jnp.asarray(noise, jnp.float32), "learned_range")
            assert term64.dtype == jnp.float64 and term32.dtype == jnp.float32
            np.testing.assert_allclose(float(term32), float(term64), rtol=1e-4, atol=1e-5)
    # L_T in closed form against the generic Gaussian KL.
    ab = SMALL.alpha_bars[-1]
    x = np.array([0.3, -0.8])
    expected = 0.5 * np.sum((1 - ab) + ab * x**2 - 1 - np.log(1 - ab))
    assert float(prior_term(SMALL, x0)) == pytest.approx(expected, rel=1e-5)


# --- Gaussian data: the bound in closed form -------------------------------------------------


def optimal_eps_fn(schedule, mu, s):
    """E[eps | x_t] for x0 ~ N(mu, s^2): x_t ~ N(sqrt(ab) mu, v), v = ab s^2 + 1 - ab,
    Cov(eps, x_t) = sqrt(1 - ab), so E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / v."""

    def eps_fn(xt, t):
        sqrt_ab = coefficient(schedule.sqrt_alpha_bars, t, xt)
        one_minus = coefficient(schedule.one_minus_alpha_bars, t, xt)
        v = sqrt_ab**2 * s**2 + one_minus
        return jnp.sqrt(one_minus) * (xt - sqrt_ab * mu) / v, None

    return eps_fn


def closed_form_bound(schedule, mu, s, variance):
    """The negative ELBO, in nats, of 1-D data x0 ~ N(mu, s^2) under the optimal eps_hat and a
    fixed reverse variance sigma_t^2:

        L_T     = 1/2 [ab_T (mu^2 + s^2 - 1) - log(1 - ab_T)]
        L_{t-1} = 1/2 [log(sigma_t^2 / bt_t) + bt_t / sigma_t^2 - 1 + c_t^2 ab_t s^2 / (v_t sigma_t^2)]
        L_0     = 1/2 log(2 pi sigma_1^2) + Var(x0 | x1) / (2 sigma_1^2),  Var(x0 | x1) = s^2 (1 - ab_1) / v_1

    with bt_t = beta_tilde_t, c_t = beta_t / (sqrt(alpha_t) sqrt(1 - ab_t)) (means differ by
    c_t (eps_hat - eps)), v_t = ab_t s^2 + 1 - ab_t, and E[(eps - E[eps | x_t])^2] =
    Var(eps | x_t) = 1 - (1 - ab_t) / v_t = ab_t s^2 / v_t. The decoder's mean is E[x0 | x1].
    """
    ab, beta_tilde, c = schedule.alpha_bars, schedule.posterior_variance, schedule.reverse_mean_coef_eps
    sigma2 = schedule.betas if variance == "beta" else np.exp(schedule.posterior_log_variance_clipped)
    v = ab * s**2 + 1 - ab
    prior = 0.5 * (ab[-1] * (mu**2 + s**2 - 1) - np.log1p(-ab[-1]))
    denoising = 0.5 * (
        np.log(sigma2[1:] / beta_tilde[1:]) + beta_tilde[1:] / sigma2[1:] - 1
        + c[1:] ** 2 * ab[1:] * s**2 / (v[1:] * sigma2[1:])
    )
    reconstruction = 0.5 * np.log(2 * np.pi * sigma2[0]) + s**2 * (1 - ab[0]) / v[0] / (2 * sigma2[0])
    terms = {"prior": prior, "denoising": denoising.sum(), "reconstruction": reconstruction}
    return prior + denoising.sum() + reconstruction, terms


GAUSSIAN_CASES = [(0.5, 0.3, "beta_tilde"), (0.5, 0.3, "beta"), (0.0, 1.0, "beta")]


@pytest.mark.parametrize("mu, s, variance", GAUSSIAN_CASES)
def test_gaussian_data_bound_matches_its_closed_form(mu, s, variance):
    """For x0 ~ N(mu, s^2) the bound with the optimal eps_hat is analytic; the estimate over
    4000 examples matches it, and both lie above the entropy 1/2 log(2 pi e s^2) (the NLL floor).
    For N(0, 1) data with sigma_t^2 = beta_t the reverse model is the exact reverse process, so
    the bound equals the entropy (a zero gap)."""
    schedule = linear_schedule(1000)
    closed, _ = closed_form_bound(schedule, mu, s, variance)
    entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
    data = mu + s * jax.random.normal(jax.random.key(1), (4000, 1))
    eps_fn = optimal_eps_fn(schedule, mu, s)
    result = bound_estimate(jax.random.key(2), schedule, eps_fn, data, variance=variance)
    assert result.estimator == ESTIMATOR_ALL_STEPS and result.num_dims == 1
    assert abs(result.nats.value - closed) <= Z * result.nats.stderr, (result.nats, closed)
    total = result.reconstruction + result.denoising + result.prior
    assert abs(total - result.nats.value) < 1e-6 * abs(result.nats.value) + 1e-9
    # Above the floor (the entropy), and on it exactly when the model is the true reverse process.
    assert closed >= entropy - 1e-12
    if (mu, s, variance) == (0.0, 1.0, "beta"):
        assert closed == pytest.approx(entropy, abs=1e-12)
    assert result.nats.value > entropy - Z * result.nats.stderr
    # With sampled steps: unbiased for the same bound (larger standard error).
    sampled = bound_estimate(jax.random.key(3), schedule, eps_fn, data[:1000], variance=variance, num_t_samples=200)
    assert sampled.estimator == ESTIMATOR_SAMPLED_STEP
    assert abs(sampled.nats.value - closed) <= Z * sampled.nats.stderr, (sampled.nats, closed)
    assert result.bits_per_dim.value == pytest.approx(result.nats_per_dim.value / math.log(2), rel=1e-12)
    assert bits_per_dim(math.log(2)) == pytest.approx(1.0)


def test_gaussian_data_gap_matches_its_closed_form():
    """The gap bound(x0) + log p(x0), averaged over data, against closed form minus entropy; the
    per-example log density removes most of the spread across x0, so this is the sharper test."""
    mu, s = 0.5, 0.3
    schedule = linear_schedule(1000)
    data = mu + s * jax.random.normal(jax.random.key(4), (4000, 1))
    eps_fn = optimal_eps_fn(schedule, mu, s)
    log_density = np.asarray(jax.scipy.stats.norm.logpdf(data[:, 0], mu, s), np.float64)
    for variance in ("beta_tilde", "beta"):
        closed, _ = closed_form_bound(schedule, mu, s, variance)
        entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
        keys = jax.random.split(jax.random.key(5), data.shape[0])
        def total(k, x, variance=variance):
            return exact_terms(k, schedule, eps_fn, x, variance)["total"]

        totals = jax.jit(jax.vmap(total))(keys, data)
        gap = mean_and_stderr(np.asarray(totals, np.float64) + log_density)
        assert abs(gap.value - (closed - entropy)) <= Z * gap.stderr, (variance, gap, closed - entropy)
        if variance == "beta_tilde":
            # sigma_t^2 = beta_tilde_t is well below the true reverse variance: a clear gap.
            assert gap.value > Z * gap.stderr
        else:
            # sigma_t^2 = beta_t is close to it for s = 0.3: the gap (0.004 nats) is within noise.
            assert gap.value > -Z * gap.stderr


# --- training losses -------------------------------------------------------------------------

X0 = jnp.array([0.3, -0.8])
EPS_FN = tiny_mlp(2, SMALL.num_steps, seed=1)


@pytest.fixture(scope="module")
def exact_sum():
    keys = jax.random.split(jax.random.key(10), 20_000)
    terms = jax.jit(jax.vmap(lambda k: exact_terms(k, SMALL, EPS_FN, X0, "learned_range")))(keys)
    per_step = np.concatenate(
        [np.asarray(terms["reconstruction"])[:, None], np.asarray(terms["denoising_per_step"])], 1
    ).mean(0)
    return mean_and_stderr(terms["total"]), per_step


def test_loss_vlb_uniform_is_unbiased(exact_sum):
    truth, _ = exact_sum
    keys = jax.random.split(jax.random.key(11), 100_000)
    losses, info = jax.jit(jax.vmap(lambda k: loss_vlb_uniform(k, SMALL, EPS_FN, X0, "learned_range")))(keys)
    estimate = mean_and_stderr(losses)
    assert combined_z(estimate, truth) < Z, (estimate, truth)
    counts = np.bincount(np.asarray(info.t), minlength=11)[1:]
    assert counts.min() > 0 and np.all(np.asarray(info.weight) == 10)


def fixed_history(weights):
    """A full history whose every row t holds the constant weights[t - 1] (so p_t propto weights)."""
    values = jnp.repeat(jnp.asarray(weights, jnp.float32)[:, None], 10, axis=1)
    return ImportanceHistory(values, jnp.full((len(weights),), 10, jnp.int32))


def test_loss_vlb_importance_is_unbiased_and_its_unweighted_form_is_not(exact_sum):
    truth, per_step = exact_sum
    # p concentrated on the steps with the smallest terms, so that leaving out 1 / p_t is biased.
    weights = 1.0 / np.maximum(np.abs(per_step), 1e-3) ** 2
    history = fixed_history(weights)
    p = np.asarray(importance_probabilities(history))
    assert p.max() / p.min() > 3
    keys = jax.random.split(jax.random.key(12), 100_000)
    losses, info = jax.jit(jax.vmap(lambda k: loss_vlb_importance(k, SMALL, EPS_FN, X0, history, "learned_range")))(
        keys
    )
    estimate = mean_and_stderr(losses)
    assert combined_z(estimate, truth) < Z, (estimate, truth)
    np.testing.assert_allclose(np.asarray(info.weight), 1 / p[np.asarray(info.t) - 1], rtol=1e-5)
    # Negative control: T term(t) + L_T with t ~ p (no importance weight) misses the bound.
    prior = float(prior_term(SMALL, X0))
    unweighted = mean_and_stderr(SMALL.num_steps * np.asarray(info.term, np.float64) + prior)
    assert combined_z(unweighted, truth) > Z, (unweighted, truth)


def test_importance_history_update_and_probabilities():
    T, length = 4, 10
    rng = np.random.default_rng(0)
    history = init_importance_history(T, length)
    reference = [[] for _ in range(T)]
    for _ in range(12):
        t = rng.integers(1, T + 1, size=8)
        terms = rng.normal(size=8).astype(np.float32)
        p = np.asarray(importance_probabilities(history))
        if min(len(r) for r in reference) < length:
            np.testing.assert_allclose(p, 1 / T)
        history = update_importance_history(history, jnp.asarray(t), jnp.asarray(terms))
        for step, term in zip(t, terms):
            reference[step - 1] = (reference[step - 1] + [term])[-length:]
    np.testing.assert_array_equal(np.asarray(history.counts), [len(r) for r in reference])
    for row, values in enumerate(reference):
        np.testing.assert_array_equal(np.asarray(history.values[row, : len(values)]), values)
    assert all(len(r) == length for r in reference)
    rms = np.sqrt([np.mean(np.square(r)) for r in reference])
    expected = 0.999 * rms / rms.sum() + 0.001 / T
    np.testing.assert_allclose(np.asarray(importance_probabilities(history)), expected, rtol=1e-5)


def test_hybrid_loss_trains_the_mean_by_l_simple_and_the_variance_by_l_vlb():
    """With the same key the three losses draw the same t and noise; d/d(mean params) of
    L_hybrid is that of L_simple (the vlb part sees a stopped mean) and d/d(variance params) is
    lambda times that of L_vlb."""
    x0 = jnp.array([0.3, -0.8, 0.5])

    def make_eps_fn(params):
        def eps_fn(xt, t):
            return params["mean"] * xt, jnp.tanh(params["var"] * xt)

        return eps_fn

    params = {"mean": jnp.float32(0.7), "var": jnp.float32(0.4)}
    for seed in range(5):
        key = jax.random.key(seed)
        g_hybrid = jax.grad(lambda p, key=key: loss_hybrid(key, SMALL, make_eps_fn(p), x0)[0])(params)
        g_simple = jax.grad(lambda p, key=key: loss_simple(key, SMALL, make_eps_fn(p), x0)[0])(params)
        g_vlb = jax.grad(lambda p, key=key: loss_vlb_uniform(key, SMALL, make_eps_fn(p), x0, "learned_range")[0])(
            params
        )
        assert float(g_simple["var"]) == 0.0
        np.testing.assert_allclose(g_hybrid["mean"], g_simple["mean"], rtol=1e-6)
        np.testing.assert_allclose(g_hybrid["var"], 0.001 * g_vlb["var"], rtol=1e-5, atol=1e-9)
        assert float(g_vlb["mean"]) != 0.0  # without the stop-gradient the vlb would move the mean
        loss, info = loss_hybrid(key, SMALL, make_eps_fn(params), x0)
        simple, simple_info = loss_simple(key, SMALL, make_eps_fn(params), x0)
        vlb, _ = loss_vlb_uniform(key, SMALL, make_eps_fn(params), x0, "learned_range")
        assert int(info.t) == int(simple_info.t)
        np.testing.assert_allclose(loss, simple + 0.001 * vlb, rtol=1e-6)


TRACES = []


class _CountingDenoiser(eqx.Module):
    """An MLPDenoiser that notes every time it is traced (Python runs only while tracing)."""

    inner: MLPDenoiser

    def __call__(self, x_t, t, num_steps):
        TRACES.append(1)
        return self.inner(x_t, t, num_steps)


def test_bound_estimate_compiles_once_for_networks_of_the_same_shapes():
    from elbox.diffusion.schedules import cosine_schedule

    schedule = cosine_schedule(10)
    data = jax.random.normal(jax.random.key(0), (8, 2))
    estimates = []
    for seed in range(3):
        net = _CountingDenoiser(MLPDenoiser(jax.random.key(seed), 2, width=8, depth=1, final_scale=1.0))
        estimates.append(bound_estimate(jax.random.key(1), schedule, as_eps_fn(net, 10), data, batch_size=8).nats.value)
    traced_once = len(TRACES)
    assert traced_once >= 1
    bound_estimate(jax.random.key(1), schedule, as_eps_fn(net, 10), data, batch_size=8)
    assert len(TRACES) == traced_once  # the three networks and a repeat: one trace
    assert len(set(estimates)) == 3  # and each network's own weights were used
