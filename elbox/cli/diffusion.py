"""``elbox diffusion train|elbo|sample``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from elbox.cli.common import _count, write_json
from elbox.errors import ElboxError


def add_parser(commands):
    diffusion = commands.add_parser("diffusion", help="train a diffusion model on its ELBO; its bound, terms and samples")
    actions = diffusion.add_subparsers(dest="diffusion_command", required=True, metavar="ACTION")

    train = actions.add_parser("train", help="train the default recipe for a data set; save the run in DIR")
    train.add_argument("--data", required=True, metavar="NAME|PATH",
                       help="gmm8, checkerboard, moons, digits, gmm8_quantized, or a .npy/.csv file (rows, columns)")
    train.add_argument("--levels", type=_count(2), default=None, metavar="K",
                       help="for a file of integers 0..K-1: the number of levels K (default: continuous data)")
    train.add_argument("--model", choices=("vdm", "ddpm"), default=None,
                       help="vdm: the continuous-time bound with a learned noise schedule (default); "
                            "ddpm: T = 1000 discrete steps, L_hybrid with a learned variance range")
    train.add_argument("--steps", type=_count(1), default=None, help="optimisation steps (default: the data set's recipe)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--out", required=True, metavar="DIR", type=Path, help="folder for the run")
    train.add_argument("--resume", action="store_true", help="continue the run in DIR from its latest checkpoint")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    # Hidden: change the recipe (tests and quick experiments).
    train.add_argument("--T", type=_count(2), default=None, help=argparse.SUPPRESS)
    train.add_argument("--width", type=_count(1), default=None, help=argparse.SUPPRESS)
    train.add_argument("--depth", type=_count(1), default=None, help=argparse.SUPPRESS)
    train.add_argument("--batch-size", type=_count(1), default=None, help=argparse.SUPPRESS)
    train.add_argument("--checkpoint-every", type=_count(1), default=None, help=argparse.SUPPRESS)
    train.set_defaults(handler=run_diffusion_train)

    elbo = actions.add_parser("elbo", help="the test-set bound in nats/dim and bits/dim, its terms and the gap to the entropy")
    elbo.add_argument("run_dir", metavar="DIR", type=Path, help="a folder written by `elbox diffusion train`")
    elbo.add_argument("--data", metavar="PATH", default=None,
                      help="evaluate this .npy/.csv file (same columns as the training data) instead of the test set")
    elbo.add_argument("--json", metavar="PATH", type=Path, help="write the results as JSON to PATH")
    elbo.add_argument("--seed", type=int, default=0, help="random seed of the x_t draws (default: 0)")
    elbo.add_argument("--max-examples", type=_count(1), default=None,
                      help="evaluate at most this many examples (default: all for the continuous-time bound, "
                           "1000 for a discrete-time bound, each of whose examples costs T network evaluations)")
    elbo.set_defaults(handler=run_diffusion_elbo)

    draw = actions.add_parser("sample", help="ancestral samples from the trained model, plotted to a PNG")
    draw.add_argument("run_dir", metavar="DIR", type=Path, help="a folder written by `elbox diffusion train`")
    draw.add_argument("--n", type=_count(1), default=64, help="number of samples (default: 64)")
    draw.add_argument("--out", required=True, metavar="PNG", type=Path, help="the plot to write")
    draw.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    draw.set_defaults(handler=run_diffusion_sample)


def run_diffusion_train(args) -> int:
    from elbox.diffusion.run import train_run

    overrides = {"model": args.model, "T": args.T, "width": args.width, "depth": args.depth,
                 "batch_size": args.batch_size, "checkpoint_every": args.checkpoint_every}
    try:
        meta = train_run(args.data, args.steps, args.seed, args.out, resume=args.resume, levels=args.levels,
                         progress=not args.no_progress, recipe_overrides=overrides)
    except KeyboardInterrupt:
        checkpoints = sorted((args.out / "checkpoints").glob("step_*.json")) if args.out.is_dir() else []
        where = f"the last checkpoint is {checkpoints[-1].stem}" if checkpoints else "no checkpoint was written yet"
        print(f"elbox: training interrupted; {where}. Continue with the same command and --resume.", file=sys.stderr)
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


def run_diffusion_elbo(args) -> int:
    from elbox.diffusion.run import elbo_run
    from elbox.report.diffusion_plots import per_step_plot

    bound = elbo_run(args.run_dir, data_path=args.data, seed=args.seed, max_examples=args.max_examples)
    where = f", T = {bound['T']}" if bound["T"] is not None else ""
    print(f"{bound['data']}: bound on -log p(x) over {bound['num_examples']} examples ({bound['estimator']}{where})")
    print(f"  nats/dim  {bound['nats_per_dim']:.4f} ± {bound['stderr']:.4f}")
    print(f"  bits/dim  {bound['bits_per_dim']:.4f} ± {bound['stderr_bits']:.4f}")
    terms = bound["terms"]
    print(f"  terms (nats/dim): reconstruction {terms['reconstruction']:.4f}, denoising {terms['denoising']:.4f}, "
          f"prior {terms['prior']:.3g}")
    discrete = bound["discrete_time"]
    if discrete is not None:
        dterms = discrete["terms"]
        print(f"  the same model with T = {discrete['T']} steps ({discrete['num_examples']} examples): "
              f"{discrete['nats_per_dim']:.4f} ± {discrete['stderr']:.4f} nats/dim "
              f"({discrete['bits_per_dim']:.4f} bits/dim); denoising {dterms['denoising']:.4f}")
    if bound["true_entropy_per_dim"] is not None:
        print(f"  true entropy {bound['true_entropy_per_dim']:.4f} nats/dim; gap (bound - entropy) "
              f"{bound['gap_to_entropy']:.4f} ± {bound['stderr']:.4f} nats/dim")
    else:
        print("  true entropy: unknown for these data")
    if bound["gap_to_test_nll"] is not None:
        print(f"  exact -log p(x) of the same examples {bound['test_nll_per_dim']:.4f} nats/dim; "
              f"gap (bound - (-log p), paired) {bound['gap_to_test_nll']:.4f} ± {bound['gap_to_test_nll_stderr']:.4f}")
    if bound["categorical_baseline_bits_per_dim"] is not None:
        print(f"  baselines: independent categorical {bound['categorical_baseline_bits_per_dim']:.4f} bits/dim, "
              f"uniform {bound['uniform_bits_per_dim']:.4f} bits/dim")
    plot = per_step_plot(bound, args.run_dir / "elbo_per_step.png")
    print(f"saved: {plot}")
    if args.json:
        write_json(args.json, bound)
        print(f"results written to {args.json}")
    return 0


def run_diffusion_sample(args) -> int:
    from elbox.diffusion.data import builtin_names
    from elbox.diffusion.run import load_run, sample_run, training_data
    from elbox.report.diffusion_plots import samples_plot

    run = load_run(args.run_dir)
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


