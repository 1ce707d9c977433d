"""The evidence lower bound of a diffusion model, its three terms, and the training losses.

With x0 the observation and x1..xT latents, log p(x0) >= ELBO, and the bound on -log p(x0), in
nats (Sohl-Dickstein et al. 2015; Ho, Jain & Abbeel 2020, eq. 5), is

    -ELBO = L_0 + sum_{t=2..T} L_{t-1} + L_T,
    L_0     = -E_{q(x1|x0)}[log p_theta(x0 | x1)]                                  reconstruction
    L_{t-1} =  E_{q(x_t|x0)}[KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))]   denoising matching
    L_T     =  KL(q(x_T | x0) || N(0, I))                                          prior matching.

Every term is a function of one example x0 (any shape; sums run over all its dimensions) and is
batched by the caller with ``jax.vmap``. The model is a denoiser ``eps_fn(x_t, t) -> (eps_hat, v)``
for one example: ``eps_hat`` the predicted noise (x_t's shape), ``v`` the variance output for
``variance="learned_range"`` (x_t's shape) or ``None``. Given x_t the KL is in closed form; the
expectation over x_t is estimated with one draw x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t)
eps, eps ~ N(0, I), per step.

Indexing of the training losses: ``term(t)`` is L_0 at t = 1 and L_{t-1} at t >= 2, so
-ELBO = sum_{t=1..T} term(t) + L_T.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from elbox.diffusion.bound import BoundEstimate, bits_per_dim, bound_estimates, per_example_in_batches
from elbox.diffusion.decoders import Gaussian
from elbox.diffusion.process import coefficient, gaussian_kl, p_log_variance, p_mean_variance, q_sample
from elbox.errors import SettingsError

__all__ = [
    "ESTIMATOR_ALL_STEPS", "ESTIMATOR_SAMPLED_STEP", "EpsFn",
    "BoundEstimate", "ImportanceHistory", "LossInfo", "bits_per_dim", "bound_estimate", "bound_estimates",
    "denoising_term", "exact_terms", "importance_probabilities", "init_importance_history", "loss_hybrid",
    "loss_simple", "loss_vlb_importance", "loss_vlb_uniform", "path_log_weight", "path_log_weights",
    "per_example_in_batches", "prior_term", "reconstruction_term", "term_given_noise", "update_importance_history",
]

EpsFn = Callable  # (x_t, t) -> (eps_hat, v or None), for one example

ESTIMATOR_ALL_STEPS = "sum over all T steps"
ESTIMATOR_SAMPLED_STEP = "T × one uniformly sampled t"


def _normal_like(key, x0):
    return jax.random.normal(key, jnp.shape(x0), jnp.result_type(x0))


def prior_term(schedule, x0):
    """L_T = KL(q(x_T | x0) || N(0, I)) in closed form, in nats summed over dimensions:

        1/2 sum_i [alpha_bar_T (x0_i^2 - 1) - log(1 - alpha_bar_T)],

    the Gaussian KL 1/2 [v + m^2 - 1 - log v] at m = sqrt(alpha_bar_T) x0, v = 1 - alpha_bar_T,
    written so that nothing cancels when alpha_bar_T is small. It has no parameters to learn.
    """
    alpha_bar = coefficient(schedule.alpha_bars, schedule.num_steps, x0)
    return 0.5 * jnp.sum(alpha_bar * (jnp.square(x0) - 1.0) - jnp.log1p(-alpha_bar))


def _kl_given_xt(schedule, t, eps_hat, v, noise, variance):
    """KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t)) summed over dimensions, for
    x_t = q_sample(x0, t, noise). Both means are sqrt(1/alpha_t) x_t minus
    beta_t / (sqrt(alpha_t) sqrt(1 - alpha_bar_t)) times a noise (the true one for q, eps_hat
    for p_theta), so their difference is formed directly, without cancellation."""
    mean_gap = coefficient(schedule.reverse_mean_coef_eps, t, eps_hat) * (eps_hat - noise)
    log_var_q = coefficient(schedule.posterior_log_variance_clipped, t, eps_hat)
    log_var_p = p_log_variance(schedule, t, eps_hat, variance, v)
    return jnp.sum(gaussian_kl(mean_gap, log_var_q, jnp.zeros_like(mean_gap), log_var_p))


def _nll_given_x1(schedule, x0, x1, eps_hat, v, variance, decoder):
    """-log p_theta(x0 | x1) summed over dimensions: the decoder at the reverse model's mean and
    scale at t = 1 (scale = exp(log sigma_1^2 / 2), as DDPM does)."""
    mean, _, log_var = p_mean_variance(schedule, x1, 1, eps_hat, variance, v)
    return -jnp.sum(decoder.log_likelihood(x0, mean, 0.5 * log_var))


def term_given_noise(schedule, eps_fn, x0, t, noise, variance="beta_tilde", decoder=Gaussian(),
                     stop_gradient_mean=False):
    """term(t) for one draw x_t = q_sample(x0, t, noise): L_0's integrand -log p_theta(x0 | x1) at
    t = 1, L_{t-1}'s integrand KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t)) at t >= 2, in nats.

    One call of ``eps_fn``; ``t`` may be traced (both branches are formed, one is kept).
    ``stop_gradient_mean`` stops the gradient through eps_hat (so only the variance output
    learns from this term: improved DDPM's L_hybrid).

    Returns:
        (term, eps_hat).
    """
    xt = q_sample(schedule, x0, t, noise)
    eps_hat, v = eps_fn(xt, t)
    eps_used = jax.lax.stop_gradient(eps_hat) if stop_gradient_mean else eps_hat
    kl = _kl_given_xt(schedule, t, eps_used, v, noise, variance)
    nll = _nll_given_x1(schedule, x0, xt, eps_used, v, variance, decoder)
    return jnp.where(jnp.asarray(t) == 1, nll, kl), eps_hat


def denoising_term(key, schedule, eps_fn, x0, t, variance="beta_tilde"):
    """One-draw estimate of L_{t-1} = E_{x_t ~ q(x_t | x0)}[KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))]
    for t >= 2, in nats summed over dimensions (the KL given x_t in closed form).

    Raises:
        SettingsError: a concrete t outside 2..T (the t = 1 term is :func:`reconstruction_term`).

    Example:
        >>> L = denoising_term(key, cosine_schedule(100), eps_fn, x0, 50)
    """
    if isinstance(t, (int, np.integer)) and not 2 <= t <= schedule.num_steps:
        raise SettingsError(
            f"denoising_term needs 2 <= t <= T = {schedule.num_steps}; got t = {t}. "
            "The t = 1 term is reconstruction_term."
        )
    noise = _normal_like(key, x0)
    xt = q_sample(schedule, x0, t, noise)
    eps_hat, v = eps_fn(xt, t)
    return _kl_given_xt(schedule, t, eps_hat, v, noise, variance)


def reconstruction_term(key, schedule, eps_fn, x0, decoder=Gaussian(), variance="beta_tilde"):
    """One-draw estimate of L_0 = -E_{x1 ~ q(x1 | x0)}[log p_theta(x0 | x1)], in nats summed over
    dimensions. The decoder's mean is the reverse model's mean at t = 1,
    mu_theta(x1, 1) = (x1 - sqrt(1 - alpha_1) eps_hat) / sqrt(alpha_1) (the predicted x0), and its
    log scale half the reverse log variance at t = 1 (DDPM, section 3.3).
    """
    noise = _normal_like(key, x0)
    x1 = q_sample(schedule, x0, 1, noise)
    eps_hat, v = eps_fn(x1, 1)
    return _nll_given_x1(schedule, x0, x1, eps_hat, v, variance, decoder)


def exact_terms(key, schedule, eps_fn, x0, variance="beta_tilde", decoder=Gaussian()):
    """All T + 1 terms of the bound for one example, one x_t draw per step (vmapped over t).

    Returns:
        dict of nats (negative log-likelihood convention; the bound on -log p(x0) is ``total``):
        ``reconstruction`` (L_0), ``denoising_per_step`` (L_1..L_{T-1}, for t = 2..T, shape
        (T - 1,)), ``prior`` (L_T, in closed form) and ``total``.
    """
    T = schedule.num_steps
    keys = jax.random.split(key, T)
    steps = jnp.arange(1, T + 1)

    def one_step(step_key, t):
        return term_given_noise(schedule, eps_fn, x0, t, _normal_like(step_key, x0), variance, decoder)[0]

    terms = jax.vmap(one_step)(keys, steps)
    prior = prior_term(schedule, x0)
    return {
        "reconstruction": terms[0],
        "denoising_per_step": terms[1:],
        "prior": prior,
        "total": jnp.sum(terms) + prior,
    }


def _uniform_step(key, T):
    return jax.random.randint(key, (), 1, T + 1)


class LossInfo(NamedTuple):
    """What a training loss drew, per example.

    Attributes:
        t: the step drawn, in 1..T.
        term: the unweighted term(t) in nats (L_0 at t = 1, L_{t-1} at t >= 2), the value to record
            in an :class:`ImportanceHistory`; for ``loss_simple`` the squared error.
        weight: the factor on ``term`` in the loss (T for uniform t, 1 / p_t for importance
            sampling, 1 for ``loss_simple``).
    """

    t: jax.Array
    term: jax.Array
    weight: jax.Array


def loss_vlb_uniform(key, schedule, eps_fn, x0, variance="beta_tilde", decoder=Gaussian()):
    """Unbiased one-draw estimate of the negative ELBO, -ELBO = sum_t term(t) + L_T:

        loss = T term(t) + L_T,   t ~ U{1..T},

    (improved DDPM's L_vlb, here in nats summed over dimensions and including the constant L_T
    so that its expectation is the bound itself).

    Returns:
        (loss, LossInfo).
    """
    key_t, key_noise = jax.random.split(key)
    T = schedule.num_steps
    t = _uniform_step(key_t, T)
    term, _ = term_given_noise(schedule, eps_fn, x0, t, _normal_like(key_noise, x0), variance, decoder)
    weight = jnp.asarray(T, term.dtype)
    return weight * term + prior_term(schedule, x0), LossInfo(t, term, weight)


class ImportanceHistory(NamedTuple):
    """The last ``history_length`` values of term(t) per step, for importance-sampled t.

    Attributes:
        values: shape (T, history_length); row t - 1 holds step t's most recent terms, oldest
            first once full.
        counts: shape (T,), how many values row t - 1 holds (at most history_length).
    """

    values: jax.Array
    counts: jax.Array


def init_importance_history(T, history_length=10, dtype=jnp.float32) -> ImportanceHistory:
    """An empty history (improved DDPM keeps 10 values per step)."""
    return ImportanceHistory(jnp.zeros((T, history_length), dtype), jnp.zeros((T,), jnp.int32))


def update_importance_history(history: ImportanceHistory, t, terms) -> ImportanceHistory:
    """The history after recording ``terms[i]`` for step ``t[i]``, in order (a pure function).

    A row that is not full gets the value in its next free slot; a full row drops its oldest
    value and appends the new one (improved DDPM's ``LossSecondMomentResampler``).

    Args:
        history: the current :class:`ImportanceHistory`.
        t: steps, shape (n,), in 1..T.
        terms: the unweighted term(t) values, shape (n,) (``LossInfo.term``; stop their
            gradient: the history is data).
    """
    length = history.values.shape[1]
    T = history.values.shape[0]
    t = jnp.asarray(t)
    terms = jax.lax.stop_gradient(jnp.asarray(terms, history.values.dtype))
    rows = t - 1
    # Vectorised, yet the same as appending the values one by one in order: value i is the
    # rank_i-th new value of its row, and each row keeps the last `length` of old + new.
    order = jnp.arange(t.shape[0])
    rank = jnp.sum((rows[:, None] == rows[None, :]) & (order[:, None] > order[None, :]), axis=1)
    new_count = jnp.zeros((T,), jnp.int32).at[rows].add(1)
    drop = jnp.maximum(history.counts + new_count - length, 0)  # oldest entries pushed out, per row
    slots = jnp.arange(length)
    source = slots[None, :] + drop[:, None]
    keep_old = source < history.counts[:, None]
    old = jnp.take_along_axis(history.values, jnp.minimum(source, length - 1), axis=1)
    values = jnp.where(keep_old, old, jnp.zeros_like(old))
    position = history.counts[rows] + rank - drop[rows]
    # Values older than the last `length` of their row (position < 0) are dropped.
    values = values.at[rows, jnp.where(position >= 0, position, length)].set(terms, mode="drop")
    counts = jnp.minimum(history.counts + new_count, length)
    return ImportanceHistory(values, counts)


def importance_probabilities(history: ImportanceHistory, uniform_mix=0.001):
    """p_t for importance-sampled steps (Nichol & Dhariwal 2021, section 3.3):

        p_t propto sqrt(E[term(t)^2]) (the mean over the history), mixed with the uniform
        distribution as (1 - uniform_mix) p_t + uniform_mix / T so that every p_t > 0;

    uniform, 1 / T, until every step holds ``history_length`` values.
    """
    T, length = history.values.shape
    root_mean_square = jnp.sqrt(jnp.mean(jnp.square(history.values), axis=1))
    p = root_mean_square / jnp.sum(root_mean_square)
    p = (1.0 - uniform_mix) * p + uniform_mix / T
    warmed_up = jnp.all(history.counts >= length)
    return jnp.where(warmed_up, p, jnp.full_like(p, 1.0 / T))


def loss_vlb_importance(key, schedule, eps_fn, x0, history: ImportanceHistory, variance="beta_tilde",
                        decoder=Gaussian(), uniform_mix=0.001):
    """Unbiased one-draw estimate of -ELBO with t drawn from p_t (:func:`importance_probabilities`):

        loss = term(t) / p_t + L_T = (1 / (T p_t)) T term(t) + L_T,   t ~ p,

    unbiased because E_p[term(t) / p_t] = sum_t term(t); with p_t propto sqrt(E[term(t)^2]) its
    variance is lower than uniform t's (Nichol & Dhariwal 2021, eq. 18). Record
    ``(info.t, info.term)`` with :func:`update_importance_history`.

    Returns:
        (loss, LossInfo) with ``weight`` = 1 / p_t.
    """
    key_t, key_noise = jax.random.split(key)
    p = importance_probabilities(history, uniform_mix)
    t = jax.random.categorical(key_t, jnp.log(p)) + 1
    term, _ = term_given_noise(schedule, eps_fn, x0, t, _normal_like(key_noise, x0), variance, decoder)
    weight = (1.0 / p[t - 1]).astype(term.dtype)
    return weight * term + prior_term(schedule, x0), LossInfo(t, term, weight)


def loss_simple(key, schedule, eps_fn, x0):
    """DDPM's L_simple = ||eps - eps_hat(x_t, t)||^2 (summed over dimensions), t ~ U{1..T}
    (Ho et al. 2020, eq. 14): the denoising terms with their weights dropped; not a bound.

    Returns:
        (loss, LossInfo).
    """
    key_t, key_noise = jax.random.split(key)
    t = _uniform_step(key_t, schedule.num_steps)
    noise = _normal_like(key_noise, x0)
    eps_hat, _ = eps_fn(q_sample(schedule, x0, t, noise), t)
    loss = jnp.sum(jnp.square(noise - eps_hat))
    return loss, LossInfo(t, loss, jnp.ones((), loss.dtype))


def loss_hybrid(key, schedule, eps_fn, x0, variance="learned_range", decoder=Gaussian(), vlb_weight=0.001):
    """Improved DDPM's L_hybrid = L_simple + lambda L_vlb, lambda = ``vlb_weight`` (Nichol &
    Dhariwal 2021, section 3.1), one t ~ U{1..T} and one noise shared by both parts:

        loss = ||eps - eps_hat||^2 + lambda (T term(t) + L_T).

    With ``variance="learned_range"`` the vlb part sees eps_hat through a stop-gradient, so the
    mean is trained by L_simple alone and the variance by L_vlb. Units: here both parts are sums
    over dimensions and L_vlb is in nats; improved DDPM averages both over dimensions and
    measures L_vlb in bits, so its lambda = 0.001 corresponds to 0.001 / log 2 here.

    Returns:
        (loss, LossInfo) with ``term`` the vlb term(t).
    """
    key_t, key_noise = jax.random.split(key)
    T = schedule.num_steps
    t = _uniform_step(key_t, T)
    noise = _normal_like(key_noise, x0)
    term, eps_hat = term_given_noise(
        schedule, eps_fn, x0, t, noise, variance, decoder, stop_gradient_mean=(variance == "learned_range")
    )
    simple = jnp.sum(jnp.square(noise - eps_hat))
    weight = jnp.asarray(T, term.dtype)
    loss = simple + vlb_weight * (weight * term + prior_term(schedule, x0))
    return loss, LossInfo(t, term, weight)


def path_log_weight(key, schedule, eps_fn, x0, variance="beta_tilde", decoder=Gaussian()):
    """log p_theta(x0, x_{1:T}) - log q(x_{1:T} | x0) for one path drawn from q, in nats.

    The path is drawn from the top, x_T ~ q(x_T | x0), then x_{t-1} ~ q(x_{t-1} | x_t, x0) for
    t = T..2, carried as the standardised noise e_t = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t):
    e_{t-1} = sqrt(1 - c_t) e_t + sqrt(c_t) xi with c_t = beta_t / (1 - alpha_bar_t). With
    x_{t-1} = mu_tilde + sqrt(beta_tilde_t) xi and the model's mean mu_tilde + delta,
    delta = coef_eps (e_t - eps_hat), each step adds

        log N(x_{t-1}; mu_tilde + delta, sigma_t^2) - log N(x_{t-1}; mu_tilde, beta_tilde_t)
      = sum_i [1/2 log(beta_tilde_t / sigma_t^2) - (sqrt(beta_tilde_t) xi_i - delta_i)^2 / (2 sigma_t^2) + xi_i^2 / 2],

    whose mean over xi is minus the step's KL; with log N(x_T; 0, I) - log q(x_T | x0) and the
    decoder's log p_theta(x0 | x1), its mean is the ELBO. log (1/K) sum_k exp(w_k) over K paths is
    the importance-weighted bound (Burda, Grosse & Salakhutdinov 2016), non-decreasing in K.
    """
    T = schedule.num_steps
    dtype = jnp.result_type(x0)
    key_top, key_steps = jax.random.split(key)
    e_T = _normal_like(key_top, x0)
    x_T = q_sample(schedule, x0, T, e_T)
    log_prior_ratio = 0.5 * jnp.sum(jnp.square(e_T) - jnp.square(x_T)) + x0.size * 0.5 * jnp.log(
        coefficient(schedule.one_minus_alpha_bars, T, x0))
    c = schedule.betas / schedule.one_minus_alpha_bars

    def body(e_t, inputs):
        t, step_key = inputs
        eps_hat, v = eps_fn(q_sample(schedule, x0, t, e_t), t)
        delta = coefficient(schedule.reverse_mean_coef_eps, t, x0) * (e_t - eps_hat)
        log_var_q = coefficient(schedule.posterior_log_variance_clipped, t, x0)
        log_var_p = p_log_variance(schedule, t, x0, variance, v)
        xi = _normal_like(step_key, x0)
        ratio = jnp.sum(0.5 * (log_var_q - log_var_p) - 0.5 * jnp.square(jnp.exp(0.5 * log_var_q) * xi - delta)
                        * jnp.exp(-log_var_p) + 0.5 * jnp.square(xi))
        c_t = coefficient(c, t, x0)
        return jnp.sqrt(1.0 - c_t) * e_t + jnp.sqrt(c_t) * xi, ratio

    steps = jnp.arange(T, 1, -1)
    e_1, ratios = jax.lax.scan(body, e_T, (steps, jax.random.split(key_steps, T - 1)))
    x_1 = q_sample(schedule, x0, 1, e_1)
    eps_hat, v = eps_fn(x_1, 1)
    log_likelihood = -_nll_given_x1(schedule, x0, x_1, eps_hat, v, variance, decoder)
    return (log_likelihood + jnp.sum(ratios) + log_prior_ratio).astype(dtype)


@eqx.filter_jit
def path_log_weights(eps_fn, schedule, keys, data, num_paths: int, variance, decoder):
    """:func:`path_log_weight` for ``num_paths`` paths of every example, shape (n, num_paths)."""
    def one(key, x0):
        return jax.vmap(lambda k: path_log_weight(k, schedule, eps_fn, x0, variance, decoder))(
            jax.random.split(key, num_paths))

    return jax.vmap(one)(keys, data)


@eqx.filter_jit
def _bound_batch(eps_fn, schedule, keys, data, variance, decoder, num_t_samples):
    """Every example's terms for :func:`bound_estimate` (one compiled function per eps_fn
    structure, shapes and settings: an :class:`~elbox.diffusion.networks.EpsFn` of new weights
    reuses it)."""
    T = schedule.num_steps
    if num_t_samples is None:

        def per_example(example_key, x0):
            return exact_terms(example_key, schedule, eps_fn, x0, variance, decoder)

    else:

        def per_example(example_key, x0):
            def one_draw(draw_key):
                key_t, key_noise = jax.random.split(draw_key)
                t = _uniform_step(key_t, T)
                term, _ = term_given_noise(schedule, eps_fn, x0, t, _normal_like(key_noise, x0), variance, decoder)
                return t, term

            t, terms = jax.vmap(one_draw)(jax.random.split(example_key, num_t_samples))
            prior = prior_term(schedule, x0)
            return {"t": t, "terms": terms, "prior": prior, "total": T * jnp.mean(terms) + prior}

    return jax.vmap(per_example)(keys, data)


def bound_estimate(key, schedule, eps_fn, data, variance="beta_tilde", decoder=Gaussian(), num_t_samples=None,
                   batch_size=256):
    """The negative ELBO of ``data`` (examples along axis 0), in nats and bits per dimension.

    * ``num_t_samples=None``: every example's bound is the sum of all T + 1 terms
      (:func:`exact_terms`, one x_t draw per step).
    * ``num_t_samples=K``: every example's bound is L_T + (1/K) sum_k T term(t_k),
      t_k ~ U{1..T}, unbiased for the same quantity at K / T of the cost.

    The standard errors are across examples: the spread of the per-example values includes the
    randomness of x_t (and of t). Examples are processed ``batch_size`` at a time with one
    compiled function (compiled again for a last, smaller batch, and kept between calls: a new
    network of the same shapes through :func:`~elbox.diffusion.networks.as_eps_fn` does not
    compile again); example i uses the i-th key of
    ``jax.random.split(key, n)``, so the answer does not depend on ``batch_size``.

    Returns:
        :class:`BoundEstimate`.

    Example:
        >>> result = bound_estimate(key, cosine_schedule(1000), eps_fn, data, decoder=DiscretizedGaussian())
        >>> result.bits_per_dim
        Estimate(value=..., stderr=...)
    """
    data = jnp.asarray(data)
    n = data.shape[0]
    num_dims = int(np.prod(data.shape[1:]))
    T = schedule.num_steps
    out = per_example_in_batches(
        lambda keys, rows: _bound_batch(eps_fn, schedule, keys, rows, variance, decoder, num_t_samples),
        key, data, batch_size,
    )

    nats, nats_per_dim, bits = bound_estimates(out["total"], num_dims)
    prior = float(out["prior"].mean())
    if num_t_samples is None:
        reconstruction = float(out["reconstruction"].mean())
        per_step = out["denoising_per_step"].mean(axis=0)
        denoising = float(out["denoising_per_step"].sum(axis=1).mean())
        estimator = ESTIMATOR_ALL_STEPS
    else:
        t, terms = out["t"].astype(np.int64), out["terms"]
        # Unbiased shares of the sampled estimate: T term(t) 1[t = 1] and T term(t) 1[t >= 2].
        reconstruction = float(np.mean(T * terms * (t == 1)))
        denoising = float(np.mean(T * terms * (t >= 2)))
        sums = np.bincount(t.ravel() - 1, weights=terms.ravel(), minlength=T)
        counts = np.bincount(t.ravel() - 1, minlength=T)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_step = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)[1:]
        estimator = ESTIMATOR_SAMPLED_STEP
    return BoundEstimate(
        nats=nats,
        nats_per_dim=nats_per_dim,
        bits_per_dim=bits,
        reconstruction=reconstruction,
        denoising=denoising,
        prior=prior,
        denoising_per_step=per_step,
        estimator=estimator,
        num_examples=n,
        num_dims=num_dims,
        num_t_samples=num_t_samples,
        per_example=out["total"],
    )
