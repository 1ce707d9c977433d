"""Reference models. Each states what is known exactly about it (posterior moments, log p(x)).

``elbox.models.get(name)`` builds one; ``elbox.models.names()`` lists them.
"""

from elbox.models._registry import build, describe, get, load_data, names, register, resolve, summary

# Importing the modules registers their models, in this order (kept out of import sorting).
from elbox.models import conjugate, classic, posteriordb, logistic, mixture, evidence_models  # noqa: F401  # isort: skip

__all__ = ["build", "describe", "get", "load_data", "names", "register", "resolve", "summary"]
