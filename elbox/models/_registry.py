"""The table of built-in models: name -> function that builds the Model."""

from __future__ import annotations

import difflib
import functools
import gzip
import json
from collections.abc import Callable
from importlib import resources

from elbox.errors import ModelError
from elbox.model import Model

_BUILDERS: dict[str, Callable[[], Model]] = {}
_SUMMARIES: dict[str, str] = {}


def register(name: str, summary: str):
    """Decorator: make ``builder()`` available as the built-in model ``name``."""

    def decorate(builder: Callable[[], Model]) -> Callable[[], Model]:
        if name in _BUILDERS:
            raise RuntimeError(f"built-in model {name!r} registered twice")
        _BUILDERS[name] = functools.cache(builder)
        _SUMMARIES[name] = summary
        return builder

    return decorate


def names() -> list[str]:
    """Names of the built-in models, in the order they were registered."""
    return list(_BUILDERS)


def get(name: str) -> Model:
    """The built-in model called ``name`` (see :func:`names`), built once per process: the
    programs compiled for it stay with it, so a second run on it compiles nothing."""
    _require_known(name)
    return _BUILDERS[name]()  # cached: built once per process


def build(name: str) -> Model:
    """A new instance of the built-in model ``name``, not shared with anyone (for work in another
    numerical mode, such as float64 under ``jax.enable_x64``, that must not meet constants traced
    for the shared one)."""
    _require_known(name)
    return _BUILDERS[name].__wrapped__()


def _require_known(name: str) -> None:
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"Unknown model {name!r}.{hint} Built-in models: {', '.join(names())}. "
            "A model in a file is named as path/to/file.py:NAME."
        )


def summary(name: str) -> str:
    """One line saying what the built-in model is."""
    return _SUMMARIES[name]


def describe(name: str) -> dict:
    """Name, dimension and what is known exactly, as a JSON-ready dict."""
    model = get(name)
    return {
        "name": name,
        "summary": summary(name),
        "dimension": model.dimension,
        "known": model.known.as_dict(),
    }


def load_data(filename: str):
    """Read a data file shipped in ``elbox/models/data`` (``.json`` or ``.json.gz``)."""
    path = resources.files("elbox.models") / "data" / filename
    raw = path.read_bytes()
    if filename.endswith(".gz"):
        raw = gzip.decompress(raw)
    return json.loads(raw)


def resolve(model_like) -> Model:
    """Turn what a user passes as a model into a :class:`Model`.

    Accepts a :class:`Model`, a built-in name, or a NumPyro model function taking no arguments.
    """
    if isinstance(model_like, Model):
        return model_like
    if isinstance(model_like, str):
        return get(model_like)
    if callable(model_like):
        return Model.from_numpyro(model_like)
    kind = type(model_like).__name__
    raise ModelError(
        f"Cannot use {'an' if kind[0].lower() in 'aeiou' else 'a'} {kind} as a model: pass a built-in model name, "
        "a NumPyro model function or an elbox Model."
    )
