"""The sampling driver: many chains at once, warm-up with adaptation, then fixed-kernel draws.

``sample(model, key, method="mh", chains=4, warmup=1000, draws=1000)`` is the public entry
point (re-exported as ``elbox.sample``). Chains are batched with ``vmap``; steps run in
compiled ``lax.scan`` chunks (:mod:`elbox.loop`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elbox import checks
from elbox.errors import SettingsError
from elbox.initialization import initial_positions
from elbox.loop import ChunkedLoop, choose_chunk_size
from elbox.mcmc.registry import DEFAULT_METHOD, SAMPLERS
from elbox.mcmc.warmup import warmup_schedule
from elbox.models import resolve
from elbox.precision import full_precision
from elbox.progress import ProgressBar
from elbox.results import SamplingResults

METHODS = tuple(SAMPLERS)


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
        chunk_size: steps per compiled call; the draws do not depend on it.
        progress: show a progress bar (``True``), none (``False``), or a callback
            ``(phase, steps_done, steps_total)``.
        **options: the sampler's own settings, refused by name when it has no such setting:

            * ``nuts``, ``hmc``, ``mala``: ``step_size`` (the first ε; default Stan's heuristic),
              ``mass_matrix`` (``"diagonal"``, ``"dense"`` or ``"diagonal_gradient"``),
              ``target_acceptance`` (0.8 for NUTS, 0.65 for HMC, 0.574 for MALA);
              ``max_tree_depth`` (NUTS, default 10); ``num_steps`` or ``trajectory_length``
              and ``jitter`` (HMC);
            * ``mh``: ``scale`` (the random walk's first scale, default 2.38 / sqrt(dimension)),
              ``target_acceptance`` (0.234; 0.44 in one dimension), or a ``proposal``
              (:class:`~elbox.mcmc.metropolis.Proposal`, used as is with the Hastings correction).

    Returns:
        :class:`~elbox.results.SamplingResults`: ArviZ ``InferenceData`` of the constrained
        draws plus acceptance, timings and the adapted proposal scales.

    Example:
        >>> results = elbox.sample("eight_schools", jax.random.key(0), chains=4)
        >>> results.summary()
    """
    tic_total = time.perf_counter()
    model = resolve(model)
    checks.one_of("method", method, METHODS)
    chains = checks.count("chains", chains, minimum=1)
    warmup = checks.count("warmup", warmup, minimum=0)
    draws = checks.count("draws", draws, minimum=1)
    if chunk_size is not None:
        chunk_size = checks.count("chunk_size", chunk_size, minimum=1)
    options = {name: value for name, value in options.items() if value is not None}
    accepted = inspect.signature(SAMPLERS[method]).parameters
    refused = [name for name in options if name not in accepted]
    if refused:
        raise SettingsError(f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not a setting of the "
                            f"{method} sampler; drop {'it' if len(refused) == 1 else 'them'}.")
    sampler = SAMPLERS[method](model.dimension, model.ravel(model.init_position).dtype, **options)

    key_init, key_warmup, key_sampling = jax.random.split(key, 3)
    key_tuner = jax.random.fold_in(key_init, 1)
    positions, log_densities = initial_positions(model, key_init, chains, init)
    kernel = sampler.build_kernel(model.flat_log_joint)
    tuner = sampler.tuner

    @jax.jit
    @jax.vmap
    def start(position, log_density, key):
        state = sampler.init(position, log_density, model.flat_log_joint)
        return state, tuner.init(key, state, model.flat_log_joint)

    states, tuner_states = start(positions, log_densities, jax.random.split(key_tuner, chains))

    schedule = warmup_schedule(warmup)
    # One trailing entry so that the schedule can be indexed even when warmup == 0.
    in_slow = jnp.asarray(np.append(schedule.in_slow_window, False))
    window_end = jnp.asarray(np.append(schedule.window_end, False))

    def step(carry, step_key, t, phase):
        """One step of every chain; during warm-up (``phase["warmup"]``) the parameters adapt."""
        states, tuner_states, warmup_acceptance = carry
        keys = jax.random.split(step_key, chains)

        def one_chain(key, state, tuner_state, fixed_params):
            params = jax.tree_util.tree_map(
                lambda adapting, fixed: jnp.where(phase["warmup"], adapting, fixed), tuner.params(tuner_state),
                fixed_params)
            return kernel(key, state, params)

        states, info = jax.vmap(one_chain)(keys, states, tuner_states, phase["params"])

        def adapt(tuner_states):
            window = {"in_slow_window": in_slow[t], "window_end": window_end[t]}
            return jax.vmap(lambda ts, i, s: tuner.update(ts, i, s, window))(tuner_states, info, states)

        # A real branch, not a select: after warm-up the adaptation is not computed at all.
        tuner_states = jax.lax.cond(phase["warmup"], adapt, lambda a: a, tuner_states)
        stats = sampler.stats(info, states)
        warmup_acceptance = warmup_acceptance + jnp.where(phase["warmup"], stats["acceptance_rate"], 0.0)
        return (states, tuner_states, warmup_acceptance), (states.position, stats)

    bar = ProgressBar(progress, total=warmup + draws, description=f"{method} {model.name}")
    if chunk_size is None:
        chunk_size = choose_chunk_size([warmup, draws], min_chunks=20 if bar.enabled else 1)
    loop = ChunkedLoop(step, chunk_size)
    carry = (states, tuner_states, jnp.zeros(chains, positions.dtype))
    # axis_size: a tuner that adapts nothing has an empty state, which vmap cannot size by itself.
    final_params_of = jax.jit(jax.vmap(tuner.final, axis_size=chains))
    with bar:
        bar.phase("warmup")
        # During warm-up the fixed parameters are a placeholder of the right shape (unused).
        placeholder = jax.vmap(tuner.params, axis_size=chains)(tuner_states)
        warm = loop.run(carry, key_warmup, warmup, {"warmup": jnp.bool_(True), "params": placeholder},
                        on_chunk=bar.update, keep_outputs=False)
        states, tuner_states, warmup_acceptance = warm.carry
        final_params = final_params_of(tuner_states)
        bar.phase("sampling")
        run = loop.run(warm.carry, key_sampling, draws, {"warmup": jnp.bool_(False), "params": final_params},
                       on_chunk=bar.update)

    flat_draws, stats = jax.tree_util.tree_map(lambda x: np.swapaxes(x, 0, 1), run.outputs)  # (chains, draws, ...)
    seconds = {"compile": loop.compile_seconds, "warmup": warm.seconds, "sampling": run.seconds}
    seconds["total"] = time.perf_counter() - tic_total
    return SamplingResults.from_flat_draws(
        model=model,
        method=method,
        flat_draws=flat_draws,
        sample_stats=stats,
        warmup=warmup,
        seconds=seconds,
        tuning=tuner.report(final_params),
        warmup_acceptance_rate=float(np.mean(warmup_acceptance) / warmup) if warmup else None,
    )
