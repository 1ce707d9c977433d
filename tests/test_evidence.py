"""The evidence log p(x): SMC, AIS (and its reverse upper bound), importance sampling and the
IWAE ladder, against closed forms; agreement where no closed form exists; the CLI.

Statistical checks use fixed keys and tolerances of Z standard errors (tests/conftest.py), the
standard errors being the estimators' own: a test of an estimate is also a test of its error bar.
"""

from __future__ import annotations

import json
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import Z
from scipy import special, stats

import elbox
from elbox.cli import main
from elbox.errors import ModelError, NoPriorLikelihoodSplit, SettingsError
from elbox.estimate import log_mean_exp
from elbox.evidence import bounds, importance

EXACT = ["normal_normal", "beta_binomial", "normal_gamma", "linear_regression", "nig_regression"]
WITH_EXACT_DRAWS = ["normal_normal", "linear_regression", "nig_regression", "gaussian_evidence_100d"]


def within(estimate, exact, z=Z):
    return abs(estimate.value - exact) <= z * estimate.stderr


# -- pieces -------------------------------------------------------------------------------------
def test_log_mean_exp_matches_direct_computation_and_its_standard_error():
    rng = np.random.default_rng(0)
    values = rng.normal(size=50)
    estimate = log_mean_exp(values)
    assert estimate.value == pytest.approx(np.log(np.mean(np.exp(values))), rel=1e-12)
    weights = np.exp(values)
    assert estimate.stderr == pytest.approx(np.std(weights, ddof=1) / np.sqrt(50) / weights.mean(), rel=1e-12)


def test_iwae_bound_is_the_mean_over_groups_of_k():
    weights = np.log(np.arange(1.0, 13.0))
    bound = importance.iwae_bound(weights, 3)
    groups = np.arange(1.0, 13.0).reshape(4, 3)
    assert bound.value == pytest.approx(np.mean(np.log(groups.mean(axis=1))), rel=1e-12)


def test_prior_draws_follow_the_prior():
    """beta_binomial's p ~ Beta(2, 2): the logit of 20,000 draws, mapped back, has the prior's
    mean 1/2 and sd 1/sqrt(20) within Z standard errors."""
    model = elbox.models.get("beta_binomial")
    p = np.asarray(special.expit(model.sample_prior(jax.random.key(0), 20_000)[:, 0]), dtype=np.float64)
    sd = math.sqrt(1 / 20)
    assert abs(p.mean() - 0.5) < Z * sd / math.sqrt(p.size)
    assert abs(p.std() - sd) < Z * sd / math.sqrt(2 * p.size) * 1.5  # the sd's error, with room for kurtosis


# -- against closed forms ------------------------------------------------------------------------
@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("method", ["smc", "ais"])
def test_annealing_finds_the_exact_evidence(name, method):
    model = elbox.models.get(name)
    results = elbox.evidence(model, jax.random.key(0), method=method)
    assert results.log_evidence.stderr > 0
    # Three standard errors, as asked of these estimators (a little tighter than Z).
    assert within(results.log_evidence, model.known.log_evidence, z=3.0), results.summary_lines()
    assert not results.warnings


@pytest.mark.parametrize("name", WITH_EXACT_DRAWS)
def test_reverse_ais_bounds_the_evidence_from_above(name):
    model = elbox.models.get(name)
    results = elbox.evidence(model, jax.random.key(1), method="ais")
    upper = results.upper_bound
    assert upper is not None
    assert upper.value >= model.known.log_evidence - Z * upper.stderr
    # and the forward estimate from below, so the two pin the evidence
    assert results.log_evidence.value <= model.known.log_evidence + Z * results.log_evidence.stderr


@pytest.mark.parametrize("name", EXACT)
def test_the_ladder_elbo_iwae_evidence(name):
    """ELBO ≤ IWAE_1 ≤ IWAE_10 ≤ ... ≤ IWAE_1000 ≤ log p(x), each step within Z combined
    standard errors (IWAE_1 is the ELBO itself, estimated from other draws)."""
    model = elbox.models.get(name)
    ladder = bounds(model, jax.random.key(0))
    exact = model.known.log_evidence
    assert ladder["log_evidence"] == {"value": exact, "stderr": 0.0, "method": "exact"}
    rungs = [ladder["elbo"][ladder["iwae_family"]]] + [ladder["iwae"][k] for k in (1, 10, 100, 1000)]
    for lower, upper in zip(rungs, rungs[1:]):
        assert lower["value"] <= upper["value"] + Z * math.hypot(lower["stderr"], upper["stderr"]), ladder
    top = ladder["iwae"][1000]
    assert top["value"] <= exact + Z * top["stderr"]
    for elbo in ladder["elbo"].values():
        assert elbo["value"] <= exact + Z * elbo["stderr"]


@pytest.mark.slow
@pytest.mark.parametrize("method, name, particles", [
    ("smc", "normal_normal", None), ("ais", "normal_normal", None), ("smc", "nig_regression", None),
    ("ais", "nig_regression", None),
    # Few particles and few stages: where runs that chose β from their own particles erred together.
    ("smc", "normal_normal", 200),
])
def test_standard_errors_are_honest_over_seeds(method, name, particles):
    """z = (estimate − exact) / stderr over 20 seeds looks standard normal: its mean within
    4/sqrt(20) of 0 and its variance inside the 0.1% and 99.9% quantiles of chi²_19 / 19
    (a broken standard error, too small by half, gives a variance near 4 and fails)."""
    model = elbox.models.get(name)
    seeds = 20
    z = []
    for seed in range(seeds):
        estimate = elbox.evidence(model, jax.random.key(100 + seed), method=method,
                                  particles=particles).log_evidence
        z.append((estimate.value - model.known.log_evidence) / estimate.stderr)
    z = np.asarray(z)
    assert abs(z.mean()) <= Z / math.sqrt(seeds), z
    variance = z.var(ddof=1)
    low, high = stats.chi2.ppf([0.001, 0.999], seeds - 1) / (seeds - 1)
    assert low <= variance <= high, (variance, z)
    # negative control: the same estimates with standard errors half as large fail the check
    assert not low <= (2 * z).var(ddof=1) <= high


# -- the 100-d Gaussian: a posterior 10^4 times narrower than the prior in some coordinates -----
def test_hundred_dimensions_from_a_fitted_q():
    """From a mean-field q (fitted first, its seconds counted) the path to this posterior is short:
    SMC and AIS land within 3 standard errors of the exact value, and SMC within 0.05 nats."""
    model = elbox.models.get("gaussian_evidence_100d")
    exact = model.known.log_evidence
    by_smc = elbox.evidence(model, jax.random.key(0), method="smc", start="meanfield")
    assert by_smc.start == "meanfield q" and by_smc.seconds["fit"] > 0
    assert by_smc.seconds["total"] >= by_smc.seconds["fit"] + by_smc.seconds["running"]
    assert within(by_smc.log_evidence, exact, z=3.0), by_smc.summary_lines()
    assert abs(by_smc.log_evidence.value - exact) < 0.05
    by_ais = elbox.evidence(model, jax.random.key(0), method="ais", start="meanfield")
    assert within(by_ais.log_evidence, exact, z=3.0), by_ais.summary_lines()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_hundred_dimensions_from_the_prior_is_right_or_says_so(seed):
    """From the prior, SMC needs over a hundred stages here and its default 8 x 1000 particles
    are too few for an honest standard error. The estimate must then either lie within 3
    standard errors of the exact value or warn that the runs spread too far to trust it."""
    model = elbox.models.get("gaussian_evidence_100d")
    results = elbox.evidence(model, jax.random.key(seed), method="smc")
    assert results.diagnostics["stages"] > 50
    spread_warned = any("spread" in w for w in results.warnings)
    assert spread_warned == (results.diagnostics["run_spread"] > 0.2)
    assert within(results.log_evidence, model.known.log_evidence, z=3.0) or spread_warned, results.summary_lines()


