#!/usr/bin/env python
"""Random-walk Metropolis–Hastings: elbox against BlackJAX on the same model and settings.

Both sides run the same work:

* the same log density, ``model.flat_log_joint`` on the flat unconstrained vector;
* the same number of chains, batched with ``jax.vmap``;
* the same number of draws, all in one ``jax.lax.scan`` inside one ``jax.jit``;
* the same Gaussian random walk with the fixed per-coordinate scale ``2.38 / sqrt(d)``
  (elbox with ``warmup=0`` keeps the scale it is given);
* the same per-step keys, ``fold_in(key, t)`` split into one key per chain;
* the same per-step outputs kept: positions, log densities and acceptance probabilities.

elbox is called through its public ``elbox.sample(..., method="mh", warmup=0)``, which times
itself (``results.seconds``). The BlackJAX side is written here with
``blackjax.additive_step_random_walk.normal_random_walk`` (BlackJAX 1.7's Gaussian random-walk
Metropolis), compiled with ``jax.jit(...).lower(...).compile()`` and timed with
``block_until_ready``.

Every measurement runs in a fresh Python process (this script, started again with
``--worker``), so that no compilation cache or warm allocator carries over; each comparison is
repeated and the medians are reported, one JSON line per (model, chains).

Usage:
    python benchmarks/bench_mh.py                 # the full run (a few minutes on 2 cores)
    python benchmarks/bench_mh.py --quick         # a smoke run (well under a minute)
    python benchmarks/bench_mh.py --models eight_schools --chains 4 --repeats 3
    python benchmarks/bench_mh.py --worker elbox eight_schools 4 20000   # one raw measurement
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

from _common import device_description, elbox_source_hash, run_worker_process

BENCHMARK = "mh_random_walk"
SEED = 0

# Draws per chain, chosen so that each run samples for roughly half a second to a second on a
# 2-core CPU (eight_schools: ~0.4-0.5 M steps/s with 4 chains, ~1-2.5 M steps/s with 1000
# chains; logistic_regression: ~0.1 M and ~0.4 M steps/s) while a full run stays under five
# minutes: each fresh process also pays ~3 s of imports and ~1-2 s of compilation, and elbox
# builds its ArviZ results after sampling.
FULL_DRAWS = {
    ("eight_schools", 4): 60_000,
    ("eight_schools", 1000): 1_000,
    ("logistic_regression", 4): 20_000,
    ("logistic_regression", 1000): 400,
}
QUICK_DRAWS = {
    ("eight_schools", 4): 5_000,
    ("eight_schools", 1000): 200,
    ("logistic_regression", 4): 2_000,
    ("logistic_regression", 1000): 50,
}
FULL_MODELS = ("eight_schools", "logistic_regression")
QUICK_MODELS = ("eight_schools",)
CHAINS = (4, 1000)
# Fresh-process repeats per library; fewer for the slower model to keep the full run short.
FULL_REPEATS = {"eight_schools": 5, "logistic_regression": 3}


def random_walk_scale(dimension: int) -> float:
    """The scale both samplers use: 2.38 / sqrt(d), elbox's default initial scale."""
    return 2.38 / math.sqrt(dimension)


# -- workers: one measurement each, in a fresh process -------------------------------------------


def worker_elbox(model_name: str, chains: int, draws: int) -> dict:
    import jax

    import elbox

    model = elbox.models.get(model_name)
    scale = random_walk_scale(model.dimension)
    tic = time.perf_counter()
    results = elbox.sample(
        model, jax.random.key(SEED), method="mh", chains=chains, warmup=0, draws=draws, scale=scale, progress=False
    )
    first_call = time.perf_counter() - tic
    seconds = results.seconds
    return {
        "compile_seconds": seconds["compile"],
        "sampling_seconds": seconds["sampling"],
        "first_call_seconds": first_call,
        "acceptance_rate": float(results.acceptance_rate),
    }


def worker_blackjax(model_name: str, chains: int, draws: int) -> dict:
    import blackjax
    import jax
    import jax.numpy as jnp
    import numpy as np

    import elbox

    model = elbox.models.get(model_name)
    scale = random_walk_scale(model.dimension)
    tic_first = time.perf_counter()

    # Starting points as elbox draws them: init_position + U(-2, 2) on each coordinate.
    key_init, key_sampling = jax.random.split(jax.random.key(SEED))
    center = model.ravel(model.init_position)
    dimension = center.size
    positions = center + jax.random.uniform(key_init, (chains, dimension), center.dtype, -2.0, 2.0)

    algorithm = blackjax.additive_step_random_walk.normal_random_walk(
        model.flat_log_joint, jnp.full((dimension,), scale, center.dtype)
    )
    states = jax.vmap(algorithm.init)(positions)

    def run(states, key):
        def body(states, t):
            keys = jax.random.split(jax.random.fold_in(key, t), chains)
            states, info = jax.vmap(algorithm.step)(keys, states)
            return states, (states.position, states.logdensity, info.acceptance_rate)

        return jax.lax.scan(body, states, jnp.arange(draws, dtype=jnp.int32))

    tic = time.perf_counter()
    compiled = jax.jit(run).lower(states, key_sampling).compile()
    compile_seconds = time.perf_counter() - tic

    tic = time.perf_counter()
    final_states, outputs = compiled(states, key_sampling)
    jax.block_until_ready((final_states, outputs))
    sampling_seconds = time.perf_counter() - tic

    # Bring the draws to the host as elbox does (its timed loop includes this conversion);
    # timed separately so that it can be compared.
    tic = time.perf_counter()
    positions, log_densities, acceptance = (np.asarray(x) for x in outputs)
    to_host_seconds = time.perf_counter() - tic
    first_call = time.perf_counter() - tic_first
    assert positions.shape == (draws, chains, dimension) and np.isfinite(log_densities).all()
    return {
        "compile_seconds": compile_seconds,
        "sampling_seconds": sampling_seconds,
        "to_host_seconds": to_host_seconds,
        "first_call_seconds": first_call,
        "acceptance_rate": float(acceptance.mean()),
    }


