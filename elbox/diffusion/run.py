"""Diffusion runs on disk: default recipes per data set, train → save → bound → samples.

The glue the ``elbox diffusion`` command calls. A run lives in one folder:

    DIR/run.json          everything needed to rebuild the model: the data spec, levels, seed,
                          the recipe, the steps done, the data scaling (y = scale x + shift)
    DIR/model.eqx         the EMA network (``equinox.tree_serialise_leaves``)
    DIR/loss_trace.npy    the training loss at every step
    DIR/checkpoints/      the training checkpoints (resume from these with ``resume=True``)

Every bound reported here is in the data's ORIGINAL units: the bound computed on model units y
minus ``log_jacobian_per_dim`` (see :class:`~elbox.diffusion.data.Dataset`).

Example:
    >>> train_run("gmm8", steps=30_000, seed=0, out_dir="runs/gmm8")
    >>> elbo_run("runs/gmm8")["bits_per_dim"]
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np
import optax

from elbox.diffusion.data import (
    Dataset,
    builtin_names,
    check_width,
    exact_log_density,
    get_dataset,
    independent_categorical_baseline_bits_per_dim,
    read_array,
    uniform_bits_per_dim,
)
from elbox.diffusion import vdm
from elbox.diffusion.decoders import DiscretizedGaussian, Gaussian, GridPosterior
from elbox.diffusion.elbo import bound_estimate
from elbox.diffusion.networks import ConvDenoiser, MLPDenoiser, as_eps_fn
from elbox.diffusion.schedules import cosine_schedule, linear_schedule
from elbox.errors import DataError, ElboxError

FORMAT_VERSION = 1
RUN_FILE = "run.json"
MODEL_FILE = "model.eqx"
TRACE_FILE = "loss_trace.npy"
CHECKPOINT_DIR = "checkpoints"

_MLP_2D = {"kind": "mlp", "width": 256, "depth": 3, "fourier_features": 16}

# Two models. "vdm": the continuous-time bound with a learned schedule (Kingma et al. 2021),
# trained on the bound itself; its discrete-time bound with T steps is reported beside it and T
# is its sampler's number of steps. "ddpm": T discrete steps on a fixed cosine schedule,
# trained on L_hybrid with improved DDPM's learned variance range.
#
# Measured on gmm8 on a 2-core CPU (test bound, nats/dim; entropy 0.156): vdm with the MLP
# 256 x 3, batch 512, Adam 1e-3 with cosine decay, 20,000 steps in 75 s: 0.178 +- 0.009 (gap to
# the test set's -log p 0.021 +- 0.008). ddpm hybrid/learned_range, 27,000 steps in 91 s:
# 0.344 +- 0.030; ddpm vlb_importance, 9,000 steps in 136 s: 1.84 +- 0.02. At about 265 vdm
# steps/s there, 80,000 steps take about 5 minutes.
_VDM_2D = {
    "model": "vdm", "schedule": "learned", "gamma_0": -13.3, "gamma_1": 5.0, "T": 1000, "network": _MLP_2D,
    "batch_size": 512, "learning_rate": 1e-3, "learning_rate_decay": "cosine", "weight_decay": 0.0,
    "steps": 80_000, "ema_decay": 0.999, "checkpoint_every": 5_000,
}
_DDPM_2D = {
    "model": "ddpm", "T": 1000, "schedule": "cosine", "network": _MLP_2D, "loss": "hybrid",
    "variance": "learned_range", "batch_size": 512, "learning_rate": 1e-3, "learning_rate_decay": "constant",
    "weight_decay": 0.0, "steps": 100_000, "ema_decay": 0.999, "checkpoint_every": 5_000,
}
# Digits (1,617 training images of 64 pixels on 17 levels) overfit quickly: weight decay, and a
# short run. The vdm decoder is a GridPosterior whose per-pixel prior starts at the training
# frequencies, so the model contains the independent categorical baseline (the limit of a large
# gamma_0) and the diffusion adds the dependence between pixels; the grid features let the MLP
# see where x_t lies within its bin. Measured on a 2-core CPU, 8,000 steps in 62 s: test bound
# 2.173 +- 0.016 bits/dim against the categorical baseline's 2.366 (without the decoder's prior
# 2.53, without weight decay 2.6-2.7 with train and test 0.2-0.7 bits/dim apart).
_DIGITS_NETWORK = {"kind": "mlp", "width": 512, "depth": 3, "fourier_features": 16, "grid_features": [1.0]}
_VDM_DIGITS = {**_VDM_2D, "network": _DIGITS_NETWORK, "gamma_0": -7.0, "batch_size": 256, "weight_decay": 0.1,
               "steps": 8_000, "checkpoint_every": 1_000}
_DDPM_DIGITS = {**_DDPM_2D, "network": _DIGITS_NETWORK, "batch_size": 256, "weight_decay": 0.1, "steps": 8_000,
                "checkpoint_every": 1_000}

MODELS = ("vdm", "ddpm")
DEFAULT_MODEL = "vdm"
DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    **{name: {"vdm": _VDM_2D, "ddpm": _DDPM_2D} for name in ("gmm8", "checkerboard", "moons", "gmm8_quantized", "file")},
    "digits": {"vdm": _VDM_DIGITS, "ddpm": _DDPM_DIGITS},
}
NETWORK_KEYS = {"kind", "width", "depth", "channels", "num_layers", "fourier_features", "grid_features"}
DISCRETE_EVAL_MAX_EXAMPLES = 1000  # each costs T network evaluations
CONTINUOUS_T_SAMPLES = 128

class RunError(ElboxError):
    """A run folder cannot be used (no run in it, a damaged file, settings that do not match)."""


class Run(NamedTuple):
    """A saved run, rebuilt by :func:`load_run`.

    Attributes:
        meta: the contents of run.json.
        network: the EMA network (a denoiser, or a :class:`~elbox.diffusion.vdm.VDM`).
        schedule: its noise schedule (float64; None for a vdm, whose schedule is in ``network``).
        decoder: ``Gaussian()`` or ``DiscretizedGaussian(...)`` in model units.
        out_dir: the run's folder.
    """

    meta: dict
    network: Any
    schedule: Any
    decoder: Any
    out_dir: Path

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def to_model(self, x):
        """y = scale x + shift, the stored scaling of the training data."""
        return np.asarray(x, np.float32) * self.meta["scaling"]["scale"] + np.asarray(self.meta["scaling"]["shift"], np.float32)

    def from_model(self, y):
        """x = (y - shift) / scale."""
        return (np.asarray(y, np.float64) - np.asarray(self.meta["scaling"]["shift"], np.float64)) / self.meta["scaling"]["scale"]


# -- recipes -----------------------------------------------------------------------------------
def recipe_name(data_spec: str) -> str:
    """The key of :data:`DEFAULTS` for a data spec: the built-in name, or ``"file"``."""
    return data_spec if data_spec in DEFAULTS and data_spec != "file" else "file"


def make_recipe(data_spec: str, overrides: dict | None = None) -> dict:
    """The default recipe for ``data_spec`` with ``overrides`` applied: ``model`` (``"vdm"`` or
    ``"ddpm"``) picks the recipe, ``network`` entries are merged into the network's settings
    (``width``/``depth``/``channels``/``num_layers`` may also be given at the top level), and any
    other entry replaces the recipe's.

    Raises:
        RunError: an unknown model or setting.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    model = overrides.pop("model", DEFAULT_MODEL)
    if model not in MODELS:
        raise RunError(f"unknown model {model!r}; choose {' or '.join(MODELS)}")
    recipe = copy.deepcopy(DEFAULTS[recipe_name(data_spec)][model])
    keys = set(recipe)
    for key, value in overrides.items():
        if key == "network":
            recipe["network"].update(value)
        elif key in NETWORK_KEYS - {"kind"}:
            recipe["network"][key] = value
        elif key in keys:
            recipe[key] = value
        else:
            raise RunError(
                f"unknown {model} recipe setting {key!r}; settings are {', '.join(sorted(keys))} and the "
                f"network's {', '.join(sorted(NETWORK_KEYS))}"
            )
    return recipe


