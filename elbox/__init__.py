"""elbox: approximate Bayesian inference around the evidence lower bound, on JAX.

The public names are listed in ``__all__``; everything else is an implementation detail.
"""

from elbox import models
from elbox.errors import (
    ElboxError,
    FittingError,
    InitializationError,
    ModelError,
    NoPriorLikelihoodSplit,
    SettingsError,
)
from elbox.mcmc.run import sample
from elbox.vi.fit import fit
from elbox.model import Known, Model
from elbox.results import SamplingResults

__version__ = "0.1.0"

__all__ = [
    "ElboxError",
    "FittingError",
    "InitializationError",
    "Known",
    "Model",
    "ModelError",
    "NoPriorLikelihoodSplit",
    "SamplingResults",
    "SettingsError",
    "fit",
    "models",
    "sample",
]
