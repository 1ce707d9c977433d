"""Posteriors from posteriordb (github.com/stan-dev/posteriordb), with their reference summaries.

Each model here is a NumPyro transcription of the posteriordb Stan program: the same priors
(including Stan's implicit flat priors), the same parameterisation and the same constrained
parameter names, so that the reference posterior means and sds computed by posteriordb with
long Stan NUTS runs apply unchanged. Those reference moments are attached as
``Known(moments="reference")`` with ArviZ-style 0-based labels (Stan's ``beta[1]`` is
``beta[0]`` here).

Data and reference summaries are shipped in ``elbox/models/data`` (see ``PROVENANCE.md``
there) and read with :func:`elbox.models.load_data`.

:func:`numpyro_model` gives the raw NumPyro model function of each posterior, e.g. to run
NumPyro's own NUTS on it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from elbox.errors import ModelError
from elbox.model import Known, Model
from elbox.models._registry import load_data, register

_REFERENCE_FILE = "posteriordb_reference.json"


# -- a proper prior on an ordered vector -------------------------------------------------------
class _OrderedIIDNormal(dist.Distribution):
    """The order statistics of ``size`` i.i.d. Normal(loc, scale) draws.

    Its support is ``ordered_vector`` and its density there is
    ``size! * prod_k Normal(x_k | loc, scale)``: Stan's ``ordered[K] mu; mu ~ normal(loc, scale)``
    up to the constant ``log(size!)``, but normalised, so the prior stays proper and stays in
    the prior (a ``numpyro.factor`` on top of an ``ImproperUniform`` would make elbox count
    the normal terms as likelihood and mark the prior improper).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.ordered_vector
    reparametrized_params = ["loc", "scale"]
    pytree_aux_fields = ("size",)

    def __init__(self, loc=0.0, scale=1.0, size=2, *, validate_args=None):
        if jnp.ndim(loc) or jnp.ndim(scale):
            raise ModelError("_OrderedIIDNormal takes a scalar loc and scale.")
        self.loc, self.scale, self.size = loc, scale, int(size)
        super().__init__(batch_shape=(), event_shape=(self.size,), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        eps = jax.random.normal(key, tuple(sample_shape) + (self.size,))
        return jnp.sort(self.loc + self.scale * eps, axis=-1)

    def log_prob(self, value):
        normal_terms = dist.Normal(self.loc, self.scale).log_prob(value).sum(-1)
        return normal_terms + math.lgamma(self.size + 1)


# -- the models -------------------------------------------------------------------------------
# Each factory loads its data once and returns a zero-argument NumPyro model closed over it.


def _eight_schools_noncentered() -> Callable:
    data = load_data("eight_schools.json")
    J = int(data["J"])
    y = jnp.asarray(data["y"], dtype=jnp.float32)
    sigma = jnp.asarray(data["sigma"], dtype=jnp.float32)

    def eight_schools_noncentered():
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([J]).to_event(1))
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))  # Stan: real<lower=0> tau ~ cauchy(0, 5)
        theta = numpyro.deterministic("theta", theta_trans * tau + mu)
        numpyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)

    return eight_schools_noncentered


def _kidscore_momiq() -> Callable:
    data = load_data("kidiq.json")
    kid_score = jnp.asarray(data["kid_score"], dtype=jnp.float32)
    mom_iq = jnp.asarray(data["mom_iq"], dtype=jnp.float32)

    def kidscore_momiq():
        # Stan: vector[2] beta with no prior statement, i.e. flat on R^2.
        beta = numpyro.sample("beta", dist.ImproperUniform(constraints.real, (), (2,)))
        sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
        mean = beta[0] + beta[1] * mom_iq
        numpyro.sample("kid_score", dist.Normal(mean, sigma).to_event(1), obs=kid_score)

    return kidscore_momiq


def _arK() -> Callable:
    data = load_data("arK.json")
    K, T = int(data["K"]), int(data["T"])
    y = np.asarray(data["y"], dtype=np.float64)
    # lags[t - K, k - 1] = y[t - k] for the 0-based times t = K..T-1 (Stan's t = K+1..T).
    lags = jnp.asarray(np.stack([y[K - k : T - k] for k in range(1, K + 1)], axis=1), dtype=jnp.float32)
    y_out = jnp.asarray(y[K:], dtype=jnp.float32)

    def arK():
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
        sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
        mean = alpha + lags @ beta
        numpyro.sample("y", dist.Normal(mean, sigma).to_event(1), obs=y_out)

    return arK


