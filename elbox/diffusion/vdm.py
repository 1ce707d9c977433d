"""Variational diffusion models: the continuous-time bound with a learned noise schedule.

Kingma, Salimans, Poole & Ho 2021 ("VDM"). Time runs over [0, 1]; the latent at time t is

    z_t = alpha_t x + sigma_t eps,   alpha_t^2 = sigmoid(-gamma(t)),   sigma_t^2 = sigmoid(gamma(t)),

with gamma(t) = -log SNR(t) increasing from gamma_0 to gamma_1 (a variance-preserving process).
The bound on -log p(x), in nats, has the same three terms as DDPM's:

    L_recon     = -E_{q(z_0|x)}[log p(x | z_0)]                                        reconstruction
    L_diffusion =  1/2 E_{eps, t~U(0,1)}[gamma'(t) ||eps - eps_hat(z_t; t)||^2]         denoising (T -> inf)
    L_prior     =  KL(q(z_1 | x) || N(0, I))                                           prior matching.

With T discrete steps t_i = i / T instead (the reverse model p(z_{s} | z_t) = q(z_s | z_t, x = x_hat)),
the denoising term is a sum of T Gaussian KLs,

    L_diffusion^T = sum_{i=1..T} 1/2 E_eps[expm1(gamma(t_i) - gamma(t_{i-1})) ||eps - eps_hat(z_{t_i}; t_i)||^2],

which is never below the continuous-time term and tends to it as T grows (VDM, section 4.1).

The decoder p(x | z_0) is the given decoder (a Gaussian density for continuous data, a
discretised Gaussian over the bins for data on a grid) centred at z_0 / alpha_0 with scale
sigma_0 / alpha_0 = exp(gamma_0 / 2): q(z_0 | x) read as a function of x.

Learning gamma. Its two ends gamma_0 and gamma_1 change the bound and are trained on it. Its
shape in between does not change the continuous-time bound (the denoiser sees gamma(t), not t,
so a reparameterisation of time leaves the integral unchanged), only the variance of its
Monte Carlo estimate: the shape is trained to minimise E[L_diffusion^2] (VDM, appendix I.2),
with the gradient 2 L_diffusion dL_diffusion/dshape taken through the per-example gamma(t) and
gamma'(t), so the denoiser is differentiated once. Time is drawn antithetically over a batch
(t_i = (u + i / B) mod 1, one uniform u per batch), which lowers the variance further.

Example:
    >>> model = VDM(jax.random.key(0), dim=2)
    >>> value, grads = loss_and_grad(key, *eqx.partition(model, eqx.is_inexact_array), batch, Gaussian())
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from elbox.diffusion.bound import BoundEstimate, bound_estimates, per_example_in_batches
from elbox.diffusion.decoders import Gaussian
from elbox.errors import SettingsError

# The denoiser sees the normalised log-SNR (gamma - gamma_low) / (gamma_high - gamma_low), in
# [0, 1] at the start, on the same grid as a discrete-time model with this many steps (its
# Fourier features then range from a half period over [0, 1] to a half period per 1/1000).
TIME_RESOLUTION = 1000
SCHEDULES = ("learned", "linear")
ESTIMATOR_CONTINUOUS = "continuous time, {k} stratified t per example"
ESTIMATOR_DISCRETE_ALL = "sum over all T steps"


def _inverse_softplus(y: float) -> float:
    return float(y + math.log(-math.expm1(-y)))


class LearnedSchedule(eqx.Module):
    """gamma(t) = -log SNR(t), monotone increasing on [0, 1]:

        gamma(t) = gamma_0 + (gamma_1 - gamma_0) (f(t) - f(0)) / (f(1) - f(0)),
        f(t) = a t + (1/H) sum_k c_k sigmoid(w_k (2 t - 1) + b_k),

    with a, c_k, w_k > 0 (softplus of free parameters) and gamma_1 = gamma_0 + softplus(r), so f
    and gamma increase whatever the parameters (the monotone network of VDM, appendix H). At the
    start the sigmoid part is small: gamma is close to linear in t.

    Args:
        key: a JAX PRNG key (the sigmoid units' slopes and offsets).
        gamma_0, gamma_1: the initial ends (gamma_0 < gamma_1).
        hidden: H, the number of sigmoid units.
        learn: train the schedule (``False``: gamma stays linear between the fixed ends, the
            parameters get no gradient).
        dtype: the parameters' dtype (default: JAX's default float).
    """

    gamma_0: jax.Array
    range_raw: jax.Array
    slope_raw: jax.Array
    unit_slope_raw: jax.Array
    unit_offset: jax.Array
    unit_weight_raw: jax.Array
    learn: bool = eqx.field(static=True)

    def __init__(self, key, gamma_0: float = -13.3, gamma_1: float = 5.0, hidden: int = 64, learn: bool = True,
                 dtype=None):
        if not gamma_0 < gamma_1:
            raise SettingsError(f"the schedule needs gamma_0 < gamma_1; got {gamma_0} and {gamma_1}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        key_slope, key_offset = jax.random.split(key)
        self.gamma_0 = jnp.asarray(gamma_0, dtype)
        self.range_raw = jnp.asarray(_inverse_softplus(gamma_1 - gamma_0), dtype)
        self.slope_raw = jnp.asarray(_inverse_softplus(1.0), dtype)
        self.unit_slope_raw = jax.random.normal(key_slope, (hidden,), dtype)
        self.unit_offset = jax.random.normal(key_offset, (hidden,), dtype)
        self.unit_weight_raw = jnp.full((hidden,), _inverse_softplus(0.05), dtype)
        self.learn = bool(learn)

    def _parameters(self):
        leaves = (self.gamma_0, self.range_raw, self.slope_raw, self.unit_slope_raw, self.unit_offset,
                  self.unit_weight_raw)
        return leaves if self.learn else tuple(jax.lax.stop_gradient(p) for p in leaves)

    def ends(self):
        """(gamma_0, gamma_1)."""
        gamma_0, range_raw = self._parameters()[:2]
        return gamma_0, gamma_0 + jax.nn.softplus(range_raw)

    def _f(self, t):
        _, _, slope_raw, unit_slope_raw, unit_offset, unit_weight_raw = self._parameters()
        linear = jax.nn.softplus(slope_raw) * t
        if not self.learn:
            return linear
        units = jax.nn.sigmoid(jax.nn.softplus(unit_slope_raw) * (2.0 * t - 1.0) + unit_offset)
        return linear + jnp.mean(jax.nn.softplus(unit_weight_raw) * units)

    def __call__(self, t):
        """gamma(t) for a scalar t in [0, 1]."""
        gamma_0, gamma_1 = self.ends()
        f_0, f_1 = self._f(jnp.zeros_like(t)), self._f(jnp.ones_like(t))
        return gamma_0 + (gamma_1 - gamma_0) * (self._f(t) - f_0) / (f_1 - f_0)

    def value_and_derivative(self, t):
        """(gamma(t), gamma'(t)) for a scalar t."""
        return jax.jvp(self.__call__, (t,), (jnp.ones_like(t),))


class VDM(eqx.Module):
    """A variational diffusion model: a denoiser eps_hat(z, gamma) and its learned schedule.

    Args:
        key: a JAX PRNG key.
        denoiser: a network ``denoiser(z, s, TIME_RESOLUTION) -> (eps_hat, None)`` (an
            :class:`~elbox.diffusion.networks.MLPDenoiser` or
            :class:`~elbox.diffusion.networks.ConvDenoiser` without a variance output); it is
            given s = TIME_RESOLUTION (gamma - gamma_low) / (gamma_high - gamma_low), gamma_low and
            gamma_high the schedule's initial ends.
        gamma_0, gamma_1, hidden, learn_schedule, dtype: see :class:`LearnedSchedule`.
        prior_logits: for data on a grid with a :class:`~elbox.diffusion.decoders.GridPosterior`
            decoder, the initial logits of its per-coordinate prior over the levels, shape (d, K),
            trained with the rest (None: no prior, or a decoder that takes none).
    """

    denoiser: Any
    schedule: LearnedSchedule
    prior_logits: jax.Array | None
    gamma_low: float = eqx.field(static=True)
    gamma_high: float = eqx.field(static=True)

    def __init__(self, key, denoiser, gamma_0: float = -13.3, gamma_1: float = 5.0, hidden: int = 64,
                 learn_schedule: bool = True, dtype=None, prior_logits=None):
        if getattr(denoiser, "learn_variance", False):
            raise SettingsError(
                "a VDM's reverse variance is fixed by its schedule: build the denoiser with learn_variance=False"
            )
        self.denoiser = denoiser
        self.schedule = LearnedSchedule(key, gamma_0, gamma_1, hidden, learn_schedule, dtype)
        logits_dtype = jnp.result_type(float) if dtype is None else dtype
        self.prior_logits = None if prior_logits is None else jnp.asarray(prior_logits, logits_dtype)
        self.gamma_low = float(gamma_0)
        self.gamma_high = float(gamma_1)

    def eps_hat(self, z, gamma):
        """The predicted noise of z_t for log-SNR -gamma, one example."""
        s = (gamma - self.gamma_low) / (self.gamma_high - self.gamma_low)
        eps_hat, _ = self.denoiser(z, s * TIME_RESOLUTION, TIME_RESOLUTION)
        return eps_hat


# -- the three terms, one example ------------------------------------------------------------------
def alpha_sigma(gamma):
    """(alpha, sigma) with alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma)."""
    return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))


