"""Bad input, entry point by entry point: every one is refused with a message that names it.

Each row of the tables below is one bad input to one public entry point. From Python the call
must raise an :class:`elbox.ElboxError` (not a bare ``ValueError``, an ``AssertionError`` or
whatever NumPyro or JAX would raise further down) whose message names the offending argument,
so the user knows what to change. From the command line it must exit with status 2 and print
exactly one line on stderr, ``elbox: error: ...``, and no traceback; where argparse itself
validates a flag (its ``type``), argparse's usage line followed by its error line is accepted.

Every case is cheap: the settings that would let a call run are tiny (2 chains, 10 + 10 steps;
10 optimisation steps), and the output-path cases check that nothing is sampled or fitted
before the path is refused.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest

import elbox
from elbox.mcmc import metropolis

KEY = jax.random.key(0)


class Case(NamedTuple):
    """One bad input: the call's arguments and what the message must (and must not) contain."""

    kwargs: dict[str, Any]
    names: tuple[str, ...]  # substrings, or regular expressions given as re.Pattern
    model: Any = "normal_normal"
    forbidden: tuple[str, ...] = ()


def case(id_, kwargs, *names, model="normal_normal", forbidden=()):
    return pytest.param(Case(kwargs, names, model, forbidden), id=id_)


def _check_message(message: str, c: Case):
    for name in c.names:
        if isinstance(name, re.Pattern):
            assert name.search(message), f"the message does not match {name.pattern!r}: {message}"
        else:
            assert name in message, f"the message does not name {name!r}: {message}"
    for text in c.forbidden:
        assert text not in message, f"the message shows {text!r}: {message}"


# -- elbox.sample ---------------------------------------------------------------------------------
SAMPLE_TINY = dict(chains=2, warmup=10, draws=10, progress=False)
EIGHT_SCHOOLS_START = {"mu": 0.0, "tau": 1.0, "theta_trans": np.zeros(8)}

SAMPLE_CASES = [
    case("chains=0", dict(chains=0), "chains"),
    case("chains=True", dict(chains=True), "chains"),
    case("chains=2.5", dict(chains=2.5), "chains"),
    case("warmup=-1", dict(warmup=-1), "warmup"),
    case("draws=0", dict(draws=0), "draws"),
    case("scale=0", dict(scale=0), "scale"),
    case("scale=-1", dict(scale=-1), "scale"),
    case("scale=nan", dict(scale=float("nan")), "scale"),
    case("scale=True", dict(scale=True), "scale"),
    case("target_acceptance=1.0", dict(target_acceptance=1.0), "target_acceptance"),
    case("target_acceptance=0", dict(target_acceptance=0), "target_acceptance"),
    case("method=nuts_typo", dict(method="nuts_typo"), "method", "nuts_typo"),
    case("chunk_size=0", dict(chunk_size=0), "chunk_size"),
    case("init-unknown-parameter", dict(init={"not_a_param": 1.0}), "not_a_param"),
    case(
        "init-outside-support",
        dict(init={**EIGHT_SCHOOLS_START, "tau": -1.0}),
        "tau",
        re.compile(r"positive|> ?0|greater than 0|\(0, ?inf", re.I),  # tau's support, in some words
        model="eight_schools",
        forbidden=("invalid scale parameter",),  # NumPyro's words, which name no site
    ),
    case("init-missing-parameter", dict(init={"mu": 0.0, "tau": 1.0}), "theta_trans", model="eight_schools"),
    case("proposal-with-scale", dict(proposal=metropolis.random_walk(0.5), scale=0.5), "scale"),
    case("model=no_such_model", {}, "no_such_model", model="no_such_model"),
    case("model=42", {}, "model", model=42),
]


@pytest.mark.parametrize("c", SAMPLE_CASES)
def test_sample_refuses(c: Case):
    with pytest.raises(elbox.ElboxError) as raised:
        elbox.sample(c.model, KEY, **{**SAMPLE_TINY, **c.kwargs})
    _check_message(str(raised.value), c)


# -- elbox.fit ------------------------------------------------------------------------------------
FIT_TINY = dict(steps=10, eval_samples=64, progress=False)
CAVI = re.compile("cavi", re.I)
CONJUGACY = re.compile("conjuga", re.I)  # why: the model declares no conjugate form

FIT_CASES = [
    case("cavi-without-conjugacy", dict(method="cavi"), CAVI, CONJUGACY, "eight_schools", model="eight_schools"),
    case("cavi-with-learning_rate", dict(method="cavi", learning_rate=0.1), "learning_rate"),
    case("method=bogus", dict(method="bogus"), "method", "bogus"),
    case("steps=0", dict(steps=0), "steps"),
    case("steps=True", dict(steps=True), "steps"),
    case("learning_rate=0", dict(learning_rate=0), "learning_rate"),
    case("learning_rate=-1", dict(learning_rate=-1), "learning_rate"),
    case("learning_rate=inf", dict(learning_rate=float("inf")), "learning_rate"),
    case("num_samples=0", dict(num_samples=0), "num_samples"),
    case("estimator=bogus", dict(estimator="bogus"), "estimator", "bogus"),
    case("eval_samples=1", dict(eval_samples=1), "eval_samples"),
    case("init-unknown-parameter", dict(init={"nope": 0.0}), "nope"),
]


