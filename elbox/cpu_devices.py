"""Chains on all of the host's cores: JAX's CPU devices.

On a CPU, JAX shows one device unless told otherwise, and a device runs one program at a time,
mostly on one core; vectorised chains also step in lock-step, each waiting for the longest
trajectory of the batch. :func:`elbox.sample` splits its chains over JAX's devices (one
``shard_map`` program, each device running its own chains), so with several CPU devices the
chains of a run use several cores and wait only for their own trajectories: NUTS on a 5000 x 25
logistic regression (4 chains) runs about 3x faster with four CPU devices than with one, on 2
cores.

When elbox is imported it therefore asks JAX for ``max(cores, 4)`` CPU devices (4: the default
number of chains), unless

* the user has chosen: ``XLA_FLAGS`` sets ``--xla_force_host_platform_device_count``, JAX's
  ``jax_num_cpu_devices`` is set, or ``ELBOX_CPU_DEVICES`` is (a number, or ``off`` for JAX's
  default of one);
* or JAX has already run something in this process, after which its devices are fixed (import
  elbox first, or call :func:`use_cpu_devices` right after ``import jax``).

Programs that run on one device (a VI fit, the user's own) are unaffected: they run on the
first device as before; so does training a diffusion model, unless asked to split its batches
(``devices=N``: on a CPU, splitting them over CPU devices measured no faster, see
:func:`elbox.diffusion.train.training_devices`). The devices are JAX's CPU devices only;
on a GPU or TPU the sampler splits chains over those.
"""

from __future__ import annotations

import os
import warnings

ENVIRONMENT_VARIABLE = "ELBOX_CPU_DEVICES"
MIN_CPU_DEVICES = 4  # the default number of chains: one device each


def default_count() -> int:
    """``max(cores this process may use, 4)``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(cores, MIN_CPU_DEVICES)


def use_cpu_devices(count: int | None = None) -> int | None:
    """Ask JAX for ``count`` CPU devices (default :func:`default_count`).

    Returns:
        The count asked for, or None when nothing was changed: ``ELBOX_CPU_DEVICES=off``, the
        user already chose a count (``XLA_FLAGS`` or ``jax_num_cpu_devices``), or JAX has
        already run something in this process.
    """
    import jax

    setting = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if count is None:
        if setting in ("off", "0", "1", "false", "no"):
            return None
        if setting:
            if not setting.isdigit():
                warnings.warn(f"{ENVIRONMENT_VARIABLE}={setting!r} is not a number of CPU devices (or off); "
                              "JAX's devices are left as they are.", stacklevel=2)
                return None
            count = int(setting)
        elif ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
              or jax.config.jax_num_cpu_devices != -1):
            return None
        else:
            count = default_count()
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:  # JAX has run something already: its devices are fixed for this process
        return None
    return int(count)