def reconstruction_term(gamma_0, x, eps_0, decoder, prior_logits=None):
    """-log p(x | z_0) for z_0 = alpha_0 x + sigma_0 eps_0, nats summed over dimensions: the
    decoder's likelihood of x with mean z_0 / alpha_0 = x + exp(gamma_0 / 2) eps_0 and scale
    exp(gamma_0 / 2), given the model's prior logits over the levels (None for a decoder without one)."""
    scale_log = 0.5 * gamma_0
    mean = x + jnp.exp(scale_log) * eps_0
    return -jnp.sum(decoder.log_likelihood(x, mean, scale_log, prior_logits))


def prior_term(gamma_1, x):
    """KL(N(alpha_1 x, sigma_1^2 I) || N(0, I)) = 1/2 sum_i [alpha_1^2 (x_i^2 - 1) - log sigma_1^2],
    -log sigma_1^2 = softplus(-gamma_1) (exact for large gamma_1)."""
    alpha_sq = jax.nn.sigmoid(-gamma_1)
    return 0.5 * jnp.sum(alpha_sq * (jnp.square(x) - 1.0) + jax.nn.softplus(-gamma_1))


def diffusion_term(model: VDM, x, gamma_t, dgamma_t, eps):
    """1/2 gamma'(t) ||eps - eps_hat(z_t; t)||^2 at one t (the continuous-time integrand)."""
    alpha, sigma = alpha_sigma(gamma_t)
    z = alpha * x + sigma * eps
    return 0.5 * dgamma_t * jnp.sum(jnp.square(eps - model.eps_hat(z, gamma_t)))


