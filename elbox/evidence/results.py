"""What an evidence estimate returns: log p(x) with its standard error, how it was found, and
the bounds beside it."""

from __future__ import annotations

import dataclasses

from elbox.estimate import Estimate, json_ready
from elbox.model import Model


@dataclasses.dataclass
class EvidenceResults:
    """An estimate of log p(x).

    Attributes:
        model: the model.
        method: ``"smc"``, ``"ais"`` or ``"iwae"``.
        log_evidence: the estimate of log p(x) in nats with its standard error. AIS and
            importance sampling average unbiased estimates of p(x), so their log is a stochastic
            lower bound (biased low by about half its variance); SMC adds that half back.
        start: where the annealing or importance sampling started: ``"prior"``, or the family of the
            fitted q (``"meanfield q"``, ...).
        seconds: ``{"fit", "compile", "running", "total"}``; ``fit`` is the time spent fitting
            the q that started the estimate when it was fitted here (``start="meanfield"``).
        settings: the method's resolved options (particles, runs, moves, steps, ...).
        diagnostics: what says whether to trust it (SMC: stages, mean acceptance; AIS: the
            weights' effective sample size; importance sampling: Pareto k̂; IWAE_K bounds).
        upper_bound: reverse AIS from exact posterior draws: a stochastic upper bound on
            log p(x) (bidirectional Monte Carlo); None where the model has no exact draws.
        warnings: plain-language messages where a diagnostic signals trouble.
    """

    model: Model
    method: str
    log_evidence: Estimate
    start: str
    seconds: dict[str, float]
    settings: dict
    diagnostics: dict
    upper_bound: Estimate | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def exact(self) -> float | None:
        """The model's closed-form log p(x), where it knows one."""
        return self.model.known.log_evidence

    def as_dict(self) -> dict:
        """The JSON summary: ``{"model", "method", "log_evidence": {"value", "stderr"}, "exact",
        "seconds", ...}``."""
        return json_ready({
            "model": self.model.name,
            "method": self.method,
            "log_evidence": self.log_evidence.as_dict(),
            "exact": self.exact,
            "upper_bound": None if self.upper_bound is None else self.upper_bound.as_dict(),
            "start": self.start,
            "seconds": self.seconds,
            "settings": self.settings,
            "diagnostics": self.diagnostics,
            "warnings": self.warnings,
        })

    def summary_lines(self) -> list[str]:
        """The text ``elbox evidence`` prints."""
        value, stderr = self.log_evidence
        lines = [f"log p(x) by {self.method} (from the {self.start}): {value:.4f} ± {stderr:.4f} nats"]
        if self.upper_bound is not None:
            upper, upper_stderr = self.upper_bound
            lines.append(f"upper bound by reverse AIS from exact posterior draws: {upper:.4f} ± {upper_stderr:.4f}")
        if self.exact is not None:
            lines.append(f"exact log p(x): {self.exact:.4f} (estimate - exact = {value - self.exact:+.4f}, "
                         f"{(value - self.exact) / stderr:+.1f} standard errors)" if stderr > 0 else
                         f"exact log p(x): {self.exact:.4f}")
        for name, item in self.diagnostics.items():
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                lines.append(f"{name.replace('_', ' ')}: {item:.4g}")
        fitting = f"fitting q {self.seconds['fit']:.2f}, " if self.seconds.get("fit") else ""
        lines.append(f"seconds: {fitting}compile {self.seconds['compile']:.2f}, running {self.seconds['running']:.2f}, "
                     f"total {self.seconds['total']:.2f}")
        lines += [f"warning: {w}" for w in self.warnings]
        return lines