def _blr() -> Callable:
    data = load_data("sblrc.json")
    D = int(data["D"])
    X = jnp.asarray(data["X"], dtype=jnp.float32)
    y = jnp.asarray(data["y"], dtype=jnp.float32)

    def blr():
        beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([D]).to_event(1))
        sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))  # Stan: normal(0, 10) on sigma > 0
        numpyro.sample("y", dist.Normal(X @ beta, sigma).to_event(1), obs=y)

    return blr


def _low_dim_gauss_mix() -> Callable:
    data = load_data("low_dim_gauss_mix.json")
    y = jnp.asarray(data["y"], dtype=jnp.float32)

    def low_dim_gauss_mix():
        # Stan: ordered[2] mu; mu ~ normal(0, 2). The normal terms restricted to mu_1 < mu_2 are,
        # up to a constant, the density of the order statistics of two N(0, 2) draws: a proper
        # distribution on the ordered vectors, so the prior is written as one sample site.
        mu = numpyro.sample("mu", _OrderedIIDNormal(0.0, 2.0, 2))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
        theta = numpyro.sample("theta", dist.Beta(5.0, 5.0))
        # Stan: target += log_mix(theta, normal_lpdf(y | mu_1, sigma_1), normal_lpdf(y | mu_2, sigma_2))
        log_w = jnp.stack([jnp.log(theta), jnp.log1p(-theta)])
        per_component = dist.Normal(mu, sigma).log_prob(y[:, None]) + log_w
        numpyro.factor("y", jax.scipy.special.logsumexp(per_component, axis=-1).sum())

    return low_dim_gauss_mix


def _garch11() -> Callable:
    data = load_data("garch.json")
    y = jnp.asarray(data["y"], dtype=jnp.float32)
    sigma1 = float(data["sigma1"])

    def garch11():
        mu = numpyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
        alpha0 = numpyro.sample("alpha0", dist.ImproperUniform(constraints.positive, (), ()))
        # Stan declares alpha1 in (0, 1) and beta1 in (0, 1 - alpha1) with no prior statement:
        # the prior density is constant on that triangle. Its normalised form is 2 there, which
        # factors as alpha1 ~ Beta(1, 2) (marginal density 2 (1 - alpha1)) times
        # beta1 | alpha1 ~ Uniform(0, 1 - alpha1). Uniform(0, 1) for alpha1 would instead add a
        # factor 1 / (1 - alpha1) and change the posterior.
        alpha1 = numpyro.sample("alpha1", dist.Beta(1.0, 2.0))
        beta1 = numpyro.sample("beta1", dist.Uniform(0.0, 1.0 - alpha1))

        def step(sigma_prev, y_prev):
            sigma_t = jnp.sqrt(alpha0 + alpha1 * (y_prev - mu) ** 2 + beta1 * sigma_prev**2)
            return sigma_t, sigma_t

        sigma_1 = jnp.asarray(sigma1, dtype=y.dtype)
        _, rest = jax.lax.scan(step, sigma_1, y[:-1])
        sigma = jnp.concatenate([sigma_1[None], rest])
        numpyro.sample("y", dist.Normal(mu, sigma).to_event(1), obs=y)

    return garch11


def _diamonds() -> Callable:
    data = load_data("diamonds.json.gz")
    X = np.asarray(data["X"], dtype=np.float64)
    Y = jnp.asarray(data["Y"], dtype=jnp.float32)
    # brms' transformed data: drop the intercept column and centre the other K - 1 columns.
    means_X = X[:, 1:].mean(axis=0)
    Xc = jnp.asarray(X[:, 1:] - means_X, dtype=jnp.float32)
    Kc = Xc.shape[1]
    prior_only = bool(data["prior_only"])

    def diamonds():
        b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([Kc]).to_event(1))
        intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
        # Stan: student_t_lpdf(sigma | 3, 0, 10) - student_t_lccdf(0 | 3, 0, 10) on sigma > 0.
        sigma = numpyro.sample("sigma", dist.TruncatedDistribution(dist.StudentT(3.0, 0.0, 10.0), low=0.0))
        if not prior_only:
            numpyro.sample("Y", dist.Normal(intercept + Xc @ b, sigma).to_event(1), obs=Y)

    return diamonds


