"""Diffusion training split over several devices: the same result as one device up to float
rounding, a batch really split, checkpoints that resume on any device count, two processes
joined by ``jax.distributed`` training as one device, the default rule (one CPU device; all
accelerators), and the errors for impossible splits.

JAX's device count is fixed when it starts, so the runs happen in fresh Python processes with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (two CPU devices; elbox keeps the
user's count). Each process prints one JSON line of results that the tests below check.

Tolerance. One device and two run the same draws (the step keys are ``fold_in(key, step)`` and
threefry values do not depend on how an array is split); only the order of the sums that the
compiler all-reduces differs. A float32 sum of n terms in another order differs by at most about
n u sum|x_i| (u = 2^-24 ~ 6e-8), so a batch mean over 64 examples by at most 64 u ~ 4e-6 of
its scale. L_simple's loss at each step is such a mean: rtol 1e-5. Adam's step moves a parameter
by at most about lr times the relative change of its gradient, so 300 steps at lr 3e-3 with
gradients 4e-6 apart move parameters apart by at most 300 x 3e-3 x 4e-6 ~ 4e-6: atol 1e-5. A
different draw or a wrongly scaled mean changes the losses by O(1), far outside both.

The continuous-time vdm is compared on its first 10 steps only: its training amplifies any
rounding difference (on one device, a one-ulp change of the initial weights grows to 1e-3 in
the loss within 300 steps, as the two-device run does), so a long trace would test the model's
sensitivity rather than the split.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from elbox.errors import SettingsError

ROOT = Path(__file__).resolve().parents[1]
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5
STEPS = 300

COMMON = textwrap.dedent("""
    import json, os, shutil, sys
    import equinox as eqx
    import jax
    import numpy as np
    import elbox.diffusion.train as T
    from elbox.diffusion import vdm
    from elbox.diffusion.networks import MLPDenoiser
    from elbox.diffusion.schedules import cosine_schedule
    from elbox.errors import FittingError, SettingsError

    rng = np.random.default_rng(0)
    component = rng.integers(0, 2, 256)
    data = (np.array([[-1.0, 0.5], [1.0, -0.5]])[component] + 0.3 * rng.normal(size=(256, 2))).astype(np.float32)
    net = MLPDenoiser(jax.random.key(0), 2, width=16, depth=1)
    TINY = dict(schedule=cosine_schedule(20), batch_size=64, learning_rate=3e-3, ema_decay=0.9, progress=False,
                loss="simple")
    out = {"visible": len(jax.devices())}

    def error_of(**kwargs):
        try:
            T.train(jax.random.key(1), data, network=net, **{**TINY, "steps": 0, **kwargs})
        except SettingsError as error:
            return str(error)
        return None
""")

RECORDING = COMMON + textwrap.dedent("""
    loops = []

    class RecordingLoop(T.ChunkedLoop):  # keeps each compiled program for a look at its partitioning
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            loops.append(self)

    T.ChunkedLoop = RecordingLoop

    def record(result):
        program = loops[-1].compiled
        carry_shardings = jax.tree_util.tree_leaves(program.input_shardings[0][0])
        return {
            "devices": result.devices,
            "trace": result.loss_trace.tolist(),
            "params": [np.asarray(x).ravel().tolist()
                       for x in jax.tree_util.tree_leaves(eqx.filter((result.network, result.ema_network),
                                                                     eqx.is_array))],
            "all_reduce": "all-reduce" in program.as_text(),
            "carry_devices": sorted({len(s.device_set) for s in carry_shardings}),
            "result_devices": sorted({len(x.devices()) for x in jax.tree_util.tree_leaves(
                eqx.filter(result.network, eqx.is_array))}),
        }

    folder = sys.argv[1]
    key = jax.random.key(1)
""")

# Two halves of the work in two processes at once (one per core).
SHARDED_RUNS = RECORDING + textwrap.dedent("""
    progress = []  # the two-device run reports to a progress callback between its chunks
    for d in (1, 2):  # uninterrupted runs, checkpoints at steps 200 and 300
        shown = {"progress": lambda *report: progress.append(list(report))} if d == 2 else {}
        out[f"whole{d}"] = record(T.train(key, data, network=net, steps=300, checkpoint_every=100,
                                          checkpoint_dir=f"{folder}/whole{d}", devices=d, **{**TINY, **shown}))
    out["progress"] = progress
    out["checkpoint_keys"] = sorted(json.load(open(f"{folder}/whole2/step_000000300.json")))
    out["folder"] = folder
    # "Interrupted" after step 200: the checkpoints of one device count, resumed on the other.
    for before, after in ((2, 1), (1, 2)):
        split = f"{folder}/split{before}{after}"
        shutil.copytree(f"{folder}/whole{before}", split)
        for suffix in (".json", ".eqx"):
            os.remove(f"{split}/step_000000300{suffix}")
        out[f"resumed{before}{after}"] = record(T.train(key, data, network=net, steps=300, checkpoint_every=100,
                                                        checkpoint_dir=split, resume=True, devices=after, **TINY))
    print(json.dumps(out))
