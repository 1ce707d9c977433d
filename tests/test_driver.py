"""The sampling driver knows the sampler contract (elbox.mcmc.base), not the algorithm: a sampler
it has never seen, registered under a new name, runs through ``elbox.sample`` with its own
tuning and per-draw statistics."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import elbox
from elbox.mcmc import registry
from elbox.mcmc.base import Sampler, Tuner


class ToyState(NamedTuple):
    position: jax.Array
    log_density: jax.Array


class ToyInfo(NamedTuple):
    acceptance_rate: jax.Array
    proposal_sd: jax.Array


def toy_sampler(dimension, dtype, *, spread: float = 1.0):
    """Independent draws from N(0, spread^2) whatever the target (a broken sampler on purpose),
    with a 'tuner' that counts warm-up steps into its parameter."""

    def init(position, log_density, log_density_fn):
        return ToyState(position, log_density)

    def build_kernel(log_density_fn):
        def kernel(key, state, sd):
            position = sd * jax.random.normal(key, state.position.shape, state.position.dtype)
            return ToyState(position, log_density_fn(position)), ToyInfo(jnp.ones((), dtype), sd)

        return kernel

    tuner = Tuner(
        init=lambda key, state, log_density_fn: jnp.zeros((), dtype),
        params=lambda steps: jnp.asarray(spread, dtype),
        update=lambda steps, info, state, window: steps + 1,
        final=lambda steps: jnp.asarray(spread, dtype) + 0 * steps,
        report=lambda sd: {"spread": np.asarray(sd)},
    )
    stats = lambda info, state: {"lp": state.log_density, "acceptance_rate": info.acceptance_rate,
                                 "proposal_sd": info.proposal_sd}
    return Sampler("toy", init, build_kernel, tuner, stats)


@pytest.fixture
def with_toy(monkeypatch):
    monkeypatch.setitem(registry.SAMPLERS, "toy", toy_sampler)
    import elbox.mcmc.run as run

    monkeypatch.setattr(run, "METHODS", tuple(registry.SAMPLERS))


def test_a_new_sampler_runs_through_the_driver(with_toy):
    results = elbox.sample("normal_normal", jax.random.key(0), method="toy", chains=3, warmup=20, draws=2000,
                           progress=False)
    assert results.method == "toy"
    assert set(results.sample_stats.data_vars) == {"lp", "acceptance_rate", "proposal_sd"}
    np.testing.assert_array_equal(results.tuning["spread"], np.ones(3))
    draws = np.asarray(results.posterior["mu"]).ravel()
    # The toy ignores the target: its draws are N(0, 1), not the posterior N(1.52, 0.45^2).
    assert abs(draws.mean()) < 4 / np.sqrt(draws.size)
    assert draws.std() == pytest.approx(1.0, abs=4 * np.sqrt(0.5 / draws.size))
    assert results.proposal_scale is None


def test_a_sampler_refuses_options_it_does_not_take(with_toy):
    with pytest.raises(elbox.SettingsError, match="scale"):
        elbox.sample("normal_normal", jax.random.key(0), method="toy", scale=0.5, chains=2, warmup=10, draws=10,
                     progress=False)
