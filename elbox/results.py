"""Results of inference: draws as ArviZ ``InferenceData`` plus what ArviZ does not hold.

The posterior group has the model's constrained parameters (and deterministic sites) with
their names and shapes, dimensions ``(chain, draw, ...)``; the sample_stats group has
``lp`` (the log joint on the unconstrained space, log-Jacobian included) and
``acceptance_rate`` (each step's acceptance probability). ``az.summary``, ``az.plot_trace``
and the rest of ArviZ work on ``results.inference_data`` directly.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import numpy as np

from elbox.model import Model

# ArviZ's ESS, MCSE and R-hat need at least this many draws per chain; below it they are NaN.
MIN_DRAWS_FOR_DIAGNOSTICS = 4
SUMMARY_COLUMNS = ("mean", "sd", "mcse_mean", "ess_bulk", "ess_tail", "r_hat")


@dataclasses.dataclass
class SamplingResults:
    """Draws from an MCMC run and how they were made.

    Attributes:
        inference_data: ArviZ ``InferenceData`` (groups ``posterior`` and ``sample_stats``).
        model: the :class:`~elbox.Model` sampled.
        method: the sampler's name (``"mh"``).
        warmup: warm-up steps per chain.
        seconds: ``{"compile", "warmup", "sampling", "total"}`` wall-clock seconds; compile is
            XLA compilation of the warm-up and sampling loops, total includes everything.
        proposal_scale: the adapted random-walk scales, shape ``(chains, dimension)``.
        warmup_acceptance_rate: mean acceptance probability over warm-up.
    """

    inference_data: Any
    model: Model
    method: str
    warmup: int
    seconds: dict[str, float]
    proposal_scale: np.ndarray | None = None
    warmup_acceptance_rate: float | None = None

    @classmethod
    def from_flat_draws(cls, *, model: Model, flat_draws: np.ndarray, sample_stats: dict, **kwargs):
        """Map flat unconstrained draws ``(chains, draws, dimension)`` to named constrained ones."""
        import arviz as az

        to_constrained = jax.jit(jax.vmap(jax.vmap(lambda f: model.constrain(model.unravel(f)))))
        posterior = {k: np.asarray(v) for k, v in to_constrained(flat_draws).items()}
        idata = az.from_dict(posterior=posterior, sample_stats=sample_stats)
        return cls(inference_data=idata, model=model, **kwargs)

    @property
    def posterior(self):
        """The posterior group (an xarray Dataset)."""
        return self.inference_data.posterior

    @property
    def chains(self) -> int:
        return int(self.posterior.sizes["chain"])

    @property
    def draws(self) -> int:
        return int(self.posterior.sizes["draw"])

    @property
    def acceptance_rate(self) -> float:
        """Mean acceptance probability over the kept draws, all chains."""
        return float(self.inference_data.sample_stats["acceptance_rate"].mean())

    @property
    def divergences(self) -> int | None:
        """Divergent transitions (``None`` for kernels without a numerical integrator, like MH)."""
        stats = self.inference_data.sample_stats
        return int(stats["diverging"].sum()) if "diverging" in stats else None

    def summary(self):
        """Summary table (a pandas DataFrame): mean, sd, 5% and 95% quantiles, MCSE, ESS, R-hat.

        ESS, MCSE and R-hat are ArviZ's (rank-normalised split R-hat, bulk and tail ESS).
        """
        import arviz as az

        quantiles = {
            "5%": lambda x: np.quantile(x, 0.05),
            "95%": lambda x: np.quantile(x, 0.95),
        }
        if self.draws >= MIN_DRAWS_FOR_DIAGNOSTICS:
            table = az.summary(self.inference_data, kind="all", stat_funcs=quantiles, extend=True, round_to="none")
        else:  # the diagnostics are undefined (NaN): not asked of ArviZ, which would warn
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the sd of a single draw
                table = az.summary(self.inference_data, kind="stats", stat_funcs=quantiles, extend=True,
                                   round_to="none")
            for column in ("mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"):
                table[column] = np.nan
        hdi = [c for c in table.columns if c.startswith("hdi_")]
        ordered = ["mean", "sd", "5%", "95%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat"]
        return table.drop(columns=hdi)[ordered]

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
