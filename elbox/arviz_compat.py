"""The one place elbox touches ArviZ, for both of its lines.

ArviZ 0.23 (Python 3.11) keeps draws in an ``InferenceData``; ArviZ 1.x (arviz-base,
arviz-stats, arviz-plots; Python 3.12 and newer, required by PyMC 6) in an xarray ``DataTree``.
elbox builds the container of whichever line is installed, so ``results.inference_data`` is what
the user's own ArviZ expects, and reads it only through the functions here:

* :func:`from_dict`: the container from arrays with leading ``(chain, draw)`` axes;
* :func:`group`: one group (``posterior``, ``sample_stats``) as an xarray ``Dataset``;
* :func:`diagnostics`: bulk and tail ESS, rank-normalised split R-hat and the MCSE of the mean
  and of the sd per variable, from ArviZ (both lines implement the same estimators: Vehtari et
  al. 2021);
* :func:`summary_table`: the table elbox prints, built here the same way on both lines;
* :func:`to_netcdf` / :func:`from_netcdf`: the file both lines read (netCDF4 with one group per
  ArviZ group).
"""

from __future__ import annotations

import importlib
import math
import sys
import threading
from importlib import metadata
from typing import Any

import numpy as np

ARVIZ_VERSION = metadata.version("arviz")
ARVIZ_1 = int(ARVIZ_VERSION.split(".")[0]) >= 1

# Columns of the summary table, in order. ESS, MCSE and R-hat need at least this many draws
# per chain; below it they are NaN.
STATS_COLUMNS = ("mean", "sd", "5%", "95%")
DIAGNOSTIC_COLUMNS = ("mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat")
MIN_DRAWS_FOR_DIAGNOSTICS = 4
# Tail ESS is the smaller ESS of the indicators of these two quantiles (Vehtari et al. 2021).
TAIL_PROBABILITIES = (0.05, 0.95)



def import_in_background() -> None:
    """Start importing ArviZ (about a second) on another thread, where it overlaps with XLA
    compiling the sampler; the first use then finds it imported (Python's import lock makes a
    use that comes sooner wait for it)."""
    if "arviz" not in sys.modules:
        threading.Thread(target=importlib.import_module, args=("arviz",), daemon=True).start()

def from_dict(posterior: dict[str, Any], sample_stats: dict[str, Any] | None = None):
    """The ArviZ container (``InferenceData`` on 0.23, ``DataTree`` on 1.x) of arrays shaped
    ``(chain, draw, ...)``."""
    import arviz as az

    posterior = {k: np.asarray(v) for k, v in posterior.items()}
    groups = {"posterior": posterior}
    if sample_stats:
        groups["sample_stats"] = {k: np.asarray(v) for k, v in sample_stats.items()}
    if ARVIZ_1:
        return az.from_dict(groups)
    return az.from_dict(**groups)


def group(container, name: str):
    """The group ``name`` of an ArviZ container as an xarray ``Dataset``."""
    if ARVIZ_1:
        return container[name].to_dataset()
    return getattr(container, name)


def has_group(container, name: str) -> bool:
    if ARVIZ_1:
        return name in container.children
    return hasattr(container, name)


def diagnostics(container) -> dict[str, Any]:
    """``{column: Dataset}`` for the columns of :data:`DIAGNOSTIC_COLUMNS`, computed by ArviZ on
    the posterior group."""
    import arviz as az

    computed = {
        "mcse_mean": az.mcse(container, method="mean"),
        "mcse_sd": az.mcse(container, method="sd"),
        "ess_bulk": az.ess(container, method="bulk"),
        # The tail quantiles stated: ArviZ 0.23's default, which 1.x does not share.
        "ess_tail": az.ess(container, method="tail", prob=TAIL_PROBABILITIES),
        "r_hat": az.rhat(container, method="rank"),
    }
    if ARVIZ_1:  # a DataTree holding the posterior's results
        computed = {k: v.to_dataset() if hasattr(v, "to_dataset") else v for k, v in computed.items()}
    return computed


def summary_table(container, diagnostics_too: bool = True):
    """A pandas DataFrame, one row per scalar parameter (labels as ArviZ writes them: ``mu``,
    ``theta[0]``, ``L[0, 1]``), columns mean, sd (ddof 1), 5% and 95% quantiles and, with
    ``diagnostics_too``, :data:`DIAGNOSTIC_COLUMNS` (NaN with fewer than 4 draws per chain)."""
    import pandas as pd

    posterior = group(container, "posterior")
    draws = int(posterior.sizes["draw"])
    columns = {name: {} for name in STATS_COLUMNS + (DIAGNOSTIC_COLUMNS if diagnostics_too else ())}
    computed = diagnostics(container) if diagnostics_too and draws >= MIN_DRAWS_FOR_DIAGNOSTICS else None
    labels = []
    for name, variable in posterior.data_vars.items():
        values = np.asarray(variable.values, np.float64)
        flat = values.reshape(values.shape[0] * values.shape[1], -1)
        per_variable = {key: np.asarray(computed[key][name].values) for key in DIAGNOSTIC_COLUMNS} if computed else None
        for index in np.ndindex(*values.shape[2:]):
            label = name if not index else f"{name}[{', '.join(str(i) for i in index)}]"
            labels.append(label)
            column = flat[:, np.ravel_multi_index(index, values.shape[2:]) if index else 0]
            columns["mean"][label] = float(column.mean())
            columns["sd"][label] = float(column.std(ddof=1)) if column.size > 1 else math.nan
            columns["5%"][label] = float(np.quantile(column, 0.05))
            columns["95%"][label] = float(np.quantile(column, 0.95))
            if diagnostics_too:
                for key in DIAGNOSTIC_COLUMNS:
                    columns[key][label] = float(per_variable[key][index]) if per_variable else math.nan
    return pd.DataFrame({key: [columns[key][label] for label in labels] for key in columns}, index=labels)


def to_netcdf(container, path) -> None:
    """Write the container as netCDF4, one group per ArviZ group: readable by either line."""
    container.to_netcdf(str(path))


def from_netcdf(path):
    """Read a file written by :func:`to_netcdf` (by either ArviZ line) into this line's container."""
    import arviz as az

    return az.from_netcdf(str(path))


def pareto_k(log_ratios) -> float:
    """The Pareto k̂ of the right tail of importance ratios exp(log_ratios), from ArviZ's PSIS
    (Vehtari et al. 2024). ArviZ 1.x's ``psislw`` takes log-likelihood values (it smooths their
    negatives, as leave-one-out needs), so it is given the negated log ratios."""
    log_ratios = np.asarray(log_ratios, dtype=np.float64).ravel()
    log_ratios = log_ratios[np.isfinite(log_ratios)]
    if ARVIZ_1:
        from arviz_stats.base import array_stats

        _, k = array_stats.psislw(-log_ratios, r_eff=1.0, axis=-1)
    else:
        import arviz

        _, k = arviz.psislw(log_ratios)
    return float(np.asarray(k))
