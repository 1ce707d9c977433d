"""Results of a variational fit: the bound, the evidence, the gap and draws from q."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from elbox import arviz_compat
from elbox.estimate import Estimate
from elbox.model import Model
from elbox.vi.elbo import ElboReport


@dataclasses.dataclass
class FitResults:
    """A fitted q and where it leaves the user relative to log p(x).

    Attributes:
        model, method, estimator: what was fitted, in which family, with which gradient estimator.
        params: q's parameters (a pytree; see :mod:`elbox.vi.families`).
        family: the family object (``family.sample_and_log_prob(key, params, n)`` draws from q).
        report: the ELBO in both forms with standard errors (:class:`~elbox.vi.elbo.ElboReport`).
        trace: the per-step ELBO estimates seen by the optimiser.
        steps: the largest number of steps asked for; ``trace.size`` were run.
        stopped_early: whether the stopping rule ended the fit before ``steps``.
        converged: True when the stopping rule found the ELBO flat (CAVI: its tolerance was met),
            False when the steps ran out first (the ELBO may still be rising: fit longer), None
            when no stopping rule was asked for.
        constrained_draws: draws from q of the constrained parameters (leading axis: draws);
            :attr:`inference_data` wraps them for ArviZ on first use.
        seconds: ``{"compile", "fitting", "total"}``.
        evidence_estimate: an estimate of log p(x) (:class:`~elbox.evidence.EvidenceResults`),
            asked for with ``fit(..., evidence="smc")``; the gap uses it where the model knows no
            exact value.
    """

    model: Model
    method: str
    estimator: str
    params: Any
    family: Any
    report: ElboReport
    trace: np.ndarray
    steps: int
    stopped_early: bool
    constrained_draws: dict
    seconds: dict[str, float]
    converged: bool | None = None
    evidence_estimate: Any = None

    @functools.cached_property
    def inference_data(self):
        """Draws from q in ArviZ's container (``InferenceData`` on ArviZ 0.23, ``DataTree`` on 1.x):
        one chain, the same container as MCMC draws."""
        return arviz_compat.from_dict({k: np.asarray(v)[None] for k, v in self.constrained_draws.items()})

    @property
    def elbo(self) -> Estimate:
        return self.report.elbo

    @property
    def log_evidence(self) -> Estimate | None:
        """log p(x): exact (stderr 0) when the model knows it, else the estimate asked for with
        ``evidence=`` (with its standard error), else ``None``."""
        value = self.model.known.log_evidence
        if value is not None:
            return Estimate(float(value), 0.0)
        if self.evidence_estimate is not None:
            return self.evidence_estimate.log_evidence
        return None

    @property
    def log_evidence_method(self) -> str:
        """``"exact"``, the estimator's name (``"smc"``, ``"ais"``, ``"iwae"``) or ``"unknown"``."""
        if self.model.known.log_evidence is not None:
            return "exact"
        return self.evidence_estimate.method if self.evidence_estimate is not None else "unknown"

    @property
    def gap(self) -> Estimate | None:
        """log p(x) - ELBO = KL(q || p(z | x)); its standard error combines the ELBO's and the
        evidence estimate's (independent draws)."""
        evidence = self.log_evidence
        if evidence is None:
            return None
        return Estimate(evidence.value - self.elbo.value, float(np.hypot(evidence.stderr, self.elbo.stderr)))

    @property
    def posterior(self):
        """The posterior group (an xarray Dataset) of q's draws."""
        return arviz_compat.group(self.inference_data, "posterior")

    def parameter_table(self) -> dict[str, dict[str, float]]:
        """``{label: {mean, sd}}`` of q's draws, labels as ArviZ writes them (``theta[0]``)."""
        table = self.summary()
        return {str(label): {"mean": float(row["mean"]), "sd": float(row["sd"])} for label, row in table.iterrows()}

    def summary(self):
        """Mean, sd and 5%/95% quantiles of each constrained parameter under q."""
        return arviz_compat.summary_table(self.inference_data, diagnostics_too=False)
