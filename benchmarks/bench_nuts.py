#!/usr/bin/env python
"""NUTS: elbox against NumPyro and BlackJAX on the same NumPyro models and settings.

All three libraries sample the same NumPyro model function with 4 chains, 1000 warm-up steps
and 1000 draws per chain, float32, a target acceptance of 0.8 and a maximum tree depth of 10,
each library with its own default diagonal mass matrix:

* elbox: ``elbox.sample(Model.from_numpyro(fn), key, method="nuts", chains=4, warmup=1000,
  draws=1000, progress=False)``, its defaults (``mass_matrix="diagonal_gradient"``: nutpie's
  estimate from the draws and the gradients); and again as ``elbox-stan-diagonal`` with
  ``mass_matrix="diagonal"`` (Stan's regularised window variances, as the peers use), and as
  ``elbox-low-rank`` with ``mass_matrix="low_rank"`` (nutpie's diagonal with a low-rank
  correction fitted to the window's draws and gradients, for correlated posteriors);
* NumPyro: ``MCMC(NUTS(fn), num_chains=4, chain_method="vectorized")``, ``mcmc.run``; and as
  ``numpyro-parallel`` with ``chain_method="parallel"`` on 4 CPU devices
  (``numpyro.set_host_device_count(4)``), one chain per device;
* BlackJAX: the log density is minus NumPyro's ``potential_fn`` from
  ``numpyro.infer.util.initialize_model`` (the function NumPyro's own NUTS samples);
  ``blackjax.window_adaptation`` then a ``lax.scan`` of ``blackjax.nuts`` steps, per chain,
  ``vmap``-ped over the chains inside one ``jit``; and as ``blackjax-parallel``, ``pmap``-ped
  over 4 CPU devices (``jax_num_cpu_devices``), one chain per device.

elbox runs its chains on the CPU devices it asks JAX for when imported (max(cores, 4): one per
chain here; ``elbox.cpu_devices``), so the ``-parallel`` lines are the peers' equivalent. The
best peer of each ratio is the best of the four peer lines. ``elbox-stan-diagonal`` runs only
when asked for (``--libraries``).

Each measurement runs in a fresh Python process (this script, started again with ``--worker``):
it times the imports, then the first result (building the model or kernel, compiling, warm-up,
sampling, and the draws on the host as NumPy arrays), then the same run again in the same
process with another key. The bulk ESS of every library is computed by ArviZ on the
constrained draws of the model's latent sites, outside the timings.

With ``--compilation-cache`` every measurement instead runs twice, in two fresh processes that
share a new, empty folder for JAX's persistent compilation cache (switched on in the worker, the
same way for every library, before anything compiles): the first process fills the cache (cold),
the second loads from it (warm). Each times its imports and its first result only.

Usage:
    python benchmarks/bench_nuts.py                 # the full run (about 20 minutes on 2 cores)
    python benchmarks/bench_nuts.py --quick         # a smoke run: eight_schools, few draws, 1 repeat
    python benchmarks/bench_nuts.py --compilation-cache   # cold and warm compilation cache (about 20 minutes)
    python benchmarks/bench_nuts.py --problems funnel gaussian_100d --repeats 5
    python benchmarks/bench_nuts.py --worker elbox eight_schools 1000 1000 0   # one raw measurement, seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _common import (
    cache_contents,
    device_description,
    elbox_source_hash,
    enable_jax_compilation_cache,
    run_worker_process,
)

BENCHMARK = "nuts"
# elbox at its defaults, elbox with Stan's diagonal mass matrix, and the peers at theirs.
LIBRARIES = ("elbox", "elbox-stan-diagonal", "elbox-low-rank", "numpyro", "numpyro-parallel", "blackjax",
             "blackjax-parallel")
# The default run leaves out Stan's diagonal (its comparison is in the README's earlier results).
DEFAULT_LIBRARIES = ("elbox", "elbox-low-rank", "numpyro", "numpyro-parallel", "blackjax", "blackjax-parallel")
ELBOX_LINES = ("elbox", "elbox-stan-diagonal", "elbox-low-rank")
# The elbox lines with options other than the defaults, and the prefix of their summary ratios.
ELBOX_VARIANT_PREFIXES = {"elbox-stan-diagonal": "stan_diagonal_", "elbox-low-rank": "low_rank_"}
PEERS = ("numpyro", "numpyro-parallel", "blackjax", "blackjax-parallel")
PROBLEMS = ("eight_schools", "logistic_5000x25", "gaussian_100d", "funnel")
QUICK_PROBLEMS = ("eight_schools",)
CHAINS = 4
# The peers' chains on one CPU device each (pmap), as elbox's are by default: 4 CPU devices.
PARALLEL_CPU_DEVICES = CHAINS
WARMUP, DRAWS = 1000, 1000
QUICK_WARMUP, QUICK_DRAWS = 200, 200
TARGET_ACCEPTANCE = 0.8
MAX_TREE_DEPTH = 10
# The second run of a measurement uses the key of seed + SECOND_RUN_SEED_OFFSET.
SECOND_RUN_SEED_OFFSET = 1000

# The synthetic logistic regression: N rows, P standard-normal features, drawn once from this seed.
LOGISTIC_ROWS, LOGISTIC_FEATURES, LOGISTIC_SEED = 5000, 25, 20261202


# -- the problems: one NumPyro model function each, shared by the three libraries ---------------


def logistic_data():
    """X ~ N(0, 1) of shape (5000, 25); true intercept and coefficients ~ N(0, 1), drawn once;
    y ~ Bernoulli(sigmoid(intercept + X @ coefficients))."""
    import numpy as np

    rng = np.random.default_rng(LOGISTIC_SEED)
    features = rng.standard_normal((LOGISTIC_ROWS, LOGISTIC_FEATURES)).astype(np.float32)
    intercept = rng.standard_normal()
    coefficients = rng.standard_normal(LOGISTIC_FEATURES)
    logits = intercept + features.astype(np.float64) @ coefficients
    labels = (rng.uniform(size=LOGISTIC_ROWS) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return features, labels


def logistic_model_function():
    import numpyro
    import numpyro.distributions as dist

    features, labels = logistic_data()

    def logistic_regression():
        """intercept ~ N(0, 1), coefficients ~ N(0, 1) (25), y_i ~ Bernoulli(logit = intercept + x_i . coefficients)."""
        intercept = numpyro.sample("intercept", dist.Normal(0.0, 1.0))
        coefficients = numpyro.sample("coefficients", dist.Normal(0.0, 1.0).expand([LOGISTIC_FEATURES]).to_event(1))
        logits = intercept + features @ coefficients
        numpyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=labels)

    return logistic_regression


def model_function(problem: str):
    """The NumPyro model function (no arguments, data closed over) of ``problem``: for the
    built-in problems, the function elbox's registered model is built from."""
    if problem == "eight_schools":
        from elbox.models.classic import EIGHT_SCHOOLS_REFERENCE
        from elbox.models.posteriordb import NUMPYRO_MODELS

        return NUMPYRO_MODELS[EIGHT_SCHOOLS_REFERENCE]
    if problem == "logistic_5000x25":
        return logistic_model_function()
    if problem == "gaussian_100d":
        from elbox.models.classic import gaussian_100d_numpyro, gaussian_100d_scales

        scales = gaussian_100d_scales()

        def gaussian_100d():
            gaussian_100d_numpyro(scales)

        return gaussian_100d
    if problem == "funnel":
        from elbox.models.classic import funnel_numpyro

        return funnel_numpyro
    raise ValueError(f"unknown problem {problem!r}; choose from {', '.join(PROBLEMS)}")


