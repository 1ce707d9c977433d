"""A diffusion model's own likelihood beside its bound: the probability-flow ODE (closed form for
Gaussian data with the exact optimal denoiser, Hutchinson's trace against the exact one, the
solver's stability under tighter tolerances, a solver that fails) and the importance-weighted
bound over the noisy path (K = 1 is the ELBO, K up tends to the T-step model's -log p, which for
Gaussian data is in closed form); the report, JSON and CLI that show them side by side."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Z
from test_diffusion_vdm import _optimal_gaussian_model

from elbox.diffusion import elbo, vdm
from elbox.diffusion.bound import importance_weighted_bounds
from elbox.diffusion.decoders import Gaussian
from elbox.diffusion.evaluate import evaluate_run, iw_sizes
from elbox.diffusion.likelihood import DDPMFlow, VDMFlow, ode_nll
from elbox.diffusion.networks import MLPDenoiser, as_eps_fn
from elbox.diffusion.run import train_run
from elbox.diffusion.schedules import cosine_schedule
from elbox.errors import FittingError, SettingsError

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


# -- the ODE against closed forms -------------------------------------------------------------------
def _gaussian_flow_nll(x, mu, s, gamma_start, gamma_end):
    """-log p(x) of the ODE model for data N(mu, s^2) with the exact score: the flow is the affine map
    z -> alpha_1 mu + sqrt(v_1 / v_0) (z - alpha_0 mu), v_t = alpha_t^2 s^2 + sigma_t^2, from
    z_0 = alpha_0 x, and the model's density is N(0, I) pulled back through it."""
    a0_sq, a1_sq = 1 / (1 + np.exp(gamma_start)), 1 / (1 + np.exp(gamma_end))
    v0 = a0_sq * s**2 + (1 - a0_sq)
    v1 = a1_sq * s**2 + (1 - a1_sq)
    z0 = np.sqrt(a0_sq) * x
    z1 = np.sqrt(a1_sq) * mu + np.sqrt(v1 / v0) * (z0 - np.sqrt(a0_sq) * mu)
    d = x.shape[-1]
    log_p = (-0.5 * np.sum(z1**2, -1) - d * HALF_LOG_TWO_PI + 0.5 * d * np.log(v1 / v0)
             + 0.5 * d * np.log(a0_sq))
    return -log_p


def test_ode_likelihood_of_the_optimal_vdm_on_gaussian_data_matches_its_closed_form():
    s, gamma_0, gamma_1, d = 0.7, -8.0, 6.0, 2
    model = _optimal_gaussian_model(s, gamma_0, gamma_1)
    x = s * jax.random.normal(jax.random.key(11), (300, d))
    result = ode_nll(jax.random.key(0), VDMFlow(model), x, rtol=1e-5, atol=1e-5)
    expected = _gaussian_flow_nll(np.asarray(x, np.float64), 0.0, s, gamma_0, gamma_1)
    assert result.trace == "exact"
    np.testing.assert_allclose(result.per_example, expected, atol=2e-3)
    # The flow model is not the data's density (its end is N(0, I), not p_1), but close to it here.
    entropy = d * 0.5 * math.log(2 * math.pi * math.e * s**2)
    assert abs(result.nats.value - entropy) < Z * result.nats.stderr


class _OptimalDDPMNetwork(eqx.Module):
    """E[eps | z] for data N(mu, s^2 I) at the fractional step tau of a DDPMFlow, reading gamma
    back from tau by the inverse of the flow's map (linear between the steps' gammas)."""

    gammas: jax.Array
    mu: float = eqx.field(static=True)
    s: float = eqx.field(static=True)

    def __call__(self, z, tau, T):
        gamma = jnp.interp(tau, jnp.arange(1, T + 1, dtype=z.dtype), self.gammas)
        alpha_sq, sigma_sq = jax.nn.sigmoid(-gamma), jax.nn.sigmoid(gamma)
        return jnp.sqrt(sigma_sq) * (z - jnp.sqrt(alpha_sq) * self.mu) / (alpha_sq * self.s**2 + sigma_sq), None