def build_optimizer(recipe: dict):
    """Adam (AdamW with the recipe's ``weight_decay`` > 0) with :func:`build_learning_rate`."""
    rate = build_learning_rate(recipe)
    decay = float(recipe.get("weight_decay", 0.0))
    return optax.adamw(rate, weight_decay=decay) if decay > 0 else optax.adam(rate)


def build_learning_rate(recipe: dict):
    """Adam's step size: constant, or a cosine decay from ``learning_rate`` to 1% of it over the
    recipe's steps (a run's last steps then average out the gradient noise)."""
    rate, decay = float(recipe["learning_rate"]), recipe.get("learning_rate_decay", "constant")
    if decay == "constant":
        return rate
    if decay == "cosine":
        return optax.cosine_decay_schedule(rate, int(recipe["steps"]), alpha=0.01)
    raise RunError(f"unknown learning_rate_decay {decay!r}; choose constant or cosine")


def build_schedule(recipe: dict):
    """The recipe's noise schedule (``cosine`` or ``linear``) with T steps; None for a vdm, whose
    schedule is learned with the network."""
    if recipe["model"] == "vdm":
        return None
    if recipe["schedule"] == "cosine":
        return cosine_schedule(recipe["T"])
    if recipe["schedule"] == "linear":
        try:
            return linear_schedule(recipe["T"])
        except ValueError as error:
            raise RunError(str(error)) from None
    raise RunError(f"unknown schedule {recipe['schedule']!r}; choose cosine or linear")