def latent_sites(fn) -> list[str]:
    """The names of the model's latent sample sites (not observed, not deterministic)."""
    from numpyro import handlers

    trace = handlers.trace(handlers.seed(fn, rng_seed=0)).get_trace()
    return [name for name, site in trace.items() if site["type"] == "sample" and not site["is_observed"]]


# -- the three libraries: each gives start(fn, warmup, draws) -> run(key) -> raw results, and
# extract(raw) -> the draws and statistics as NumPy arrays (outside the timings) ---------------


def import_elbox():
    import jax

    import elbox

    jax.devices()
    return elbox


def start_elbox(elbox, fn, problem, warmup, draws, **options):
    """elbox's defaults (its own mass matrix, target acceptance 0.8, tree depth 10) unless
    ``options`` override them."""
    model = elbox.Model.from_numpyro(fn, name=problem)

    def run(key):
        return elbox.sample(model, key, method="nuts", chains=CHAINS, warmup=warmup, draws=draws, progress=False,
                            **options)

    return run


def start_elbox_stan_diagonal(elbox, fn, problem, warmup, draws):
    return start_elbox(elbox, fn, problem, warmup, draws, mass_matrix="diagonal")


def start_elbox_low_rank(elbox, fn, problem, warmup, draws):
    return start_elbox(elbox, fn, problem, warmup, draws, mass_matrix="low_rank")