def test_ode_likelihood_of_a_ddpm_schedule_matches_the_closed_form_with_a_mean():
    mu, s, d, T = 0.5, 0.3, 3, 100
    schedule = cosine_schedule(T)
    flow = DDPMFlow(None, schedule)
    flow = eqx.tree_at(lambda f: f.network, flow, _OptimalDDPMNetwork(flow.gammas, mu, s),
                       is_leaf=lambda leaf: leaf is None)
    x = mu + s * jax.random.normal(jax.random.key(3), (200, d))
    result = ode_nll(jax.random.key(0), flow, x, rtol=1e-5, atol=1e-5, solver_check_examples=0)
    gamma = np.asarray(flow.gammas, np.float64)
    expected = _gaussian_flow_nll(np.asarray(x, np.float64), mu, s, gamma[0], gamma[-1])
    np.testing.assert_allclose(result.per_example, expected, atol=2e-3)


def _rough_vdm(d, seed=0):
    """An untrained VDM whose denoiser has a full, non-symmetric Jacobian of order one."""
    key = jax.random.key(seed)
    denoiser = MLPDenoiser(key, d, width=32, depth=2, final_scale=1.0)
    return vdm.VDM(key, denoiser, gamma_0=-6.0, gamma_1=6.0, learn_schedule=False)


def test_hutchinson_estimate_agrees_with_the_exact_trace_within_its_standard_error():
    d, n = 4, 400
    flow = VDMFlow(_rough_vdm(d))
    x = jax.random.normal(jax.random.key(5), (n, d))
    exact = ode_nll(jax.random.key(1), flow, x, solver_check_examples=0)
    hutchinson = ode_nll(jax.random.key(1), flow, x, exact_trace_max_dim=0, num_probes=2, solver_check_examples=0)
    assert exact.trace == "exact" and hutchinson.trace == "hutchinson" and hutchinson.num_probes == 2
    difference = hutchinson.per_example - exact.per_example
    assert np.std(difference) > 1e-3  # the probes do add noise here (a diagonal Jacobian would not)
    assert abs(difference.mean()) < Z * hutchinson.stderr_probes
    # The reported share of the probes is the spread of the differences (chi-square, 399 d.o.f.).
    ratio = np.std(difference, ddof=1) / math.sqrt(n) / hutchinson.stderr_probes
    assert 1 - Z * math.sqrt(0.5 / n) < ratio < 1 + Z * math.sqrt(0.5 / n) + 0.1, ratio


def _tolerance_shifts(flow, x):
    """The answer at the default tolerances (its solver check on every example), and how much each
    example's answer moves when both tolerances are divided by ten."""
    loose = ode_nll(jax.random.key(2), flow, x, solver_check_examples=x.shape[0])
    tight = ode_nll(jax.random.key(2), flow, x, rtol=loose.rtol / 10, atol=loose.atol / 10, solver_check_examples=0)
    return loose, tight.per_example - loose.per_example


def test_the_answer_is_stable_when_the_tolerances_are_tightened_tenfold():
    d = 2
    model = _rough_vdm(d, seed=1)
    flow = VDMFlow(model)
    # Standard normal inputs: every example's answer moves by far less than 0.01 nats, and the
    # solver check reports exactly the shifts seen.
    loose, shifts = _tolerance_shifts(flow, jax.random.normal(jax.random.key(6), (200, d)))
    assert np.max(np.abs(shifts)) < 1e-2
    assert loose.solver_error == pytest.approx(abs(shifts.mean()), rel=1e-6, abs=1e-9)
    assert loose.solver_error_per_example == pytest.approx(np.mean(np.abs(shifts)), rel=1e-6)
    # This untrained model's density is some 20 times wider than those inputs, so their -log p
    # hardly varies (standard error 2e-4 nats) and says nothing of a test set's spread. The model's
    # own draws have the spread of data that a model describes: there the solver moves the mean
    # far less than the data's standard error, and the report says the data dominate.
    loose, shifts = _tolerance_shifts(flow, vdm.sample(jax.random.key(6), model, 200, d, T=1000))
    assert abs(shifts.mean()) < 0.1 * loose.nats.stderr
    assert loose.dominant_error == "data"


