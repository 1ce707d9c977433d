"""What every benchmark script shares: where it ran, which elbox it ran, and one measurement in a
fresh Python process (the scripts import this as ``_common``; run them as
``python benchmarks/bench_NAME.py``)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys


def device_description() -> str:
    import jax

    device = jax.devices()[0]
    text = f"{device.platform}: {device.device_kind}"
    if device.platform == "cpu":
        text += f" ({os.cpu_count()} cores)"
    return text


def elbox_source_hash() -> str:
    """A short hash of elbox's Python sources, to tell apart runs of different versions."""
    import elbox

    digest = hashlib.sha256()
    root = pathlib.Path(elbox.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def enable_jax_compilation_cache(folder: str) -> None:
    """Switch on JAX's persistent compilation cache in ``folder`` for this process, keeping every
    program however small or quick to compile (what ``elbox.enable_compilation_cache(folder)``
    does). Call it before anything compiles; it imports jax but no library built on it."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def cache_contents(folder: str) -> dict:
    """How many files the compilation cache ``folder`` holds and their total size in bytes."""
    files = [path for path in pathlib.Path(folder).rglob("*") if path.is_file()]
    return {"files": len(files), "bytes": sum(path.stat().st_size for path in files)}


def run_worker_process(script: str, worker_args: list, timeout: float, what: str, env: dict | None = None,
                       options: list | None = None) -> dict:
    """Run ``script --worker *worker_args *options`` in a fresh Python process and return the JSON
    result on its last stdout line; a failed worker raises RuntimeError naming ``what`` with its
    stderr."""
    command = [sys.executable, os.path.abspath(script), "--worker", *(str(a) for a in worker_args),
               *(str(a) for a in options or ())]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"worker failed on {what}:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
