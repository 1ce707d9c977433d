"""Progress from inside the compiled annealing loops: every stage of SMC and every temperature of
AIS calls back to the host (``jax.debug.callback``), which moves a :class:`elbox.progress.ProgressBar`.

The compiled programs are kept with the model and reused, so the callback they hold is this
module's :func:`_deliver`, which looks up the bar of the estimate now running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import jax

from elbox.progress import ProgressBar

STAGES, FORWARD, REVERSE = range(3)
PHASE_NAMES = ("stages", "forward", "reverse")

_sink: Callable[[int, int, float], None] | None = None


def report(phase: int, beta) -> None:
    """Inside a compiled loop: one stage of ``phase`` done, at temperature ``beta``."""
    # Ordered: AIS's forward and reverse loops report in program order, not interleaved.
    jax.debug.callback(_deliver, phase, beta, ordered=True)


def _deliver(phase, beta) -> None:
    if _sink is not None:
        _sink(int(phase), float(beta))


@contextlib.contextmanager
def shown(progress, total: int | None, description: str):
    """Show the stages reported while the block runs: ``progress`` as for
    :class:`~elbox.progress.ProgressBar` (``True``, ``False`` or a callback)."""
    global _sink
    with ProgressBar(progress, total=total, description=description) as bar:

        def advance(phase: int, beta: float) -> None:
            if bar.current_phase != PHASE_NAMES[phase]:
                bar.phase(PHASE_NAMES[phase])
            bar.update(1, beta=f"{beta:.3g}")

        _sink = advance if progress else None
        try:
            yield bar
        finally:
            _sink = None
