"""Where q starts: the best point on a quasi-Newton path toward the posterior's mode.

Adam moves q's location by about the learning rate per step, so a posterior hundreds of units
from the drawn start, or one that is a thousand times narrower in some coordinates than in
others, is out of its reach in any sensible number of steps. Before fitting, elbox therefore runs
L-BFGS on -log p(x, u) from the drawn start u_0, in coordinates scaled by the curvature there,

    u = u_0 + D y,   D_i = |d² log p(x, u_0) / du_i²|^(-1/2)   (Jacobi preconditioning),

the second derivatives taken by central differences of the gradient (2d gradients: a model that
VI can fit, differentiable in reverse mode, needs nothing more), and starts q at the point of
that path (u_0 included) where q's own starting shape has the highest ELBO, estimated with
common draws:

    ELBO(u_k) = E_eps[log p(x, u_k + s eps)] + H[N(0, s² I)],  s = the families' initial scale.

The ELBO, not log p, picks the point: on a funnel (eight schools, centred) the path runs into the
neck, where log p grows without bound and the ELBO of a fixed-width q collapses, so the ELBO
stops at the mouth (Pathfinder, Zhang et al. 2022, chooses along an L-BFGS path the same way).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from elbox.vi.families import INITIAL_SCALE

PATH_LENGTH = 50
ELBO_DRAWS = 32
# Above this dimension the 2d gradients for the curvature are not taken and the path runs unscaled.
MAX_PRECONDITIONED_DIMENSION = 2000


def best_start(model, key: jax.Array, start: jax.Array) -> jax.Array:
    """q's starting location: the point of the preconditioned L-BFGS path from ``start`` where
    N(u, INITIAL_SCALE² I) has the highest ELBO (``start`` itself if no point beats it)."""
    search = model.program(("vi_start", start.shape, str(start.dtype)),
                           lambda: jax.jit(lambda key, start: _best_on_path(model.flat_log_joint, key, start)))
    return search(key, start)


def curvature_diagonal(log_joint, u):
    """|d² log p / du_i²| at u by central differences of the gradient, steps h_i = 1e-2 (1 + |u_i|)
    (wide enough that float32 rounding of the gradient stays small, narrow enough for the
    curvature to change little over it: this is a preconditioner, not a Hessian)."""
    step = 1e-2 * (1.0 + jnp.abs(u))
    shifts = jnp.diag(step)
    gradient = jax.vmap(jax.grad(log_joint))
    difference = jnp.diagonal(gradient(u + shifts) - gradient(u - shifts))
    return jnp.abs(difference / (2.0 * step))


def _best_on_path(log_joint, key, start):
    if start.size <= MAX_PRECONDITIONED_DIMENSION:
        curvature = curvature_diagonal(log_joint, start)
        # A flat or non-finite direction keeps unit scale.
        usable = jnp.isfinite(curvature) & (curvature > 1e-12)
        preconditioner = jnp.where(usable, 1.0 / jnp.sqrt(jnp.where(usable, curvature, 1.0)), 1.0)
    else:
        preconditioner = jnp.ones_like(start)

    def negative_log_joint(y):
        return -log_joint(start + preconditioner * y)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(negative_log_joint)

    def step(carry, _):
        y, state = carry
        value, grad = value_and_grad(y, state=state)
        updates, state = solver.update(grad, state, y, value=value, grad=grad, value_fn=negative_log_joint)
        y = optax.apply_updates(y, updates)
        return (y, state), start + preconditioner * y

    y0 = jnp.zeros_like(start)
    _, path = jax.lax.scan(step, (y0, solver.init(y0)), None, length=PATH_LENGTH)
    path = jnp.concatenate([start[None], path])

    eps = jax.random.normal(key, (ELBO_DRAWS, start.size), start.dtype)
    # The entropy term is the same at every point; the expected log joint decides.
    expected_log_joint = jax.vmap(lambda u: jnp.mean(jax.vmap(log_joint)(u + INITIAL_SCALE * eps)))(path)
    finite = jnp.isfinite(expected_log_joint) & jnp.all(jnp.isfinite(path), axis=1)
    best = jnp.argmax(jnp.where(finite, expected_log_joint, -jnp.inf))
    return path[best]
