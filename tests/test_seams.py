"""What the entry points share: CAVI chosen by declaration, convergence said out loud, finite
bounds for a collapsed q, progress that suits a log, JSON without NaN, no backend switch on import."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import elbox
from elbox.cli.common import write_json
from elbox.models.conjugate import normal_normal_exact
from elbox.report.summary import fit_json, fit_text

Y_NEAR_100 = np.array([98.3, 101.2, 99.7, 100.9, 102.4, 97.8, 100.1, 99.2])


def _normal_normal_near_100():
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", len(Y_NEAR_100)):
        numpyro.sample("y", dist.Normal(mu, 2.0), obs=Y_NEAR_100)


def test_cavi_uses_the_data_the_model_declares():
    """A user's model declaring the normal-normal form gets its own exact posterior and log p(x)."""
    args = (Y_NEAR_100, 2.0, 0.0, 10.0)
    known = normal_normal_exact(*args)
    conjugacy = elbox.Conjugacy("normal_normal", dict(zip(("y", "sigma", "prior_mean", "prior_sd"), args)))
    model = elbox.Model.from_numpyro(_normal_normal_near_100, name="normal_normal", known=known, conjugacy=conjugacy)
    fit = elbox.fit(model, jax.random.key(0), method="cavi")
    assert fit.method == "cavi" and fit.converged is True
    # One factor: CAVI's q is the exact posterior, so the closed-form gap is zero.
    assert fit.gap.value == pytest.approx(0.0, abs=1e-6)
    draws = np.asarray(fit.posterior["mu"]).ravel()
    assert abs(draws.mean() - known.posterior_mean["mu"]) < 4 * known.posterior_sd["mu"] / np.sqrt(draws.size)


def test_a_model_named_like_a_builtin_does_not_get_its_cavi():
    model = elbox.Model.from_numpyro(_normal_normal_near_100, name="normal_normal")
    with pytest.raises(elbox.SettingsError, match="declares none"):
        elbox.fit(model, jax.random.key(0), method="cavi")


def test_fit_that_runs_out_of_steps_says_so():
    fit = elbox.fit("eight_schools", jax.random.key(0), steps=200, progress=False)
    assert fit.converged is False
    assert "ran out before the stopping rule" in fit_text(fit, "eight_schools")
    assert fit_json(fit, "eight_schools", seed=0)["converged"] is False


def test_fit_whose_stopping_rule_fires_is_converged():
    fit = elbox.fit("normal_normal", jax.random.key(0), steps=5000, progress=False)
    assert fit.converged is True and fit.stopped_early


def test_collapsed_q_keeps_a_finite_kl():
    """A step size of 10 collapses q's scale below float32's range; KL(q || p) is large but finite."""
    fit = elbox.fit("normal_normal", jax.random.key(0), learning_rate=10.0, progress=False)
    report = fit.report
    assert np.isfinite(report.kl_to_prior.value) and report.kl_to_prior.value > 0
    assert np.isfinite(report.loglik_minus_kl.value)
    assert report.loglik_minus_kl.value <= fit.log_evidence.value


def test_progress_in_a_log_is_one_line_per_phase(capsys):
    elbox.sample("normal_normal", jax.random.key(0), chains=2, warmup=50, draws=50, progress=True)
    err = capsys.readouterr().err  # captured: not a terminal
    lines = [line for line in err.splitlines() if line.strip()]
    assert "\r" not in err
    assert len(lines) == 2 and "warmup 50 steps" in lines[0] and "sampling 50 steps" in lines[1]


def test_json_has_null_where_a_number_is_undefined(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"stderr": float("nan"), "nested": [1.0, float("inf")], "ok": 2.5})

    def refuse(constant):
        raise AssertionError(f"the JSON holds {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"stderr": None, "nested": [1.0, None], "ok": 2.5}


def test_importing_the_plots_keeps_the_users_backend():
    code = (
        "import matplotlib; matplotlib.use('pdf'); "
        "import elbox.report.plots, elbox.report.diffusion_plots, elbox.report.tour; "
        "assert matplotlib.get_backend() == 'pdf', matplotlib.get_backend()"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
