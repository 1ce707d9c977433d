"""CAVI on the built-in models that are conditionally conjugate, returned as :class:`FitResults`
so that the command line and reports treat it like any other variational fit."""

from __future__ import annotations

import time

import jax
import numpy as np

from elbox.errors import SettingsError
from elbox.model import Model
from elbox.vi.elbo import ElboReport, Estimate
from elbox.vi.results import FitResults

CAVI_DRAWS = 4096


def fit_cavi(model: Model, key: jax.Array, max_iterations: int = 500) -> FitResults:
    """Coordinate-ascent VI with the ELBO in closed form (stderr 0), for the models that have
    closed-form updates: ``normal_normal``, ``normal_gamma`` and ``gaussian_mixture``."""
    fitters = {"normal_normal": _normal_normal, "normal_gamma": _normal_gamma, "gaussian_mixture": _gaussian_mixture}
    if model.name not in fitters:
        raise SettingsError(
            f"CAVI needs closed-form coordinate updates, which elbox has for {', '.join(fitters)}; "
            f"model '{model.name}' is not one of them. Use --method meanfield, fullrank or flow."
        )
    tic = time.perf_counter()
    key_fit, key_draws = jax.random.split(key)
    params, trace, parts, draws = fitters[model.name](key_fit, key_draws, max_iterations)
    seconds = time.perf_counter() - tic
    expected_ll, kl = (Estimate(float(v), 0.0) for v in parts)
    elbo = Estimate(expected_ll.value - kl.value, 0.0)
    report = ElboReport(elbo, elbo, elbo, expected_ll, kl, None, "closed form")
    trace = np.asarray(trace, dtype=np.float64)
    return FitResults(
        model=model, method="cavi", estimator="closed form", family=None, params=params, report=report,
        trace=trace, steps=max_iterations, stopped_early=trace.size < max_iterations,
        constrained_draws=draws, seconds={"compile": 0.0, "fitting": seconds, "total": seconds},
    )


def _normal_normal(key_fit, key_draws, max_iterations):
    from elbox.models import load_data
    from elbox.vi.cavi import cavi_normal_normal

    data = load_data("normal_normal.json")
    y, sigma, m0, s0 = np.asarray(data["y"]), data["sigma"], data["prior_mean"], data["prior_sd"]
    result = cavi_normal_normal(y, sigma, m0, s0)
    m, s2 = result.m, result.s2
    expected_ll = -0.5 * y.size * np.log(2 * np.pi * sigma**2) - (np.sum((y - m) ** 2) + y.size * s2) / (2 * sigma**2)
    draws = {"mu": m + np.sqrt(s2) * np.asarray(jax.random.normal(key_draws, (CAVI_DRAWS,)))}
    return result, [result.elbo], (expected_ll, expected_ll - result.elbo), draws


def _normal_gamma(key_fit, key_draws, max_iterations):
    from elbox.models.conjugate import normal_gamma_data
    from elbox.vi.cavi import cavi_normal_gamma, normal_gamma_elbo_parts

    y, mu0, lambda0, a0, b0 = normal_gamma_data()
    with jax.enable_x64(True):
        result = cavi_normal_gamma(y, mu0, lambda0, a0, b0, max_iterations=max_iterations)
        parts = normal_gamma_elbo_parts(np.asarray(y, np.float64), mu0, lambda0, a0, b0,
                                        result.mu_n, result.lambda_n, result.a_n, result.b_n)
        parts = [float(p) for p in parts]
    key_mu, key_tau = jax.random.split(key_draws)
    draws = {
        "mu": result.mu_n + np.asarray(jax.random.normal(key_mu, (CAVI_DRAWS,))) / np.sqrt(result.lambda_n),
        "tau": np.asarray(jax.random.gamma(key_tau, result.a_n, (CAVI_DRAWS,))) / result.b_n,
    }
    return result, result.elbo_trace, parts, draws


def _gaussian_mixture(key_fit, key_draws, max_iterations):
    from elbox.models.mixture import gaussian_mixture_data
    from elbox.vi.cavi import cavi_gaussian_mixture, gaussian_mixture_elbo_parts

    x, num_components, prior_sd = gaussian_mixture_data()
    with jax.enable_x64(True):
        result = cavi_gaussian_mixture(key_fit, np.asarray(x, np.float64), num_components, prior_sd,
                                       max_iterations=max_iterations)
        parts = [float(p) for p in gaussian_mixture_elbo_parts(np.asarray(x, np.float64), result.m, result.s2,
                                                               result.phi, prior_sd)]
    eps = np.asarray(jax.random.normal(key_draws, (CAVI_DRAWS,) + result.m.shape))
    draws = {"mu": result.m[None] + np.sqrt(result.s2)[None, :, None] * eps}
    return result, result.elbo_trace, parts, draws
