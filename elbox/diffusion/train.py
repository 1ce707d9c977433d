"""Training a diffusion denoiser on its bound (or on DDPM's L_simple) with optax, in compiled chunks.

One step: draw a minibatch of ``batch_size`` examples uniformly with replacement (on the device,
from the step's key), average the chosen loss of :mod:`elbox.diffusion.elbo` over it (``jax.vmap``
over examples, one t and one noise each), take an optax step, update the exponential moving
average (EMA) of the parameters, and for ``loss="vlb_importance"`` record the drawn terms in the
importance-sampling history (Nichol & Dhariwal 2021, section 3.3). The steps run in chunks of
``lax.scan`` (:class:`~elbox.loop.ChunkedLoop`); the host looks in between, for the progress bar,
non-finite losses and checkpoints.

Checkpoints are written every ``checkpoint_every`` steps, at the end, and whenever
``checkpoint_seconds`` of training have passed since the last one (so an interruption loses at
most about that much work). A checkpoint that cannot be read is skipped for the one before it.

The key of global step k (0-based, counted over all runs of a resumed training) is
``fold_in(key, k)``, so the result depends on neither the chunking nor interruptions: a run
stopped after a checkpoint and resumed with ``resume=True`` ends with exactly the parameters of
an uninterrupted run with the same key and settings.

Several devices (``devices``; by default all GPUs or TPUs, and one CPU device: see
:func:`training_devices`). One program runs on a 1-axis mesh named ``"data"`` over the first
``devices`` devices of ``jax.devices()``: the parameters, their EMA, the optimizer state, the
importance history, the key and the training data are replicated on every device, and each
step's minibatch is split along its examples (``with_sharding_constraint``); the compiler
partitions the per-example work and all-reduces the batch means, so the gradient is that of the
whole batch. The draws are the same as on one device
(the same keys, and threefry's values do not depend on how an array is split), so the losses and
parameters differ from one device's only by the order of the sums: float rounding. (Training
amplifies rounding differences like any others, e.g. a vdm's over hundreds of steps; and with
``loss="vlb_importance"`` the t draws depend on the history's values, so once it is full a
rounding difference can change a draw, after which the runs differ as two runs of the same
distribution.) ``devices=1`` is the single-device program, without a mesh. Checkpoints hold
host copies of the replicated arrays and do not record the device count, so a run checkpointed
on one count resumes on any other. The networks returned lie on one device.

Over several processes (hosts) joined by ``jax.distributed.initialize()``, ``jax.devices()``
lists every process's devices and the mesh spans all of them: every process calls :func:`train`
with the same data, key and network, the first process writes the checkpoints into a
``checkpoint_dir`` that all processes must see (they all read it to resume, and must find the same
step), and a checkpoint due by the clock is decided by the first process's clock.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from elbox import checks, cpu_devices
from elbox.diffusion import vdm
from elbox.diffusion.decoders import Gaussian
from elbox.diffusion.elbo import (
    init_importance_history,
    loss_hybrid,
    loss_simple,
    loss_vlb_importance,
    loss_vlb_uniform,
    update_importance_history,
)
from elbox.diffusion.process import VARIANCES
from elbox.errors import RunError, SettingsError
from elbox.loop import ChunkedLoop, choose_chunk_size
from elbox.precision import full_precision
from elbox.progress import ProgressBar

LOSSES = ("vlb_importance", "vlb_uniform", "simple", "hybrid", "vdm")
CHECKPOINT_PATTERN = re.compile(r"^step_(\d{9})\.json$")
CHECKPOINTS_KEPT = 2
CHECKPOINT_SECONDS = 60.0
FORMAT_VERSION = 1
MESH_AXIS = "data"


class TrainState(NamedTuple):
    """The loop's carry: everything a checkpoint holds besides the key.

    Attributes:
        params: the network's inexact arrays (``eqx.partition(network, eqx.is_inexact_array)``).
        ema_params: their exponential moving average.
        opt_state: the optax state.
        history: the :class:`~elbox.diffusion.elbo.ImportanceHistory` (``loss="vlb_importance"``),
            else ``None``.
        step: steps done (int32).
    """

    params: Any
    ema_params: Any
    opt_state: Any
    history: Any
    step: jax.Array


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
        network: the trained denoiser (the last iterate).
        ema_network: the same network with the EMA of the parameters (usually the better
            sampler and bound; evaluate both).
        loss_trace: the minibatch loss at every step done, shape (steps_done,) (for a resumed
            run, including the steps before the interruption).
        steps_done: the number of optimisation steps behind ``network``.
        seconds: wall-clock seconds of this call (compilation included).
        devices: how many devices each batch was split over (1: one device).
    """

    network: Any
    ema_network: Any
    loss_trace: np.ndarray
    steps_done: int
    seconds: float
    devices: int = 1


