"""The evidence lower bound and its gradient estimators.

    ELBO(q) = E_q[log p(x, u)] - E_q[log q(u)]                       (a) joint minus entropy
            = E_q[log p(x | u)] - KL(q(u) || p(u))                  (b) likelihood minus KL
    log p(x) = ELBO(q) + KL(q(u) || p(u | x)) >= ELBO(q)

on the unconstrained space u (p(u) carries the log-Jacobian, so both forms equal the ELBO of the
constrained model).

Gradient estimators, each a surrogate loss whose gradient is an unbiased estimate of -grad ELBO:

* ``reparam``: u = T_params(eps); average of log p(x, u) - log q(u) (Kingma & Welling 2014).
* ``stl``: "sticking the landing" (Roeder, Wu & Duvenaud 2017): as ``reparam`` but the score
  term of log q is dropped by evaluating log q with the parameters held fixed; its variance
  vanishes when q equals the posterior.
* ``score``: the score-function (REINFORCE) estimator, for latents that cannot be
  reparameterised: grad = E_q[(f(u) - b) grad log q(u)], f = log p(x, u) - log q(u), with the
  leave-one-out mean of f over the other draws as the control variate b (unbiased because b does
  not depend on the draw it multiplies; Kool, van Hoof & Welling 2019).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from elbox.errors import SettingsError
from elbox.estimate import Estimate, mean_and_stderr
from elbox.precision import full_precision

ESTIMATORS = ("auto", "reparam", "stl", "score")


def surrogate_loss(estimator: str, log_joint: Callable, family, num_samples: int, control_variate: bool = True):
    """``loss(params, key, stl_weight=None) -> (loss, elbo_estimate)``, whose gradient estimates
    -grad ELBO.

    For ``"auto"``, ``stl_weight`` (a traced 0 or 1) picks ``stl`` (1) or ``reparam`` (0) inside
    one compiled graph. ``control_variate=False`` removes the score-function estimator's
    baseline (for comparison).
    """
    batch_log_joint = jax.vmap(log_joint)

    def pathwise(params, key, stl_weight):
        u, log_q = family.sample_and_log_prob(key, params, num_samples)
        per_draw = batch_log_joint(u)
        elbo = jnp.mean(per_draw - jax.lax.stop_gradient(log_q))
        if stl_weight is None:
            return -jnp.mean(per_draw - log_q), elbo
        # STL: log q evaluated with the parameters held fixed, so only the path term remains.
        log_q_path = family.log_prob(jax.lax.stop_gradient(params), u)
        log_q_used = stl_weight * log_q_path + (1 - stl_weight) * log_q
        return -jnp.mean(per_draw - log_q_used), elbo

    def score(params, key, stl_weight=None):
        u, _ = family.sample_and_log_prob(key, jax.lax.stop_gradient(params), num_samples)
        u = jax.lax.stop_gradient(u)
        log_q = family.log_prob(params, u)
        f = jax.lax.stop_gradient(batch_log_joint(u) - log_q)
        weight = f - leave_one_out_mean(f) if control_variate and num_samples > 1 else f
        # grad E_q[f] = E[f grad log q] + E[grad_params f]; the second term is -E[grad log q] = 0.
        surrogate = jnp.mean(weight * log_q)
        return -surrogate, jnp.mean(f)

    if estimator == "reparam":
        return lambda params, key, stl_weight=None: pathwise(params, key, None)
    if estimator == "stl":
        return lambda params, key, stl_weight=None: pathwise(params, key, 1.0)
    if estimator == "auto":
        return lambda params, key, stl_weight: pathwise(params, key, stl_weight)
    if estimator == "score":
        return score
    raise SettingsError(f"Unknown ELBO estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}.")


def leave_one_out_mean(values: jax.Array) -> jax.Array:
    """b_i = mean of the other n - 1 values."""
    n = values.shape[0]
    return (jnp.sum(values) - values) / (n - 1)


def gaussian_kl(mean_q, cov_q, mean_p, cov_p) -> float:
    """KL(N(m_q, S_q) || N(m_p, S_p)) =
    1/2 [tr(S_p^-1 S_q) + (m_p - m_q)^T S_p^-1 (m_p - m_q) - d + log det S_p - log det S_q],
    in float64; ``cov_p`` may be a vector of variances (a diagonal S_p)."""
    mean_q, cov_q = np.asarray(mean_q, np.float64), np.asarray(cov_q, np.float64)
    mean_p, cov_p = np.asarray(mean_p, np.float64), np.asarray(cov_p, np.float64)
    if cov_p.ndim == 1:
        cov_p = np.diag(cov_p)
    diff = mean_p - mean_q
    _, logdet_q = np.linalg.slogdet(cov_q)
    _, logdet_p = np.linalg.slogdet(cov_p)
    trace_term = np.trace(np.linalg.solve(cov_p, cov_q))
    return float(0.5 * (trace_term + diff @ np.linalg.solve(cov_p, diff) - mean_q.size + logdet_p - logdet_q))


class ElboReport(NamedTuple):
    """The bound evaluated three ways, with standard errors.

    Attributes:
        elbo: the headline estimate, the mean of log p(x, u_i) - log q(u_i) over draws u_i ~ q;
            its variance vanishes as q approaches the posterior, so it resolves small gaps.
        joint_minus_entropy: form (a), E_q[log p(x, u)] + H[q], H in closed form when q is
            Gaussian (by Monte Carlo otherwise), from its own draws.
        loglik_minus_kl: form (b), E_q[log p(x | u)] - KL(q || p(u)), KL in closed form when q
            and p(u) are Gaussian (by Monte Carlo otherwise), from its own draws; ``None``
            without a prior/likelihood split.
        expected_log_likelihood, kl_to_prior: the two parts of form (b).
        entropy: H[q].
        kl_method: ``"closed form"`` or ``"monte carlo"``.
    """

    elbo: Estimate
    joint_minus_entropy: Estimate
    loglik_minus_kl: Estimate | None
    expected_log_likelihood: Estimate | None
    kl_to_prior: Estimate | None
    entropy: Estimate
    kl_method: str | None


@full_precision
def evaluate_elbo(key, model, family, params, num_samples: int = 4096, keep_draws: bool = False):
    """The ELBO of q = family(params), each estimate from its own ``num_samples`` draws.

    Returns the :class:`ElboReport`; with ``keep_draws`` also the constrained draws behind the
    headline estimate (a dict of arrays with leading axis ``num_samples``).
    """
    key_elbo, key_a, key_b = jax.random.split(key, 3)
    # Kept with the model, per family kind and size: a second fit evaluates without compiling.
    draws = model.program(("elbo_draws", type(family).__name__, _family_signature(family), num_samples),
                          lambda: DrawTerms(model, family, num_samples))
    first = draws(key_elbo, params)
    elbo = mean_and_stderr(first["log_joint"] - first["log_q"])

    second = draws(key_a, params)
    closed_entropy = draws.entropy(params)
    if closed_entropy is not None:
        entropy = Estimate(float(closed_entropy), 0.0)
        expected_log_joint = mean_and_stderr(second["log_joint"])
        form_a = Estimate(expected_log_joint.value + entropy.value, expected_log_joint.stderr)
    else:
        entropy = mean_and_stderr(-second["log_q"])
        form_a = mean_and_stderr(second["log_joint"] - second["log_q"])

    # With an improper prior, KL(q || p(z)) is not a divergence and form (b) is not defined.
    if model.has_split and model.prior_is_proper:
        form_b, expected_ll, kl, kl_method = loglik_minus_kl(key_b, model, family, params, draws=draws)
        report = ElboReport(elbo, form_a, form_b, expected_ll, kl, entropy, kl_method)
    else:
        report = ElboReport(elbo, form_a, None, None, None, entropy, None)
    return (report, first["constrained"]) if keep_draws else report


def loglik_minus_kl(key, model, family, params, num_samples: int = 4096, draws: DrawTerms | None = None):
    """Form (b) of the ELBO, E_q[log p(x | u)] - KL(q(u) || p(u)), with its parts.

    KL is in closed form when q and the prior on u are both Gaussian, by Monte Carlo otherwise.

    Returns:
        (form_b, expected_log_likelihood, kl_to_prior, kl_method), estimates with standard errors.

    Raises:
        NoPriorLikelihoodSplit: the model was given as one log density.
    """
    if not model.has_split:
        model.log_prior(model.init_position)  # raises NoPriorLikelihoodSplit with the remedy
    terms = (draws or DrawTerms(model, family, num_samples))(key, params)
    log_lik, log_prior, log_q = terms["log_likelihood"], terms["log_prior"], terms["log_q"]
    expected_ll = mean_and_stderr(log_lik)
    gaussian = (draws or DrawTerms(model, family, num_samples)).gaussian(params)
    if gaussian is not None and model.gaussian_prior is not None:
        kl = Estimate(gaussian_kl(*gaussian, *model.gaussian_prior), 0.0)
        return Estimate(expected_ll.value - kl.value, expected_ll.stderr), expected_ll, kl, "closed form"
    kl = mean_and_stderr(log_q - log_prior)
    return mean_and_stderr(log_lik - (log_q - log_prior)), expected_ll, kl, "monte carlo"


def _family_signature(family) -> tuple:
    """What fixes a family's compiled functions: its kind and settings (not its parameters)."""
    return tuple(sorted((name, value) for name, value in vars(family).items()
                        if isinstance(value, int | float | str | bool)))


