"""Noise schedules of the forward process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

Every per-step quantity the bound needs is computed once, in float64 NumPy (alpha_bar_t is a
product of up to thousands of factors close to 1, and 1 - alpha_bar_t at small t is a small
difference), and stored in a :class:`Schedule`. Arrays are indexed by the step t = 1..T at
index t - 1. ``Schedule.cast(dtype)`` gives the same schedule as JAX arrays of ``dtype``; the
functions in :mod:`elbox.diffusion.process` also accept the float64 schedule and cast each
coefficient to the dtype of their input.

References:
    Ho, Jain & Abbeel (2020), Denoising Diffusion Probabilistic Models ("DDPM").
    Nichol & Dhariwal (2021), Improved Denoising Diffusion Probabilistic Models.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from elbox import checks
from elbox.errors import SettingsError


class Schedule(NamedTuple):
    """The per-step coefficients of a diffusion, entry t - 1 for step t = 1..T.

    Attributes:
        betas: beta_t, the variance added at step t.
        alphas: alpha_t = 1 - beta_t.
        alpha_bars: alpha_bar_t = prod_{s <= t} alpha_s, so q(x_t | x0) = N(sqrt(alpha_bar_t) x0,
            (1 - alpha_bar_t) I).
        alpha_bars_prev: alpha_bar_{t-1}, with alpha_bar_0 = 1.
        one_minus_alpha_bars: 1 - alpha_bar_t, as -expm1(sum log1p(-beta_s)) (no cancellation
            at small t).
        sqrt_alpha_bars, sqrt_one_minus_alpha_bars: their square roots (the coefficients of x0
            and of the noise in x_t).
        log_betas: log beta_t.
        posterior_variance: beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t), the
            variance of q(x_{t-1} | x_t, x0); 0 at t = 1.
        posterior_log_variance_clipped: log beta_tilde_t with beta_tilde_1 (= 0) replaced by
            beta_tilde_2, as in DDPM's code, so it is finite at every t.
        posterior_mean_coef_x0: beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t).
        posterior_mean_coef_xt: (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t); the
            posterior mean is coef_x0 x0 + coef_xt x_t.
        reverse_mean_coef_xt: 1 / sqrt(alpha_t).
        reverse_mean_coef_eps: beta_t / (sqrt(alpha_t) sqrt(1 - alpha_bar_t)); the posterior mean
            with x0 written through the noise is coef_xt x_t - coef_eps eps (DDPM eq. 11).
    """

    betas: np.ndarray
    alphas: np.ndarray
    alpha_bars: np.ndarray
    alpha_bars_prev: np.ndarray
    one_minus_alpha_bars: np.ndarray
    sqrt_alpha_bars: np.ndarray
    sqrt_one_minus_alpha_bars: np.ndarray
    log_betas: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef_x0: np.ndarray
    posterior_mean_coef_xt: np.ndarray
    reverse_mean_coef_xt: np.ndarray
    reverse_mean_coef_eps: np.ndarray

    @property
    def num_steps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas.shape[0])

    def cast(self, dtype) -> Schedule:
        """The same schedule as JAX arrays of ``dtype`` (each value rounded once from float64).

        Example:
            >>> s = cosine_schedule(100).cast(jnp.float32)
            >>> s.alpha_bars.dtype
            dtype('float32')
        """
        return Schedule(*(jnp.asarray(np.asarray(field, dtype=np.float64), dtype=dtype) for field in self))


def schedule_from_betas(betas) -> Schedule:
    """The :class:`Schedule` of a sequence beta_1..beta_T, all in float64.

    alpha_bar_t = prod_{s<=t} (1 - beta_s), computed as exp(sum log1p(-beta_s)), and
    1 - alpha_bar_t = -expm1(sum log1p(-beta_s)).

    Raises:
        SettingsError: a beta outside (0, 1), or not a one-dimensional sequence.

    Example:
        >>> s = schedule_from_betas([0.1, 0.2, 0.3])
        >>> float(s.alpha_bars[-1])  # 0.9 * 0.8 * 0.7
        0.504
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise SettingsError(f"betas must be a non-empty one-dimensional sequence; got shape {betas.shape}.")
    if not np.all((betas > 0) & (betas < 1)):
        bad = int(np.flatnonzero(~((betas > 0) & (betas < 1)))[0])
        raise SettingsError(
            f"beta_{bad + 1} = {betas[bad]!r} is outside (0, 1): q(x_t | x_(t-1)) needs 0 < beta_t < 1. "
            "Lower the betas, or use more steps T."
        )
    log_alphas = np.log1p(-betas)
    cumulative = np.cumsum(log_alphas)
    alphas = 1.0 - betas
    alpha_bars = np.exp(cumulative)
    one_minus_alpha_bars = -np.expm1(cumulative)
    alpha_bars_prev = np.concatenate([[1.0], alpha_bars[:-1]])
    one_minus_alpha_bars_prev = np.concatenate([[0.0], one_minus_alpha_bars[:-1]])
    posterior_variance = betas * one_minus_alpha_bars_prev / one_minus_alpha_bars
    # beta_tilde_1 = 0; DDPM's code uses beta_tilde_2 there so that the log is finite.
    clipped = posterior_variance.copy()
    if clipped.size > 1:
        clipped[0] = clipped[1]
    else:
        clipped[0] = betas[0]
    return Schedule(
        betas=betas,
        alphas=alphas,
        alpha_bars=alpha_bars,
        alpha_bars_prev=alpha_bars_prev,
        one_minus_alpha_bars=one_minus_alpha_bars,
        sqrt_alpha_bars=np.sqrt(alpha_bars),
        sqrt_one_minus_alpha_bars=np.sqrt(one_minus_alpha_bars),
        log_betas=np.log(betas),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(clipped),
        posterior_mean_coef_x0=betas * np.sqrt(alpha_bars_prev) / one_minus_alpha_bars,
        posterior_mean_coef_xt=one_minus_alpha_bars_prev * np.sqrt(alphas) / one_minus_alpha_bars,
        reverse_mean_coef_xt=1.0 / np.sqrt(alphas),
        reverse_mean_coef_eps=betas / (np.sqrt(alphas) * np.sqrt(one_minus_alpha_bars)),
    )


