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


def log_mean_exp(log_values) -> Estimate:
    """log((1/n) Σ exp(l_i)), the log of an average of positive unbiased estimates (importance
    weights, AIS weights, SMC normalisers), with its delta-method standard error

        se = sd(w_i / w̄) / sqrt(n),  w_i = exp(l_i)

    (the relative standard error of the average). Heavy-tailed weights make this too small:
    check an effective sample size or Pareto k̂ beside it. NaN for fewer than two values."""
    log_values = np.asarray(log_values, dtype=np.float64).ravel()
    top = np.max(log_values)
    if not np.isfinite(top):
        return Estimate(float(top), math.nan)
    ratios = np.exp(log_values - top)
    mean = ratios.mean()
    value = float(top + np.log(mean))
    if log_values.size < 2:
        return Estimate(value, math.nan)
    return Estimate(value, float(np.std(ratios / mean, ddof=1) / np.sqrt(log_values.size)))


def log_mean_of_log_normal(log_values) -> Estimate:
    """log E[Ẑ] from independent log Ẑ_r (r = 1..R) that are normal, N(μ, σ²):

        log E[Ẑ] = μ + σ²/2,   estimated by  l̄ + s²/2,
        se² = s²/R + s⁴/(2(R − 1))   (the variances of l̄ and of s²/2),

    l̄ and s² the mean and variance of the log Ẑ_r. SMC's log Ẑ is asymptotically normal
    (Bérard, Del Moral & Doucet 2014), so with a few runs this is better behaved than
    :func:`log_mean_exp`, whose average of a handful of log-normal Ẑ_r is usually low with a
    standard error that is too small once σ is a few tenths. NaN for fewer than two values."""
    log_values = np.asarray(log_values, dtype=np.float64).ravel()
    mean = float(np.mean(log_values))
    if log_values.size < 2 or not np.isfinite(mean):
        return Estimate(mean, math.nan)
    variance = float(np.var(log_values, ddof=1))
    runs = log_values.size
    return Estimate(mean + 0.5 * variance, math.sqrt(variance / runs + variance**2 / (2 * (runs - 1))))


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
