"""The likelihood of a diffusion model under its probability-flow ODE.

Both model kinds are variance-preserving diffusions: at noise level gamma = -log SNR the latent is
z = alpha x + sigma eps with alpha^2 = sigmoid(-gamma) and sigma^2 = sigmoid(gamma), and the
denoiser gives the score, grad log p_gamma(z) = -eps_hat(z, gamma) / sigma. The probability-flow
ODE with the same marginals as the diffusion (Song et al. 2021, eq. 13), written in the scaled
state x~ = z / alpha with the noise level as its clock (Karras et al. 2022, "EDM": the state is
x plus noise of scale sigma~ = sigma / alpha = exp(gamma / 2)), is

    dx~/dgamma = 1/2 exp(gamma / 2) eps_hat(alpha x~, gamma),

from x~ = x at gamma_start (the data) to gamma_end, where the model's prior is z = alpha_end x~ ~ N(0, I).
In this form the schedule's shape between its ends drops out and the paths are nearly straight,
so an adaptive solver needs few steps. It is a continuous normalising flow, whose exact log
density follows from the instantaneous change of variables (Chen et al. 2018):

    log p(x) = log N(alpha_end x~_end; 0, I) + d log alpha_end + int div dgamma,
    div = 1/2 exp(gamma / 2) alpha tr(d eps_hat / dz),

integrated with one adaptive solve (diffrax, Tsit5 with a PID step size controller at the stated
tolerances).

The trace of the denoiser's Jacobian is exact (d Jacobian-vector products) up to
``EXACT_TRACE_MAX_DIM`` dimensions; above, Hutchinson's estimator v^T (d eps_hat / dz) v with
Rademacher probes v, fixed along each solve (Grathwohl et al. 2019), unbiased for the log density;
the probes' share of the standard error is reported.

For data on a grid of bins of width w the density at the bin centres is not a probability. The
probability of x's bin is bounded by uniform dequantisation (Theis et al. 2016; Ho et al. 2019):

    log P(bin of x) = log int_{[0, w]^d} p(x + u) du >= E_u[log p(x + u)] + d log w,   u ~ U(-w/2, w/2)^d,

so -E_u[log p(x + u)] - d log w is an upper bound on -log P(x), labelled as a bound.

This ODE model is not the same distribution as the model sampled ancestrally (it shares its
score, not its sampling noise); score-based and VDM papers report it beside the bound.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from elbox import checks
from elbox.diffusion.bound import spread_over_devices
from elbox.errors import FittingError
from elbox.estimate import Estimate, json_ready, mean_and_stderr

EXACT_TRACE_MAX_DIM = 16
# On gmm8 (10,000 test examples, the default vdm) these tolerances take 78 steps on average and
# 50 s on 2 cores; tenfold tighter ones move the mean by 0.001 nats/dim, a fifth of its standard
# error across examples (0.005).
RTOL = 1e-4
ATOL = 1e-4
MAX_STEPS = 4096
SOLVER_CHECK_EXAMPLES = 100
HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class ProbabilityFlow(eqx.Module):
    """What the ODE needs of a model, as an equinox module (its arrays are traced, not baked into
    the compiled solver): :meth:`gamma_range`, the noise levels where the data enter and where the
    prior N(0, I) is; :meth:`eps_hat`, the predicted noise of z at noise level gamma (one example);
    and ``jump_ts``, noise levels where eps_hat has a kink (the solver steps onto them rather than
    across), or None."""

    jump_ts: jax.Array | None

    def gamma_range(self):
        raise NotImplementedError

    def eps_hat(self, z, gamma):
        raise NotImplementedError


class VDMFlow(ProbabilityFlow):
    """The flow of a :class:`~elbox.diffusion.vdm.VDM`: from its learned gamma_0 to gamma_1, the
    denoiser conditioned on gamma itself (so the schedule's shape does not enter)."""

    model: eqx.Module

    def __init__(self, model):
        self.model = model
        self.jump_ts = None

    def gamma_range(self):
        return self.model.schedule.ends()

    def eps_hat(self, z, gamma):
        return self.model.eps_hat(z, gamma)


class DDPMFlow(ProbabilityFlow):
    """The flow of a discrete-time model with T steps: step i has gamma_i = log((1 - alpha_bar_i) /
    alpha_bar_i); between steps the network is asked at the fractional step interpolated linearly
    in gamma, from step 1 (the data) to step T (the prior). The knots gamma_i are the solver's
    ``jump_ts``: across a kink an order-5 solver's error estimate is wrong (0.013 nats against 3e-5
    for a 100-step Gaussian), so a solve takes at least T - 1 steps."""

    network: eqx.Module
    gammas: jax.Array
    num_steps: int = eqx.field(static=True)

    def __init__(self, network, schedule):
        log_snr = np.log(schedule.alpha_bars) - np.log(schedule.one_minus_alpha_bars)
        self.network = network
        self.gammas = jnp.asarray(-log_snr, jnp.float32)
        self.num_steps = schedule.num_steps
        self.jump_ts = self.gammas

    def gamma_range(self):
        return self.gammas[0], self.gammas[-1]

    def step_of(self, gamma):
        """The fractional step (1..T) at noise level gamma."""
        return jnp.interp(gamma, self.gammas, jnp.arange(1, self.num_steps + 1, dtype=self.gammas.dtype))

    def eps_hat(self, z, gamma):
        return self.network(z, self.step_of(gamma), self.num_steps)[0]


def velocity(flow: ProbabilityFlow, x_scaled, gamma):
    """dx~/dgamma = 1/2 exp(gamma / 2) eps_hat(alpha x~, gamma), alpha = sqrt(sigmoid(-gamma))."""
    alpha = jnp.exp(0.5 * jax.nn.log_sigmoid(-gamma))
    return 0.5 * jnp.exp(0.5 * gamma) * flow.eps_hat(alpha * x_scaled, gamma)


def divergence(flow: ProbabilityFlow, x_scaled, gamma, probes):
    """The velocity's divergence from the probes, every probe's v^T (d velocity / dx~) v (shape
    (M,) for probes of shape (M, d)): with the standard basis scaled by sqrt(d), d J_ii, whose mean
    is tr J exactly; with Rademacher probes, Hutchinson's estimates of tr J."""
    _, jvp = jax.linearize(lambda y: velocity(flow, y, gamma), x_scaled)
    return jax.vmap(lambda v: jnp.vdot(v, jvp(v)))(probes)


class _Solve(NamedTuple):
    log_density: jax.Array  # (M,): log p(x), one per probe
    reached: jax.Array  # the noise level the solver reached (gamma_end when it succeeded)
    ok: jax.Array
    num_steps: jax.Array


def _solve_one(flow, x, probes, rtol, atol, max_steps):
    num_probes = probes.shape[0]

    def vector_field(gamma, state, args):
        x_scaled, _ = state
        return velocity(flow, x_scaled, gamma), divergence(flow, x_scaled, gamma, probes)

    gamma_start, gamma_end = flow.gamma_range()
    state0 = (x, jnp.zeros((num_probes,), x.dtype))
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), diffrax.Tsit5(), gamma_start, gamma_end, None, state0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, jump_ts=flow.jump_ts),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False,
    )
    x_end, integral = (leaf[-1] for leaf in solution.ys)
    log_alpha_end = 0.5 * jax.nn.log_sigmoid(-gamma_end)
    z_end = jnp.exp(log_alpha_end) * x_end
    log_prior = -0.5 * jnp.sum(jnp.square(z_end)) - x.size * (HALF_LOG_TWO_PI - log_alpha_end)
    return _Solve(log_prior + integral, solution.ts[-1], solution.result == diffrax.RESULTS.successful,
                  solution.stats["num_steps"])


