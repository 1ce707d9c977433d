#!/usr/bin/env python
"""Diffusion training throughput: elbox against PyTorch with Hugging Face diffusers' DDPMScheduler.

Both sides train the same denoiser on the same problem and count optimisation steps per second:

* data: ``elbox.diffusion.data.gmm8()`` in model units (``ds.to_model(ds.train)``, 50,000
  points in 2-D), minibatches of 512 drawn uniformly with replacement;
* T = 1000 diffusion steps on the same schedule: elbox's ``cosine_schedule(1000)`` against
  ``DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")`` (or
  ``linear_schedule(1000)`` against ``beta_schedule="linear"`` with ``--schedule linear``); the
  two ``alpha_bar`` tables are compared once at the start;
* the loss: DDPM's L_simple, ||eps - eps_hat(x_t, t)||^2 summed over the 2 dimensions and
  averaged over the batch, with one t ~ U{1..T} and one noise draw per example;
* the network: the MLP of ``elbox.diffusion.networks.MLPDenoiser(key, dim=2, width=256,
  depth=3, fourier_features=16)``, i.e. the input [x_t, sin(omega_k t/T), cos(omega_k t/T)]
  with omega_k = pi T^(k/15), k = 0..15 (36 inputs), three SiLU layers of 256 units and a
  linear output of 2 (last layer's weights scaled by 0.01 at the start, bias 0). The PyTorch
  module below is the same architecture; a check at the start copies elbox's weights into it
  and compares the two outputs;
* Adam with step size 1e-3 (optax's and PyTorch's defaults otherwise: betas 0.9 and 0.999,
  eps 1e-8).

elbox trains through its public ``elbox.diffusion.train.train(key, data, schedule=...,
network=..., steps=N, batch_size=512, learning_rate=1e-3, loss="simple")``. Its step also
updates an exponential moving average of the parameters, which the PyTorch loop does not (one
extra scaled add over the ~140,000 parameters). A second elbox row trains elbox's default
model, the variational diffusion model: ``loss="vdm"``, ``schedule=None`` and
``network=elbox.diffusion.vdm.VDM(key, MLPDenoiser(..., learn_variance=False))``. Its step is
heavier than L_simple (a learned noise schedule, a small monotone network evaluated with its
time derivative and differentiated twice, plus the reconstruction and prior terms); it is set
against the same PyTorch L_simple loop, so its ratio says what elbox's default costs, not
which library is faster.

The PyTorch side is a plain loop: ``torch.randint`` for the batch indices and for t in 0..999,
``torch.randn`` for the noise, ``scheduler.add_noise``, the network, the loss, ``zero_grad``,
``backward`` and ``torch.optim.Adam.step``. diffusers' timestep index i is elbox's step
t = i + 1 (both index alpha_bar_{i+1}), so the network is fed (i + 1) / T as elbox feeds t / T.
PyTorch runs on the CPU with ``torch.set_num_threads(os.cpu_count())`` (``--torch-threads``
changes it; on CUDA instead when JAX's default device is a GPU). On a CPU shared with other
busy processes, PyTorch with one thread per core slows down far more than elbox (its threads
wait on each other at every operation whenever one of them is descheduled): run on an idle
machine, and compare with ``--torch-threads 1`` when the machine is shared.

**Throughput.** Each run of N steps is cut into ``CHUNKS`` = 10 equal chunks and timed at
the end of every chunk. elbox's ``train`` gets ``chunk_size=ceil(N / 10)`` and a progress
callback (``progress=callable``, called after each compiled chunk has finished and its losses
are on the host); the PyTorch loop takes the same timestamps after the same numbers of steps.
The first chunk holds elbox's compilation (and PyTorch's allocator warm-up), so steady-state
steps per second are the steps of chunks 2..10 over the time from the end of chunk 1 to the
end of chunk 10. Reported beside it: the wall time of the whole first call (imports excluded:
building the network, the schedule and the optimizer, then all N steps), the setup part of it
(everything before the first step; for elbox the eager initialisation of the network's weights
is most of it), and for elbox an estimate of the compilation time: the first chunk's time from
the call to ``train`` less its steps at the steady-state rate.

Every measurement runs in a fresh Python process (this script, started again with
``--worker``); each comparison is repeated and medians are reported, one JSON line per elbox
loss (``simple`` and ``vdm``).

Usage:
    python benchmarks/bench_diffusion.py                       # full run: 2000 steps, 3 repeats (~2 min, 2 idle cores)
    python benchmarks/bench_diffusion.py --save                # the same, also written to benchmarks/results/
    python benchmarks/bench_diffusion.py --quick               # smoke run: 200 steps, 1 repeat
    python benchmarks/bench_diffusion.py --steps 5000 --repeats 5 --schedule linear --torch-threads 1
    python benchmarks/bench_diffusion.py --worker elbox_simple cosine 2000 0   # one raw measurement, seed 0
    python benchmarks/bench_diffusion.py --worker torch cosine 2000 0
    python benchmarks/bench_diffusion.py --worker check cosine 0 0             # the schedule and network checks
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

from _common import device_description, elbox_source_hash, run_worker_process

BENCHMARK = "diffusion_training"
SEED = 0
NUM_DIFFUSION_STEPS = 1000
BATCH_SIZE = 512
LEARNING_RATE = 1e-3
DIM = 2
WIDTH = 256
DEPTH = 3
FOURIER_FEATURES = 16
FINAL_SCALE = 1e-2  # elbox.diffusion.networks.FINAL_SCALE
CHUNKS = 10
STEPS = 2000
REPEATS = 3
QUICK_STEPS = 200
SCHEDULES = ("cosine", "linear")
ELBOX_LOSSES = ("simple", "vdm")
LIBRARIES = ("elbox_simple", "elbox_vdm", "torch")
DIFFUSERS_SCHEDULES = {"cosine": "squaredcos_cap_v2", "linear": "linear"}
# Set by the driver for the PyTorch worker: "cuda" when JAX's default device is a GPU, else "cpu".
TORCH_DEVICE_VARIABLE = "BENCH_DIFFUSION_TORCH_DEVICE"
# Set by the driver for the PyTorch worker: its intra-op threads (default: os.cpu_count()).
TORCH_THREADS_VARIABLE = "BENCH_DIFFUSION_TORCH_THREADS"
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
NOTES = {
    "simple": "elbox and PyTorch train the same network on the same loss (L_simple); "
              "elbox's step also updates an EMA of the parameters",
    "vdm": "elbox's default model: the continuous-time VDM bound with a learned noise schedule, a heavier step than "
           "L_simple (schedule network and its derivative, reconstruction and prior terms), "
           "set against PyTorch's L_simple loop",
}


def training_data():
    """gmm8's training set in model units, float32, shape (50000, 2)."""
    import numpy as np

    from elbox.diffusion.data import gmm8

    ds = gmm8()
    return np.asarray(ds.to_model(ds.train), dtype=np.float32)


