"""A Monte Carlo estimate with its standard error: what every bound and evidence in elbox returns."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class Estimate(NamedTuple):
    """A Monte Carlo estimate with its standard error (0 for a closed form).

    ``stderr`` is NaN when it cannot be estimated (a single draw); :meth:`as_dict` then holds
    ``None``, so the JSON stays valid.
    """

    value: float
    stderr: float

    def as_dict(self) -> dict:
        return {"value": finite_or_none(self.value), "stderr": finite_or_none(self.stderr)}


def mean_and_stderr(values) -> Estimate:
    """The mean of ``values`` and its standard error sd / sqrt(n) (NaN for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return Estimate(float(values.mean()) if values.size else math.nan, math.nan)
    return Estimate(float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size)))


def json_ready(value):
    """``value`` with every non-finite float (at any depth of dicts, lists and tuples) as ``None``."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float):
        return finite_or_none(value)
    return value


def finite_or_none(value) -> float | None:
    """``float(value)`` when finite, else ``None`` (JSON has no NaN or infinity)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
