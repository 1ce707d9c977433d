"""Closed forms of the forward process and the Gaussian reverse model.

For one example x0 (any shape) and one step t in 1..T (an integer, possibly traced); batch
with ``jax.vmap``. ``schedule`` is a :class:`~elbox.diffusion.schedules.Schedule`, float64 NumPy
or already cast; each coefficient is cast to the dtype of the data it multiplies, so the dtype
of every result follows the input.

    q(x_t | x0)            = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I)
    q(x_{t-1} | x_t, x0)   = N(mu_tilde_t, beta_tilde_t I),
        mu_tilde_t = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) x0
                     + (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t) x_t
        beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
    p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I),
        mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t)

(Ho, Jain & Abbeel 2020, eqs. 4, 6, 7, 11; Nichol & Dhariwal 2021, eq. 15 for the learned
variance.)
"""

from __future__ import annotations

import jax.numpy as jnp

from elbox.errors import SettingsError

VARIANCES = ("beta", "beta_tilde", "learned_range")


def coefficient(values, t, like):
    """Entry t - 1 of a schedule array (step t), in the dtype of ``like``."""
    return jnp.asarray(values, dtype=jnp.result_type(like))[jnp.asarray(t) - 1]


def q_sample(schedule, x0, t, noise):
    """A draw of q(x_t | x0): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, with
    ``noise`` ~ N(0, I) of x0's shape (reparameterised, so the caller owns the randomness).

    Example:
        >>> s = linear_schedule(1000)
        >>> xt = q_sample(s, x0, 500, jax.random.normal(key, x0.shape))
    """
    return (coefficient(schedule.sqrt_alpha_bars, t, x0) * x0
            + coefficient(schedule.sqrt_one_minus_alpha_bars, t, x0) * noise)


def q_mean_variance(schedule, x0, t):
    """Mean, variance and log variance of q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I).

    Returns:
        (mean, variance, log_variance), the variance and its log broadcast to x0's shape.
    """
    mean = coefficient(schedule.sqrt_alpha_bars, t, x0) * x0
    variance = jnp.broadcast_to(coefficient(schedule.one_minus_alpha_bars, t, x0), jnp.shape(x0))
    return mean, variance, jnp.log(variance)


def q_posterior(schedule, x0, xt, t):
    """Mean, variance and log variance of q(x_{t-1} | x_t, x0) = N(mu_tilde_t, beta_tilde_t I):

        mu_tilde_t = coef_x0 x0 + coef_xt x_t,
        coef_x0 = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t),
        coef_xt = (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t),
        beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).

    At t = 1 the posterior is the point mass at x0 (variance 0); the log variance returned is
    the clipped one (log beta_tilde_2 at t = 1, as in DDPM's code), finite at every t.

    Returns:
        (mean, variance, log_variance_clipped), each of x0's shape.
    """
    mean = (coefficient(schedule.posterior_mean_coef_x0, t, x0) * x0
            + coefficient(schedule.posterior_mean_coef_xt, t, xt) * xt)
    variance = jnp.broadcast_to(coefficient(schedule.posterior_variance, t, x0), jnp.shape(x0))
    log_variance = jnp.broadcast_to(coefficient(schedule.posterior_log_variance_clipped, t, x0), jnp.shape(x0))
    return mean, variance, log_variance


def predict_x0_from_eps(schedule, xt, t, eps):
    """x0 recovered from x_t and the noise in it: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

    Exact inverse of :func:`q_sample` in ``noise``; with a predicted eps_hat, the predicted x0.
    """
    return ((xt - coefficient(schedule.sqrt_one_minus_alpha_bars, t, xt) * eps)
            / coefficient(schedule.sqrt_alpha_bars, t, xt))


def gaussian_kl(mean1, logvar1, mean2, logvar2):
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), in nats:

        1/2 [logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1].

    Sum over the dimensions for the KL of diagonal Gaussians.
    """
    return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2) - 1.0)


def p_log_variance(schedule, t, like, variance: str = "beta_tilde", v=None):
    """log sigma_t^2 of the reverse model p_theta(x_{t-1} | x_t), in the dtype of ``like``.

    * ``"beta"``: sigma_t^2 = beta_t (DDPM's "fixedlarge", the variance that is optimal for
      x0 ~ N(0, I)). Used at t = 1 too, so that for N(0, I) data the model with
      eps_hat = sqrt(1 - alpha_bar_t) x_t is exactly the reverse process and the bound is tight;
      DDPM's code puts beta_tilde_2 there instead.
    * ``"beta_tilde"``: sigma_t^2 = beta_tilde_t (DDPM's "fixedsmall", optimal for x0 a point
      mass), with beta_tilde_1 replaced by beta_tilde_2 (the clipped log variance).
    * ``"learned_range"``: improved DDPM's interpolation (Nichol & Dhariwal 2021, eq. 15)
      log sigma_t^2 = w log beta_t + (1 - w) log beta_tilde_t (clipped), w = (v + 1) / 2, with
      ``v`` the network's extra output (same shape as x_t, nominally in [-1, 1]).

    Raises:
        SettingsError: an unknown ``variance``, or ``"learned_range"`` without ``v``.
    """
    log_beta = coefficient(schedule.log_betas, t, like)
    log_beta_tilde = coefficient(schedule.posterior_log_variance_clipped, t, like)
    shape = jnp.shape(like)
    if variance == "beta":
        return jnp.broadcast_to(log_beta, shape)
    if variance == "beta_tilde":
        return jnp.broadcast_to(log_beta_tilde, shape)
    if variance == "learned_range":
        if v is None:
            raise SettingsError(
                'variance="learned_range" needs the network\'s variance output v (eps_fn must return (eps_hat, v)); '
                'got v=None. Return v from eps_fn, or choose variance="beta" or "beta_tilde".'
            )
        fraction = (v + 1.0) / 2.0
        return fraction * log_beta + (1.0 - fraction) * log_beta_tilde
    raise SettingsError(f"Unknown reverse variance {variance!r}; choose one of {', '.join(VARIANCES)}.")


def p_mean_variance(schedule, xt, t, eps_hat, variance: str = "beta_tilde", v=None):
    """Mean, variance and log variance of p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I) for the
    noise prediction ``eps_hat``:

        mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t),

    which is the posterior mean mu_tilde_t(x_t, x0_hat) at x0_hat = predict_x0_from_eps(x_t,
    eps_hat) (DDPM eq. 11; no clipping of x0_hat, so this is the density the bound is about).
    The variance is chosen by ``variance`` as in :func:`p_log_variance`.

    Returns:
        (mean, variance, log_variance), each of x_t's shape.
    """
    mean = (coefficient(schedule.reverse_mean_coef_xt, t, xt) * xt
            - coefficient(schedule.reverse_mean_coef_eps, t, xt) * eps_hat)
    log_variance = p_log_variance(schedule, t, xt, variance, v)
    return mean, jnp.exp(log_variance), log_variance
