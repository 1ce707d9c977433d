"""Starting points on the unconstrained space, shared by MCMC (one per chain) and VI (q's location).

Without user values each start is ``model.init_position + U(-2, 2)`` coordinate-wise (Stan's
default), redrawn where the log density is not finite. With user values (constrained, by site
name) every start is there, after checking that each name is a parameter of the model and each
value lies in its site's support.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elbox.errors import InitializationError
from elbox.model import Model

INIT_RADIUS = 2.0
INIT_ATTEMPTS = 100


def initial_positions(
    model: Model,
    key: jax.Array,
    count: int,
    init: dict[str, Any] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``count`` flat unconstrained starting points (rows) and their finite log densities.

    With ``init`` (constrained values ``{site: value}``) every row starts there. Otherwise each
    row draws ``model.init_position + U(-2, 2)`` coordinate-wise, redrawing the rows whose log
    density is not finite up to 100 times.

    Raises:
        InitializationError: a name in ``init`` that is not a parameter, a parameter missing
            from it, a value outside its support, or no finite log density (naming the sites).
    """
    if init is not None:
        flat = user_position(model, init)
        positions = jnp.broadcast_to(flat, (count, flat.size))
        log_densities = model.program("log_densities", lambda: jax.jit(jax.vmap(model.flat_log_joint)))
        return positions, log_densities(positions)

    draw = model.program(("initial_positions", count),
                         lambda: jax.jit(lambda key: draw_initial_positions(model, key, count)))
    positions, log_densities = draw(key)
    check_initial_positions(model, positions, log_densities)
    return positions, log_densities


def draw_initial_positions(model: Model, key: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """``count`` rows ``model.init_position + U(-2, 2)`` and their log densities, the rows whose
    log density is not finite redrawn up to 100 times (attempt i draws with ``fold_in(key, i)``).
    Traceable: the driver compiles it into its first program. A row may still be non-finite
    after the last attempt; :func:`check_initial_positions` says which sites are to blame."""
    center = model.ravel(model.init_position)

    def redraw(carry):
        attempt, positions, log_densities = carry
        # Drawn flat and reshaped: the same numbers, a much faster compilation.
        draw = center + jax.random.uniform(
            jax.random.fold_in(key, attempt), (count * center.size,), center.dtype, -INIT_RADIUS, INIT_RADIUS
        ).reshape(count, center.size)
        positions = jnp.where(jnp.isfinite(log_densities)[:, None], positions, draw)
        return attempt + 1, positions, jax.vmap(model.flat_log_joint)(positions)

    def some_not_finite(carry):
        attempt, _, log_densities = carry
        return (attempt < INIT_ATTEMPTS) & ~jnp.all(jnp.isfinite(log_densities))

    start = (jnp.int32(0), jnp.zeros((count, center.size), center.dtype), jnp.full(count, -jnp.inf, center.dtype))
    _, positions, log_densities = jax.lax.while_loop(some_not_finite, redraw, start)
    return positions, log_densities


def check_initial_positions(model: Model, positions, log_densities) -> None:
    """Raise an InitializationError naming the sites to blame if a drawn start is not finite."""
    finite = np.isfinite(np.asarray(log_densities))
    if not finite.all():
        bad = np.asarray(positions)[int(np.argmin(finite))]
        require_finite(model, bad, f"{INIT_ATTEMPTS} random starting points in [-2, 2]")


def user_position(model: Model, init: dict[str, Any]) -> jax.Array:
    """The flat unconstrained position of the user's constrained values ``{site: value}``,
    checked (names, supports, shapes, a finite log density)."""
    flat = _flat_from_user_values(model, init)
    require_finite(model, flat, "the given initial values")
    return flat


def _flat_from_user_values(model: Model, init) -> jax.Array:
    """The flat unconstrained vector of constrained values given by site name."""
    if not isinstance(init, dict):
        raise InitializationError(f"init must be a dict {{parameter: value}}, got a {type(init).__name__}.")
    parameters = list(model.parameter_names)
    unknown = [name for name in init if name not in parameters]
    if unknown:
        raise InitializationError(
            f"init names {', '.join(map(repr, unknown))}, which {'is' if len(unknown) == 1 else 'are'} not a "
            f"parameter of model '{model.name}'; its parameters are {', '.join(parameters)}."
        )
    missing = [name for name in parameters if name not in init]
    if missing:
        raise InitializationError(
            f"init lacks the parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)} of model "
            f"'{model.name}'; give a starting value for each of {', '.join(parameters)}."
        )
    for name, value in init.items():
        support = model.supports.get(name)
        if support is None:
            continue
        try:
            inside = bool(np.all(np.asarray(support.check(jnp.asarray(value)))))
        except Exception:  # a value of the wrong shape for the support's check
            inside = True  # left to the shape check below
        if not inside:
            shown = np.array2string(np.asarray(value), precision=4, threshold=6)
            raise InitializationError(
                f"init: {name} = {shown} lies outside the support of its prior ({support}); "
                "give a value inside it."
            )
    try:
        u = model.unconstrain(init)
    except Exception as err:
        raise InitializationError(
            f"init could not be mapped to the unconstrained space of model '{model.name}': "
            f"{type(err).__name__}: {err}"
        ) from None
    for name, value in u.items() if isinstance(u, dict) else ():
        expected = jnp.shape(model.init_position[name]) if isinstance(model.init_position, dict) else None
        if expected is not None and jnp.shape(value) != expected:
            raise InitializationError(
                f"init: {name} has shape {tuple(jnp.shape(init[name]))}, which does not match the parameter "
                f"(unconstrained shape {tuple(expected)}, given {tuple(jnp.shape(value))})."
            )
    return model.ravel(u)


def require_finite(model: Model, flat: jax.Array, where: str):
    """Raise an InitializationError naming the sites whose log density is not finite at ``flat``."""
    u = model.unravel(flat)
    total = jax.jit(model.log_joint)(u)
    if np.isfinite(float(total)):
        return
    terms = model.site_log_densities(u)
    constrained = model.constrain(u)
    bad = [name for name, value in terms.items() if not np.isfinite(float(value))]
    described = []
    for name in bad:
        site = name[1:-len("_log_det")] if name.startswith("_") and name.endswith("_log_det") else name
        value = constrained.get(site)
        shown = "" if value is None else f" at {site} = {np.array2string(np.asarray(value), precision=4, threshold=6)}"
        described.append(f"site {name}: log density {float(terms[name])}{shown}")
    raise InitializationError(
        f"The log density of model '{model.name}' is not finite at {where}: "
        + ("; ".join(described) or f"total {float(total)}")
        + ". Check the data and the supports of these parameters, or pass valid starting values with init=."
    )
