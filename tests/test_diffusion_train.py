"""Diffusion training: exact resumption from checkpoints, the bound falling with training, the
denoisers' shapes and initial outputs, and a clear error for a non-finite loss.

Statistical checks use fixed keys and a z-threshold on the combined standard error.
"""

import json
import math
import os
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Z

from elbox.diffusion.elbo import bound_estimate
from elbox.diffusion.networks import ConvDenoiser, MLPDenoiser, as_eps_fn, fourier_features
from elbox.diffusion.schedules import cosine_schedule
from elbox.diffusion.train import TrainResult, ema_update, train
from elbox.errors import DataError, FittingError, RunError, SettingsError


def mixture(n, seed=0):
    """n points from a fixed two-component Gaussian mixture in 2-D."""
    rng = np.random.default_rng(seed)
    component = rng.integers(0, 2, n)
    means = np.array([[-1.0, 0.5], [1.0, -0.5]])
    scales = np.array([0.2, 0.3])
    return (means[component] + scales[component, None] * rng.normal(size=(n, 2))).astype(np.float32)


def assert_same_leaves(a, b):
    leaves_a = jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array))
    leaves_b = jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array))
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


TINY = dict(schedule=cosine_schedule(20), batch_size=64, learning_rate=3e-3, ema_decay=0.9, progress=False)


@pytest.fixture(scope="module")
def tiny():
    return mixture(256), MLPDenoiser(jax.random.key(0), 2, width=16, depth=1)


@pytest.fixture(scope="module")
def whole(tiny, tmp_path_factory):
    """60 uninterrupted steps with key 1, checkpoints every 20 (steps 40 and 60 are kept)."""
    data, net = tiny
    folder = tmp_path_factory.mktemp("whole")
    return train(jax.random.key(1), data, network=net, steps=60, checkpoint_every=20, checkpoint_dir=folder,
                 **TINY), folder


def test_resume_reproduces_the_uninterrupted_run(tiny, whole, tmp_path):
    data, net = tiny
    key = jax.random.key(1)
    whole, _ = whole
    assert isinstance(whole, TrainResult) and whole.steps_done == 60 and whole.loss_trace.shape == (60,)

    # "Interrupted" after 40 steps (two checkpoints), then resumed to the total of 60.
    first = train(key, data, network=net, steps=40, checkpoint_every=20, checkpoint_dir=tmp_path / "split", **TINY)
    assert first.steps_done == 40
    names = sorted(os.listdir(tmp_path / "split"))
    assert names == ["step_000000020.eqx", "step_000000020.json", "step_000000040.eqx", "step_000000040.json"]
    meta = json.loads((tmp_path / "split" / "step_000000040.json").read_text())
    assert meta["step"] == 40 and meta["loss"] == "vlb_importance"

    resumed = train(key, data, network=net, steps=60, checkpoint_every=20, checkpoint_dir=tmp_path / "split",
                    resume=True, **TINY)
    assert resumed.steps_done == 60
    assert_same_leaves(resumed.network, whole.network)
    assert_same_leaves(resumed.ema_network, whole.ema_network)
    np.testing.assert_array_equal(resumed.loss_trace, whole.loss_trace)
    assert not np.array_equal(np.asarray(whole.network.final.weight), np.asarray(net.final.weight))

    # The checkpoint belongs to this key and these settings: anything else is refused.
    with pytest.raises(SettingsError, match="another key"):
        train(jax.random.key(2), data, network=net, steps=60, checkpoint_dir=tmp_path / "split", resume=True, **TINY)
    with pytest.raises(SettingsError, match="batch_size"):
        train(key, data, network=net, steps=60, checkpoint_dir=tmp_path / "split", resume=True,
              **{**TINY, "batch_size": 32})


def test_chunking_and_progress_do_not_change_the_result(tiny, tmp_path):
    data, net = tiny
    calls = []
    a = train(jax.random.key(3), data, network=net, steps=30, **{**TINY, "progress": lambda *c: calls.append(c)})
    b = train(jax.random.key(3), data, network=net, steps=30, chunk_size=7, **TINY)
    assert_same_leaves(a.network, b.network)
    assert_same_leaves(a.ema_network, b.ema_network)
    assert calls and calls[-1][1:] == (30, 30)
    assert os.listdir(tmp_path) == []  # nothing written without a checkpoint_dir


