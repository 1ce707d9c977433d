"""Run folders: a finished run is never lost, a changed model is detected, the command's hints
can be followed, output paths are checked before the work, and an undefined standard error is
null in the JSON. One tiny ddpm run (constant step size, so it may be continued) is copied into
each test that changes it."""

import json
import math
import shlex
import shutil

import numpy as np
import pytest

from elbox.cli import main
from elbox.diffusion.evaluate import evaluate_run
from elbox.diffusion.run import load_run, sample_run, train_run
from elbox.diffusion.run_folder import RunStateError
from elbox.errors import OutputError, RunError

OVERRIDES = {"model": "ddpm", "T": 20, "width": 16, "depth": 1, "batch_size": 64, "checkpoint_every": 10}
FLAGS = ["--model", "ddpm", "--T", "20", "--width", "16", "--depth", "1", "--batch-size", "64",
         "--checkpoint-every", "10", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "moons"
    train_run("moons", 20, 0, out, progress=False, recipe_overrides=OVERRIDES)
    return out


@pytest.fixture
def run_copy(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_is_not_replaced_without_overwrite(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints")  # even once its checkpoints are gone
    before = _files(run_copy)
    with pytest.raises(RunStateError, match="already holds a finished run") as info:
        train_run("moons", 20, 0, run_copy, progress=False, recipe_overrides=OVERRIDES)
    assert info.value.kind == "finished" and "overwrite=True" in str(info.value)
    assert main(["diffusion", "train", "--data", "moons", "--steps", "20", "--out", str(run_copy), *FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finished run" in err and "--overwrite" in err and "overwrite=True" not in err
    # Nor continued: it has no checkpoints to continue from, and it stays as it was.
    with pytest.raises(RunError, match="no checkpoints left"):
        train_run("moons", 30, 0, run_copy, resume=True, progress=False, recipe_overrides=OVERRIDES)
    assert _files(run_copy) == before
    assert main(["diffusion", "train", "--data", "moons", "--steps", "20", "--out", str(run_copy), "--seed", "1",
                 "--overwrite", *FLAGS]) == 0
    assert load_run(run_copy).meta["seed"] == 1


def test_a_changed_model_file_is_detected(run_copy, capsys):
    model = run_copy / "model.eqx"
    content = bytearray(model.read_bytes())
    content[-5] ^= 0x01  # one bit of one weight: still a readable file
    model.write_bytes(bytes(content))
    with pytest.raises(RunError, match="has changed since training"):
        load_run(run_copy)
    assert main(["diffusion", "elbo", str(run_copy)]) == 2
    assert "sha256" in capsys.readouterr().err
    # A run.json written before the checksum was recorded still loads.
    meta = json.loads((run_copy / "run.json").read_text())
    del meta["model_sha256"]
    (run_copy / "run.json").write_text(json.dumps(meta))
    assert load_run(run_copy).meta["steps_done"] == 20


def test_a_failed_or_interrupted_resume_leaves_the_run_usable(trained, run_copy):
    before = _files(run_copy)
    samples = sample_run(run_copy, 8, seed=2)
    for path in (run_copy / "checkpoints").glob("*.eqx"):
        path.write_bytes(b"damaged")
    with pytest.warns(RuntimeWarning), pytest.raises(RunError, match="None of the 2 checkpoint"):
        train_run("moons", 30, 0, run_copy, resume=True, progress=False, recipe_overrides=OVERRIDES)
    for name in ("run.json", "model.eqx", "loss_trace.npy"):
        assert (run_copy / name).read_bytes() == before[name]
    assert load_run(run_copy).meta["steps_done"] == 20
    np.testing.assert_array_equal(sample_run(run_copy, 8, seed=2), samples)

    shutil.rmtree(run_copy)
    shutil.copytree(trained, run_copy)

    def interrupt(phase, done, total):  # Ctrl-C once the continued training has taken a step
        if done > 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run("moons", 40, 0, run_copy, resume=True, progress=interrupt, recipe_overrides=OVERRIDES)
    for name in ("run.json", "model.eqx", "loss_trace.npy"):
        assert (run_copy / name).read_bytes() == before[name]
    np.testing.assert_array_equal(sample_run(run_copy, 8, seed=2), samples)
    meta = train_run("moons", 40, 0, run_copy, resume=True, progress=False, recipe_overrides=OVERRIDES)
    assert meta["steps_done"] == 40 and np.load(run_copy / "loss_trace.npy").shape == (40,)


def test_the_hint_for_an_unfinished_run_is_a_command_that_finishes_it(run_copy, capsys):
    # As if `--steps 30` had been interrupted after the checkpoint at step 20.
    meta = json.loads((run_copy / "run.json").read_text())
    meta["recipe"]["steps"], meta["status"], meta["steps_done"] = 30, "training", 20
    (run_copy / "run.json").write_text(json.dumps(meta))
    (run_copy / "model.eqx").unlink()
    assert main(["diffusion", "sample", str(run_copy), "--out", str(run_copy.parent / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "has not finished training" in err and "train_run" not in err
    command = err.split("`")[1]
    for flags in ("--steps 30", "--model ddpm", "--T 20", "--width 16", "--depth 1", "--batch-size 64",
                  "--checkpoint-every 10", "--seed 0", "--resume"):
        assert flags in command, flags
    words = shlex.split(command)
    assert words[:3] == ["elbox", "diffusion", "train"]
    assert main([*words[1:], "--no-progress"]) == 0
    assert load_run(run_copy).meta["steps_done"] == 30


def test_the_resume_hint_names_levels_and_says_when_the_command_line_cannot(tmp_path):
    from elbox.cli.diffusion import _resume_command
    from elbox.diffusion.recipes import make_recipe

    meta = {"data": "/data/codes.npy", "levels": 4, "seed": 3, "recipe": make_recipe("/data/codes.npy")}
    command = _resume_command(meta, tmp_path)
    assert "--levels 4" in command and "--seed 3" in command and "--model" not in command
    assert "--steps" not in command  # the recipe's own number of steps
    assert "--devices" not in command
    assert "--devices 2" in _resume_command({**meta, "devices": 2}, tmp_path)
    meta["recipe"]["learning_rate"] = 3e-4
    assert "train_run" in _resume_command(meta, tmp_path) and "learning_rate" in _resume_command(meta, tmp_path)


def test_output_paths_are_checked_before_the_work(trained, tmp_path, monkeypatch, capsys):
    import elbox.diffusion.evaluate as evaluate_module
    import elbox.diffusion.run as run_module

    def never(*args, **kwargs):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(run_module, "train_run", never)
    monkeypatch.setattr(run_module, "load_run", never)
    monkeypatch.setattr(evaluate_module, "evaluate_run", never)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (["train", "--data", "moons", "--out", str(a_file), *FLAGS], "is a file"),
        (["elbo", str(trained), "--json", str(tmp_path)], "is a folder"),
        (["elbo", str(trained), "--json", str(a_file / "bound.json")], "is a file, not a folder"),
        (["elbo", str(trained), "--plot", str(tmp_path)], "is a folder"),
        (["sample", str(trained), "--out", str(tmp_path)], "is a folder"),
    ]
    for argv, message in cases:
        assert main(["diffusion", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("elbox: error: ") and err.count("\n") == 1 and message in err, err
    with pytest.raises(OutputError):
        train_run("moons", 20, 0, a_file, recipe_overrides=OVERRIDES)


def test_one_example_has_an_undefined_standard_error(trained, tmp_path, capsys):
    files = _files(trained)
    path = tmp_path / "one.json"
    assert main(["diffusion", "elbo", str(trained), "--max-examples", "1", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "standard error undefined: one example" in printed and "nan" not in printed
    assert "--plot" in printed  # no plot unless asked for, and how to get one
    bound = json.loads(path.read_text())
    assert bound["num_examples"] == 1 and math.isfinite(bound["nats_per_dim"])
    assert bound["stderr"] is None and bound["stderr_bits"] is None
    report = evaluate_run(trained, max_examples=1)
    assert math.isnan(report.stderr) and report.as_dict()["stderr"] is None
    assert report.as_dict()["nats_per_dim"] == report.nats_per_dim
    assert _files(trained) == files  # evaluating writes nothing into the run folder
    plot = tmp_path / "steps.png"
    assert main(["diffusion", "elbo", str(trained), "--max-examples", "1", "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _files(trained) == files