def discrete_step_term(model: VDM, x, i, T: int, eps):
    """L_i = 1/2 expm1(gamma(i/T) - gamma((i-1)/T)) ||eps - eps_hat(z_{i/T})||^2, the KL of step
    i = 1..T given one eps (its mean over eps is KL(q(z_s | z_t, x) || p(z_s | z_t)))."""
    dtype = jnp.result_type(x)
    gamma_t = model.schedule(jnp.asarray(i, dtype) / T)
    gamma_s = model.schedule(jnp.asarray(i - 1, dtype) / T)
    alpha, sigma = alpha_sigma(gamma_t)
    z = alpha * x + sigma * eps
    return 0.5 * jnp.expm1(gamma_t - gamma_s) * jnp.sum(jnp.square(eps - model.eps_hat(z, gamma_t)))


def continuous_terms(model: VDM, x, gamma_t, dgamma_t, eps, eps_0, decoder):
    """(L_recon, the L_diffusion integrand at one t, L_prior) for one example and one draw of
    eps and eps_0: their sum is an unbiased estimate of the continuous-time bound."""
    gamma_0, gamma_1 = model.schedule.ends()
    return (
        reconstruction_term(gamma_0, x, eps_0, decoder, model.prior_logits),
        diffusion_term(model, x, gamma_t, dgamma_t, eps),
        prior_term(gamma_1, x),
    )


def antithetic_times(key, n: int, dtype=jnp.float32):
    """t_i = (u + i / n) mod 1, i = 0..n-1, u ~ U(0, 1): each t_i is uniform, together they are
    evenly spread (VDM's low-discrepancy sampler)."""
    u = jax.random.uniform(key, (), dtype)
    return jnp.mod(u + jnp.arange(n, dtype=dtype) / n, 1.0)


