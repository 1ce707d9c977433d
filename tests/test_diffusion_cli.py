"""The ``elbox diffusion`` command end to end on a tiny recipe: train, resume, the bound's JSON,
samples as a PNG, and clear errors (exit status 2) for bad input."""

import json
import math

import numpy as np
import pytest

from elbox.cli import main
from elbox.diffusion.run import DEFAULTS, load_run, make_recipe, sample_run
from elbox.errors import ElboxError

# A tiny recipe through the hidden options: T = 20 steps, a 16-unit MLP, small batches.
TINY = ["--T", "20", "--width", "16", "--depth", "1", "--batch-size", "64", "--checkpoint-every", "10", "--no-progress"]
ELBO_FIELDS = {
    "data", "model", "bound", "T", "nats_per_dim", "bits_per_dim", "stderr", "terms", "denoising_per_step",
    "denoising_per_step_T", "discrete_time", "schedule", "true_entropy_per_dim", "gap_to_entropy", "test_nll_per_dim",
    "gap_to_test_nll", "gap_to_test_nll_stderr", "estimator", "seconds", "categorical_baseline_bits_per_dim",
    "uniform_bits_per_dim",
}


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    """The default model (vdm) on moons."""
    out = tmp_path_factory.mktemp("runs") / "moons"
    assert main(["diffusion", "train", "--data", "moons", "--steps", "30", "--seed", "0", "--out", str(out),
                 *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "gmm8_ddpm"
    assert main(["diffusion", "train", "--data", "gmm8", "--model", "ddpm", "--steps", "30", "--out", str(out),
                 *TINY]) == 0
    return out


def test_train_writes_a_run(moons_run):
    meta = json.loads((moons_run / "run.json").read_text())
    assert meta["data"] == "moons" and meta["steps_done"] == 30 and meta["status"] == "trained"
    assert meta["recipe"]["model"] == "vdm" and meta["recipe"]["schedule"] == "learned"
    assert meta["recipe"]["T"] == 20 and meta["recipe"]["network"]["width"] == 16
    assert meta["scaling"]["scale"] == 1.0 and len(meta["scaling"]["shift"]) == 2
    assert (moons_run / "model.eqx").stat().st_size > 0
    assert np.load(moons_run / "loss_trace.npy").shape == (30,)
    run = load_run(moons_run)
    assert run.schedule is None and run.dim == 2


def _check_bound(bound: dict):
    assert ELBO_FIELDS <= set(bound)
    for key in ("nats_per_dim", "bits_per_dim", "stderr", "seconds"):
        assert math.isfinite(bound[key]), key
    assert set(bound["terms"]) == {"reconstruction", "denoising", "prior"}
    assert all(math.isfinite(v) for v in bound["terms"].values())
    assert math.isclose(sum(bound["terms"].values()), bound["nats_per_dim"], rel_tol=1e-6, abs_tol=1e-6)
    assert math.isclose(bound["bits_per_dim"], bound["nats_per_dim"] / math.log(2), rel_tol=1e-9)
    assert all(math.isfinite(v) for v in bound["denoising_per_step"])
    assert bound["stderr"] > 0


def test_elbo_json_has_every_field(moons_run, tmp_path, capsys):
    path = tmp_path / "bound.json"
    plot = tmp_path / "per_step.png"
    assert main(["diffusion", "elbo", str(moons_run), "--json", str(path), "--max-examples", "200",
                 "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "nats/dim" in printed and "bits/dim" in printed and "±" in printed and "T = 20 steps" in printed
    bound = json.loads(path.read_text())
    _check_bound(bound)
    assert bound["data"] == "moons" and bound["model"] == "vdm" and bound["bound"] == "continuous time"
    assert bound["T"] is None and bound["num_examples"] == 200
    discrete = bound["discrete_time"]
    assert discrete["T"] == 20 and discrete["num_examples"] == 200
    assert math.isclose(sum(discrete["terms"].values()), discrete["nats_per_dim"], rel_tol=1e-6, abs_tol=1e-6)
    assert len(bound["denoising_per_step"]) == 20 and bound["denoising_per_step_T"] == 20
    gamma = np.asarray(bound["schedule"]["gamma"])
    assert np.all(np.diff(gamma) > 0)
    assert gamma[0] == pytest.approx(bound["schedule"]["gamma_0"], abs=1e-4)
    assert bound["true_entropy_per_dim"] is None and bound["gap_to_test_nll"] is None  # moons: unknown
    assert bound["categorical_baseline_bits_per_dim"] is None and bound["uniform_bits_per_dim"] is None
    assert plot.stat().st_size > 0 and not (moons_run / "elbo_per_step.png").exists()


def test_ddpm_elbo_json_and_the_gap_to_the_exact_density(ddpm_run, tmp_path, capsys):
    path = tmp_path / "bound.json"
    assert main(["diffusion", "elbo", str(ddpm_run), "--json", str(path), "--max-examples", "300"]) == 0
    assert "paired" in capsys.readouterr().out
    bound = json.loads(path.read_text())
    _check_bound(bound)
    assert bound["model"] == "ddpm" and bound["bound"] == "discrete time" and bound["T"] == 20
    assert bound["discrete_time"] is None and bound["schedule"] is None and len(bound["denoising_per_step"]) == 19
    assert bound["true_entropy_per_dim"] == pytest.approx(0.156074, abs=1e-6)
    assert math.isclose(bound["gap_to_entropy"], bound["nats_per_dim"] - bound["true_entropy_per_dim"], rel_tol=1e-9)
    # The paired gap uses the same 300 examples' exact -log p: it adds up with the test-set mean.
    assert math.isclose(bound["gap_to_test_nll"] + bound["test_nll_per_dim"], bound["nats_per_dim"], rel_tol=1e-6)
    assert 0 < bound["gap_to_test_nll_stderr"]


def test_sample_writes_png(moons_run, tmp_path, capsys):
    png = tmp_path / "x.png"
    assert main(["diffusion", "sample", str(moons_run), "--n", "16", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = sample_run(moons_run, 16, seed=0)
    assert samples.shape == (16, 2) and np.all(np.isfinite(samples))
    np.testing.assert_array_equal(samples[:4], sample_run(moons_run, 4, seed=0))  # draw i uses key i


def test_resume_continues_from_the_checkpoint(tmp_path):
    # ddpm's recipe keeps a constant step size, so a finished run may be extended.
    out = tmp_path / "resumed"
    base = ["diffusion", "train", "--data", "moons", "--model", "ddpm", "--seed", "0", "--out", str(out), *TINY]
    assert main([*base, "--steps", "20"]) == 0
    first = np.load(out / "loss_trace.npy")
    assert main([*base, "--steps", "30", "--resume"]) == 0
    meta = json.loads((out / "run.json").read_text())
    trace = np.load(out / "loss_trace.npy")
    assert meta["steps_done"] == 30 and trace.shape == (30,)
    np.testing.assert_array_equal(trace[:20], first)  # the first 20 steps were not redone


def test_resume_of_a_decaying_step_size_keeps_the_steps(moons_run, capsys):
    # vdm's step size decays over the run's steps: more steps would change the steps already done.
    code = main(["diffusion", "train", "--data", "moons", "--steps", "40", "--seed", "0", "--out", str(moons_run),
                 "--resume", *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "steps" in err and "decays" in err


def test_resume_with_other_settings_is_refused(moons_run, capsys):
    code = main(["diffusion", "train", "--data", "moons", "--steps", "40", "--seed", "1", "--out", str(moons_run),
                 "--resume", *TINY])
    assert code == 2
    assert "seed" in capsys.readouterr().err


def test_user_csv_with_nan_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    rows = np.random.default_rng(0).normal(size=(20, 2))
    rows[3, 1] = np.nan
    np.savetxt(path, rows, delimiter=",")
    code = main(["diffusion", "train", "--data", str(path), "--steps", "5", "--out", str(tmp_path / "r"), *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "row 3" in err


def test_width_mismatched_eval_file_exits_2(moons_run, tmp_path, capsys):
    path = tmp_path / "three.npy"
    np.save(path, np.random.default_rng(0).normal(size=(20, 3)))
    code = main(["diffusion", "elbo", str(moons_run), "--data", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "3 columns" in err and "2 columns" in err


def test_eval_on_a_user_file(moons_run, tmp_path, capsys):
    path = tmp_path / "mine.csv"
    np.savetxt(path, np.random.default_rng(0).normal(size=(20, 2)) * 0.3 + 0.5, delimiter=",", header="a,b")
    out = tmp_path / "mine.json"
    assert main(["diffusion", "elbo", str(moons_run), "--data", str(path), "--json", str(out)]) == 0
    bound = json.loads(out.read_text())
    assert bound["data"] == str(path) and bound["num_examples"] == 20 and math.isfinite(bound["nats_per_dim"])


def test_unknown_data_name_exits_2(tmp_path, capsys):
    code = main(["diffusion", "train", "--data", "moon", "--steps", "5", "--out", str(tmp_path / "r"), *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown data set 'moon'" in err and "moons" in err


def test_dir_without_a_run_exits_2(tmp_path, capsys):
    assert main(["diffusion", "elbo", str(tmp_path)]) == 2
    assert "no diffusion run" in capsys.readouterr().err
    assert main(["diffusion", "sample", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_recipes_cover_every_data_set():
    assert set(DEFAULTS) == {"gmm8", "checkerboard", "moons", "digits", "gmm8_quantized", "file"}
    for recipes in DEFAULTS.values():
        assert set(recipes) == {"vdm", "ddpm"}
        assert recipes["vdm"]["model"] == "vdm" and recipes["vdm"]["schedule"] == "learned"
        assert recipes["ddpm"]["model"] == "ddpm" and recipes["ddpm"]["loss"] == "hybrid"
        assert recipes["vdm"]["T"] == recipes["ddpm"]["T"] == 1000
    assert make_recipe("gmm8")["model"] == "vdm"
    assert make_recipe("gmm8", {"model": "ddpm"})["variance"] == "learned_range"
    assert make_recipe("some/file.csv", {"width": 8})["network"]["width"] == 8
    with pytest.raises(ElboxError, match="unknown vdm recipe setting 'loss'"):
        make_recipe("gmm8", {"loss": "simple"})


def test_sampler_draws_the_exact_reverse_process_for_standard_normal_data():
    # For x0 ~ N(0, I), eps_hat = sqrt(1 - alpha_bar_t) x_t with sigma_t^2 = beta_t is the exact
    # reverse process, whose marginals are all N(0, I); the last step returns the mean
    # sqrt(alpha_1) x_1, so the draws are N(0, alpha_1 I).
    import jax
    import jax.numpy as jnp

    from elbox.diffusion.sample import sample
    from elbox.diffusion.schedules import cosine_schedule

    schedule = cosine_schedule(50)
    root = jnp.asarray(schedule.sqrt_one_minus_alpha_bars, jnp.float32)

    def exact(x_t, t, num_steps):
        return root[t - 1] * x_t, None

    n = 4000
    x = np.asarray(sample(jax.random.key(3), exact, schedule, n, 2, variance="beta"), np.float64)
    variance = float(schedule.alphas[0])
    assert np.all(np.abs(x.mean(axis=0)) / math.sqrt(variance / n) < 4)
    assert np.all(np.abs(x.var(axis=0) - variance) / (variance * math.sqrt(2 / n)) < 4)


def test_most_likely_bin_matches_brute_force():
    import jax.numpy as jnp
    from scipy.stats import norm

    from elbox.diffusion.decoders import DiscretizedGaussian, most_likely_bin

    decoder = DiscretizedGaussian(0.5, -1.0, 1.0)  # centres -1, -0.5, 0, 0.5, 1
    means = np.array([-3.0, -0.8, -0.6, 0.1, 0.7, 0.74, 2.0])
    log_scales = np.log(np.array([0.1, 1.0, 0.2, 0.3, 2.0, 0.05, 0.5]))
    got = np.asarray(most_likely_bin(jnp.asarray(means), jnp.asarray(log_scales), decoder))
    centres = np.linspace(-1, 1, 5)
    edges = np.concatenate([[-np.inf], centres[:-1] + 0.25, [np.inf]])
    for m, s, g in zip(means, np.exp(log_scales), got):
        mass = norm.cdf((edges[1:] - m) / s) - norm.cdf((edges[:-1] - m) / s)
        assert g == centres[np.argmax(mass)]


def test_discrete_user_file_reports_baselines_and_integer_samples(tmp_path):
    path = tmp_path / "codes.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 4, size=(60, 3)))
    out = tmp_path / "codes"
    assert main(["diffusion", "train", "--data", str(path), "--levels", "4", "--steps", "10", "--out", str(out),
                 *TINY]) == 0
    bound_path = tmp_path / "codes.json"
    assert main(["diffusion", "elbo", str(out), "--json", str(bound_path)]) == 0
    bound = json.loads(bound_path.read_text())
    assert bound["uniform_bits_per_dim"] == pytest.approx(2.0)
    assert math.isfinite(bound["categorical_baseline_bits_per_dim"]) and bound["nats_per_dim"] > 0
    samples = sample_run(out, 8, seed=1)
    assert samples.shape == (8, 3) and set(np.unique(samples)) <= {0.0, 1.0, 2.0, 3.0}


def test_interrupted_training_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import elbox.diffusion.run as run_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "train_run", interrupted)
    code = main(["diffusion", "train", "--data", "moons", "--steps", "5", "--out", str(tmp_path / "r"),
                 "--devices", "1", *TINY])
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "no checkpoint" in err
    assert "elbox diffusion train --data moons --steps 5 --seed 0 --out" in err and err.rstrip().endswith("--resume")
    assert "--devices 1" in err