WORKERS = {"elbox": worker_elbox, "blackjax": worker_blackjax}


def run_worker(library: str, model_name: str, chains: int, draws: int) -> dict:
    result = WORKERS[library](model_name, chains, draws)
    result.update(
        library=library,
        model=model_name,
        chains=chains,
        draws=draws,
        steps_per_second=chains * draws / result["sampling_seconds"],
        device=device_description(),
        elbox_source=elbox_source_hash(),
    )
    return result


# -- driver --------------------------------------------------------------------------------------


def measure(library: str, model_name: str, chains: int, draws: int, timeout: float) -> dict:
    """One measurement in a fresh Python process; its last stdout line is the JSON result."""
    return run_worker_process(__file__, [library, model_name, chains, draws], timeout,
                              f"{library}, {model_name} with {chains} chains")


def compare(model_name: str, chains: int, draws: int, repeats: int, timeout: float) -> dict:
    runs = {"elbox": [], "blackjax": []}
    for repeat in range(repeats):
        # Alternate which library goes first, so slow drifts of the machine hit both alike.
        order = ("elbox", "blackjax") if repeat % 2 == 0 else ("blackjax", "elbox")
        for library in order:
            result = measure(library, model_name, chains, draws, timeout)
            runs[library].append(result)
            print(
                f"  [{model_name} chains={chains} draws={draws} repeat {repeat + 1}/{repeats}] {library:8s} "
                f"{result['steps_per_second']:12,.0f} steps/s  sampling {result['sampling_seconds']:.3f} s  "
                f"compile {result['compile_seconds']:.2f} s  first call {result['first_call_seconds']:.2f} s",
                file=sys.stderr,
                flush=True,
            )

    def median(library, field):
        return statistics.median(r[field] for r in runs[library])

    elbox_speed, blackjax_speed = median("elbox", "steps_per_second"), median("blackjax", "steps_per_second")
    # The two measurements of one repeat ran back to back, so their ratio is less exposed to
    # the machine's slow drifts (other processes) than the ratio of the two medians.
    paired = statistics.median(
        e["steps_per_second"] / b["steps_per_second"] for e, b in zip(runs["elbox"], runs["blackjax"])
    )
    return {
        "benchmark": BENCHMARK,
        "model": model_name,
        "chains": chains,
        "draws": draws,
        "elbox_steps_per_second": round(elbox_speed, 1),
        "blackjax_steps_per_second": round(blackjax_speed, 1),
        "ratio": round(elbox_speed / blackjax_speed, 4),
        "ratio_paired": round(paired, 4),
        "elbox_compile_seconds": round(median("elbox", "compile_seconds"), 4),
        "blackjax_compile_seconds": round(median("blackjax", "compile_seconds"), 4),
        "elbox_first_call_seconds": round(median("elbox", "first_call_seconds"), 4),
        "blackjax_first_call_seconds": round(median("blackjax", "first_call_seconds"), 4),
        "elbox_sampling_seconds": round(median("elbox", "sampling_seconds"), 4),
        "blackjax_sampling_seconds": round(median("blackjax", "sampling_seconds"), 4),
        "blackjax_to_host_seconds": round(median("blackjax", "to_host_seconds"), 4),
        "elbox_acceptance_rate": round(median("elbox", "acceptance_rate"), 4),
        "blackjax_acceptance_rate": round(median("blackjax", "acceptance_rate"), 4),
        "repeats": repeats,
        "device": runs["elbox"][0]["device"],
        # Changes if elbox's code changed between the measurements of this comparison.
        "elbox_source": ",".join(sorted({r["elbox_source"] for r in runs["elbox"] + runs["blackjax"]})),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: eight_schools, few draws, 1 repeat")
    parser.add_argument("--models", nargs="+", help=f"models to run (default: {', '.join(FULL_MODELS)})")
    parser.add_argument("--chains", nargs="+", type=int, help=f"chain counts (default: {CHAINS})")
    parser.add_argument("--draws", type=int, help="draws per chain for every run (default: per model and chains)")
    parser.add_argument(
        "--repeats", type=int,
        help="fresh-process repeats per library "
             "(default 5 for eight_schools, 3 for logistic_regression; 1 with --quick)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for one worker process")
    parser.add_argument(
        "--worker", nargs=4, metavar=("LIBRARY", "MODEL", "CHAINS", "DRAWS"),
        help="internal: run one measurement (LIBRARY is elbox or blackjax) and print it as JSON",
    )
    args = parser.parse_args(argv)

    if args.worker:
        library, model_name, chains, draws = args.worker
        if library not in WORKERS:
            parser.error(f"unknown library {library!r}; choose from {', '.join(WORKERS)}")
        print(json.dumps(run_worker(library, model_name, int(chains), int(draws))), flush=True)
        return

    models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    chain_counts = args.chains or CHAINS
    draws_table = QUICK_DRAWS if args.quick else FULL_DRAWS
    tic = time.perf_counter()
    for model_name in models:
        for chains in chain_counts:
            draws = args.draws or draws_table.get((model_name, chains)) or max(50, 400_000 // chains)
            repeats = args.repeats or (1 if args.quick else FULL_REPEATS.get(model_name, 5))
            print(json.dumps(compare(model_name, chains, draws, repeats, args.timeout)), flush=True)
    print(f"total wall time {time.perf_counter() - tic:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
