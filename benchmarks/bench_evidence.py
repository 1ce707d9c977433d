#!/usr/bin/env python
"""Evidence: elbox's SMC estimate of log p(x) against BlackJAX's adaptive tempered SMC, on models
whose log p(x) is known exactly.

Both libraries anneal from the prior to the posterior on the same functions of one flat
unconstrained vector, in float32: the built-in elbox model's ``flat_log_prior`` and
``flat_log_likelihood``, started from ``sample_prior`` draws; the exact value is the model's
``known.log_evidence``. The models: ``normal_normal`` (1-d), ``nig_regression`` (5-d, the
normal-inverse-gamma regression) and ``gaussian_evidence_100d`` (100-d).

* elbox: ``elbox.evidence(model, key, method="smc", particles=N, runs=R, moves=M)``: R + 1
  runs of N particles step together; the first (the pilot) chooses each next β (ESS 0.5 N of
  its own weights), the other R follow it, each resampling its own; the estimate is their mean
  log Ẑ plus half their variance, with the runs' spread giving its standard error. Every change
  of β is followed by M HMC moves (a number of leapfrog steps drawn per move, 4 on average;
  inverse mass matrix the particles' variance; step size multiplied by exp(acceptance − 0.65)
  after every move).
* elbox-q: the same, started from a mean-field q that ``elbox.fit`` fits first
  (``start="meanfield"``; the fit is inside the timing): the path runs from q to the posterior.
* BlackJAX: ``blackjax.smc.adaptive_tempered.build_kernel`` (the kernel of
  ``blackjax.adaptive_tempered_smc``) with target ESS 0.5, ``blackjax.smc.resampling.systematic``
  and ``blackjax.hmc`` as the inner kernel: M moves per change of β (``num_mcmc_steps``), each
  4 leapfrog steps (``num_integration_steps``), driven to β = 1 by a ``lax.while_loop`` that
  sums ``info.log_likelihood_increment``. Its parameters are set before every stage the way
  elbox sets its own: the inverse mass matrix is the particles' weighted variance (diagonal), the
  step size starts at d^(-1/4) and is multiplied by exp(mean acceptance − 0.65) after each stage.
  One run gives one estimate and no standard error. Two lines: ``blackjax`` with N particles
  (elbox's count per run) and ``blackjax-matched`` with R N particles, as many as elbox moves in
  its R runs together (about the same work per stage).

Each (library, model, seed) runs in a fresh Python process (this script, started again with
``--worker``): it times the imports (jax, elbox, and BlackJAX for its lines), builds the model
outside the timings, then times the whole estimate including compilation, with the result on
the host. The seed s gives the key ``jax.random.key(s)`` to both libraries.

Output: one JSON line per (library, model, seed), and one summary line per model with each
library's RMSE over the seeds (against the exact value), its mean error, the median seconds, the
ratios elbox RMSE / BlackJAX RMSE and elbox seconds / BlackJAX seconds, the equal-time RMSE ratio
(RMSE ratio × sqrt(seconds ratio): each error moved to the other's time as if it fell as
1/sqrt(seconds), which flatters whoever spends more of its time compiling), and elbox's z-scores
(error / reported standard error).

Usage:
    python benchmarks/bench_evidence.py                    # 5 seeds, all models and libraries
    python benchmarks/bench_evidence.py --quick            # smoke run: 1 seed, few particles
    python benchmarks/bench_evidence.py --models normal_normal nig_regression --seeds 3 \\
        --out benchmarks/results/evidence_cpu2_DATE.jsonl
    python benchmarks/bench_evidence.py --libraries elbox,blackjax --particles 500
    python benchmarks/bench_evidence.py --worker elbox nig_regression 1000 8 10 0   # one raw measurement
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

from _common import device_description, elbox_source_hash, run_worker_process

BENCHMARK = "evidence"
LIBRARIES = ("elbox", "elbox-q", "blackjax", "blackjax-matched")
ELBOX_LINES = ("elbox", "elbox-q")
PEERS = ("blackjax", "blackjax-matched")
MODELS = ("normal_normal", "nig_regression", "gaussian_evidence_100d")
# elbox's particles per run, per model: chosen so that one elbox estimate (compilation included)
# takes about 10-30 s on 2 CPU cores (measured: about 11, 13-23 and 20-36 s; most of it compiling
# on the two small models).
DEFAULT_PARTICLES = {"normal_normal": 2000, "nig_regression": 1000, "gaussian_evidence_100d": 1000}
QUICK_PARTICLES = 200
QUICK_MODELS = ("normal_normal", "nig_regression")
DEFAULT_SEEDS = 5
# elbox's defaults: runs stepping together, HMC moves per change of β.
RUNS, MOVES = 8, 10
# BlackJAX's inner HMC and its tuning between stages (elbox's own rule, applied per stage).
NUM_INTEGRATION_STEPS = 4
TARGET_ESS = 0.5
TARGET_ACCEPTANCE = 0.65
MAX_STAGES = 2000


# -- the two libraries: each gives the estimate of one model for one key ---------------------------


def import_libraries(library: str):
    import jax

    import elbox

    jax.devices()
    if library.startswith("blackjax"):
        import blackjax  # noqa: F401
    return elbox


def run_elbox(elbox, model, key, particles, runs, moves, start="prior") -> dict:
    results = elbox.evidence(model, key, method="smc", particles=particles, runs=runs, moves=moves, start=start,
                             progress=False)
    d = results.diagnostics
    return {"estimate": results.log_evidence.value, "stderr": results.log_evidence.stderr,
            "stages": d["stages"], "acceptance": d["acceptance"], "reached_posterior": d["reached_posterior"],
            "particles": particles, "runs": runs, "moves": moves, "start": results.start,
            "run_estimates": d["run_log_evidence"], "warnings": results.warnings,
            "library_seconds": {k: round(float(v), 4) for k, v in results.seconds.items()}}


def run_blackjax(model, key, particles, moves) -> dict:
    """BlackJAX's adaptive tempered SMC from ``particles`` prior draws to β = 1 in one jitted
    program: (log Ẑ, stages, mean acceptance)."""
    import functools

    import blackjax
    import jax
    import jax.numpy as jnp
    from blackjax.smc import adaptive_tempered, resampling

    dimension = model.dimension
    kernel = adaptive_tempered.build_kernel(
        model.flat_log_prior,
        model.flat_log_likelihood,
        functools.partial(blackjax.hmc.build_kernel(), num_integration_steps=NUM_INTEGRATION_STEPS),
        blackjax.hmc.init,
        resampling.systematic,
        TARGET_ESS,
    )

    def program(key):
        key_start, key_run = jax.random.split(key)
        start = model.sample_prior(key_start, particles)
        dtype = start.dtype
        state = adaptive_tempered.init(start)
        state = state._replace(tempering_param=jnp.zeros((), dtype))

        def keep_going(c):
            return (c["state"].tempering_param < 1.0) & (c["stage"] < MAX_STAGES)

        def stage(c):
            key, key_step = jax.random.split(c["key"])
            positions, weights = c["state"].particles, c["state"].weights
            mean = weights @ positions
            variance = jnp.maximum(weights @ (positions - mean) ** 2, 1e-10 * (1.0 + weights @ positions**2))
            # Shared by all particles: a leading axis of length 1 (blackjax.smc.extend_params).
            parameters = {"step_size": c["step_size"][None], "inverse_mass_matrix": variance[None]}
            state, info = kernel(key_step, c["state"], moves, parameters)
            acceptance = jnp.mean(info.update_info.acceptance_rate)
            return dict(key=key, state=state, log_z=c["log_z"] + info.log_likelihood_increment,
                        step_size=c["step_size"] * jnp.exp(acceptance - TARGET_ACCEPTANCE),
                        stage=c["stage"] + 1, acceptance_sum=c["acceptance_sum"] + acceptance)

        init = dict(key=key_run, state=state, log_z=jnp.zeros((), dtype),
                    step_size=jnp.asarray(float(dimension) ** -0.25, dtype), stage=jnp.int32(0),
                    acceptance_sum=jnp.zeros((), dtype))
        c = jax.lax.while_loop(keep_going, stage, init)
        return c["log_z"], c["stage"], c["acceptance_sum"] / jnp.maximum(c["stage"], 1), c["step_size"]

    tic = time.perf_counter()
    compiled = jax.jit(program).lower(key).compile()
    compiled_at = time.perf_counter()
    log_z, stages, acceptance, step_size = jax.device_get(compiled(key))
    done = time.perf_counter()
    return {"estimate": float(log_z), "stderr": None, "stages": int(stages), "acceptance": float(acceptance),
            "reached_posterior": int(stages) < MAX_STAGES, "particles": particles, "moves": moves,
            "final_step_size": float(step_size),
            "library_seconds": {"compile": round(compiled_at - tic, 4), "running": round(done - compiled_at, 4)}}


def library_version(library: str) -> str:
    import importlib.metadata

    return importlib.metadata.version("elbox" if library in ELBOX_LINES else "blackjax")


# -- the worker: one measurement in a fresh process -----------------------------------------------


def run_worker(library: str, model_name: str, particles: int, runs: int, moves: int, seed: int) -> dict:
    tic = time.perf_counter()
    elbox = import_libraries(library)
    import_seconds = time.perf_counter() - tic

    import jax

    # Outside the timings: the model (for both libraries the same object) and the key.
    model = elbox.models.get(model_name)
    exact = float(model.known.log_evidence)
    key = jax.random.key(seed)

    tic = time.perf_counter()
    if library == "elbox":
        result = run_elbox(elbox, model, key, particles, runs, moves)
    elif library == "elbox-q":
        result = run_elbox(elbox, model, key, particles, runs, moves, start="meanfield")
    elif library == "blackjax":
        result = run_blackjax(model, key, particles, moves)
    elif library == "blackjax-matched":
        result = run_blackjax(model, key, runs * particles, moves)
    else:
        raise ValueError(f"unknown library {library!r}; choose from {', '.join(LIBRARIES)}")
    seconds = time.perf_counter() - tic

    error = result["estimate"] - exact
    stderr = result["stderr"]
    return {
        "benchmark": BENCHMARK,
        "library": library,
        "model": model_name,
        "dimension": model.dimension,
        "dtype": str(model.flat_dtype),
        "seed": seed,
        "version": library_version(library),
        **result,
        "exact": exact,
        "error": error,
        "abs_error": abs(error),
        "z": error / stderr if stderr else None,
        "import_seconds": round(import_seconds, 4),
        "seconds": round(seconds, 4),
        "seconds_with_import": round(seconds + import_seconds, 4),
        "device": device_description(),
        "elbox_source": elbox_source_hash(),
    }


# -- driver ----------------------------------------------------------------------------------------


def measure(library: str, model: str, particles: int, runs: int, moves: int, seed: int, timeout: float) -> dict:
    """One measurement in a fresh Python process; a failure comes back as ``{"error_message": ...}``."""
    try:
        return run_worker_process(__file__, [library, model, particles, runs, moves, seed], timeout,
                                  f"{library}, {model}, seed {seed}")
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as err:
        return {"benchmark": BENCHMARK, "library": library, "model": model, "seed": seed,
                "error_message": str(err)[-2000:]}


def rounded(value, digits=4):
    """``value`` to ``digits`` significant figures (an RMSE of 1e-5 must not print as 0)."""
    return None if value is None or not math.isfinite(value) else float(f"{value:.{digits}g}")


def library_summary(runs: list) -> dict:
    errors = [r["error"] for r in runs]
    if not errors:
        return {"succeeded": 0}
    return {
        "succeeded": len(runs),
        "particles": runs[0]["particles"],
        "rmse": rounded(math.sqrt(statistics.fmean(e * e for e in errors))),
        "mean_error": rounded(statistics.fmean(errors)),
        "max_abs_error": rounded(max(abs(e) for e in errors)),
        "median_seconds": rounded(statistics.median(r["seconds"] for r in runs)),
        "median_compile_seconds": rounded(statistics.median(r["library_seconds"]["compile"] for r in runs)),
        "median_stages": statistics.median(r["stages"] for r in runs),
        "median_acceptance": rounded(statistics.median(r["acceptance"] for r in runs)),
    }


def z_summary(runs: list) -> dict:
    """elbox's errors in units of its reported standard errors: near N(0, 1) if they are honest."""
    zs = [r["z"] for r in runs if r.get("z") is not None and math.isfinite(r["z"])]
    if not zs:
        return {}
    return {"z": [round(z, 3) for z in zs], "mean_z": rounded(statistics.fmean(zs), 3),
            "rms_z": rounded(math.sqrt(statistics.fmean(z * z for z in zs)), 3),
            "max_abs_z": rounded(max(abs(z) for z in zs), 3), "beyond_2": sum(abs(z) > 2 for z in zs),
            "median_stderr": rounded(statistics.median(r["stderr"] for r in runs))}


