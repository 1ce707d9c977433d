"""What the test modules share: the z-threshold of the statistical tests and common fixtures.

Statistical tests compare |estimate - truth| / (Monte Carlo standard error) with ``Z``: under
the truth a two-sided excursion beyond 4 standard errors has probability about 6e-5, so a fixed
key fails by chance essentially never, and a biased estimator fails as soon as its bias exceeds
a few standard errors.

Test modules import it with ``from conftest import Z`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import NamedTuple

import jax
import pytest

Z = 4.0


class CliRun(NamedTuple):
    """What one call of the ``elbox`` command returned and printed."""

    status: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys) -> Callable[..., CliRun]:
    """Run ``elbox ARGS...`` in this process: ``run_cli("sample", "normal_normal", ...)``.

    Returns ``CliRun(status, out, err)``. argparse's own usage errors end in ``SystemExit``; its
    code is returned as the status, as the shell would see it. Output printed before the call
    is discarded, so ``out`` and ``err`` hold this call's output only.
    """
    from elbox.cli import main

    def run(*argv: str) -> CliRun:
        capsys.readouterr()
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return CliRun(status, captured.out, captured.err)

    return run


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """After each test module, drop the programs JAX compiled for it.

    JAX keeps every compiled program for the life of the process, and on the CPU each one holds
    several memory maps. The whole suite in one process compiles thousands of programs, enough
    to reach Linux's limit on maps per process (``vm.max_map_count``, 65,530 by default), where
    XLA aborts the process in the middle of a compilation. Clearing JAX's caches between modules
    keeps the count at what one module needs.
    """
    yield
    jax.clear_caches()
    gc.collect()