""")

SHARDED_OTHERS = RECORDING + textwrap.dedent("""
    model = vdm.VDM(jax.random.key(2), MLPDenoiser(jax.random.key(0), 2, width=16, depth=1, learn_variance=False))
    for d in (1, 2):
        out[f"vdm{d}"] = record(T.train(key, data, network=model, steps=10, **{**TINY, "schedule": None,
                                                                             "loss": "vdm"}, devices=d))
    try:
        T.train(key, data, network=net, steps=40, devices=2, **{**TINY, "learning_rate": 1e10})
    except FittingError as error:
        out["non_finite"] = str(error)
    out["too_many"] = error_of(devices=3)
    out["zero"] = error_of(devices=0)
    out["not_divisible"] = error_of(devices=2, batch_size=63)
    out["default_devices"] = T.train(key, data, network=net, **{**TINY, "steps": 0}).devices
    # A run folder trained on 2 devices: run.json says so.
    from elbox.diffusion.run import train_run
    recipe = {"model": "ddpm", "T": 20, "width": 8, "depth": 1, "batch_size": 16, "checkpoint_every": 10}
    out["run_meta"] = train_run("moons", 20, 0, f"{folder}/run", progress=False, recipe_overrides=recipe, devices=2)
    print(json.dumps(out))
""")


# Two processes of one CPU device each, joined by jax.distributed (the multi-host path on one
# machine): both resume the one-device run's checkpoint of step 200 from the folder they share and
# train to step 300, the first process writing the checkpoints, one due by the clock after every chunk.
MULTI = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[2]}", num_processes=2,
                               process_id=int(sys.argv[3]))
""") + COMMON + textwrap.dedent("""
    result = T.train(jax.random.key(1), data, network=net, steps=300, checkpoint_every=100, checkpoint_seconds=1e-3,
                     checkpoint_dir=sys.argv[1], resume=True, chunk_size=25, devices=2, **TINY)
    out.update(devices=result.devices, processes=jax.process_count(), trace=result.loss_trace.tolist(),
               params=[np.asarray(x).ravel().tolist()
                       for x in jax.tree_util.tree_leaves(eqx.filter((result.network, result.ema_network),
                                                                     eqx.is_array))])
    print(json.dumps(out))
""")