def summary_line(model: str, exact: float | None, results: dict, seeds: int) -> dict:
    ok = {lib: [r for r in runs if "error_message" not in r] for lib, runs in results.items()}
    line = {"benchmark": BENCHMARK, "model": model, "summary": True, "exact": exact, "seeds": seeds}
    for library, runs in ok.items():
        line[library.replace("-", "_")] = library_summary(runs)
        line[library.replace("-", "_")]["failures"] = [r["error_message"] for r in results[library]
                                                       if "error_message" in r]
    for elbox_line in ELBOX_LINES:
        if not ok.get(elbox_line):
            continue
        mine = line[elbox_line.replace("-", "_")]
        mine.update(z_summary(ok[elbox_line]))
        for peer in PEERS:
            if not ok.get(peer):
                continue
            theirs = line[peer.replace("-", "_")]
            name = f"{elbox_line}_vs_{peer}".replace("-", "_")
            rmse_ratio = mine["rmse"] / theirs["rmse"] if theirs["rmse"] else None
            seconds_ratio = mine["median_seconds"] / theirs["median_seconds"]
            line[f"rmse_ratio_{name}"] = rounded(rmse_ratio)
            line[f"seconds_ratio_{name}"] = rounded(seconds_ratio)
            # The error either would have in the other's time, if error falls as 1/sqrt(seconds).
            line[f"equal_time_rmse_ratio_{name}"] = (None if rmse_ratio is None
                                                     else rounded(rmse_ratio * math.sqrt(seconds_ratio)))
    return line


