"""Results of inference: draws in ArviZ's container plus what ArviZ does not hold.

The container is the installed ArviZ line's own: ``InferenceData`` on ArviZ 0.23, an xarray
``DataTree`` on ArviZ 1.x (see :mod:`elbox.arviz_compat`).

The posterior group has the model's constrained parameters (and deterministic sites) with
their names and shapes, dimensions ``(chain, draw, ...)``; the sample_stats group has
``lp`` (the log joint on the unconstrained space, log-Jacobian included) and
``acceptance_rate`` (each step's acceptance probability). ``az.summary`` and the rest of the
user's ArviZ work on ``results.inference_data`` directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from elbox import arviz_compat
from elbox.model import Model

MIN_DRAWS_FOR_DIAGNOSTICS = arviz_compat.MIN_DRAWS_FOR_DIAGNOSTICS
SUMMARY_COLUMNS = ("mean", "sd", "mcse_mean", "ess_bulk", "ess_tail", "r_hat")


@dataclasses.dataclass
class SamplingResults:
    """Draws from an MCMC run and how they were made.

    Attributes:
        inference_data: ArviZ's container (``InferenceData`` on ArviZ 0.23, ``DataTree`` on 1.x),
            groups ``posterior`` and ``sample_stats``.
        model: the :class:`~elbox.Model` sampled.
        method: the sampler's name (``"mh"``).
        warmup: warm-up steps per chain.
        seconds: ``{"compile", "warmup", "sampling", "total"}`` wall-clock seconds; compile is
            XLA compilation of the warm-up and sampling loops, total includes everything.
        tuning: what the warm-up adapted, by name, one row per chain (the random walk's
            ``proposal_scale``, shape ``(chains, dimension)``; empty when nothing adapted).
        warmup_acceptance_rate: mean acceptance probability over warm-up.
    """

    inference_data: Any
    model: Model
    method: str
    warmup: int
    seconds: dict[str, float]
    tuning: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    warmup_acceptance_rate: float | None = None

    @classmethod
    def from_flat_draws(cls, *, model: Model, flat_draws: np.ndarray, sample_stats: dict, **kwargs):
        """Map flat unconstrained draws ``(chains, draws, dimension)`` to named constrained ones."""
        to_constrained = jax.jit(jax.vmap(jax.vmap(lambda f: model.constrain(model.unravel(f)))))
        posterior = {k: np.asarray(v) for k, v in to_constrained(flat_draws).items()}
        return cls(inference_data=arviz_compat.from_dict(posterior, sample_stats), model=model, **kwargs)

    @property
    def posterior(self):
        """The posterior group (an xarray Dataset)."""
        return arviz_compat.group(self.inference_data, "posterior")

    @property
    def sample_stats(self):
        """The sample_stats group (an xarray Dataset): ``lp``, ``acceptance_rate``, ..."""
        return arviz_compat.group(self.inference_data, "sample_stats")

    @property
    def proposal_scale(self) -> np.ndarray | None:
        """The adapted random-walk scales of Metropolis–Hastings, ``(chains, dimension)``; None
        for a user proposal (not adapted) or another sampler."""
        return self.tuning.get("proposal_scale")

    @property
    def chains(self) -> int:
        return int(self.posterior.sizes["chain"])

    @property
    def draws(self) -> int:
        return int(self.posterior.sizes["draw"])

    @property
    def acceptance_rate(self) -> float:
        """Mean acceptance probability over the kept draws, all chains."""
        return float(self.sample_stats["acceptance_rate"].mean())

    @property
    def divergences(self) -> int | None:
        """Divergent transitions (``None`` for kernels without a numerical integrator, like MH)."""
        stats = self.sample_stats
        return int(stats["diverging"].sum()) if "diverging" in stats else None

    def summary(self):
        """Summary table (a pandas DataFrame): mean, sd, 5% and 95% quantiles, MCSE, ESS, R-hat.

        ESS, MCSE and R-hat are ArviZ's (rank-normalised split R-hat, bulk and tail ESS), the same
        estimators on either ArviZ line; NaN with fewer than 4 draws per chain.
        """
        return arviz_compat.summary_table(self.inference_data)

    def parameter_table(self) -> dict[str, dict[str, float]]:
        """``{label: {mean, sd, mcse_mean, ess_bulk, ess_tail, r_hat}}`` with ArviZ's labels."""
        table = self.summary()
        return {
            str(label): {column: _plain(row[column]) for column in SUMMARY_COLUMNS}
            for label, row in table.iterrows()
        }


def _plain(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