def chunk_bounds(steps: int) -> list[int]:
    """The step counts after which both sides take a timestamp: the ends of CHUNKS chunks of
    ceil(steps / CHUNKS) steps (the last one shorter when steps is not a multiple)."""
    size = math.ceil(steps / CHUNKS)
    return sorted({min(steps, size * k) for k in range(1, CHUNKS + 1)})


def throughput(stamps: list[tuple[int, float]], start: float) -> dict:
    """Steady-state steps/s from (steps done, time) at the ends of the chunks: the steps after
    the first chunk over the time they took. ``start``: when the training loop began."""
    (first_steps, first_time), (last_steps, last_time) = stamps[0], stamps[-1]
    if last_steps <= first_steps:
        raise ValueError("throughput needs at least two chunks: use at least 2 steps")
    rate = (last_steps - first_steps) / (last_time - first_time)
    return {
        "steps_per_second": rate,
        "first_chunk_steps": first_steps,
        "first_chunk_seconds": first_time - start,
        "steady_seconds": last_time - first_time,
        "steady_steps": last_steps - first_steps,
    }


# -- the PyTorch side ----------------------------------------------------------------------------


def torch_denoiser_class():
    """The PyTorch version of ``MLPDenoiser(key, dim, width, depth, fourier_features)``."""
    import torch
    from torch import nn

    class TorchMLPDenoiser(nn.Module):
        """eps_theta(x_t, t): an MLP on [x_t, sin(omega_k t / T), cos(omega_k t / T)], SiLU
        activations, omega_k = pi T^(k / (F - 1)); the last layer starts near zero."""

        def __init__(self, dim=DIM, width=WIDTH, depth=DEPTH, fourier_features=FOURIER_FEATURES,
                     num_steps=NUM_DIFFUSION_STEPS, final_scale=FINAL_SCALE):
            super().__init__()
            sizes = [dim + 2 * fourier_features] + [width] * depth
            self.layers = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(depth))
            self.final = nn.Linear(width, dim)
            with torch.no_grad():
                self.final.weight.mul_(final_scale)
                self.final.bias.zero_()
            self.num_steps = num_steps
            # As elbox computes them in float32: pi * T ** linspace(0, 1, F).
            if fourier_features == 1:
                exponents = torch.zeros(1)
            else:
                exponents = torch.linspace(0.0, 1.0, fourier_features)
            self.register_buffer("omegas", math.pi * torch.pow(torch.tensor(float(num_steps)), exponents))

        def forward(self, x_t, t):
            """x_t: (batch, dim); t: (batch,) steps in 1..T."""
            s = t.to(x_t.dtype) / self.num_steps
            angles = s[:, None] * self.omegas[None, :]
            h = torch.cat([x_t, torch.sin(angles), torch.cos(angles)], dim=1)
            for layer in self.layers:
                h = nn.functional.silu(layer(h))
            return self.final(h)

    return TorchMLPDenoiser


