"""``elbox sample``, ``elbox fit``, ``elbox evidence``, ``elbox models`` and ``elbox tour``."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from elbox import arviz_compat
from elbox.cli.common import _count, _positive_float, _probability, _seed, check_outputs, load_model, write_json
from elbox.errors import SettingsError
from elbox.evidence import METHODS as EVIDENCE_METHODS
from elbox.mcmc.registry import DEFAULT_METHOD, SAMPLERS
from elbox.mcmc.window_adaptation import DEFAULT_MASS_MATRIX, MASS_MATRICES
from elbox.vi.elbo import ESTIMATORS
from elbox.vi.fit import METHODS as FIT_METHODS


def add_parsers(commands):
    sample = commands.add_parser("sample", help="draw from a posterior with MCMC and summarise the draws")
    sample.add_argument("model", metavar="MODEL", help="built-in model name or path/to/file.py:NAME")
    sample.add_argument("--method", default=DEFAULT_METHOD, choices=list(SAMPLERS),
                        help=f"sampler (default: {DEFAULT_METHOD})")
    sample.add_argument("--chains", type=_count(1), default=4, help="number of chains (default: 4)")
    sample.add_argument("--warmup", type=_count(0), default=1000, help="warm-up steps per chain (default: 1000)")
    sample.add_argument("--draws", type=_count(1), default=1000, help="kept draws per chain (default: 1000)")
    sample.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    sample.add_argument("--target-acceptance", type=_probability, default=None,
                        help="target acceptance statistic during warm-up (default: nuts 0.8, hmc 0.65, "
                             "mala 0.574, mh 0.234 or 0.44 in 1-d)")
    sample.add_argument("--step-size", type=_positive_float, default=None,
                        help="nuts, hmc, mala: first step size (default: Stan's heuristic)")
    sample.add_argument("--mass-matrix", default=None, choices=list(MASS_MATRICES),
                        help=f"nuts, hmc, mala: inverse mass matrix of the warm-up (default: {DEFAULT_MASS_MATRIX})")
    sample.add_argument("--max-tree-depth", type=_count(1), default=None,
                        help="nuts: largest number of trajectory doublings (default: 10)")
    sample.add_argument("--num-steps", type=_count(1), default=None,
                        help="hmc: leapfrog steps per transition, jittered (default: 10)")
    sample.add_argument("--scale", type=_positive_float, default=None,
                        help="mh: initial random-walk scale (default: 2.38 / sqrt(dimension))")
    sample.add_argument("--chain-method", default="vectorized", choices=["vectorized", "sequential"],
                        help="run the chains side by side (vmap) or one after another (default: vectorized)")
    sample.add_argument("--json", metavar="PATH", type=Path, help="write the summary as JSON to PATH")
    sample.add_argument("--out", metavar="DIR", type=Path, help="save the draws (netCDF) and a trace plot in DIR")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample.set_defaults(handler=run_sample)

    fit = commands.add_parser("fit", help="fit a variational family by maximising the ELBO; show the gap to log p(x)")
    fit.add_argument("model", metavar="MODEL", help="built-in model name or path/to/file.py:NAME")
    fit.add_argument("--method", default="meanfield", choices=list(FIT_METHODS),
                     help="variational family, or cavi for coordinate ascent (default: meanfield)")
    fit.add_argument("--steps", type=_count(1), default=10_000,
                     help="largest number of optimisation steps, or of CAVI sweeps (default: 10000)")
    fit.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    fit.add_argument("--learning-rate", type=_positive_float, default=None,
                     help="Adam's step size (default: 0.01, 0.003 for flow)")
    fit.add_argument("--samples", type=_count(1), default=None,
                     help="draws from q per gradient step (default: 1, 8 for flow)")
    fit.add_argument("--estimator", default=None, choices=list(ESTIMATORS),
                     help="ELBO gradient estimator (default: auto for meanfield/fullrank, reparam for flow)")
    fit.add_argument("--no-stop", action="store_true", help="run all steps: no stopping rule, constant step size")
    fit.add_argument("--json", metavar="PATH", type=Path, help="write the results as JSON to PATH")
    fit.add_argument("--out", metavar="DIR", type=Path, help="save q's draws (netCDF) and the ELBO trace plot in DIR")
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fit.add_argument("--evidence", default=None, choices=list(EVIDENCE_METHODS),
                     help="also estimate log p(x) with this method, so the gap log p(x) - ELBO = KL(q || p(z|x)) "
                          "is reported with its standard error where no exact value is known")
    fit.set_defaults(handler=run_fit)

    evidence = commands.add_parser(
        "evidence", help="estimate log p(x) with a standard error; bounds it between the ELBO, IWAE and reverse AIS")
    evidence.add_argument("model", metavar="MODEL", help="built-in model name or path/to/file.py:NAME")
    evidence.add_argument("--method", default="smc", choices=list(EVIDENCE_METHODS),
                          help="smc: tempered sequential Monte Carlo from the prior (default); ais: annealed "
                               "importance sampling, with a reverse-AIS upper bound where exact posterior draws "
                               "exist; iwae: importance sampling from a fitted full-rank q")
    evidence.add_argument("--particles", type=_count(2), default=None,
                          help="smc: particles per run (1000); ais: chains (1000); iwae: draws from q (100000)")
    evidence.add_argument("--start", default="prior", choices=["prior", "meanfield", "fullrank"],
                          help="smc/ais: anneal from the prior (default) or from q of this family, fitted first: "
                               "a much shorter path where the posterior is far narrower than the prior, but it "
                               "cannot find modes that q missed (iwae draws from q of this family; full-rank by "
                               "default)")
    evidence.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    evidence.add_argument("--json", metavar="PATH", type=Path, help="write the estimate as JSON to PATH")
    evidence.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    evidence.add_argument("--out", metavar="DIR", type=Path,
                          help="save the bounds picture (log p(x) above the ELBOs and IWAE_K) in DIR")
    evidence.set_defaults(handler=run_evidence)

    models = commands.add_parser("models", help="list the built-in models and what is known exactly about each")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=run_models)

    tour = commands.add_parser("tour", help="the guided tour: run elbox on built-in models and save the results")
    tour.add_argument("--out", metavar="DIR", type=Path, default=Path("elbox-tour"),
                      help="folder for the tour's tables and plots (default: ./elbox-tour)")
    tour.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    tour.set_defaults(handler=run_tour)



def run_sample(args) -> int:
    check_outputs(args)
    import jax

    from elbox.mcmc.run import sample
    from elbox.report.summary import sampling_json, sampling_text

    flags = {"--target-acceptance": ("target_acceptance", args.target_acceptance),
             "--step-size": ("step_size", args.step_size), "--mass-matrix": ("mass_matrix", args.mass_matrix),
             "--max-tree-depth": ("max_tree_depth", args.max_tree_depth), "--num-steps": ("num_steps", args.num_steps),
             "--scale": ("scale", args.scale)}
    accepted = inspect.signature(SAMPLERS[args.method]).parameters
    refused = [flag for flag, (name, value) in flags.items() if value is not None and name not in accepted]
    if refused:
        raise SettingsError(f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not a setting of "
                            f"--method {args.method}; drop {'it' if len(refused) == 1 else 'them'}.")
    options = {name: value for name, value in flags.values() if value is not None}
    model = load_model(args.model)
    results = sample(
        model,
        jax.random.key(args.seed),
        method=args.method,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        chain_method=args.chain_method,
        progress=not args.no_progress,
        **options,
    )
    print(sampling_text(results, model_label=args.model))
    if args.json:
        write_json(args.json, sampling_json(results, model_label=args.model, seed=args.seed))
        print(f"summary written to {args.json}")
    if args.out:
        from elbox.report.plots import save_sampling_outputs

        written = save_sampling_outputs(results, args.out)
        print("saved: " + ", ".join(str(p) for p in written))
    return 0


def run_fit(args) -> int:
    check_outputs(args)
    import jax

    from elbox.report.summary import fit_json, fit_text
    from elbox.vi.fit import fit

    model = load_model(args.model)
    # flag: (fit's argument, the value given or None); CAVI takes none of them.
    gradient_flags = {
        "--learning-rate": ("learning_rate", args.learning_rate),
        "--samples": ("num_samples", args.samples),
        "--estimator": ("estimator", args.estimator),
        "--no-stop": ("stop_when_flat", args.no_stop or None),
    }
    given = [flag for flag, (_, value) in gradient_flags.items() if value is not None]
    if args.method == "cavi" and given:
        raise SettingsError(f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no meaning for "
                            "--method cavi (closed-form coordinate updates); drop "
                            f"{'it' if len(given) == 1 else 'them'} or choose meanfield, fullrank or flow.")
    options = {name: value for name, value in gradient_flags.values() if value is not None}
    if "stop_when_flat" in options:
        options["stop_when_flat"] = False
    results = fit(model, jax.random.key(args.seed), method=args.method, steps=args.steps,
                  progress=not args.no_progress, evidence=args.evidence, **options)
    print(fit_text(results, model_label=args.model))
    if args.json:
        write_json(args.json, fit_json(results, model_label=args.model, seed=args.seed))
        print(f"results written to {args.json}")
    if args.out:
        from elbox.report.plots import elbo_trace_plot

        args.out.mkdir(parents=True, exist_ok=True)
        draws_path = args.out / "q_draws.nc"
        arviz_compat.to_netcdf(results.inference_data, draws_path)
        written = [draws_path, elbo_trace_plot(results, args.out / "elbo_trace.png")]
        print("saved: " + ", ".join(str(p) for p in written))
    return 0


def run_evidence(args) -> int:
    check_outputs(args)
    import jax

    from elbox.evidence import evidence

    model = load_model(args.model)
    print(f"{args.model}: estimating log p(x) by {args.method} ...", flush=True)
    results = evidence(model, jax.random.key(args.seed), method=args.method, particles=args.particles,
                       start=args.start, progress=not args.no_progress)
    print("\n".join(results.summary_lines()))
    if args.json:
        write_json(args.json, {**results.as_dict(), "model": args.model, "seed": args.seed})
        print(f"results written to {args.json}")
    if args.out:
        from elbox.evidence import bounds
        from elbox.report.plots import evidence_bounds_plot

        args.out.mkdir(parents=True, exist_ok=True)
        ladder = bounds(model, jax.random.key(args.seed), evidence_results=results)
        write_json(args.out / "evidence_bounds.json", {"model": args.model, **ladder})
        path = evidence_bounds_plot(ladder, args.out / "evidence_bounds.png",
                                    title=f"{args.model}: the evidence and its bounds")
        print(f"saved: {path}, {args.out / 'evidence_bounds.json'}")
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
    check_outputs(args, file_flags=())
    from elbox.report.tour import run_tour as tour

    tour(args.out, seed=args.seed, echo=print)
    return 0


