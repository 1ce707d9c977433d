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

from elbox.diffusion.data import (
    Dataset,
    builtin_names,
    check_width,
    get_dataset,
    independent_categorical_baseline_bits_per_dim,
    load_array,
    uniform_bits_per_dim,
)
from elbox.diffusion.decoders import DiscretizedGaussian, Gaussian
from elbox.diffusion.elbo import bound_estimate
from elbox.diffusion.networks import ConvDenoiser, MLPDenoiser, as_eps_fn
from elbox.diffusion.schedules import cosine_schedule, linear_schedule
from elbox.errors import DataError, ElboxError

FORMAT_VERSION = 1
RUN_FILE = "run.json"
MODEL_FILE = "model.eqx"
TRACE_FILE = "loss_trace.npy"
CHECKPOINT_DIR = "checkpoints"
DEFAULT_MAX_EXAMPLES = 1000

_MLP_2D = {"kind": "mlp", "width": 256, "depth": 3, "fourier_features": 16}

# Loss: L_hybrid with improved DDPM's learned variance range. On gmm8 (T = 1000, same wall time
# on the 2-core CPU this was written on) it gave a much better test bound than vlb_importance:
# 27,000 hybrid steps in 91 s, 0.344 +- 0.030 nats/dim (entropy 0.156), against 9,000
# vlb_importance steps in 136 s, 1.84 +- 0.02 nats/dim (measured while the importance-sampling
# history was still updated by a sequential scan over the batch, since vectorised).
# Steps: the 2-D recipe (MLP 256 x 3, batch 512) ran at about 295 steps/s there, so 100,000 steps
# take about 6 minutes. The digits' ConvDenoiser ran at about 0.6 steps/s there (batch 512), so
# its 4,000 steps take about 2 hours on such a CPU; it is meant for a GPU.
_RECIPE_2D = {
    "T": 1000, "schedule": "cosine", "network": _MLP_2D, "loss": "hybrid",
    "variance": "learned_range", "batch_size": 512, "learning_rate": 1e-3, "steps": 100_000,
    "ema_decay": 0.999, "checkpoint_every": 5_000,
}
DEFAULTS: dict[str, dict[str, Any]] = {
    **{name: copy.deepcopy(_RECIPE_2D) for name in ("gmm8", "checkerboard", "moons", "gmm8_quantized")},
    "digits": {
        "T": 1000, "schedule": "cosine",
        "network": {"kind": "conv", "channels": 32, "num_layers": 3, "fourier_features": 16},
        "loss": "hybrid", "variance": "learned_range", "batch_size": 512, "learning_rate": 1e-3,
        "steps": 4_000, "ema_decay": 0.999, "checkpoint_every": 500,
    },
    "file": copy.deepcopy(_RECIPE_2D),
}
RECIPE_KEYS = tuple(DEFAULTS["gmm8"])
NETWORK_KEYS = {"kind", "width", "depth", "channels", "num_layers", "fourier_features"}


class RunError(ElboxError):
    """A run folder cannot be used (no run in it, a damaged file, settings that do not match)."""


class Run(NamedTuple):
    """A saved run, rebuilt by :func:`load_run`.

    Attributes:
        meta: the contents of run.json.
        network: the EMA denoiser.
        schedule: its noise schedule (float64).
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
    """The default recipe for ``data_spec`` with ``overrides`` applied (``network`` entries are
    merged into the network's settings; ``width``/``depth``/``channels``/``num_layers`` may also
    be given at the top level).

    Raises:
        RunError: an unknown setting.
    """
    recipe = copy.deepcopy(DEFAULTS[recipe_name(data_spec)])
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "network":
            recipe["network"].update(value)
        elif key in NETWORK_KEYS - {"kind"}:
            recipe["network"][key] = value
        elif key in RECIPE_KEYS:
            recipe[key] = value
        else:
            raise RunError(f"unknown recipe setting {key!r}; settings are {', '.join(RECIPE_KEYS)} and network's {', '.join(sorted(NETWORK_KEYS))}")
    return recipe


def build_schedule(recipe: dict):
    """The recipe's noise schedule (``cosine`` or ``linear``) with T steps."""
    if recipe["schedule"] == "cosine":
        return cosine_schedule(recipe["T"])
    if recipe["schedule"] == "linear":
        try:
            return linear_schedule(recipe["T"])
        except ValueError as error:
            raise RunError(str(error)) from None
    raise RunError(f"unknown schedule {recipe['schedule']!r}; choose cosine or linear")


