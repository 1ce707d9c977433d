"""The No-U-Turn Sampler: multinomial, iterative, with the generalised U-turn criterion.

Each transition draws a momentum p ~ N(0, M) and grows a leapfrog trajectory by doubling: at
depth j it picks a direction (forward or backward in time, fair coin) and integrates a new
subtree of 2^j steps from that end (Hoffman & Gelman 2014). It stops when

* the trajectory makes a U-turn: with ρ the sum of the momenta over a (sub)trajectory and
  v = M⁻¹ p at its two ends, v_left·ρ ≤ 0 or v_right·ρ ≤ 0 (Betancourt 2017's generalised
  criterion). It is checked on every sub-trajectory that the doubling built (a subtree that
  turns is thrown away whole) and on the merged trajectory, each time also across the seam
  where its two halves meet (each half plus the other's nearest point: Stan's additional
  checks), so that every state of the final trajectory would have built the same one;
* or an energy error H − H(start) exceeds 1000 (a divergence: the integrator has left the
  typical set, usually at a region of high curvature);
* or the depth reaches ``max_tree_depth`` (default 10, at most 2^10 − 1 = 1023 gradient
  evaluations).

The next state is drawn from the trajectory's points with weights exp(H(start) − H) (multinomial
sampling, Betancourt 2017): uniformly-progressive within a subtree, and biased toward the new
subtree when it is merged (accept its draw with probability min(1, W_new / W_old)), which keeps
the target invariant and moves farther than a plain multinomial draw.

The subtrees are built iteratively (a loop over leaves, not recursion), keeping the momentum,
the momentum sum and the previous leaf's momentum at the leaves where sub-trajectories begin
(at most ``max_tree_depth`` of them), as in Phan et al. (2019)'s iterative NUTS, so that the
kernel compiles to a pair of while loops.
The acceptance statistic (Stan's) is the mean of min(1, exp(H(start) − H)) over all the
transition's leapfrog steps; dual averaging aims it at 0.8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from elbox import checks
from elbox.mcmc import integrators, metric, window_adaptation
from elbox.mcmc.base import Sampler
from elbox.mcmc.integrators import GradientState, IntegratorState, StepParams
from elbox.mcmc.window_adaptation import DEFAULT_MASS_MATRIX

TARGET_ACCEPTANCE = 0.8
MAX_TREE_DEPTH = 10
DIVERGENCE_THRESHOLD = 1000.0


class NUTSInfo(NamedTuple):
    """What one transition did.

    Attributes:
        acceptance_rate: mean of min(1, exp(H(start) − H)) over the transition's leapfrog steps.
        diverging: the trajectory ended on an energy error above 1000.
        tree_depth: doublings kept (a last subtree thrown away for a U-turn or divergence inside it
            does not count, as in Stan's ``treedepth__``); ``max_tree_depth`` means the trajectory
            was cut short.
        n_steps: leapfrog steps (= gradient evaluations).
        energy: H at the chosen state (for E-BFMI).
        turning: the trajectory ended on a U-turn (not on depth or divergence).
    """

    acceptance_rate: jax.Array
    diverging: jax.Array
    tree_depth: jax.Array
    n_steps: jax.Array
    energy: jax.Array
    turning: jax.Array


class Trajectory(NamedTuple):
    """A trajectory (or subtree): its ends in time order, its multinomial draw, log Σ exp(H0 − H)
    over its points, and the sum of its momenta."""

    left: IntegratorState
    right: IntegratorState
    proposal: IntegratorState
    proposal_energy: jax.Array
    log_weight: jax.Array
    momentum_sum: jax.Array


def is_turning(inverse_mass, momentum_a, momentum_b, momentum_sum) -> jax.Array:
    """Generalised U-turn: M⁻¹p_a · ρ ≤ 0 or M⁻¹p_b · ρ ≤ 0 (the order of the ends does not matter),
    computed as p_a · M⁻¹ρ and p_b · M⁻¹ρ (M⁻¹ is symmetric): one product with M⁻¹, not two."""
    velocity_sum = metric.velocity(inverse_mass, momentum_sum)
    return (jnp.dot(momentum_a, velocity_sum) <= 0) | (jnp.dot(momentum_b, velocity_sum) <= 0)


def _where(condition, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(condition, a, b), new, old)


def _checkpoint_range(leaf_index):
    """The checkpoints to test after leaf ``n`` of a subtree: sub-trajectories ending at ``n`` start
    at the leaves stored in slots popcount(n >> 1) − (trailing ones of n) + 1 ... popcount(n >> 1)."""
    slot_max = jax.lax.population_count(leaf_index >> 1)
    trailing_ones = jax.lax.population_count(leaf_index ^ (leaf_index + 1)) - 1
    return slot_max - trailing_ones + 1, slot_max


def build_subtree(step, key, start: IntegratorState, direction, depth, start_energy, params: StepParams,
                  max_tree_depth: int):
    """Integrate 2^depth leapfrog steps from ``start`` in ``direction`` (±1), stopping early at a
    U-turn of any sub-trajectory or a divergence.

    Returns ``(subtree, first_leaf, turning, diverging, n_steps, acceptance_sum)``; the subtree's
    ends are in time order.
    """
    dimension = start.position.shape[0]
    dtype = start.position.dtype
    num_leaves = jnp.left_shift(jnp.int32(1), depth)
    checkpoints = jnp.zeros((max_tree_depth, dimension), dtype)
    zero = jnp.zeros((), dtype)
    init = dict(
        leaf_index=jnp.int32(0), current=start, first=start, proposal=start, proposal_energy=start_energy,
        log_weight=jnp.asarray(-jnp.inf, dtype), momentum_sum=jnp.zeros(dimension, dtype),
        checkpoint_momenta=checkpoints, checkpoint_sums=checkpoints, checkpoint_previous=checkpoints,
        turning=jnp.bool_(False), diverging=jnp.bool_(False), acceptance_sum=zero,
    )

    def keep_going(c):
        return (c["leaf_index"] < num_leaves) & ~c["turning"] & ~c["diverging"]

    def add_leaf(c):
        n = c["leaf_index"]
        leaf = step(c["current"], direction * params.step_size, params.inverse_mass)
        energy = integrators.energy(leaf, params.inverse_mass)
        log_weight_leaf = start_energy - energy  # -inf off the support
        diverging = energy - start_energy > DIVERGENCE_THRESHOLD
        log_weight = jnp.logaddexp(c["log_weight"], log_weight_leaf)
        # Uniformly-progressive multinomial sampling: the new leaf replaces the draw with
        # probability w_leaf / W_subtree-so-far.
        take = jnp.log(jax.random.uniform(jax.random.fold_in(key, n), dtype=dtype)) < log_weight_leaf - log_weight
        momentum_sum = c["momentum_sum"] + leaf.momentum

        slot_min, slot_max = _checkpoint_range(n)
        even = n % 2 == 0
        previous = c["current"].momentum  # the leaf before this one (the boundary for leaf 0)
        checkpoint_momenta = jnp.where(even, c["checkpoint_momenta"].at[slot_max].set(leaf.momentum),
                                       c["checkpoint_momenta"])
        checkpoint_sums = jnp.where(even, c["checkpoint_sums"].at[slot_max].set(momentum_sum), c["checkpoint_sums"])
        checkpoint_previous = jnp.where(even, c["checkpoint_previous"].at[slot_max].set(previous),
                                        c["checkpoint_previous"])

        def check(carry):
            """The block from the leaf in ``slot`` to this leaf: the U-turn criterion on the whole
            block, and across the seam of its two halves (Stan's additional checks)."""
            slot, _ = carry
            start_momentum = checkpoint_momenta[slot]
            # Momenta summed from the checkpoint's leaf to this one.
            block_sum = momentum_sum - checkpoint_sums[slot] + start_momentum
            # The right half starts at the next slot's leaf, or is this leaf alone.
            last = slot == slot_max
            after = jnp.minimum(slot + 1, max_tree_depth - 1)
            middle = jnp.where(last, leaf.momentum, checkpoint_momenta[after])
            before_middle = jnp.where(last, previous, checkpoint_previous[after])
            sum_to_middle = jnp.where(last, momentum_sum - leaf.momentum, checkpoint_sums[after] - middle)
            left_sum = sum_to_middle - checkpoint_sums[slot] + start_momentum
            right_sum = momentum_sum - sum_to_middle
            inverse_mass = params.inverse_mass
            turning = (
                is_turning(inverse_mass, start_momentum, leaf.momentum, block_sum)
                | is_turning(inverse_mass, start_momentum, middle, left_sum + middle)
                | is_turning(inverse_mass, before_middle, leaf.momentum, right_sum + before_middle)
            )
            return slot - 1, turning

        _, turning = jax.lax.while_loop(lambda carry: (carry[0] >= slot_min) & ~carry[1], check,
                                        (slot_max, jnp.bool_(False)))
        # A divergence ends the subtree first: its leaf is not checked for a U-turn (as in Stan).
        turning = turning & ~diverging
        return dict(
            leaf_index=n + 1, current=leaf, first=_where(n == 0, leaf, c["first"]),
            proposal=_where(take, leaf, c["proposal"]), proposal_energy=jnp.where(take, energy, c["proposal_energy"]),
            log_weight=log_weight, momentum_sum=momentum_sum,
            checkpoint_momenta=checkpoint_momenta, checkpoint_sums=checkpoint_sums,
            checkpoint_previous=checkpoint_previous, turning=turning, diverging=diverging,
            acceptance_sum=c["acceptance_sum"] + jnp.exp(jnp.minimum(log_weight_leaf, 0.0)),
        )

    c = jax.lax.while_loop(keep_going, add_leaf, init)
    forward = direction > 0
    subtree = Trajectory(
        left=_where(forward, c["first"], c["current"]),
        right=_where(forward, c["current"], c["first"]),
        proposal=c["proposal"], proposal_energy=c["proposal_energy"],
        log_weight=c["log_weight"], momentum_sum=c["momentum_sum"],
    )
    return subtree, c["first"], c["turning"], c["diverging"], c["leaf_index"], c["acceptance_sum"]


def build_trajectory(step, key, start: IntegratorState, start_energy, params: StepParams, directions,
                     max_tree_depth: int):
    """Double the trajectory from ``start`` in the given ``directions`` (±1 per depth) until a U-turn,
    a divergence or ``max_tree_depth``. Returns ``(trajectory, info)``."""
    dtype = start.position.dtype
    tree = Trajectory(start, start, start, start_energy, jnp.zeros((), dtype), start.momentum)
    init = dict(depth=jnp.int32(0), kept_depth=jnp.int32(0), tree=tree, n_steps=jnp.int32(0),
                acceptance_sum=jnp.zeros((), dtype), turning=jnp.bool_(False), diverging=jnp.bool_(False))

    def keep_going(c):
        return (c["depth"] < max_tree_depth) & ~c["turning"] & ~c["diverging"]

    def double(c):
        tree, depth = c["tree"], c["depth"]
        direction = directions[depth]
        forward = direction > 0
        key_subtree, key_accept = jax.random.split(jax.random.fold_in(key, depth))
        boundary = _where(forward, tree.right, tree.left)
        far_end = _where(forward, tree.left, tree.right)
        subtree, first, sub_turning, diverging, n_steps, acceptance_sum = build_subtree(
            step, key_subtree, boundary, direction, depth, start_energy, params, max_tree_depth)
        valid = ~sub_turning & ~diverging

        # Biased progressive sampling: move to the new subtree's draw with prob min(1, W_new / W_old).
        take = jnp.log(jax.random.uniform(key_accept, dtype=dtype)) < subtree.log_weight - tree.log_weight
        last = _where(forward, subtree.right, subtree.left)
        merged = Trajectory(
            left=_where(forward, tree.left, subtree.left),
            right=_where(forward, subtree.right, tree.right),
            proposal=_where(take, subtree.proposal, tree.proposal),
            proposal_energy=jnp.where(take, subtree.proposal_energy, tree.proposal_energy),
            log_weight=jnp.logaddexp(tree.log_weight, subtree.log_weight),
            momentum_sum=tree.momentum_sum + subtree.momentum_sum,
        )
        inverse_mass = params.inverse_mass
        merged_turning = (
            is_turning(inverse_mass, merged.left.momentum, merged.right.momentum, merged.momentum_sum)
            # Across the seam: the old trajectory plus the new subtree's first point, and the
            # new subtree plus the old trajectory's last point.
            | is_turning(inverse_mass, far_end.momentum, first.momentum, tree.momentum_sum + first.momentum)
            | is_turning(inverse_mass, boundary.momentum, last.momentum, subtree.momentum_sum + boundary.momentum)
        )
        return dict(
            depth=depth + 1,
            kept_depth=c["kept_depth"] + valid.astype(jnp.int32),
            tree=_where(valid, merged, tree),
            n_steps=c["n_steps"] + n_steps,
            acceptance_sum=c["acceptance_sum"] + acceptance_sum,
            turning=sub_turning | (valid & merged_turning),
            diverging=diverging,
        )

    c = jax.lax.while_loop(keep_going, double, init)
    info = NUTSInfo(
        acceptance_rate=c["acceptance_sum"] / jnp.maximum(c["n_steps"], 1),
        diverging=c["diverging"],
        tree_depth=c["kept_depth"],
        n_steps=c["n_steps"],
        energy=c["tree"].proposal_energy,
        turning=c["turning"],
    )
    return c["tree"], info


def build_kernel(log_density_fn: Callable, max_tree_depth: int = MAX_TREE_DEPTH) -> Callable:
    """``kernel(key, state, params) -> (state, info)``: one NUTS transition.

    The trajectory is built with whitened momenta and gradients (M⁻¹ = L Lᵀ,
    :func:`~elbox.mcmc.integrators.whitened_leapfrog`), where the metric is the identity: the
    same trajectory as with M⁻¹ itself, but a leaf costs two products with L whatever the
    number of U-turn checks, which matters for dense and low-rank mass matrices.
    """
    log_density_and_grad = integrators.value_and_grad(log_density_fn)

    def kernel(key, state: GradientState, params: StepParams):
        key_momentum, key_directions, key_tree = jax.random.split(key, 3)
        factor = metric.factor(params.inverse_mass)
        step = integrators.whitened_leapfrog(log_density_and_grad, factor)
        # p_w = Lᵀ p ~ N(0, I) for p ~ N(0, M).
        momentum = jax.random.normal(key_momentum, state.position.shape, state.position.dtype)
        start = IntegratorState(state.position, momentum, state.log_density,
                                factor.apply_transpose(state.log_density_grad))
        identity = StepParams(params.step_size, None)
        start_energy = integrators.energy(start, identity.inverse_mass)
        directions = jnp.where(jax.random.bernoulli(key_directions, shape=(max_tree_depth,)), 1, -1)
        tree, info = build_trajectory(step, key_tree, start, start_energy, identity, directions, max_tree_depth)
        chosen = tree.proposal
        gradient = factor.solve_transpose(chosen.log_density_grad)  # back from g_w = Lᵀ g
        return GradientState(chosen.position, chosen.log_density, gradient), info

    return kernel


def sampler(dimension: int, dtype, *, step_size: float | None = None, max_tree_depth: int = MAX_TREE_DEPTH,
            mass_matrix: str = DEFAULT_MASS_MATRIX, target_acceptance: float = TARGET_ACCEPTANCE) -> Sampler:
    """NUTS for the driver, with Stan's windowed warm-up of ε and M⁻¹
    (:mod:`elbox.mcmc.window_adaptation`)."""
    max_tree_depth = checks.count("max_tree_depth", max_tree_depth, minimum=1)
    return window_adaptation.gradient_sampler(
        "nuts", lambda fn: build_kernel(fn, max_tree_depth), _stats, dimension, dtype,
        target_acceptance=target_acceptance, mass_matrix=mass_matrix, step_size=step_size,
        settings={"max_tree_depth": max_tree_depth})


def _stats(info: NUTSInfo, state: GradientState) -> dict:
    return {"lp": state.log_density, "acceptance_rate": info.acceptance_rate, "diverging": info.diverging,
            "energy": info.energy, "n_steps": info.n_steps, "tree_depth": info.tree_depth}
