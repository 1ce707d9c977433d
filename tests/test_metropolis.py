"""Metropolis–Hastings: exact posteriors recovered within Monte Carlo error, the Hastings
correction checked with a negative control, determinism and input errors.

Statistical tests use fixed keys and compare |estimate - truth| / MCSE with Z, the MCSE from
ArviZ (effective sample size of the chains). With Z = 4 a correct sampler fails one comparison
in about 16,000.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import Z  # the z-threshold of the statistical tests

import elbox
from elbox.errors import InitializationError, SettingsError
from elbox.mcmc import metropolis, warmup


def z_scores(results, known):
    """(mean - exact) / mcse_mean and (sd - exact) / mcse_sd per labelled parameter."""
    table = results.summary()
    out = {}
    for label, mean in known.posterior_mean.items():
        row = table.loc[label]
        out[label] = (
            (row["mean"] - mean) / row["mcse_mean"],
            (row["sd"] - known.posterior_sd[label]) / row["mcse_sd"],
        )
    return out


@pytest.mark.parametrize("name", ["normal_normal", "beta_binomial", "linear_regression"])
def test_mh_recovers_exact_posterior_mean_and_sd(name):
    model = elbox.models.get(name)
    results = elbox.sample(model, jax.random.key(11), method="mh", chains=4, warmup=1000, draws=5000, progress=False)
    assert results.summary()["r_hat"].max() < 1.01
    for label, (z_mean, z_sd) in z_scores(results, model.known).items():
        assert abs(z_mean) < Z, (label, z_mean)
        assert abs(z_sd) < Z, (label, z_sd)


def test_acceptance_rate_reaches_target_in_one_dimension():
    # One-dimensional Gaussian target: the adapted scale gives about 0.44 acceptance.
    # The mean of 4 x 5000 acceptance probabilities has an MCSE well under 0.01; the band
    # allows for the bias of averaging log s (Jensen) rather than hitting 0.44 exactly.
    results = elbox.sample("normal_normal", jax.random.key(3), method="mh", chains=4, warmup=2000, draws=5000,
                           progress=False)
    assert abs(results.acceptance_rate - 0.44) < 0.06


# -- the Hastings correction --------------------------------------------------------------------
def run_kernel(model, proposal, key, chains=8, steps=20_000, hastings_correction=True):
    """Draws from the bare kernel (no adaptation), chains started at the exact posterior mean."""
    kernel = metropolis.build_kernel(model.flat_log_joint, hastings_correction=hastings_correction)
    start = model.ravel(model.unconstrain(model.known.posterior_mean))
    state = jax.vmap(lambda p: metropolis.init(p, model.flat_log_joint))(jnp.tile(start, (chains, 1)))

    @jax.jit
    def run(state):
        def body(state, t):
            keys = jax.random.split(jax.random.fold_in(key, t), chains)
            state, _ = jax.vmap(lambda k, s: kernel(k, s, proposal))(keys, state)
            return state, state.position[:, 0]

        return jax.lax.scan(body, state, jnp.arange(steps))[1]

    return np.asarray(run(state)).T  # (chains, steps)


def mean_z(draws, mean):
    import arviz as az

    mcse = float(az.mcse(draws, method="mean"))
    return (draws.mean() - mean) / mcse


def test_hastings_correction_with_asymmetric_proposal():
    """A drifting random walk is right only with the correction; without it the mean moves."""
    model = elbox.models.get("normal_normal")
    mean, sd = model.known.posterior_mean["mu"], model.known.posterior_sd["mu"]
    proposal = metropolis.drifting_walk(drift=0.5 * sd, scale=sd)
    key = jax.random.key(5)

    corrected = run_kernel(model, proposal, key)
    assert abs(mean_z(corrected, mean)) < Z
    assert abs(corrected.std() / sd - 1) < 0.05

    uncorrected = run_kernel(model, proposal, key, hastings_correction=False)
    # The negative control: the same draws without the correction are far off.
    assert mean_z(uncorrected, mean) > 10 * Z


def test_independence_proposal_through_sample():
    """An independence proposal (q ignores z, so it is asymmetric) gives the exact posterior."""
    model = elbox.models.get("beta_binomial")
    proposal = metropolis.independence(mean=jnp.array([-0.8]), scale=jnp.array([0.6]))
    results = elbox.sample(model, jax.random.key(8), method="mh", chains=4, warmup=200, draws=5000, proposal=proposal,
                           progress=False)
    for label, (z_mean, z_sd) in z_scores(results, model.known).items():
        assert abs(z_mean) < Z, (label, z_mean)
        assert abs(z_sd) < Z, (label, z_sd)


# -- determinism --------------------------------------------------------------------------------
def test_same_key_same_draws_whatever_the_chunks():
    key = jax.random.key(21)
    settings = dict(chains=3, warmup=100, draws=60)
    plain = elbox.sample("eight_schools", key, method="mh", progress=False, **settings)
    calls = []
    chunked = elbox.sample(
        "eight_schools", key, method="mh", chunk_size=7, progress=lambda *a: calls.append(a), **settings
    )
    assert len(calls) == -(-100 // 7) + -(-60 // 7)
    assert calls[-1][1:] == (160, 160)
    np.testing.assert_array_equal(plain.posterior["mu"].values, chunked.posterior["mu"].values)
    np.testing.assert_array_equal(plain.proposal_scale, chunked.proposal_scale)
    other = elbox.sample("eight_schools", jax.random.key(22), method="mh", progress=False, **settings)
    assert not np.array_equal(plain.posterior["mu"].values, other.posterior["mu"].values)


def test_results_container():
    results = elbox.sample("eight_schools", jax.random.key(0), method="mh", chains=2, warmup=50, draws=40,
                           progress=False)
    posterior = results.inference_data.posterior
    assert posterior["theta"].shape == (2, 40, 8)
    assert posterior["tau"].shape == (2, 40)
    assert (posterior["tau"].values > 0).all()
    assert set(results.inference_data.sample_stats.data_vars) >= {"lp", "acceptance_rate"}
    assert set(results.seconds) == {"compile", "warmup", "sampling", "total"}
    assert results.seconds["total"] >= results.seconds["compile"] > 0
    assert "theta[7]" in results.parameter_table()


# -- adaptation schedule ------------------------------------------------------------------------
def test_warmup_windows_follow_stan():
    schedule = warmup.warmup_schedule(1000)
    ends = np.flatnonzero(schedule.window_end) + 1
    np.testing.assert_array_equal(ends, [100, 150, 250, 450, 950])
    assert not schedule.in_slow_window[:75].any() and not schedule.in_slow_window[950:].any()
    assert schedule.in_slow_window[75:950].all()
    short = warmup.warmup_schedule(100)
    assert short.in_slow_window.sum() == 100 - 15 - 10
    assert not warmup.warmup_schedule(10).window_end.any()


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(chains=0), "chains"),
        (dict(draws=-5), "draws"),
        (dict(warmup=-1), "warmup"),
        (dict(scale=0.0), "scale"),
        (dict(scale=-1.0), "scale"),
        (dict(method="nuts-ish"), "method"),
        (dict(target_acceptance=1.5), "target_acceptance"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(SettingsError, match=message):
        elbox.sample("normal_normal", jax.random.key(0), progress=False, **{"method": "mh", **settings})


def wall_model():
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.factor("wall", jnp.where(mu > 3.0, -jnp.inf, 0.0))


def test_non_finite_initial_point_names_the_site():
    with pytest.raises(InitializationError, match="wall"):
        elbox.sample(wall_model, jax.random.key(0), method="mh", init={"mu": 4.0}, progress=False)


def test_random_initialisation_failure_names_the_site():
    def nowhere():
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=jnp.array(1.0))
        numpyro.factor("impossible", -jnp.inf)

    with pytest.raises(InitializationError, match="impossible"):
        elbox.sample(nowhere, jax.random.key(0), method="mh", progress=False)
