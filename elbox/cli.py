"""The ``elbox`` command: argument parsing, files and messages; the algorithms live below it.

    elbox sample MODEL --method mh --chains 4 --warmup 1000 --draws 1000 --seed 0 [--json PATH] [--out DIR]
    elbox fit MODEL --method meanfield|fullrank|flow|cavi --steps N --seed S [--json PATH] [--out DIR]
    elbox models [--json]
    elbox tour [--out DIR]

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
    return parser


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


def _write_json(path: Path, payload: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
