"""Plots saved as PNG files. The backend is left to the user (the command line chooses Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from elbox import arviz_compat
from elbox.results import SamplingResults

MAX_TRACE_VARIABLES = 8
MAX_TRACE_COMPONENTS = 10  # components of one vector variable drawn


def trace_plot(results: SamplingResults, path: Path) -> Path:
    """A trace plot of up to 8 variables, one row each: left, each chain's histogram of the
    marginal (every component of a vector variable overlaid, as ArviZ's compact view does);
    right, each chain's trace. Drawn with matplotlib, the same on either ArviZ line."""
    import numpy as np

    names = list(results.posterior.data_vars)[:MAX_TRACE_VARIABLES]
    figure, axes = plt.subplots(len(names), 2, figsize=(10, 1.8 * len(names)), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 2]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, name in zip(axes, names):
        values = np.asarray(results.posterior[name].values, np.float64)
        chains, draws = values.shape[:2]
        components = values.reshape(chains, draws, -1)[:, :, :MAX_TRACE_COMPONENTS]
        for chain in range(chains):
            color = colors[chain % len(colors)]
            for k in range(components.shape[2]):
                row[0].hist(components[chain, :, k], bins=30, density=True, histtype="step", color=color, lw=0.8)
                row[1].plot(components[chain, :, k], color=color, lw=0.4, alpha=0.7)
        row[0].set_ylabel(name)
        row[0].set_yticks([])
    axes[-1, 1].set_xlabel("draw")
    figure.suptitle(f"{results.model.name}: {results.method}, {results.chains} chains")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save_sampling_outputs(results: SamplingResults, folder: Path) -> list[Path]:
    """Write ``draws.nc`` (ArviZ netCDF, readable by either ArviZ line) and ``trace.png`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    draws_path = folder / "draws.nc"
    arviz_compat.to_netcdf(results.inference_data, draws_path)
    return [draws_path, trace_plot(results, folder / "trace.png")]


def elbo_trace_plot(results, path: Path) -> Path:
    """Left: the per-step ELBO estimates and their running mean, with log p(x) as a line above
    when known. Right: the second half of the run, zoomed, with the final ELBO ± 2 stderr."""
    import numpy as np

    trace = results.trace
    steps = np.arange(1, trace.size + 1)
    width = max(1, trace.size // 50)
    smooth = np.convolve(trace, np.ones(width) / width, mode="valid")
    evidence = results.log_evidence
    final = results.elbo
    figure, (full, zoom) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, start in ((full, 0), (zoom, trace.size // 2)):
        ax.plot(steps[start:], trace[start:], color="tab:blue", alpha=0.25, lw=0.6, label="ELBO estimate per step")
        keep = steps[width - 1:] > start
        ax.plot(steps[width - 1:][keep], smooth[keep], color="tab:blue", lw=1.5, label=f"running mean ({width} steps)")
        if evidence is not None:
            ax.axhline(evidence.value, color="black", lw=1.2, label=f"log p(x) = {evidence.value:.3f} (exact)")
        ax.axhline(final.value, color="tab:orange", lw=1, ls="--",
                   label=f"final ELBO {final.value:.3f} ± {final.stderr:.3f}")
        ax.set_xlabel("step")
        ax.set_ylabel("nats")
    top = evidence.value if evidence is not None else float(np.max(smooth))
    low = float(np.quantile(trace, 0.05))
    full.set_ylim(low - 0.1 * abs(top - low), top + 0.15 * abs(top - low) + 1e-3)
    tail = smooth[len(smooth) // 2:] if len(smooth) > 1 else trace
    spread = max(float(np.ptp(tail)), 4 * final.stderr, 1e-3)
    zoom.set_ylim(min(tail.min(), final.value) - 0.5 * spread, max(top, final.value) + 0.5 * spread)
    full.set_title(f"{results.model.name}: {results.method} ELBO")
    zoom.set_title("second half, zoomed")
    zoom.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def marginals_plot(fits: list, mcmc, path: Path, max_parameters: int = 6) -> Path:
    """Each fitted q's marginal densities over a histogram of MCMC draws, per parameter."""
    import numpy as np

    posterior = mcmc.posterior
    labels = []
    for name in posterior.data_vars:
        values = posterior[name].values.reshape(posterior[name].shape[0] * posterior[name].shape[1], -1)
        for j in range(values.shape[1]):
            labels.append((f"{name}[{j}]" if values.shape[1] > 1 or posterior[name].ndim > 2 else name, name, j))
    labels = labels[:max_parameters]
    columns = min(3, len(labels))
    rows = -(-len(labels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, (label, name, j) in zip(axes.ravel(), labels):
        reference = mcmc.posterior[name].values.reshape(-1, *mcmc.posterior[name].shape[2:])
        reference = reference.reshape(reference.shape[0], -1)[:, j]
        low, high = np.quantile(reference, [0.002, 0.998])
        ax.hist(reference, bins=50, range=(low, high), density=True, color="0.75", label=f"MCMC ({mcmc.method})")
        for fit in fits:
            draws = fit.posterior[name].values.reshape(-1, *fit.posterior[name].shape[2:])
            draws = draws.reshape(draws.shape[0], -1)[:, j]
            ax.hist(draws, bins=50, range=(low, high), density=True, histtype="step", lw=1.5, label=f"q: {fit.method}")
        ax.set_title(label)
    for ax in axes.ravel()[len(labels):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def evidence_bounds_plot(ladder: dict, path: Path, title: str = "") -> Path:
    """log p(x) as a line (with a ±2 standard-error band where estimated) and below it the ELBO of
    each family and IWAE_K for K = 1, 10, 100, 1000, each with a ±2 standard-error bar
    (``ladder`` from :func:`elbox.evidence.bounds`)."""
    labels, values, errors = [], [], []
    for family, estimate in ladder["elbo"].items():
        labels.append(f"ELBO\n{family}")
        values.append(estimate["value"])
        errors.append(2 * (estimate["stderr"] or 0.0))
    for k, estimate in ladder["iwae"].items():
        labels.append(f"IWAE\nK={k}")
        values.append(estimate["value"])
        errors.append(2 * (estimate["stderr"] or 0.0))
    evidence = ladder["log_evidence"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(labels))
    ax.errorbar(x, values, yerr=errors, fmt="o", color="C0", capsize=4, label="bounds (±2 s.e.)")
    ax.axhline(evidence["value"], color="C3", label=f"log p(x) ({evidence['method']})")
    if evidence["stderr"]:
        ax.axhspan(evidence["value"] - 2 * evidence["stderr"], evidence["value"] + 2 * evidence["stderr"],
                   color="C3", alpha=0.2)
    if ladder.get("upper_bound"):
        ax.axhline(ladder["upper_bound"]["value"], color="C2", linestyle="--", label="reverse AIS (upper bound)")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("nats")
    ax.set_title(title or "ELBO ≤ IWAE_K ≤ log p(x)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
