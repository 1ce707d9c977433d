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
from elbox import cpu_devices
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


def _counting_model():
    """A 3-d standard normal whose log density counts how often JAX traces it."""
    traces = []

    def log_density(u):
        traces.append(1)  # runs at trace time only: a compiled call does not run Python
        return -0.5 * jnp.sum(u["z"] ** 2)

    return elbox.Model.from_log_density(log_density, {"z": jnp.zeros(3)}, name="counting"), traces


@pytest.mark.parametrize("method", ["nuts", "mh"])
def test_a_second_sample_traces_nothing(method):
    model, traces = _counting_model()
    settings = dict(method=method, chains=2, warmup=30, draws=20, progress=False)
    first = elbox.sample(model, jax.random.key(0), **settings)
    traced = len(traces)
    assert traced > 0 and first.seconds["compile"] > 0
    second = elbox.sample(model, jax.random.key(1), **settings)
    assert len(traces) == traced, "the second call traced the log density again"
    assert second.seconds["compile"] == 0.0
    assert not np.array_equal(first.posterior["z"].values, second.posterior["z"].values)
    # Other settings are another program (the log density, traced once, is reused in it).
    assert elbox.sample(model, jax.random.key(1), **{**settings, "chains": 3}).seconds["compile"] > 0


def test_sequential_chains_match_vectorized_ones():
    # The same per-chain keys: the same draws up to floating-point rounding, which a short run
    # on a 1-d model keeps far below the posterior's scale (sd 0.45).
    settings = dict(chains=3, warmup=30, draws=10, progress=False)
    vectorized = elbox.sample("normal_normal", jax.random.key(4), **settings)
    sequential = elbox.sample("normal_normal", jax.random.key(4), chain_method="sequential", **settings)
    np.testing.assert_allclose(sequential.posterior["mu"].values, vectorized.posterior["mu"].values, atol=1e-4)


SHARDED = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, numpy as np, elbox
assert len(jax.devices()) == 2
settings = dict(chains=4, warmup=200, draws=100, progress=False)
one = elbox.sample("eight_schools", jax.random.key(0), devices=1, **settings)
two = elbox.sample("eight_schools", jax.random.key(0), **settings)
assert len(two.posterior["mu"].values) == 4
for name in ("mu", "tau", "theta_trans"):
    np.testing.assert_array_equal(one.posterior[name].values, two.posterior[name].values)
np.testing.assert_array_equal(one.tuning["step_size"], two.tuning["step_size"])
# One chain per device runs unbatched: the same draws up to rounding, which a short run on a
# 1-d model keeps far below the posterior's scale (sd 0.45).
short = dict(chains=2, warmup=30, draws=10, progress=False)
batched = elbox.sample("normal_normal", jax.random.key(4), devices=1, **short)
unbatched = elbox.sample("normal_normal", jax.random.key(4), **short)
assert unbatched.settings["devices"] == 2 and batched.settings["devices"] == 1
np.testing.assert_allclose(unbatched.posterior["mu"].values, batched.posterior["mu"].values, atol=1e-4)
try:
    elbox.sample("eight_schools", jax.random.key(0), chains=3, devices=2, **{k: v for k, v in settings.items()
                                                                              if k != "chains"})
except elbox.SettingsError as error:
    assert "multiple of the devices" in str(error)
else:
    raise AssertionError("3 chains over 2 devices should be refused")
print("ok")
"""


def test_chains_split_over_two_cpu_devices_give_the_same_draws(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("ok")


@pytest.mark.parametrize("method", ["meanfield", "fullrank"])
def test_a_second_fit_traces_nothing(method):
    model, traces = _counting_model()
    first = elbox.fit(model, jax.random.key(0), method=method, steps=300, eval_samples=64, progress=False)
    traced = len(traces)
    assert traced > 0 and first.seconds["compile"] > 0
    second = elbox.fit(model, jax.random.key(1), method=method, steps=300, eval_samples=64, progress=False)
    assert len(traces) == traced, "the second fit traced the log density again"
    assert second.seconds["compile"] == 0.0
    assert second.elbo.value != first.elbo.value


def test_the_elbox_command_keeps_compiled_programs_between_runs(tmp_path):
    """A second `elbox sample` in a new process loads the sampler from the compilation cache
    instead of compiling it; ELBOX_COMPILATION_CACHE=off keeps nothing."""
    import json
    import os
    import subprocess
    import sys

    def run(cache, name):
        environment = {**os.environ, "ELBOX_COMPILATION_CACHE": str(cache)}
        out = tmp_path / f"{name}.json"
        command = [sys.executable, "-m", "elbox.cli", "sample", "normal_normal", "--warmup", "100", "--draws", "100",
                   "--no-progress", "--json", str(out)]
        completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300,
                                   cwd=tmp_path)
        assert completed.returncode == 0, completed.stderr[-2000:]
        return json.loads(out.read_text())["seconds"]["compile"]

    folder = tmp_path / "cache"
    cold = run(folder, "cold")
    assert any(folder.iterdir())
    warm = run(folder, "warm")
    # Loading is several times faster than compiling; half leaves room for a noisy machine.
    assert warm < 0.5 * cold, (cold, warm)
    off = tmp_path / "off"
    run("off", "off")
    assert not off.exists()


CPU_DEVICES = """
import os, sys
import elbox, jax
from elbox import cpu_devices
expected = {"default": cpu_devices.default_count(), "off": 1, "3": 3, "chosen": 2, "late": 1}[sys.argv[1]]
assert len(jax.devices()) == expected, (sys.argv[1], jax.devices())
print("ok")
"""


@pytest.mark.parametrize("case", ["default", "off", "3", "chosen", "late"])
def test_elbox_asks_for_cpu_devices_unless_the_user_chose(tmp_path, case):
    """Importing elbox gives max(cores, 4) CPU devices; ELBOX_CPU_DEVICES=off or a number, a device
    count in XLA_FLAGS, and a JAX that has already run are respected."""
    import os
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ELBOX_CPU_DEVICES")}
    if case in ("off", "3"):
        environment["ELBOX_CPU_DEVICES"] = case
    if case == "chosen":
        environment["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    script = tmp_path / "devices.py"
    # "late": JAX runs something before elbox is imported; its single device stays.
    script.write_text(("import jax\njax.numpy.zeros(1)\n" if case == "late" else "") + CPU_DEVICES)
    completed = subprocess.run([sys.executable, str(script), case], capture_output=True, text=True, timeout=120,
                               env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("ok")
    assert cpu_devices.default_count() >= cpu_devices.MIN_CPU_DEVICES