def extract_elbox(results, sites):
    import numpy as np

    stats = results.sample_stats
    warmup_totals = getattr(results, "warmup_totals", None) or {}
    warmup_steps = warmup_totals.get("n_steps")
    return {
        "posterior": {name: np.asarray(results.posterior[name]) for name in sites},
        "n_steps": np.asarray(stats["n_steps"]),
        "diverging": np.asarray(stats["diverging"]),
        "acceptance": np.asarray(stats["acceptance_rate"]),
        "warmup_gradients": None if warmup_steps is None else float(np.sum(warmup_steps)),
        "step_size": np.asarray(results.tuning["step_size"]) if "step_size" in results.tuning else None,
        "library_seconds": {k: round(float(v), 4) for k, v in results.seconds.items()},
    }


def import_numpyro():
    import jax
    import numpyro  # noqa: F401
    from numpyro.infer import MCMC, NUTS

    jax.devices()
    return MCMC, NUTS


def import_numpyro_parallel():
    """NumPyro with one CPU device per chain: ``numpyro.set_host_device_count`` before JAX starts."""
    import jax
    import numpyro
    from numpyro.infer import MCMC, NUTS

    numpyro.set_host_device_count(PARALLEL_CPU_DEVICES)
    assert len(jax.devices()) == PARALLEL_CPU_DEVICES, jax.devices()
    return MCMC, NUTS


def start_numpyro(imported, fn, problem, warmup, draws, chain_method="vectorized"):
    import jax
    import numpy as np

    MCMC, NUTS = imported
    kernel = NUTS(fn, dense_mass=False, target_accept_prob=TARGET_ACCEPTANCE, max_tree_depth=MAX_TREE_DEPTH)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=CHAINS, chain_method=chain_method,
                progress_bar=False)

    def run(key):
        mcmc.run(key, extra_fields=("num_steps", "accept_prob"))
        samples = jax.tree_util.tree_map(np.asarray, mcmc.get_samples(group_by_chain=True))
        extra = jax.tree_util.tree_map(np.asarray, mcmc.get_extra_fields(group_by_chain=True))
        return samples, extra, np.asarray(mcmc.last_state.adapt_state.step_size)

    return run


def start_numpyro_parallel(imported, fn, problem, warmup, draws):
    return start_numpyro(imported, fn, problem, warmup, draws, chain_method="parallel")


def extract_numpyro(raw, sites):
    samples, extra, step_size = raw
    return {
        "posterior": {name: samples[name] for name in sites},
        "n_steps": extra["num_steps"],
        "diverging": extra["diverging"],
        "acceptance": extra["accept_prob"],
        "warmup_gradients": None,  # mcmc.run keeps no warm-up statistics
        "step_size": step_size,
        "library_seconds": None,
    }


def import_blackjax():
    import blackjax
    import jax
    from numpyro.infer.util import initialize_model

    jax.devices()
    return blackjax, initialize_model


def import_blackjax_parallel():
    """BlackJAX with one CPU device per chain (``jax_num_cpu_devices``, set before JAX starts)."""
    import jax

    jax.config.update("jax_num_cpu_devices", PARALLEL_CPU_DEVICES)
    imported = import_blackjax()
    assert len(jax.devices()) == PARALLEL_CPU_DEVICES, jax.devices()
    return imported


def start_blackjax_parallel(imported, fn, problem, warmup, draws):
    return start_blackjax(imported, fn, problem, warmup, draws, parallel=True)


