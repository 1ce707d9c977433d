"""Diffusion runs: train a recipe into a run folder, draw samples from it; the entry points that
``elbox diffusion train|elbo|sample`` call.

The pieces live by job: :mod:`~elbox.diffusion.recipes` (the default settings and the factories
of optimiser, schedule, network and decoder), :mod:`~elbox.diffusion.run_folder` (the run on
disk), :mod:`~elbox.diffusion.evaluate` (the bound of a trained run); this module trains and
samples, and gathers the names a user needs.

Every bound reported is in the data's ORIGINAL units: the bound computed on model units y minus
``log_jacobian_per_dim`` (see :class:`~elbox.diffusion.data.Dataset`).

Example:
    >>> train_run("gmm8", steps=30_000, seed=0, out_dir="runs/gmm8")
    >>> elbo_run("runs/gmm8")["bits_per_dim"]
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

from elbox import checks
from elbox.diffusion import vdm
from elbox.diffusion.data import Dataset, builtin_names, get_dataset
from elbox.diffusion.evaluate import BoundReport, elbo_run, evaluate_run
from elbox.diffusion.recipes import (
    DEFAULT_MODEL,
    DEFAULTS,
    MODELS,
    NETWORK_KEYS,
    bin_width_of,
    build_decoder,
    build_learning_rate,
    build_model,
    build_network,
    build_optimizer,
    build_schedule,
    initial_prior_logits,
    make_recipe,
    recipe_name,
)
from elbox.diffusion.run_folder import (
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    MODEL_FILE,
    RUN_FILE,
    TRACE_FILE,
    Run,
    RunStateError,
    has_checkpoints,
    is_trained,
    keys,
    load_run,
    load_trace,
    read_meta,
    remove_run,
    training_data,
    write_meta,
    write_trained,
)
from elbox.diffusion.train import CHECKPOINT_SECONDS
from elbox.errors import RunError, SettingsError

__all__ = [
    "BoundReport", "CHECKPOINT_DIR", "DEFAULTS", "DEFAULT_MODEL", "FORMAT_VERSION", "MODELS", "MODEL_FILE",
    "NETWORK_KEYS", "RUN_FILE", "TRACE_FILE", "Run", "RunError", "RunStateError", "build_decoder",
    "build_learning_rate", "build_model", "build_network", "build_optimizer", "build_schedule", "elbo_run",
    "evaluate_run", "initial_prior_logits", "load_run", "load_trace", "make_recipe", "recipe_name", "sample_run",
    "train_run", "training_data",
]


def _scaling(data: Dataset) -> dict:
    shift = data.shift
    return {
        "scale": float(data.scale),
        "shift": np.asarray(shift, np.float64).tolist() if np.ndim(shift) else float(shift),
        "log_jacobian_per_dim": float(data.log_jacobian_per_dim),
    }


def _data_spec(data_spec) -> str:
    data_spec = os.fspath(data_spec)
    if data_spec in builtin_names():
        return data_spec
    path = Path(data_spec)
    return str(path.resolve()) if path.exists() else data_spec


# -- train ---------------------------------------------------------------------------------------
def train_run(data_spec, steps: int | None, seed: int, out_dir, resume: bool = False, levels: int | None = None,
              progress=True, recipe_overrides: dict | None = None, overwrite: bool = False,
              checkpoint_seconds: float | None = CHECKPOINT_SECONDS, devices: int | None = None) -> dict:
    """Train the default recipe for ``data_spec`` and save the run in ``out_dir``.

    The folder changes only once training proceeds (the settings, the data and any checkpoint
    have been checked), and a finished run in it stays usable until its successor is written:
    a resume that fails or is interrupted leaves the trained run as it was.

    Args:
        data_spec: a built-in data set name or the path of a ``.npy``/``.csv`` file.
        steps: total optimisation steps (None: the recipe's).
        seed: seeds the data (sampling or the file's train/test split), the network's
            initial weights and the training draws.
        out_dir: the run's folder (created).
        resume: continue from the latest checkpoint in ``out_dir/checkpoints``; the data,
            levels, seed and recipe must be those of the run being resumed. A finished run asked
            for no more steps than it has done is returned as it is.
        levels: K for a file of integers 0..K-1 (None: continuous).
        progress: a progress bar.
        recipe_overrides: replaces entries of the default recipe (e.g. ``{"T": 50, "width": 16}``).
        overwrite: replace a run already in ``out_dir`` (its files are removed when the new
            training starts); without it, a folder holding a run is refused.
        checkpoint_seconds: also checkpoint whenever this many seconds of training have passed
            since the last checkpoint (see :func:`~elbox.diffusion.train.train`); None: every
            ``checkpoint_every`` steps only.
        devices: split each batch over this many devices (see
            :func:`~elbox.diffusion.train.training_devices` for the default). run.json records
            the count used (``"devices"``, ``"device_kind"``) for information; a resume may use
            another.

    Returns:
        the contents of run.json.

    Raises:
        RunStateError: ``out_dir`` holds a finished run (``kind="finished"``) or an unfinished
            run's checkpoints (``kind="in_progress"``), and neither ``resume`` nor ``overwrite``
            was asked.
        RunError: a resume with other settings than the run's, of a run whose checkpoints are
            gone or unreadable, or a damaged run.json.
    """
    from elbox.diffusion.train import train

    if resume and overwrite:
        raise SettingsError("resume continues the run in the folder and overwrite replaces it: ask for one of them")
    seed = checks.seed(seed)
    spec = _data_spec(data_spec)
    data = get_dataset(spec, levels=levels, seed=seed)
    recipe = make_recipe(spec, recipe_overrides)
    if steps is not None:
        recipe["steps"] = checks.count("steps", steps, 1)
    out_dir = checks.writable_folder(out_dir, "the run folder")
    stored = None if overwrite or not (out_dir / RUN_FILE).exists() else read_meta(out_dir)
    trained = not overwrite and is_trained(out_dir, stored)
    if resume:
        if stored is not None:
            _check_same_run(stored, out_dir, spec, data.levels, seed, recipe)
        if trained and stored is not None and int(stored.get("steps_done", 0)) >= recipe["steps"]:
            return stored  # nothing to do: the run has its steps
        if trained and not has_checkpoints(out_dir):
            raise RunError(
                f"the finished run in {out_dir} has no checkpoints left to continue from (its {CHECKPOINT_DIR} "
                "folder is gone), so it cannot be trained further; it is still usable as it is. Train a new run "
                "in another folder (or replace this one with overwrite=True)."
            )
    elif not overwrite:
        if trained:
            steps_done = (stored or {}).get("steps_done")
            what = f"{stored['data']}, {steps_done} steps" if stored is not None else f"a {MODEL_FILE}"
            raise RunStateError(
                "finished", f"{out_dir} already holds a finished run ({what})",
                "replace it with overwrite=True, or train into another folder", out_dir, stored,
            )
        if has_checkpoints(out_dir):
            raise RunStateError(
                "in_progress", f"{out_dir} already holds the checkpoints of a run that has not finished",
                "continue it with resume=True, replace it with overwrite=True, or train into another folder",
                out_dir, stored,
            )
    schedule = build_schedule(recipe)
    scaling = _scaling(data)
    key_init, key_train = keys(seed)
    logits = None
    if recipe["model"] == "vdm" and data.levels is not None:
        logits = initial_prior_logits(data.train, data.levels)
    network = build_model(key_init, recipe, data.dim, bin_width_of(data.levels, scaling), logits)
    decoder = build_decoder(data.levels, scaling, recipe["model"])
    meta = {
        "format_version": FORMAT_VERSION,
        "data": spec,
        "levels": data.levels,
        "seed": seed,
        "recipe": recipe,
        "dim": data.dim,
        "num_train": int(data.train.shape[0]),
        "num_test": int(data.test.shape[0]),
        "scaling": scaling,
        "true_entropy_per_dim": data.true_entropy_per_dim,
        "description": data.description,
        "status": "training",
        "steps_done": 0,
    }

    def on_start(start_step: int):
        # Everything has been checked: only now does the folder change. A finished run being
        # continued keeps its run.json and model until the new ones are written.
        if overwrite:
            remove_run(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if not trained:
            write_meta(out_dir, {**meta, "steps_done": int(start_step)})

    is_vdm = recipe["model"] == "vdm"
    result = train(
        key_train, data.to_model(data.train), schedule=schedule, network=network, steps=recipe["steps"],
        batch_size=recipe["batch_size"], optimizer=build_optimizer(recipe),
        loss="vdm" if is_vdm else recipe["loss"], variance="beta_tilde" if is_vdm else recipe["variance"],
        decoder=decoder, ema_decay=recipe["ema_decay"], checkpoint_every=recipe["checkpoint_every"],
        checkpoint_dir=out_dir / CHECKPOINT_DIR, resume=resume, progress=progress,
        checkpoint_seconds=checkpoint_seconds, on_start=on_start, devices=devices,
    )
    trace = result.loss_trace
    tail = trace[-max(1, trace.size // 10):] if trace.size else trace
    meta.update({
        "status": "trained",
        "steps_done": int(result.steps_done),
        "train_seconds": float(result.seconds),
        "steps_per_second": float(result.steps_done / result.seconds) if result.seconds > 0 else None,
        "final_loss": float(np.mean(tail)) if tail.size else None,
        # Where the last call trained (informational: a resume may run on other devices).
        "devices": int(result.devices),
        "device_kind": jax.devices()[0].device_kind,
    })
    return write_trained(out_dir, result.ema_network, trace, meta)


def _check_same_run(stored: dict, out_dir: Path, spec, levels, seed, recipe):
    # More steps may be asked of a resumed run, unless its step size decays over the steps.
    free = {"steps"} if recipe.get("learning_rate_decay", "constant") == "constant" else set()
    now = {"data": spec, "levels": levels, "seed": int(seed),
           "recipe": {k: v for k, v in recipe.items() if k not in free}}
    before = {"data": stored.get("data"), "levels": stored.get("levels"), "seed": stored.get("seed"),
              "recipe": {k: v for k, v in stored.get("recipe", {}).items() if k not in free}}
    different = [f"{k}: run {before[k]!r}, now {now[k]!r}" for k in now if before[k] != now[k]]
    if different:
        raise RunError(
            f"resuming continues the run saved in {out_dir}, but these settings differ: " + "; ".join(different)
            + ". Resume with the same settings (a run whose step size decays over its steps keeps its "
            "number of steps), or train into another folder."
        )


# -- samples -------------------------------------------------------------------------------------
def sample_run(out_dir, n: int, seed: int = 0) -> np.ndarray:
    """``n`` ancestral samples of the run's EMA network in the data's original units, shape (n, d)
    (for discrete data, integers 0..K-1 as floats)."""
    from elbox.diffusion.sample import sample

    n = checks.count("n", n, 1)
    seed = checks.seed(seed)
    run = load_run(out_dir)
    recipe = run.meta["recipe"]
    if recipe["model"] == "vdm":
        y = vdm.sample(jax.random.key(seed), run.network, n, run.dim, T=int(recipe["T"]), decoder=run.decoder)
    else:
        y = sample(jax.random.key(seed), run.network, run.schedule, n, run.dim,
                   variance=recipe["variance"], decoder=run.decoder)
    x = run.from_model(np.asarray(y))
    if run.meta["levels"] is not None:
        x = np.clip(np.rint(x), 0, run.meta["levels"] - 1)
    return x