def ema_update(ema_params, params, decay):
    """The EMA after one step: decay * ema + (1 - decay) * params, leaf by leaf (a pure function;
    ``None`` leaves, the static parts of a partitioned module, stay ``None``)."""
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema_params, params)


def batch_loss(key, params, static, schedule, batch, loss: str, variance: str, decoder, history=None,
               vlb_weight: float = 0.001):
    """The chosen loss averaged over a batch (examples along axis 0), one key per example.

    Returns:
        (mean loss, LossInfo with a leading batch axis).
    """
    network = eqx.combine(params, static)
    num_steps = schedule.num_steps

    def eps_fn(x_t, t):
        return network(x_t, t, num_steps)

    def one(example_key, x0):
        if loss == "vlb_importance":
            return loss_vlb_importance(example_key, schedule, eps_fn, x0, history, variance, decoder)
        if loss == "vlb_uniform":
            return loss_vlb_uniform(example_key, schedule, eps_fn, x0, variance, decoder)
        if loss == "simple":
            return loss_simple(example_key, schedule, eps_fn, x0)
        return loss_hybrid(example_key, schedule, eps_fn, x0, variance, decoder, vlb_weight)

    losses, info = jax.vmap(one)(jax.random.split(key, batch.shape[0]), batch)
    return jnp.mean(losses), info


