"""The ``elbox`` command: argument parsing, files and messages; the algorithms live below it.

The commands are in :mod:`elbox.cli.inference` (sample, fit, models, tour) and
:mod:`elbox.cli.diffusion`; shared argument types, model loading and output checks in
:mod:`elbox.cli.common`.

    elbox sample MODEL [--method nuts|hmc|mala|mh] --chains 4 --warmup 1000 --draws 1000 --seed 0
                 [--json PATH] [--out DIR]
    elbox fit MODEL --method meanfield|fullrank|flow|cavi --steps N --seed S [--json PATH] [--out DIR]
    elbox fit ... [--evidence smc|ais|iwae]
    elbox evidence MODEL [--method smc|ais|iwae] [--particles N] --seed S [--json PATH] [--out DIR]
    elbox models [--json]
    elbox tour [--out DIR]
    elbox diffusion train --data NAME|PATH [--levels K] [--model vdm|ddpm] --steps N --seed S --out DIR
                          [--resume | --overwrite] [--no-progress]
    elbox diffusion elbo DIR [--data PATH] [--json PATH] [--plot PNG]
    elbox diffusion sample DIR --n 64 --out PNG [--seed S]

MODEL is a built-in name (``elbox models`` lists them) or ``path/to/file.py:NAME`` where NAME is
a NumPyro model function taking no arguments or an ``elbox.Model``.
"""

from __future__ import annotations

import argparse
import sys

from elbox.errors import ElboxError

EXIT_USAGE = 2


def run() -> int:
    """The ``elbox`` program: :func:`main` with compiled programs kept on disk between runs
    (:mod:`elbox.compilation_cache`; ``ELBOX_COMPILATION_CACHE=off`` turns that off)."""
    from elbox.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    return main()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # elbox writes its plots to files; the command line has no display to draw on.
    import matplotlib

    matplotlib.use("Agg")
    try:
        return args.handler(args)
    except ElboxError as err:
        print(f"elbox: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("elbox: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    from elbox.cli import diffusion, inference

    parser = argparse.ArgumentParser(
        prog="elbox", description="Approximate Bayesian inference around the evidence lower bound."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inference.add_parsers(commands)
    diffusion.add_parser(commands)
    return parser