def test_training_lowers_the_bound():
    """On 2-D Gaussian data, the test-set bound (sum over all T = 50 steps) after 300 steps is
    lower than at initialisation by more than Z combined standard errors."""
    rng = np.random.default_rng(1)
    scale = np.array([[0.5, 0.0], [0.4, 0.3]])
    shift = np.array([1.0, -0.5])
    train_x = (rng.normal(size=(2048, 2)) @ scale.T + shift).astype(np.float32)
    test_x = (rng.normal(size=(500, 2)) @ scale.T + shift).astype(np.float32)
    schedule = cosine_schedule(50)
    net = MLPDenoiser(jax.random.key(0), 2, width=32, depth=2)

    before = bound_estimate(jax.random.key(10), schedule, as_eps_fn(net, 50), test_x).nats
    result = train(jax.random.key(1), train_x, schedule=schedule, network=net, steps=300, batch_size=128,
                   learning_rate=3e-3, loss="vlb_importance", ema_decay=0.95, progress=False)
    after = bound_estimate(jax.random.key(11), schedule, as_eps_fn(result.network, 50), test_x).nats
    z = (before.value - after.value) / math.hypot(before.stderr, after.stderr)
    assert z > Z, (before, after)
    assert np.all(np.isfinite(result.loss_trace))


def test_learned_variance_and_the_conv_denoiser_train():
    rng = np.random.default_rng(2)
    images = np.clip(rng.normal(size=(64, 64)) * 0.3, -1, 1).astype(np.float32)
    net = ConvDenoiser(jax.random.key(0), channels=8, num_layers=1, learn_variance=True)
    result = train(jax.random.key(1), images, schedule=cosine_schedule(10), network=net, steps=5, batch_size=8,
                   loss="hybrid", variance="learned_range", progress=False)
    assert result.steps_done == 5 and np.all(np.isfinite(result.loss_trace))
    with pytest.raises(SettingsError, match="learn_variance=True"):
        train(jax.random.key(1), mixture(16), schedule=cosine_schedule(10), network=MLPDenoiser(jax.random.key(0), 2),
              steps=1, variance="learned_range", progress=False)
    with pytest.raises(SettingsError, match="Unknown loss"):
        train(jax.random.key(1), mixture(16), schedule=cosine_schedule(10), network=MLPDenoiser(jax.random.key(0), 2),
              steps=1, loss="elbo", progress=False)


@pytest.mark.parametrize("learn_variance", [False, True])
def test_network_shapes_and_initial_output(learn_variance):
    T = 100
    xs = jax.random.normal(jax.random.key(0), (32, 2))
    ts = jnp.arange(1, 33) * 3
    mlp = MLPDenoiser(jax.random.key(1), 2, width=64, depth=2, learn_variance=learn_variance)
    eps, v = jax.jit(jax.vmap(as_eps_fn(mlp, T)))(xs, ts)
    assert eps.shape == (32, 2) and eps.dtype == xs.dtype
    assert float(jnp.max(jnp.abs(eps))) < 0.05  # initial eps_hat near 0

    images = jax.random.normal(jax.random.key(2), (4, 64))
    conv = ConvDenoiser(jax.random.key(3), channels=8, num_layers=2, learn_variance=learn_variance)
    eps_c, v_c = jax.jit(jax.vmap(lambda x, t: conv(x, t, T)))(images, jnp.array([1, 10, 50, 100]))
    assert eps_c.shape == (4, 64)
    assert float(jnp.max(jnp.abs(eps_c))) < 0.05
    if learn_variance:
        assert v.shape == (32, 2) and v_c.shape == (4, 64)
        # Pushed far outside, the variance output stays in [-1, 1].
        big = eqx.tree_at(lambda n: n.final.weight, mlp, mlp.final.weight * 1e4)
        _, v_big = jax.jit(jax.vmap(as_eps_fn(big, T)))(10 * xs, ts)
        assert float(jnp.max(jnp.abs(v_big))) <= 1.0 and float(jnp.max(jnp.abs(v_big))) > 0.9
    else:
        assert v is None and v_c is None
    with pytest.raises(DataError, match="shape"):
        mlp(jnp.zeros(3), 1, T)

    features = fourier_features(jnp.array(7), T, 16)
    assert features.shape == (32,)
    np.testing.assert_allclose(np.asarray(features[:16]) ** 2 + np.asarray(features[16:]) ** 2, 1.0, rtol=1e-5)


