"""Progress on the host between compiled chunks: a bar on a terminal, a line per phase in a log.

With ``progress=True`` the output follows where stderr goes: a terminal (or a notebook) gets a
tqdm bar; a file or a pipe gets one line per finished phase (no carriage-return updates filling
a log). A callback ``(phase, steps_done, steps_total)`` is called after every chunk instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def _interactive() -> bool:
    """Whether stderr is a terminal, or elbox runs inside a notebook kernel (tqdm draws a widget there)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """Counts steps across phases (warm-up, sampling, fitting).

    Args:
        progress: ``True`` for progress on stderr (a tqdm bar on a terminal, one line per
            phase otherwise), ``False`` for none, or a callback ``(phase, steps_done,
            steps_total)`` called after every chunk.
        total: steps in all phases together, or None where it is not known in advance.
        description: the bar's label.
    """

    def __init__(self, progress: bool | Callable[[str, int, int | None], None], total: int | None,
                 description: str):
        self.total = total
        self.done = 0
        self.current_phase = ""
        self.callback = progress if callable(progress) else None
        self.bar = None
        self.log_lines = progress is True and not _interactive()
        self._phase_start = (0, time.perf_counter())
        self._postfix: dict = {}
        if progress is True and not self.log_lines:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=description, unit="step", leave=False, dynamic_ncols=True)
        self.description = description

    @property
    def enabled(self) -> bool:
        """Whether something moves after every chunk (a bar or a callback), so chunks should be short."""
        return self.bar is not None or self.callback is not None

    def phase(self, name: str):
        self._log_phase()
        self.current_phase = name
        self._phase_start = (self.done, time.perf_counter())
        if self.bar is not None:
            self.bar.set_description(f"{self.description} [{name}]")

    def update(self, steps: int, **postfix):
        self.done += steps
        self._postfix = postfix
        if self.bar is not None:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix(postfix)
        if self.callback is not None:
            self.callback(self.current_phase, self.done, self.total)

    def resume_at(self, done: int):
        """Start counting at ``done`` steps (a resumed run): the bar shows them, a log line does not."""
        self.update(done)
        self._phase_start = (self.done, time.perf_counter())

    def _log_phase(self):
        """One line for the phase that just ended (logs only)."""
        start, tic = self._phase_start
        steps = self.done - start
        if not self.log_lines or not self.current_phase or steps == 0:
            return
        extra = "".join(f", {k} {v}" for k, v in self._postfix.items())
        done = self.done if self.total is None else f"{self.done}/{self.total}"
        print(f"{self.description}: {self.current_phase} {steps} steps in {time.perf_counter() - tic:.1f} s"
              f" ({done}{extra})", file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self._log_phase()
        if self.bar is not None:
            self.bar.close()
        return False