def start_blackjax(imported, fn, problem, warmup, draws, parallel=False):
    import jax
    import jax.numpy as jnp

    blackjax, initialize_model = imported
    # NumPyro's own unconstrained log density of the model (the function its NUTS samples) and
    # its map back to the constrained sites; the key only fixes a template position.
    info, potential_fn, postprocess_fn, _ = initialize_model(jax.random.key(0), fn)
    template = info.z

    def log_density(position):
        return -potential_fn(position)

    adaptation = blackjax.window_adaptation(blackjax.nuts, log_density, is_mass_matrix_diagonal=True,
                                            target_acceptance_rate=TARGET_ACCEPTANCE,
                                            max_num_doublings=MAX_TREE_DEPTH)

    def one_chain(key):
        key_init, key_warmup, key_sampling = jax.random.split(key, 3)
        # A uniform draw in [-2, 2] on each unconstrained coordinate, as NumPyro's init_to_uniform.
        leaves, treedef = jax.tree_util.tree_flatten(template)
        keys = jax.random.split(key_init, len(leaves))
        position = jax.tree_util.tree_unflatten(
            treedef, [jax.random.uniform(k, jnp.shape(x), jnp.result_type(x), -2.0, 2.0) for k, x in zip(keys, leaves)])
        (state, parameters), warmup_info = adaptation.run(key_warmup, position, num_steps=warmup)
        step = blackjax.nuts(log_density, **parameters).step

        def body(state, step_key):
            state, step_info = step(step_key, state)
            return state, (state.position, step_info.num_integration_steps, step_info.is_divergent,
                           step_info.acceptance_rate)

        _, (positions, n_steps, diverging, acceptance) = jax.lax.scan(
            body, state, jax.random.split(key_sampling, draws))
        constrained = jax.vmap(postprocess_fn)(positions)
        warmup_gradients = jnp.sum(warmup_info.info.num_integration_steps)
        return constrained, n_steps, diverging, acceptance, warmup_gradients, parameters["step_size"]

    # vmap over the chains in one jit, or (parallel) pmap: one chain per CPU device.
    run_chains = jax.pmap(one_chain) if parallel else jax.jit(jax.vmap(one_chain))
    compiled = {}

    def run(key):
        import numpy as np

        keys = jax.random.split(key, CHAINS)
        if "run" not in compiled:
            tic = time.perf_counter()
            compiled["run"] = run_chains.lower(keys).compile()
            compiled["seconds"] = time.perf_counter() - tic
            compile_seconds = compiled["seconds"]
        else:
            compile_seconds = 0.0
        tic = time.perf_counter()
        outputs = jax.block_until_ready(compiled["run"](keys))
        run_seconds = time.perf_counter() - tic
        return jax.tree_util.tree_map(np.asarray, outputs), {"compile": round(compile_seconds, 4),
                                                              "run": round(run_seconds, 4)}

    return run


def extract_blackjax(raw, sites):
    import numpy as np

    (constrained, n_steps, diverging, acceptance, warmup_gradients, step_size), seconds = raw
    return {
        "posterior": {name: constrained[name] for name in sites},
        "n_steps": n_steps,
        "diverging": diverging,
        "acceptance": acceptance,
        "warmup_gradients": float(np.sum(warmup_gradients)),
        "step_size": step_size,
        "library_seconds": seconds,
    }


LIBRARY_FUNCTIONS = {
    "elbox": (import_elbox, start_elbox, extract_elbox),
    "elbox-stan-diagonal": (import_elbox, start_elbox_stan_diagonal, extract_elbox),
    "elbox-low-rank": (import_elbox, start_elbox_low_rank, extract_elbox),
    "numpyro": (import_numpyro, start_numpyro, extract_numpyro),
    "numpyro-parallel": (import_numpyro_parallel, start_numpyro_parallel, extract_numpyro),
    "blackjax": (import_blackjax, start_blackjax, extract_blackjax),
    "blackjax-parallel": (import_blackjax_parallel, start_blackjax_parallel, extract_blackjax),
}


def library_version(library: str) -> str:
    import importlib.metadata

    return importlib.metadata.version("elbox" if library in ELBOX_LINES else library.removesuffix("-parallel"))


