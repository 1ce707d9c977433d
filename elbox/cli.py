"""The ``elbox`` command: argument parsing, files and messages; the algorithms live below it.

    elbox sample MODEL --method mh --chains 4 --warmup 1000 --draws 1000 --seed 0 [--json PATH] [--out DIR]
    elbox fit MODEL --method meanfield|fullrank|flow|cavi --steps N --seed S [--json PATH] [--out DIR]
    elbox models [--json]
    elbox tour [--out DIR]
    elbox diffusion train --data NAME|PATH [--levels K] [--model vdm|ddpm] --steps N --seed S --out DIR [--resume] [--no-progress]
    elbox diffusion elbo DIR [--data PATH] [--json PATH]
    elbox diffusion sample DIR --n 64 --out PNG [--seed S]

MODEL is a built-in name (``elbox models`` lists them) or ``path/to/file.py:NAME`` where NAME is
a NumPyro model function taking no arguments or an ``elbox.Model``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from elbox.errors import ElboxError, ModelError

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ElboxError as err:
        print(f"elbox: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("elbox: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elbox", description="Approximate Bayesian inference around the evidence lower bound."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sample = commands.add_parser("sample", help="draw from a posterior with MCMC and summarise the draws")
    sample.add_argument("model", metavar="MODEL", help="built-in model name or path/to/file.py:NAME")
    sample.add_argument("--method", default="mh", choices=["mh"], help="sampler (default: mh)")
    sample.add_argument("--chains", type=_count(1), default=4, help="number of chains (default: 4)")
    sample.add_argument("--warmup", type=_count(0), default=1000, help="warm-up steps per chain (default: 1000)")
    sample.add_argument("--draws", type=_count(1), default=1000, help="kept draws per chain (default: 1000)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sample.add_argument("--scale", type=_positive_float, default=None,
                        help="initial random-walk scale (default: 2.38 / sqrt(dimension))")
    sample.add_argument("--target-acceptance", type=_probability, default=None,
                        help="target acceptance rate during warm-up (default: 0.234, 0.44 in 1-d)")
    sample.add_argument("--json", metavar="PATH", type=Path, help="write the summary as JSON to PATH")
    sample.add_argument("--out", metavar="DIR", type=Path, help="save the draws (netCDF) and a trace plot in DIR")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample.set_defaults(handler=run_sample)

    fit = commands.add_parser("fit", help="fit a variational family by maximising the ELBO; show the gap to log p(x)")
    fit.add_argument("model", metavar="MODEL", help="built-in model name or path/to/file.py:NAME")
    fit.add_argument("--method", default="meanfield", choices=["meanfield", "fullrank", "flow", "cavi"],
                     help="variational family, or cavi for coordinate ascent (default: meanfield)")
    fit.add_argument("--steps", type=_count(1), default=10_000, help="largest number of optimisation steps (default: 10000)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    fit.add_argument("--learning-rate", type=_positive_float, default=None,
                     help="Adam's step size (default: 0.01, 0.003 for flow)")
    fit.add_argument("--samples", type=_count(1), default=None,
                     help="draws from q per gradient step (default: 1, 8 for flow)")
    fit.add_argument("--estimator", default=None, choices=["auto", "reparam", "stl", "score"],
                     help="ELBO gradient estimator (default: auto for meanfield/fullrank, reparam for flow)")
    fit.add_argument("--no-stop", action="store_true", help="run all steps: no stopping rule, constant step size")
    fit.add_argument("--json", metavar="PATH", type=Path, help="write the results as JSON to PATH")
    fit.add_argument("--out", metavar="DIR", type=Path, help="save q's draws (netCDF) and the ELBO trace plot in DIR")
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fit.set_defaults(handler=run_fit)

    models = commands.add_parser("models", help="list the built-in models and what is known exactly about each")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=run_models)

    tour = commands.add_parser("tour", help="the guided tour: run elbox on built-in models and save the results")
    tour.add_argument("--out", metavar="DIR", type=Path, default=Path("elbox-tour"),
                      help="folder for the tour's tables and plots (default: ./elbox-tour)")
    tour.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    tour.set_defaults(handler=run_tour)

    _add_diffusion_parser(commands)
    return parser


def _add_diffusion_parser(commands):
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


# -- argument types ------------------------------------------------------------------------------
def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


# -- models -----------------------------------------------------------------------------------
def load_model(spec: str):
    """A built-in model by name, or NAME from a Python file given as ``path/to/file.py:NAME``."""
    from elbox.model import Model
    from elbox.models import get, resolve

    if ":" not in spec or not spec.split(":", 1)[0].endswith(".py"):
        return get(spec)
    path_text, name = spec.rsplit(":", 1)
    path = Path(path_text)
    if not path.is_file():
        raise ModelError(f"Model file {path} does not exist.")
    module_spec = importlib.util.spec_from_file_location(f"elbox_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise ModelError(f"Running {path} failed: {type(err).__name__}: {err}") from err
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items() if not k.startswith("_") and (callable(v) or isinstance(v, Model)))
        raise ModelError(f"{path} defines no {name!r}. Names it defines: {', '.join(defined) or 'none'}.")
    obj = getattr(module, name)
    if not (isinstance(obj, Model) or callable(obj)):
        raise ModelError(f"{path}:{name} is a {type(obj).__name__}, not a NumPyro model function or an elbox Model.")
    model = resolve(obj)
    if not isinstance(obj, Model):
        model.name = spec
    return model


# -- commands --------------------------------------------------------------------------------
def run_sample(args) -> int:
    import jax

    from elbox.mcmc.run import sample
    from elbox.report.summary import sampling_json, sampling_text

    model = load_model(args.model)
    results = sample(
        model,
        jax.random.key(args.seed),
        method=args.method,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        scale=args.scale,
        target_acceptance=args.target_acceptance,
        progress=not args.no_progress,
    )
    print(sampling_text(results, model_label=args.model))
    if args.json:
        _write_json(args.json, sampling_json(results, model_label=args.model, seed=args.seed))
        print(f"summary written to {args.json}")
    if args.out:
        from elbox.report.plots import save_sampling_outputs

        written = save_sampling_outputs(results, args.out)
        print("saved: " + ", ".join(str(p) for p in written))
    return 0


def run_fit(args) -> int:
    import jax

    from elbox.report.summary import fit_json, fit_text

    model = load_model(args.model)
    if args.method == "cavi":
        from elbox.vi.cavi_models import fit_cavi

        results = fit_cavi(model, jax.random.key(args.seed), max_iterations=args.steps)
    else:
        from elbox.vi.fit import fit

        results = fit(
            model,
            jax.random.key(args.seed),
            method=args.method,
            steps=args.steps,
            learning_rate=args.learning_rate,
            num_samples=args.samples,
            estimator=args.estimator,
            stop_when_flat=not args.no_stop,
            progress=not args.no_progress,
        )
    print(fit_text(results, model_label=args.model))
    if args.json:
        _write_json(args.json, fit_json(results, model_label=args.model, seed=args.seed))
        print(f"results written to {args.json}")
    if args.out:
        from elbox.report.plots import elbo_trace_plot

        args.out.mkdir(parents=True, exist_ok=True)
        draws_path = args.out / "q_draws.nc"
        results.inference_data.to_netcdf(str(draws_path))
        written = [draws_path, elbo_trace_plot(results, args.out / "elbo_trace.png")]
        print("saved: " + ", ".join(str(p) for p in written))
    return 0


def run_models(args) -> int:
    from elbox.models import describe, names

    rows = [describe(name) for name in names()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'dim':>4}  {'posterior':<9}  {'log p(x)':>10}  summary")
    for r in rows:
        evidence = r["known"]["log_evidence"]
        shown = f"{evidence:10.3f}" if evidence is not None else f"{'unknown':>10}"
        moments = r["known"]["posterior_moments"] or "unknown"
        print(f"{r['name']:<{width}}  {r['dimension']:>4}  {moments:<9}  {shown}  {r['summary']}")
    return 0


def run_tour(args) -> int:
    from elbox.report.tour import run_tour as tour

    tour(args.out, seed=args.seed, echo=print)
    return 0


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
        _write_json(args.json, bound)
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


def _write_json(path: Path, payload: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
