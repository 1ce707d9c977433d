"""Running a step function for many steps: compiled chunks of ``lax.scan``, the host between them.

The key of step t is ``fold_in(key, t)`` with t the global step index, so the draws do not
depend on how the steps are cut into chunks or whether a progress bar is shown. The last chunk
is padded with masked steps so that every chunk has the same length and compiles once.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


class ChunkedRun:
    """Outputs of a chunked run, stacked along the step axis, with host timings."""

    def __init__(self, carry, outputs, compile_seconds: float, run_seconds: float):
        self.carry = carry
        self.outputs = outputs
        self.compile_seconds = compile_seconds
        self.run_seconds = run_seconds


def run_chunked(
    step_fn: Callable[[Any, jax.Array, jax.Array], tuple[Any, Any]],
    carry: Any,
    key: jax.Array,
    num_steps: int,
    chunk_size: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
    keep_outputs: bool = True,
) -> ChunkedRun:
    """Run ``carry, out = step_fn(carry, step_key, t)`` for t = 0..num_steps-1.

    Args:
        step_fn: one step; ``t`` is the global step index (an int32 scalar).
        carry: the initial loop state (a pytree of arrays).
        key: the run's key; step t uses ``fold_in(key, t)``.
        num_steps: how many steps.
        chunk_size: steps per compiled call (default: all of them).
        on_chunk: called on the host after each chunk with the number of steps it advanced.
        keep_outputs: stack the per-step outputs and return them as NumPy arrays.

    Returns:
        the final carry, the outputs (leading axis ``num_steps``) and the time spent compiling
        and running.
    """
    if num_steps == 0:
        return ChunkedRun(carry, None, 0.0, 0.0)
    chunk_size = num_steps if chunk_size is None else max(1, min(chunk_size, num_steps))
    num_chunks = math.ceil(num_steps / chunk_size)

    def run_chunk(carry, start):
        def body(carry, offset):
            t = start + offset
            new_carry, out = step_fn(carry, jax.random.fold_in(key, t), t)
            active = t < num_steps
            new_carry = jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new_carry, carry)
            return new_carry, (out if keep_outputs else None)

        return jax.lax.scan(body, carry, jnp.arange(chunk_size, dtype=jnp.int32))

    start_compile = time.perf_counter()
    compiled = jax.jit(run_chunk, donate_argnums=()).lower(carry, jnp.int32(0)).compile()
    compile_seconds = time.perf_counter() - start_compile

    outputs = []
    run_seconds = 0.0
    for chunk in range(num_chunks):
        start = chunk * chunk_size
        tic = time.perf_counter()
        carry, out = compiled(carry, jnp.int32(start))
        jax.block_until_ready(carry)
        if keep_outputs:
            out = jax.tree_util.tree_map(np.asarray, out)
        run_seconds += time.perf_counter() - tic
        if keep_outputs:
            outputs.append(out)
        if on_chunk is not None:
            on_chunk(min(chunk_size, num_steps - start))

    stacked = None
    if keep_outputs:
        stacked = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0)[:num_steps], *outputs)
    return ChunkedRun(carry, stacked, compile_seconds, run_seconds)
