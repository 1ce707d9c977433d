"""Text and JSON summaries of results, for the command line."""

from __future__ import annotations

import numpy as np

from elbox.estimate import finite_or_none
from elbox.results import MIN_DRAWS_FOR_DIAGNOSTICS, SamplingResults


def sampling_json(results: SamplingResults, model_label: str, seed: int | None) -> dict:
    """The JSON summary of an MCMC run: settings, timings, acceptance and per-parameter statistics."""
    return {
        "model": model_label,
        "method": results.method,
        "chains": results.chains,
        "warmup": results.warmup,
        "draws": results.draws,
        "seed": seed,
        "seconds": {k: round(v, 4) for k, v in results.seconds.items()},
        "acceptance_rate": results.acceptance_rate,
        "divergences": results.divergences,
        "max_tree_depth_hits": results.max_tree_depth_hits,
        "ebfmi": None if results.ebfmi is None else [float(v) for v in results.ebfmi],
        "gradient_evaluations": results.gradient_evaluations,
        "settings": results.settings,
        "tuning": {name: np.asarray(value).tolist() for name, value in results.tuning.items()
                   if np.asarray(value).ndim <= 2},
        "warnings": results.warnings,
        "parameters": results.parameter_table(),
    }


def sampling_text(results: SamplingResults, model_label: str) -> str:
    """A header line, the summary table and the timings, as printed by ``elbox sample``."""
    table = results.summary()[["mean", "sd", "5%", "95%", "ess_bulk", "ess_tail", "r_hat"]]
    seconds = results.seconds
    lines = [
        f"{model_label}: {results.method}, {results.chains} chains x {results.draws} draws "
        f"after {results.warmup} warm-up steps{_devices_text(results.settings)}",
        "",
        table.to_string(float_format=lambda v: f"{v:.3f}"),
        "",
        f"acceptance rate {results.acceptance_rate:.3f}"
        + (f" (warm-up {results.warmup_acceptance_rate:.3f})" if results.warmup_acceptance_rate is not None else ""),
        f"seconds: compile {seconds['compile']:.2f}, warm-up {seconds['warmup']:.2f}, "
        f"sampling {seconds['sampling']:.2f}, total {seconds['total']:.2f}",
    ]
    gradients = results.gradient_evaluations
    if gradients is not None:
        ess = table["ess_bulk"].min()
        line = f"gradient evaluations: {gradients['per_draw']:.1f} per draw"
        if np.isfinite(ess) and ess > 0:
            line += f", {gradients['sampling'] / ess:.1f} per effective draw (min bulk ESS {ess:.0f})"
        lines.append(line)
    if results.divergences is not None:
        diagnostics = [f"divergences {results.divergences}"]
        if results.max_tree_depth_hits is not None:
            diagnostics.append(f"max tree depth hits {results.max_tree_depth_hits}")
        if results.ebfmi is not None:
            diagnostics.append("E-BFMI " + " ".join(f"{v:.2f}" for v in results.ebfmi))
        lines.append(", ".join(diagnostics))
    lines += undefined_diagnostics_notes(results)
    lines += [f"warning: {warning}" for warning in results.warnings]
    return "\n".join(lines)


def _devices_text(settings: dict) -> str:
    """", on 4 cpu devices" when the chains were split over several devices, else nothing."""
    devices = settings.get("devices", 1)
    if devices <= 1:
        return ""
    return f", on {devices} {settings['platform']} devices" if "platform" in settings else f", on {devices} devices"


def undefined_diagnostics_notes(results: SamplingResults) -> list[str]:
    """Why ESS, MCSE or R-hat are missing (NaN in the table, null in the JSON), when they are."""
    notes = []
    if results.draws < MIN_DRAWS_FOR_DIAGNOSTICS:
        notes.append(f"note: ESS, MCSE and R-hat are undefined with {results.draws} draw(s) per chain "
                     f"(they need at least {MIN_DRAWS_FOR_DIAGNOSTICS}); draw more.")
    elif results.chains * results.draws < 8:
        notes.append("note: too few draws for stable ESS and R-hat; draw more.")
    return notes


