"""Text summaries of diffusion runs: the bound of a trained run, term by term, beside what it is
compared with (the true entropy, the exact -log p of the same examples, the baselines).

Example:
    >>> print(bound_text(evaluate_run("runs/gmm8")))
"""

from __future__ import annotations

import math

from elbox.diffusion.evaluate import BoundReport


def estimate_text(value: float, stderr: float, num_examples: int, digits: int = 4) -> str:
    """``value ± stderr``; where the standard error is undefined (one example), says so."""
    if stderr is not None and math.isfinite(stderr):
        return f"{value:.{digits}f} ± {stderr:.{digits}f}"
    why = "one example" if num_examples < 2 else "not finite"
    return f"{value:.{digits}f} (standard error undefined: {why})"


def bound_text(report: BoundReport) -> str:
    """The bound in nats and bits per dimension with its standard error, its three terms, the
    same model's discrete-time bound (vdm), the gap to the true entropy and to the exact -log p
    of the same examples where known, and the baselines of discrete data; one line each."""
    n = report.num_examples
    where = f", T = {report.T}" if report.T is not None else ""
    terms = report.terms
    lines = [
        f"{report.data}: bound on -log p(x) over {n} examples ({report.estimator}{where})",
        f"  nats/dim  {estimate_text(report.nats_per_dim, report.stderr, n)}",
        f"  bits/dim  {estimate_text(report.bits_per_dim, report.stderr_bits, n)}",
        f"  terms (nats/dim): reconstruction {terms.reconstruction:.4f}, denoising {terms.denoising:.4f}, "
        f"prior {terms.prior:.3g}",
    ]
    discrete = report.discrete_time
    if discrete is not None:
        lines.append(
            f"  the same model with T = {discrete.T} steps ({discrete.num_examples} examples): "
            f"{estimate_text(discrete.nats_per_dim, discrete.stderr, discrete.num_examples)} nats/dim "
            f"({discrete.bits_per_dim:.4f} bits/dim); denoising {discrete.terms.denoising:.4f}"
        )
    if report.true_entropy_per_dim is not None:
        lines.append(
            f"  true entropy {report.true_entropy_per_dim:.4f} nats/dim; gap (bound - entropy) "
            f"{estimate_text(report.gap_to_entropy, report.stderr, n)} nats/dim"
        )
    else:
        lines.append("  true entropy: unknown for these data")
    if report.gap_to_test_nll is not None:
        lines.append(
            f"  exact -log p(x) of the same examples {report.test_nll_per_dim:.4f} nats/dim; "
            f"gap (bound - (-log p), paired) {estimate_text(report.gap_to_test_nll, report.gap_to_test_nll_stderr, n)}"
        )
    lines += _likelihood_lines(report)
    if report.categorical_baseline_bits_per_dim is not None:
        lines.append(
            f"  baselines: independent categorical {report.categorical_baseline_bits_per_dim:.4f} bits/dim, "
            f"uniform {report.uniform_bits_per_dim:.4f} bits/dim"
        )
    return "\n".join(lines)


def _likelihood_lines(report: BoundReport) -> list[str]:
    """The ODE likelihood's solve, and every number on the examples they share with its paired
    difference to the row above (``--likelihood``, ``--iw K``)."""
    lines = []
    ode = report.likelihood
    if ode is not None:
        lines.append(
            f"  probability-flow ODE on {ode['num_examples']} examples: "
            f"{estimate_text(ode['nats_per_dim'], ode['stderr_nats_per_dim'], ode['num_examples'])} nats/dim"
            f"{' (an upper bound on -log P(x))' if ode['is_bound'] else ''}; {ode['trace']} trace, "
            f"rtol {ode['rtol']:g}, {ode['mean_solver_steps']:.0f} steps on average; solver error "
            f"{ode['solver_error_nats_per_dim']:.2g} nats/dim; the error is dominated by the "
            f"{ode['error_dominated_by']}"
        )
    table = report.side_by_side
    if table is None:
        return lines
    lines.append(f"  side by side on the first {table['num_examples']} examples, nats/dim (lower is better), "
                 "and the paired difference to the row above:")
    width = max(len(row["what"]) for row in table["rows"])
    for row in table["rows"]:
        text = f"    {row['what']:<{width}}  {estimate_text(row['nats_per_dim'], row['stderr_nats_per_dim'], 2)}"
        if "minus_previous_nats_per_dim" in row:
            text += f"   {row['minus_previous_nats_per_dim']:+.4f} ± {row['minus_previous_stderr']:.4f}"
        lines.append(text)
    lines.append("    what bounds what: exact -log p <= the T-step model's -log p <= -IW_K <= -IW_1 ~ -ELBO(T), and "
                 "continuous-time -ELBO <= -ELBO(T);")
    lines.append("    the ODE is another model with the same score: no model beats the data's own density, but the "
                 "ODE is not a bound on the others")
    return lines