class DrawTerms:
    """Per-draw log densities for ``num_samples`` draws u ~ q: log q(u), log p(x, u) and, when
    the model has them, log p(x | u) and log p(u); plus the constrained parameters.

    One compiled function serves every call (the parameters are an argument), evaluated in
    batches of at most ``batch`` draws to bound memory.
    """

    def __init__(self, model, family, num_samples: int, batch: int = 4096):
        self.num_samples = num_samples
        self.batch = min(batch, num_samples)

        def one_draw(u):
            out = {"constrained": model.constrain(model.unravel(u))}
            if model.has_split:
                out["log_likelihood"] = model.flat_log_likelihood(u)
                out["log_prior"] = model.flat_log_prior(u)
                out["log_joint"] = out["log_likelihood"] + out["log_prior"]
            else:
                out["log_joint"] = model.flat_log_joint(u)
            return out

        @jax.jit
        def one_batch(key, params):
            u, log_q = family.sample_and_log_prob(key, params, self.batch)
            out = jax.vmap(one_draw)(u)
            out["log_q"] = log_q
            return out

        self._one_batch = one_batch
        self._entropy = jax.jit(family.entropy)
        self.family = family

    def entropy(self, params):
        """H[q] in closed form (compiled once), or None."""
        value = self._entropy(params)
        return None if value is None else float(value)

    def gaussian(self, params):
        """(mean, covariance) of a Gaussian q as float64 NumPy arrays, or None.

        In float64 from the parameters: a scale exp(log_scale) that underflows float32 (a
        collapsed q) would make log det S_q = -inf and KL(q || p) infinite, where it is large but
        finite.
        """
        return self.family.gaussian(params)

    def __call__(self, key, params) -> dict:
        chunks = [
            jax.tree_util.tree_map(np.asarray, self._one_batch(jax.random.fold_in(key, i), params))
            for i in range(-(-self.num_samples // self.batch))
        ]
        joined = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs)[: self.num_samples], *chunks)
        for name in ("log_q", "log_joint", "log_likelihood", "log_prior"):
            if name in joined:
                joined[name] = joined[name].astype(np.float64)
        return joined