def test_a_solver_that_runs_out_of_steps_says_where_and_what_to_try():
    flow = VDMFlow(_rough_vdm(2))
    with pytest.raises(FittingError, match=r"stopped at the noise level .* rtol = atol = 0\.001.*max_steps"):
        ode_nll(jax.random.key(0), flow, jnp.ones((3, 2)), max_steps=3)
    with pytest.raises(SettingsError, match="num_probes"):
        ode_nll(jax.random.key(0), flow, jnp.ones((3, 2)), num_probes=1)


def test_dequantised_bound_is_the_density_bound_shifted_by_the_bin_width():
    """With bins of width w, the bound is -log p(x + u) - d log w with u ~ U(-w/2, w/2)^d."""
    s, gamma_0, gamma_1, d, w = 0.7, -8.0, 6.0, 2, 0.05
    model = _optimal_gaussian_model(s, gamma_0, gamma_1)
    x = jnp.round(s * jax.random.normal(jax.random.key(12), (2000, d)) / w) * w
    result = ode_nll(jax.random.key(0), VDMFlow(model), x, bin_width=w, solver_check_examples=0)
    assert result.dequantized
    # P(bin) under N(0, s^2) per dimension, exactly; the bound lies above -log P, but by little for narrow bins.
    from scipy.stats import norm
    xs = np.asarray(x, np.float64)
    exact = -np.sum(np.log(norm.cdf((xs + w / 2) / s) - norm.cdf((xs - w / 2) / s)), axis=1)
    gap = result.per_example - exact
    assert gap.mean() > -Z * gap.std() / math.sqrt(gap.size)
    assert gap.mean() < 0.02


# -- the importance-weighted bound ------------------------------------------------------------------
def _t_step_gaussian_nll(x, s, gamma_0, gamma_1, T):
    """-log p(x) of the T-step VDM with the optimal denoiser for N(0, s^2) data: a linear Gaussian
    chain, z_s = a z_t + N(0, c sigma_s^2) with a = alpha_s / alpha_t (1 - sigma_t c k_t) and
    eps_hat = k_t z, k_t = sigma_t / (alpha_t^2 s^2 + sigma_t^2); then x | z_0 ~ N(z_0 / alpha_0, e^gamma_0)."""
    gammas = np.linspace(gamma_0, gamma_1, T + 1)
    variance = 1.0
    for i in range(T, 0, -1):
        g_t, g_s = gammas[i], gammas[i - 1]
        a_t, s_t = np.sqrt(1 / (1 + np.exp(g_t))), np.sqrt(1 / (1 + np.exp(-g_t)))
        a_s, s_s = np.sqrt(1 / (1 + np.exp(g_s))), np.sqrt(1 / (1 + np.exp(-g_s)))
        c = -np.expm1(g_s - g_t)
        k = s_t / (a_t**2 * s**2 + s_t**2)
        a = a_s / a_t * (1 - s_t * c * k)
        variance = a**2 * variance + c * s_s**2
    a_0 = np.sqrt(1 / (1 + np.exp(gamma_0)))
    total = variance / a_0**2 + np.exp(gamma_0)
    return np.sum(0.5 * np.log(2 * np.pi * total) + x**2 / (2 * total), axis=-1)


