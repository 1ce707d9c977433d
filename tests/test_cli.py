"""The ``elbox`` command: JSON outputs, models in files, clear errors with a non-zero exit."""

import json
import subprocess
import sys
import textwrap

import pytest

import elbox
from elbox.cli import main

SAMPLE_FIELDS = {
    "model", "method", "chains", "warmup", "draws", "seed", "seconds",
    "acceptance_rate", "divergences", "parameters", "max_tree_depth_hits", "ebfmi", "gradient_evaluations",
    "settings", "tuning", "warnings",
}
PARAMETER_FIELDS = {"mean", "sd", "mcse_mean", "ess_bulk", "ess_tail", "r_hat"}
QUICK = ["--warmup", "200", "--draws", "200", "--no-progress"]


def test_sample_builtin_writes_json_and_outputs(tmp_path, capsys):
    path = tmp_path / "out.json"
    code = main(["sample", "eight_schools", "--method", "mh", "--json", str(path), "--out", str(tmp_path / "draws"),
                 *QUICK])
    assert code == 0
    printed = capsys.readouterr().out
    assert "r_hat" in printed and "tau" in printed
    summary = json.loads(path.read_text())
    assert set(summary) == SAMPLE_FIELDS
    assert summary["model"] == "eight_schools" and summary["chains"] == 4 and summary["seed"] == 0
    assert {"compile", "sampling", "total"} <= set(summary["seconds"])
    assert 0 < summary["acceptance_rate"] < 1
    labels = set(summary["parameters"])
    assert {"mu", "tau", "theta[0]", "theta[7]", "theta_trans[3]"} <= labels
    for stats in summary["parameters"].values():
        assert set(stats) == PARAMETER_FIELDS
    assert (tmp_path / "draws" / "draws.nc").stat().st_size > 0
    assert (tmp_path / "draws" / "trace.png").stat().st_size > 0
    # MH has no gradients, integrator or energy: those diagnostics are null, not zero.
    assert summary["divergences"] is None and summary["ebfmi"] is None and summary["gradient_evaluations"] is None