@pytest.mark.slow
def test_hundred_dimensions_ladder():
    """ELBO ≤ IWAE_K ≤ log p(x) on the 100-d model, each family's q started near the mode."""
    model = elbox.models.get("gaussian_evidence_100d")
    ladder = bounds(model, jax.random.key(0))
    exact = model.known.log_evidence
    rungs = [ladder["elbo"][ladder["iwae_family"]]] + [ladder["iwae"][k] for k in (1, 10, 100, 1000)]
    for lower, upper in zip(rungs, rungs[1:]):
        assert lower["value"] <= upper["value"] + Z * math.hypot(lower["stderr"], upper["stderr"]), ladder
    assert rungs[-1]["value"] <= exact + Z * rungs[-1]["stderr"]
    for elbo in ladder["elbo"].values():
        assert elbo["value"] <= exact + Z * elbo["stderr"], ladder


# -- no closed form ---------------------------------------------------------------------------------
def _agree_and_lie_above_the_elbos(name, seed):
    model = elbox.models.get(name)
    by_smc = elbox.evidence(model, jax.random.key(seed), method="smc").log_evidence
    by_ais = elbox.evidence(model, jax.random.key(seed), method="ais").log_evidence
    assert abs(by_smc.value - by_ais.value) <= Z * math.hypot(by_smc.stderr, by_ais.stderr), (by_smc, by_ais)
    for family in ("meanfield", "fullrank"):
        elbo = elbox.fit(model, jax.random.key(seed), method=family, progress=False).elbo
        for estimate in (by_smc, by_ais):
            assert estimate.value >= elbo.value - Z * math.hypot(estimate.stderr, elbo.stderr), (family, elbo, estimate)


def test_eight_schools_smc_and_ais_agree_above_every_elbo():
    _agree_and_lie_above_the_elbos("eight_schools", 0)


@pytest.mark.slow
def test_logistic_regression_smc_and_ais_agree_above_every_elbo():
    _agree_and_lie_above_the_elbos("logistic_regression", 0)


# -- progress -----------------------------------------------------------------------------------
def test_progress_counts_every_stage_in_order():
    seen = []
    results = elbox.evidence("normal_normal", jax.random.key(0), method="smc", progress=lambda *a: seen.append(a))
    stages = results.diagnostics["stages"]
    assert seen == [("stages", k, None) for k in range(1, stages + 1)]
    seen.clear()
    elbox.evidence("normal_normal", jax.random.key(0), method="ais", steps=20, progress=lambda *a: seen.append(a))
    # forwards from the prior, then backwards from exact posterior draws, never interleaved
    assert seen == [("forward", k, 40) for k in range(1, 21)] + [("reverse", k, 40) for k in range(21, 41)]
    seen.clear()
    elbox.evidence("normal_normal", jax.random.key(0), method="smc", progress=False)
    assert seen == []


# -- bad input -----------------------------------------------------------------------------------
def test_a_bare_log_density_cannot_be_tempered_and_the_error_says_what_to_pass():
    model = elbox.Model.from_log_density(lambda u: -0.5 * jnp.sum(u["z"] ** 2), {"z": jnp.zeros(2)})
    with pytest.raises(NoPriorLikelihoodSplit, match='start="meanfield"'):
        elbox.evidence(model, jax.random.key(0))


