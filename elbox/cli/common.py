"""What the commands share: argument types, loading a model from a name or a file, writing JSON."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from elbox.errors import ModelError
from elbox.estimate import finite_or_none


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def load_model(spec: str):
    """A built-in model by name, or NAME from a Python file given as ``path/to/file.py:NAME``."""
    from elbox.model import Model
    from elbox.models import get, resolve

    if ":" not in spec or not spec.split(":", 1)[0].endswith(".py"):
        return get(spec)
    path_text, name = spec.rsplit(":", 1)
    path = Path(path_text)
    if not path.is_file():
        raise ModelError(f"Model file {path} does not exist.")
    module_spec = importlib.util.spec_from_file_location(f"elbox_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise ModelError(f"Running {path} failed: {type(err).__name__}: {err}") from err
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items() if not k.startswith("_") and (callable(v) or isinstance(v, Model)))
        raise ModelError(f"{path} defines no {name!r}. Names it defines: {', '.join(defined) or 'none'}.")
    obj = getattr(module, name)
    if not (isinstance(obj, Model) or callable(obj)):
        raise ModelError(f"{path}:{name} is a {type(obj).__name__}, not a NumPyro model function or an elbox Model.")
    model = resolve(obj)
    if not isinstance(obj, Model):
        model.name = spec
    return model



def write_json(path: Path, payload: dict):
    """Write ``payload`` as JSON; NaN and infinity become ``null`` (JSON has neither)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(payload), indent=1, allow_nan=False) + "\n")


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float):
        return finite_or_none(value)
    return value