@full_precision
def train(
    key: jax.Array,
    data,
    *,
    schedule=None,
    network,
    steps: int,
    batch_size: int = 512,
    learning_rate: float | optax.Schedule = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    loss: str = "vlb_importance",
    variance: str = "beta_tilde",
    decoder=Gaussian(),
    ema_decay: float = 0.999,
    vlb_weight: float = 0.001,
    checkpoint_every: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    chunk_size: int | None = None,
    progress=True,
    checkpoint_seconds: float | None = CHECKPOINT_SECONDS,
    on_start: Callable[[int], None] | None = None,
    devices: int | None = None,
) -> TrainResult:
    """Train a denoiser ``network(x_t, t, T) -> (eps_hat, v or None)`` on ``data``.

    Args:
        key: a JAX PRNG key; step k uses ``fold_in(key, k)`` (minibatch, t and noise draws).
        data: the training examples along axis 0 (an array; each example of the network's input
            shape, e.g. (dim,), or (64,) for a flattened 8 x 8 image).
        schedule: a :class:`~elbox.diffusion.schedules.Schedule` (cast to the data's dtype); None
            for ``loss="vdm"``, whose schedule is part of the network.
        network: an equinox denoiser (:class:`~elbox.diffusion.networks.MLPDenoiser`,
            :class:`~elbox.diffusion.networks.ConvDenoiser`), or for ``loss="vdm"`` a
            :class:`~elbox.diffusion.vdm.VDM`; its inexact arrays are trained.
        steps: the total number of optimisation steps (with ``resume``, counting those done).
        batch_size: examples per step, drawn uniformly with replacement.
        learning_rate: Adam's step size (float or optax schedule); ignored with ``optimizer``.
        optimizer: any optax ``GradientTransformation`` (default ``optax.adam(learning_rate)``).
        loss: ``"vlb_importance"`` (-ELBO, importance-sampled t), ``"vlb_uniform"`` (-ELBO,
            uniform t), ``"simple"`` (DDPM's L_simple) or ``"hybrid"`` (L_simple + vlb_weight
            L_vlb); see :mod:`elbox.diffusion.elbo`; or ``"vdm"``, the continuous-time bound of
            :mod:`elbox.diffusion.vdm`.
        variance: the reverse variance: ``"beta_tilde"``, ``"beta"`` or ``"learned_range"``
            (needs a network built with ``learn_variance=True``).
        decoder: the reconstruction likelihood (``Gaussian()`` or ``DiscretizedGaussian()``).
        ema_decay: the EMA's decay per step.
        vlb_weight: lambda of ``loss="hybrid"``.
        checkpoint_every: write a checkpoint every this many steps (and at the end) into
            ``checkpoint_dir``: the parameters, their EMA, the optimizer state, the importance
            history, the step, the key and the loss trace (``equinox.tree_serialise_leaves`` to
            a temporary file, renamed into place), and a JSON file with the step and settings.
            The last two checkpoints are kept.
        checkpoint_dir: where checkpoints go (needed by ``checkpoint_every`` and ``resume``).
        resume: continue from the latest checkpoint in ``checkpoint_dir`` (start afresh when
            there is none). Its key and settings must match this call's. A checkpoint that
            cannot be read (a truncated or damaged file) is skipped, with a warning, for the one
            before it.
        chunk_size: steps per compiled chunk (default: from ``checkpoint_every`` or ``steps``);
            it does not change the result.
        progress: a progress bar (``True``), none, or a callback ``(phase, done, total)``.
        checkpoint_seconds: with ``checkpoint_every``, also write a checkpoint at the end of the
            first chunk that finishes this many seconds (wall clock) after the last checkpoint
            (or the start); None: by steps only. It does not change the result.
        on_start: called with the step training starts from (0, or the checkpoint's step) once
            the settings and the checkpoint have been checked, before the first step.
        devices: split each batch over the first this many devices of JAX's default backend
            (``batch_size`` must be a multiple of it); 1: one device, as without a mesh. None:
            see :func:`training_devices` (all GPUs/TPUs; on a CPU, one). It does not change
            the result beyond float rounding, and is not part of the checkpoint's settings.

    Returns:
        :class:`TrainResult`.

    Raises:
        FittingError: the loss became non-finite (the message names the step).
        SettingsError: an unknown loss or variance, bad counts, more ``devices`` than JAX has or
            a ``batch_size`` they do not divide, or a checkpoint that does not match these settings.
        RunError: ``resume`` with checkpoints none of which can be read.

    Example:
        >>> net = MLPDenoiser(jax.random.key(0), dim=2, width=64, depth=2)
        >>> result = train(jax.random.key(1), data, schedule=cosine_schedule(100), network=net, steps=2000)
        >>> bound_estimate(key, schedule, as_eps_fn(result.ema_network, 100), test_data).nats
    """
    tic = time.perf_counter()
    data = jnp.asarray(data)
    if not jnp.issubdtype(data.dtype, jnp.floating):
        data = data.astype(jnp.result_type(float))
    steps = checks.count("steps", steps, 0)
    batch_size = checks.count("batch_size", batch_size, 1)
    if checkpoint_every is not None:
        checkpoint_every = checks.count("checkpoint_every", checkpoint_every, 1)
    if checkpoint_seconds is not None:
        checkpoint_seconds = checks.positive("checkpoint_seconds", checkpoint_seconds)
    ema_decay = checks.fraction("ema_decay", ema_decay)
    settings = _check_settings(data, network, batch_size, loss, variance, ema_decay,
                               checkpoint_every, checkpoint_dir, resume, schedule)
    mesh_devices = training_devices(devices, batch_size)
    if schedule is not None:
        schedule = schedule.cast(data.dtype)
    optimizer_given = optimizer is not None
    if optimizer is None:
        learning_rate = checks.learning_rate(learning_rate)
        optimizer = optax.adam(learning_rate)

    params, static = eqx.partition(network, eqx.is_inexact_array)
    history = init_importance_history(schedule.num_steps, dtype=data.dtype) if loss == "vlb_importance" else None
    state = TrainState(params, params, optimizer.init(params), history, jnp.zeros((), jnp.int32))
    trace = np.zeros((0,), np.float32)
    key_data = np.asarray(jax.random.key_data(key) if _is_typed_key(key) else key)

    if resume:
        loaded = _load_latest(checkpoint_dir, state, key_data, settings)
        if loaded is not None:
            state, trace = loaded
    start = int(state.step)

    # Several devices: one program over a 1-axis mesh. Everything the step reads is replicated and
    # only the minibatch is split; the compiler partitions the per-example work and all-reduces the
    # batch means (loss, gradients). The draws do not depend on the split (threefry keys are
    # partitionable), so only the order of the sums differs from one device.
    replicated = by_example = None
    if len(mesh_devices) > 1:
        mesh = Mesh(np.array(mesh_devices), (MESH_AXIS,))
        replicated, by_example = NamedSharding(mesh, P()), NamedSharding(mesh, P(MESH_AXIS))
        state, data, key = _replicate((state, data, key), replicated)
    # Over several processes (jax.distributed) every process runs the same host loop: they must
    # start at the same step and cut their segments at the same steps, and one of them writes.
    spans_processes = replicated is not None and not replicated.is_fully_addressable
    if spans_processes:
        _same_start_everywhere(start, checkpoint_dir)
    writer = jax.process_index() == 0 or jax.process_count() == 1

    def step_fn(state: TrainState, _loop_key, t, phase):
        global_step = phase["offset"] + t
        key_batch, key_loss = jax.random.split(jax.random.fold_in(phase["key"], global_step))
        data = phase["data"]
        indices = jax.random.randint(key_batch, (batch_size,), 0, data.shape[0])
        batch = data[indices]
        if by_example is not None:
            batch = jax.lax.with_sharding_constraint(batch, by_example)
        if loss == "vdm":
            value, grads = vdm.loss_and_grad(key_loss, state.params, static, batch, decoder)
        else:
            (value, info), grads = jax.value_and_grad(batch_loss, argnums=1, has_aux=True)(
                key_loss, state.params, static, schedule, batch, loss, variance, decoder, state.history,
                vlb_weight,
            )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        history = state.history
        if history is not None:
            history = update_importance_history(history, info.t, info.term)
        new = TrainState(params, ema_update(state.ema_params, params, ema_decay), opt_state, history, state.step + 1)
        if replicated is not None:
            # The carry keeps the placement it came in with, so every chunk calls the one compiled program.
            new = jax.lax.with_sharding_constraint(new, replicated)
        return new, value

    if on_start is not None:
        on_start(start)
    checkpointing = checkpoint_every is not None
    by_time = checkpointing and checkpoint_seconds is not None
    if chunk_size is None:
        # Short chunks where the host must look often: a moving bar, or the clock of the checkpoints.
        chunk_size = choose_chunk_size([checkpoint_every or steps], min_chunks=10 if progress or by_time else 1)
    loop = ChunkedLoop(step_fn, chunk_size)
    traces = [trace]
    last_saved = [time.perf_counter()]
    with ProgressBar(progress, total=steps, description="diffusion") as bar:
        bar.phase(f"training ({loss})")
        if start:
            bar.resume_at(start)
        position = start
        while position < steps:
            # A segment ends at the next multiple of checkpoint_every (or at steps), or earlier, at
            # the end of a chunk, when a checkpoint is due by the clock. The step keys are
            # fold_in(key, global step), so where the segments end does not change the result.
            segment_end = _next_cut(position, steps, checkpoint_every)
            reported = [0]

            def watch(outputs, segment_start=position, reported=reported):
                losses = np.asarray(outputs)
                fresh = losses[reported[0]:]
                bad = np.flatnonzero(~np.isfinite(fresh))
                if bad.size:
                    raise checks.non_finite_loss(
                        "diffusion training loss", segment_start + reported[0] + int(bad[0]), steps, learning_rate,
                        optimizer_given, NON_FINITE_REMEDIES,
                    )
                bar.update(fresh.size, loss=f"{float(np.mean(fresh)):.4g}")
                reported[0] = losses.size
                due = by_time and time.perf_counter() - last_saved[0] >= checkpoint_seconds
                if by_time and spans_processes:  # the first process's clock decides for all
                    due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
                return due

            run = loop.run(state, key, segment_end - position,
                           {"offset": jnp.int32(position), "data": data, "key": key}, stop=watch)
            state = run.carry
            segment_trace = np.asarray(run.outputs, np.float32)
            traces.append(segment_trace)
            position += segment_trace.shape[0]
            if checkpointing and writer:
                _save(checkpoint_dir, state, key_data, np.concatenate(traces), settings)
                last_saved[0] = time.perf_counter()

    if replicated is not None:
        # The networks go back to one device (this process's first of the mesh): a later computation
        # on them (a bound, samples) would otherwise run replicated, the same work on every device.
        state = jax.tree_util.tree_map(lambda x: x.addressable_shards[0].data, state)
    return TrainResult(
        network=eqx.combine(state.params, static),
        ema_network=eqx.combine(state.ema_params, static),
        loss_trace=np.concatenate(traces),
        steps_done=int(state.step),
        seconds=time.perf_counter() - tic,
        devices=len(mesh_devices),
    )