_FACTORIES: dict[str, Callable[[], Callable]] = {
    "eight_schools-eight_schools_noncentered": _eight_schools_noncentered,
    "kidiq-kidscore_momiq": _kidscore_momiq,
    "arK-arK": _arK,
    "sblrc-blr": _blr,
    "low_dim_gauss_mix-low_dim_gauss_mix": _low_dim_gauss_mix,
    "garch-garch11": _garch11,
    "diamonds-diamonds": _diamonds,
}

#: The posteriordb names of the models in this module.
NAMES: tuple[str, ...] = tuple(_FACTORIES)


@functools.cache
def numpyro_model(name: str) -> Callable:
    """The raw NumPyro model function (no arguments, data closed over) of posterior ``name``."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ModelError(f"No posteriordb model {name!r}; known: {', '.join(NAMES)}.") from None
    return factory()


class _LazyModels(Mapping):
    """``{name: NumPyro model function}``, building each function (and reading its data) on first use."""

    def __getitem__(self, name):
        if name not in _FACTORIES:
            raise KeyError(name)
        return numpyro_model(name)

    def __iter__(self):
        return iter(NAMES)

    def __len__(self):
        return len(NAMES)


#: ``{posteriordb name: NumPyro model function}``; data files are read on first access.
NUMPYRO_MODELS: Mapping[str, Callable] = _LazyModels()


# -- reference summaries ----------------------------------------------------------------------
_STAN_INDEX = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<index>[0-9,\s]+)\]$")


def _zero_based(label: str) -> str:
    """Stan's 1-based label to ArviZ's 0-based one: ``beta[1]`` -> ``beta[0]``, ``b[2,3]`` -> ``b[1,2]``."""
    match = _STAN_INDEX.match(label)
    if match is None:
        return label
    index = ",".join(str(int(i) - 1) for i in match["index"].split(","))
    return f"{match['name']}[{index}]"


def reference(name: str) -> dict:
    """posteriordb's reference summary of posterior ``name``, as shipped (Stan's 1-based labels)."""
    return load_data(_REFERENCE_FILE)[name]


def reference_known(name: str) -> Known:
    """What posteriordb's reference says of posterior ``name``: its means and sds."""
    ref = reference(name)
    params = ref["parameters"]
    return Known(
        posterior_mean={_zero_based(k): float(v["mean"]) for k, v in params.items()},
        posterior_sd={_zero_based(k): float(v["sd"]) for k, v in params.items()},
        moments="reference",
        log_evidence=None,
        source=(
            "posteriordb reference posterior (Stan NUTS, 10 chains x 10,000 draws after thinning), "
            f"posterior {name!r} of the posteriordb v1.0 snapshot"
        ),
    )


def _build(name: str) -> Model:
    return Model.from_numpyro(numpyro_model(name), name=name, known=reference_known(name))


# -- registration -----------------------------------------------------------------------------
@register(
    "eight_schools-eight_schools_noncentered",
    "Eight schools, non-centred hierarchical normal (posteriordb; 10 parameters, funnel-shaped)",
)
def eight_schools_noncentered() -> Model:
    return _build("eight_schools-eight_schools_noncentered")


@register("kidiq-kidscore_momiq",
          "Kid IQ on mother's IQ, linear regression with flat coefficients (posteriordb; 3 parameters)")
def kidiq_kidscore_momiq() -> Model:
    return _build("kidiq-kidscore_momiq")


@register("arK-arK", "Autoregressive AR(5) time series, 200 points (posteriordb; 7 parameters)")
def arK_arK() -> Model:
    return _build("arK-arK")


@register("sblrc-blr", "Bayesian linear regression, 100 x 5, very tight coefficients (posteriordb; 6 parameters)")
def sblrc_blr() -> Model:
    return _build("sblrc-blr")


@register(
    "low_dim_gauss_mix-low_dim_gauss_mix",
    "Two-component 1-D Gaussian mixture with ordered means, 1000 points (posteriordb; 5 parameters)",
)
def low_dim_gauss_mix() -> Model:
    return _build("low_dim_gauss_mix-low_dim_gauss_mix")


@register("garch-garch11", "GARCH(1,1) volatility model, 200 points (posteriordb; 4 parameters)")
def garch_garch11() -> Model:
    return _build("garch-garch11")


@register(
    "diamonds-diamonds",
    "Diamond prices, regression on 24 highly correlated predictors, 5000 rows "
    "(posteriordb; 26 parameters, ill-conditioned)",
)
def diamonds_diamonds() -> Model:
    return _build("diamonds-diamonds")
