"""The samplers ``elbox.sample(method=...)`` and ``elbox sample --method`` know, by name.

Each entry builds a :class:`~elbox.mcmc.base.Sampler` from the model's dimension, the dtype of
the positions and the sampler's own options (keyword arguments; an option a sampler does not
take is refused by it, by name). The first entry is the default.
"""

from __future__ import annotations

from elbox.mcmc import hmc, mala, metropolis, nuts

SAMPLERS = {
    "nuts": nuts.sampler,
    "hmc": hmc.sampler,
    "mala": mala.sampler,
    "mh": metropolis.sampler,
}
DEFAULT_METHOD = "nuts"