def environment(env_changes: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ELBOX_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"  # CPU devices even on a machine with a GPU
    env.update(env_changes)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def run_scripts(scripts: list[tuple[str, dict, list]]) -> list[dict]:
    """Run each (script, environment changes, arguments) in its own Python process, all at once;
    the JSON line each printed last."""
    processes = [subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT,
                                  env=environment(env_changes), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
                 for script, env_changes, args in scripts]
    try:
        finished = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:  # one that failed may leave another waiting for it
            process.kill()
    outputs = []
    for process, (stdout, stderr) in zip(processes, finished):
        assert process.returncode == 0, stderr[-4000:]
        outputs.append(last_json_line(stdout))
    return outputs


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The results of SHARDED_RUNS and SHARDED_OTHERS, each in a process with two CPU devices."""
    folder = tmp_path_factory.mktemp("sharding")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    runs, others = run_scripts([(SHARDED_RUNS, env, [folder / "runs"]), (SHARDED_OTHERS, env, [folder / "others"])])
    return {**runs, **others}


def assert_close_runs(a: dict, b: dict, steps: int):
    assert len(a["trace"]) == len(b["trace"]) == steps
    trace_a, trace_b = np.array(a["trace"]), np.array(b["trace"])
    np.testing.assert_allclose(trace_b, trace_a, rtol=LOSS_RTOL, atol=0)
    assert len(a["params"]) == len(b["params"]) > 0
    for x, y in zip(a["params"], b["params"]):
        np.testing.assert_allclose(np.array(y), np.array(x), rtol=0, atol=PARAM_ATOL)


def test_two_devices_give_the_one_device_losses_and_parameters(sharded):
    assert sharded["visible"] == 2
    one, two = sharded["whole1"], sharded["whole2"]
    assert one["devices"] == 1 and two["devices"] == 2
    assert_close_runs(one, two, STEPS)
    # Not trivially equal: the runs trained, and the two programs summed in another order.
    assert np.ptp(one["trace"]) > 0.1
    assert not np.array_equal(one["trace"], two["trace"])


def test_the_batch_is_split_over_both_devices(sharded):
    one, two = sharded["whole1"], sharded["whole2"]
    # One device: no collective at all. Two: the carry lives on both and the batch means are all-reduced.
    assert not one["all_reduce"] and one["carry_devices"] == [1]
    assert two["all_reduce"] and two["carry_devices"] == [2]
    # The trained networks come back on one device either way.
    assert one["result_devices"] == two["result_devices"] == [1]


def test_the_vdm_loss_splits_too(sharded):
    one, two = sharded["vdm1"], sharded["vdm2"]
    assert two["all_reduce"] and two["carry_devices"] == [2]
    scale = np.max(np.abs(one["trace"]))
    np.testing.assert_allclose(two["trace"], one["trace"], rtol=0, atol=LOSS_RTOL * scale)


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_checkpoints_resume_on_another_device_count(sharded, before, after):
    resumed = sharded[f"resumed{before}{after}"]
    assert resumed["devices"] == after and resumed["carry_devices"] == [after]
    assert_close_runs(sharded["whole1"], resumed, STEPS)
    assert "devices" not in sharded["checkpoint_keys"] and "step" in sharded["checkpoint_keys"]


def test_progress_and_the_non_finite_check_see_the_split_run(sharded):
    done = [report[1] for report in sharded["progress"]]
    assert len(done) > 2 and done == sorted(done) and done[-1] == STEPS
    assert all(report[2] == STEPS for report in sharded["progress"])
    assert "non-finite at step" in sharded.get("non_finite", "")


def test_impossible_splits_say_what_and_how_to_fix(sharded):
    assert "devices=3" in sharded["too_many"] and "JAX sees 2 cpu device(s)" in sharded["too_many"]
    assert "xla_force_host_platform_device_count=3" in sharded["too_many"]
    assert "devices must be a whole number >= 1" in sharded["zero"]
    assert "batch_size=63" in sharded["not_divisible"] and "multiple of 2" in sharded["not_divisible"]


def test_the_default_is_one_cpu_device(sharded):
    assert sharded["default_devices"] == 1  # two CPU devices asked for with XLA_FLAGS
    import jax

    from elbox.diffusion.train import training_devices

    available = jax.devices()  # in this process: elbox's own max(cores, 4) CPU devices, unless XLA_FLAGS says
    if available[0].platform != "cpu":
        pytest.skip("JAX's default devices here are not CPUs")
    assert training_devices(None, 512) == available[:1]
    if len(available) >= 2:
        assert training_devices(2, 512) == available[:2]


def test_the_default_takes_all_accelerators_that_divide_the_batch(monkeypatch):
    import jax

    from elbox.diffusion.train import training_devices

    gpus = [SimpleNamespace(platform="gpu", process_index=0, id=i) for i in range(4)]
    monkeypatch.setattr(jax, "devices", lambda: gpus)
    assert training_devices(None, 512) == gpus
    with pytest.warns(RuntimeWarning, match=r"batch_size=510 cannot be split evenly over the 4 gpu devices.*uses 3"):
        assert training_devices(None, 510) == gpus[:3]
    assert training_devices(2, 510) == gpus[:2]
    with pytest.raises(SettingsError, match=r"devices=5, but JAX sees 4 gpu device\(s\)"):
        training_devices(5, 512)


def test_processes_joined_by_jax_distributed_train_as_one_device(sharded, tmp_path):
    shared = tmp_path / "shared"
    shutil.copytree(Path(sharded["folder"]) / "whole1", shared)
    for suffix in (".json", ".eqx"):
        (shared / f"step_000000300{suffix}").unlink()
    with socket.socket() as probe:  # a free port for the coordinator
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    for out in run_scripts([(MULTI, env, [shared, port, rank]) for rank in (0, 1)]):
        assert out["processes"] == 2 and out["visible"] == 2 and out["devices"] == 2
        assert_close_runs(sharded["whole1"], out, STEPS)
    assert sorted(os.listdir(shared))[-2:] == ["step_000000300.eqx", "step_000000300.json"]


def test_a_run_records_its_devices(sharded):
    meta = sharded["run_meta"]
    assert meta["devices"] == 2 and meta["steps_done"] == 20 and meta["device_kind"]
    assert "devices" not in meta["recipe"]  # not a setting that a resume must match


def test_the_command_line_refuses_more_devices_than_there_are(tmp_path, capsys):
    import jax

    from elbox.cli import main

    tiny = ["--data", "moons", "--steps", "20", "--T", "20", "--width", "8", "--depth", "1", "--batch-size", "16",
            "--no-progress"]
    assert main(["diffusion", "train", *tiny, "--out", str(tmp_path / "other"), "--devices", "999"]) == 2
    err = capsys.readouterr().err
    assert "devices=999, but JAX sees" in err
    if jax.devices()[0].platform == "cpu":
        assert "xla_force_host_platform_device_count=999" in err
    assert not (tmp_path / "other").exists()  # refused before the folder was made