def test_an_improper_prior_offers_the_start_from_q():
    model = elbox.Model.from_prior_and_likelihood(
        {"mu": dist.ImproperUniform(dist.constraints.real, (), ())},
        lambda z: dist.Normal(z["mu"], 1.0).log_prob(jnp.array([0.3, -0.2])).sum(), name="flat")
    with pytest.raises(ModelError, match="improper prior.*fitted q"):
        elbox.evidence(model, jax.random.key(0))
    fit = elbox.fit(model, jax.random.key(0), method="fullrank", progress=False)
    results = elbox.evidence(model, jax.random.key(0), method="smc", start=fit)
    assert results.start == "fullrank q"
    assert np.isfinite(results.log_evidence.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "nested"}, "smc, ais, iwae"),
    ({"method": "iwae", "runs": 4}, "runs is not an option"),
    ({"particles": 1}, "particles"),
    ({"start": "posterior"}, "start must be"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(SettingsError, match=message):
        elbox.evidence("normal_normal", jax.random.key(0), **kwargs)


# -- CLI -------------------------------------------------------------------------------------------
COIN = """
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

y = jnp.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])

def coin_model():
    p = numpyro.sample("p", dist.Beta(2.0, 2.0))
    numpyro.sample("y", dist.Bernoulli(p), obs=y)
"""


def test_cli_evidence_of_a_numpyro_model_in_a_file(tmp_path, capsys):
    """Beta(2, 2) prior, 5 successes in 7 Bernoulli trials: p(y) = B(7, 4) / B(2, 2)."""
    path = tmp_path / "coin.py"
    path.write_text(textwrap.dedent(COIN))
    out = tmp_path / "coin.json"
    assert main(["evidence", f"{path}:coin_model", "--method", "ais", "--seed", "3", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert {"model", "method", "log_evidence", "exact", "seconds"} <= set(summary)
    assert summary["method"] == "ais" and summary["exact"] is None
    exact = special.betaln(7, 4) - special.betaln(2, 2)
    value, stderr = summary["log_evidence"]["value"], summary["log_evidence"]["stderr"]
    assert abs(value - exact) <= Z * stderr
    assert "log p(x) by ais" in capsys.readouterr().out


def test_cli_evidence_builtin_prints_the_exact_value_and_draws_the_bounds(tmp_path, capsys):
    out = tmp_path / "nn.json"
    assert main(["evidence", "normal_normal", "--json", str(out), "--out", str(tmp_path / "pictures")]) == 0
    summary = json.loads(out.read_text())
    assert summary["exact"] == pytest.approx(elbox.models.get("normal_normal").known.log_evidence)
    assert "exact log p(x)" in capsys.readouterr().out
    assert (tmp_path / "pictures" / "evidence_bounds.png").stat().st_size > 0
    ladder = json.loads((tmp_path / "pictures" / "evidence_bounds.json").read_text())
    assert set(ladder["iwae"]) == {"1", "10", "100", "1000"}


def test_cli_evidence_from_a_fitted_q(tmp_path, capsys):
    out = tmp_path / "q.json"
    assert main(["evidence", "normal_normal", "--start", "meanfield", "--no-progress", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["start"] == "meanfield q" and summary["seconds"]["fit"] > 0
    exact = elbox.models.get("normal_normal").known.log_evidence
    assert abs(summary["log_evidence"]["value"] - exact) <= 3 * summary["log_evidence"]["stderr"] + 1e-4
    captured = capsys.readouterr()
    assert "from the meanfield q" in captured.out and "fitting q" in captured.out
    assert "stages" not in captured.err  # --no-progress


def test_cli_fit_with_evidence_reports_the_gap_with_its_standard_error(tmp_path, capsys):
    out = tmp_path / "fit.json"
    assert main(["fit", "eight_schools", "--evidence", "smc", "--json", str(out), "--no-progress"]) == 0
    summary = json.loads(out.read_text())
    assert summary["log_evidence"]["method"] == "smc"
    assert summary["log_evidence"]["stderr"] > 0
    assert summary["gap"] > 0 and summary["gap_stderr"] > 0
    # the gap is KL(q || posterior) >= 0: positive beyond its error bar for mean-field q here
    assert summary["gap"] > Z * summary["gap_stderr"]
    assert "(smc, from the prior)" in capsys.readouterr().out