# -- training ------------------------------------------------------------------------------------------
def loss_and_grad(key, params, static, batch, decoder=Gaussian()):
    """The batch-mean continuous-time bound (nats per example) and the gradient to follow.

    The denoiser and the schedule's ends get the gradient of the bound; the schedule's shape
    gets the gradient of the batch mean of L_diffusion^2 (the variance of the estimate, up to
    a term that does not depend on the shape), see the module docstring.

    Returns:
        (mean bound, gradient with the structure of ``params``).
    """
    model = eqx.combine(params, static)
    n = batch.shape[0]
    key_t, key_eps, key_eps0 = jax.random.split(key, 3)
    t = antithetic_times(key_t, n, batch.dtype)
    eps = jax.random.normal(key_eps, batch.shape, batch.dtype)
    eps_0 = jax.random.normal(key_eps0, batch.shape, batch.dtype)

    def gammas(schedule):
        return jax.vmap(schedule.value_and_derivative)(t)

    (gamma_t, dgamma_t), gamma_vjp = jax.vjp(gammas, model.schedule)

    def bound(params, gamma_t, dgamma_t):
        model = eqx.combine(params, static)
        recon, diffusion, prior = jax.vmap(partial(continuous_terms, model, decoder=decoder))(
            batch, gamma_t, dgamma_t, eps, eps_0
        )
        return jnp.mean(recon + diffusion + prior), diffusion

    (value, diffusion), (g_params, g_gamma, g_dgamma) = jax.value_and_grad(bound, argnums=(0, 1, 2), has_aux=True)(
        params, gamma_t, dgamma_t
    )
    # g_gamma[i] = (1/n) dL_i/dgamma_i: the bound's cotangent; 2 L_i times it is that of mean(L_i^2).
    (g_schedule_bound,) = gamma_vjp((g_gamma, g_dgamma))
    (g_schedule_variance,) = gamma_vjp((2.0 * diffusion * g_gamma, 2.0 * diffusion * g_dgamma))
    g_schedule = _merge_schedule_grads(g_params.schedule, g_schedule_bound, g_schedule_variance)
    return value, eqx.tree_at(lambda m: m.schedule, g_params, g_schedule)


def _merge_schedule_grads(direct, through_gamma, variance):
    """Ends: the bound's gradient (directly, through L_recon and L_prior, and through gamma(t));
    shape: the variance's gradient."""
    merged = direct
    for name in ("gamma_0", "range_raw"):
        merged = eqx.tree_at(lambda s, name=name: getattr(s, name), merged,
                             getattr(direct, name) + getattr(through_gamma, name))
    for name in ("slope_raw", "unit_slope_raw", "unit_offset", "unit_weight_raw"):
        merged = eqx.tree_at(lambda s, name=name: getattr(s, name), merged, getattr(variance, name))
    return merged


# -- the bound over a data set -----------------------------------------------------------------------
def _per_example_continuous(model: VDM, key, x, num_t, decoder):
    key_t, key_eps, key_eps0 = jax.random.split(key, 3)
    t = antithetic_times(key_t, num_t, x.dtype)
    eps = jax.random.normal(key_eps, (num_t,) + x.shape, x.dtype)
    eps_0 = jax.random.normal(key_eps0, (num_t,) + x.shape, x.dtype)
    gamma_t, dgamma_t = jax.vmap(model.schedule.value_and_derivative)(t)
    terms = jax.vmap(lambda g, dg, e, e0: continuous_terms(model, x, g, dg, e, e0, decoder))(
        gamma_t, dgamma_t, eps, eps_0
    )
    recon, diffusion, prior = (jnp.mean(term) for term in terms)
    return {"reconstruction": recon, "denoising": diffusion, "prior": prior, "total": recon + diffusion + prior}


def _per_example_discrete(model: VDM, key, x, T, decoder):
    key_eps, key_eps0 = jax.random.split(key)
    eps = jax.random.normal(key_eps, (T,) + x.shape, x.dtype)
    gamma_0, gamma_1 = model.schedule.ends()
    steps = jax.vmap(lambda i, e: discrete_step_term(model, x, i, T, e))(jnp.arange(1, T + 1), eps)
    recon = reconstruction_term(gamma_0, x, jax.random.normal(key_eps0, x.shape, x.dtype), decoder, model.prior_logits)
    prior = prior_term(gamma_1, x)
    return {"reconstruction": recon, "denoising_per_step": steps, "prior": prior,
            "total": recon + jnp.sum(steps) + prior}


@eqx.filter_jit
def _continuous_batch(model, keys, data, num_t, decoder):
    return jax.vmap(lambda k, x: _per_example_continuous(model, k, x, num_t, decoder))(keys, data)


@eqx.filter_jit
def _discrete_batch(model, keys, data, T, decoder):
    return jax.vmap(lambda k, x: _per_example_discrete(model, k, x, T, decoder))(keys, data)