def linear_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """DDPM's linear schedule, beta_t from ``beta_start`` to ``beta_end`` in T equal steps, with
    both ends scaled by 1000 / T as improved DDPM does (``get_named_beta_schedule``).

    ``beta_start`` and ``beta_end`` are the values for T = 1000 (DDPM's 1e-4 and 0.02); the
    scaling keeps sum_t beta_t, hence alpha_bar at a given fraction t / T, nearly the same for any
    T (exactly the same to first order in beta).

    Raises:
        SettingsError: the scaled ``beta_end`` reaches 1 (with the defaults, T <= 20); use the cosine
            schedule or a smaller ``beta_end``.

    Example:
        >>> s = linear_schedule(1000)
        >>> s.betas[0], s.betas[-1]
        (0.0001, 0.02)
    """
    T = checks.count("T", T, 1)
    scale = 1000.0 / T
    if beta_end * scale >= 1:
        raise SettingsError(
            f"linear_schedule(T={T}): beta_end * 1000 / T = {beta_end * scale:g} >= 1. "
            f"Use T > {int(math.floor(1000 * beta_end))}, a smaller beta_end, or cosine_schedule."
        )
    return schedule_from_betas(np.linspace(beta_start * scale, beta_end * scale, T, dtype=np.float64))


def cosine_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17):

        alpha_bar_t = f(t) / f(0),   f(t) = cos^2( (t / T + s) / (1 + s) * pi / 2 ),
        beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, max_beta).

    ``s`` keeps beta_1 away from 0; ``max_beta`` keeps beta_T (where f(T) = 0) below 1. The stored
    alpha_bars are the products of the clipped (1 - beta_t), so they equal f(t) / f(0) wherever
    no earlier beta was clipped.

    Example:
        >>> s = cosine_schedule(1000)
        >>> bool(s.betas.max() <= 0.999)
        True
    """
    T = checks.count("T", T, 1)

    def f(t):
        return np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2

    t = np.arange(1, T + 1, dtype=np.float64)
    betas = np.minimum(1.0 - f(t) / f(t - 1), max_beta)
    return schedule_from_betas(betas)
