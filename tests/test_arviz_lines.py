"""elbox on either ArviZ line: the user's own container, files both lines read, and the same
ESS, R-hat and MCSE from both on the same draws.

The cross-line test needs the other line installed in another interpreter: set
``ELBOX_OTHER_PYTHON`` to its ``python`` (``.ci/run`` does, for its Python 3.13 run with ArviZ
1.x against the main environment's ArviZ 0.23). Without it that test is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import jax
import numpy as np
import pytest

import elbox
from elbox import arviz_compat

OTHER_PYTHON = os.environ.get("ELBOX_OTHER_PYTHON")


def autoregressive_draws(seed: int = 0, chains: int = 4, draws: int = 400) -> dict[str, np.ndarray]:
    """Correlated chains (AR(1), rho = 0.8) of a scalar and a 3-vector, with a skewed site,
    so that ESS, R-hat and the tail ESS are all away from their trivial values."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(chains, draws, 5))
    values = np.zeros_like(noise)
    for t in range(draws):
        values[:, t] = (0.8 * values[:, t - 1] if t else 0.0) + noise[:, t]
    values[1] += 0.3  # one chain a little off: R-hat above 1
    return {"mu": values[:, :, 0], "theta": values[:, :, 1:4], "scale": np.exp(values[:, :, 4])}


def test_results_hold_the_installed_lines_container():
    results = elbox.sample("eight_schools", jax.random.key(0), chains=2, warmup=50, draws=50, progress=False)
    expected = "DataTree" if arviz_compat.ARVIZ_1 else "InferenceData"
    assert type(results.inference_data).__name__ == expected
    import arviz as az

    table = az.summary(results.inference_data)  # the user's ArviZ works on it as it is
    assert {"mu", "tau", "theta[0]"} <= set(table.index)
    assert results.summary().index.tolist()[:3] == ["mu", "tau", "theta[0]"]


def test_netcdf_round_trip(tmp_path):
    container = arviz_compat.from_dict(autoregressive_draws(), {"lp": np.zeros((4, 400))})
    path = tmp_path / "draws.nc"
    arviz_compat.to_netcdf(container, path)
    back = arviz_compat.from_netcdf(path)
    for name, values in autoregressive_draws().items():
        np.testing.assert_array_equal(arviz_compat.group(back, "posterior")[name].values, values)
    assert arviz_compat.has_group(back, "sample_stats")


def test_summary_matches_its_definitions():
    """mean, sd (ddof 1) and quantiles by NumPy; the diagnostics are ArviZ's own functions."""
    draws = autoregressive_draws()
    table = arviz_compat.summary_table(arviz_compat.from_dict(draws))
    flat = draws["theta"].reshape(-1, 3)
    assert table.loc["theta[2]", "mean"] == pytest.approx(flat[:, 2].mean(), rel=1e-12)
    assert table.loc["theta[2]", "sd"] == pytest.approx(flat[:, 2].std(ddof=1), rel=1e-12)
    assert table.loc["mu", "95%"] == pytest.approx(np.quantile(draws["mu"], 0.95), rel=1e-12)
    # AR(1) with rho = 0.8 has ESS/N = (1 - rho) / (1 + rho) = 1/9 in the long run.
    assert 0.05 < table.loc["mu", "ess_bulk"] / draws["mu"].size < 0.25
    assert table.loc["mu", "r_hat"] > 1.01


_OTHER_LINE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from elbox import arviz_compat as c
    theirs = c.from_netcdf(sys.argv[1])
    table = c.summary_table(theirs)
    draws = {k: np.asarray(c.group(theirs, "posterior")[k].values) for k in ("mu", "theta", "scale")}
    c.to_netcdf(c.from_dict(draws), sys.argv[2])
    print(json.dumps({"version": c.ARVIZ_VERSION, "index": list(table.index), "columns": list(table.columns),
                      "values": table.values.tolist()}))
""")


@pytest.mark.skipif(not OTHER_PYTHON, reason="ELBOX_OTHER_PYTHON (an interpreter with the other ArviZ line) not set")
def test_diagnostics_agree_across_arviz_lines(tmp_path):
    """The same draws, summarised by this line and by the other one (each reading the other's file)."""
    ours_file, theirs_file = tmp_path / "ours.nc", tmp_path / "theirs.nc"
    arviz_compat.to_netcdf(arviz_compat.from_dict(autoregressive_draws()), ours_file)
    completed = subprocess.run([OTHER_PYTHON, "-c", _OTHER_LINE, str(ours_file), str(theirs_file)],
                               capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    other = json.loads(completed.stdout.strip().splitlines()[-1])
    assert other["version"].split(".")[0] != arviz_compat.ARVIZ_VERSION.split(".")[0], "the same ArviZ line twice"

    table = arviz_compat.summary_table(arviz_compat.from_netcdf(theirs_file))
    assert other["index"] == list(table.index) and other["columns"] == list(table.columns)
    theirs = np.asarray(other["values"], np.float64)
    relative = np.abs(table.values - theirs) / np.abs(theirs)
    worst = dict(zip(table.columns, relative.max(axis=0)))
    print(f"largest relative difference, ArviZ {arviz_compat.ARVIZ_VERSION} vs {other['version']}: {worst}")
    # Both lines implement the same estimators on float64 draws: agreement to rounding error.
    assert max(worst.values()) < 1e-9, worst