def progress_text(r: dict) -> str:
    stderr = "" if r["stderr"] is None else f" ± {r['stderr']:.4f}"
    z = "" if r["z"] is None else f" (z {r['z']:+.2f})"
    return (f"{r['estimate']:.4f}{stderr}  exact {r['exact']:.4f}  error {r['error']:+.4f}{z}  "
            f"{r['seconds']:.2f} s (compile {r['library_seconds']['compile']:.2f})  "
            f"stages {r['stages']}  acceptance {r['acceptance']:.2f}  N {r['particles']}")


def compare(model: str, particles: int, runs: int, moves: int, seeds: int, libraries: tuple, timeout: float,
            emit) -> None:
    results = {library: [] for library in libraries}
    exact = None
    for seed in range(seeds):
        # Rotate which library goes first, so slow drifts of the machine hit all alike.
        shift = seed % len(libraries)
        for library in libraries[shift:] + libraries[:shift]:
            result = measure(library, model, particles, runs, moves, seed, timeout)
            tag = f"  [{model} seed {seed + 1}/{seeds}] {library:16s}"
            if "error_message" in result:
                message = result["error_message"].strip().splitlines()
                print(f"{tag} FAILED: {message[-1] if message else '?'}", file=sys.stderr, flush=True)
            else:
                exact = result["exact"]
                print(f"{tag} {progress_text(result)}", file=sys.stderr, flush=True)
            results[library].append(result)
            emit(result)
    emit(summary_line(model, exact, results, seeds))