def test_sample_defaults_to_nuts_with_its_diagnostics(tmp_path, capsys):
    path = tmp_path / "out.json"
    assert main(["sample", "eight_schools", "--json", str(path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "nuts" in printed and "E-BFMI" in printed and "gradient evaluations" in printed
    summary = json.loads(path.read_text())
    assert summary["method"] == "nuts" and summary["warmup"] == 1000 and summary["draws"] == 1000
    assert summary["settings"]["max_tree_depth"] == 10
    assert isinstance(summary["divergences"], int) and isinstance(summary["max_tree_depth_hits"], int)
    assert len(summary["ebfmi"]) == 4 and all(value > 0 for value in summary["ebfmi"])
    gradients = summary["gradient_evaluations"]
    assert gradients["warmup"] > 1000 * 4 and gradients["per_draw"] >= 1
    assert gradients["sampling"] == gradients["per_draw"] * 4 * 1000
    assert len(summary["tuning"]["step_size"]) == 4
    # Every warning printed is in the JSON, and the other way round.
    assert [line[len("warning: "):] for line in printed.splitlines() if line.startswith("warning: ")] == \
        summary["warnings"]


def test_sample_refuses_a_flag_the_sampler_does_not_take(capsys):
    assert main(["sample", "eight_schools", "--scale", "0.5", *QUICK]) == 2
    assert "--scale is not a setting of --method nuts" in capsys.readouterr().err


MODEL_FILE = """
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

y = jnp.array([{data}])

def coin_model():
    p = numpyro.sample("p", dist.Beta(2.0, 2.0))
    numpyro.sample("y", dist.Bernoulli(p), obs=y)

not_a_model = 3
"""


def write_model(tmp_path, data="1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0"):
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(MODEL_FILE.format(data=data)))
    return path


def test_sample_model_in_file(tmp_path):
    path = write_model(tmp_path)
    out = tmp_path / "file.json"
    assert main(["sample", f"{path}:coin_model", "--json", str(out), *QUICK]) == 0
    summary = json.loads(out.read_text())
    assert set(summary) == SAMPLE_FIELDS
    assert set(summary["parameters"]) == {"p"}
    # Beta(2 + 5, 2 + 2) posterior: mean 7/11; a loose check that the file's data were used.
    assert abs(summary["parameters"]["p"]["mean"] - 7 / 11) < 0.1


def test_models_json_lists_every_builtin(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    for required in [
        "normal_normal", "linear_regression", "beta_binomial", "eight_schools", "eight_schools_centered",
        "logistic_regression", "funnel", "gaussian_100d", "kidiq-kidscore_momiq", "arK-arK",
    ]:
        assert required in names
    by_name = {r["name"]: r for r in rows}
    assert by_name["gaussian_100d"]["dimension"] == 100
    assert by_name["funnel"]["dimension"] == 10
    assert by_name["eight_schools"]["dimension"] == 10
    assert by_name["normal_normal"]["known"]["log_evidence"] == pytest.approx(
        elbox.models.get("normal_normal").known.log_evidence
    )
    assert by_name["kidiq-kidscore_momiq"]["known"]["log_evidence"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "eight_shools"], "Unknown model 'eight_shools'. Did you mean eight_schools"),
        (["sample", "{file}:missing_name"], "defines no 'missing_name'"),
        (["sample", "{file}:not_a_model"], "not a NumPyro model function"),
        (["sample", "nowhere/model.py:m"], "does not exist"),
        (["sample", "{nan_file}:coin_model"], "Site y: the observed data contain NaN"),
    ],
)
def test_bad_model_is_a_clear_error(tmp_path, capsys, args, message):
    good = write_model(tmp_path)
    nan_dir = tmp_path / "nan"
    nan_dir.mkdir()
    nan_file = write_model(nan_dir, data="1.0, float('nan'), 0.0")
    args = [a.format(file=good, nan_file=nan_file) for a in args]
    assert main(args + QUICK) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["--chains", "-1"],
        ["--draws", "0"],
        ["--warmup", "-3"],
        ["--scale", "0"],
        ["--scale", "-2"],
        ["--chains", "two"],
    ],
)
def test_bad_numbers_exit_nonzero(capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "normal_normal", *args])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_tour_runs_and_fills_its_folder(tmp_path):
    out = tmp_path / "tour"
    completed = subprocess.run(
        [sys.executable, "-m", "elbox.cli", "tour", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    assert str(out.resolve()) in completed.stdout
    report = json.loads((out / "tour.json").read_text())
    rows = report["mh_conjugate"]["convergence"]
    # The histogram gets closer to the exact posterior as draws grow (first vs last row).
    assert rows[-1]["ks_distance"] < rows[0]["ks_distance"]
    for name in ["mh_conjugate_histograms.png", "nuts_eight_schools_trace.png", "mh_conjugate.md",
                 "evidence_bounds_eight_schools.png"]:
        assert (out / name).stat().st_size > 0
    # The evidence section: SMC and AIS agree, and both lie above every ELBO of the picture.
    evidence = report["evidence"]
    smc, ais = evidence["smc"]["log_evidence"], evidence["ais"]["log_evidence"]
    assert abs(smc["value"] - ais["value"]) < 4 * (smc["stderr"] ** 2 + ais["stderr"] ** 2) ** 0.5
    for elbo in evidence["bounds"]["elbo"].values():
        assert elbo["value"] < smc["value"]
    # The diffusion section: the ODE likelihood does not beat the data's own density (paired).
    rows = {row["name"]: row for row in report["diffusion"]["bound"]["side_by_side"]["rows"]}
    ode = rows["ode_nll"]
    assert ode["previous"] == "test_nll"
    assert ode["minus_previous_nats_per_dim"] > -3 * ode["minus_previous_stderr"]


FIT_FIELDS = {
    "model", "method", "steps", "seed", "elbo", "elbo_forms", "log_evidence", "gap", "gap_stderr", "seconds",
    "parameters", "converged",
}


@pytest.mark.parametrize("method", ["meanfield", "cavi"])
def test_fit_writes_json_with_the_gap(tmp_path, capsys, method):
    path = tmp_path / "fit.json"
    code = main(["fit", "normal_gamma", "--method", method, "--steps", "3000", "--json", str(path),
                 "--out", str(tmp_path / "fit"), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "E_q[log p(x|z)] - KL(q||p)" in printed and "gap" in printed
    result = json.loads(path.read_text())
    assert set(result) == FIT_FIELDS
    assert set(result["elbo"]) == {"value", "stderr"}
    assert set(result["elbo_forms"]) == {"joint_minus_entropy", "loglik_minus_kl"}
    assert result["log_evidence"]["method"] == "exact"
    evidence = elbox.models.get("normal_gamma").known.log_evidence
    assert result["log_evidence"]["value"] == pytest.approx(evidence)
    assert result["gap"] == pytest.approx(evidence - result["elbo"]["value"])
    assert set(result["parameters"]) == {"mu", "tau"}
    assert set(result["parameters"]["tau"]) == {"mean", "sd"}
    assert {"compile", "fitting", "total"} <= set(result["seconds"])
    assert (tmp_path / "fit" / "elbo_trace.png").stat().st_size > 0


def test_fit_unknown_evidence_says_unknown(capsys):
    assert main(["fit", "eight_schools", "--steps", "500", "--no-progress"]) == 0
    assert "unknown" in capsys.readouterr().out


def test_cavi_on_a_model_without_updates_is_a_clear_error(capsys):
    assert main(["fit", "eight_schools", "--method", "cavi"]) == 2
    assert "CAVI needs closed-form coordinate updates" in capsys.readouterr().err