def build_network(key, recipe: dict, dim: int):
    """The recipe's denoiser for examples of length ``dim``."""
    net = recipe["network"]
    learn_variance = recipe["variance"] == "learned_range"
    if net["kind"] == "mlp":
        return MLPDenoiser(key, dim, width=net["width"], depth=net["depth"],
                           fourier_features=net.get("fourier_features", 16), learn_variance=learn_variance)
    if net["kind"] == "conv":
        size = math.isqrt(dim)
        if size * size != dim:
            raise RunError(f"the convolutional denoiser needs square images; data with {dim} columns are not")
        return ConvDenoiser(key, image_size=size, channels=net["channels"], num_layers=net["num_layers"],
                            fourier_features=net.get("fourier_features", 16), learn_variance=learn_variance)
    raise RunError(f"unknown network kind {net['kind']!r}; choose mlp or conv")


def build_decoder(levels, scaling: dict):
    """``DiscretizedGaussian`` over the bins of K levels in model units, or ``Gaussian()``."""
    if levels is None:
        return Gaussian()
    scale = float(scaling["scale"])
    low = float(np.asarray(scaling["shift"]).reshape(-1)[0])
    return DiscretizedGaussian(scale, low, scale * (levels - 1) + low)


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
    network = build_network(key_init, recipe, data.dim)
    decoder = build_decoder(data.levels, scaling)
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
    result = train(
        key_train, data.to_model(data.train), schedule=schedule, network=network, steps=recipe["steps"],
        batch_size=recipe["batch_size"], learning_rate=recipe["learning_rate"], loss=recipe["loss"],
        variance=recipe["variance"], decoder=decoder, ema_decay=recipe["ema_decay"],
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
    now = {"data": spec, "levels": levels, "seed": int(seed),
           "recipe": {k: v for k, v in recipe.items() if k != "steps"}}
    before = {"data": stored.get("data"), "levels": stored.get("levels"), "seed": stored.get("seed"),
              "recipe": {k: v for k, v in stored.get("recipe", {}).items() if k != "steps"}}
    different = [f"{k}: run {before[k]!r}, now {now[k]!r}" for k in now if before[k] != now[k]]
    if different:
        raise RunError(
            "--resume continues the run saved in the folder, but these settings differ: " + "; ".join(different)
            + ". Resume with the same settings, or train into another folder."
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
    like = build_network(_keys(meta["seed"])[0], recipe, meta["dim"])
    try:
        network = eqx.tree_deserialise_leaves(model_file, like)
    except Exception as error:  # a truncated or foreign file
        raise RunError(f"{model_file} could not be read as this run's network ({type(error).__name__}: {error})") from None
    return Run(meta, network, build_schedule(recipe), build_decoder(meta["levels"], meta["scaling"]), out_dir)


def load_trace(out_dir) -> np.ndarray:
    """The training loss per step of the run in ``out_dir``."""
    return np.load(Path(out_dir) / TRACE_FILE)


# -- bound ---------------------------------------------------------------------------------------
def _evaluation_data(run: Run, data_path, max_examples: int | None):
    """(name, rows in original units, the Dataset of the training data or None)."""
    meta = run.meta
    if data_path is None:
        data = _dataset_of(meta)
        rows, name = data.test, meta["data"]
    else:
        spec = os.fspath(data_path)
        if spec in builtin_names():
            data = get_dataset(spec, seed=meta["seed"])
            rows = data.test
            if data.levels != meta["levels"]:
                raise DataError(f"{spec} has levels {data.levels}, but the run was trained with levels {meta['levels']}")
        else:
            loaded = load_array(spec, levels=meta["levels"])  # all checks: file, NaN, levels
            rows = np.concatenate([loaded.train, loaded.test])
        check_width(rows, meta["dim"], what=f"the evaluation data {spec}")
        name, data = spec, None
    if max_examples is not None:
        rows = rows[: int(max_examples)]
    return name, rows, data


def elbo_run(out_dir, data_path=None, seed: int = 0, max_examples: int | None = DEFAULT_MAX_EXAMPLES,
             batch_size: int | None = None) -> dict:
    """The bound on -log p(x) per dimension of the run's EMA network on its test set (or on the
    file ``data_path``, same width, same scaling as training), summed over all T steps, in the
    data's ORIGINAL units.

    Returns:
        a JSON-ready dict: ``data``, ``T``, ``num_examples``, ``nats_per_dim``, ``bits_per_dim``,
        ``stderr`` (of nats_per_dim), ``stderr_bits``, ``terms`` (``reconstruction``,
        ``denoising``, ``prior``, nats per dim; they add up to nats_per_dim: the change of units,
        -log_jacobian_per_dim, is part of the reconstruction term, the decoder being the density
        on the data), ``denoising_per_step`` (mean L_{t-1} for t = 2..T, nats per dim),
        ``true_entropy_per_dim`` (nats, or None) and ``gap_to_entropy`` (nats per dim, or None),
        ``categorical_baseline_bits_per_dim`` and ``uniform_bits_per_dim`` (discrete data; else
        None), ``estimator``, ``seconds``.

    ``max_examples`` caps the examples evaluated (the first ones of the test set or file; each
    costs T network evaluations); ``batch_size`` examples go through one compiled call
    (default: max(4, 128 // d)).
    """
    tic = time.perf_counter()
    run = load_run(out_dir)
    meta = run.meta
    name, rows, data = _evaluation_data(run, data_path, max_examples)
    y = run.to_model(rows)
    T = run.schedule.num_steps
    if batch_size is None:  # examples per compiled call, each with all T steps: bound the memory
        batch_size = max(4, 128 // run.dim)
    estimate = bound_estimate(
        jax.random.key(int(seed)), run.schedule, as_eps_fn(run.network, T), y,
        variance=meta["recipe"]["variance"], decoder=run.decoder, batch_size=batch_size,
    )
    d = estimate.num_dims
    log_jacobian = float(meta["scaling"]["log_jacobian_per_dim"])
    nats_per_dim = float(estimate.nats_per_dim.value) - log_jacobian
    stderr = float(estimate.nats_per_dim.stderr)
    entropy = meta.get("true_entropy_per_dim") if data_path is None else None
    categorical = uniform = None
    if meta["levels"] is not None:
        uniform = uniform_bits_per_dim(meta["levels"])
        train_data = data if data is not None else _dataset_of(meta)
        categorical = independent_categorical_baseline_bits_per_dim(train_data.train, rows, meta["levels"])
    return {
        "data": name,
        "T": T,
        "num_examples": int(estimate.num_examples),
        "nats_per_dim": nats_per_dim,
        "bits_per_dim": nats_per_dim / math.log(2.0),
        "stderr": stderr,
        "stderr_bits": stderr / math.log(2.0),
        "terms": {
            "reconstruction": estimate.reconstruction / d - log_jacobian,
            "denoising": estimate.denoising / d,
            "prior": estimate.prior / d,
        },
        "denoising_per_step": (np.asarray(estimate.denoising_per_step, np.float64) / d).tolist(),
        "true_entropy_per_dim": entropy,
        "gap_to_entropy": None if entropy is None else nats_per_dim - entropy,
        "categorical_baseline_bits_per_dim": categorical,
        "uniform_bits_per_dim": uniform,
        "estimator": estimate.estimator,
        "seconds": time.perf_counter() - tic,
    }


# -- samples -------------------------------------------------------------------------------------
def sample_run(out_dir, n: int, seed: int = 0) -> np.ndarray:
    """``n`` ancestral samples of the run's EMA network in the data's original units, shape (n, d)
    (for discrete data, integers 0..K-1 as floats)."""
    from elbox.diffusion.sample import sample

    run = load_run(out_dir)
    recipe = run.meta["recipe"]
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
