"""Running a step function for many steps: compiled chunks of ``lax.scan``, the host between them.

The key of step t of a phase is ``fold_in(phase_key, t)`` with t the step's index in the phase,
so the draws do not depend on how the steps are cut into chunks or whether a progress bar is
shown. Every chunk has the same length, and the phases (warm-up, sampling) differ only in traced
arguments, so the whole run compiles once; a phase whose length is not a multiple of the chunk
length ends with masked steps that leave the state unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# What one extra chunk costs, in steps of a small model: a host round trip and a transfer.
CHUNK_OVERHEAD_STEPS = 20
MAX_CHUNKS_PER_PHASE = 64


class PhaseRun(NamedTuple):
    """The final carry, the per-step outputs (NumPy, leading axis = steps) and the run time."""

    carry: Any
    outputs: Any
    seconds: float


def choose_chunk_size(phase_steps: list[int], min_chunks: int = 1) -> int:
    """A chunk length for phases of the given lengths.

    Minimises padded steps plus a per-chunk overhead, with at least ``min_chunks`` chunks in
    the longest phase (so that a progress bar moves).
    """
    phase_steps = [n for n in phase_steps if n > 0]
    if not phase_steps:
        return 1
    limit = max(1, math.ceil(max(phase_steps) / max(1, min_chunks)))
    candidates = {min(limit, math.ceil(n / k)) for n in phase_steps for k in range(1, MAX_CHUNKS_PER_PHASE + 1)}

    def cost(length):
        chunks = sum(math.ceil(n / length) for n in phase_steps)
        padded = sum(math.ceil(n / length) * length - n for n in phase_steps)
        return padded + CHUNK_OVERHEAD_STEPS * chunks

    return min(sorted(candidates), key=cost)


class ChunkedLoop:
    """Runs ``carry, out = step_fn(carry, step_key, t, phase_args)`` in compiled chunks.

    Args:
        step_fn: one step; ``t`` is the step's index within its phase (int32 scalar) and
            ``phase_args`` a pytree of arrays that tells phases apart (e.g. a warm-up flag).
        chunk_size: steps per compiled call.

    The first :meth:`run` compiles; ``compile_seconds`` records how long that took.
    """

    def __init__(self, step_fn: Callable, chunk_size: int):
        self.step_fn = step_fn
        self.chunk_size = int(chunk_size)
        self.compiled = None
        self.compile_seconds = 0.0

    def _chunk(self, carry, key, start, num_steps, phase_args):
        traced_outputs = []

        def body(carry, offset):
            t = start + offset

            def take_step(carry):
                new_carry, outputs = self.step_fn(carry, jax.random.fold_in(key, t), t, phase_args)
                traced_outputs.append(jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), outputs))
                return new_carry, outputs

            def skip(carry):  # a padded step past the phase's end: nothing changes
                # The outputs' shapes as take_step's trace found them (cond traces it first): tracing
                # a step again only to learn them would double the time to compile.
                out_shape = traced_outputs[-1] if traced_outputs else jax.eval_shape(take_step, carry)[1]
                return carry, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

            return jax.lax.cond(t < num_steps, take_step, skip, carry)

        return jax.lax.scan(body, carry, jnp.arange(self.chunk_size, dtype=jnp.int32))

    def run(
        self,
        carry: Any,
        key: jax.Array,
        num_steps: int,
        phase_args: Any,
        on_chunk: Callable[[int], None] | None = None,
        keep_outputs: bool = True,
        stop: Callable[[Any], bool] | None = None,
    ) -> PhaseRun:
        """Run one phase of ``num_steps`` steps from ``carry``.

        ``keep_outputs=False`` drops the per-step outputs chunk by chunk (warm-up draws),
        keeping memory bounded. ``stop(outputs_so_far)`` is asked after each chunk (with the
        kept outputs, concatenated) and ends the phase early when it returns True; it may also
        raise to abort.
        """
        if num_steps == 0:
            return PhaseRun(carry, None, 0.0)
        start_steps = jnp.int32(0)
        total = jnp.int32(num_steps)
        if self.compiled is None:
            tic = time.perf_counter()
            self.compiled = jax.jit(self._chunk).lower(carry, key, start_steps, total, phase_args).compile()
            self.compile_seconds = time.perf_counter() - tic
        outputs = []
        seconds = 0.0
        for start in range(0, num_steps, self.chunk_size):
            tic = time.perf_counter()
            carry, out = self.compiled(carry, key, jnp.int32(start), total, phase_args)
            if keep_outputs:
                outputs.append(jax.tree_util.tree_map(np.asarray, out))  # waits for the chunk
            else:
                jax.block_until_ready(carry)
            seconds += time.perf_counter() - tic
            if on_chunk is not None:
                on_chunk(min(self.chunk_size, num_steps - start))
            done = min(start + self.chunk_size, num_steps)
            if stop is not None and stop(_concatenate(outputs, done)):
                num_steps = done
                break
        if not keep_outputs:
            return PhaseRun(carry, None, seconds)
        return PhaseRun(carry, _concatenate(outputs, num_steps), seconds)


def _concatenate(outputs: list, num_steps: int):
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0)[:num_steps], *outputs)
