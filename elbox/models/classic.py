"""Classic test posteriors: eight schools (two parameterisations), Neal's funnel, an
ill-conditioned 100-d Gaussian."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from elbox.model import Known, Model
from elbox.models._registry import load_data, register

EIGHT_SCHOOLS_REFERENCE = "eight_schools-eight_schools_noncentered"


def eight_schools_centered_numpyro(y, sigma):
    """mu ~ N(0, 5), tau ~ HalfCauchy(5), theta_j ~ N(mu, tau), y_j ~ N(theta_j, sigma_j).

    The centred form: same posterior as the non-centred one, but a funnel between tau and
    theta that random-walk and gradient samplers find hard.
    """
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", len(y)):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _eight_schools_known() -> Known:
    from elbox.models.posteriordb import reference_known

    reference = reference_known(EIGHT_SCHOOLS_REFERENCE)  # its reference summary, without building that model
    return dataclasses.replace(
        reference, source=reference.source + " (same posterior in either parameterisation)"
    )


@register("eight_schools", "eight schools, non-centred: theta_j = mu + tau * theta_trans_j (10 parameters)")
def eight_schools() -> Model:
    from elbox.models.posteriordb import NUMPYRO_MODELS

    return Model.from_numpyro(
        NUMPYRO_MODELS[EIGHT_SCHOOLS_REFERENCE], name="eight_schools", known=_eight_schools_known()
    )


@register("eight_schools_centered", "eight schools, centred: theta_j ~ N(mu, tau) (10 parameters)")
def eight_schools_centered() -> Model:
    data = load_data("eight_schools.json")
    return Model.from_numpyro(
        eight_schools_centered_numpyro,
        np.asarray(data["y"], dtype=float),
        np.asarray(data["sigma"], dtype=float),
        name="eight_schools_centered",
        known=_eight_schools_known(),
    )


# -- Neal's funnel --------------------------------------------------------------------------------
FUNNEL_DIMENSION = 10


def funnel_numpyro(dimension=FUNNEL_DIMENSION):
    """v ~ N(0, 3^2); x_i | v ~ N(0, exp(v/2)^2), i = 1..dimension-1 (Neal 2003)."""
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([dimension - 1]).to_event(1))


@register("funnel", "Neal's funnel in 10 dimensions: v ~ N(0, 3^2), x_i ~ N(0, e^v)")
def funnel() -> Model:
    # E[x_i^2] = E[e^v] = e^{9/2}, so sd(x_i) = e^{9/4}; the density is normalised, so log Z = 0.
    sd_x = float(np.exp(9 / 4))
    labels = [f"x[{i}]" for i in range(FUNNEL_DIMENSION - 1)]
    known = Known(
        posterior_mean={"v": 0.0, **{k: 0.0 for k in labels}},
        posterior_sd={"v": 3.0, **{k: sd_x for k in labels}},
        moments="exact",
        log_evidence=0.0,
        source="closed form (normalised density, no data: log Z = 0)",
    )
    return Model.from_numpyro(funnel_numpyro, name="funnel", known=known)


# -- ill-conditioned Gaussian ---------------------------------------------------------------------
def gaussian_100d_scales() -> np.ndarray:
    """Standard deviations log-spaced from 0.01 to 100 (condition number 1e8 in the covariance)."""
    return np.logspace(-2, 2, 100)


def gaussian_100d_numpyro(scales):
    """z ~ N(0, diag(scales^2))."""
    numpyro.sample("z", dist.Normal(0.0, scales).to_event(1))


@register("gaussian_100d", "100-d Gaussian with independent sds log-spaced from 0.01 to 100")
def gaussian_100d() -> Model:
    scales = gaussian_100d_scales()
    known = Known(
        posterior_mean={f"z[{i}]": 0.0 for i in range(scales.size)},
        posterior_sd={f"z[{i}]": float(s) for i, s in enumerate(scales)},
        moments="exact",
        log_evidence=0.0,
        source="closed form (normalised density, no data: log Z = 0)",
    )
    return Model.from_numpyro(gaussian_100d_numpyro, scales, name="gaussian_100d", known=known)
