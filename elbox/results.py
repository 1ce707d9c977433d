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
EBFMI_THRESHOLD = 0.3
R_HAT_THRESHOLD = 1.01
MIN_ESS_PER_CHAIN = 100
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
            ``proposal_scale``, shape ``(chains, dimension)``; a gradient kernel's ``step_size``
            and ``inverse_mass``; empty when nothing adapted).
        settings: the sampler's resolved options (``max_tree_depth``, ``target_acceptance``, ...).
        warmup_totals: per-chain sums over warm-up of ``acceptance_rate``, ``n_steps`` and
            ``diverging``, those the sampler reports (the warm-up's draws are not kept).
        warmup_acceptance_rate: mean acceptance probability over warm-up.
    """

    inference_data: Any
    model: Model
    method: str
    warmup: int
    seconds: dict[str, float]
    tuning: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    warmup_totals: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    warmup_acceptance_rate: float | None = None

    @classmethod
    def from_flat_draws(cls, *, model: Model, flat_draws: np.ndarray, sample_stats: dict, **kwargs):
        """Map flat unconstrained draws ``(chains, draws, dimension)`` to named constrained ones."""
        to_constrained = model.program(
            "constrain_draws", lambda: jax.jit(jax.vmap(jax.vmap(lambda f: model.constrain(model.unravel(f))))))
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
        """Divergent transitions after warm-up (``None`` for kernels without a Hamiltonian
        integrator, like MH and MALA)."""
        stats = self.sample_stats
        return int(stats["diverging"].sum()) if "diverging" in stats else None

    @property
    def max_tree_depth_hits(self) -> int | None:
        """Transitions after warm-up whose trajectory stopped at ``max_tree_depth`` rather than at a
        U-turn (NUTS only; ``None`` otherwise): the sampler was cut short, not wrong."""
        stats = self.sample_stats
        if "tree_depth" not in stats or "max_tree_depth" not in self.settings:
            return None
        return int((np.asarray(stats["tree_depth"]) >= self.settings["max_tree_depth"]).sum())

    @property
    def ebfmi(self) -> np.ndarray | None:
        """The energy Bayesian fraction of missing information of each chain (Betancourt 2016):
        E-BFMI = Σ_n (E_n − E_{n−1})² / Σ_n (E_n − Ē)², with E_n the Hamiltonian of draw n.
        Below 0.3 the momentum resampling explores the energy distribution poorly (heavy
        tails, funnels). ``None`` for kernels without an energy."""
        stats = self.sample_stats
        if "energy" not in stats or self.draws < 2:
            return None
        energy = np.asarray(stats["energy"], np.float64)  # (chains, draws)
        centered = energy - energy.mean(axis=1, keepdims=True)
        return np.sum(np.diff(energy, axis=1) ** 2, axis=1) / np.sum(centered**2, axis=1)

    @property
    def gradient_evaluations(self) -> dict[str, float] | None:
        """Gradient evaluations ``{"warmup", "sampling", "per_draw"}`` over all chains (per draw:
        sampling only); ``None`` for kernels that use no gradient."""
        stats = self.sample_stats
        if "n_steps" not in stats:
            return None
        sampling = float(np.asarray(stats["n_steps"]).sum())
        warmup = float(np.sum(self.warmup_totals["n_steps"])) if "n_steps" in self.warmup_totals else 0.0
        return {"warmup": warmup, "sampling": sampling, "per_draw": sampling / (self.chains * self.draws)}

    @property
    def warnings(self) -> list[str]:
        """CmdStan-style warnings about this run, empty when nothing signals trouble: divergences,
        trajectories cut at the maximum tree depth, E-BFMI below 0.3, R-hat above 1.01, bulk ESS
        below 100 per chain."""
        found = []
        transitions = self.chains * self.draws
        if self.divergences:
            found.append(
                f"{self.divergences} of {transitions} transitions after warm-up diverged: the sampler met curvature "
                "its step size cannot follow, and the draws may be biased. Raise target_acceptance (e.g. 0.95) "
                "or reparameterise the model (e.g. non-centred)."
            )
        hits = self.max_tree_depth_hits
        if hits:
            found.append(
                f"{hits} of {transitions} transitions stopped at the maximum tree depth "
                f"({self.settings['max_tree_depth']}): not wrong, but slow; raise max_tree_depth or "
                "reparameterise."
            )
        ebfmi = self.ebfmi
        if ebfmi is not None:
            low = [f"chain {i}: {value:.2f}" for i, value in enumerate(ebfmi) if value < EBFMI_THRESHOLD]
            if low:
                found.append(
                    f"E-BFMI below {EBFMI_THRESHOLD} ({', '.join(low)}): the chains explore the energy "
                    "distribution poorly, often a sign of heavy tails or a funnel; reparameterise the model."
                )
        if self.draws >= MIN_DRAWS_FOR_DIAGNOSTICS:
            table = self.summary()
            r_hat = table["r_hat"].max()
            if r_hat > R_HAT_THRESHOLD:
                found.append(f"R-hat up to {r_hat:.3f} (> {R_HAT_THRESHOLD}): the chains disagree; run longer "
                             "or check the model.")
            ess = table["ess_bulk"].min()
            if ess < MIN_ESS_PER_CHAIN * self.chains:
                found.append(
                    f"bulk ESS down to {ess:.0f} (under {MIN_ESS_PER_CHAIN} per chain, "
                    f"{MIN_ESS_PER_CHAIN * self.chains} for {self.chains} chains): too few effective draws for "
                    "reliable R-hat and means; draw more."
                )
        return found

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