def mass_matrix_of(library: str) -> str:
    if library == "elbox":
        from elbox.mcmc.window_adaptation import DEFAULT_MASS_MATRIX

        return f"{DEFAULT_MASS_MATRIX} (elbox's default)"
    return {"elbox-stan-diagonal": "diagonal", "elbox-low-rank": "low_rank", "numpyro": "diagonal (NumPyro's default)",
            "blackjax": "diagonal (is_mass_matrix_diagonal=True)"}[library.removesuffix("-parallel")]


# -- the worker: one measurement in a fresh process -----------------------------------------------


def diagnostics_of(extracted: dict, warmup: int, draws: int) -> dict:
    """Min bulk ESS and max R-hat over every coordinate of the latent sites (ArviZ), gradient
    evaluations, divergences and mean acceptance."""
    import numpy as np

    from elbox import arviz_compat

    container = arviz_compat.from_dict(extracted["posterior"])
    computed = arviz_compat.diagnostics(container)
    ess = min(float(np.min(computed["ess_bulk"][name].values)) for name in extracted["posterior"])
    r_hat = max(float(np.max(computed["r_hat"][name].values)) for name in extracted["posterior"])
    step_size = extracted["step_size"]
    warmup_gradients = extracted["warmup_gradients"]
    return {
        "min_ess_bulk": ess,
        "max_r_hat": r_hat,
        "gradients_per_draw": float(np.mean(extracted["n_steps"])),
        "warmup_gradients_per_step": None if warmup_gradients is None else warmup_gradients / (CHAINS * warmup),
        "divergences": int(np.sum(extracted["diverging"])),
        "mean_acceptance": float(np.mean(extracted["acceptance"])),
        "step_size": None if step_size is None else [round(float(s), 5) for s in np.ravel(step_size)],
        "library_seconds": extracted["library_seconds"],
        "finite_draws": bool(all(np.isfinite(v).all() for v in extracted["posterior"].values())),
    }


def run_worker(library: str, problem: str, warmup: int, draws: int, seed: int, cache_dir: str | None = None,
               second_run: bool = True) -> dict:
    """One measurement: the imports, the first result and (``second_run``) the same run again.
    ``cache_dir`` switches JAX's persistent compilation cache on in that folder, right after
    importing jax and before the library is imported or anything compiles."""
    import_library, start, extract = LIBRARY_FUNCTIONS[library]
    tic = time.perf_counter()
    import jax

    if cache_dir is not None:
        enable_jax_compilation_cache(cache_dir)
    imported = import_library()
    import_seconds = time.perf_counter() - tic

    # Outside the timings: the model function (for the built-in problems this imports elbox's
    # model modules), the keys, and the names of the latent sites.
    fn = model_function(problem)
    sites = latent_sites(fn)
    first_key, second_key = jax.random.key(seed), jax.random.key(seed + SECOND_RUN_SEED_OFFSET)

    tic = time.perf_counter()
    run = start(imported, fn, problem, warmup, draws)
    setup_seconds = time.perf_counter() - tic
    raw = run(first_key)
    first_seconds = time.perf_counter() - tic
    first = diagnostics_of(extract(raw, sites), warmup, draws)
    del raw

    if second_run:
        tic = time.perf_counter()
        raw = run(second_key)
        second_seconds = time.perf_counter() - tic
        second = diagnostics_of(extract(raw, sites), warmup, draws)
    else:
        second_seconds, second = None, None

    return {
        "library": library,
        "problem": problem,
        "version": library_version(library),
        "mass_matrix": mass_matrix_of(library),
        "compilation_cache": cache_dir is not None,
        "chains": CHAINS,
        "warmup": warmup,
        "draws": draws,
        "seed": seed,
        "import_seconds": import_seconds,
        "setup_seconds": setup_seconds,
        "first_result_seconds": first_seconds,
        "first_result_with_import_seconds": import_seconds + first_seconds,
        "second_run_seconds": second_seconds,
        "ess_per_second": None if second is None else second["min_ess_bulk"] / second_seconds,
        "ess_per_second_first": first["min_ess_bulk"] / first_seconds,
        "first": first,
        "second": second,
        "device": device_description(),
        "elbox_source": elbox_source_hash(),
    }


# -- driver ----------------------------------------------------------------------------------------


