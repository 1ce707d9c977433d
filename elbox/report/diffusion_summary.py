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
    if report.categorical_baseline_bits_per_dim is not None:
        lines.append(
            f"  baselines: independent categorical {report.categorical_baseline_bits_per_dim:.4f} bits/dim, "
            f"uniform {report.uniform_bits_per_dim:.4f} bits/dim"
        )
    return "\n".join(lines)