@eqx.filter_jit
def _solve_batch(flow, keys, rows, exact, num_probes, bin_width, rtol, atol, max_steps):
    """log p(x) per probe for a batch of examples (model units), with the dequantisation draw."""
    d = rows.shape[1]
    dtype = rows.dtype

    def one(key, x):
        key_probes, key_u = jax.random.split(key)
        if exact:
            probes = jnp.sqrt(jnp.asarray(d, dtype)) * jnp.eye(d, dtype=dtype)
        else:
            probes = jax.random.rademacher(key_probes, (num_probes, d), dtype)
        if bin_width is not None:
            x = x + bin_width * (jax.random.uniform(key_u, x.shape, dtype) - 0.5)
        return _solve_one(flow, x, probes, rtol, atol, max_steps)

    return jax.vmap(one)(keys, rows)


@dataclasses.dataclass(frozen=True)
class LikelihoodEstimate:
    """-log p(x) under the probability-flow ODE, per example and over a data set (model units).

    Attributes:
        nats: mean and standard error across examples of every example's -log p(x) (or, with
            ``dequantized``, of the upper bound on -log P(bin of x)), nats per example.
        per_example: every example's value, nats, shape (n,) (for paired differences).
        dequantized: True when the value is the dequantised bound of binned data.
        trace: ``"exact"`` or ``"hutchinson"``; ``num_probes`` the probes per example.
        stderr_data, stderr_probes: the standard error's parts from the spread of the examples
            and from the probes (0 with the exact trace), nats per example.
        solver_error: |mean(value at tolerances / 10 - value)| over the first
            ``solver_check_examples`` examples, nats per example: the solver's error in the mean.
        solver_error_per_example: mean |value at tolerances / 10 - value| over them.
        dominant_error: which of ``"data"``, ``"probes"`` and ``"solver"`` is the largest.
        rtol, atol, solver, mean_steps, max_steps_taken: how the ODE was solved.
    """

    nats: Estimate
    per_example: np.ndarray
    dequantized: bool
    trace: str
    num_probes: int
    stderr_data: float
    stderr_probes: float
    solver_error: float
    solver_error_per_example: float
    solver_check_examples: int
    dominant_error: str
    rtol: float
    atol: float
    solver: str
    mean_steps: float
    max_steps_taken: int

    def as_dict(self, num_dims: int, log_jacobian: float = 0.0) -> dict:
        """JSON-ready, per dimension and in the data's original units (minus ``log_jacobian``)."""
        per_dim = self.nats.value / num_dims - log_jacobian
        return json_ready({
            "nats_per_dim": per_dim,
            "bits_per_dim": per_dim / math.log(2.0),
            "stderr_nats_per_dim": self.nats.stderr / num_dims,
            "is_bound": self.dequantized,
            "what": ("upper bound on -log P(x) by uniform dequantisation" if self.dequantized
                     else "-log p(x) of the probability-flow ODE"),
            "trace": self.trace,
            "num_probes": self.num_probes,
            "stderr_from_data_nats_per_dim": self.stderr_data / num_dims,
            "stderr_from_probes_nats_per_dim": self.stderr_probes / num_dims,
            "solver_error_nats_per_dim": self.solver_error / num_dims,
            "solver_error_per_example_nats_per_dim": self.solver_error_per_example / num_dims,
            "solver_check_examples": self.solver_check_examples,
            "error_dominated_by": self.dominant_error,
            "rtol": self.rtol,
            "atol": self.atol,
            "solver": self.solver,
            "mean_solver_steps": self.mean_steps,
            "max_solver_steps": self.max_steps_taken,
            "num_examples": int(self.per_example.shape[0]),
        })


