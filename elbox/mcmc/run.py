"""The sampling driver: many chains at once, warm-up with adaptation, then fixed-kernel draws.

``sample(model, key, method="nuts", chains=4, warmup=1000, draws=1000)`` is the public entry
point (re-exported as ``elbox.sample``). It composes a registered sampler (init, kernel, tuner,
stats; :mod:`elbox.mcmc.base`) with compiled ``lax.scan`` chunks (:mod:`elbox.loop`) and knows
nothing else about the sampler.

Chains run side by side (``vmap``; ``chain_method="vectorized"``) or one after another within
each step (``lax.map``; ``"sequential"``: a chain never waits for another's longer NUTS
trajectory). When JAX sees several devices (GPUs, TPU cores, or the CPU devices that elbox asks
for when it is imported, :mod:`elbox.cpu_devices`), the chains are split across them: a
one-axis mesh over chains and ``shard_map``, each device running its own chains with nothing
exchanged between devices while they run. The draws are the same whichever way the chains run,
up to floating-point rounding (the compiler may round a batch of two chains differently from a
batch of four; on a chaotic target such as Neal's funnel such differences grow over a run). The
compiled programs are kept with the model: a second call with the same settings and shapes
compiles nothing.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from elbox import arviz_compat, checks
from elbox.errors import SettingsError
from elbox.initialization import check_initial_positions, draw_initial_positions, user_position
from elbox.loop import ChunkedLoop, choose_chunk_size
from elbox.mcmc.base import Sampler
from elbox.mcmc.registry import DEFAULT_METHOD, SAMPLERS
from elbox.mcmc.warmup import warmup_schedule
from elbox.model import Model
from elbox.models import resolve
from elbox.precision import full_precision
from elbox.progress import ProgressBar
from elbox.results import SamplingResults

METHODS = tuple(SAMPLERS)
CHAIN_METHODS = ("vectorized", "sequential")
# Per-draw statistics summed over warm-up, those the sampler reports (its draws are not kept).
WARMUP_TOTALS = ("acceptance_rate", "n_steps", "diverging")


@full_precision
def sample(
    model: Any,
    key: jax.Array,
    *,
    method: str = DEFAULT_METHOD,
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    init: dict[str, Any] | None = None,
    chain_method: str = "vectorized",
    devices: int | None = None,
    chunk_size: int | None = None,
    progress: bool | Callable[[str, int, int], None] = True,
    **options: Any,
) -> SamplingResults:
    """Draw from p(z | x) with ``chains`` Markov chains.

    Args:
        model: a built-in model name, a NumPyro model function (no arguments, data closed
            over) or an :class:`~elbox.Model`.
        key: a JAX PRNG key; the same key gives the same draws.
        method: the sampler, a name in :data:`elbox.mcmc.registry.SAMPLERS`: ``"nuts"`` (the
            default; :mod:`elbox.mcmc.nuts`), ``"hmc"``, ``"mala"`` or ``"mh"`` (random-walk
            Metropolis–Hastings).
        chains, warmup, draws: how many chains, warm-up steps per chain and kept draws per chain.
        init: constrained starting values ``{site: value}`` shared by all chains; default:
            each chain starts at a uniform draw in [-2, 2] on the unconstrained space.
        chain_method: ``"vectorized"`` (chains batched with ``vmap``, the default) or
            ``"sequential"`` (one chain after another within each step).
        devices: how many of JAX's devices to split the chains over (default: as many as
            divide ``chains``); 1 keeps everything on one device.
        chunk_size: steps per compiled call; the draws do not depend on it.
        progress: show a progress bar (``True``), none (``False``), or a callback
            ``(phase, steps_done, steps_total)``.
        **options: the sampler's own settings, refused by name when it has no such setting:

            * ``nuts``, ``hmc``, ``mala``: ``step_size`` (the first ε; default Stan's heuristic),
              ``mass_matrix`` (``"diagonal_gradient"``, the default, ``"low_rank"``,
              ``"diagonal"`` or ``"dense"``; :mod:`elbox.mcmc.window_adaptation`),
              ``target_acceptance`` (0.8 for NUTS, 0.65 for HMC, 0.574 for MALA);
              ``max_tree_depth`` (NUTS, default 10); ``num_steps`` or ``trajectory_length``
              and ``jitter`` (HMC);
            * ``mh``: ``scale`` (the random walk's first scale, default 2.38 / sqrt(dimension)),
              ``target_acceptance`` (0.234; 0.44 in one dimension), or a ``proposal``
              (:class:`~elbox.mcmc.metropolis.Proposal`, used as is with the Hastings correction).

    Returns:
        :class:`~elbox.results.SamplingResults`: ArviZ ``InferenceData`` of the constrained
        draws and per-draw statistics, what the warm-up adapted, timings, and the diagnostics
        (divergences, tree depth, E-BFMI) with their warnings.

    Example:
        >>> results = elbox.sample("eight_schools", jax.random.key(0))
        >>> results.summary()
    """
    tic_total = time.perf_counter()
    arviz_compat.import_in_background()  # the results need it; importing overlaps compilation
    model = resolve(model)
    checks.one_of("method", method, METHODS)
    checks.one_of("chain_method", chain_method, CHAIN_METHODS)
    chains = checks.count("chains", chains, minimum=1)
    warmup = checks.count("warmup", warmup, minimum=0)
    draws = checks.count("draws", draws, minimum=1)
    if chunk_size is not None:
        chunk_size = checks.count("chunk_size", chunk_size, minimum=1)
    mesh = _chain_mesh(chains, devices)
    options = {name: value for name, value in options.items() if value is not None}
    accepted = inspect.signature(SAMPLERS[method]).parameters
    refused = [name for name in options if name not in accepted or name in ("dimension", "dtype")]
    if refused:
        raise SettingsError(f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not a setting of the "
                            f"{method} sampler; drop {'it' if len(refused) == 1 else 'them'}.")
    dtype = model.flat_dtype
    bar = ProgressBar(progress, total=warmup + draws, description=f"{method} {model.name}")
    if chunk_size is None:
        chunk_size = choose_chunk_size([warmup, draws], min_chunks=20 if bar.enabled else 1)

    def build():
        sampler = SAMPLERS[method](model.dimension, dtype, **options)
        return _compile_program(model, sampler, chains, warmup, chunk_size, chain_method, mesh)

    program = model.program(_program_key(method, options, chains, warmup, chunk_size, chain_method, mesh), build)
    sampler = program.sampler

    given = None if init is None else user_position(model, init)
    carry, key_warmup, key_sampling, placeholder, positions, log_densities = program.start(key, given)
    if given is None:
        check_initial_positions(model, positions, log_densities)
    compiled_before = program.loop.compiled is not None
    with bar:
        bar.phase("warmup")
        warm = program.loop.run(carry, key_warmup, warmup, {"warmup": jnp.bool_(True), "params": placeholder},
                                on_chunk=bar.update, keep_outputs=False)
        _, tuner_states, totals = warm.carry
        final_params = program.final_params(tuner_states)
        bar.phase("sampling")
        run = program.loop.run(warm.carry, key_sampling, draws, {"warmup": jnp.bool_(False), "params": final_params},
                               on_chunk=bar.update)

    flat_draws, stats = jax.tree_util.tree_map(lambda x: np.swapaxes(x, 0, 1), run.outputs)  # (chains, draws, ...)
    seconds = {"compile": 0.0 if compiled_before else program.loop.compile_seconds,
               "warmup": warm.seconds, "sampling": run.seconds}
    seconds["total"] = time.perf_counter() - tic_total
    totals = {name: np.asarray(value) for name, value in totals.items() if name in stats}
    return SamplingResults.from_flat_draws(
        model=model,
        method=method,
        flat_draws=flat_draws,
        sample_stats=stats,
        warmup=warmup,
        seconds=seconds,
        tuning=sampler.tuner.report(final_params),
        settings={**sampler.settings, "chain_method": chain_method,
                  "devices": 1 if mesh is None else int(mesh.devices.size),
                  "platform": jax.devices()[0].platform},
        warmup_totals=totals if warmup else {},
        warmup_acceptance_rate=float(np.mean(totals["acceptance_rate"]) / warmup) if warmup else None,
    )


class _Program(NamedTuple):
    """What a run of one sampler on one model compiles, kept with the model for the next run."""

    sampler: Sampler
    start: Callable
    final_params: Callable
    loop: ChunkedLoop


def _program_key(method, options, chains, warmup, chunk_size, chain_method, mesh):
    """A key for the model's program cache, or None (not kept) when an option cannot be hashed
    (an array)."""
    try:
        frozen = tuple(sorted(options.items()))
        hash(frozen)
    except TypeError:
        return None
    devices = None if mesh is None else tuple(d.id for d in mesh.devices.flat)
    return ("sample", method, frozen, chains, warmup, chunk_size, chain_method, devices)


def _chain_mesh(chains: int, devices: int | None) -> Mesh | None:
    """A one-axis mesh ("chain") over the devices that share the chains, or None for one device."""
    available = jax.devices()
    if devices is None:
        devices = max(n for n in range(1, len(available) + 1) if chains % n == 0)
    else:
        devices = checks.count("devices", devices, minimum=1)
        if devices > len(available):
            raise SettingsError(f"devices={devices}, but JAX sees {len(available)} device(s) "
                                f"({available[0].platform}); give at most {len(available)}.")
        if chains % devices:
            raise SettingsError(f"chains={chains} cannot be split evenly over devices={devices}; "
                                "give a number of chains that is a multiple of the devices.")
    return None if devices == 1 else Mesh(np.array(available[:devices]), ("chain",))


def _map_chains(fn: Callable, chain_method: str, mesh: Mesh | None, chains: int) -> Callable:
    """``fn`` over the leading (chain) axis of its arguments: ``vmap``, or ``lax.map`` for
    ``"sequential"``; with a mesh, each device maps over its own chains (``shard_map``), so that
    no device waits for another's trajectories or exchanges anything with it while they run.
    A device with one chain runs ``fn`` itself, unbatched: a batched NUTS's loops select between
    every carried value of every chain, and take longer to compile (eight schools: 1.9 s against
    1.45 s)."""
    if mesh is not None and chains == mesh.devices.size:
        def mapped(*args):
            out = fn(*jax.tree_util.tree_map(lambda x: x[0], args))
            return jax.tree_util.tree_map(lambda x: x[None], out)
    elif chain_method == "vectorized":
        mapped = jax.vmap(fn)
    else:
        def mapped(*args):
            return jax.lax.map(lambda a: fn(*a), args)
    if mesh is None:
        return mapped
    # check_vma=False: the chains' loops start from constants shared by all devices and carry
    # per-device values; nothing crosses devices, so there is nothing for the check to protect.
    return jax.shard_map(mapped, mesh=mesh, in_specs=PartitionSpec("chain"), out_specs=PartitionSpec("chain"),
                         check_vma=False)


def _compile_program(model: Model, sampler: Sampler, chains: int, warmup: int, chunk_size: int,
                     chain_method: str, mesh: Mesh | None) -> _Program:
    log_density_fn = model.flat_log_joint
    kernel = sampler.build_kernel(log_density_fn)
    tuner = sampler.tuner
    by_chain = None if mesh is None else NamedSharding(mesh, PartitionSpec("chain"))

    def constrain(tree):
        """Keep the chain axis split over the devices (a hint to the compiler; none on one device)."""
        return tree if by_chain is None else jax.lax.with_sharding_constraint(tree, by_chain)

    @jax.jit
    def start(key, given):
        """The first carry (kernel and tuner states, zero warm-up totals), the warm-up and
        sampling keys, the warm-up's stand-in for the fixed parameters, and the chains'
        starting points (drawn, or ``given``) with their log densities."""
        key_init, key_warmup, key_sampling = jax.random.split(key, 3)
        tuner_keys = jax.random.split(jax.random.fold_in(key_init, 1), chains)
        if given is None:
            positions, log_densities = draw_initial_positions(model, key_init, chains)
        else:
            positions = jnp.broadcast_to(given, (chains, given.size))
            log_densities = jax.vmap(log_density_fn)(positions)
        positions, log_densities, tuner_keys = constrain((positions, log_densities, tuner_keys))

        def one_chain(position, log_density, key):
            state = sampler.init(position, log_density, log_density_fn)
            return state, tuner.init(key, state, log_density_fn)

        states, tuner_states = _map_chains(one_chain, chain_method, mesh, chains)(positions, log_densities, tuner_keys)
        totals = {name: jnp.zeros(chains, positions.dtype) for name in WARMUP_TOTALS}
        # axis_size: a tuner that adapts nothing has an empty state, which vmap cannot size by itself.
        placeholder = jax.vmap(tuner.params, axis_size=chains)(tuner_states)
        return (constrain((states, tuner_states, totals)), key_warmup, key_sampling, constrain(placeholder),
                positions, log_densities)

    schedule = warmup_schedule(warmup)
    # One trailing entry so that the schedule can be indexed even when warmup == 0.
    in_slow = jnp.asarray(np.append(schedule.in_slow_window, False))
    window_end = jnp.asarray(np.append(schedule.window_end, False))

    def step(carry, step_key, t, phase):
        """One step of every chain; during warm-up (``phase["warmup"]``) the parameters adapt."""
        states, tuner_states, totals = carry
        keys = jax.random.split(step_key, chains)
        window = {"in_slow_window": in_slow[t], "window_end": window_end[t]}

        def one_chain(key, state, tuner_state, fixed_params):
            params = jax.tree_util.tree_map(
                lambda adapting, fixed: jnp.where(phase["warmup"], adapting, fixed), tuner.params(tuner_state),
                fixed_params)
            state, info = kernel(key, state, params)
            # A real branch, not a select: after warm-up the adaptation is not computed at all.
            tuner_state = jax.lax.cond(phase["warmup"], lambda ts: tuner.update(ts, info, state, window),
                                       lambda ts: ts, tuner_state)
            return state, tuner_state, sampler.stats(info, state)

        states, tuner_states, stats = constrain(
            _map_chains(one_chain, chain_method, mesh, chains)(keys, states, tuner_states, phase["params"]))
        # A statistic the sampler does not report adds nothing (and is dropped from the results).
        totals = {name: totals[name] + jnp.where(phase["warmup"], stats.get(name, 0), 0).astype(totals[name].dtype)
                  for name in totals}
        return (states, tuner_states, totals), (states.position, stats)

    final_params = jax.jit(lambda ts: constrain(jax.vmap(tuner.final, axis_size=chains)(ts)))
    loop = ChunkedLoop(step, chunk_size)
    return _Program(sampler, start, final_params, loop)
