"""Metropolis–Hastings, as the textbook states it.

From z propose z' ~ q(z' | z) and accept with probability

    alpha(z, z') = min(1, p(x|z') p(z') q(z | z') / (p(x|z) p(z) q(z' | z))),

otherwise stay at z (Metropolis et al. 1953; Hastings 1970). For a symmetric proposal such as
the Gaussian random walk, q(z | z') = q(z' | z) and the q terms cancel; for any other proposal
the Hastings correction q(z | z') / q(z' | z) keeps p(z | x) invariant.

The kernel follows the ``init`` / ``build_kernel`` pattern: one chain, a flat unconstrained
position, pure functions; batching over chains and looping are the driver's job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from elbox import checks
from elbox.errors import SettingsError
from elbox.mcmc import random_walk_adaptation as adaptation
from elbox.mcmc.base import Sampler, Tuner, fixed_parameters


class MHState(NamedTuple):
    """Where one chain is.

    Attributes:
        position: the flat unconstrained position z.
        log_density: log p(x, z) at ``position`` (with the log-Jacobian of the unconstraining map).
    """

    position: jax.Array
    log_density: jax.Array


class MHInfo(NamedTuple):
    """What one step did.

    Attributes:
        acceptance_rate: alpha(z, z') = min(1, Hastings ratio); its average over steps estimates
            the acceptance rate with less noise than the 0/1 decisions.
        is_accepted: whether the chain moved to z'.
    """

    acceptance_rate: jax.Array
    is_accepted: jax.Array


class Proposal(NamedTuple):
    """A proposal distribution q(z' | z).

    Attributes:
        sample: ``(key, z) -> z'``.
        log_density: ``(z_to, z_from) -> log q(z_to | z_from)``, or ``None`` for a symmetric
            proposal (q(z | z') = q(z' | z)), for which the Hastings terms cancel.
    """

    sample: Callable[[jax.Array, jax.Array], jax.Array]
    log_density: Callable[[jax.Array, jax.Array], jax.Array] | None = None


def random_walk(scale) -> Proposal:
    """Gaussian random walk z' = z + scale * e, e ~ N(0, I); ``scale`` a scalar or per-coordinate.

    Symmetric, so the Hastings correction is 1.
    """

    def sample(key, position):
        return position + scale * jax.random.normal(key, position.shape, position.dtype)

    return Proposal(sample=sample, log_density=None)


def gaussian_log_density(value, mean, scale) -> jax.Array:
    """log N(value; mean, diag(scale^2)), summed over coordinates."""
    standardized = (value - mean) / scale
    return jnp.sum(-0.5 * standardized**2 - jnp.log(scale) - 0.5 * jnp.log(2 * jnp.pi))


def independence(mean, scale) -> Proposal:
    """Independence proposal q(z' | z) = N(z'; mean, diag(scale^2)), whatever z is.

    Not symmetric: the acceptance ratio carries q(z) / q(z').
    """

    def sample(key, position):
        return mean + scale * jax.random.normal(key, position.shape, position.dtype)

    def log_density(to, _from):
        return gaussian_log_density(to, mean, scale)

    return Proposal(sample=sample, log_density=log_density)


def drifting_walk(drift, scale) -> Proposal:
    """Random walk with a constant drift: z' = z + drift + scale * e, e ~ N(0, I).

    log q(z' | z) = log N(z' - z; drift, scale^2) is not symmetric, so this proposal is only
    correct with the Hastings correction; it is the textbook example of why the correction
    matters.
    """

    def sample(key, position):
        return position + drift + scale * jax.random.normal(key, position.shape, position.dtype)

    def log_density(to, from_):
        return gaussian_log_density(to - from_, drift, scale)

    return Proposal(sample=sample, log_density=log_density)


def init(position: jax.Array, log_density_fn: Callable) -> MHState:
    """The state at ``position``."""
    return MHState(position, log_density_fn(position))


def build_kernel(log_density_fn: Callable, hastings_correction: bool = True):
    """Return ``kernel(key, state, proposal) -> (state, info)``, one Metropolis–Hastings step.

    Args:
        log_density_fn: log p(x, z) of a flat position, up to a constant.
        hastings_correction: keep the q(z | z') / q(z' | z) factor. Switching it off is wrong
            for asymmetric proposals; it exists only so tests can show the error it causes.
    """

    def kernel(key, state: MHState, proposal: Proposal):
        key_propose, key_accept = jax.random.split(key)
        proposed = proposal.sample(key_propose, state.position)
        proposed_log_density = log_density_fn(proposed)
        log_ratio = proposed_log_density - state.log_density
        if proposal.log_density is not None and hastings_correction:
            log_ratio = (
                log_ratio
                + proposal.log_density(state.position, proposed)
                - proposal.log_density(proposed, state.position)
            )
        # A NaN ratio (the proposal left the support, or overflowed) is a rejection.
        log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        acceptance_rate = jnp.exp(jnp.minimum(log_ratio, 0.0))
        is_accepted = jnp.log(jax.random.uniform(key_accept, dtype=log_ratio.dtype)) < log_ratio
        new_state = MHState(
            jnp.where(is_accepted, proposed, state.position),
            jnp.where(is_accepted, proposed_log_density, state.log_density),
        )
        return new_state, MHInfo(acceptance_rate, is_accepted)

    return kernel


def sampler(dimension: int, dtype, *, proposal: Proposal | None = None, scale: float | None = None,
            target_acceptance: float | None = None) -> Sampler:
    """Metropolis–Hastings for the driver (:mod:`elbox.mcmc.base`).

    Without ``proposal``: the Gaussian random walk whose per-coordinate scales (its ``params``)
    adapt during warm-up (:mod:`elbox.mcmc.random_walk_adaptation`), from ``scale`` (default 2.38 / sqrt(d))
    toward ``target_acceptance`` (default 0.234, 0.44 in one dimension). With ``proposal``: that
    proposal as it is, with the Hastings correction and no adaptation (``scale`` and
    ``target_acceptance`` then have no meaning and are refused).
    """
    if scale is not None:
        scale = checks.positive("scale", scale)
    if target_acceptance is not None:
        target_acceptance = checks.probability("target_acceptance", target_acceptance)
    if proposal is not None:
        ignored = [name for name, value in (("scale", scale), ("target_acceptance", target_acceptance))
                   if value is not None]
        if ignored:
            raise SettingsError(
                f"{' and '.join(ignored)} tune{'s' if len(ignored) == 1 else ''} the adaptive random walk, but a "
                "proposal was given, which runs as it is without adaptation; drop "
                f"{' and '.join(ignored)} or the proposal."
            )

        def build_fixed(log_density_fn):
            kernel = build_kernel(log_density_fn)
            return lambda key, state, params: kernel(key, state, proposal)

        return Sampler("mh", _init_at, build_fixed, fixed_parameters(()), _stats, {"proposal": "user"})

    target = target_acceptance if target_acceptance is not None else adaptation.default_target_acceptance(dimension)

    def build_random_walk(log_density_fn):
        kernel = build_kernel(log_density_fn)
        return lambda key, state, scales: kernel(key, state, random_walk(scales))

    tuner = Tuner(
        init=lambda key, state, log_density_fn: adaptation.init(dimension, dtype, scale),
        params=adaptation.proposal_scale,
        update=lambda tuner_state, info, state, window: adaptation.update(
            tuner_state, info.acceptance_rate, state.position, window["in_slow_window"], window["window_end"], target),
        final=adaptation.final_proposal_scale,
        report=lambda scales: {"proposal_scale": np.asarray(scales)},
    )
    return Sampler("mh", _init_at, build_random_walk, tuner, _stats,
                   {"proposal": "random walk", "target_acceptance": target})


def _init_at(position, log_density, log_density_fn) -> MHState:
    """The driver's init: the log density at ``position`` is already known."""
    return MHState(position, log_density)


def _stats(info: MHInfo, state: MHState) -> dict:
    return {"lp": state.log_density, "acceptance_rate": info.acceptance_rate}