def test_importance_weighted_bounds_close_the_gap_to_the_t_step_likelihood_on_gaussian_data():
    s, gamma_0, gamma_1, d, T, n = 0.7, -5.0, 5.0, 2, 8, 400
    model = _optimal_gaussian_model(s, gamma_0, gamma_1)
    x = s * jax.random.normal(jax.random.key(21), (n, d))
    weights = vdm.path_log_weights(model, jax.random.split(jax.random.key(22), n), x, 256, T, Gaussian())
    bounds = importance_weighted_bounds(weights, iw_sizes(256))
    likelihood = _t_step_gaussian_nll(np.asarray(x, np.float64), s, gamma_0, gamma_1, T)
    elbo_t = vdm.bound_estimate(jax.random.key(23), model, x, Gaussian(), T=T)
    # K = 1 is the T-step ELBO (two independent estimates of it).
    gap = bounds[1].mean() - float(elbo_t.nats.value)
    assert abs(gap) < Z * math.hypot(bounds[1].std() / math.sqrt(n), float(elbo_t.nats.stderr))
    means = {k: float(np.mean(values - likelihood)) for k, values in bounds.items()}
    stderrs = {k: float(np.std(values - likelihood) / math.sqrt(n)) for k, values in bounds.items()}
    assert means[1] > 10 * stderrs[1]  # eight steps: a visible gap to close
    for small, large in ((1, 16), (16, 256)):
        paired = bounds[small] - bounds[large]
        assert paired.mean() > Z * paired.std() / math.sqrt(n), (small, large)
    assert means[256] > -Z * stderrs[256]  # still an upper bound on -log p_T(x)
    assert means[256] < 0.1 * means[1]  # and most of the gap is closed


def test_the_elbo_identity_tells_apart_paths_of_another_number_of_steps():
    """Negative control of the check above: weights of 4-step paths do not pass as the 8-step ELBO."""
    s, gamma_0, gamma_1, d, n = 0.7, -5.0, 5.0, 2, 400
    model = _optimal_gaussian_model(s, gamma_0, gamma_1)
    x = s * jax.random.normal(jax.random.key(21), (n, d))
    wrong = np.asarray(vdm.path_log_weights(model, jax.random.split(jax.random.key(22), n), x, 8, 4, Gaussian()))
    elbo_8 = vdm.bound_estimate(jax.random.key(23), model, x, Gaussian(), T=8)
    per_example = -wrong.mean(axis=1)
    z = (per_example.mean() - float(elbo_8.nats.value)) / math.hypot(per_example.std() / math.sqrt(n),
                                                                      float(elbo_8.nats.stderr))
    assert z > Z


def test_ddpm_importance_weighted_bound_is_its_elbo_at_one_path_and_lower_with_more():
    T, d, n = 20, 2, 200
    schedule = cosine_schedule(T)
    network = MLPDenoiser(jax.random.key(0), d, width=16, depth=1, learn_variance=True, final_scale=0.3)
    eps_fn = as_eps_fn(network, T)
    x = 0.5 * jax.random.normal(jax.random.key(1), (n, d))
    weights = elbo.path_log_weights(eps_fn, schedule, jax.random.split(jax.random.key(2), n), x, 64,
                                    "learned_range", Gaussian())
    bounds = importance_weighted_bounds(weights, [1, 8, 64])
    bound = elbo.bound_estimate(jax.random.key(3), schedule, eps_fn, x, variance="learned_range")
    gap = bounds[1].mean() - float(bound.nats.value)
    assert abs(gap) < Z * math.hypot(bounds[1].std() / math.sqrt(n), float(bound.nats.stderr))
    for small, large in ((1, 8), (8, 64)):
        paired = bounds[small] - bounds[large]
        assert paired.mean() > Z * paired.std() / math.sqrt(n)


def test_grouped_estimates_use_every_path():
    weights = np.log(np.array([[1.0, 3.0, 2.0, 2.0]]))
    bounds = importance_weighted_bounds(weights, [1, 2, 4])
    assert bounds[1][0] == pytest.approx(-np.mean(weights))
    assert bounds[2][0] == pytest.approx(-0.5 * (np.log(2.0) + np.log(2.0)))
    assert bounds[4][0] == pytest.approx(-np.log(2.0))
    assert iw_sizes(256) == [1, 16, 256] and iw_sizes(100) == [1, 16, 100] and iw_sizes(1) == [1]


