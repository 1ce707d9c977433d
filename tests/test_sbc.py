"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018) of NUTS and MH.

For each of N replicates: draw z from the prior, simulate data x ~ p(x | z), run the sampler on
p(z | x) and record the rank of z among L thinned posterior draws (the number of draws below z,
0..L). If the sampler draws from p(z | x), each rank is uniform on {0, ..., L}. The ranks
(L + 1 = 100 values) are grouped into 10 bins of 10 and tested for uniformity with Pearson's
chi-squared test (9 degrees of freedom); each parameter of each (sampler, model) pair is one
test: 12 tests (NUTS and MH on a 1- and a 2-parameter model, NUTS on a 5-parameter hierarchical
model, MH with an asymmetric proposal on the 1-parameter model), family level 0.01, so each test
at the Bonferroni level 0.01 / 12. Deliberately wrong samplers must fail the same test: NUTS on
the tempered posterior p(z) p(x | z)^0.5 (too wide by about sqrt(2)), and MH with the
asymmetric proposal but without the Hastings correction.

Thinning: SBC needs nearly independent posterior draws (autocorrelated draws make the rank
histogram U-shaped even for a correct sampler), so draws are thinned to about one effective
draw each: every 4th for NUTS, every 20th for MH.

Speed: ``elbox.sample`` compiles once per model, so N replicates through it would compile N
times. :func:`sbc_ranks` instead composes the same sampler contract as the driver
(:mod:`elbox.mcmc.run`: ``registry.SAMPLERS[name](dimension, dtype)``'s init, build_kernel,
tuner on Stan's window schedule from :mod:`elbox.mcmc.warmup`, then the fixed kernel), with the
data a traced argument of the log density and ``jax.vmap`` over replicates: one compiled program
runs them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from elbox.mcmc import metropolis, registry
from elbox.mcmc.warmup import warmup_schedule

pytestmark = pytest.mark.slow

REPLICATES = 1000
DRAWS = 99  # thinned draws per replicate: ranks 0..99
BINS = 10
TESTS = 12
LEVEL = 0.01 / TESTS
THIN = {"nuts": 4, "mh": 20}
WARMUP = {"nuts": 500, "mh": 1000}


class SimulatedModel(NamedTuple):
    """A model whose prior can be simulated, on a flat unconstrained vector z."""

    name: str
    dimension: int
    sample_prior: Callable  # key -> z
    simulate: Callable  # (key, z) -> data
    log_prior: Callable  # z -> log p(z)
    log_likelihood: Callable  # (z, data) -> log p(data | z)


def normal_log_density(x, mean, sd):
    return -0.5 * ((x - mean) / sd) ** 2 - jnp.log(sd) - 0.5 * jnp.log(2 * jnp.pi)


NORMAL_MEAN = SimulatedModel(
    name="normal_mean",  # mu ~ N(0, 1); y_1..10 ~ N(mu, 1)
    dimension=1,
    sample_prior=lambda key: jax.random.normal(key, (1,)),
    simulate=lambda key, z: z[0] + jax.random.normal(key, (10,)),
    log_prior=lambda z: normal_log_density(z[0], 0.0, 1.0),
    log_likelihood=lambda z, y: jnp.sum(normal_log_density(y, z[0], 1.0)),
)

NORMAL_MEAN_LOG_SD = SimulatedModel(
    name="normal_mean_log_sd",  # mu ~ N(0, 1), log sigma ~ N(0, 0.5^2); y_1..20 ~ N(mu, sigma)
    dimension=2,
    sample_prior=lambda key: jax.random.normal(key, (2,)) * jnp.array([1.0, 0.5]),
    simulate=lambda key, z: z[0] + jnp.exp(z[1]) * jax.random.normal(key, (20,)),
    log_prior=lambda z: normal_log_density(z[0], 0.0, 1.0) + normal_log_density(z[1], 0.0, 0.5),
    log_likelihood=lambda z, y: jnp.sum(normal_log_density(y, z[0], jnp.exp(z[1]))),
)

GROUPS, PER_GROUP = 3, 4
HIERARCHICAL = SimulatedModel(
    # mu ~ N(0, 1), log tau ~ N(0, 0.5^2), eta_j ~ N(0, 1) (j = 1..3, non-centred);
    # y_jk ~ N(mu + tau eta_j, 1), k = 1..4
    name="hierarchical",
    dimension=2 + GROUPS,
    sample_prior=lambda key: jax.random.normal(key, (2 + GROUPS,)) * jnp.array([1.0, 0.5] + [1.0] * GROUPS),
    simulate=lambda key, z: (z[0] + jnp.exp(z[1]) * z[2:])[:, None] + jax.random.normal(key, (GROUPS, PER_GROUP)),
    log_prior=lambda z: (normal_log_density(z[0], 0.0, 1.0) + normal_log_density(z[1], 0.0, 0.5)
                         + jnp.sum(normal_log_density(z[2:], 0.0, 1.0))),
    log_likelihood=lambda z, y: jnp.sum(normal_log_density(y, (z[0] + jnp.exp(z[1]) * z[2:])[:, None], 1.0)),
)


def registered(method):
    """``dimension -> Sampler`` from the registry, with the method's warm-up length and thinning."""
    return (lambda dimension: registry.SAMPLERS[method](dimension, jnp.float32)), WARMUP[method], THIN[method]


def sbc_ranks(model: SimulatedModel, sampler_of, key, *, replicates=REPLICATES, draws=DRAWS, tempering=1.0):
    """Ranks (replicates, dimension) of the prior draw among ``draws`` thinned posterior draws.

    ``sampler_of`` is ``(dimension -> Sampler, warmup, thin)``. One chain per replicate, composed
    as the driver composes a registered sampler: ``init`` at a uniform start in [-2, 2]^d, the
    tuner's warm-up on Stan's windows, then ``draws x thin`` steps of the kernel with the
    tuner's final parameters. ``tempering`` raises the likelihood to that power (1: the
    posterior)."""
    build, warmup, thin = sampler_of
    sampler = build(model.dimension)
    tuner = sampler.tuner
    schedule = warmup_schedule(warmup)
    windows = {"in_slow_window": jnp.asarray(schedule.in_slow_window), "window_end": jnp.asarray(schedule.window_end)}

    def replicate(key):
        key_prior, key_data, key_init, key_tuner, key_warmup, key_draws = jax.random.split(key, 6)
        truth = model.sample_prior(key_prior)
        data = model.simulate(key_data, truth)

        def log_density(z):
            return model.log_prior(z) + tempering * model.log_likelihood(z, data)

        kernel = sampler.build_kernel(log_density)
        position = jax.random.uniform(key_init, (model.dimension,), minval=-2.0, maxval=2.0)
        state = sampler.init(position, log_density(position), log_density)
        tuner_state = tuner.init(key_tuner, state, log_density)

        def warmup_step(carry, inputs):
            state, tuner_state = carry
            key, window = inputs
            state, info = kernel(key, state, tuner.params(tuner_state))
            return (state, tuner.update(tuner_state, info, state, window)), None

        (state, tuner_state), _ = jax.lax.scan(warmup_step, (state, tuner_state),
                                               (jax.random.split(key_warmup, warmup), windows))
        params = tuner.final(tuner_state)

        def draw(state, key):
            state, _ = kernel(key, state, params)
            return state, state.position

        _, positions = jax.lax.scan(draw, state, jax.random.split(key_draws, draws * thin))
        kept = positions[thin - 1 :: thin]
        return jnp.sum(kept < truth, axis=0)

    return np.asarray(jax.jit(jax.vmap(replicate))(jax.random.split(key, replicates)))


def uniformity_p_values(ranks, draws=DRAWS, bins=BINS) -> np.ndarray:
    """Pearson's chi-squared p-value of the binned ranks, per parameter."""
    assert (draws + 1) % bins == 0
    counts = np.stack([np.bincount(r // ((draws + 1) // bins), minlength=bins) for r in ranks.T])
    return stats.chisquare(counts, axis=1).pvalue


@pytest.mark.parametrize("method, model", [("nuts", NORMAL_MEAN), ("nuts", NORMAL_MEAN_LOG_SD), ("nuts", HIERARCHICAL),
                                           ("mh", NORMAL_MEAN), ("mh", NORMAL_MEAN_LOG_SD)],
                         ids=["nuts-normal_mean", "nuts-normal_mean_log_sd", "nuts-hierarchical", "mh-normal_mean",
                              "mh-normal_mean_log_sd"])
def test_ranks_are_uniform(method, model):
    ranks = sbc_ranks(model, registered(method), jax.random.key(2018))
    assert ranks.shape == (REPLICATES, model.dimension)
    p_values = uniformity_p_values(ranks)
    assert (p_values > LEVEL).all(), p_values


def test_tempered_posterior_fails_calibration():
    """Negative control: NUTS on p(z) p(x | z)^0.5 is too wide, its ranks pile up in the middle."""
    for model in [NORMAL_MEAN, NORMAL_MEAN_LOG_SD]:
        ranks = sbc_ranks(model, registered("nuts"), jax.random.key(2018), tempering=0.5)
        p_values = uniformity_p_values(ranks)
        assert (p_values < LEVEL).any(), (model.name, p_values)


def drifting_mh(hastings_correction):
    """MH through the registry with a fixed drifting random walk (drift 0.15, scale 0.3, about half
    the posterior sd of NORMAL_MEAN), its kernel built with or without the Hastings correction."""
    proposal = metropolis.drifting_walk(drift=0.15, scale=0.3)

    def build(dimension):
        sampler = registry.SAMPLERS["mh"](dimension, jnp.float32, proposal=proposal)

        def build_kernel(log_density_fn):
            kernel = metropolis.build_kernel(log_density_fn, hastings_correction=hastings_correction)
            return lambda key, state, params: kernel(key, state, proposal)

        return sampler._replace(build_kernel=build_kernel)

    return build, WARMUP["mh"], THIN["mh"]


def test_asymmetric_proposal_needs_the_hastings_correction():
    """With the correction the drifting walk is calibrated; without it (negative control) the
    chain drifts and the ranks pile up at the low end."""
    ranks = sbc_ranks(NORMAL_MEAN, drifting_mh(True), jax.random.key(2018))
    assert uniformity_p_values(ranks)[0] > LEVEL
    ranks = sbc_ranks(NORMAL_MEAN, drifting_mh(False), jax.random.key(2018))
    assert uniformity_p_values(ranks)[0] < LEVEL
