"""Plots saved as PNG files (matplotlib's Agg backend: no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from elbox.results import SamplingResults  # noqa: E402

MAX_TRACE_VARIABLES = 8


def trace_plot(results: SamplingResults, path: Path) -> Path:
    """ArviZ's trace plot (marginal densities per chain, and traces) of up to 8 variables."""
    import arviz as az

    names = list(results.posterior.data_vars)[:MAX_TRACE_VARIABLES]
    axes = az.plot_trace(results.inference_data, var_names=names, compact=True, figsize=(10, 1.8 * len(names)))
    figure = axes.ravel()[0].figure
    figure.suptitle(f"{results.model.name}: {results.method}, {results.chains} chains")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save_sampling_outputs(results: SamplingResults, folder: Path) -> list[Path]:
    """Write ``draws.nc`` (ArviZ netCDF) and ``trace.png`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    draws_path = folder / "draws.nc"
    results.inference_data.to_netcdf(str(draws_path))
    return [draws_path, trace_plot(results, folder / "trace.png")]