# -- the report ----------------------------------------------------------------------------------------
TINY = {"T": 20, "width": 32, "depth": 2, "batch_size": 128, "checkpoint_every": 200}


@pytest.fixture(scope="module")
def gmm8_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "gmm8"
    train_run("gmm8", 300, 0, out, progress=False, recipe_overrides=TINY)
    return out


def _check_side_by_side(report, test_nll_known=True):
    rows = {row["name"]: row for row in report.side_by_side["rows"]}
    for row in rows.values():
        assert math.isfinite(row["nats_per_dim"]) and row["stderr_nats_per_dim"] > 0
    ode = report.likelihood
    assert ode["num_examples"] == report.num_examples and ode["stderr_nats_per_dim"] > 0
    assert ode["error_dominated_by"] in ("data", "probes", "solver")
    bounds = report.importance_weighted["bounds"]
    assert [b["K"] for b in bounds] == [1, 16, 64]
    # IW_K non-increasing in K (as bounds on -log p) and below the T-step bound, paired on the same examples.
    order = [rows["iw_64"], rows["iw_16"], rows["iw_1"]]
    assert order[1]["minus_previous_nats_per_dim"] > -Z * order[1]["minus_previous_stderr"]
    assert order[2]["minus_previous_nats_per_dim"] > -Z * order[2]["minus_previous_stderr"]
    t_step = rows["elbo_20_steps"]
    assert t_step["previous"] == "iw_1"
    assert t_step["minus_previous_nats_per_dim"] > -Z * t_step["minus_previous_stderr"]
    if test_nll_known:  # no model beats the data's own density
        assert rows["ode_nll"]["previous"] == "test_nll"
        assert rows["ode_nll"]["minus_previous_nats_per_dim"] > -3 * rows["ode_nll"]["minus_previous_stderr"]


def test_report_shows_likelihood_and_bounds_side_by_side_on_gmm8(gmm8_run):
    report = evaluate_run(gmm8_run, max_examples=400, likelihood=True, iw=64, iw_max_examples=40)
    _check_side_by_side(report)
    names = [row["name"] for row in report.side_by_side["rows"]]
    assert names == ["test_nll", "ode_nll", "iw_64", "iw_16", "iw_1", "elbo_20_steps", "elbo_continuous"]
    assert report.side_by_side["num_examples"] == 40
    assert report.likelihood["trace"] == "exact" and not report.likelihood["is_bound"]


def test_report_on_a_users_npy_file_against_its_known_density(gmm8_run, tmp_path):
    """A user's file of draws from a known density (a correlated Gaussian): the ODE's -log p may
    not beat the exact -log p of the same rows."""
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    rows = rng.multivariate_normal([0.5, -0.5], cov, size=300)
    path = tmp_path / "mine.npy"
    np.save(path, rows)
    report = evaluate_run(gmm8_run, data_path=path, likelihood=True, iw=64, iw_max_examples=40)
    assert report.test_nll_per_dim is None and report.side_by_side["rows"][0]["name"] == "ode_nll"
    _check_side_by_side(report, test_nll_known=False)
    from scipy.stats import multivariate_normal
    exact = -multivariate_normal([0.5, -0.5], cov).logpdf(rows) / 2
    ode = report.likelihood
    paired_gap = np.mean(ode["nats_per_dim"] - exact.mean())
    assert paired_gap > -3 * ode["stderr_nats_per_dim"] - 3 * exact.std() / math.sqrt(exact.size)


