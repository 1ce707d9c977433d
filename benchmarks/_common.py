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


def run_worker_process(script: str, worker_args: list, timeout: float, what: str, env: dict | None = None) -> dict:
    """Run ``script --worker *worker_args`` in a fresh Python process and return the JSON result
    on its last stdout line; a failed worker raises RuntimeError naming ``what`` with its stderr."""
    command = [sys.executable, os.path.abspath(script), "--worker", *(str(a) for a in worker_args)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"worker failed on {what}:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