def ddpm_scheduler(schedule: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=NUM_DIFFUSION_STEPS,
        beta_schedule=DIFFUSERS_SCHEDULES[schedule],
        beta_start=0.0001,
        beta_end=0.02,
    )


def torch_device(torch):
    """The device the driver chose for PyTorch (the GPU when JAX runs on one, else the CPU)."""
    name = os.environ.get(TORCH_DEVICE_VARIABLE, "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("JAX runs on a GPU but this PyTorch build sees none: install a CUDA build of PyTorch")
    return torch.device(name)


def worker_torch(schedule: str, steps: int, seed: int) -> dict:
    tic_imports = time.perf_counter()
    import diffusers
    import numpy as np
    import torch

    import_seconds = time.perf_counter() - tic_imports
    threads = int(os.environ.get(TORCH_THREADS_VARIABLE) or os.cpu_count())
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch_device(torch)
    data_np = training_data()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    bounds = set(chunk_bounds(steps))
    stamps = []
    tic = time.perf_counter()
    data = torch.from_numpy(data_np).to(device)
    scheduler = ddpm_scheduler(schedule)
    net = torch_denoiser_class()().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    losses = []
    n = data.shape[0]
    tic_loop = time.perf_counter()
    for step in range(steps):
        indices = torch.randint(0, n, (BATCH_SIZE,), device=device)
        x0 = data[indices]
        timesteps = torch.randint(0, NUM_DIFFUSION_STEPS, (BATCH_SIZE,), device=device)
        noise = torch.randn_like(x0)
        x_t = scheduler.add_noise(x0, noise, timesteps)
        eps_hat = net(x_t, timesteps + 1)  # diffusers' index i is step t = i + 1
        loss = (noise - eps_hat).square().sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if step + 1 in bounds:
            sync()
            stamps.append((step + 1, time.perf_counter()))
    trace = torch.stack(losses).cpu().numpy()
    first_call = time.perf_counter() - tic
    if not np.isfinite(trace).all():
        raise FloatingPointError("the PyTorch training loss became non-finite")
    result = throughput(stamps, tic_loop)
    result.update(
        first_call_seconds=first_call,
        setup_seconds=tic_loop - tic,
        import_seconds=import_seconds,
        final_loss=float(trace[-max(1, steps // CHUNKS):].mean()),
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        torch_device=str(device),
        torch_version=torch.__version__,
        diffusers_version=diffusers.__version__,
    )
    return result


# -- the elbox side ------------------------------------------------------------------------------


def worker_elbox(loss: str, schedule: str, steps: int, seed: int) -> dict:
    tic_imports = time.perf_counter()
    import jax
    import numpy as np

    from elbox.diffusion import vdm
    from elbox.diffusion.networks import MLPDenoiser
    from elbox.diffusion.schedules import cosine_schedule, linear_schedule
    from elbox.diffusion.train import train

    import_seconds = time.perf_counter() - tic_imports
    data = training_data()
    stamps = []

    def on_progress(_phase, done, _total):
        stamps.append((done, time.perf_counter()))

    tic = time.perf_counter()
    key_net, key_schedule, key_train = jax.random.split(jax.random.key(seed), 3)
    denoiser = MLPDenoiser(key_net, dim=DIM, width=WIDTH, depth=DEPTH, fourier_features=FOURIER_FEATURES,
                           learn_variance=False)
    if loss == "vdm":
        network, diffusion_schedule = vdm.VDM(key_schedule, denoiser), None
    else:
        network = denoiser
        diffusion_schedule = (cosine_schedule if schedule == "cosine" else linear_schedule)(NUM_DIFFUSION_STEPS)
    tic_train = time.perf_counter()
    result = train(
        key_train, data, schedule=diffusion_schedule, network=network, steps=steps, batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE, loss=loss, chunk_size=math.ceil(steps / CHUNKS), progress=on_progress,
    )
    first_call = time.perf_counter() - tic
    if [done for done, _ in stamps] != chunk_bounds(steps):
        raise AssertionError(f"unexpected chunk ends {[done for done, _ in stamps]}; expected {chunk_bounds(steps)}")
    out = throughput(stamps, tic_train)
    # Compilation: the first chunk's time less its steps at the steady-state rate.
    compile_estimate = out["first_chunk_seconds"] - out["first_chunk_steps"] / out["steps_per_second"]
    out.update(
        first_call_seconds=first_call,
        setup_seconds=tic_train - tic,
        train_seconds=result.seconds,
        compile_seconds_estimate=compile_estimate,
        import_seconds=import_seconds,
        final_loss=float(np.mean(result.loss_trace[-max(1, steps // CHUNKS):])),
        jax_version=jax.__version__,
    )
    return out


# -- the checks ----------------------------------------------------------------------------------


def worker_check(schedule: str) -> dict:
    """The largest |difference| between the two alpha_bar tables, and between the outputs of
    elbox's MLPDenoiser and the PyTorch module with elbox's weights copied in (both with an
    output layer of ordinary scale, on 256 random (x_t, t))."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from elbox.diffusion.networks import MLPDenoiser
    from elbox.diffusion.schedules import cosine_schedule, linear_schedule

    ours = (cosine_schedule if schedule == "cosine" else linear_schedule)(NUM_DIFFUSION_STEPS)
    theirs = ddpm_scheduler(schedule).alphas_cumprod.double().numpy()
    alpha_bar_difference = float(np.max(np.abs(ours.alpha_bars - theirs)))

    # final_scale=1: an output layer of ordinary size, so that the comparison sees the whole network.
    net = MLPDenoiser(jax.random.key(SEED), dim=DIM, width=WIDTH, depth=DEPTH, fourier_features=FOURIER_FEATURES,
                      final_scale=1.0)
    module = torch_denoiser_class()()
    with torch.no_grad():
        for layer, linear in zip(list(net.layers) + [net.final], list(module.layers) + [module.final]):
            linear.weight.copy_(torch.from_numpy(np.array(layer.weight)))
            linear.bias.copy_(torch.from_numpy(np.array(layer.bias)))
    key_x, key_t = jax.random.split(jax.random.key(SEED + 1))
    x = jax.random.normal(key_x, (256, DIM), jnp.float32)
    t = jax.random.randint(key_t, (256,), 1, NUM_DIFFUSION_STEPS + 1)
    with jax.default_matmul_precision("highest"):  # as elbox's entry points run
        eps_ours = np.asarray(jax.vmap(lambda xi, ti: net(xi, ti, NUM_DIFFUSION_STEPS)[0])(x, t))
    with torch.no_grad():
        eps_theirs = module(torch.from_numpy(np.array(x)), torch.from_numpy(np.array(t))).numpy()
    network_difference = float(np.max(np.abs(eps_ours - eps_theirs)))
    parameters = sum(p.numel() for p in module.parameters())
    # Not bit for bit: the highest time frequency makes angles up to pi T (about 3142 for T = 1000),
    # where float32 values lie 2.4e-4 apart, and XLA and PyTorch round pi T^(k/15) and t / T
    # differently by an ulp; relative differences of about 1e-4 are expected, a different
    # architecture gives differences of the order of the outputs themselves.
    if network_difference > 1e-2 * float(np.max(np.abs(eps_ours))):
        raise AssertionError(f"elbox's and the PyTorch network's outputs differ by {network_difference:g}")
    if alpha_bar_difference > 1e-5:
        raise AssertionError(f"elbox's and diffusers' alpha_bar tables differ by {alpha_bar_difference:g}")
    return {
        "alpha_bar_max_difference": alpha_bar_difference,
        "network_max_difference": network_difference,
        "network_output_scale": float(np.max(np.abs(eps_ours))),
        "parameters": int(parameters),
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
    }


def run_worker(library: str, schedule: str, steps: int, seed: int) -> dict:
    if library == "check":
        return worker_check(schedule)
    if library == "torch":
        result = worker_torch(schedule, steps, seed)
    elif library.startswith("elbox_") and library[len("elbox_"):] in ELBOX_LOSSES:
        result = worker_elbox(library[len("elbox_"):], schedule, steps, seed)
    else:
        raise ValueError(f"unknown library {library!r}; choose from {', '.join(LIBRARIES)} or check")
    result.update(library=library, schedule=schedule, steps=steps, seed=seed)
    if library.startswith("elbox_"):
        result.update(device=device_description(), elbox_source=elbox_source_hash())
    return result


# -- driver --------------------------------------------------------------------------------------


def measure(library: str, schedule: str, steps: int, seed: int, timeout: float, torch_device: str = "cpu",
            torch_threads: int | None = None) -> dict:
    """One measurement in a fresh Python process; its last stdout line is the JSON result."""
    env = {**os.environ, TORCH_DEVICE_VARIABLE: torch_device, TORCH_THREADS_VARIABLE: str(torch_threads or "")}
    return run_worker_process(__file__, [library, schedule, steps, seed], timeout,
                              f"{library} ({schedule}, {steps} steps)", env=env)


def compare(schedule: str, steps: int, repeats: int, timeout: float,
            torch_threads: int | None = None) -> tuple[list[dict], dict]:
    check = measure("check", schedule, 0, SEED, timeout)
    print(
        f"  checks: max |alpha_bar elbox - diffusers| = {check['alpha_bar_max_difference']:.3g}; "
        f"max |eps_hat elbox - PyTorch| with the same weights = {check['network_max_difference']:.3g} "
        f"(outputs up to {check['network_output_scale']:.3g}); {check['parameters']:,} parameters",
        file=sys.stderr,
        flush=True,
    )
    load_before = os.getloadavg()[0]
    torch_device = "cuda" if check["platform"] == "gpu" else "cpu"
    runs = {library: [] for library in LIBRARIES}
    for repeat in range(repeats):
        # Rotate which library goes first, so slow drifts of the machine hit all alike.
        order = LIBRARIES[repeat % len(LIBRARIES):] + LIBRARIES[: repeat % len(LIBRARIES)]
        for library in order:
            result = measure(library, schedule, steps, SEED + repeat, timeout, torch_device, torch_threads)
            runs[library].append(result)
            extra = ""
            if library == "torch":
                extra = f"  threads {result['torch_threads']}"
            else:
                extra = f"  compile ~{result['compile_seconds_estimate']:.2f} s"
            print(
                f"  [{schedule} steps={steps} repeat {repeat + 1}/{repeats}] {library:12s} "
                f"{result['steps_per_second']:8.1f} steps/s  first call {result['first_call_seconds']:6.2f} s  "
                f"final loss {result['final_loss']:.4f}{extra}",
                file=sys.stderr,
                flush=True,
            )

    def median(library, field):
        return statistics.median(r[field] for r in runs[library])

    load_after = os.getloadavg()[0]
    torch_speed = median("torch", "steps_per_second")
    torch_run = runs["torch"][0]
    lines = []
    for loss in ELBOX_LOSSES:
        ours = f"elbox_{loss}"
        elbox_speed = median(ours, "steps_per_second")
        # The runs of one repeat ran back to back, so their ratio is less exposed to the
        # machine's slow drifts (other processes) than the ratio of the two medians.
        paired = statistics.median(
            e["steps_per_second"] / t["steps_per_second"] for e, t in zip(runs[ours], runs["torch"])
        )
        lines.append({
            "benchmark": BENCHMARK,
            "elbox_loss": loss,
            "torch_loss": "simple",
            "note": NOTES[loss],
            "data": "gmm8",
            "schedule": schedule,
            "num_diffusion_steps": NUM_DIFFUSION_STEPS,
            "batch_size": BATCH_SIZE,
            "network": f"MLP {DIM}+{2 * FOURIER_FEATURES} -> {WIDTH} x {DEPTH} SiLU -> {DIM}",
            "steps": steps,
            "chunks": CHUNKS,
            "elbox_steps_per_second": round(elbox_speed, 2),
            "torch_steps_per_second": round(torch_speed, 2),
            "ratio": round(elbox_speed / torch_speed, 4),
            "ratio_paired": round(paired, 4),
            "elbox_first_call_seconds": round(median(ours, "first_call_seconds"), 3),
            "torch_first_call_seconds": round(median("torch", "first_call_seconds"), 3),
            "elbox_setup_seconds": round(median(ours, "setup_seconds"), 3),
            "torch_setup_seconds": round(median("torch", "setup_seconds"), 3),
            "elbox_compile_seconds_estimate": round(median(ours, "compile_seconds_estimate"), 3),
            "elbox_final_loss": round(median(ours, "final_loss"), 4),
            "torch_final_loss": round(median("torch", "final_loss"), 4),
            "import_seconds": {
                "elbox": round(median(ours, "import_seconds"), 3),
                "torch": round(median("torch", "import_seconds"), 3),
            },
            "alpha_bar_max_difference": check["alpha_bar_max_difference"],
            "network_max_difference": check["network_max_difference"],
            "parameters": check["parameters"],
            "torch_threads": torch_run["torch_threads"],
            "torch_interop_threads": torch_run["torch_interop_threads"],
            "torch_device": torch_run["torch_device"],
            "torch_version": torch_run["torch_version"],
            "diffusers_version": torch_run["diffusers_version"],
            "jax_version": runs[ours][0]["jax_version"],
            "repeats": repeats,
            # The machine's 1-minute load average before and after the measurements: with
            # more load than cores, other processes were competing for them.
            "load_average": [round(load_before, 2), round(load_after, 2)],
            "device": runs[ours][0]["device"],
            # Changes if elbox's code changed between the measurements of this comparison.
            "elbox_source": ",".join(sorted({r["elbox_source"] for name in ELBOX_LOSSES
                                             for r in runs[f"elbox_{name}"]})),
        })
    return lines, check


def default_results_path(check: dict) -> str:
    """benchmarks/results/diffusion_<machine>_<date>.jsonl, <machine> as cpu<cores> on a CPU."""
    if check["platform"] == "cpu":
        machine = f"cpu{os.cpu_count()}"
    else:
        machine = check["device_kind"].lower().replace(" ", "-")
    return os.path.join(RESULTS_DIR, f"diffusion_{machine}_{datetime.date.today().isoformat()}.jsonl")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK_STEPS} steps, 1 repeat")
    parser.add_argument("--steps", type=int,
                        help=f"optimisation steps per run (default {STEPS}; {QUICK_STEPS} with --quick)")
    parser.add_argument("--repeats", type=int,
                        help=f"fresh-process repeats per library (default {REPEATS}; 1 with --quick)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                        help="the noise schedule on both sides (default cosine)")
    parser.add_argument(
        "--save", nargs="?", const="", metavar="PATH",
        help="also write the JSON lines to PATH (default benchmarks/results/diffusion_cpu<cores>_<date>.jsonl)",
    )
    parser.add_argument(
        "--torch-threads", type=int,
        help=f"PyTorch's intra-op threads (torch.set_num_threads; default the core count, {os.cpu_count()})",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for one worker process")
    parser.add_argument(
        "--worker", nargs=4, metavar=("LIBRARY", "SCHEDULE", "STEPS", "SEED"),
        help=f"internal: run one measurement (LIBRARY is one of {', '.join(LIBRARIES)}, or check) and print it as JSON",
    )
    args = parser.parse_args(argv)

    if args.worker:
        library, schedule, steps, seed = args.worker
        if library not in LIBRARIES + ("check",):
            parser.error(f"unknown library {library!r}; choose from {', '.join(LIBRARIES)} or check")
        if schedule not in SCHEDULES:
            parser.error(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
        print(json.dumps(run_worker(library, schedule, int(steps), int(seed))), flush=True)
        return

    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    repeats = args.repeats or (1 if args.quick else REPEATS)
    if steps < 2 * CHUNKS:
        parser.error(f"--steps must be at least {2 * CHUNKS} ({CHUNKS} timed chunks)")
    tic = time.perf_counter()
    if args.torch_threads is not None and args.torch_threads < 1:
        parser.error("--torch-threads must be at least 1")
    lines, check = compare(args.schedule, steps, repeats, args.timeout, args.torch_threads)
    for line in lines:
        print(json.dumps(line), flush=True)
    if args.save is not None:
        path = args.save or default_results_path(check)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
        print(f"saved {path}", file=sys.stderr)
    print(f"total wall time {time.perf_counter() - tic:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
