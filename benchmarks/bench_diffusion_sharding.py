#!/usr/bin/env python
"""Diffusion training split over JAX's CPU devices: steps per second on 1, 2 and 4 devices.

``elbox.diffusion.train.train(..., devices=N)`` splits every minibatch over N devices (one
program over a 1-axis mesh; the compiler all-reduces the batch means). This script measures
whether that pays on a CPU, where JAX's "devices" are slices of the same cores, for two of
elbox's default recipes, built exactly as ``elbox diffusion train`` builds them
(``elbox.diffusion.recipes``):

* ``gmm8``: the vdm recipe, MLP 256 x 3 on 2-D points, batch 512;
* ``digits``: the vdm recipe, MLP 512 x 3 on 64 pixels with the grid posterior decoder,
  batch 256.

Four set-ups, each in a fresh Python process (the device count is fixed when JAX starts):

* ``default``: no ``XLA_FLAGS``; ``import elbox`` gives JAX ``max(cores, 4)`` CPU devices (for
  MCMC chains) and training runs with ``devices=1``: what ``elbox diffusion train`` did before
  training could be split, and the baseline of every ratio;
* ``1``, ``2``, ``4``: ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` and ``devices=N``
  (``1``: a process with a single CPU device).

**Throughput.** A run of N steps is cut into ``CHUNKS`` = 10 chunks (``chunk_size=ceil(N /
10)``) and timed at the end of each through the progress callback; steady-state steps per
second are the steps of chunks 2..10 over their time (the first chunk holds the compilation).
``first_call_seconds`` is the whole call to ``train`` (tracing, compiling, all N steps);
``compile_seconds_estimate`` the first chunk's time less its steps at the steady rate. The
set-ups run in turn within each repeat (their order rotating between repeats) and medians are
reported, one JSON line per (recipe, set-up), with ``ratio`` = its median steps/s over the
``default`` set-up's and ``ratio_paired`` the median of the per-repeat ratios (less exposed to
the machine's slow drifts).

Usage:
    python benchmarks/bench_diffusion_sharding.py --recipes gmm8   # 4 set-ups x 2 repeats (~2 min on 2 cores)
    python benchmarks/bench_diffusion_sharding.py --save           # both recipes (~4.5 min), also written to results/
    python benchmarks/bench_diffusion_sharding.py --recipes gmm8 --setups default 2 --repeats 3
    python benchmarks/bench_diffusion_sharding.py --worker gmm8 2 1000 0     # one raw measurement, seed 0
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

from _common import device_description, elbox_source_hash, run_worker_process

BENCHMARK = "diffusion_training_sharding"
RECIPES = {"gmm8": 1000, "digits": 500}  # recipe: steps per measurement
SETUPS = ("default", "1", "2", "4")
CHUNKS = 10
REPEATS = 2
SEED = 0
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def chunk_bounds(steps: int) -> list[int]:
    size = math.ceil(steps / CHUNKS)
    return sorted({min(steps, size * k) for k in range(1, CHUNKS + 1)})


def worker(recipe_name: str, setup: str, steps: int, seed: int) -> dict:
    """Train ``recipe_name``'s default vdm recipe for ``steps`` steps on the devices of ``setup``."""
    tic_imports = time.perf_counter()
    import jax
    import numpy as np

    from elbox.diffusion.data import get_dataset
    from elbox.diffusion.recipes import (
        bin_width_of,
        build_decoder,
        build_model,
        build_optimizer,
        initial_prior_logits,
        make_recipe,
    )
    from elbox.diffusion.run import _scaling
    from elbox.diffusion.run_folder import keys
    from elbox.diffusion.train import train

    import_seconds = time.perf_counter() - tic_imports
    devices = 1 if setup == "default" else int(setup)
    data = get_dataset(recipe_name, seed=seed)
    recipe = make_recipe(recipe_name)
    key_init, key_train = keys(seed)
    logits = initial_prior_logits(data.train, data.levels) if data.levels is not None else None
    network = build_model(key_init, recipe, data.dim, bin_width_of(data.levels, _scaling(data)), logits)
    decoder = build_decoder(data.levels, _scaling(data), recipe["model"])
    train_data = data.to_model(data.train)
    stamps = []

    def on_progress(_phase, done, _total):
        stamps.append((done, time.perf_counter()))

    tic = time.perf_counter()
    result = train(key_train, train_data, schedule=None, network=network, steps=steps,
                   batch_size=recipe["batch_size"], optimizer=build_optimizer(recipe), loss="vdm", decoder=decoder,
                   ema_decay=recipe["ema_decay"], chunk_size=math.ceil(steps / CHUNKS), progress=on_progress,
                   devices=devices)
    first_call = time.perf_counter() - tic
    if [done for done, _ in stamps] != chunk_bounds(steps):
        raise AssertionError(f"unexpected chunk ends {[done for done, _ in stamps]}; expected {chunk_bounds(steps)}")
    if result.devices != devices:
        raise AssertionError(f"trained on {result.devices} devices, asked for {devices}")
    (first_steps, first_time), (last_steps, last_time) = stamps[0], stamps[-1]
    rate = (last_steps - first_steps) / (last_time - first_time)
    return {
        "recipe": recipe_name,
        "setup": setup,
        "devices": devices,
        "visible_devices": len(jax.devices()),
        "steps": steps,
        "batch_size": recipe["batch_size"],
        "network": recipe["network"],
        "steps_per_second": rate,
        "first_call_seconds": first_call,
        "compile_seconds_estimate": (first_time - tic) - first_steps / rate,
        "import_seconds": import_seconds,
        "final_loss": float(np.mean(result.loss_trace[-max(1, steps // CHUNKS):])),
        "jax_version": jax.__version__,
        "device": device_description(),
        "elbox_source": elbox_source_hash(),
    }


def measure(recipe: str, setup: str, steps: int, seed: int, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ELBOX_CPU_DEVICES")}
    if setup != "default":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={setup}"
    return run_worker_process(__file__, [recipe, setup, steps, seed], timeout, f"{recipe} on {setup} device(s)",
                              env=env)


def compare(recipe: str, steps: int, setups: list[str], repeats: int, timeout: float) -> list[dict]:
    load_before = os.getloadavg()[0]
    runs = {setup: [] for setup in setups}
    for repeat in range(repeats):
        order = setups[repeat % len(setups):] + setups[:repeat % len(setups)]
        for setup in order:
            result = measure(recipe, setup, steps, SEED + repeat, timeout)
            runs[setup].append(result)
            print(f"  [{recipe} repeat {repeat + 1}/{repeats}] setup {setup:7s} {result['steps_per_second']:8.1f} "
                  f"steps/s  first call {result['first_call_seconds']:6.2f} s  compile "
                  f"~{result['compile_seconds_estimate']:.2f} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]

    def median(setup, field):
        return statistics.median(r[field] for r in runs[setup])

    base = "default" if "default" in setups else setups[0]
    lines = []
    for setup in setups:
        speed = median(setup, "steps_per_second")
        paired = statistics.median(a["steps_per_second"] / b["steps_per_second"]
                                   for a, b in zip(runs[setup], runs[base]))
        first = runs[setup][0]
        lines.append({
            "benchmark": BENCHMARK,
            "recipe": recipe,
            "model": "vdm",
            "network": first["network"],
            "batch_size": first["batch_size"],
            "setup": setup,
            "devices": first["devices"],
            "visible_devices": first["visible_devices"],
            "baseline": base,
            "steps": steps,
            "chunks": CHUNKS,
            "steps_per_second": round(speed, 2),
            "ratio": round(speed / median(base, "steps_per_second"), 4),
            "ratio_paired": round(paired, 4),
            "first_call_seconds": round(median(setup, "first_call_seconds"), 3),
            "compile_seconds_estimate": round(median(setup, "compile_seconds_estimate"), 3),
            "final_loss": round(median(setup, "final_loss"), 4),
            "repeats": repeats,
            "load_average": [round(load_before, 2), round(load_after, 2)],
            "cores": os.cpu_count(),
            "device": first["device"],
            "jax_version": first["jax_version"],
            "elbox_source": ",".join(sorted({r["elbox_source"] for r in runs[setup]})),
        })
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    parser.add_argument("--steps", type=int, help="steps per measurement (default: gmm8 1000, digits 500)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"fresh-process repeats (default {REPEATS})")
    parser.add_argument("--save", nargs="?", const="", metavar="PATH",
                        help="also write the JSON lines to PATH (default benchmarks/results/"
                             "diffusion_sharding_cpu<cores>_<date>.jsonl)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for one worker process")
    parser.add_argument("--worker", nargs=4, metavar=("RECIPE", "SETUP", "STEPS", "SEED"),
                        help="internal: one measurement, printed as JSON")
    args = parser.parse_args(argv)
    if args.worker:
        recipe, setup, steps, seed = args.worker
        print(json.dumps(worker(recipe, setup, int(steps), int(seed))), flush=True)
        return
    if args.steps is not None and args.steps < 2 * CHUNKS:
        parser.error(f"--steps must be at least {2 * CHUNKS} ({CHUNKS} timed chunks)")
    tic = time.perf_counter()
    lines = []
    for recipe in args.recipes:
        for line in compare(recipe, args.steps or RECIPES[recipe], args.setups, args.repeats, args.timeout):
            print(json.dumps(line), flush=True)
            lines.append(line)
    if args.save is not None:
        path = args.save or os.path.join(
            RESULTS_DIR, f"diffusion_sharding_cpu{os.cpu_count()}_{datetime.date.today().isoformat()}.jsonl")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
        print(f"saved {path}", file=sys.stderr)
    print(f"total wall time {time.perf_counter() - tic:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
