"""Checks of user input shared by every entry point: one rule per kind of value, one message each.

Each check returns the value in its plain Python form (an ``int`` for a count, a ``float`` for a
scale) or raises a :class:`~elbox.errors.SettingsError` that names the argument. The rules:

* a count is a whole number (``int`` or a NumPy integer, never ``True``/``False``) at least its minimum;
* a positive number is a finite real number > 0 (never a boolean);
* a probability lies strictly between 0 and 1;
* a seed is a whole number that fits a signed 64-bit integer (what ``jax.random.key`` takes);
* a learning rate is a positive number or an optax schedule (a callable of the step).

The output checks (:func:`writable_file`, :func:`writable_folder`) run before long work starts,
so a path that cannot be written fails at once instead of after the results exist.
"""

from __future__ import annotations

import math
import numbers
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from elbox.errors import FittingError, OutputError, SettingsError

SEED_RANGE = (-(2**63), 2**63)


def count(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as an ``int`` if it is a whole number >= ``minimum``; else a SettingsError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise SettingsError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    if value < minimum:
        raise SettingsError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    return int(value)


def real(name: str, value: Any) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a boolean)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise SettingsError(f"{name} must be a finite number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number, got {value!r}.")
    return value


def positive(name: str, value: Any) -> float:
    """``value`` as a ``float`` if it is a finite number > 0."""
    try:
        number = real(name, value)
    except SettingsError:
        raise SettingsError(f"{name} must be a positive finite number, got {value!r}.") from None
    if number <= 0:
        raise SettingsError(f"{name} must be a positive finite number, got {value!r}.")
    return number


def probability(name: str, value: Any) -> float:
    """``value`` as a ``float`` if it lies strictly between 0 and 1."""
    number = real(name, value)
    if not 0 < number < 1:
        raise SettingsError(f"{name} must lie strictly between 0 and 1, got {value!r}.")
    return number


def fraction(name: str, value: Any) -> float:
    """``value`` as a ``float`` if it lies in [0, 1) (a decay rate, a weight)."""
    number = real(name, value)
    if not 0 <= number < 1:
        raise SettingsError(f"{name} must lie in [0, 1), got {value!r}.")
    return number


def seed(value: Any, name: str = "seed") -> int:
    """``value`` as an ``int`` if it is a whole number that ``jax.random.key`` accepts."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise SettingsError(f"{name} must be a whole number, got {value!r}.")
    low, high = SEED_RANGE
    if not low <= value < high:
        raise SettingsError(f"{name} must lie in [-2**63, 2**63) (a signed 64-bit integer), got {value}.")
    return int(value)


def learning_rate(value: Any, name: str = "learning_rate"):
    """A positive finite step size, or an optax schedule (any callable of the step) as it is."""
    if callable(value):
        return value
    return positive(name, value)


def one_of(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; else a SettingsError listing them."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise SettingsError(f"Unknown {name} {value!r}; choose one of {', '.join(choices)}.")
    return value


def non_finite_loss(what: str, step: int, steps: int, learning_rate: Any, optimizer_given: bool,
                    remedies: str = "") -> FittingError:
    """The error for a loss (or ELBO) that became non-finite at ``step`` of ``steps``.

    Returned, not raised, so the caller's traceback starts where the loss was seen.
    """
    if optimizer_given:
        rate = "the optimizer's"
    elif callable(learning_rate):
        rate = "the schedule's"
    else:
        rate = f"{learning_rate:g}"
    extra = f", {remedies}" if remedies else ""
    return FittingError(
        f"The {what} became non-finite at step {step} (of {steps}). The step size is probably too large: "
        f"try a smaller learning rate than {rate} (a tenth of it, say){extra}."
    )


def writable_file(path: Any, name: str) -> Path:
    """``path`` as a Path if a file can be written there (its folder is created if missing).

    Raises:
        OutputError: the path is a folder, or the file or its folder cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{name} {path} is a folder; give the path of a file to write.")
    if path.exists():
        try:
            with open(path, "a"):
                pass
        except OSError as error:
            raise OutputError(f"{name} {path} exists and cannot be written ({error.strerror}).") from None
        return path
    folder = _existing_ancestor(path.parent)
    if not folder.is_dir():
        raise OutputError(f"{name} {path} cannot be written: {folder} is a file, not a folder.")
    _try_write_in(folder, name, path)
    return path


def writable_folder(path: Any, name: str) -> Path:
    """``path`` as a Path if files can be written into it (it is created later if missing).

    Raises:
        OutputError: the path is a file, or the folder (or its nearest existing parent) is read-only.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{name} {path} is a file; give a folder to write into.")
    folder = _existing_ancestor(path)
    if not folder.is_dir():
        raise OutputError(f"{name} {path} cannot be created: {folder} is a file, not a folder.")
    _try_write_in(folder, name, path)
    return path


def _try_write_in(folder: Path, name: str, path: Path):
    """Create and delete a file in ``folder``: the only test that permissions, read-only mounts
    and full disks all answer truthfully."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputError(f"{name} {path} cannot be written: the folder {folder} is not writable "
                          f"({error.strerror}).") from None


def _existing_ancestor(path: Path) -> Path:
    path = path if str(path) else Path(".")
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
