"""``elbox diffusion train|elbo|sample``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from elbox import checks
from elbox.cli.common import _count, _positive_float, _seed, write_json
from elbox.errors import ElboxError, RunError


def add_parser(commands):
    diffusion = commands.add_parser("diffusion",
                                    help="train a diffusion model on its ELBO; its bound, terms and samples")
    actions = diffusion.add_subparsers(dest="diffusion_command", required=True, metavar="ACTION")

    train = actions.add_parser("train", help="train the default recipe for a data set; save the run in DIR")
    train.add_argument("--data", required=True, metavar="NAME|PATH",
                       help="gmm8, checkerboard, moons, digits, gmm8_quantized, or a .npy/.csv file (rows, columns)")
    train.add_argument("--levels", type=_count(2), default=None, metavar="K",
                       help="for a file of integers 0..K-1: the number of levels K (default: continuous data)")
    train.add_argument("--model", choices=("vdm", "ddpm"), default=None,
                       help="vdm: the continuous-time bound with a learned noise schedule (default); "
                            "ddpm: T = 1000 discrete steps, L_hybrid with a learned variance range")
    train.add_argument("--steps", type=_count(1), default=None,
                       help="optimisation steps (default: the data set's recipe)")
    train.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    train.add_argument("--out", required=True, metavar="DIR", type=Path, help="folder for the run")
    again = train.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in DIR from its latest checkpoint")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run already in DIR (without it, a folder holding a run is refused)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--devices", type=_count(1), default=None, metavar="N",
                       help="split each batch over the first N of JAX's devices (default: all GPUs or TPUs, "
                            "and one device on a CPU, where splitting measured no faster)")
    # Hidden: change the recipe (tests and quick experiments).
    train.add_argument("--T", type=_count(2), default=None, help=argparse.SUPPRESS)
    train.add_argument("--width", type=_count(1), default=None, help=argparse.SUPPRESS)
    train.add_argument("--depth", type=_count(1), default=None, help=argparse.SUPPRESS)
    train.add_argument("--batch-size", type=_count(1), default=None, help=argparse.SUPPRESS)
    train.add_argument("--checkpoint-every", type=_count(1), default=None, help=argparse.SUPPRESS)
    train.set_defaults(handler=run_diffusion_train)

    elbo = actions.add_parser("elbo",
                              help="the test-set bound in nats/dim and bits/dim, its terms and the gap to the entropy; "
                                   "with --likelihood and --iw K, the ODE likelihood and tighter bounds beside it")
    elbo.add_argument("run_dir", metavar="DIR", type=Path, help="a folder written by `elbox diffusion train`")
    elbo.add_argument("--data", metavar="PATH", default=None,
                      help="evaluate this .npy/.csv file (same columns as the training data) instead of the test set")
    elbo.add_argument("--json", metavar="PATH", type=Path, help="write the results as JSON to PATH")
    elbo.add_argument("--plot", metavar="PNG", type=Path,
                      help="plot the per-step terms of the bound to PNG (with --likelihood or --iw, every number "
                           "side by side beside them)")
    elbo.add_argument("--seed", type=_seed, default=0, help="random seed of the x_t draws (default: 0)")
    elbo.add_argument("--max-examples", type=_count(1), default=None,
                      help="evaluate at most this many examples (default: all for the continuous-time bound, "
                           "1000 for a discrete-time bound, each of whose examples costs T network evaluations)")
    elbo.add_argument("--likelihood", action="store_true",
                      help="also -log p(x) of the model's probability-flow ODE on the same examples: the density "
                           "of the deterministic flow with the model's score (a model beside the sampled one, not "
                           "a bound; for binned data an upper bound on -log P(x) by uniform dequantisation)")
    elbo.add_argument("--iw", type=_count(1), default=None, metavar="K",
                      help="also the importance-weighted bounds with 1, 16, ..., K paths over the T-step noisy "
                           "path: each lies between the T-step model's -log p(x) and its ELBO, lower with more K")
    elbo.add_argument("--iw-examples", type=_count(1), default=None, metavar="N",
                      help="the importance-weighted bounds on the first N examples (default: 100; each costs "
                           "K x T network evaluations)")
    elbo.add_argument("--rtol", type=_positive_float, default=None,
                      help="the ODE solver's relative tolerance (default: 1e-4)")
    elbo.add_argument("--atol", type=_positive_float, default=None,
                      help="the ODE solver's absolute tolerance (default: 1e-4)")
    elbo.set_defaults(handler=run_diffusion_elbo)

    draw = actions.add_parser("sample", help="ancestral samples from the trained model, plotted to a PNG")
    draw.add_argument("run_dir", metavar="DIR", type=Path, help="a folder written by `elbox diffusion train`")
    draw.add_argument("--n", type=_count(1), default=64, help="number of samples (default: 64)")
    draw.add_argument("--out", required=True, metavar="PNG", type=Path, help="the plot to write")
    draw.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    draw.set_defaults(handler=run_diffusion_sample)


# The hidden recipe options of `train`, by recipe key (top level, then the network's).
_RECIPE_FLAGS = {"T": "--T", "batch_size": "--batch-size", "checkpoint_every": "--checkpoint-every"}
_NETWORK_FLAGS = {"width": "--width", "depth": "--depth"}


def run_diffusion_train(args) -> int:
    from elbox.diffusion.run import train_run
    from elbox.diffusion.run_folder import RunStateError

    checks.writable_folder(args.out, "--out")
    overrides = {"model": args.model, "T": args.T, "width": args.width, "depth": args.depth,
                 "batch_size": args.batch_size, "checkpoint_every": args.checkpoint_every}
    try:
        meta = train_run(args.data, args.steps, args.seed, args.out, resume=args.resume, levels=args.levels,
                         progress=not args.no_progress, recipe_overrides=overrides, overwrite=args.overwrite,
                         devices=args.devices)
    except RunStateError as error:
        raise _with_command_hint(error, args) from None
    except KeyboardInterrupt:
        checkpoints = sorted((args.out / "checkpoints").glob("step_*.json")) if args.out.is_dir() else []
        where = f"the last checkpoint is {checkpoints[-1].stem}" if checkpoints else "no checkpoint was written yet"
        print(f"elbox: training interrupted; {where}. Continue with: {_command_of(args)}", file=sys.stderr)
        return 130
    recipe = meta["recipe"]
    if recipe["model"] == "vdm":
        how = f"vdm: continuous-time bound, {recipe['schedule']} schedule"
    else:
        how = f"ddpm: {recipe['loss']}, variance {recipe['variance']}, T = {recipe['T']}"
    print(
        f"trained {meta['data']} for {meta['steps_done']} steps ({how}) in {meta['train_seconds']:.1f} s; "
        f"final loss {meta['final_loss']:.4g} nats per example"
    )
    print(f"run saved in {args.out}; next: elbox diffusion elbo {args.out}")
    return 0


def _command_of(args) -> str:
    """The `train` command of ``args`` with --resume: every setting the user gave, once more."""
    parts = ["elbox", "diffusion", "train", "--data", str(args.data)]
    given = [("--levels", args.levels), ("--model", args.model), ("--steps", args.steps), ("--seed", args.seed),
             ("--out", args.out), ("--T", args.T), ("--width", args.width), ("--depth", args.depth),
             ("--batch-size", args.batch_size), ("--checkpoint-every", args.checkpoint_every),
             ("--devices", args.devices)]
    parts += [str(item) for flag, value in given if value is not None for item in (flag, value)]
    return shlex.join(parts + ["--resume"])


def _resume_command(meta: dict, run_dir: Path) -> str:
    """The `train` command that continues the run of ``meta`` in ``run_dir``: its data, levels,
    model, steps, seed, device count (when more than one) and every recipe setting that differs
    from the default; or, for a recipe the command line cannot express, how to resume it from
    Python."""
    from elbox.diffusion.data import builtin_names
    from elbox.diffusion.recipes import DEFAULT_MODEL, make_recipe

    recipe = meta["recipe"]
    default = make_recipe(meta["data"], {"model": recipe["model"]})
    parts = ["elbox", "diffusion", "train", "--data", str(meta["data"])]
    if meta["levels"] is not None and meta["data"] not in builtin_names():
        parts += ["--levels", str(meta["levels"])]
    if recipe["model"] != DEFAULT_MODEL:
        parts += ["--model", recipe["model"]]
    if recipe["steps"] != default["steps"]:
        parts += ["--steps", str(recipe["steps"])]
    parts += ["--seed", str(meta["seed"]), "--out", str(run_dir)]
    if meta.get("devices", 1) > 1:  # any count resumes the run; this one keeps its speed
        parts += ["--devices", str(meta["devices"])]
    for key, flag in _RECIPE_FLAGS.items():
        if recipe.get(key) != default.get(key):
            parts += [flag, str(recipe[key])]
    for key, flag in _NETWORK_FLAGS.items():
        if recipe["network"].get(key) != default["network"].get(key):
            parts += [flag, str(recipe["network"][key])]
    settable = set(_RECIPE_FLAGS) | {"model", "steps", "network"}
    other = sorted(k for k in recipe if k not in settable and recipe[k] != default.get(k))
    other += sorted(f"network {k}" for k in set(recipe["network"]) | set(default["network"])
                    if k not in _NETWORK_FLAGS and recipe["network"].get(k) != default["network"].get(k))
    if other:
        return (f"train_run(..., resume=True) from Python with the run's recipe (run.json), whose settings "
                f"{', '.join(other)} the command line cannot set")
    return f"`{shlex.join(parts + ['--resume'])}`"


def _with_command_hint(error, args=None) -> RunError:
    """The library's RunStateError with the command-line way to go on."""
    if error.kind == "finished":
        hint = "pass --overwrite to replace it, or choose another --out folder"
    elif error.kind == "in_progress":
        command = _resume_command(error.meta, error.run_dir) if error.meta else f"`{_command_of(args)}`"
        hint = f"continue it with {command}, replace it with --overwrite, or choose another --out folder"
    elif error.kind == "unfinished":
        hint = f"finish it with {_resume_command(error.meta, error.run_dir)}"
    else:
        hint = f"train one with `elbox diffusion train --data NAME --out {shlex.quote(str(error.run_dir))}`"
    return RunError(f"{error.problem}; {hint}")