def _run_batches(flow, key, data, exact, num_probes, bin_width, rtol, atol, max_steps, batch_size):
    n, d = data.shape
    keys = jax.random.split(key, n)
    # Every batch padded to one shape (one compilation), a multiple of the device count.
    devices = len(jax.devices())
    batch_size = -(-batch_size // devices) * devices
    outputs = []
    for start in range(0, n, batch_size):
        rows, row_keys = data[start:start + batch_size], keys[start:start + batch_size]
        pad = batch_size - rows.shape[0]
        if pad:
            rows = jnp.concatenate([rows, jnp.repeat(rows[:1], pad, axis=0)])
            row_keys = jnp.concatenate([row_keys, jnp.repeat(row_keys[:1], pad, axis=0)])
        row_keys, rows = spread_over_devices(row_keys, rows)
        out = _solve_batch(flow, row_keys, rows, exact, num_probes, bin_width, float(rtol), float(atol),
                           int(max_steps))
        outputs.append(jax.tree_util.tree_map(lambda a, keep=rows.shape[0] - pad: np.asarray(a)[:keep], out))
    solve = _Solve(*(np.concatenate(parts) for parts in zip(*outputs, strict=True)))
    failed = np.flatnonzero(~solve.ok)
    if failed.size:
        i = int(failed[0])
        raise FittingError(
            f"The probability-flow ODE solver did not reach the prior for {failed.size} of {n} examples: example "
            f"{i} stopped at the noise level gamma = -log SNR = {float(solve.reached[i]):.4g} after "
            f"{int(solve.num_steps[i])} steps (max_steps = "
            f"{max_steps}, rtol = {rtol:g}, atol = {atol:g}). Loosen the tolerances (e.g. rtol = atol = "
            f"{10 * max(rtol, atol):g}) or allow more steps (max_steps = {4 * max_steps}); a network whose score "
            "is very rough near that noise level may need more training."
        )
    return solve


def ode_nll(key, flow: ProbabilityFlow, data, *, bin_width: float | None = None, rtol: float = RTOL,
            atol: float = ATOL, exact_trace_max_dim: int = EXACT_TRACE_MAX_DIM, num_probes: int = 2,
            max_steps: int = MAX_STEPS, batch_size: int = 1000,
            solver_check_examples: int = SOLVER_CHECK_EXAMPLES) -> LikelihoodEstimate:
    """-log p(x) of every example of ``data`` (shape (n, d), model units) under the flow's ODE.

    Args:
        key: a JAX PRNG key (Hutchinson's probes, the dequantisation draws); example i uses the
            i-th key of ``jax.random.split(key, n)``, whatever the batching.
        flow: a :class:`ProbabilityFlow`.
        data: the examples.
        bin_width: for binned data, the bins' width w: the dequantised bound
            -log p(x + u) - d log w on -log P(bin of x), one u per example (None: a density).
        rtol, atol: the solver's relative and absolute tolerances.
        exact_trace_max_dim: the exact trace up to this dimension, Hutchinson's above.
        num_probes: Hutchinson's probes per example (at least 2, so that their share of the
            standard error can be measured).
        max_steps: the solver's step budget per example.
        batch_size: examples solved together (each with its own step sizes).
        solver_check_examples: the first this many examples are solved again at tolerances / 10
            to measure the solver's error.

    Returns:
        :class:`LikelihoodEstimate`.

    Raises:
        FittingError: the solver did not reach the prior's noise level for some example (the message says which,
            where it stopped, and which tolerances to try).

    Example:
        >>> result = ode_nll(jax.random.key(0), VDMFlow(model), test_data)
        >>> result.nats
    """
    rtol, atol = checks.positive("rtol", rtol), checks.positive("atol", atol)
    num_probes = checks.count("num_probes", num_probes, 2)
    max_steps = checks.count("max_steps", max_steps, 1)
    batch_size = checks.count("batch_size", batch_size, 1)
    data = jnp.asarray(data)
    n, d = data.shape
    exact = d <= exact_trace_max_dim
    if bin_width is not None:
        bin_width = checks.positive("bin_width", bin_width)
    solve = _run_batches(flow, key, data, exact, num_probes, bin_width, rtol, atol, max_steps, min(batch_size, n))
    shift = 0.0 if bin_width is None else d * math.log(bin_width)
    per_probe = -np.asarray(solve.log_density, np.float64) - shift  # (n, M)
    per_example = per_probe.mean(axis=1)
    nats = mean_and_stderr(per_example)
    probes_used = d if exact else num_probes
    if exact:
        stderr_probes = 0.0
    else:
        within = per_probe.var(axis=1, ddof=1).mean()
        stderr_probes = math.sqrt(within / num_probes / n)
    stderr_data = math.sqrt(max(float(nats.stderr) ** 2 - stderr_probes ** 2, 0.0)) if n > 1 else float("nan")
    m = min(n, solver_check_examples)
    solver_error = solver_error_per_example = 0.0
    if m:
        tight = _run_batches(flow, key, data[:m], exact, num_probes, bin_width, rtol / 10, atol / 10, 8 * max_steps,
                             min(batch_size, m))
        tight_values = -np.asarray(tight.log_density, np.float64).mean(axis=1) - shift
        shifts = tight_values - per_example[:m]
        solver_error, solver_error_per_example = abs(float(np.mean(shifts))), float(np.mean(np.abs(shifts)))
    sizes = {"data": stderr_data if math.isfinite(stderr_data) else 0.0, "probes": stderr_probes,
             "solver": solver_error}
    return LikelihoodEstimate(
        nats=nats,
        per_example=per_example,
        dequantized=bin_width is not None,
        trace="exact" if exact else "hutchinson",
        num_probes=probes_used,
        stderr_data=stderr_data,
        stderr_probes=stderr_probes,
        solver_error=solver_error,
        solver_error_per_example=solver_error_per_example,
        solver_check_examples=m,
        dominant_error=max(sizes, key=sizes.get),
        rtol=float(rtol),
        atol=float(atol),
        solver="diffrax Tsit5, PID step size",
        mean_steps=float(np.mean(solve.num_steps)),
        max_steps_taken=int(np.max(solve.num_steps)),
    )
