"""A diffusion run on disk: one folder, written so that a finished run is never lost.

    DIR/run.json          everything needed to rebuild the model: the data spec, levels, seed,
                          the recipe, the steps done, the data scaling (y = scale x + shift),
                          the status ("training" or "trained") and the sha256 of model.eqx
    DIR/model.eqx         the EMA network (``equinox.tree_serialise_leaves``)
    DIR/loss_trace.npy    the training loss at every step
    DIR/checkpoints/      the training checkpoints (see :mod:`elbox.diffusion.train`)

Every file is written whole to a temporary file and renamed into place, so a reader sees the old
file or the new one, never half of one. A trained run's new model is committed in three renames:
the model to ``model.eqx.next``, then run.json (whose checksum names the new model), then
``model.eqx.next`` to ``model.eqx``; a reader that finds run.json ahead of model.eqx (an
interruption between the last two) takes the model from ``model.eqx.next``. Reading a run never
writes, so a read-only run folder can be evaluated and sampled.

Example:
    >>> run = load_run("runs/gmm8")
    >>> run.meta["steps_done"], run.dim
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np

from elbox.diffusion.data import Dataset, builtin_names, get_dataset
from elbox.diffusion.recipes import bin_width_of, build_decoder, build_model, build_schedule
from elbox.errors import RunError

FORMAT_VERSION = 1
RUN_FILE = "run.json"
MODEL_FILE = "model.eqx"
PENDING_MODEL_FILE = "model.eqx.next"
TRACE_FILE = "loss_trace.npy"
CHECKPOINT_DIR = "checkpoints"
REQUIRED_KEYS = {"data", "levels", "seed", "recipe", "dim", "scaling"}


class RunStateError(RunError):
    """A run folder in the wrong state for what was asked: no run in it, a run that has not
    finished training, or a run that training would replace.

    Attributes:
        kind: ``"missing"`` (no folder, or no run.json in it), ``"unfinished"`` (training has not
            finished: no model yet), ``"finished"`` (a trained run is there) or ``"in_progress"``
            (an unfinished run's checkpoints are there).
        problem: what is wrong, without the remedy (a caller may give its own).
        run_dir: the folder.
        meta: the run's run.json (None where there is none).
    """

    def __init__(self, kind: str, problem: str, remedy: str, run_dir: Path, meta: dict | None = None):
        super().__init__(f"{problem}; {remedy}")
        self.kind = kind
        self.problem = problem
        self.run_dir = Path(run_dir)
        self.meta = meta


class Run(NamedTuple):
    """A saved run, rebuilt by :func:`load_run`.

    Attributes:
        meta: the contents of run.json.
        network: the EMA network (a denoiser, or a :class:`~elbox.diffusion.vdm.VDM`).
        schedule: its noise schedule (float64; None for a vdm, whose schedule is in ``network``).
        decoder: the decoder in model units (:func:`~elbox.diffusion.recipes.build_decoder`).
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
        scaling = self.meta["scaling"]
        return np.asarray(x, np.float32) * scaling["scale"] + np.asarray(scaling["shift"], np.float32)

    def from_model(self, y):
        """x = (y - shift) / scale."""
        scaling = self.meta["scaling"]
        return (np.asarray(y, np.float64) - np.asarray(scaling["shift"], np.float64)) / scaling["scale"]


def keys(seed: int):
    """(key of the initial weights, key of the training draws) of a run with this seed."""
    key_init, key_train = jax.random.split(jax.random.key(int(seed)))
    return key_init, key_train


# -- writing -------------------------------------------------------------------------------------
def _write_atomic(path: Path, content: bytes):
    """``content`` to ``path``: a temporary file in the same folder, flushed to disk, renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_meta(out_dir, meta: dict):
    """run.json, atomically."""
    _write_atomic(Path(out_dir) / RUN_FILE, (json.dumps(meta, indent=1) + "\n").encode())


def write_trained(out_dir, network, trace: np.ndarray, meta: dict) -> dict:
    """Commit a trained network, its loss trace and its run.json (``meta`` with the model's
    sha256 added, returned): trace, then model.eqx.next, run.json, and the rename to model.eqx
    (see the module docstring), so that the folder holds a usable run at every moment."""
    out_dir = Path(out_dir)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(trace))
    _write_atomic(out_dir / TRACE_FILE, buffer.getvalue())
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, network)
    content = buffer.getvalue()
    meta = {**meta, "model_sha256": hashlib.sha256(content).hexdigest()}
    _write_atomic(out_dir / PENDING_MODEL_FILE, content)
    write_meta(out_dir, meta)
    os.replace(out_dir / PENDING_MODEL_FILE, out_dir / MODEL_FILE)
    return meta


def remove_run(out_dir):
    """Remove a run's files from ``out_dir`` (run.json first, so that a half-removed run is no
    run), leaving anything else in the folder."""
    out_dir = Path(out_dir)
    for name in (RUN_FILE, MODEL_FILE, PENDING_MODEL_FILE, TRACE_FILE):
        if (out_dir / name).exists():
            (out_dir / name).unlink()
    if (out_dir / CHECKPOINT_DIR).is_dir():
        shutil.rmtree(out_dir / CHECKPOINT_DIR)


# -- reading -------------------------------------------------------------------------------------
def read_meta(out_dir) -> dict:
    """run.json of the run in ``out_dir``.

    Raises:
        RunStateError: no such folder, or no run.json in it (``kind="missing"``).
        RunError: run.json cannot be read, or lacks what a run needs.
    """
    out_dir = Path(out_dir)
    run_file = out_dir / RUN_FILE
    if not out_dir.is_dir():
        raise RunStateError("missing", f"no run folder at {out_dir}", "train a run into it first (train_run)", out_dir)
    if not run_file.exists():
        raise RunStateError("missing", f"{out_dir} holds no diffusion run (no {RUN_FILE})",
                            "train a run into it first (train_run)", out_dir)
    try:
        meta = json.loads(run_file.read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"{run_file} could not be read as JSON ({error}); the run folder is damaged") from None
    if not isinstance(meta, dict) or REQUIRED_KEYS - set(meta):
        missing = sorted(REQUIRED_KEYS - set(meta)) if isinstance(meta, dict) else sorted(REQUIRED_KEYS)
        raise RunError(f"{run_file} lacks {', '.join(missing)}; it was not written by train_run")
    return meta


def has_checkpoints(out_dir) -> bool:
    folder = Path(out_dir) / CHECKPOINT_DIR
    return folder.is_dir() and any(folder.iterdir())


def is_trained(out_dir, meta: dict | None) -> bool:
    """Whether ``out_dir`` holds a finished run (run.json says trained, or a model file is there)."""
    out_dir = Path(out_dir)
    return (meta is not None and meta.get("status") == "trained") or (out_dir / MODEL_FILE).exists()


def _model_bytes(out_dir: Path, meta: dict) -> tuple[Path, bytes]:
    """(path, bytes) of the run's model, checked against the sha256 in run.json where it holds one
    (run folders written before the checksum was recorded have none)."""
    model_file = out_dir / MODEL_FILE
    try:
        content = model_file.read_bytes()
    except OSError as error:
        raise RunError(f"{model_file} cannot be read ({error.strerror}); the run folder is damaged") from None
    recorded = meta.get("model_sha256")
    if recorded is None or hashlib.sha256(content).hexdigest() == recorded:
        return model_file, content
    pending = out_dir / PENDING_MODEL_FILE
    if pending.exists():  # interrupted between committing run.json and renaming the model into place
        pending_content = pending.read_bytes()
        if hashlib.sha256(pending_content).hexdigest() == recorded:
            return pending, pending_content
    raise RunError(
        f"{model_file} has changed since training: its sha256 is not the one recorded in {RUN_FILE} "
        f"({recorded[:12]}...). The file was modified, truncated or replaced; restore it, or train the run again."
    )


def load_run(out_dir) -> Run:
    """The run saved in ``out_dir`` by :func:`~elbox.diffusion.run.train_run`: its run.json and
    EMA network. Nothing is written.

    Raises:
        RunStateError: no run in the folder (``kind="missing"``), or a run that has not finished
            training (``kind="unfinished"``: resume it).
        RunError: a damaged run.json, or a model file that cannot be read or whose bytes are not
            those recorded when it was written.
    """
    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    if meta.get("status") != "trained" or not (
        (out_dir / MODEL_FILE).exists() or (out_dir / PENDING_MODEL_FILE).exists()
    ):
        raise RunStateError(
            "unfinished", f"the run in {out_dir} has not finished training (no {MODEL_FILE})",
            "finish it with train_run(..., resume=True) and the run's settings", out_dir, meta,
        )
    recipe = meta["recipe"]
    logits = None
    if recipe["model"] == "vdm" and meta["levels"] is not None:
        logits = np.zeros((meta["dim"], meta["levels"]))
    like = build_model(keys(meta["seed"])[0], recipe, meta["dim"], bin_width_of(meta["levels"], meta["scaling"]),
                       logits)
    model_file, content = _model_bytes(out_dir, meta)
    try:
        network = eqx.tree_deserialise_leaves(io.BytesIO(content), like)
    except Exception as error:  # a truncated or foreign file
        raise RunError(
            f"{model_file} could not be read as this run's network ({type(error).__name__}: {error})"
        ) from None
    decoder = build_decoder(meta["levels"], meta["scaling"], recipe["model"])
    return Run(meta, network, build_schedule(recipe), decoder, out_dir)


def load_trace(out_dir) -> np.ndarray:
    """The training loss per step of the run in ``out_dir``."""
    return np.load(Path(out_dir) / TRACE_FILE)


def dataset_of(meta: dict) -> Dataset:
    """The run's data set rebuilt from its spec, levels (files only: built-ins fix their own)
    and seed."""
    levels = None if meta["data"] in builtin_names() else meta["levels"]
    return get_dataset(meta["data"], levels=levels, seed=meta["seed"])


def training_data(run: Run) -> Dataset:
    """The run's data set, rebuilt from its spec and seed (for plots)."""
    return dataset_of(run.meta)
