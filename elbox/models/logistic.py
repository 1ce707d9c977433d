"""Bayesian logistic regression on the Wisconsin diagnostic breast cancer data (569 x 30).

The data (raw features and 0/1 targets, as bundled with scikit-learn's ``load_breast_cancer``)
are shipped in ``elbox/models/data/breast_cancer.json.gz``; scikit-learn is not needed at run
time. Each feature column is standardised once at load time (mean 0, population sd 1).

Model: alpha ~ N(0, 5), beta_j ~ N(0, 1) (j = 1..30), y_i ~ Bernoulli(logit^-1(alpha + x_i . beta)).
Nothing about its posterior is known in closed form.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from elbox.model import Known, Model
from elbox.models._registry import load_data, register

_DATA_FILE = "breast_cancer.json.gz"


def standardized_data() -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: the 569 x 30 features standardised per column (float64), and the 0/1 targets."""
    data = load_data(_DATA_FILE)
    X = np.asarray(data["X"], dtype=np.float64)
    y = np.asarray(data["y"], dtype=np.int32)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X, y


@functools.cache
def numpyro_model() -> Callable:
    """The raw NumPyro model function (no arguments, data closed over)."""
    X_np, y_np = standardized_data()
    X = jnp.asarray(X_np, dtype=jnp.float32)
    y = jnp.asarray(y_np)
    n_features = X.shape[1]

    def logistic_regression():
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([n_features]).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=alpha + X @ beta).to_event(1), obs=y)

    return logistic_regression


@register(
    "logistic_regression",
    "Logistic regression on the breast cancer data, 569 x 30 standardised features (31 parameters)",
)
def logistic_regression() -> Model:
    return Model.from_numpyro(
        numpyro_model(),
        name="logistic_regression",
        known=Known(
            moments=None,
            log_evidence=None,
            source=(
                "no exact moments or evidence; data: UCI Wisconsin Diagnostic Breast Cancer, "
                "as bundled with scikit-learn (load_breast_cancer)"
            ),
        ),
    )