def measure(library: str, problem: str, warmup: int, draws: int, seed: int, timeout: float,
            cache_dir: str | None = None) -> dict:
    """One measurement in a fresh Python process; a failure comes back as ``{"error": ...}``.
    With ``cache_dir``: JAX's compilation cache in that folder, and the first result only."""
    options = [] if cache_dir is None else ["--cache-dir", cache_dir, "--first-only"]
    try:
        return run_worker_process(__file__, [library, problem, warmup, draws, seed], timeout,
                                  f"{library}, {problem}, seed {seed}", options=options)
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as err:
        return {"library": library, "problem": problem, "seed": seed, "error": str(err)[-2000:]}


# Per-run fields whose median over the repeats each (problem, library) line reports.
TOP_FIELDS = ("import_seconds", "setup_seconds", "first_result_seconds", "first_result_with_import_seconds",
              "second_run_seconds", "ess_per_second", "ess_per_second_first")
# The same with the compilation cache, where each process gives its first result only.
CACHE_TOP_FIELDS = ("import_seconds", "setup_seconds", "first_result_seconds", "first_result_with_import_seconds",
                    "ess_per_second_first")
RUN_FIELDS = ("min_ess_bulk", "max_r_hat", "gradients_per_draw", "warmup_gradients_per_step", "divergences",
              "mean_acceptance")
# The summary's ratios: (median field, how the best peer is picked, ratio name). ESS/s: the
# highest peer, > 1 means elbox is better; times: the fastest peer, < 1 means elbox is faster.
RATIOS = (
    ("ess_per_second", max, "ess_per_second_ratio"),
    ("ess_per_second_first", max, "ess_per_second_first_ratio"),
    ("first_result_seconds", min, "first_result_ratio"),
    ("first_result_with_import_seconds", min, "first_result_with_import_ratio"),
    ("second_run_seconds", min, "second_run_ratio"),
)
CACHE_RATIOS = tuple(
    (f"{phase}_{field}", min, f"{phase}_{name}_ratio")
    for phase in ("cold", "warm")
    for field, name in (("first_result_seconds", "first_result"),
                        ("first_result_with_import_seconds", "first_result_with_import"))
) + (("warm_ess_per_second_first", max, "warm_ess_per_second_first_ratio"),)


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rounded(value, digits=4):
    return None if value is None else round(value, digits)


def line_header(problem: str, library: str, runs: list, failures: list, repeats: int, cached: bool) -> dict:
    line = {"benchmark": BENCHMARK, "problem": problem, "library": library, "compilation_cache": cached,
            "repeats": repeats, "succeeded": len(runs), "failures": [f["error"] for f in failures]}
    first = runs[0]["cold"] if runs and cached else (runs[0] if runs else None)
    if first:
        line["version"] = first["version"]
        line["mass_matrix"] = first["mass_matrix"]
        line.update(chains=first["chains"], warmup=first["warmup"], draws=first["draws"])
    return line


def library_line(problem: str, library: str, runs: list, failures: list, repeats: int) -> dict:
    line = line_header(problem, library, runs, failures, repeats, cached=False)
    for field in TOP_FIELDS:
        line[field] = rounded(median_or_none([r[field] for r in runs]))
    for which in ("first", "second"):
        for field in RUN_FIELDS:
            line[f"{which}_{field}"] = rounded(median_or_none([r[which][field] for r in runs]))
        line[f"{which}_finite_draws"] = all(r[which]["finite_draws"] for r in runs) if runs else None
    line["step_size_first"] = runs[0]["first"]["step_size"] if runs else None
    # The library's own split of the time (elbox: results.seconds; BlackJAX: compile and run of
    # the jitted function; NumPyro: none), for each repeat.
    line["library_seconds"] = [{"first": r["first"]["library_seconds"], "second": r["second"]["library_seconds"]}
                               for r in runs]
    line["device"] = runs[0]["device"] if runs else None
    line["elbox_source"] = ",".join(sorted({r["elbox_source"] for r in runs}))
    return line


