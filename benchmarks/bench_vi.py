#!/usr/bin/env python
"""Gaussian variational inference: elbox against NumPyro's SVI and BlackJAX's mean-field VI.

Every library fits the same model for the same number of Adam steps at the same step size:

* the same models, ``eight_schools`` (10 dimensions) and ``logistic_regression`` (31): elbox
  fits ``elbox.models.get(name)``; NumPyro fits the model's own NumPyro function (the one elbox
  builds its model from); BlackJAX fits ``model.flat_log_joint``, the log density on the flat
  unconstrained space that elbox optimises;
* 10,000 steps of Adam at 0.01, one draw from q per gradient estimate;
* the same families: mean-field Gaussian (elbox ``meanfield``, NumPyro ``AutoNormal``,
  ``blackjax.meanfield_vi``) and full-rank Gaussian (elbox ``fullrank``, NumPyro
  ``AutoMultivariateNormal``; BlackJAX is left out of this pairing).

elbox runs twice per pairing: with the peers' settings (``steps=10000, learning_rate=0.01,
num_samples=1, estimator="reparam", stop_when_flat=False``) and with its defaults
(``elbox.fit(model, key, method=..., steps=10000)``, which anneals the step size once the
smoothed ELBO plateaus and then stops, and switches to the "sticking the landing" estimator
during the anneal). NumPyro runs ``SVI(model, guide, Adam(0.01), Trace_ELBO(1))`` through
``svi.run(key, 10000, progress_bar=False)``; BlackJAX runs its ``step`` in one jitted
``lax.scan`` over 10,000 steps with ``optax.adam(0.01)`` and ``num_samples=1`` (its default
estimator, sticking the landing, and its default start: mean 0, log-scale -2). elbox and NumPyro
each start at their own uniform draw in [-2, 2] on the unconstrained space, with scale 0.1.

**Time.** Wall time of the whole first call in a fresh process, compilation included, imports
excluded (they are timed on their own and reported apart). elbox: all of ``elbox.fit``, which
also estimates the final ELBO from 4096 draws (three times over, in two forms) and wraps the
draws as ArviZ ``InferenceData``. NumPyro: building the guide and SVI and ``svi.run``. BlackJAX:
building the algorithm, ``init``, compiling and running the scan, waiting for the result.

**ELBO.** Each library's final q is scored by the same estimator, outside the timed call: the
mean over 4096 draws u ~ q of log p(x, u) - log q(u), with ``model.flat_log_joint`` on the flat
unconstrained space, and its standard error. NumPyro's guide parameters are mapped to elbox's
flat ordering (the sites' unconstrained values concatenated in sorted site order, as
``jax.flatten_util.ravel_pytree`` of the dict does); the mapping is checked in every NumPyro
worker by comparing NumPyro's own potential energy with ``model.flat_log_joint`` at random
points. Repeat r of every library fits with the key ``jax.random.key(r)``: the final q of a run at
a constant step size moves with the seed by more than the ELBO's standard error, so each
library's ELBO is that of its median run over the seeds (with that run's standard error), and
the range over the seeds is reported beside it. ``same_elbo`` is true when elbox's ELBO is above
the peer's or within two combined standard errors of it.

Every measurement runs in a fresh Python process (this script, started again with
``--worker``); each comparison is repeated and medians are reported, one JSON line per
(model, family, elbox mode).

**First result** (``--first-result``): the time to a first mean-field fit of eight schools in a
fresh process, imports included, elbox against BlackJAX. elbox: importing jax and elbox, then
``elbox.fit("eight_schools", key, method="meanfield", steps=10000, progress=False,
stop_when_flat=False)`` (building the model from its name, compiling, the steps, the final ELBO
estimate and the ArviZ draws; ``stop_when_flat=False`` so that it runs all the steps, as
BlackJAX does). BlackJAX: importing jax, optax, blackjax and ``numpyro.infer.util``, then minus
NumPyro's ``potential_fn`` of the same NumPyro function from ``initialize_model`` (the model
build), ``blackjax.meanfield_vi`` with ``optax.adam(0.01)`` and one draw per step, and the
10,000 steps in one jitted ``lax.scan``, the fitted parameters on the host. With
``--compilation-cache`` each measurement is two fresh processes on one new, empty folder of
JAX's persistent compilation cache, switched on the same way in both libraries right after
importing jax: cold (the cache fills), then warm (the programs are loaded). One JSON line per
mode, with the ratios elbox / BlackJAX (< 1: elbox is faster).

Usage:
    python benchmarks/bench_vi.py                 # the full run (6-7 minutes on 2 cores)
    python benchmarks/bench_vi.py --quick         # a smoke run: eight_schools, meanfield, 1 repeat
    python benchmarks/bench_vi.py --first-result  # first result with imports, elbox against BlackJAX, 5 repeats
    python benchmarks/bench_vi.py --first-result --compilation-cache   # the same, cold and warm cache
    python benchmarks/bench_vi.py --models eight_schools --families fullrank --repeats 3
    python benchmarks/bench_vi.py --worker elbox_defaults eight_schools meanfield 10000 0   # one measurement, seed 0
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from _common import (  # noqa: E402
    cache_contents,
    device_description,
    elbox_source_hash,
    enable_jax_compilation_cache,
    run_worker_process,
)

BENCHMARK = "vi"
# Repeat r fits with the key jax.random.key(SEED + r): the final q of a constant-step run
# depends on the seed by more than the ELBO's standard error, so the ELBOs are compared as
# medians over seeds (the timings do not depend on the seed).
SEED = 0
# The key of the common ELBO estimate, the same for every library's q.
EVAL_SEED = 1
EVAL_DRAWS = 4096
STEPS = 10_000
LEARNING_RATE = 0.01

FULL_MODELS = ("eight_schools", "logistic_regression")
QUICK_MODELS = ("eight_schools",)
FULL_FAMILIES = ("meanfield", "fullrank")
QUICK_FAMILIES = ("meanfield",)
# Fresh-process repeats per library; fewer for the slower model to keep the full run short.
FULL_REPEATS = {"eight_schools": 5, "logistic_regression": 3}

NUMPYRO_MODEL_NAMES = {"eight_schools": "eight_schools-eight_schools_noncentered"}
ELBOX_MODES = ("peer_settings", "defaults")
# Which libraries each family is compared with.
PEERS = {"meanfield": ("numpyro", "blackjax"), "fullrank": ("numpyro",)}


def numpyro_model_function(model_name: str):
    """The NumPyro function elbox builds ``model_name`` from."""
    if model_name == "logistic_regression":
        from elbox.models.logistic import numpyro_model

        return numpyro_model()
    from elbox.models.posteriordb import NUMPYRO_MODELS

    return NUMPYRO_MODELS[NUMPYRO_MODEL_NAMES.get(model_name, model_name)]


def timed_imports(*modules: str) -> dict:
    """Import ``modules`` in order, timing each (the first, usually jax, pays the shared cost)."""
    import importlib

    seconds = {}
    for name in modules:
        tic = time.perf_counter()
        importlib.import_module(name)
        seconds[name] = time.perf_counter() - tic
    return seconds


def common_elbo(model, loc, scale=None, scale_matrix=None, log_det=None) -> dict:
    """The ELBO of the Gaussian q = N(loc, A A^T) on elbox's flat unconstrained space.

    ``scale`` (a vector) gives a diagonal A; ``scale_matrix`` gives A itself, with ``log_det``
    = log |det A| (A may be a row permutation of a triangular matrix). The mean over
    ``EVAL_DRAWS`` draws u = loc + A eps of log p(x, u) - log q(u), and its standard error.
    """
    import math

    import jax
    import jax.numpy as jnp
    import numpy as np

    loc = jnp.asarray(loc)
    d = loc.size
    if scale is not None:
        scale = jnp.asarray(scale, loc.dtype)
        matrix, log_det = None, jnp.sum(jnp.log(scale))
    else:
        matrix = jnp.asarray(scale_matrix, loc.dtype)

    @jax.jit
    def terms(key):
        eps = jax.random.normal(key, (EVAL_DRAWS, d), loc.dtype)
        u = loc + (eps * scale if matrix is None else eps @ matrix.T)
        log_q = -0.5 * jnp.sum(eps**2, axis=-1) - log_det - 0.5 * d * math.log(2 * math.pi)
        return jax.vmap(model.flat_log_joint)(u), log_q

    log_joint, log_q = (np.asarray(x, np.float64) for x in terms(jax.random.key(EVAL_SEED)))
    values = log_joint - log_q
    finite = np.isfinite(values)
    values = values[finite]
    return {
        "value": float(values.mean()),
        "stderr": float(values.std(ddof=1) / np.sqrt(values.size)),
        "nonfinite_draws": int((~finite).sum()),
    }


# -- workers: one measurement each, in a fresh process -------------------------------------------


def worker_elbox(model_name: str, family: str, steps: int, seed: int, mode: str) -> dict:
    imports = timed_imports("jax", "elbox")
    import jax
    import jax.numpy as jnp

    import elbox

    model = elbox.models.get(model_name)
    if mode == "peer_settings":
        settings = dict(learning_rate=LEARNING_RATE, num_samples=1, estimator="reparam", stop_when_flat=False)
    else:
        settings = {}
    tic = time.perf_counter()
    results = elbox.fit(model, jax.random.key(seed), method=family, steps=steps, progress=False, **settings)
    first_call = time.perf_counter() - tic

    params = results.params
    if family == "meanfield":
        elbo = common_elbo(model, params["loc"], scale=jnp.exp(params["log_scale"]))
    else:
        chol = results.family.cholesky(params)
        elbo = common_elbo(model, params["loc"], scale_matrix=chol, log_det=jnp.sum(params["log_scale"]))
    own = results.report.elbo
    return {
        "first_call_seconds": first_call,
        "compile_seconds": results.seconds["compile"],
        "fitting_seconds": results.seconds["fitting"],
        "import_seconds": imports,
        "elbo": elbo,
        "own_elbo": {"value": float(own.value), "stderr": float(own.stderr)},
        "steps_run": int(results.trace.size),
        "estimator": results.estimator,
    }


def numpyro_to_flat_permutation(model, guide, dimension: int):
    """``perm`` such that ``numpyro_flat[perm]`` is in elbox's flat ordering.

    NumPyro's AutoContinuous guides concatenate the sites in the model's order; elbox ravels
    the dict of sites, whose keys ``ravel_pytree`` sorts.
    """
    import jax.numpy as jnp
    import numpy as np

    positions = guide._unpack_latent(jnp.arange(dimension, dtype=jnp.float32))
    return np.asarray(model.ravel(positions)).astype(np.int64)


def check_flat_mapping(model, model_fn, guide, perm) -> float:
    """Largest relative |difference|, over a few random points x in NumPyro's flat ordering,
    between NumPyro's log joint (minus its potential energy) of x unpacked by the guide itself
    and ``model.flat_log_joint(x[perm])``."""
    import jax
    from numpyro.infer.util import potential_energy

    worst = 0.0
    for i in range(3):
        x = jax.random.normal(jax.random.key(100 + i), (perm.size,))  # NumPyro's ordering
        theirs = -float(potential_energy(model_fn, (), {}, guide._unpack_latent(x)))
        ours = float(model.flat_log_joint(x[perm]))
        worst = max(worst, abs(ours - theirs) / max(1.0, abs(theirs)))
    return worst


def worker_numpyro(model_name: str, family: str, steps: int, seed: int) -> dict:
    imports = timed_imports("jax", "numpyro")
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

    import elbox  # for the model and the common ELBO only; not timed as NumPyro's import

    model = elbox.models.get(model_name)
    model_fn = numpyro_model_function(model_name)
    tic = time.perf_counter()
    guide = (AutoNormal if family == "meanfield" else AutoMultivariateNormal)(model_fn)
    svi = SVI(model_fn, guide, numpyro.optim.Adam(LEARNING_RATE), Trace_ELBO(num_particles=1))
    run = svi.run(jax.random.key(seed), steps, progress_bar=False)
    jax.block_until_ready(run.params)
    first_call = time.perf_counter() - tic

    params = run.params
    if family == "meanfield":
        from numpyro.infer.util import potential_energy

        locs = {k: params[f"{k}_auto_loc"] for k in model.init_position}
        loc = model.ravel(locs)
        scale = model.ravel({k: params[f"{k}_auto_scale"] for k in model.init_position})
        # NumPyro's log joint of its own per-site locations against elbox's of the flat vector.
        theirs = -float(potential_energy(model_fn, (), {}, locs))
        mapping_error = abs(float(model.flat_log_joint(loc)) - theirs) / max(1.0, abs(theirs))
        elbo = common_elbo(model, loc, scale=scale)
    else:
        perm = numpyro_to_flat_permutation(model, guide, model.dimension)
        mapping_error = check_flat_mapping(model, model_fn, guide, perm)
        posterior = guide.get_posterior(params)
        scale_tril = posterior.scale_tril
        loc = posterior.loc[perm]
        # u = loc + P L eps: the rows of L permuted; |det P L| = |det L|.
        elbo = common_elbo(
            model, loc, scale_matrix=scale_tril[perm], log_det=jnp.sum(jnp.log(jnp.diag(scale_tril)))
        )
    if mapping_error > 1e-4:
        raise AssertionError(f"NumPyro's and elbox's log joints disagree ({mapping_error:g}): check the mapping")
    losses = np.asarray(run.losses)
    return {
        "first_call_seconds": first_call,
        "import_seconds": imports,
        "elbo": elbo,
        # NumPyro's own view: minus the mean of the last 1000 one-draw loss values.
        "own_elbo_last_steps": float(-losses[-1000:].mean()),
        "steps_run": int(losses.size),
        "mapping_error": mapping_error,
    }


def run_blackjax_meanfield(log_density, position, steps: int, seed: int):
    """BlackJAX's mean-field VI from ``position``: ``steps`` Adam steps in one jitted ``lax.scan``,
    step t keyed by ``fold_in(key, t)``; returns the final state and the ELBO trace."""
    import blackjax
    import jax
    import jax.numpy as jnp
    import optax

    algorithm = blackjax.meanfield_vi(log_density, optax.adam(LEARNING_RATE), num_samples=1)

    def run(state, key):
        def body(state, t):
            state, info = algorithm.step(jax.random.fold_in(key, t), state)
            return state, info.elbo

        return jax.lax.scan(body, state, jnp.arange(steps, dtype=jnp.int32))

    return jax.jit(run)(algorithm.init(position), jax.random.key(seed))


def worker_blackjax(model_name: str, family: str, steps: int, seed: int) -> dict:
    if family != "meanfield":
        raise ValueError("BlackJAX is compared on the mean-field family only")
    imports = timed_imports("jax", "optax", "blackjax")
    import jax
    import jax.numpy as jnp

    import elbox  # for the model only

    model = elbox.models.get(model_name)
    log_density = model.flat_log_joint
    center = model.ravel(model.init_position)
    tic = time.perf_counter()
    state, trace = run_blackjax_meanfield(log_density, center, steps, seed)
    jax.block_until_ready((state, trace))
    first_call = time.perf_counter() - tic

    elbo = common_elbo(model, state.mu, scale=jnp.exp(state.rho))
    return {
        "first_call_seconds": first_call,
        "import_seconds": imports,
        "elbo": elbo,
        "steps_run": int(trace.shape[0]),
    }


# -- the first-result mode: a whole fit in a fresh process, imports included -------------------


def timed_imports_with_cache(cache_dir: str | None, *modules: str) -> float:
    """Seconds to import jax, switch on the compilation cache (when ``cache_dir`` is given, before
    anything compiles) and import ``modules``."""
    import importlib

    tic = time.perf_counter()
    importlib.import_module("jax")
    if cache_dir is not None:
        enable_jax_compilation_cache(cache_dir)
    for name in modules:
        importlib.import_module(name)
    return time.perf_counter() - tic


def worker_elbox_first_result(model_name: str, family: str, steps: int, seed: int, cache_dir: str | None) -> dict:
    """``elbox.fit(model_name, key, method=family, steps=steps, progress=False, stop_when_flat=False)``
    from the model's name: building the model, compiling, the steps, the final ELBO estimate and
    the ArviZ draws are all in the timed call."""
    import_seconds = timed_imports_with_cache(cache_dir, "elbox")
    import jax
    import jax.numpy as jnp

    import elbox

    tic = time.perf_counter()
    results = elbox.fit(model_name, jax.random.key(seed), method=family, steps=steps, progress=False,
                        stop_when_flat=False)
    first_result = time.perf_counter() - tic

    model = elbox.models.get(model_name)
    params = results.params
    return {
        "import_seconds": import_seconds,
        "first_result_seconds": first_result,
        "first_result_with_import_seconds": import_seconds + first_result,
        "library_seconds": {k: round(float(v), 4) for k, v in results.seconds.items()},
        "elbo": common_elbo(model, params["loc"], scale=jnp.exp(params["log_scale"])),
        "steps_run": int(results.trace.size),
        "estimator": results.estimator,
    }


def worker_blackjax_first_result(model_name: str, family: str, steps: int, seed: int, cache_dir: str | None) -> dict:
    """``blackjax.meanfield_vi`` on minus NumPyro's ``potential_fn`` of the model's NumPyro function
    (``numpyro.infer.util.initialize_model``, timed as the model build), ``optax.adam(0.01)``,
    one draw per step, its own start (mean 0, log-scale -2) and estimator (sticking the landing);
    the steps in one jitted ``lax.scan``, the fitted parameters and ELBO trace on the host."""
    if family != "meanfield":
        raise ValueError("BlackJAX is compared on the mean-field family only")
    import_seconds = timed_imports_with_cache(cache_dir, "optax", "blackjax", "numpyro.infer.util")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from numpyro.infer.util import initialize_model

    # Outside the timings: the NumPyro function (this imports elbox's model modules).
    model_fn = numpyro_model_function(model_name)

    tic = time.perf_counter()
    info, potential_fn, _, _ = initialize_model(jax.random.key(seed), model_fn)
    model_seconds = time.perf_counter() - tic

    def log_density(position):
        return -potential_fn(position)

    state, trace = run_blackjax_meanfield(log_density, info.z, steps, seed)
    mu, rho, trace = jax.tree_util.tree_map(np.asarray, (state.mu, state.rho, trace))
    first_result = time.perf_counter() - tic

    # Outside the timings: NumPyro's sites on elbox's flat space (the dict ravelled as elbox ravels
    # its own), checked against elbox's log density, and the common ELBO.
    import elbox

    model = elbox.models.get(model_name)
    loc = model.ravel(mu)
    theirs = float(log_density(mu))
    mapping_error = abs(float(model.flat_log_joint(loc)) - theirs) / max(1.0, abs(theirs))
    if mapping_error > 1e-4:
        raise AssertionError(f"NumPyro's and elbox's log joints disagree ({mapping_error:g}): check the mapping")
    return {
        "import_seconds": import_seconds,
        "first_result_seconds": first_result,
        "first_result_with_import_seconds": import_seconds + first_result,
        # The model build (initialize_model), then the rest: the algorithm, compiling and running.
        "library_seconds": {"model": round(model_seconds, 4), "rest": round(first_result - model_seconds, 4)},
        "elbo": common_elbo(model, loc, scale=jnp.exp(model.ravel(rho))),
        "steps_run": int(trace.shape[0]),
        "mapping_error": mapping_error,
    }


LIBRARIES = ("elbox_peer_settings", "elbox_defaults", "numpyro", "blackjax")
FIRST_RESULT_WORKERS = {"elbox_first_result": worker_elbox_first_result,
                        "blackjax_first_result": worker_blackjax_first_result}
FIRST_RESULT_LIBRARIES = tuple(FIRST_RESULT_WORKERS)


def run_worker(library: str, model_name: str, family: str, steps: int, seed: int, cache_dir: str | None = None) -> dict:
    startup = time.perf_counter() - _PROCESS_START
    if library in FIRST_RESULT_WORKERS:
        result = FIRST_RESULT_WORKERS[library](model_name, family, steps, seed, cache_dir)
        result["compilation_cache"] = cache_dir is not None
    elif library.startswith("elbox_"):
        result = worker_elbox(model_name, family, steps, seed, library[len("elbox_"):])
    elif library == "numpyro":
        result = worker_numpyro(model_name, family, steps, seed)
    elif library == "blackjax":
        result = worker_blackjax(model_name, family, steps, seed)
    else:
        raise ValueError(f"unknown library {library!r}; choose from {', '.join(LIBRARIES)}")
    result.update(
        library=library,
        model=model_name,
        family=family,
        steps=steps,
        seed=seed,
        interpreter_startup_seconds=startup,
        device=device_description(),
        elbox_source=elbox_source_hash(),
    )
    return result


# -- driver --------------------------------------------------------------------------------------


def measure(library: str, model_name: str, family: str, steps: int, seed: int, timeout: float,
            cache_dir: str | None = None) -> dict:
    """One measurement in a fresh Python process; its last stdout line is the JSON result.
    ``cache_dir``: the worker switches JAX's compilation cache on in that folder."""
    return run_worker_process(__file__, [library, model_name, family, steps, seed], timeout,
                              f"{library}, {model_name} ({family})",
                              options=[] if cache_dir is None else ["--cache-dir", cache_dir])