def fit_json(results, model_label: str, seed: int | None) -> dict:
    """The JSON summary of a variational fit: both ELBO forms, log p(x), the gap, timings."""
    report = results.report
    evidence = results.log_evidence
    gap = results.gap
    return {
        "model": model_label,
        "method": results.method,
        "steps": int(results.trace.size),
        "seed": seed,
        "elbo": report.elbo.as_dict(),
        "elbo_forms": {
            "joint_minus_entropy": report.joint_minus_entropy.as_dict(),
            "loglik_minus_kl": None if report.loglik_minus_kl is None else report.loglik_minus_kl.as_dict(),
        },
        "log_evidence": {
            "value": None if evidence is None else evidence.value,
            "stderr": None if evidence is None else evidence.stderr,
            "method": results.log_evidence_method,
        },
        "gap": None if gap is None else gap.value,
        "gap_stderr": None if gap is None else finite_or_none(gap.stderr),
        "converged": results.converged,
        "seconds": {k: round(v, 4) for k, v in results.seconds.items()},
        "parameters": results.parameter_table(),
    }


def fit_text(results, model_label: str) -> str:
    """What ``elbox fit`` prints: the bound both ways, the evidence, the gap and q's summary."""
    report = results.report
    evidence, gap = results.log_evidence, results.gap
    if results.method == "cavi":
        header = f"{model_label}: CAVI, {results.trace.size} coordinate-ascent sweeps" + (
            " (converged)" if results.converged else " (iteration limit reached)")
    else:
        header = f"{model_label}: {results.method} q, {results.trace.size} steps" + (
            " (stopped: the smoothed ELBO stopped rising)" if results.converged else "")
    lines = [
        header,
        "",
        f"ELBO                              {_pm(report.elbo)}",
        f"  (a) E_q[log p(x,z)] + H[q]      {_pm(report.joint_minus_entropy)}",
    ]
    if report.loglik_minus_kl is not None:
        lines.append(f"  (b) E_q[log p(x|z)] - KL(q||p)  {_pm(report.loglik_minus_kl)}"
                     f"   (KL {report.kl_to_prior.value:.4f}, {report.kl_method})")
    elif not results.model.has_split:
        lines.append("  (b) E_q[log p(x|z)] - KL(q||p)  not available: the model has no prior/likelihood split")
    else:
        lines.append("  (b) E_q[log p(x|z)] - KL(q||p)  not available: the prior is improper, so KL(q||p) is undefined")
    if evidence is not None and results.log_evidence_method == "exact":
        lines.append(f"log p(x)                          {evidence.value:.4f}   (exact)")
        lines.append(f"gap = log p(x) - ELBO = KL(q || p(z|x))  {_pm(gap)}")
    elif evidence is not None:
        how = f"{results.log_evidence_method}, from the {results.evidence_estimate.start}"
        lines.append(f"log p(x)                          {_pm(evidence)}   ({how})")
        lines.append(f"gap = log p(x) - ELBO = KL(q || p(z|x))  {_pm(gap)}")
    else:
        lines.append("log p(x)                          unknown (no exact value for this model; "
                     "estimate it with --evidence smc)")
    if results.converged is False:
        lines.append(_not_converged_note(results))
    seconds = results.seconds
    table = results.summary()
    lines += [
        "",
        table.to_string(float_format=lambda v: f"{v:.3f}"),
        "",
        f"seconds: compile {seconds['compile']:.2f}, fitting {seconds['fitting']:.2f}, total {seconds['total']:.2f}",
    ]
    return "\n".join(lines)


def _not_converged_note(results) -> str:
    if results.method == "cavi":
        return (f"warning: CAVI did not meet its tolerance within {results.steps} sweeps; the ELBO above is "
                "from the last sweep. Allow more sweeps (steps).")
    return (f"warning: the {results.steps} steps ran out before the stopping rule found the ELBO flat; the bound "
            "may still be rising. Fit with more steps.")


def _pm(estimate) -> str:
    """value ± stderr; a standard error that cannot be estimated is shown as such, not as nan."""
    if estimate.stderr is None or estimate.stderr != estimate.stderr:
        return f"{estimate.value:.4f} ± undefined"
    return f"{estimate.value:.4f} ± {estimate.stderr:.4f}"