def cache_library_line(problem: str, library: str, pairs: list, failures: list, repeats: int) -> dict:
    """Medians over the repeats of the cold-cache process and of the warm-cache one."""
    line = line_header(problem, library, pairs, failures, repeats, cached=True)
    for phase in ("cold", "warm"):
        for field in CACHE_TOP_FIELDS:
            line[f"{phase}_{field}"] = rounded(median_or_none([p[phase][field] for p in pairs]))
        for field in RUN_FIELDS:
            line[f"{phase}_{field}"] = rounded(median_or_none([p[phase]["first"][field] for p in pairs]))
        line[f"{phase}_finite_draws"] = all(p[phase]["first"]["finite_draws"] for p in pairs) if pairs else None
    for field in ("files_after_cold", "bytes_after_cold", "files_added_by_warm"):
        line[f"cache_{field}"] = median_or_none([p["cache"][field] for p in pairs])
    line["library_seconds"] = [{"cold": p["cold"]["first"]["library_seconds"],
                                "warm": p["warm"]["first"]["library_seconds"]} for p in pairs]
    line["device"] = pairs[0]["cold"]["device"] if pairs else None
    line["elbox_source"] = ",".join(sorted({p[phase]["elbox_source"] for p in pairs for phase in ("cold", "warm")}))
    return line


def summary_line(problem: str, lines: dict, ratios: tuple) -> dict:
    """Each elbox line against the best peer: ``*_ratio`` for elbox at its defaults,
    ``stan_diagonal_*_ratio`` and ``low_rank_*_ratio`` for elbox with Stan's diagonal and with
    the low-rank mass matrix."""

    def best(field, pick):
        values = {lib: lines[lib][field] for lib in PEERS if lib in lines and lines[lib].get(field) is not None}
        if not values:
            return None, None
        peer = pick(values, key=values.get)
        return peer, values[peer]

    summary = {"benchmark": BENCHMARK, "problem": problem, "summary": True,
               "compilation_cache": lines["elbox"]["compilation_cache"]}
    for library, prefix in (("elbox", ""), *ELBOX_VARIANT_PREFIXES.items()):
        if library not in lines:
            continue
        for field, pick, name in ratios:
            peer, value = best(field, pick)
            mine = lines[library].get(field)
            summary[prefix + name] = None if mine is None or not value else round(mine / value, 4)
            if not prefix:
                summary[f"{name}_peer"] = peer
    for library in ELBOX_LINES:
        if library in lines:
            summary[f"{library.replace('-', '_')}_failures"] = len(lines[library]["failures"])
    return summary


def measure_cached(library: str, problem: str, warmup: int, draws: int, seed: int, timeout: float,
                   cache_root: str) -> dict:
    """A cold and a warm measurement: two fresh processes on one new, empty cache folder."""
    folder = tempfile.mkdtemp(prefix=f"{library}-{problem}-{seed}-", dir=cache_root)
    try:
        cold = measure(library, problem, warmup, draws, seed, timeout, cache_dir=folder)
        if "error" in cold:
            return cold
        after_cold = cache_contents(folder)
        warm = measure(library, problem, warmup, draws, seed, timeout, cache_dir=folder)
        if "error" in warm:
            return warm
        after_warm = cache_contents(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"cold": cold, "warm": warm,
            "cache": {"files_after_cold": after_cold["files"], "bytes_after_cold": after_cold["bytes"],
                      "files_added_by_warm": after_warm["files"] - after_cold["files"]}}


def progress_text(result: dict) -> str:
    if "cold" in result:
        cold, warm = result["cold"], result["warm"]
        return (f"cold: import {cold['import_seconds']:.2f} s first {cold['first_result_seconds']:.2f} s  "
                f"warm: import {warm['import_seconds']:.2f} s first {warm['first_result_seconds']:.2f} s  "
                f"cache {result['cache']['files_after_cold']} files "
                f"(+{result['cache']['files_added_by_warm']} warm)  "
                f"min ESS {warm['first']['min_ess_bulk']:.0f}  divergences {warm['first']['divergences']}")
    return (f"import {result['import_seconds']:.2f} s  "
            f"first {result['first_result_seconds']:.2f} s  second {result['second_run_seconds']:.2f} s  "
            f"min ESS {result['second']['min_ess_bulk']:.0f}  ESS/s {result['ess_per_second']:.1f}  "
            f"grads/draw {result['second']['gradients_per_draw']:.1f}  "
            f"divergences {result['second']['divergences']}")