def run_diffusion_elbo(args) -> int:
    from elbox.diffusion.evaluate import evaluate_run
    from elbox.diffusion.run_folder import RunStateError
    from elbox.report.diffusion_plots import per_step_plot
    from elbox.report.diffusion_summary import bound_text

    if args.json is not None:
        checks.writable_file(args.json, "--json")
    if args.plot is not None:
        checks.writable_file(args.plot, "--plot")
    try:
        report = evaluate_run(args.run_dir, data_path=args.data, seed=args.seed, max_examples=args.max_examples,
                              likelihood=args.likelihood, iw=args.iw, **_given(args, "iw_examples", "rtol", "atol"))
    except RunStateError as error:
        raise _with_command_hint(error) from None
    print(bound_text(report))
    if args.plot is not None:
        print(f"saved: {per_step_plot(report, args.plot)}")
    else:
        print("per-step plot: add --plot PATH")
    if args.json is not None:
        write_json(args.json, report.as_dict())
        print(f"results written to {args.json}")
    return 0


def _given(args, *names) -> dict:
    """The options the user gave, under evaluate_run's names (the others keep its defaults)."""
    if args.iw_examples is not None and args.iw is None:
        print("warning: --iw-examples is ignored without --iw K", file=sys.stderr)
    for name in ("rtol", "atol"):
        if getattr(args, name) is not None and not args.likelihood:
            print(f"warning: --{name} is ignored without --likelihood", file=sys.stderr)
    renamed = {"iw_examples": "iw_max_examples"}
    return {renamed.get(name, name): getattr(args, name) for name in names if getattr(args, name) is not None}


def run_diffusion_sample(args) -> int:
    from elbox.diffusion.data import builtin_names
    from elbox.diffusion.run import load_run, sample_run, training_data
    from elbox.diffusion.run_folder import RunStateError
    from elbox.report.diffusion_plots import samples_plot

    checks.writable_file(args.out, "--out")
    try:
        run = load_run(args.run_dir)
    except RunStateError as error:
        raise _with_command_hint(error) from None
    samples = sample_run(args.run_dir, args.n, seed=args.seed)
    meta = run.meta
    train = None
    if meta["dim"] != 64 or meta["levels"] is None:
        try:
            train = training_data(run).train
        except ElboxError:  # the training file has gone: plot the samples alone
            train = None
    name = meta["data"] if meta["data"] in builtin_names() else Path(meta["data"]).name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    path = samples_plot(samples, args.out, name=name, dim=meta["dim"], levels=meta["levels"], train=train)
    print(f"saved: {path} ({args.n} samples)")
    return 0