def measure_first_result(library: str, model_name: str, steps: int, seed: int, timeout: float,
                         cache_root: str | None) -> dict:
    """One first-result measurement: a fresh process (``{"plain": ...}``), or, with ``cache_root``,
    two fresh processes on one new, empty cache folder under it (``{"cold": ..., "warm": ...}``)."""
    if cache_root is None:
        return {"plain": measure(library, model_name, "meanfield", steps, seed, timeout)}
    folder = tempfile.mkdtemp(prefix=f"{library}-{model_name}-{seed}-", dir=cache_root)
    try:
        cold = measure(library, model_name, "meanfield", steps, seed, timeout, cache_dir=folder)
        after_cold = cache_contents(folder)
        warm = measure(library, model_name, "meanfield", steps, seed, timeout, cache_dir=folder)
        after_warm = cache_contents(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"cold": cold, "warm": warm, "cache": {"files_after_cold": after_cold["files"],
                                                  "bytes_after_cold": after_cold["bytes"],
                                                  "files_added_by_warm": after_warm["files"] - after_cold["files"]}}


FIRST_RESULT_FIELDS = ("import_seconds", "first_result_seconds", "first_result_with_import_seconds")


def compare_first_result(model_name: str, steps: int, repeats: int, timeout: float,
                         cache_root: str | None) -> dict:
    """elbox's and BlackJAX's mean-field first results on ``model_name``, one JSON line: medians
    per library (and per cache phase), and the ratios elbox / BlackJAX (< 1: elbox is faster)."""
    phases = ("plain",) if cache_root is None else ("cold", "warm")
    runs = {library: [] for library in FIRST_RESULT_LIBRARIES}
    for repeat in range(repeats):
        order = FIRST_RESULT_LIBRARIES if repeat % 2 == 0 else FIRST_RESULT_LIBRARIES[::-1]
        for library in order:
            result = measure_first_result(library, model_name, steps, SEED + repeat, timeout, cache_root)
            runs[library].append(result)
            text = "  ".join(f"{phase}: import {result[phase]['import_seconds']:.2f} s "
                             f"first {result[phase]['first_result_seconds']:.2f} s" for phase in phases)
            print(f"  [{model_name} first result repeat {repeat + 1}/{repeats} seed {SEED + repeat}] {library:21s} "
                  f"{text}  ELBO {result[phases[-1]]['elbo']['value']:.3f}", file=sys.stderr, flush=True)

    line = {"benchmark": BENCHMARK, "mode": "first_result", "model": model_name, "family": "meanfield",
            "steps": steps, "compilation_cache": cache_root is not None, "elbox_stop_when_flat": False}
    for library in FIRST_RESULT_LIBRARIES:
        name = library[: -len("_first_result")]
        for phase in phases:
            prefix = name if phase == "plain" else f"{name}_{phase}"
            for field in FIRST_RESULT_FIELDS:
                line[f"{prefix}_{field}"] = round(statistics.median(r[phase][field] for r in runs[library]), 4)
            line[f"{prefix}_library_seconds"] = [r[phase]["library_seconds"] for r in runs[library]]
        last = phases[-1]
        ordered = sorted(runs[library], key=lambda r: r[last]["elbo"]["value"])
        median_elbo = ordered[(len(ordered) - 1) // 2][last]["elbo"]
        line[f"{name}_elbo"] = {"value": round(median_elbo["value"], 4), "stderr": round(median_elbo["stderr"], 4)}
        line[f"{name}_steps_run"] = int(statistics.median(r[last]["steps_run"] for r in runs[library]))
        if cache_root is not None:
            for field in ("files_after_cold", "bytes_after_cold", "files_added_by_warm"):
                line[f"{name}_cache_{field}"] = statistics.median(r["cache"][field] for r in runs[library])
    for phase in phases:
        middle = "" if phase == "plain" else f"{phase}_"
        for field in ("first_result_seconds", "first_result_with_import_seconds"):
            ratio = field.replace("_seconds", "_ratio")
            line[f"{middle}{ratio}"] = round(line[f"elbox_{middle}{field}"] / line[f"blackjax_{middle}{field}"], 4)
            # Median over repeats of the two back-to-back runs' ratio: less moved by slow drifts.
            line[f"{middle}{ratio}_paired"] = round(statistics.median(
                e[phase][field] / b[phase][field]
                for e, b in zip(runs["elbox_first_result"], runs["blackjax_first_result"])), 4)
    line["same_elbo"] = same_elbo(line["elbox_elbo"], line["blackjax_elbo"])
    line["repeats"] = repeats
    first_run = runs["elbox_first_result"][0][phases[0]]
    line["device"] = first_run["device"]
    line["elbox_source"] = ",".join(sorted({r[phase]["elbox_source"] for rs in runs.values() for r in rs
                                            for phase in phases}))
    return line


def same_elbo(ours: dict, theirs: dict | None) -> bool | None:
    """Whether our ELBO is above theirs or within two combined standard errors of it."""
    if theirs is None:
        return None
    combined = (ours["stderr"] ** 2 + theirs["stderr"] ** 2) ** 0.5
    return ours["value"] >= theirs["value"] - 2 * combined


def compare(model_name: str, family: str, steps: int, repeats: int, timeout: float) -> list[dict]:
    libraries = ("elbox_peer_settings", "elbox_defaults") + PEERS[family]
    runs = {library: [] for library in libraries}
    for repeat in range(repeats):
        # Rotate which library goes first, so slow drifts of the machine hit all alike.
        order = libraries[repeat % len(libraries):] + libraries[: repeat % len(libraries)]
        for library in order:
            result = measure(library, model_name, family, steps, SEED + repeat, timeout)
            runs[library].append(result)
            print(
                f"  [{model_name} {family} repeat {repeat + 1}/{repeats} seed {SEED + repeat}] {library:20s} "
                f"first call {result['first_call_seconds']:6.2f} s  steps {result['steps_run']:6d}  "
                f"ELBO {result['elbo']['value']:10.3f} ± {result['elbo']['stderr']:.3f}",
                file=sys.stderr,
                flush=True,
            )

    def median(library, field):
        return statistics.median(r[field] for r in runs[library])

    def median_run(library):
        # The run (seed) whose ELBO is the median over seeds; its stderr goes with it.
        ordered = sorted(runs[library], key=lambda r: r["elbo"]["value"])
        return ordered[(len(ordered) - 1) // 2]

    def median_elbo(library):
        if library not in runs:
            return None
        elbo = median_run(library)["elbo"]
        return {"value": round(elbo["value"], 4), "stderr": round(elbo["stderr"], 4)}

    def elbo_range(library):
        if library not in runs:
            return None
        values = [r["elbo"]["value"] for r in runs[library]]
        return [round(min(values), 4), round(max(values), 4)]

    def paired_ratio(peer, ours):
        # Median over repeats of peer / elbox for the runs of the same repeat (back to back).
        if peer not in runs:
            return None
        return round(statistics.median(
            p["first_call_seconds"] / e["first_call_seconds"] for p, e in zip(runs[peer], runs[ours])
        ), 3)

    def median_imports(library):
        return round(statistics.median(sum(r["import_seconds"].values()) for r in runs[library]), 3)

    lines = []
    for mode in ELBOX_MODES:
        ours = f"elbox_{mode}"
        elbox_seconds = median(ours, "first_call_seconds")
        peer_seconds = {peer: median(peer, "first_call_seconds") if peer in runs else None
                        for peer in ("numpyro", "blackjax")}
        elbos = {peer: median_elbo(peer) for peer in ("numpyro", "blackjax")}
        elbox_elbo = median_elbo(ours)
        own = median_run(ours)["own_elbo"]
        lines.append({
            "benchmark": BENCHMARK,
            "model": model_name,
            "family": family,
            "elbox_mode": mode,
            "steps": steps,
            "elbox_seconds": round(elbox_seconds, 3),
            "numpyro_seconds": round(peer_seconds["numpyro"], 3),
            "blackjax_seconds": None if peer_seconds["blackjax"] is None else round(peer_seconds["blackjax"], 3),
            "ratio_numpyro": round(peer_seconds["numpyro"] / elbox_seconds, 3),
            "ratio_blackjax": (None if peer_seconds["blackjax"] is None
                               else round(peer_seconds["blackjax"] / elbox_seconds, 3)),
            "ratio_numpyro_paired": paired_ratio("numpyro", ours),
            "ratio_blackjax_paired": paired_ratio("blackjax", ours),
            "elbox_elbo": elbox_elbo,
            "numpyro_elbo": elbos["numpyro"],
            "blackjax_elbo": elbos["blackjax"],
            "same_elbo_numpyro": same_elbo(elbox_elbo, elbos["numpyro"]),
            "same_elbo_blackjax": same_elbo(elbox_elbo, elbos["blackjax"]),
            # Smallest and largest ELBO over the seeds, to show how much the final q varies.
            "elbox_elbo_range": elbo_range(ours),
            "numpyro_elbo_range": elbo_range("numpyro"),
            "blackjax_elbo_range": elbo_range("blackjax"),
            "elbox_steps_run": int(median(ours, "steps_run")),
            "elbox_compile_seconds": round(median(ours, "compile_seconds"), 3),
            "elbox_fitting_seconds": round(median(ours, "fitting_seconds"), 3),
            # elbox's own headline estimate (its own draws) for the median run, beside the common one.
            "elbox_own_elbo": {k: round(v, 4) for k, v in own.items()},
            "import_seconds": {
                "elbox": median_imports(ours),
                "numpyro": median_imports("numpyro"),
                "blackjax": median_imports("blackjax") if "blackjax" in runs else None,
            },
            "repeats": repeats,
            "device": runs[ours][0]["device"],
            "elbox_source": ",".join(sorted({r["elbox_source"] for rs in runs.values() for r in rs})),
        })
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: eight_schools, meanfield, 1 repeat")
    parser.add_argument("--models", nargs="+", help=f"models to run (default: {', '.join(FULL_MODELS)})")
    parser.add_argument("--families", nargs="+", choices=FULL_FAMILIES, help="families (default: both)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"optimisation steps (default {STEPS})")
    parser.add_argument(
        "--repeats", type=int,
        help="fresh-process repeats per library "
             "(default 5 for eight_schools, 3 for logistic_regression; 1 with --quick)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for one worker process")
    parser.add_argument("--first-result", action="store_true",
                        help="time to the first result of a mean-field fit in a fresh process, imports included, "
                             "elbox against BlackJAX (default model: eight_schools; 5 repeats, 1 with --quick)")
    parser.add_argument("--compilation-cache", action="store_true",
                        help="with --first-result: two fresh processes per measurement sharing a new JAX "
                             "compilation cache folder, cold (empty) then warm")
    parser.add_argument("--cache-root", help="where the cache folders are made (default: a new temporary folder, "
                                             "removed at the end)")
    all_libraries = LIBRARIES + FIRST_RESULT_LIBRARIES
    parser.add_argument(
        "--worker", nargs=5, metavar=("LIBRARY", "MODEL", "FAMILY", "STEPS", "SEED"),
        help=f"internal: run one measurement (LIBRARY is one of {', '.join(all_libraries)}) and print it as JSON",
    )
    parser.add_argument("--cache-dir", help=f"with --worker {' or '.join(FIRST_RESULT_LIBRARIES)}: JAX's "
                                            "compilation cache in this folder")
    args = parser.parse_args(argv)

    if args.worker:
        library, model_name, family, steps, seed = args.worker
        if library not in all_libraries:
            parser.error(f"unknown library {library!r}; choose from {', '.join(all_libraries)}")
        if args.cache_dir is not None and library not in FIRST_RESULT_LIBRARIES:
            parser.error(f"--cache-dir goes with {' or '.join(FIRST_RESULT_LIBRARIES)} only")
        print(json.dumps(run_worker(library, model_name, family, int(steps), int(seed), args.cache_dir)), flush=True)
        return

    if args.compilation_cache and not args.first_result:
        parser.error("--compilation-cache goes with --first-result")
    if args.first_result:
        if args.families and args.families != ["meanfield"]:
            parser.error("--first-result fits the mean-field family only")
        cache_root = None
        if args.compilation_cache:
            cache_root = args.cache_root or tempfile.mkdtemp(prefix="bench_vi_cache-")
            os.makedirs(cache_root, exist_ok=True)
        tic = time.perf_counter()
        try:
            for model_name in args.models or QUICK_MODELS:
                repeats = args.repeats or (1 if args.quick else 5)
                line = compare_first_result(model_name, args.steps, repeats, args.timeout, cache_root)
                print(json.dumps(line), flush=True)
        finally:
            if cache_root is not None and not args.cache_root:
                shutil.rmtree(cache_root, ignore_errors=True)
        print(f"total wall time {time.perf_counter() - tic:.1f} s", file=sys.stderr)
        return

    models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    families = args.families or (QUICK_FAMILIES if args.quick else FULL_FAMILIES)
    tic = time.perf_counter()
    for model_name in models:
        for family in families:
            repeats = args.repeats or (1 if args.quick else FULL_REPEATS.get(model_name, 5))
            for line in compare(model_name, family, args.steps, repeats, args.timeout):
                print(json.dumps(line), flush=True)
    print(f"total wall time {time.perf_counter() - tic:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