def compare(problem: str, warmup: int, draws: int, repeats: int, timeout: float, cache_root: str | None = None,
            libraries: tuple = DEFAULT_LIBRARIES) -> list:
    """The ``libraries`` on ``problem``: one line each and a summary line. With ``cache_root``, each
    measurement is a cold and a warm compilation-cache process (a new folder under it)."""
    runs = {library: [] for library in libraries}
    failures = {library: [] for library in libraries}
    for repeat in range(repeats):
        # Rotate which library goes first, so slow drifts of the machine hit all alike.
        shift = repeat % len(libraries)
        order = libraries[shift:] + libraries[:shift]
        for library in order:
            if cache_root is None:
                result = measure(library, problem, warmup, draws, repeat, timeout)
            else:
                result = measure_cached(library, problem, warmup, draws, repeat, timeout, cache_root)
            tag = f"  [{problem} repeat {repeat + 1}/{repeats}] {library:19s}"
            if "error" in result:
                failures[library].append(result)
                print(f"{tag} FAILED: {result['error'].strip().splitlines()[-1] if result['error'].strip() else '?'}",
                      file=sys.stderr, flush=True)
                continue
            runs[library].append(result)
            print(f"{tag} {progress_text(result)}", file=sys.stderr, flush=True)
    make_line = library_line if cache_root is None else cache_library_line
    lines = {library: make_line(problem, library, runs[library], failures[library], repeats)
             for library in libraries}
    summary = summary_line(problem, lines, RATIOS if cache_root is None else CACHE_RATIOS)
    return [lines[library] for library in libraries] + [summary]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"a fast smoke run: eight_schools, {QUICK_WARMUP} warm-up steps and draws, 1 repeat")
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, help=f"default: {', '.join(PROBLEMS)}")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES,
                        help=f"default: {', '.join(DEFAULT_LIBRARIES)}")
    parser.add_argument("--repeats", type=int, help="fresh-process repeats per library (default 3; 1 with --quick)")
    parser.add_argument("--warmup", type=int, help=f"warm-up steps per chain (default {WARMUP})")
    parser.add_argument("--draws", type=int, help=f"draws per chain (default {DRAWS})")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for one worker process")
    parser.add_argument("--compilation-cache", action="store_true",
                        help="measure each library in two fresh processes sharing a new JAX compilation cache "
                             "folder: cold (empty cache) then warm; first results only")
    parser.add_argument("--cache-root", help="where the cache folders are made (default: a new temporary folder, "
                                             "removed at the end)")
    parser.add_argument(
        "--worker", nargs=5, metavar=("LIBRARY", "PROBLEM", "WARMUP", "DRAWS", "SEED"),
        help=f"internal: run one measurement (LIBRARY is one of {', '.join(LIBRARIES)}) and print it as JSON",
    )
    parser.add_argument("--cache-dir", help="with --worker: JAX's compilation cache in this folder")
    parser.add_argument("--first-only", action="store_true", help="with --worker: the first result only")
    args = parser.parse_args(argv)

    if args.worker:
        library, problem, warmup, draws, seed = args.worker
        if library not in LIBRARY_FUNCTIONS:
            parser.error(f"unknown library {library!r}; choose from {', '.join(LIBRARY_FUNCTIONS)}")
        print(json.dumps(run_worker(library, problem, int(warmup), int(draws), int(seed), cache_dir=args.cache_dir,
                                    second_run=not args.first_only)), flush=True)
        return

    problems = args.problems or (QUICK_PROBLEMS if args.quick else PROBLEMS)
    warmup = args.warmup or (QUICK_WARMUP if args.quick else WARMUP)
    draws = args.draws or (QUICK_DRAWS if args.quick else DRAWS)
    repeats = args.repeats or (1 if args.quick else 3)
    cache_root = None
    if args.compilation_cache:
        cache_root = args.cache_root or tempfile.mkdtemp(prefix="bench_nuts_cache-")
        os.makedirs(cache_root, exist_ok=True)
    tic = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        for problem in problems:
            for line in compare(problem, warmup, draws, repeats, args.timeout, cache_root,
                                tuple(args.libraries or DEFAULT_LIBRARIES)):
                if line.get("summary"):
                    line["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                print(json.dumps(line), flush=True)
    finally:
        if cache_root is not None and not args.cache_root:
            shutil.rmtree(cache_root, ignore_errors=True)
    print(f"total wall time {time.perf_counter() - tic:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
