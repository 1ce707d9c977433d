"""What the commands share: argument types, loading a model from a name or a file, writing JSON."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from elbox import checks
from elbox.errors import ModelError
from elbox.estimate import json_ready


def _checked(convert, check):
    """An argparse type: ``convert`` the text, then apply one of :mod:`elbox.checks`' rules, so the
    command line and the library refuse the same values with the same words."""
    from elbox.errors import SettingsError

    kind = "whole number" if convert is int else "number"

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind}, got {text!r}") from None
        try:
            return check(value)
        except SettingsError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _count(minimum: int):
    return _checked(int, lambda value: checks.count("the value", value, minimum))


_positive_float = _checked(float, lambda value: checks.positive("the value", value))
_probability = _checked(float, lambda value: checks.probability("the value", value))
_seed = _checked(int, checks.seed)


def check_outputs(args, file_flags=("json",), folder_flags=("out",)):
    """Check, before any work, that the files and folders the command will write can be written."""
    for flag in file_flags:
        if getattr(args, flag, None) is not None:
            checks.writable_file(getattr(args, flag), f"--{flag}")
    for flag in folder_flags:
        if getattr(args, flag, None) is not None:
            checks.writable_folder(getattr(args, flag), f"--{flag}")


def load_model(spec: str):
    """A built-in model by name, or NAME from a Python file given as ``path/to/file.py:NAME``."""
    from elbox.model import Model
    from elbox.models import get, resolve

    if spec.endswith(".py"):
        raise ModelError(
            f"{spec} is a Python file; name the model in it as {spec}:NAME, where NAME is a NumPyro model "
            "function taking no arguments or an elbox.Model"
            + (f" (names it defines: {', '.join(_defined_names(Path(spec)))})." if Path(spec).is_file() else ".")
        )
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
    if not name:
        raise ModelError(f"{spec} names no model after the colon; write {path}:NAME.")
    if not hasattr(module, name):
        raise ModelError(f"{path} defines no {name!r}. Names it defines: {', '.join(_defined(module)) or 'none'}.")
    obj = getattr(module, name)
    if not (isinstance(obj, Model) or callable(obj)):
        raise ModelError(f"{path}:{name} is a {type(obj).__name__}, not a NumPyro model function or an elbox Model.")
    model = resolve(obj)
    if not isinstance(obj, Model):
        model.name = spec
    return model


def _defined(module) -> list[str]:
    """The public functions and Models a module defines (classes and imported modules left out)."""
    import inspect

    from elbox.model import Model

    return sorted(
        k for k, v in vars(module).items()
        if not k.startswith("_")
        and (isinstance(v, Model) or (inspect.isfunction(v) and v.__module__ == module.__name__))
    )


def _defined_names(path: Path) -> list[str]:
    """The top-level function names in a Python file, read without running it."""
    import ast

    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    return [name for name in functions if not name.startswith("_")] or ["none"]


def write_json(path: Path, payload: dict):
    """Write ``payload`` as JSON; NaN and infinity become ``null`` (JSON has neither)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(payload), indent=1, allow_nan=False) + "\n")