def build_model(key, recipe: dict, dim: int, bin_width: float | None = None, prior_logits=None):
    """The recipe's network: a denoiser (``ddpm``) or a :class:`~elbox.diffusion.vdm.VDM` holding
    a denoiser and its learned schedule (``vdm``). ``bin_width``: the width of the data's bins
    in model units (discrete data), else None; ``prior_logits``: a vdm's initial decoder prior
    for discrete data (shape (d, K)), else None."""
    if recipe["model"] == "ddpm":
        return build_network(key, recipe, dim, bin_width)
    if recipe["schedule"] not in vdm.SCHEDULES:
        raise RunError(f"unknown vdm schedule {recipe['schedule']!r}; choose {' or '.join(vdm.SCHEDULES)}")
    key_denoiser, key_schedule = jax.random.split(key)
    try:
        return vdm.VDM(key_schedule, build_network(key_denoiser, recipe, dim, bin_width), recipe["gamma_0"], recipe["gamma_1"],
                       learn_schedule=recipe["schedule"] == "learned", prior_logits=prior_logits)
    except ValueError as error:
        raise RunError(str(error)) from None


def build_network(key, recipe: dict, dim: int, bin_width: float | None = None):
    """The recipe's denoiser for examples of length ``dim``. An MLP's ``grid_features`` (multiples
    m of 2 pi / bin_width) become its input frequencies for discrete data (ignored for
    continuous data)."""
    net = recipe["network"]
    learn_variance = recipe.get("variance") == "learned_range"
    if net["kind"] == "mlp":
        frequencies = () if bin_width is None else tuple(m * 2 * math.pi / bin_width for m in net.get("grid_features", ()))
        return MLPDenoiser(key, dim, width=net["width"], depth=net["depth"], fourier_features=net.get("fourier_features", 16),
                           learn_variance=learn_variance, input_frequencies=frequencies)
    if net["kind"] == "conv":
        size = math.isqrt(dim)
        if size * size != dim:
            raise RunError(f"the convolutional denoiser needs square images; data with {dim} columns are not")
        return ConvDenoiser(key, image_size=size, channels=net["channels"], num_layers=net["num_layers"],
                            fourier_features=net.get("fourier_features", 16), learn_variance=learn_variance)
    raise RunError(f"unknown network kind {net['kind']!r}; choose mlp or conv")


def _bin_width(levels, scaling: dict) -> float | None:
    return None if levels is None else float(scaling["scale"])


def build_decoder(levels, scaling: dict, model: str = "ddpm"):
    """``Gaussian()`` for continuous data; for K levels, in model units, ``DiscretizedGaussian``
    (ddpm) or ``GridPosterior`` (vdm) over the bins."""
    if levels is None:
        return Gaussian()
    scale = float(scaling["scale"])
    low = float(np.asarray(scaling["shift"]).reshape(-1)[0])
    bins = (scale, low, scale * (levels - 1) + low)
    return GridPosterior(*bins) if model == "vdm" else DiscretizedGaussian(*bins)