def bound_estimate(key, model: VDM, data, decoder=Gaussian(), T: int | None = None, num_t_samples: int = 64,
                   batch_size: int = 256) -> BoundEstimate:
    """The negative ELBO of ``data`` (examples along axis 0) under ``model``, in nats and bits per
    dimension, with standard errors across examples.

    * ``T=None``: the continuous-time bound; each example's L_diffusion is the mean of
      ``num_t_samples`` stratified draws t_k = (u + k / K) mod 1 (and L_recon the mean of as
      many draws of z_0).
    * ``T`` an integer: the discrete-time bound with T steps, every step's KL (one eps each).

    Example i uses the i-th key of ``jax.random.split(key, n)``: the answer does not depend on
    ``batch_size``.
    """
    data = jnp.asarray(data)
    num_dims = int(np.prod(data.shape[1:]))
    if T is None:
        out = per_example_in_batches(
            lambda keys, rows: _continuous_batch(model, keys, rows, int(num_t_samples), decoder), key, data, batch_size
        )
        per_step = np.zeros((0,))
        denoising = float(out["denoising"].mean())
        estimator = ESTIMATOR_CONTINUOUS.format(k=int(num_t_samples))
    else:
        out = per_example_in_batches(lambda keys, rows: _discrete_batch(model, keys, rows, int(T), decoder),
                                     key, data, batch_size)
        per_step = out["denoising_per_step"].mean(axis=0)
        denoising = float(out["denoising_per_step"].sum(axis=1).mean())
        estimator = ESTIMATOR_DISCRETE_ALL
    nats, nats_per_dim, bits = bound_estimates(out["total"], num_dims)
    return BoundEstimate(
        nats=nats,
        nats_per_dim=nats_per_dim,
        bits_per_dim=bits,
        reconstruction=float(out["reconstruction"].mean()),
        denoising=denoising,
        prior=float(out["prior"].mean()),
        denoising_per_step=per_step,
        estimator=estimator,
        num_examples=int(data.shape[0]),
        num_dims=num_dims,
        num_t_samples=None if T is not None else int(num_t_samples),
        per_example=out["total"],
    )


# -- importance weights over the noisy path -------------------------------------------------------
def path_log_weight(model: VDM, key, x, T: int, decoder):
    """log p(x, z_{0:1}) - log q(z_{0:1} | x) for one path of the T-step model, drawn from q.

    The path is drawn from the top, z_1 ~ q(z_1 | x), then z_s ~ q(z_s | z_t, x) for t = i/T,
    s = (i-1)/T, i = T..1 (the same joint distribution as the forward chain), carried as the
    standardised noise e_t = (z_t - alpha_t x) / sigma_t, which needs no subtraction of nearby
    numbers at small t: e_s = exp(-D/2) e_t + sqrt(1 - exp(-D)) xi, D = gamma_t - gamma_s. The model's
    p(z_s | z_t) has q's variance and a mean that differs by delta, so each step's log-ratio is

        log p(z_s | z_t) - log q(z_s | z_t, x) = sqrt(expm1(D)) xi . (e_t - eps_hat) - 1/2 expm1(D) ||e_t - eps_hat||^2,

    whose mean over xi is minus the step's KL (:func:`discrete_step_term`). With the prior's
    log N(z_1; 0, I) - log q(z_1 | x) and the decoder's log p(x | z_0), the mean of the weight's
    log is the T-step ELBO, and log (1/K) sum_k exp(w_k) over K paths is the importance-weighted
    bound (Burda, Grosse & Salakhutdinov 2016).
    """
    dtype = jnp.result_type(x)
    key_top, key_steps = jax.random.split(key)
    gamma_0, gamma_1 = model.schedule.ends()
    e_1 = jax.random.normal(key_top, x.shape, dtype)
    alpha_1, sigma_1 = alpha_sigma(gamma_1)
    z_1 = alpha_1 * x + sigma_1 * e_1
    log_prior_ratio = 0.5 * jnp.sum(jnp.square(e_1) - jnp.square(z_1)) + x.size * 0.5 * jax.nn.log_sigmoid(gamma_1)

    def body(e_t, inputs):
        i, step_key = inputs
        gamma_t = model.schedule(jnp.asarray(i, dtype) / T)
        gamma_s = model.schedule(jnp.asarray(i - 1, dtype) / T)
        alpha_t, sigma_t = alpha_sigma(gamma_t)
        gap = gamma_t - gamma_s
        residual = e_t - model.eps_hat(alpha_t * x + sigma_t * e_t, gamma_t)
        xi = jax.random.normal(step_key, x.shape, dtype)
        ratio = jnp.sqrt(jnp.expm1(gap)) * jnp.vdot(xi, residual) - 0.5 * jnp.expm1(gap) * jnp.sum(jnp.square(residual))
        e_s = jnp.exp(-0.5 * gap) * e_t + jnp.sqrt(-jnp.expm1(-gap)) * xi
        return e_s, ratio

    e_0, ratios = jax.lax.scan(body, e_1, (jnp.arange(T, 0, -1), jax.random.split(key_steps, T)))
    log_likelihood = -reconstruction_term(gamma_0, x, e_0, decoder, model.prior_logits)
    return log_likelihood + jnp.sum(ratios) + log_prior_ratio