def resummarize(path: str) -> None:
    """The summary line of each model from a results file's per-seed lines, recomputed."""
    with open(path) as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    for model in dict.fromkeys(r["model"] for r in records if not r.get("summary")):
        runs = [r for r in records if r["model"] == model and not r.get("summary")]
        by_library = {library: [r for r in runs if r["library"] == library] for library in LIBRARIES}
        by_library = {library: found for library, found in by_library.items() if found}
        exact = next((r["exact"] for r in runs if "exact" in r), None)
        print(json.dumps(summary_line(model, exact, by_library, max(r["seed"] for r in runs) + 1)))


def parse_libraries(values) -> tuple:
    if not values:
        return LIBRARIES
    names = tuple(name for value in values for name in value.split(",") if name)
    unknown = [name for name in names if name not in LIBRARIES]
    if unknown:
        raise SystemExit(f"unknown libraries {unknown}; choose from {', '.join(LIBRARIES)}")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {', '.join(QUICK_MODELS)}, {QUICK_PARTICLES} particles, 1 seed")
    parser.add_argument("--models", nargs="+", choices=MODELS, help=f"default: {', '.join(MODELS)}")
    parser.add_argument("--libraries", nargs="+",
                        help=f"comma- or space-separated, from {', '.join(LIBRARIES)} (default: all)")
    parser.add_argument("--seeds", type=int, help=f"fresh-process seeds per library (default {DEFAULT_SEEDS}; "
                                                  "1 with --quick)")
    parser.add_argument("--particles", type=int,
                        help="elbox's particles per run and BlackJAX's particles, for every model (default per "
                             "model: " + ", ".join(f"{m} {n}" for m, n in DEFAULT_PARTICLES.items()) + ")")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"elbox's runs along the schedule (default {RUNS})")
    parser.add_argument("--moves", type=int, default=MOVES,
                        help=f"HMC moves per change of β, both libraries (default {MOVES})")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for one worker process")
    parser.add_argument("--out", help="also write the JSON lines to this file")
    parser.add_argument("--summarize", metavar="JSONL",
                        help="print the summary lines again from the measurements recorded in JSONL; run nothing")
    parser.add_argument("--worker", nargs=6, metavar=("LIBRARY", "MODEL", "PARTICLES", "RUNS", "MOVES", "SEED"),
                        help="internal: run one measurement and print it as JSON")
    args = parser.parse_args(argv)

    if args.summarize:
        resummarize(args.summarize)
        return
    if args.worker:
        library, model, particles, runs, moves, seed = args.worker
        print(json.dumps(run_worker(library, model, int(particles), int(runs), int(moves), int(seed))), flush=True)
        return

    models = args.models or (QUICK_MODELS if args.quick else MODELS)
    seeds = args.seeds or (1 if args.quick else DEFAULT_SEEDS)
    libraries = parse_libraries(args.libraries)
    out = open(args.out, "w") if args.out else None
    load_before = os.getloadavg()[0]

    def emit(line: dict) -> None:
        if line.get("summary"):
            line["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        text = json.dumps(line)
        print(text, flush=True)
        if out is not None:
            out.write(text + "\n")
            out.flush()

    tic = time.perf_counter()
    try:
        for model in models:
            particles = args.particles or (QUICK_PARTICLES if args.quick else DEFAULT_PARTICLES[model])
            compare(model, particles, args.runs, args.moves, seeds, libraries, args.timeout, emit)
    finally:
        if out is not None:
            out.close()
    print(f"total wall time {time.perf_counter() - tic:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