@pytest.mark.parametrize("c", FIT_CASES)
def test_fit_refuses(c: Case):
    with pytest.raises(elbox.ElboxError) as raised:
        elbox.fit(c.model, KEY, **{**FIT_TINY, **c.kwargs})
    _check_message(str(raised.value), c)


# -- the command line -----------------------------------------------------------------------------
# A user's model that happens to share a built-in's name; its data (around 100) are not the
# built-in's, so the built-in's closed-form posterior would be wrong for it.
USER_MODEL = """
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

y = jnp.array([99.2, 100.4, 101.1, 98.7, 100.9])

def normal_normal():
    mu = numpyro.sample("mu", dist.Normal(0.0, 1000.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
"""

SAMPLE_RUN = ["--chains", "2", "--warmup", "10", "--draws", "10", "--no-progress"]
FIT_RUN = ["--steps", "10", "--no-progress"]


class CliCase(NamedTuple):
    """``argv`` may hold ``{file}`` (the user's model file), ``{dir}`` (an existing folder) and
    ``{regular}`` (an existing regular file); so may ``names``."""

    argv: tuple[str, ...]
    names: tuple[str, ...]
    argparse: bool = False  # argparse validates this flag: its usage + error format is accepted
    guard: str | None = None  # "sample" or "fit": the run must not start


def cli(id_, argv, *names, argparse=False, guard=None):
    return pytest.param(CliCase(tuple(argv), names, argparse, guard), id=id_)


CLI_CASES = [
    cli("sample-chains-0", ["sample", "normal_normal", *SAMPLE_RUN, "--chains", "0"], "--chains", argparse=True),
    cli("sample-seed-too-large", ["sample", "normal_normal", *SAMPLE_RUN, "--seed", "99999999999999999999999"],
        "seed", argparse=True),
    cli("sample-unknown-model", ["sample", "no_such_model", *SAMPLE_RUN], "no_such_model"),
    cli("sample-file-without-name", ["sample", "{file}", *SAMPLE_RUN], ".py:NAME"),
    cli("sample-missing-file", ["sample", "{dir}/missing.py:model", *SAMPLE_RUN], "missing.py"),
    cli("sample-file-missing-name", ["sample", "{file}:missing_name", *SAMPLE_RUN], "missing_name"),
    cli("fit-cavi-user-model-named-like-builtin", ["fit", "{file}:normal_normal", "--method", "cavi", *FIT_RUN],
        CAVI, CONJUGACY),
    cli("fit-cavi-without-conjugacy", ["fit", "eight_schools", "--method", "cavi", *FIT_RUN], CAVI, CONJUGACY,
        "eight_schools"),
    cli("fit-cavi-with-learning-rate", ["fit", "normal_normal", "--method", "cavi", "--learning-rate", "0.1", *FIT_RUN],
        "--learning-rate"),
    cli("sample-json-is-folder", ["sample", "normal_normal", *SAMPLE_RUN, "--json", "{dir}"], "--json", "{dir}",
        guard="sample"),
    cli("sample-out-is-file", ["sample", "normal_normal", *SAMPLE_RUN, "--out", "{regular}"], "--out", "{regular}",
        guard="sample"),
    cli("fit-json-is-folder", ["fit", "normal_normal", *FIT_RUN, "--json", "{dir}"], "--json", "{dir}", guard="fit"),
    cli("fit-out-is-file", ["fit", "normal_normal", *FIT_RUN, "--out", "{regular}"], "--out", "{regular}",
        guard="fit"),
    cli("tour-out-is-file", ["tour", "--out", "{regular}"], "--out", "{regular}", guard="tour"),
]


@pytest.mark.parametrize("c", CLI_CASES)
def test_cli_refuses(c: CliCase, run_cli, tmp_path, monkeypatch):
    paths = dict(file=tmp_path / "user_model.py", dir=tmp_path / "folder", regular=tmp_path / "regular.txt")
    paths["file"].write_text(textwrap.dedent(USER_MODEL))
    paths["dir"].mkdir()
    paths["regular"].write_text("not a folder\n")
    if c.guard:
        import elbox.mcmc.run
        import elbox.vi.fit

        def must_not_run(*args, **kwargs):
            pytest.fail(f"elbox {c.guard} started its run before refusing the output path")

        import elbox.report.tour

        target = {"sample": (elbox.mcmc.run, "sample"), "fit": (elbox.vi.fit, "fit"),
                  "tour": (elbox.report.tour, "run_tour")}[c.guard]
        monkeypatch.setattr(*target, must_not_run)

    status, out, err = run_cli(*(a.format(**paths) for a in c.argv))

    assert status == 2, f"exit status {status}; stderr: {err}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    if c.argparse and lines[0].startswith("usage:"):
        assert re.match(r"elbox( \w+)?: error:", lines[-1]), err
    else:
        assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
        assert lines[0].startswith("elbox: error:"), err
    for name in c.names:
        if isinstance(name, re.Pattern):
            assert name.search(err), f"the message does not match {name.pattern!r}: {err}"
        else:
            name = name.format(**paths)
            assert name in err, f"the message does not name {name!r}: {err}"