@eqx.filter_jit
def path_log_weights(model: VDM, keys, data, num_paths: int, T: int, decoder):
    """:func:`path_log_weight` for ``num_paths`` paths of every example, shape (n, num_paths)."""
    def one(key, x):
        return jax.vmap(lambda k: path_log_weight(model, k, x, T, decoder))(jax.random.split(key, num_paths))

    return jax.vmap(one)(keys, data)


# -- sampling ---------------------------------------------------------------------------------------
def sample(key, model: VDM, num_samples: int, dim: int, T: int = 1000, decoder=Gaussian(), dtype=None):
    """``num_samples`` ancestral draws from the model with T steps, in model units, shape (n, dim).

    z_1 ~ N(0, I); for t = i/T, s = (i-1)/T, i = T..1, with c = -expm1(gamma_s - gamma_t),

        z_s ~ N(alpha_s / alpha_t (z_t - sigma_t c eps_hat(z_t; t)), c sigma_s^2 I)   (VDM, appendix A.4),

    and from z_0 the decoder's point estimate (``decoder.point_estimate``) at mean z_0 / alpha_0
    and scale exp(gamma_0 / 2): z_0 / alpha_0 itself (continuous data) or the most likely bin (a
    :class:`~elbox.diffusion.decoders.DiscretizedGaussian` or
    :class:`~elbox.diffusion.decoders.GridPosterior`).
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    return _sample(key, model, int(num_samples), int(dim), int(T), decoder, dtype)


@eqx.filter_jit
def _sample(key, model, num_samples, dim, T, decoder, dtype):
    def one(draw_key):
        key_prior, key_steps = jax.random.split(draw_key)
        z_1 = jax.random.normal(key_prior, (dim,), dtype)

        def body(z, inputs):
            i, step_key = inputs
            gamma_t = model.schedule(jnp.asarray(i, dtype) / T)
            gamma_s = model.schedule(jnp.asarray(i - 1, dtype) / T)
            alpha_t, sigma_t = alpha_sigma(gamma_t)
            alpha_s, sigma_s = alpha_sigma(gamma_s)
            c = -jnp.expm1(gamma_s - gamma_t)
            mean = alpha_s / alpha_t * (z - sigma_t * c * model.eps_hat(z, gamma_t))
            return mean + jnp.sqrt(c) * sigma_s * jax.random.normal(step_key, (dim,), dtype), None

        z_0, _ = jax.lax.scan(body, z_1, (jnp.arange(T, 0, -1), jax.random.split(key_steps, T)))
        gamma_0, _ = model.schedule.ends()
        alpha_0, _ = alpha_sigma(gamma_0)
        mean = z_0 / alpha_0
        return decoder.point_estimate(mean, jnp.full_like(mean, 0.5 * gamma_0), model.prior_logits)

    return jax.vmap(one)(jax.random.split(key, num_samples))


class ScheduleSummary(NamedTuple):
    """The learned schedule at a glance: gamma at its ends and on a grid of t."""

    gamma_0: float
    gamma_1: float
    t: np.ndarray
    gamma: np.ndarray


def schedule_summary(model: VDM, num_points: int = 101) -> ScheduleSummary:
    """gamma(t) on ``num_points`` evenly spaced t in [0, 1] (for plots and reports)."""
    t = jnp.linspace(0.0, 1.0, num_points)
    gamma = jax.vmap(model.schedule)(t)
    gamma_0, gamma_1 = model.schedule.ends()
    return ScheduleSummary(float(gamma_0), float(gamma_1), np.asarray(t), np.asarray(gamma))