def test_ema_update_is_the_moving_average():
    ema = {"w": jnp.array([1.0, 2.0]), "static": None}
    params = {"w": jnp.array([3.0, 0.0]), "static": None}
    out = ema_update(ema, params, 0.75)
    np.testing.assert_allclose(np.asarray(out["w"]), [1.5, 1.5])
    assert out["static"] is None


def test_non_finite_loss_names_the_step(tiny, tmp_path):
    data, net = tiny
    with pytest.raises(FittingError, match=r"non-finite at step \d+ .*smaller learning rate"):
        train(jax.random.key(1), data, network=net, steps=40, checkpoint_every=100, checkpoint_dir=tmp_path,
              **{**TINY, "learning_rate": 1e10})
    assert os.listdir(tmp_path) == []  # no checkpoint of a diverged state


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tiny, whole, tmp_path):
    data, net = tiny
    key = jax.random.key(1)
    whole, written = whole
    folder = tmp_path / "ckpt"
    shutil.copytree(written, folder)
    newest = folder / "step_000000060.eqx"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.warns(RuntimeWarning, match=r"step_000000060\.eqx cannot be read.*step 40"):
        resumed = train(key, data, network=net, steps=60, checkpoint_every=20, checkpoint_dir=folder, resume=True,
                        **TINY)
    assert_same_leaves(resumed.ema_network, whole.ema_network)
    np.testing.assert_array_equal(resumed.loss_trace, whole.loss_trace)
    assert sorted(os.listdir(folder))[-2:] == ["step_000000060.eqx", "step_000000060.json"]

    # A checkpoint whose bytes changed but still parse is caught by the checksum recorded beside it.
    changed = folder / "step_000000060.eqx"
    content = bytearray(changed.read_bytes())
    content[-3] ^= 0xFF
    changed.write_bytes(bytes(content))
    with pytest.warns(RuntimeWarning, match="sha256"):
        again = train(key, data, network=net, steps=40, checkpoint_every=20, checkpoint_dir=folder, resume=True,
                      **TINY)
    assert again.steps_done == 40
    np.testing.assert_array_equal(again.loss_trace, whole.loss_trace[:40])

    # None readable: a RunError, not a traceback from the deserialiser.
    for path in folder.glob("step_*.eqx"):
        path.write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning), pytest.raises(RunError, match="None of the 2 checkpoint"):
        train(key, data, network=net, steps=80, checkpoint_every=20, checkpoint_dir=folder, resume=True, **TINY)


def test_checkpoints_by_wall_time_leave_the_result_unchanged(tiny, whole, tmp_path):
    data, net = tiny
    whole, _ = whole
    seen = []

    def progress(phase, done, total):  # after every chunk: which checkpoints exist now
        seen.append(sorted(p.name for p in tmp_path.glob("step_*.json")))

    timed = train(jax.random.key(1), data, network=net, steps=60, checkpoint_every=1000, checkpoint_dir=tmp_path,
                  chunk_size=10, checkpoint_seconds=1e-9, **{**TINY, "progress": progress})
    # Every chunk of 10 steps ends past the (tiny) time limit: a checkpoint after each of them.
    assert seen[1] == ["step_000000010.json"] and seen[2] == ["step_000000010.json", "step_000000020.json"]
    assert seen[-1] == ["step_000000040.json", "step_000000050.json"]
    assert_same_leaves(timed.network, whole.network)
    assert_same_leaves(timed.ema_network, whole.ema_network)
    np.testing.assert_array_equal(timed.loss_trace, whole.loss_trace)


def test_counts_and_rates_follow_the_shared_rules(tiny):
    data, net = tiny
    for bad in ({"steps": True}, {"batch_size": True}, {"checkpoint_every": True, "checkpoint_dir": "x"},
                {"steps": 2.0}, {"ema_decay": 1.0}, {"learning_rate": -1.0}, {"checkpoint_seconds": 0.0}):
        with pytest.raises(SettingsError):
            train(jax.random.key(0), data, network=net, **{**TINY, "steps": 1, **bad})
