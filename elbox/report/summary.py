"""Text and JSON summaries of results, for the command line."""

from __future__ import annotations

from elbox.results import SamplingResults


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
        "parameters": results.parameter_table(),
    }


def sampling_text(results: SamplingResults, model_label: str) -> str:
    """A header line, the summary table and the timings, as printed by ``elbox sample``."""
    table = results.summary()[["mean", "sd", "5%", "95%", "ess_bulk", "ess_tail", "r_hat"]]
    seconds = results.seconds
    lines = [
        f"{model_label}: {results.method}, {results.chains} chains x {results.draws} draws "
        f"after {results.warmup} warm-up steps",
        "",
        table.to_string(float_format=lambda v: f"{v:.3f}"),
        "",
        f"acceptance rate {results.acceptance_rate:.3f}"
        + (f" (warm-up {results.warmup_acceptance_rate:.3f})" if results.warmup_acceptance_rate is not None else ""),
        f"seconds: compile {seconds['compile']:.2f}, warm-up {seconds['warmup']:.2f}, "
        f"sampling {seconds['sampling']:.2f}, total {seconds['total']:.2f}",
    ]
    worst = table["r_hat"].max()
    if worst > 1.01:
        lines.append(
            f"warning: R-hat up to {worst:.3f} (> 1.01): the chains disagree; run longer or check the model."
        )
    return "\n".join(lines)