NON_FINITE_REMEDIES = ("gradient clipping (optax.chain(optax.clip_by_global_norm(1.0), optax.adam(...))), "
                       "or a larger batch_size")


def training_devices(devices: int | None, batch_size: int) -> list:
    """The devices that share each batch: the first ``devices`` of ``jax.devices()``.

    ``devices=None`` chooses: on GPUs and TPUs all of them (the largest count that divides
    ``batch_size``, with a warning when that leaves some out); on a CPU one. JAX's CPU devices
    share the same cores (elbox makes ``max(cores, 4)`` of them for MCMC chains): on 2 cores the
    default gmm8 and digits recipes, split over 2 CPU devices, ran at 0.7-1.1x the steps per
    second of one device, and over 4 at 0.6-0.9x (three runs each of
    ``benchmarks/bench_diffusion_sharding.py``). Ask for ``devices=N`` to split anyway.

    Raises:
        SettingsError: ``devices`` is not a whole number >= 1, more than JAX sees, does not
            divide ``batch_size``, or (over several processes) leaves a process without a device.
    """
    available = jax.devices()
    platform = available[0].platform
    if devices is None:
        if platform == "cpu":
            return available[:1]
        devices = max(n for n in range(1, len(available) + 1) if batch_size % n == 0)
        if devices < len(available):
            warnings.warn(
                f"batch_size={batch_size} cannot be split evenly over the {len(available)} {platform} devices, so "
                f"training uses {devices} of them; give a batch_size that is a multiple of {len(available)} to use "
                "them all (or devices=... to choose).", RuntimeWarning, stacklevel=3)
    else:
        devices = checks.count("devices", devices, 1)
        if devices > len(available):
            if platform == "cpu":
                more = ("on a CPU, ask for more CPU devices before JAX starts, e.g. "
                        f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} or "
                        f"{cpu_devices.ENVIRONMENT_VARIABLE}={devices} in the environment")
            else:
                more = "run on a machine with more, or over several hosts after jax.distributed.initialize()"
            raise SettingsError(f"devices={devices}, but JAX sees {len(available)} {platform} device(s); give at "
                                f"most {len(available)}, or {more}.")
        if batch_size % devices:
            raise SettingsError(
                f"batch_size={batch_size} cannot be split evenly over devices={devices}: each device takes the same "
                f"number of examples. Give a batch_size that is a multiple of {devices} (e.g. "
                f"{-(-batch_size // devices) * devices}), or a number of devices that divides {batch_size}."
            )
    chosen = available[:devices]
    if devices > 1 and {d.process_index for d in chosen} != set(range(jax.process_count())):
        raise SettingsError(
            f"devices={devices} takes the devices of only some of the {jax.process_count()} processes (the first "
            f"{devices} of jax.devices()), but every process runs the training; split the batch over all "
            f"{len(available)} devices (a batch_size that is a multiple of {len(available)}) or over a count that "
            "reaches into every process."
        )
    return chosen


