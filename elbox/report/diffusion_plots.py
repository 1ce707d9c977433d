"""Plots of diffusion runs, saved as PNG files (matplotlib's Agg backend: no screen needed).

* :func:`per_step_plot`: the denoising terms L_{t-1} against t (log scale), with the
  reconstruction and prior terms named in the title.
* :func:`samples_scatter_plot`: 2-D samples over the true density's contours where the exact log
  density is known (gmm8, checkerboard), else over the training data.
* :func:`digits_grid_plot`: samples of 8 x 8 images as a grid.
* :func:`samples_plot`: whichever of the two fits the data.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from elbox.errors import DataError

MAX_BACKGROUND_POINTS = 5_000


def per_step_plot(bound, path: Path, title: str | None = None) -> Path:
    """The denoising terms (nats per dimension, mean over the test examples) against the step, log
    scale, from a :class:`~elbox.diffusion.evaluate.BoundReport` (or its dict,
    :func:`~elbox.diffusion.evaluate.elbo_run`): L_{t-1} for t = 2..T of a ddpm run, or the T
    steps' KLs of a vdm run's discrete-time bound against t = i / T. Non-positive values (Monte
    Carlo noise in a KL that is nearly zero cannot make it negative, but a learned model can make
    it tiny) are clipped to the smallest positive value so that the log axis shows them."""
    from elbox.report.diffusion_summary import estimate_text

    bound = bound.as_dict() if hasattr(bound, "as_dict") else bound
    n = bound["num_examples"]
    per_step = np.asarray([np.nan if v is None else v for v in bound["denoising_per_step"]], np.float64)
    positive = per_step[per_step > 0]
    floor = positive.min() if positive.size else 1e-12
    terms = bound["terms"]
    is_vdm = bound.get("model") == "vdm"
    table = bound.get("side_by_side")
    if table is None:
        figure, ax = plt.subplots(figsize=(7, 4))
    else:
        figure, (ax, ladder) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1.2, 1]})
        side_by_side_panel(ladder, table, bound["data"])
    if is_vdm:
        steps = bound["denoising_per_step_T"]
        t = np.arange(1, per_step.size + 1) / steps
        label = f"KL of step i (T = {steps})"
        ax.set_xlabel("time t = i / T")
        discrete = bound["discrete_time"]
        summary = (
            f"continuous-time bound {estimate_text(bound['nats_per_dim'], bound['stderr'], n)} nats/dim "
            f"(T = {steps}: {estimate_text(discrete['nats_per_dim'], discrete['stderr'], discrete['num_examples'])})\n"
            f"L_recon {terms['reconstruction']:.4f}, L_diffusion {terms['denoising']:.4f}, "
            f"L_prior {terms['prior']:.2e}"
        )
    else:
        t = np.arange(2, per_step.size + 2)
        label = r"$L_{t-1}$ (denoising)"
        ax.set_xlabel("diffusion step t")
        summary = (
            f"bound {estimate_text(bound['nats_per_dim'], bound['stderr'], n)} nats/dim; "
            f"L_0 {terms['reconstruction']:.4f}, sum L_t-1 {terms['denoising']:.4f}, L_T {terms['prior']:.2e}"
        )
    ax.plot(t, np.maximum(per_step, floor), color="tab:blue", lw=1.0, label=label)
    ax.set_yscale("log")
    ax.set_ylabel("nats per dimension")
    if is_vdm and bound.get("schedule"):
        twin = ax.twinx()
        twin.plot(bound["schedule"]["t"], bound["schedule"]["gamma"], color="tab:orange", lw=1.0, ls="--")
        twin.set_ylabel(r"learned $\gamma(t) = -\log \mathrm{SNR}$ (dashed)", color="tab:orange")
    heading = title or f"{bound['data']}: per-step terms of the bound"
    ax.set_title(f"{heading}\n{summary}", fontsize=9)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def side_by_side_panel(ax, table: dict, name: str = ""):
    """The side-by-side numbers of a bound report (exact -log p, ODE -log p, -IW_K, -ELBO) as paired
    differences from the first row on the examples they share, nats per dimension with
    2-standard-error bars (paired, so much narrower than the spread of the examples), one row
    each in the report's order; the labels give every number itself."""
    rows = table["rows"]
    differences = np.asarray([row.get("minus_first_nats_per_dim", 0.0) for row in rows], np.float64)
    errors = np.asarray([2 * (row.get("minus_first_stderr") or 0.0) for row in rows], np.float64)
    y = np.arange(len(rows))[::-1]
    colours = ["tab:green" if row["name"] == "test_nll" else "tab:purple" if row["name"] == "ode_nll"
               else "tab:blue" for row in rows]
    ax.axvline(0.0, color="0.6", lw=0.8)
    ax.errorbar(differences, y, xerr=errors, fmt="none", ecolor="0.4", capsize=3)
    ax.scatter(differences, y, c=colours, zorder=3)
    labels = [f"{row['what']}\n{row['nats_per_dim']:.4f} ± {row['stderr_nats_per_dim']:.4f}" for row in rows]
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("minus the first row, paired (nats/dim); bars: 2 standard errors")
    ax.set_title(f"{name}: likelihoods and bounds on the same {table['num_examples']} examples\n"
                 f"(lower is better; what bounds what: see the text report)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def _exact_log_density(name: str):
    from elbox.diffusion import data

    return {"gmm8": data.gmm8_log_density, "checkerboard": data.checkerboard_log_density}.get(name)


def samples_scatter_plot(samples, path: Path, *, name: str = "", train=None, title: str | None = None) -> Path:
    """2-D samples (the first two columns) as points over the exact density's contours (gmm8,
    checkerboard: filled contours of exp(log p)) or, where the density is unknown, over the
    training data (grey)."""
    samples = np.asarray(samples, np.float64)
    figure, ax = plt.subplots(figsize=(5.5, 5.5))
    log_density = _exact_log_density(name) if samples.shape[1] == 2 else None
    reference = np.asarray(train, np.float64)[:, :2] if train is not None else samples[:, :2]
    both = np.concatenate([reference, samples[:, :2]])
    low, high = np.quantile(both, 0.005, axis=0), np.quantile(both, 0.995, axis=0)
    pad = 0.1 * (high - low) + 1e-6
    low, high = low - pad, high + pad
    if log_density is not None:
        gx, gy = np.meshgrid(np.linspace(low[0], high[0], 300), np.linspace(low[1], high[1], 300))
        grid = np.stack([gx, gy], axis=-1).astype(np.float32)
        log_p = np.asarray(log_density(grid), np.float64)
        finite = np.isfinite(log_p)
        if finite.any() and np.ptp(log_p[finite]) > 1e-6:
            # Lines where log p is 1/2, 2 and 9/2 nats below its peak (1, 2, 3 sd of a Gaussian).
            top = log_p[finite].max()
            ax.contourf(gx, gy, np.where(finite, log_p, -np.inf), levels=[top - 4.5, top + 1], colors=["tab:blue"],
                        alpha=0.15)
            ax.contour(gx, gy, np.where(finite, log_p, top - 100), levels=[top - 4.5, top - 2, top - 0.5],
                       colors="tab:blue", linewidths=0.8, linestyles="solid")
        else:  # a density that is constant on its support: shade the support
            ax.contourf(gx, gy, finite.astype(float), levels=[0.5, 1.5], colors=["tab:blue"], alpha=0.2)
        background = "exact density"
    elif train is not None:
        shown = reference[:MAX_BACKGROUND_POINTS]
        ax.scatter(shown[:, 0], shown[:, 1], s=2, color="0.7", alpha=0.5, label="training data")
        background = "training data"
    else:
        background = None
    ax.scatter(samples[:, 0], samples[:, 1], s=3, color="tab:red", alpha=0.5, label=f"{len(samples)} samples")
    ax.set_xlim(low[0], high[0])
    ax.set_ylim(low[1], high[1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    suffix = f" over the {background}" if background else ""
    ax.set_title(title or f"{name}: diffusion samples{suffix}", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def digits_grid_plot(samples, path: Path, *, levels: int | None = 17, title: str | None = None) -> Path:
    """Samples of square images (flattened rows of length size^2, e.g. 8 x 8 digits with levels
    0..16) in a grid, dark ink on white as scikit-learn shows the digits."""
    samples = np.asarray(samples, np.float64)
    n, d = samples.shape
    size = math.isqrt(d)
    if size * size != d:
        raise DataError(f"digits_grid_plot needs square images; rows of {d} values are not")
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.8 + 0.4), squeeze=False)
    vmax = (levels - 1) if levels else float(samples.max())
    vmin = 0.0 if levels else float(samples.min())
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(samples[i].reshape(size, size), cmap="gray_r", vmin=vmin, vmax=vmax, interpolation="nearest")
    figure.suptitle(title or f"{n} diffusion samples", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def samples_plot(samples, path: Path, *, name: str = "", dim: int, levels=None, train=None) -> Path:
    """A digit grid for 64-column image data (``digits``), else a scatter of the first two columns."""
    if name == "digits" or (levels is not None and dim == 64):
        return digits_grid_plot(samples, path, levels=levels, title=f"{name}: {len(samples)} diffusion samples")
    return samples_scatter_plot(samples, path, name=name, train=train)


def loss_trace_plot(trace, path: Path, title: str = "training loss") -> Path:
    """The training loss per step with a running mean."""
    trace = np.asarray(trace, np.float64)
    figure, ax = plt.subplots(figsize=(7, 3.5))
    steps = np.arange(1, trace.size + 1)
    ax.plot(steps, trace, color="tab:blue", alpha=0.25, lw=0.5)
    width = max(1, trace.size // 50)
    if trace.size >= width:
        smooth = np.convolve(trace, np.ones(width) / width, mode="valid")
        ax.plot(steps[width - 1:], smooth, color="tab:blue", lw=1.5, label=f"running mean ({width} steps)")
        ax.legend(fontsize=8)
    if trace.size:
        ax.set_ylim(np.quantile(trace, 0.01), np.quantile(trace, 0.99))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