def initial_prior_logits(train: np.ndarray, levels: int) -> np.ndarray:
    """log of the per-column level frequencies of the training data with half a count added to
    every level, shape (d, K): the independent categorical model a vdm's GridPosterior starts from."""
    codes = np.clip(np.rint(np.asarray(train)), 0, levels - 1).astype(np.int64)
    counts = np.stack([np.bincount(column, minlength=levels) for column in codes.T]).astype(np.float64)
    return np.log((counts + 0.5) / (counts.sum(axis=1, keepdims=True) + 0.5 * levels))


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


def _keys(seed: int):
    key_init, key_train = jax.random.split(jax.random.key(int(seed)))
    return key_init, key_train


def _write_json(path: Path, payload: dict):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


# -- train ---------------------------------------------------------------------------------------
def train_run(data_spec, steps: int | None, seed: int, out_dir, resume: bool = False, levels: int | None = None,
              progress=True, recipe_overrides: dict | None = None) -> dict:
    """Train the default recipe for ``data_spec`` and save the run in ``out_dir``.

    Args:
        data_spec: a built-in data set name or the path of a ``.npy``/``.csv`` file.
        steps: total optimisation steps (None: the recipe's).
        seed: seeds the data (sampling or the file's train/test split), the network's
            initial weights and the training draws.
        out_dir: the run's folder (created).
        resume: continue from the latest checkpoint in ``out_dir/checkpoints``; the data,
            levels, seed and recipe must be those of the run being resumed.
        levels: K for a file of integers 0..K-1 (None: continuous).
        progress: a progress bar.
        recipe_overrides: replaces entries of the default recipe (e.g. ``{"T": 50, "width": 16}``).

    Returns:
        the contents of run.json.
    """
    from elbox.diffusion.train import train

    spec = _data_spec(data_spec)
    data = get_dataset(spec, levels=levels, seed=int(seed))
    recipe = make_recipe(spec, recipe_overrides)
    if steps is not None:
        recipe["steps"] = int(steps)
    out_dir = Path(out_dir)
    run_file = out_dir / RUN_FILE
    if resume and run_file.exists():
        _check_same_run(_read_meta(out_dir), spec, data.levels, seed, recipe)
    elif not resume and (out_dir / CHECKPOINT_DIR).is_dir() and any((out_dir / CHECKPOINT_DIR).iterdir()):
        raise RunError(
            f"{out_dir} already holds a run's checkpoints; pass --resume to continue it, or choose another --out folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    schedule = build_schedule(recipe)
    scaling = _scaling(data)
    key_init, key_train = _keys(seed)
    logits = None
    if recipe["model"] == "vdm" and data.levels is not None:
        logits = initial_prior_logits(data.train, data.levels)
    network = build_model(key_init, recipe, data.dim, _bin_width(data.levels, scaling), logits)
    decoder = build_decoder(data.levels, scaling, recipe["model"])
    meta = {
        "format_version": FORMAT_VERSION,
        "data": spec,
        "levels": data.levels,
        "seed": int(seed),
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
    _write_json(run_file, meta)
    is_vdm = recipe["model"] == "vdm"
    result = train(
        key_train, data.to_model(data.train), schedule=schedule, network=network, steps=recipe["steps"],
        batch_size=recipe["batch_size"], optimizer=build_optimizer(recipe),
        loss="vdm" if is_vdm else recipe["loss"], variance="beta_tilde" if is_vdm else recipe["variance"], decoder=decoder, ema_decay=recipe["ema_decay"],
        checkpoint_every=recipe["checkpoint_every"], checkpoint_dir=out_dir / CHECKPOINT_DIR, resume=resume,
        progress=progress,
    )
    eqx.tree_serialise_leaves(out_dir / MODEL_FILE, result.ema_network)
    np.save(out_dir / TRACE_FILE, result.loss_trace)
    trace = result.loss_trace
    tail = trace[-max(1, trace.size // 10):] if trace.size else trace
    meta.update({
        "status": "trained",
        "steps_done": int(result.steps_done),
        "train_seconds": float(result.seconds),
        "steps_per_second": float(result.steps_done / result.seconds) if result.seconds > 0 else None,
        "final_loss": float(np.mean(tail)) if tail.size else None,
    })
    _write_json(run_file, meta)
    return meta


def _check_same_run(stored: dict, spec, levels, seed, recipe):
    # More steps may be asked of a resumed run, unless its step size decays over the steps.
    free = {"steps"} if recipe.get("learning_rate_decay", "constant") == "constant" else set()
    now = {"data": spec, "levels": levels, "seed": int(seed),
           "recipe": {k: v for k, v in recipe.items() if k not in free}}
    before = {"data": stored.get("data"), "levels": stored.get("levels"), "seed": stored.get("seed"),
              "recipe": {k: v for k, v in stored.get("recipe", {}).items() if k not in free}}
    different = [f"{k}: run {before[k]!r}, now {now[k]!r}" for k in now if before[k] != now[k]]
    if different:
        raise RunError(
            "--resume continues the run saved in the folder, but these settings differ: " + "; ".join(different)
            + ". Resume with the same settings (a run whose step size decays over its steps keeps its "
            "number of steps), or train into another folder."
        )


# -- load ----------------------------------------------------------------------------------------
def _read_meta(out_dir: Path) -> dict:
    run_file = Path(out_dir) / RUN_FILE
    if not Path(out_dir).is_dir():
        raise RunError(f"no run folder at {out_dir}; train one with `elbox diffusion train --data NAME --out {out_dir}`")
    if not run_file.exists():
        raise RunError(
            f"{out_dir} holds no diffusion run (no {RUN_FILE}); train one with "
            f"`elbox diffusion train --data NAME --out {out_dir}`"
        )
    try:
        meta = json.loads(run_file.read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"{run_file} could not be read as JSON ({error}); the run folder is damaged") from None
    missing = {"data", "levels", "seed", "recipe", "dim", "scaling"} - set(meta)
    if missing:
        raise RunError(f"{run_file} lacks {', '.join(sorted(missing))}; it was not written by elbox diffusion train")
    return meta


def load_run(out_dir) -> Run:
    """The run saved in ``out_dir`` by :func:`train_run`: its run.json and EMA network.

    Raises:
        RunError: no run in the folder, a run still training (or interrupted: resume it), or a
            damaged model file.
    """
    out_dir = Path(out_dir)
    meta = _read_meta(out_dir)
    model_file = out_dir / MODEL_FILE
    if meta.get("status") != "trained" or not model_file.exists():
        raise RunError(
            f"the run in {out_dir} has not finished training (no {MODEL_FILE}); finish it with "
            f"`elbox diffusion train --data {meta['data']} --out {out_dir} --resume`"
        )
    recipe = meta["recipe"]
    logits = None
    if recipe["model"] == "vdm" and meta["levels"] is not None:
        logits = np.zeros((meta["dim"], meta["levels"]))
    like = build_model(_keys(meta["seed"])[0], recipe, meta["dim"], _bin_width(meta["levels"], meta["scaling"]), logits)
    try:
        network = eqx.tree_deserialise_leaves(model_file, like)
    except Exception as error:  # a truncated or foreign file
        raise RunError(f"{model_file} could not be read as this run's network ({type(error).__name__}: {error})") from None
    return Run(meta, network, build_schedule(recipe), build_decoder(meta["levels"], meta["scaling"], recipe["model"]), out_dir)


def load_trace(out_dir) -> np.ndarray:
    """The training loss per step of the run in ``out_dir``."""
    return np.load(Path(out_dir) / TRACE_FILE)


# -- bound ---------------------------------------------------------------------------------------
def _evaluation_data(run: Run, data_path):
    """(name, rows in original units, the Dataset of the training data or None, the name of the
    built-in data set the rows are the test set of, or None)."""
    meta = run.meta
    if data_path is None:
        data = _dataset_of(meta)
        return meta["data"], data.test, data, meta["data"] if meta["data"] in builtin_names() else None
    spec = os.fspath(data_path)
    if spec in builtin_names():
        data = get_dataset(spec, seed=meta["seed"])
        if data.levels != meta["levels"]:
            raise DataError(f"{spec} has levels {data.levels}, but the run was trained with levels {meta['levels']}")
        check_width(data.test, meta["dim"], what=f"the evaluation data {spec}")
        return spec, data.test, None, spec
    rows = read_array(spec, levels=meta["levels"]).astype(np.float32)  # all checks: file, NaN, levels
    check_width(rows, meta["dim"], what=f"the evaluation data {spec}")
    return spec, rows, None, None


def _terms(estimate, log_jacobian: float) -> dict:
    d = estimate.num_dims
    return {
        "reconstruction": estimate.reconstruction / d - log_jacobian,
        "denoising": estimate.denoising / d,
        "prior": estimate.prior / d,
    }


def elbo_run(out_dir, data_path=None, seed: int = 0, max_examples: int | None = None,
             batch_size: int | None = None, num_t_samples: int = CONTINUOUS_T_SAMPLES) -> dict:
    """The bound on -log p(x) per dimension of the run's EMA network on its test set (or on the
    file ``data_path``, same width, same scaling as training), in the data's ORIGINAL units.

    A ``ddpm`` run's bound is the sum of all its T steps' terms. A ``vdm`` run's bound is the
    continuous-time bound (``num_t_samples`` stratified t per example); beside it,
    ``discrete_time`` holds the same model's bound with the recipe's T steps.

    Returns:
        a JSON-ready dict: ``data``, ``model``, ``bound`` (``"continuous time"`` or ``"discrete
        time"``), ``T`` (the discrete steps summed over; None for the continuous-time bound),
        ``num_examples``, ``nats_per_dim``, ``bits_per_dim``, ``stderr`` (of nats_per_dim),
        ``stderr_bits``, ``terms`` (``reconstruction``, ``denoising``, ``prior``, nats per dim;
        they add up to nats_per_dim: the change of units, -log_jacobian_per_dim, is part of the
        reconstruction term, the decoder being the density on the data), ``denoising_per_step``
        (mean L_{t-1} for t = 2..T, nats per dim, of the discrete-time bound) with
        ``denoising_per_step_T``, ``discrete_time`` (vdm: ``T``, ``num_examples``,
        ``nats_per_dim``, ``bits_per_dim``, ``stderr``, ``terms``, ``estimator``; ddpm: None),
        ``schedule`` (vdm: the learned gamma(t) = -log SNR, ``gamma_0``, ``gamma_1`` and ``gamma``
        on the grid ``t``; ddpm: None),
        ``true_entropy_per_dim`` (nats, or None) and ``gap_to_entropy``, ``test_nll_per_dim``
        (the mean exact -log p(x) / d of the examples evaluated, where the distribution is known)
        with ``gap_to_test_nll`` and its ``gap_to_test_nll_stderr`` (the mean of bound - (-log p)
        per example: the same examples on both sides, so a much smaller standard error),
        ``categorical_baseline_bits_per_dim`` and ``uniform_bits_per_dim`` (discrete data; else
        None), ``estimator``, ``seconds``.

    ``max_examples`` caps the examples evaluated (the first ones of the test set or file;
    default: all for the continuous-time bound, 1000 for a discrete-time bound, whose examples
    each cost T network evaluations); ``batch_size`` examples go through one compiled call.
    """
    tic = time.perf_counter()
    run = load_run(out_dir)
    meta = run.meta
    recipe = meta["recipe"]
    name, rows, data, builtin_test = _evaluation_data(run, data_path)
    if max_examples is not None:
        rows = rows[: int(max_examples)]
    discrete_rows = rows[:DISCRETE_EVAL_MAX_EXAMPLES] if max_examples is None else rows
    log_jacobian = float(meta["scaling"]["log_jacobian_per_dim"])
    key_main, key_discrete = jax.random.split(jax.random.key(int(seed)))
    if batch_size is None:  # examples per compiled call, each with T steps: bound the memory
        batch_size = max(4, 128 // run.dim)
    if recipe["model"] == "vdm":
        T = int(recipe["T"])
        main = vdm.bound_estimate(key_main, run.network, run.to_model(rows), run.decoder, T=None,
                                  num_t_samples=num_t_samples)
        discrete = vdm.bound_estimate(key_discrete, run.network, run.to_model(discrete_rows), run.decoder, T=T,
                                      batch_size=batch_size)
        evaluated = rows
        discrete_time = {
            "T": T,
            "num_examples": int(discrete.num_examples),
            "nats_per_dim": float(discrete.nats_per_dim.value) - log_jacobian,
            "bits_per_dim": (float(discrete.nats_per_dim.value) - log_jacobian) / math.log(2.0),
            "stderr": float(discrete.nats_per_dim.stderr),
            "terms": _terms(discrete, log_jacobian),
            "estimator": discrete.estimator,
        }
        per_step, bound_kind, bound_T = discrete.denoising_per_step, "continuous time", None
        learned = vdm.schedule_summary(run.network)
        schedule = {"gamma_0": learned.gamma_0, "gamma_1": learned.gamma_1, "t": learned.t.tolist(),
                    "gamma": learned.gamma.tolist()}
    else:
        T = run.schedule.num_steps
        main = bound_estimate(
            key_main, run.schedule, as_eps_fn(run.network, T), run.to_model(discrete_rows),
            variance=recipe["variance"], decoder=run.decoder, batch_size=batch_size,
        )
        evaluated, discrete_time, schedule = discrete_rows, None, None
        per_step, bound_kind, bound_T = main.denoising_per_step, "discrete time", T
    d = main.num_dims
    nats_per_dim = float(main.nats_per_dim.value) - log_jacobian
    stderr = float(main.nats_per_dim.stderr)
    entropy = meta.get("true_entropy_per_dim") if builtin_test == meta["data"] else None
    test_nll = gap_nll = gap_nll_stderr = None
    log_density = exact_log_density(builtin_test) if builtin_test is not None else None
    if log_density is not None:
        nll = -log_density(evaluated) / d
        gap = np.asarray(main.per_example, np.float64) / d - log_jacobian - nll
        test_nll = float(nll.mean())
        gap_nll, gap_nll_stderr = float(gap.mean()), float(gap.std(ddof=1) / math.sqrt(gap.size))
    categorical = uniform = None
    if meta["levels"] is not None:
        uniform = uniform_bits_per_dim(meta["levels"])
        train_data = data if data is not None else _dataset_of(meta)
        categorical = independent_categorical_baseline_bits_per_dim(train_data.train, evaluated, meta["levels"])
    return {
        "data": name,
        "model": recipe["model"],
        "bound": bound_kind,
        "T": bound_T,
        "num_examples": int(main.num_examples),
        "nats_per_dim": nats_per_dim,
        "bits_per_dim": nats_per_dim / math.log(2.0),
        "stderr": stderr,
        "stderr_bits": stderr / math.log(2.0),
        "terms": _terms(main, log_jacobian),
        "denoising_per_step": (np.asarray(per_step, np.float64) / d).tolist(),
        "denoising_per_step_T": T,
        "discrete_time": discrete_time,
        "schedule": schedule,
        "true_entropy_per_dim": entropy,
        "gap_to_entropy": None if entropy is None else nats_per_dim - entropy,
        "test_nll_per_dim": test_nll,
        "gap_to_test_nll": gap_nll,
        "gap_to_test_nll_stderr": gap_nll_stderr,
        "categorical_baseline_bits_per_dim": categorical,
        "uniform_bits_per_dim": uniform,
        "estimator": main.estimator,
        "seconds": time.perf_counter() - tic,
    }


# -- samples -------------------------------------------------------------------------------------
def sample_run(out_dir, n: int, seed: int = 0) -> np.ndarray:
    """``n`` ancestral samples of the run's EMA network in the data's original units, shape (n, d)
    (for discrete data, integers 0..K-1 as floats)."""
    from elbox.diffusion.sample import sample

    run = load_run(out_dir)
    recipe = run.meta["recipe"]
    if recipe["model"] == "vdm":
        y = vdm.sample(jax.random.key(int(seed)), run.network, int(n), run.dim, T=int(recipe["T"]), decoder=run.decoder)
    else:
        y = sample(jax.random.key(int(seed)), run.network, run.schedule, int(n), run.dim,
                   variance=recipe["variance"], decoder=run.decoder)
    x = run.from_model(np.asarray(y))
    if run.meta["levels"] is not None:
        x = np.clip(np.rint(x), 0, run.meta["levels"] - 1)
    return x


def _dataset_of(meta: dict) -> Dataset:
    """The run's data set rebuilt from its spec, levels (files only: built-ins fix their own)
    and seed."""
    levels = None if meta["data"] in builtin_names() else meta["levels"]
    return get_dataset(meta["data"], levels=levels, seed=meta["seed"])


def training_data(run: Run) -> Dataset:
    """The run's data set, rebuilt from its spec and seed (for plots)."""
    return _dataset_of(run.meta)