def test_cli_elbo_with_likelihood_and_iw_writes_text_json_and_plot(gmm8_run, tmp_path, run_cli):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    result = run_cli("diffusion", "elbo", str(gmm8_run), "--max-examples", "200", "--likelihood", "--iw", "16",
                     "--iw-examples", "20", "--json", str(out_json), "--plot", str(out_png))
    assert result.status == 0, result.err
    assert "probability-flow ODE" in result.out and "side by side" in result.out and "-IW_16" in result.out
    data = json.loads(out_json.read_text())
    assert {"nats_per_dim", "bits_per_dim", "stderr_nats_per_dim", "solver_error_nats_per_dim",
            "error_dominated_by"} <= set(data["likelihood"])
    assert data["importance_weighted"]["num_paths"] == 16 and data["side_by_side"]["num_examples"] == 20
    assert out_png.stat().st_size > 10_000


def test_cli_refuses_iw_zero_and_warns_about_ignored_options(gmm8_run, run_cli):
    result = run_cli("diffusion", "elbo", str(gmm8_run), "--iw", "0")
    assert result.status == 2 and "1" in result.err
    result = run_cli("diffusion", "elbo", str(gmm8_run), "--max-examples", "20", "--rtol", "1e-4")
    assert result.status == 0 and "--rtol is ignored without --likelihood" in result.err


def test_a_model_kind_without_a_score_is_named(gmm8_run, monkeypatch):
    from elbox.diffusion import evaluate

    monkeypatch.delitem(evaluate.FLOWS, "vdm")
    with pytest.raises(SettingsError, match="a vdm model has no score"):
        evaluate_run(gmm8_run, max_examples=5, likelihood=True)


@pytest.mark.slow
def test_a_model_trained_on_a_users_npy_file_does_not_beat_its_density(tmp_path):
    """Train on a user's file of draws from a known density (a two-component Gaussian mixture in
    2-D), evaluate on held-out draws: the ODE's -log p is not below the exact -log p of the same
    rows (paired, 3 standard errors), the importance-weighted bounds fall with K and stay below
    the T-step bound."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(1)
    means, covs = [np.array([-1.0, 0.0]), np.array([1.5, 1.0])], [np.diag([0.3, 0.6]), np.array([[0.4, 0.3],
                                                                                                  [0.3, 0.5]])]

    def draw(n):
        which = rng.integers(0, 2, n)
        return np.stack([rng.multivariate_normal(means[k], covs[k]) for k in which])

    def nll(x):
        parts = [multivariate_normal(m, c).logpdf(x) + np.log(0.5) for m, c in zip(means, covs, strict=True)]
        return -logsumexp(np.stack(parts), axis=0) / 2

    train_path, test_path = tmp_path / "train.npy", tmp_path / "test.npy"
    np.save(train_path, draw(8000))
    test = draw(500)
    np.save(test_path, test)
    out = tmp_path / "run"
    train_run(train_path, 4000, 0, out, progress=False,
              recipe_overrides={"width": 64, "depth": 2, "T": 200, "batch_size": 256, "checkpoint_every": 4000})
    report = evaluate_run(out, data_path=test_path, likelihood=True, iw=256, iw_max_examples=50)
    rows = {row["name"]: row for row in report.side_by_side["rows"]}
    # Listed as iw_256, iw_16, iw_1, elbo_200_steps: each at least the row above, paired.
    for name in ("iw_16", "iw_1", "elbo_200_steps"):
        assert rows[name]["minus_previous_nats_per_dim"] > -Z * rows[name]["minus_previous_stderr"], name
    from elbox.diffusion.evaluate import likelihood_run
    from elbox.diffusion.run_folder import load_run

    run = load_run(out)
    ode = likelihood_run(run, jax.random.key(0), test.astype(np.float32))
    gap = ode.per_example / 2 - run.meta["scaling"]["log_jacobian_per_dim"] - nll(test)
    assert gap.mean() > -3 * gap.std() / math.sqrt(gap.size)
    assert report.likelihood["nats_per_dim"] == pytest.approx(gap.mean() + nll(test).mean(), abs=1e-6)
