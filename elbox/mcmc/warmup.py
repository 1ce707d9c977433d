"""Stan's windowed warm-up schedule, shared by every sampler's tuner (it knows no kernel).

Warm-up is cut into a fast initial buffer (75 steps), slow windows that double in length (25,
50, 100, ...; the last one takes what is left) in which draws enter a variance estimate, and a
fast terminal buffer (50 steps). A tuner re-estimates its preconditioner at each window's end
and adapts its step size or scale throughout.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class WarmupSchedule(NamedTuple):
    """Per-step flags, arrays of length ``warmup``.

    Attributes:
        in_slow_window: draws at these steps enter the variance estimate.
        window_end: at these steps d is updated from the window and the recursion restarts.
    """

    in_slow_window: np.ndarray
    window_end: np.ndarray


def warmup_schedule(
    warmup: int, initial_buffer: int = 75, terminal_buffer: int = 50, first_window: int = 25
) -> WarmupSchedule:
    """Stan's windowed schedule; short warm-ups scale the buffers to 15% and 10%."""
    in_slow = np.zeros(warmup, dtype=bool)
    window_end = np.zeros(warmup, dtype=bool)
    if warmup < 20:  # too short to estimate variances: adapt the scale only
        return WarmupSchedule(in_slow, window_end)
    if initial_buffer + first_window + terminal_buffer > warmup:
        initial_buffer = int(0.15 * warmup)
        terminal_buffer = int(0.1 * warmup)
        first_window = warmup - initial_buffer - terminal_buffer
    slow_end = warmup - terminal_buffer
    start, size = initial_buffer, first_window
    while start < slow_end:
        end = start + size
        # A window that would leave less than twice its size before the terminal buffer
        # takes the rest instead.
        if end + 2 * size > slow_end:
            end = slow_end
        in_slow[start:end] = True
        window_end[end - 1] = True
        start, size = end, 2 * size
    return WarmupSchedule(in_slow, window_end)