def _replicate(tree, sharding: NamedSharding):
    """Every array of ``tree`` as one array replicated over ``sharding``'s mesh. Over several
    processes (``jax.distributed``) each builds its local copies from its own values, which must
    be the same in all of them (the same data, key and initial network)."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def put(x):
        if _is_typed_key(x):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def _same_start_everywhere(start: int, checkpoint_dir):
    """A RunError unless every process of a multi-process training starts from step ``start``."""
    steps = multihost_utils.process_allgather(np.asarray(start, np.int64))
    if np.any(steps != start):
        raise RunError(
            f"The {jax.process_count()} processes would start training at different steps ({steps.tolist()}): "
            f"they did not find the same checkpoints in {checkpoint_dir}. Give every process the same "
            "checkpoint_dir on a file system they all see (the first process writes the checkpoints, all of "
            "them read them)."
        )


def _next_cut(position: int, steps: int, checkpoint_every: int | None) -> int:
    """The next multiple of checkpoint_every after ``position``, or ``steps`` if it comes first."""
    if checkpoint_every is None:
        return steps
    return min(steps, (position // checkpoint_every + 1) * checkpoint_every)


def _is_typed_key(key) -> bool:
    return jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key)


def _check_settings(data, network, batch_size, loss, variance, ema_decay, checkpoint_every, checkpoint_dir, resume,
                    schedule) -> dict:
    """The checks of the settings that the counts' and rates' checks do not cover, and the
    settings a checkpoint must match."""
    checks.one_of("loss", loss, LOSSES)
    if (loss == "vdm") != isinstance(network, vdm.VDM):
        raise SettingsError(
            'loss="vdm" trains a VDM (a denoiser with its learned schedule), and a VDM trains only on '
            f'loss="vdm"; got loss={loss!r} and a {type(network).__name__}.'
        )
    if schedule is None and loss != "vdm":
        raise SettingsError(f'loss={loss!r} needs the noise schedule of the discrete-time model (schedule=...).')
    checks.one_of("variance", variance, VARIANCES)
    if variance == "learned_range" and not getattr(network, "learn_variance", True):
        raise SettingsError(
            'variance="learned_range" needs a network with a variance output: build it with '
            'learn_variance=True, or choose variance="beta_tilde" or "beta".'
        )
    if variance == "learned_range" and loss == "simple":
        raise SettingsError(
            'loss="simple" does not train the variance output of variance="learned_range"; use '
            'loss="hybrid" or a vlb loss, or a fixed variance.'
        )
    if data.ndim < 1 or data.shape[0] < 1:
        raise SettingsError(f"data needs at least one example along axis 0; got shape {data.shape}.")
    if checkpoint_every is not None and checkpoint_dir is None:
        raise SettingsError("checkpoint_every needs a checkpoint_dir to write the checkpoints to.")
    if resume and checkpoint_dir is None:
        raise SettingsError("resume=True needs the checkpoint_dir of the run to resume.")
    return {
        "format_version": FORMAT_VERSION,
        "loss": loss,
        "variance": variance,
        "batch_size": int(batch_size),
        "ema_decay": float(ema_decay),
        "num_diffusion_steps": None if schedule is None else int(schedule.num_steps),
        "num_examples": int(data.shape[0]),
        "example_shape": list(data.shape[1:]),
        "dtype": str(data.dtype),
        "network": type(network).__name__,
    }


def _atomic_write(directory: str, name: str, write):
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _save(directory, state: TrainState, key_data, trace: np.ndarray, settings: dict):
    """Write step_<step>.eqx (the state, key and trace), then step_<step>.json with the settings
    and the sha256 of the .eqx file (written last: a checkpoint counts once its JSON exists); keep
    the last CHECKPOINTS_KEPT, and remove any of later steps (left from a line of training that
    was not continued, such as an unreadable checkpoint skipped on resuming)."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    step = int(state.step)
    stem = f"step_{step:09d}"
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, (state, jnp.asarray(key_data), trace))
    content = buffer.getvalue()
    _atomic_write(directory, stem + ".eqx", lambda path: _write_bytes(path, content))
    meta = {"step": step, "key_shape": list(key_data.shape), **settings, "sha256": hashlib.sha256(content).hexdigest()}
    _atomic_write(directory, stem + ".json", lambda path: _write_bytes(path, json.dumps(meta, indent=1).encode()))
    earlier = sorted(s for s in _checkpoint_steps(directory) if s <= step)
    stale = earlier[:-CHECKPOINTS_KEPT] + [s for s in _checkpoint_steps(directory) if s > step]
    for old in stale:
        for suffix in (".json", ".eqx"):  # JSON first: a half-deleted checkpoint is not listed
            path = os.path.join(directory, f"step_{old:09d}{suffix}")
            if os.path.exists(path):
                os.remove(path)


