"""The likelihood of a diffusion model under its probability-flow ODE.

Both model kinds are variance-preserving diffusions: at time t in [t_start, 1] the latent is
z_t = alpha_t x + sigma_t eps with alpha_t^2 = sigmoid(-gamma(t)) and sigma_t^2 = sigmoid(gamma(t)),
gamma = -log SNR increasing. That is the SDE dz = -1/2 beta(t) z dt + sqrt(beta(t)) dW with
beta(t) = sigma_t^2 gamma'(t), and the denoiser gives its score, grad log p_t(z) = -eps_hat(z, t) / sigma_t.
The probability-flow ODE with the same marginals (Song et al. 2021, eq. 13),

    dz/dt = f(z, t) - 1/2 g(t)^2 grad log p_t(z) = 1/2 gamma'(t) [sigma_t eps_hat(z, t) - sigma_t^2 z],

turns the model into a continuous normalising flow from p_1 = N(0, I) back to t_start, whose exact
log density follows from the instantaneous change of variables (Chen et al. 2018):

    log p_start(z_start) = log N(z_1; 0, I) + int_{t_start}^1 div f~(z_t, t) dt,
    div f~ = 1/2 gamma'(t) [sigma_t tr(d eps_hat / dz) - d sigma_t^2],

both integrated with one adaptive solve from z_start = alpha_start x (diffrax, Tsit5 with a PID step
size controller at the stated tolerances). The data's log density is
log p(x) = log p_start(alpha_start x) + d log alpha_start.

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
from elbox.errors import FittingError
from elbox.estimate import Estimate, json_ready, mean_and_stderr

EXACT_TRACE_MAX_DIM = 16
RTOL = 1e-5
ATOL = 1e-5
MAX_STEPS = 4096
SOLVER_CHECK_EXAMPLES = 100
HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class ProbabilityFlow(eqx.Module):
    """What the ODE needs of a model, as an equinox module (its arrays are traced, not baked into
    the compiled solver): ``gamma(t) -> (gamma(t), gamma'(t))`` for a scalar t in [t_start, 1],
    ``eps_hat(z, t)`` the predicted noise of z_t (one example), and ``t_start``, where the data
    enter (z_start = alpha_start x), and ``jump_ts``, the times where gamma's second derivative
    jumps (the solver steps onto them rather than across), or None."""

    t_start: float = eqx.field(static=True)
    jump_ts: jax.Array | None

    def gamma(self, t):
        raise NotImplementedError

    def eps_hat(self, z, t):
        raise NotImplementedError


class VDMFlow(ProbabilityFlow):
    """The flow of a :class:`~elbox.diffusion.vdm.VDM`: its learned gamma on [0, 1]."""

    model: eqx.Module

    def __init__(self, model):
        self.model = model
        self.t_start = 0.0
        self.jump_ts = None

    def gamma(self, t):
        return self.model.schedule.value_and_derivative(t)

    def eps_hat(self, z, t):
        return self.model.eps_hat(z, self.model.schedule(t))


class DDPMFlow(ProbabilityFlow):
    """The flow of a discrete-time model with T steps: gamma_i = log((1 - alpha_bar_i) / alpha_bar_i)
    at t_i = i / T (i = 1..T), joined by a C^1 cubic Hermite interpolation (diffrax), and the
    network asked at the fractional step t T; the data enter at step 1 (t_start = 1 / T). The
    knots are the solver's ``jump_ts``: across a knot an order-5 solver's error estimate is
    wrong (0.013 nats against 3e-5 for 100 steps of a Gaussian), so a solve takes at least T steps."""

    network: eqx.Module
    interpolation: diffrax.CubicInterpolation
    num_steps: int = eqx.field(static=True)

    def __init__(self, network, schedule):
        T = schedule.num_steps
        log_snr = np.log(schedule.alpha_bars) - np.log(schedule.one_minus_alpha_bars)
        knots = jnp.asarray(np.arange(1, T + 1) / T, jnp.float32)
        values = jnp.asarray(-log_snr, jnp.float32)[:, None]
        self.network = network
        self.interpolation = diffrax.CubicInterpolation(knots, diffrax.backward_hermite_coefficients(knots, values))
        self.num_steps = T
        self.t_start = 1.0 / T
        self.jump_ts = knots

    def gamma(self, t):
        return self.interpolation.evaluate(t)[0], self.interpolation.derivative(t)[0]

    def eps_hat(self, z, t):
        return self.network(z, t * self.num_steps, self.num_steps)[0]


def drift(flow: ProbabilityFlow, z, t):
    """The probability-flow drift 1/2 gamma'(t) [sigma_t eps_hat(z, t) - sigma_t^2 z]."""
    gamma, dgamma = flow.gamma(t)
    sigma_sq = jax.nn.sigmoid(gamma)
    return 0.5 * dgamma * (jnp.sqrt(sigma_sq) * flow.eps_hat(z, t) - sigma_sq * z)


def divergence(flow: ProbabilityFlow, z, t, probes):
    """The drift's divergence from the probes: (1/M) sum_m v_m^T (d drift / dz) v_m for M probes
    (shape (M, d)); exact with the standard basis scaled by sqrt(d) (then each term is d J_ii and
    the mean is tr J), Hutchinson's estimate with Rademacher probes. Returns every probe's value,
    shape (M,)."""
    value, jvp = jax.linearize(lambda y: drift(flow, y, t), z)
    del value
    return jax.vmap(lambda v: jnp.vdot(v, jvp(v)))(probes)


class _Solve(NamedTuple):
    log_density: jax.Array  # (M,): log p_start(z_start), one per probe
    reached: jax.Array  # the time the solver reached (1 when it succeeded)
    ok: jax.Array
    num_steps: jax.Array


def _solve_one(flow, z_start, probes, rtol, atol, max_steps):
    num_probes = probes.shape[0]

    def vector_field(t, state, args):
        z, _ = state
        return drift(flow, z, t), divergence(flow, z, t, probes)

    state0 = (z_start, jnp.zeros((num_probes,), z_start.dtype))
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), diffrax.Tsit5(), flow.t_start, 1.0, None, state0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, jump_ts=flow.jump_ts),
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps, throw=False,
    )
    z_1, integral = (leaf[-1] for leaf in solution.ys)
    d = z_start.size
    log_prior = -0.5 * jnp.sum(jnp.square(z_1)) - d * HALF_LOG_TWO_PI
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
        gamma_start, _ = flow.gamma(jnp.asarray(flow.t_start, dtype))
        log_alpha_start = 0.5 * jax.nn.log_sigmoid(-gamma_start)
        solve = _solve_one(flow, jnp.exp(log_alpha_start) * x, probes, rtol, atol, max_steps)
        return solve._replace(log_density=solve.log_density + d * log_alpha_start)

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
        solver_error: mean |value at tolerances / 10 - value| over ``solver_check_examples``
            examples, nats per example: the solver's error at the stated tolerances.
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
    outputs = []
    for start in range(0, n, batch_size):
        rows, row_keys = data[start:start + batch_size], keys[start:start + batch_size]
        pad = batch_size - rows.shape[0] if n > batch_size else 0
        if pad:  # one compiled shape for every batch
            rows = jnp.concatenate([rows, jnp.repeat(rows[:1], pad, axis=0)])
            row_keys = jnp.concatenate([row_keys, jnp.repeat(row_keys[:1], pad, axis=0)])
        out = _solve_batch(flow, row_keys, rows, exact, num_probes, bin_width, float(rtol), float(atol),
                           int(max_steps))
        outputs.append(jax.tree_util.tree_map(lambda a, keep=rows.shape[0] - pad: np.asarray(a)[:keep], out))
    solve = _Solve(*(np.concatenate(parts) for parts in zip(*outputs, strict=True)))
    failed = np.flatnonzero(~solve.ok)
    if failed.size:
        i = int(failed[0])
        raise FittingError(
            f"The probability-flow ODE solver did not reach t = 1 for {failed.size} of {n} examples: example {i} "
            f"stopped at t = {float(solve.reached[i]):.4g} after {int(solve.num_steps[i])} steps (max_steps = "
            f"{max_steps}, rtol = {rtol:g}, atol = {atol:g}). Loosen the tolerances (e.g. rtol = atol = "
            f"{10 * max(rtol, atol):g}) or allow more steps (max_steps = {4 * max_steps}); a network whose score "
            "is very rough near that time may need more training."
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
        FittingError: the solver did not reach t = 1 for some example (the message says which,
            where it stopped, and which tolerances to try).

    Example:
        >>> result = ode_nll(jax.random.key(0), vdm_flow(model), test_data)
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
    solver_error = 0.0
    if m:
        tight = _run_batches(flow, key, data[:m], exact, num_probes, bin_width, rtol / 10, atol / 10, 8 * max_steps,
                             min(batch_size, m))
        tight_values = -np.asarray(tight.log_density, np.float64).mean(axis=1) - shift
        solver_error = float(np.mean(np.abs(tight_values - per_example[:m])))
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
        solver_check_examples=m,
        dominant_error=max(sizes, key=sizes.get),
        rtol=float(rtol),
        atol=float(atol),
        solver="diffrax Tsit5, PID step size",
        mean_steps=float(np.mean(solve.num_steps)),
        max_steps_taken=int(np.max(solve.num_steps)),
    )
