"""Compiled programs kept on disk between processes: JAX's persistent compilation cache.

Most of the wait for a first result is XLA compiling the sampler or the fit (seconds), and the
same model with the same settings compiles to the same program in every process. With the cache
on, a second process loads the program instead of compiling it. The ``elbox`` command turns it
on for itself; a Python user turns it on with :func:`enable_compilation_cache` (elbox does not
change JAX's settings behind a user's back).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

ENVIRONMENT_VARIABLE = "ELBOX_COMPILATION_CACHE"


def default_folder() -> Path:
    """``$XDG_CACHE_HOME/elbox/jax``, or ``~/.cache/elbox/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "elbox" / "jax"


def enable_compilation_cache(folder: str | os.PathLike | None = None) -> Path | None:
    """Keep every program JAX compiles in ``folder`` and load it from there next time.

    Args:
        folder: where; default ``$ELBOX_COMPILATION_CACHE`` if set, else :func:`default_folder`.
            ``ELBOX_COMPILATION_CACHE=off`` turns the cache off (when ``folder`` is not given).

    Returns:
        The folder in use, or None when the cache is off, a cache folder was already set in
        JAX's configuration (that one is kept), or the folder cannot be created (with a warning).

    Example:
        >>> elbox.enable_compilation_cache()   # before the first elbox.sample or elbox.fit
    """
    import jax

    if folder is None:
        setting = os.environ.get(ENVIRONMENT_VARIABLE, "")
        if setting.lower() in ("off", "0", "false", "no"):
            return None
        if jax.config.jax_compilation_cache_dir:
            return None
        folder = setting or default_folder()
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        warnings.warn(f"compiled programs will not be kept: cannot create {folder} ({err}); set "
                      f"{ENVIRONMENT_VARIABLE} to a writable folder or to off.", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Keep every program, however quick to compile: a first result waits for dozens of small ones.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