def _write_bytes(path, content: bytes):
    with open(path, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def _checkpoint_steps(directory) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return [int(m.group(1)) for name in os.listdir(directory) if (m := CHECKPOINT_PATTERN.match(name))]


class _Unreadable(Exception):
    """A checkpoint whose files cannot be read back (truncated, damaged, or half deleted)."""


def _read_checkpoint(stem: str, like: TrainState, key_data):
    """(meta, state, saved key, trace) of the checkpoint ``stem``.json/.eqx; _Unreadable if either
    file cannot be read or the .eqx does not match the sha256 its JSON records."""
    try:
        with open(stem + ".json") as f:
            meta = json.load(f)
        step = int(meta["step"])
        with open(stem + ".eqx", "rb") as f:
            content = f.read()
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _Unreadable(f"{type(error).__name__}: {error}") from None
    recorded = meta.get("sha256")  # checkpoints written before the checksum was recorded have none
    if recorded is not None and hashlib.sha256(content).hexdigest() != recorded:
        raise _Unreadable("its bytes do not match the sha256 recorded beside it")
    payload_like = (like, jnp.zeros(key_data.shape, key_data.dtype), np.zeros((step,), np.float32))
    try:
        state, saved_key, trace = eqx.tree_deserialise_leaves(io.BytesIO(content), payload_like)
    except Exception as error:  # a truncated or foreign file
        raise _Unreadable(f"{type(error).__name__}: {error}") from None
    return meta, state, saved_key, trace


def _load_latest(directory, like: TrainState, key_data, settings: dict):
    """(state, trace) of the latest readable checkpoint in ``directory``, or None when there is
    none. An unreadable one is skipped with a warning; if none can be read, a RunError."""
    directory = os.fspath(directory)
    steps = sorted(_checkpoint_steps(directory), reverse=True)
    if not steps:
        return None
    problems = []
    for step in steps:
        stem = os.path.join(directory, f"step_{step:09d}")
        try:
            meta, state, saved_key, trace = _read_checkpoint(stem, like, key_data)
        except _Unreadable as error:
            problems.append(f"step {step}: {error}")
            later = [s for s in steps if s < step]
            instead = f"resuming from the one before it, step {later[0]}" if later else "no earlier checkpoint is left"
            warnings.warn(f"The checkpoint {stem}.eqx cannot be read ({error}); {instead}.", RuntimeWarning,
                          stacklevel=3)
            continue
        different = {k: (meta.get(k), v) for k, v in settings.items() if meta.get(k) != v}
        if different:
            listed = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in different.items())
            raise SettingsError(
                f"The checkpoint {stem}.json was written with other settings ({listed}). Resume with the "
                "same settings, or use another checkpoint_dir to start afresh."
            )
        if not np.array_equal(np.asarray(saved_key), key_data):
            raise SettingsError(
                f"The checkpoint {stem}.eqx was written by a training run with another key; resume with "
                "the same key (the steps' draws are fold_in(key, step)), or use another checkpoint_dir."
            )
        return state, np.asarray(trace, np.float32)
    raise RunError(
        f"None of the {len(steps)} checkpoint(s) in {directory} can be read ({'; '.join(problems)}), so training "
        "cannot continue from them; start afresh in another folder (or remove the checkpoints)."
    )
