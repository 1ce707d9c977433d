"""CAVI for models that declare a conditionally conjugate form (:class:`~elbox.model.Conjugacy`),
returned as :class:`FitResults` so that the command line and reports treat it like any other
variational fit.

The updates are chosen by the form the model declares, with the data it declares, never by the
model's name: a model without a declaration gets a clear error, not someone else's posterior.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from elbox import checks
from elbox.errors import SettingsError
from elbox.estimate import Estimate
from elbox.model import Model
from elbox.vi.elbo import ElboReport
from elbox.vi.results import FitResults

CAVI_DRAWS = 4096


def fit_cavi(model: Model, key: jax.Array, max_iterations: int = 500, num_draws: int = CAVI_DRAWS) -> FitResults:
    """Coordinate-ascent VI with the ELBO in closed form (stderr 0), for a model whose
    ``conjugacy`` declares one of the forms in :data:`FORMS`.

    Args:
        model: a :class:`~elbox.Model` with a ``conjugacy`` declaration.
        key: a JAX PRNG key (the mixture's k-means++ start, and the draws from q).
        max_iterations: the largest number of sweeps over the factors.
        num_draws: draws from q returned as ``inference_data``.

    Raises:
        SettingsError: the model declares no conjugate form, or one elbox has no updates for.
    """
    max_iterations = checks.count("max_iterations", max_iterations, minimum=1)
    num_draws = checks.count("num_draws", num_draws, minimum=2)
    declared = model.conjugacy
    if declared is None:
        raise SettingsError(
            f"CAVI needs closed-form coordinate updates, and model '{model.name}' declares none "
            f"(Model(..., conjugacy=Conjugacy(form, data)) with a form among {', '.join(FORMS)}). "
            "Fit it with a gradient family instead: meanfield, fullrank or flow."
        )
    if declared.form not in FORMS:
        raise SettingsError(
            f"Model '{model.name}' declares the conjugate form {declared.form!r}, for which elbox has no CAVI "
            f"updates; forms with updates: {', '.join(FORMS)}."
        )
    needed = FORMS[declared.form][1]
    missing = [name for name in needed if name not in declared.data]
    if missing:
        raise SettingsError(
            f"Model '{model.name}' declares the form {declared.form!r} without {', '.join(missing)} in its "
            f"conjugacy data; the updates need {', '.join(needed)}."
        )
    tic = time.perf_counter()
    key_fit, key_draws = jax.random.split(key)
    updates = FORMS[declared.form][0]
    params, trace, parts, draws = updates(key_fit, key_draws, max_iterations, num_draws,
                                          **{name: declared.data[name] for name in needed})
    seconds = time.perf_counter() - tic
    expected_ll, kl = (Estimate(float(v), 0.0) for v in parts)
    elbo = Estimate(expected_ll.value - kl.value, 0.0)
    report = ElboReport(elbo, elbo, elbo, expected_ll, kl, None, "closed form")
    trace = np.asarray(trace, dtype=np.float64)
    return FitResults(
        model=model, method="cavi", estimator="closed form", family=None, params=params, report=report,
        trace=trace, steps=max_iterations, stopped_early=trace.size < max_iterations,
        constrained_draws=draws, seconds={"compile": 0.0, "fitting": seconds, "total": seconds},
        converged=bool(getattr(params, "converged", True)),
    )


def _normal_normal(key_fit, key_draws, max_iterations, num_draws, *, y, sigma, prior_mean, prior_sd):
    from elbox.vi.cavi import cavi_normal_normal

    y = np.asarray(y, dtype=np.float64)
    result = cavi_normal_normal(y, sigma, prior_mean, prior_sd)
    m, s2 = result.m, result.s2
    expected_ll = -0.5 * y.size * np.log(2 * np.pi * sigma**2) - (np.sum((y - m) ** 2) + y.size * s2) / (2 * sigma**2)
    draws = {"mu": m + np.sqrt(s2) * np.asarray(jax.random.normal(key_draws, (num_draws,)))}
    return result, [result.elbo], (expected_ll, expected_ll - result.elbo), draws


def _normal_gamma(key_fit, key_draws, max_iterations, num_draws, *, y, mu0, lambda0, a0, b0):
    from elbox.vi.cavi import cavi_normal_gamma, normal_gamma_elbo_parts

    y = np.asarray(y, dtype=np.float64)
    with jax.enable_x64(True):
        result = cavi_normal_gamma(y, mu0, lambda0, a0, b0, max_iterations=max_iterations)
        parts = normal_gamma_elbo_parts(y, mu0, lambda0, a0, b0, result.mu_n, result.lambda_n, result.a_n, result.b_n)
        parts = [float(p) for p in parts]
    key_mu, key_tau = jax.random.split(key_draws)
    draws = {
        "mu": result.mu_n + np.asarray(jax.random.normal(key_mu, (num_draws,))) / np.sqrt(result.lambda_n),
        "tau": np.asarray(jax.random.gamma(key_tau, result.a_n, (num_draws,))) / result.b_n,
    }
    return result, result.elbo_trace, parts, draws


def _gaussian_mixture(key_fit, key_draws, max_iterations, num_draws, *, x, num_components, prior_sd):
    from elbox.vi.cavi import cavi_gaussian_mixture, gaussian_mixture_elbo_parts

    x = np.asarray(x, np.float64)
    with jax.enable_x64(True):
        result = cavi_gaussian_mixture(key_fit, x, int(num_components), prior_sd, max_iterations=max_iterations)
        parts = [float(p) for p in gaussian_mixture_elbo_parts(x, result.m, result.s2, result.phi, prior_sd)]
    eps = np.asarray(jax.random.normal(key_draws, (num_draws,) + result.m.shape))
    draws = {"mu": result.m[None] + np.sqrt(result.s2)[None, :, None] * eps}
    return result, result.elbo_trace, parts, draws


# form -> (updates, the names of the declared data they take)
FORMS = {
    "normal_normal": (_normal_normal, ("y", "sigma", "prior_mean", "prior_sd")),
    "normal_gamma": (_normal_gamma, ("y", "mu0", "lambda0", "a0", "b0")),
    "gaussian_mixture": (_gaussian_mixture, ("x", "num_components", "prior_sd")),
}
