"""The Bayesian mixture of Gaussians of Blei, Kucukelbir & McAuliffe (2017), Section 3."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from elbox.model import Conjugacy, Known, Model
from elbox.models._registry import load_data, register


def gaussian_mixture_numpyro(x, num_components, prior_sd):
    """mu_k ~ N(0, prior_sd^2 I); x_i ~ sum_k (1/K) N(mu_k, I), the assignments summed out.

    CAVI (``elbox fit gaussian_mixture --method cavi``) keeps the assignments c_i as latent
    variables instead; both bound the same log p(x).
    """
    d = x.shape[1]
    mu = numpyro.sample("mu", dist.Normal(0.0, prior_sd).expand([num_components, d]).to_event(2))
    weights = dist.Categorical(probs=jnp.full(num_components, 1.0 / num_components))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.MixtureSameFamily(weights, dist.Normal(mu, 1.0).to_event(1)), obs=x)


def gaussian_mixture_data():
    data = load_data("gaussian_mixture.json")
    return np.asarray(data["x"], dtype=float), int(data["num_components"]), float(data["prior_sd"])


@register("gaussian_mixture",
          "300 points from a mixture of 3 unit-variance Gaussians in 2-d; N(0, 5^2) prior on the means")
def gaussian_mixture() -> Model:
    known = Known(source="nothing exact: the posterior has K! symmetric modes (label switching)")
    args = gaussian_mixture_data()
    conjugacy = Conjugacy("gaussian_mixture", dict(zip(("x", "num_components", "prior_sd"), args)))
    return Model.from_numpyro(gaussian_mixture_numpyro, *args, name="gaussian_mixture", known=known,
                              conjugacy=conjugacy)
