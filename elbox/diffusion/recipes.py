"""Diffusion recipes: the default settings per data set and model, and the factories that turn a
recipe into its optimiser, learning rate, noise schedule, network and decoder.

A recipe is a JSON-ready dict (it is stored in a run's run.json): ``model`` (``"vdm"`` or
``"ddpm"``), the schedule, ``T``, the ``network`` settings, the batch size, the optimiser's
settings, ``steps``, the EMA decay and ``checkpoint_every``. :func:`make_recipe` merges
overrides into the default; the ``build_*`` functions are pure (same recipe and key, same object).

Example:
    >>> recipe = make_recipe("gmm8", {"model": "ddpm", "width": 64})
    >>> network = build_model(jax.random.key(0), recipe, dim=2)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import jax
import numpy as np
import optax

from elbox.diffusion import vdm
from elbox.diffusion.decoders import DiscretizedGaussian, Gaussian, GridPosterior
from elbox.diffusion.networks import ConvDenoiser, MLPDenoiser
from elbox.diffusion.schedules import cosine_schedule, linear_schedule
from elbox.errors import SettingsError

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
    **{name: {"vdm": _VDM_2D, "ddpm": _DDPM_2D}
       for name in ("gmm8", "checkerboard", "moons", "gmm8_quantized", "file")},
    "digits": {"vdm": _VDM_DIGITS, "ddpm": _DDPM_DIGITS},
}
NETWORK_KEYS = {"kind", "width", "depth", "channels", "num_layers", "fourier_features", "grid_features"}


def recipe_name(data_spec: str) -> str:
    """The key of :data:`DEFAULTS` for a data spec: the built-in name, or ``"file"``."""
    return data_spec if data_spec in DEFAULTS and data_spec != "file" else "file"


def make_recipe(data_spec: str, overrides: dict | None = None) -> dict:
    """The default recipe for ``data_spec`` with ``overrides`` applied: ``model`` (``"vdm"`` or
    ``"ddpm"``) picks the recipe, ``network`` entries are merged into the network's settings
    (``width``/``depth``/``channels``/``num_layers`` may also be given at the top level), and any
    other entry replaces the recipe's.

    Raises:
        SettingsError: an unknown model or setting.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    model = overrides.pop("model", DEFAULT_MODEL)
    if model not in MODELS:
        raise SettingsError(f"unknown model {model!r}; choose {' or '.join(MODELS)}")
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
            raise SettingsError(
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
    raise SettingsError(f"unknown learning_rate_decay {decay!r}; choose constant or cosine")


def build_schedule(recipe: dict):
    """The recipe's noise schedule (``cosine`` or ``linear``) with T steps; None for a vdm, whose
    schedule is learned with the network."""
    if recipe["model"] == "vdm":
        return None
    if recipe["schedule"] == "cosine":
        return cosine_schedule(recipe["T"])
    if recipe["schedule"] == "linear":
        return linear_schedule(recipe["T"])
    raise SettingsError(f"unknown schedule {recipe['schedule']!r}; choose cosine or linear")


def build_model(key, recipe: dict, dim: int, bin_width: float | None = None, prior_logits=None):
    """The recipe's network: a denoiser (``ddpm``) or a :class:`~elbox.diffusion.vdm.VDM` holding
    a denoiser and its learned schedule (``vdm``). ``bin_width``: the width of the data's bins
    in model units (discrete data), else None; ``prior_logits``: a vdm's initial decoder prior
    for discrete data (shape (d, K)), else None."""
    if recipe["model"] == "ddpm":
        return build_network(key, recipe, dim, bin_width)
    if recipe["schedule"] not in vdm.SCHEDULES:
        raise SettingsError(f"unknown vdm schedule {recipe['schedule']!r}; choose {' or '.join(vdm.SCHEDULES)}")
    key_denoiser, key_schedule = jax.random.split(key)
    return vdm.VDM(key_schedule, build_network(key_denoiser, recipe, dim, bin_width), recipe["gamma_0"],
                   recipe["gamma_1"], learn_schedule=recipe["schedule"] == "learned", prior_logits=prior_logits)


def build_network(key, recipe: dict, dim: int, bin_width: float | None = None):
    """The recipe's denoiser for examples of length ``dim``. An MLP's ``grid_features`` (multiples
    m of 2 pi / bin_width) become its input frequencies for discrete data (ignored for
    continuous data)."""
    net = recipe["network"]
    learn_variance = recipe.get("variance") == "learned_range"
    if net["kind"] == "mlp":
        frequencies = () if bin_width is None else tuple(
            m * 2 * math.pi / bin_width for m in net.get("grid_features", ())
        )
        return MLPDenoiser(key, dim, width=net["width"], depth=net["depth"],
                           fourier_features=net.get("fourier_features", 16), learn_variance=learn_variance,
                           input_frequencies=frequencies)
    if net["kind"] == "conv":
        size = math.isqrt(dim)
        if size * size != dim:
            raise SettingsError(f"the convolutional denoiser needs square images; data with {dim} columns are not")
        return ConvDenoiser(key, image_size=size, channels=net["channels"], num_layers=net["num_layers"],
                            fourier_features=net.get("fourier_features", 16), learn_variance=learn_variance)
    raise SettingsError(f"unknown network kind {net['kind']!r}; choose mlp or conv")


def bin_width_of(levels, scaling: dict) -> float | None:
    """The width of the data's bins in model units (the scale of discrete data), else None."""
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
