"""Progress on the host between compiled chunks: a tqdm bar, a user callback, or nothing."""

from __future__ import annotations

from typing import Callable


class ProgressBar:
    """Counts steps across phases (warm-up, sampling, fitting).

    Args:
        progress: ``True`` for a tqdm bar on stderr, ``False`` for none, or a callback
            ``(phase, steps_done, steps_total)`` called after every chunk.
        total: steps in all phases together.
        description: the bar's label.
    """

    def __init__(self, progress: bool | Callable[[str, int, int], None], total: int, description: str):
        self.total = total
        self.done = 0
        self.current_phase = ""
        self.callback = progress if callable(progress) else None
        self.bar = None
        if progress is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=description, unit="step", leave=False, dynamic_ncols=True)
        self.description = description

    @property
    def enabled(self) -> bool:
        return self.bar is not None or self.callback is not None

    def phase(self, name: str):
        self.current_phase = name
        if self.bar is not None:
            self.bar.set_description(f"{self.description} [{name}]")

    def update(self, steps: int, **postfix):
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix(postfix)
        if self.callback is not None:
            self.callback(self.current_phase, self.done, self.total)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False
