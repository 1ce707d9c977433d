"""elbox: approximate Bayesian inference around the evidence lower bound, on JAX.

The public names are listed in ``__all__``; everything else is an implementation detail.
"""

from elbox.cpu_devices import use_cpu_devices

# Before anything below can make JAX start its backends: one CPU device per core (or per default
# chain), so that a run's chains use the host's cores (elbox.cpu_devices says when it does not).
use_cpu_devices()

from elbox import models
from elbox.compilation_cache import enable_compilation_cache
from elbox.errors import (
    DataError,
    ElboxError,
    FittingError,
    InitializationError,
    ModelError,
    NoPriorLikelihoodSplit,
    OutputError,
    RunError,
    SettingsError,
)
from elbox.estimate import Estimate
from elbox.evidence import EvidenceResults, evidence
from elbox.initialization import initial_positions
from elbox.mcmc.run import sample
from elbox.model import Conjugacy, Known, Model
from elbox.results import SamplingResults
from elbox.vi.fit import fit
from elbox.vi.results import FitResults

__version__ = "0.1.0"

__all__ = [
    "Conjugacy",
    "DataError",
    "ElboxError",
    "Estimate",
    "EvidenceResults",
    "FitResults",
    "FittingError",
    "InitializationError",
    "Known",
    "Model",
    "ModelError",
    "NoPriorLikelihoodSplit",
    "OutputError",
    "RunError",
    "SamplingResults",
    "SettingsError",
    "enable_compilation_cache",
    "evidence",
    "fit",
    "initial_positions",
    "models",
    "sample",
    "use_cpu_devices",
]
