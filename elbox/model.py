"""The model p(z, x) = p(z) p(x | z), on an unconstrained real space.

Every inference method in elbox sees a model through one object, :class:`Model`:

* ``log_prior(u)``      = log p(T(u)) + log |det J_T(u)|   (the prior pushed to unconstrained space)
* ``log_likelihood(u)`` = log p(x | T(u))
* ``log_joint(u)``      = log_prior(u) + log_likelihood(u)

where ``u`` is a pytree (a dict of arrays, one per latent site) of unconstrained reals and ``T``
maps it to the constrained parameters ``z`` (positive scales, simplexes, ...). ``T`` is taken
from each distribution's support with NumPyro's ``biject_to``, so the log-Jacobian belongs to
the prior and KL(q(u) || p(u)) is the same number on either space.

Three ways to build one:

1. :meth:`Model.from_numpyro`: a NumPyro model function. Latent ``numpyro.sample`` sites are the
   prior, observed sites and ``numpyro.factor`` terms are the likelihood.
2. :meth:`Model.from_log_density`: a plain log-density of an unconstrained pytree, with an
   initial position. There is no prior/likelihood split: asking for one raises
   :class:`~elbox.errors.NoPriorLikelihoodSplit`.
3. :meth:`Model.from_prior_and_likelihood`: a dict of NumPyro distributions (the prior) and a
   function giving log p(x | z) of the constrained parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from elbox.errors import ModelError, NoPriorLikelihoodSplit

Pytree = Any


@dataclasses.dataclass(frozen=True)
class Known:
    """What is known about a model's posterior and evidence, for checks and reports.

    Attributes:
        posterior_mean, posterior_sd: per parameter label as ArviZ writes it (``theta[0]``),
            on the constrained scale; ``None`` when unknown.
        moments: ``"exact"`` (closed form), ``"reference"`` (long reference runs, e.g.
            posteriordb's Stan draws) or ``None``.
        log_evidence: exact log p(x) in nats, or ``None`` when not known in closed form.
        source: where the numbers come from, in words.
        posterior_sampler: ``(key, n) -> {site: array with leading axis n}``, exact independent
            draws of the posterior on the constrained scale (latent sites only), where the model
            can give them (conjugate forms); ``None`` otherwise. Reverse annealing starts there.
    """

    posterior_mean: dict[str, float] | None = None
    posterior_sd: dict[str, float] | None = None
    moments: str | None = None
    log_evidence: float | None = None
    source: str = ""
    posterior_sampler: Callable | None = dataclasses.field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict:
        return {
            "posterior_moments": self.moments,
            "log_evidence": self.log_evidence,
            "source": self.source,
        }


@dataclasses.dataclass(frozen=True)
class Conjugacy:
    """A model's declaration that it is a conditionally conjugate model of a known form.

    Attributes:
        form: ``"normal_normal"`` (y_i ~ N(mu, sigma^2), sigma known, mu ~ N(prior_mean,
            prior_sd^2)), ``"normal_gamma"`` (tau ~ Gamma(a0, b0), mu | tau ~ N(mu0, 1/(lambda0
            tau)), y_i ~ N(mu, 1/tau)) or ``"gaussian_mixture"`` (mu_k ~ N(0, prior_sd^2 I),
            x_i ~ (1/K) sum_k N(mu_k, I)).
        data: the data and hyperparameters the updates need, by name: ``y, sigma, prior_mean,
            prior_sd``; ``y, mu0, lambda0, a0, b0``; ``x, num_components, prior_sd``.

    Example:
        >>> Model.from_numpyro(my_model, conjugacy=Conjugacy("normal_normal",
        ...     {"y": y, "sigma": 2.0, "prior_mean": 0.0, "prior_sd": 10.0}))
    """

    form: str
    data: dict = dataclasses.field(default_factory=dict)


class Model:
    """A model p(z, x) seen on an unconstrained real pytree ``u``; see the module docstring.

    Build one with :meth:`from_numpyro`, :meth:`from_log_density` or
    :meth:`from_prior_and_likelihood`; the constructor itself takes the functions directly.

    Args:
        name: a short name used in reports.
        log_prior_fn, log_likelihood_fn: functions of ``u``; ``None`` when the model has no split.
        log_joint_fn: function of ``u``; defaults to the sum of the two above.
        init_position: an unconstrained pytree; fixes the structure and shapes of ``u``.
        constrain_fn: ``u -> dict`` of constrained named values (deterministic sites included).
        unconstrain_fn: the inverse map on the latent sites.
        site_log_density_fn: ``u -> dict`` of per-site log densities, used to name the site
            that makes a starting point non-finite.
        known: what is known exactly about the posterior and evidence.
        prior_is_proper: False when some prior is improper (then KL(q || p(z)) is undefined).
        gaussian_prior: ``(mean, variance)`` of the prior on the flat unconstrained space when it
            is an independent Gaussian with fixed parameters (for a closed-form KL), else None.
        supports: ``{site: constraint}``, each latent site's support (NumPyro constraints), used
            to check user starting values; empty when unknown.
        log_prior_and_likelihood_fn: ``u -> (log_prior, log_likelihood)`` in one evaluation, where
            the model computes both in one pass (a NumPyro model's trace); None to call the two.
        prior_draw_fn: ``key -> u``, one draw of the unconstrained parameters from the prior
            (what annealing from the prior starts from); None when the model cannot draw one.
        conjugacy: a :class:`Conjugacy` declaring that the model is a conditionally conjugate
            model of a form with closed-form coordinate-ascent (CAVI) updates, with its data and
            hyperparameters; None for any other model. CAVI is chosen by this declaration,
            never by the model's name.
    """

    def __init__(
        self,
        *,
        name: str,
        init_position: Pytree,
        log_prior_fn: Callable | None = None,
        log_likelihood_fn: Callable | None = None,
        log_joint_fn: Callable | None = None,
        constrain_fn: Callable | None = None,
        unconstrain_fn: Callable | None = None,
        site_log_density_fn: Callable | None = None,
        known: Known | None = None,
        prior_is_proper: bool = True,
        gaussian_prior: tuple[Any, Any] | None = None,
        supports: dict[str, Any] | None = None,
        conjugacy: Conjugacy | None = None,
        prior_draw_fn: Callable | None = None,
        log_prior_and_likelihood_fn: Callable | None = None,
    ):
        if log_joint_fn is None:
            if log_prior_fn is None or log_likelihood_fn is None:
                raise ModelError("A Model needs log_joint_fn, or both log_prior_fn and log_likelihood_fn.")
            log_joint_fn = lambda u: log_prior_fn(u) + log_likelihood_fn(u)
        self.name = name
        self.init_position = jax.tree_util.tree_map(jnp.asarray, init_position)
        self._log_prior_fn = log_prior_fn
        self._log_likelihood_fn = log_likelihood_fn
        self._log_joint_fn = log_joint_fn
        self._constrain_fn = constrain_fn or _identity_constrain
        self._unconstrain_fn = unconstrain_fn or (lambda z: z)
        self._site_log_density_fn = site_log_density_fn
        self.known = known or Known()
        self.prior_is_proper = prior_is_proper
        flat, self._unravel = _abstract_ravel(self.init_position)
        self.dimension = int(flat.size)
        self.flat_dtype = flat.dtype  # the dtype of the flat unconstrained vector
        # (mean, variance) of the prior on the flat unconstrained space when it is an
        # independent Gaussian with fixed parameters, for closed-form KL(q || p(z)).
        self.gaussian_prior = gaussian_prior
        self.supports = dict(supports or {})
        self.conjugacy = conjugacy
        self._prior_draw_fn = prior_draw_fn
        self._log_prior_and_likelihood_fn = log_prior_and_likelihood_fn
        self._programs: dict = {}
        # Traced once per input shape and dtype, then reused by every program that calls it
        # (vmap, grad and the drivers' loops transform the traced function, not the Python one):
        # tracing a NumPyro model costs about 0.1 s each time.
        self._flat_log_joint = jax.jit(lambda flat: self.log_joint(self.unravel(flat)))

    def program(self, key, build: Callable):
        """The program ``key`` (a compiled function, a driver's loop) of this model, made by
        ``build()`` the first time it is asked for and kept with the model: a second run with the
        same settings and shapes reuses it instead of tracing and compiling again. A ``None``
        key (settings that cannot be compared, such as a user's function) builds a program
        that is not kept."""
        if key is None:
            return build()
        if key not in self._programs:
            self._programs[key] = build()
        return self._programs[key]

    @property
    def parameter_names(self) -> list[str]:
        """The names of the latent parameters, as ``init=`` and :meth:`unconstrain` take them."""
        if isinstance(self.init_position, dict):
            return list(self.init_position)
        return list(_identity_constrain(self.init_position))

    # -- densities ----------------------------------------------------------------------------
    @property
    def has_split(self) -> bool:
        """Whether log p(z) and log p(x | z) are available separately."""
        return self._log_prior_fn is not None and self._log_likelihood_fn is not None

    def log_prior(self, u: Pytree) -> jax.Array:
        """log p(z) + log |det dz/du| at z = T(u)."""
        self._require_split("log_prior")
        return self._log_prior_fn(u)

    def log_likelihood(self, u: Pytree) -> jax.Array:
        """log p(x | z) at z = T(u)."""
        self._require_split("log_likelihood")
        return self._log_likelihood_fn(u)

    def log_joint(self, u: Pytree) -> jax.Array:
        """log p(x, z) + log |det dz/du| = log_prior(u) + log_likelihood(u)."""
        return self._log_joint_fn(u)

    def sample_prior(self, key, n: int) -> jax.Array:
        """``n`` independent draws u ~ p(u), the prior pushed to the unconstrained space, as flat
        vectors (shape ``(n, dimension)``); traceable."""
        self._require_split("sample_prior")
        if not self.prior_is_proper:
            raise ModelError(
                f"Model '{self.name}' has an improper prior: there is nothing to draw from. Start "
                "from a fitted q instead (elbox.fit, then pass the fit as start=)."
            )
        if self._prior_draw_fn is None:
            raise ModelError(
                f"Model '{self.name}' cannot draw from its prior (it was built from log densities "
                "only). Build it with Model.from_numpyro or Model.from_prior_and_likelihood, or "
                "start from a fitted q (start=)."
            )
        return jax.vmap(lambda k: self.ravel(self._prior_draw_fn(k)))(jax.random.split(key, n))

    def site_log_densities(self, u: Pytree) -> dict[str, jax.Array]:
        """Per-site contributions to the log joint (the whole log density as one site if unknown)."""
        if self._site_log_density_fn is None:
            return {"log_density": self.log_joint(u)}
        return self._site_log_density_fn(u)

    def _require_split(self, what: str):
        if not self.has_split:
            raise NoPriorLikelihoodSplit(
                f"{what} needs the model's prior and likelihood separately, but model "
                f"'{self.name}' was given as one log density. Build it with "
                "Model.from_numpyro or Model.from_prior_and_likelihood to use this."
            )

    # -- spaces --------------------------------------------------------------------------------
    def constrain(self, u: Pytree) -> dict[str, jax.Array]:
        """Map unconstrained ``u`` to the constrained named parameters (and deterministic sites)."""
        return self._constrain_fn(u)

    def unconstrain(self, z: dict[str, Any]) -> Pytree:
        """Map constrained latent values to the unconstrained pytree ``u``."""
        return self._unconstrain_fn(z)

    def ravel(self, u: Pytree) -> jax.Array:
        """Flatten ``u`` into one vector of length ``dimension``."""
        return ravel_pytree(u)[0]

    def unravel(self, flat: jax.Array) -> Pytree:
        """Inverse of :meth:`ravel`."""
        return self._unravel(flat)

    def flat_log_joint(self, flat: jax.Array) -> jax.Array:
        """``log_joint`` of a flat unconstrained vector: what the kernels evaluate."""
        return self._flat_log_joint(flat)

    def flat_log_prior(self, flat: jax.Array) -> jax.Array:
        """``log_prior`` of a flat unconstrained vector."""
        return self.log_prior(self.unravel(flat))

    def flat_log_likelihood(self, flat: jax.Array) -> jax.Array:
        """``log_likelihood`` of a flat unconstrained vector."""
        return self.log_likelihood(self.unravel(flat))

    def flat_log_prior_and_likelihood(self, flat: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(log_prior, log_likelihood)`` of a flat unconstrained vector, in one evaluation of the
        model where it can (what tempering evaluates at every step)."""
        self._require_split("log_prior_and_likelihood")
        u = self.unravel(flat)
        if self._log_prior_and_likelihood_fn is not None:
            return self._log_prior_and_likelihood_fn(u)
        return self._log_prior_fn(u), self._log_likelihood_fn(u)

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, dimension={self.dimension}, split={self.has_split})"

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_numpyro(
        cls,
        model_fn: Callable,
        *model_args,
        name: str | None = None,
        known: Known | None = None,
        conjugacy: Conjugacy | None = None,
        **model_kwargs,
    ) -> Model:
        """Build a Model from a NumPyro model function.

        Latent ``numpyro.sample`` sites form the prior (with the log-Jacobian of their
        ``biject_to`` transform); observed sample sites and ``numpyro.factor`` terms form the
        likelihood. Deterministic sites are returned by :meth:`constrain`.

        Example:
            >>> def coin():
            ...     p = numpyro.sample("p", dist.Beta(1, 1))
            ...     numpyro.sample("k", dist.Binomial(10, p), obs=7)
            >>> Model.from_numpyro(coin).log_joint({"p": jnp.array(0.0)})
        """
        model = _from_numpyro(model_fn, model_args, model_kwargs, name, known)
        model.conjugacy = conjugacy
        return model

    @classmethod
    def from_log_density(
        cls,
        log_density: Callable,
        init_position: Pytree,
        *,
        name: str = "log_density",
        known: Known | None = None,
    ) -> Model:
        """Build a Model from log p(x, z) (up to a constant) of an unconstrained pytree.

        There is no prior/likelihood split, so ``log_prior`` and ``log_likelihood`` raise
        :class:`~elbox.errors.NoPriorLikelihoodSplit`; parameters keep the names of the dict
        keys of ``init_position`` (or ``z`` for a bare array).
        """
        return cls(
            name=name,
            init_position=init_position,
            log_joint_fn=log_density,
            known=known,
        )

    @classmethod
    def from_prior_and_likelihood(
        cls,
        prior: dict[str, Any],
        log_likelihood: Callable[[dict[str, jax.Array]], jax.Array],
        *,
        name: str = "model",
        known: Known | None = None,
    ) -> Model:
        """Build a Model from independent prior distributions and a log-likelihood.

        Args:
            prior: ``{name: numpyro distribution}``; each parameter's support gives its map to
                the unconstrained space.
            log_likelihood: log p(x | z) as a function of the dict of constrained parameters.
        """
        from numpyro.distributions import transforms

        bijections = {}
        for site, d in prior.items():
            if d.support.is_discrete:
                raise ModelError(f"Site {site}: discrete priors cannot be sampled on a real space.")
            try:
                bijections[site] = transforms.biject_to(d.support)
            except NotImplementedError:
                raise ModelError(
                    f"Site {site}: NumPyro has no map from the real line to the support "
                    f"{d.support} of its {type(d).__name__} prior. Write the parameter as a "
                    "transform of unconstrained ones (for a sphere, normalise a normal vector)."
                ) from None
        prior_is_proper = not any(
            type(_base_distribution(d)).__name__ == "ImproperUniform" for d in prior.values()
        )
        init = {
            k: jnp.zeros(bijections[k].inverse_shape(d.shape()))
            for k, d in prior.items()
        }

        def constrain(u):
            return {k: bijections[k](u[k]) for k in prior}

        def site_terms(u):
            z = constrain(u)
            terms = {}
            for k, d in prior.items():
                log_det = bijections[k].log_abs_det_jacobian(u[k], z[k])
                terms[k] = jnp.sum(d.log_prob(z[k])) + jnp.sum(log_det)
            terms["_likelihood"] = log_likelihood(z)
            return terms

        def log_prior(u):
            terms = site_terms(u)
            return sum(v for k, v in terms.items() if k != "_likelihood")

        def prior_draw(key):
            keys = jax.random.split(key, len(prior))
            return {k: bijections[k].inv(d.sample(key_k)) for key_k, (k, d) in zip(keys, prior.items())}

        return cls(
            name=name,
            init_position=init,
            prior_draw_fn=prior_draw,
            log_prior_fn=log_prior,
            log_likelihood_fn=lambda u: log_likelihood(constrain(u)),
            constrain_fn=constrain,
            unconstrain_fn=lambda z: {k: bijections[k].inv(jnp.asarray(z[k])) for k in prior},
            site_log_density_fn=site_terms,
            known=known,
            prior_is_proper=prior_is_proper,
            supports={k: d.support for k, d in prior.items()},
        )


def _identity_constrain(u: Pytree) -> dict[str, jax.Array]:
    if isinstance(u, dict):
        return dict(u)
    leaves = jax.tree_util.tree_leaves(u)
    if len(leaves) == 1:
        return {"z": leaves[0]}
    return {f"z{i}": leaf for i, leaf in enumerate(leaves)}


# -- NumPyro models ---------------------------------------------------------------------------
def _from_numpyro(model_fn, model_args, model_kwargs, name, known) -> Model:
    from numpyro import handlers
    from numpyro.distributions import transforms
    from numpyro.infer.util import _unconstrain_reparam, compute_log_probs, constrain_fn

    name = name or getattr(model_fn, "__name__", "model")
    sites = _discover_sites(model_fn, model_args, model_kwargs, name)

    observed_sites, factor_sites = [], []
    init, supports = {}, {}
    float_dtype = jnp.result_type(float)
    for site_name, site in sites.items():
        if site.is_factor:
            factor_sites.append(site_name)
        elif site.is_observed:
            observed_sites.append(site_name)
            _require_finite_data(site_name, site.observed)
        else:
            if site.support is not None:
                supports[site_name] = site.support
            init[site_name] = np.zeros(site.unconstrained_shape, float_dtype)
    prior_is_proper = not any(site.improper for site in sites.values())

    if not init:
        raise ModelError(f"Model '{name}' has no latent sample sites: there is nothing to infer.")

    def site_terms(u):
        substituted = handlers.substitute(model_fn, substitute_fn=partial(_unconstrain_reparam, u))
        terms, _ = compute_log_probs(substituted, model_args, model_kwargs, {})
        return terms

    observed = set(observed_sites) | set(factor_sites)

    def split_terms(u):
        terms = site_terms(u)
        prior = sum((v for k, v in terms.items() if k not in observed), start=jnp.zeros(()))
        likelihood = sum((v for k, v in terms.items() if k in observed), start=jnp.zeros(()))
        return prior, likelihood

    def constrain(u):
        return constrain_fn(model_fn, model_args, model_kwargs, u, return_deterministic=True)

    def unconstrain(z):
        substituted = handlers.substitute(model_fn, data={k: z[k] for k in init})
        tr = handlers.trace(handlers.seed(substituted, rng_seed=0)).get_trace(*model_args, **model_kwargs)
        return {k: transforms.biject_to(tr[k]["fn"].support).inv(tr[k]["value"]) for k in init}

    def joint(u):
        prior, likelihood = split_terms(u)
        return prior + likelihood

    def prior_draw(key):
        tr = handlers.trace(handlers.seed(model_fn, rng_seed=key)).get_trace(*model_args, **model_kwargs)
        return {k: transforms.biject_to(tr[k]["fn"].support).inv(tr[k]["value"]) for k in init}

    def prior_sites(u):
        substituted = handlers.substitute(model_fn, substitute_fn=partial(_unconstrain_reparam, u))
        return handlers.trace(handlers.seed(substituted, rng_seed=0)).get_trace(*model_args, **model_kwargs)

    return Model(
        name=name,
        init_position=init,
        log_prior_fn=lambda u: split_terms(u)[0],
        log_likelihood_fn=lambda u: split_terms(u)[1],
        log_prior_and_likelihood_fn=split_terms,
        log_joint_fn=joint,
        constrain_fn=constrain,
        unconstrain_fn=unconstrain,
        site_log_density_fn=site_terms,
        known=known,
        prior_is_proper=prior_is_proper,
        gaussian_prior=_fixed_gaussian_prior(prior_sites, init),
        supports=supports,
        prior_draw_fn=prior_draw,
    )


def _fixed_gaussian_prior(trace_at, init: dict):
    """(mean, variance) of the flat prior if every latent site is Normal with real support and
    parameters that do not depend on other latents (the same at two different points); else None.

    The sites' types are read from an abstract run of the model, and the two points' moments are
    computed in one compiled call.
    """
    import numpyro.distributions as dist

    def normal_of(tr, site_name):
        fn = tr[site_name]["fn"]
        while isinstance(fn, (dist.Independent, dist.ExpandedDistribution)):
            fn = fn.base_dist
        return fn if type(fn) is dist.Normal and tr[site_name]["scale"] is None else None

    if not _abstract_run(lambda u: all(normal_of(trace_at(u), k) is not None for k in init), init):
        return None

    def moments(shift):
        tr = trace_at(jax.tree_util.tree_map(lambda x: x + shift, init))
        means, variances = {}, {}
        for site_name in init:
            fn, shape = normal_of(tr, site_name), jnp.shape(tr[site_name]["value"])
            means[site_name] = jnp.broadcast_to(fn.loc, shape)
            variances[site_name] = jnp.broadcast_to(fn.scale**2, shape)
        return ravel_pytree(means)[0], ravel_pytree(variances)[0]

    means, variances = jax.device_get(jax.jit(jax.vmap(moments))(jnp.asarray([0.3, -0.7])))
    if not (np.allclose(means[0], means[1]) and np.allclose(variances[0], variances[1])):
        return None
    return means[0], variances[0]


class _Site(NamedTuple):
    """What building a Model needs to know of one NumPyro sample site."""

    is_observed: bool
    is_factor: bool
    observed: Any  # the observed value (None where it is computed inside the model)
    unconstrained_shape: tuple  # of a latent site
    support: Any  # a latent site's support, None where it depends on other parameters
    improper: bool  # a latent site with an ImproperUniform prior


def _discover_sites(model_fn, model_args, model_kwargs, name) -> dict[str, _Site]:
    """The model's sample sites, in order, from one run of the model.

    The run is abstract (``jax.eval_shape``: shapes, no numbers), so that finding the sites
    compiles nothing; everything is read from the sites inside that run. Latent sites take
    NumPyro's uniform initial values. A model whose Python code needs concrete numbers is run
    again, concretely.
    """
    from numpyro import handlers

    def run():
        seeded = handlers.substitute(handlers.seed(model_fn, rng_seed=0), substitute_fn=_init_site)
        trace = handlers.trace(seeded).get_trace(*model_args, **model_kwargs)
        return {site_name: _read_site(site_name, site) for site_name, site in trace.items()
                if site["type"] == "sample"}

    try:
        try:
            found = _abstract_run(run)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError):
            found = run()
    except ModelError:
        raise
    except Exception as err:  # the user's model code failed: show their error, not ours
        raise ModelError(f"Model '{name}' failed when run once to find its sites: {type(err).__name__}: {err}") from err
    return found


def _read_site(site_name: str, site: dict) -> _Site:
    fn = site["fn"]
    if site["is_observed"]:
        value = site["value"]
        return _Site(True, _is_factor(fn), None if isinstance(value, jax.core.Tracer) else value, (), None, False)
    if fn.support.is_discrete:
        raise ModelError(
            f"Site {site_name}: it is a discrete latent variable ({type(fn).__name__}). "
            "elbox samples continuous parameters; marginalise it out in the model "
            "(for a mixture, sum over components with logsumexp)."
        )
    shape = tuple(_bijection(site_name, fn.support).inverse_shape(jnp.shape(site["value"])))
    return _Site(False, False, None, shape, fn.support if _is_fixed(fn.support) else None,
                 type(_base_distribution(fn)).__name__ == "ImproperUniform")


def _require_finite_data(site_name: str, value) -> None:
    if value is None:
        return
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.number) and not np.all(np.isfinite(value)):
        bad = np.argwhere(~np.isfinite(value))[:3].tolist()
        raise ModelError(
            f"Site {site_name}: the observed data contain NaN or infinity "
            f"(first at index {bad}). Remove or impute those values before fitting."
        )


def _is_fixed(constraint) -> bool:
    """Whether a NumPyro constraint holds no traced values (its bounds do not depend on
    parameters)."""
    return not any(isinstance(leaf, jax.core.Tracer)
                   for value in vars(constraint).values() for leaf in jax.tree_util.tree_leaves(value))


def _bijection(site_name, support):
    """NumPyro's map from the real line to ``support``, with a named error where it has none."""
    from numpyro.distributions import transforms

    try:
        return transforms.biject_to(support)
    except NotImplementedError:
        raise _no_bijection(site_name, support) from None


def _no_bijection(site_name, support) -> ModelError:
    return ModelError(
        f"Site {site_name}: NumPyro has no map from the real line to its support "
        f"{support}, so it cannot be sampled on an unconstrained space. Write the "
        "parameter as a transform of unconstrained ones (or use a NumPyro reparameterisation)."
    )


def _init_site(site):
    """NumPyro's uniform initialisation, with a named error for supports that have no bijection."""
    from numpyro.infer.initialization import init_to_uniform

    try:
        return init_to_uniform(site)
    except NotImplementedError:
        raise _no_bijection(site["name"], site["fn"].support) from None


def _abstract_run(fn: Callable, *args):
    """``fn(*args)`` run abstractly (``jax.eval_shape``: shapes, no numbers, nothing compiled),
    for the Python values it returns; any array among them is a tracer, good for its shape only."""
    results = []
    jax.eval_shape(lambda *a: results.append(fn(*a)), *args)
    return results[0]


def _abstract_ravel(tree) -> tuple[jax.ShapeDtypeStruct, Callable]:
    """The shape and dtype of ``ravel_pytree(tree)[0]`` and its ``unravel``, without computing
    the flat vector (which would compile a concatenation)."""

    def shape_and_unravel(t):
        flat, unravel = ravel_pytree(t)
        return jax.ShapeDtypeStruct(flat.shape, flat.dtype), unravel

    return _abstract_run(shape_and_unravel, tree)


def _is_factor(fn) -> bool:
    return type(fn).__name__ == "Unit"


def _base_distribution(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn
