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


# -- diffusion: train_run, elbo_run, sample_run and `elbox diffusion` ----------------------------
# A tiny recipe (T = 20, a 16-unit MLP, small batches) so that the one real run is seconds long.
TINY_RECIPE = {"T": 20, "width": 16, "depth": 1, "batch_size": 64, "checkpoint_every": 10}
TINY_FLAGS = ["--T", "20", "--width", "16", "--depth", "1", "--batch-size", "64", "--checkpoint-every", "10",
              "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from elbox.diffusion.run import train_run

    out = tmp_path_factory.mktemp("diffusion") / "gmm8"
    train_run("gmm8", 20, 0, out, progress=False, recipe_overrides=TINY_RECIPE)
    return out


def _train(**kwargs):
    from elbox.diffusion.run import train_run

    arguments = dict(data_spec="gmm8", steps=20, seed=0, progress=False, recipe_overrides=TINY_RECIPE)
    arguments.update(kwargs)
    return train_run(**arguments)


TRAIN_CASES = [
    case("steps=0", dict(steps=0), "steps"),
    case("steps=True", dict(steps=True), "steps"),
    case("seed-too-large", dict(seed=2**70), "seed"),
    case("seed=1.5", dict(seed=1.5), "seed"),
    case("unknown-data", dict(data_spec="no_such_data"), "no_such_data"),
    case("levels=1", dict(data_spec="{csv}", levels=1), "levels"),
    case("unknown-model", dict(recipe_overrides={"model": "gan"}), "gan"),
    case("unknown-recipe-setting", dict(recipe_overrides={"wdith": 16}), "wdith"),
    case("out-is-a-file", dict(out_dir="{regular}"), "{regular}"),
    case("resume-and-overwrite", dict(resume=True, overwrite=True), "resume", "overwrite"),
]


@pytest.mark.parametrize("c", TRAIN_CASES)
def test_diffusion_train_refuses(c: Case, tmp_path):
    paths = dict(regular=tmp_path / "regular.txt", csv=tmp_path / "data.csv", out=tmp_path / "run")
    paths["regular"].write_text("not a folder\n")
    np.savetxt(paths["csv"], np.random.default_rng(0).integers(0, 4, size=(50, 2)), fmt="%d", delimiter=",")
    kwargs = {k: v.format(**paths) if isinstance(v, str) else v for k, v in c.kwargs.items()}
    kwargs.setdefault("out_dir", paths["out"])
    with pytest.raises(elbox.ElboxError) as raised:
        _train(**kwargs)
    _check_message(str(raised.value), c._replace(names=tuple(n.format(**paths) if isinstance(n, str) else n
                                                             for n in c.names)))


def test_diffusion_train_refuses_a_finished_run(trained_run):
    with pytest.raises(elbox.RunError) as raised:
        _train(out_dir=trained_run)
    assert "overwrite" in str(raised.value)


EVAL_CASES = [
    case("max_examples=0", dict(max_examples=0), "max_examples"),
    case("max_examples=True", dict(max_examples=True), "max_examples"),
    case("seed-too-large", dict(seed=2**70), "seed"),
    case("data-of-another-width", dict(data_path="{wide}"), "{wide}", re.compile(r"\b3\b")),
    case("data-missing", dict(data_path="{missing}"), "{missing}"),
    case("no-run-in-folder", dict(out_dir="{empty}"), "{empty}"),
]


@pytest.mark.parametrize("c", EVAL_CASES)
def test_diffusion_elbo_refuses(c: Case, trained_run, tmp_path):
    from elbox.diffusion.run import elbo_run

    paths = dict(wide=tmp_path / "wide.csv", missing=tmp_path / "missing.csv", empty=tmp_path / "empty")
    np.savetxt(paths["wide"], np.random.default_rng(0).normal(size=(20, 3)), delimiter=",")
    paths["empty"].mkdir()
    kwargs = {k: v.format(**paths) if isinstance(v, str) else v for k, v in c.kwargs.items()}
    out_dir = kwargs.pop("out_dir", trained_run)
    with pytest.raises(elbox.ElboxError) as raised:
        elbo_run(out_dir, **kwargs)
    _check_message(str(raised.value), c._replace(names=tuple(n.format(**paths) if isinstance(n, str) else n
                                                             for n in c.names)))


@pytest.mark.parametrize("c", [
    case("n=0", dict(n=0), "n "),
    case("n=True", dict(n=True), "n "),
    case("seed-too-large", dict(n=4, seed=2**70), "seed"),
])
def test_diffusion_sample_refuses(c: Case, trained_run):
    from elbox.diffusion.run import sample_run

    with pytest.raises(elbox.ElboxError) as raised:
        sample_run(trained_run, **c.kwargs)
    _check_message(str(raised.value), c)


DIFFUSION_CLI_CASES = [
    cli("train-out-is-file", ["diffusion", "train", "--data", "gmm8", "--steps", "20", "--out", "{regular}",
                              *TINY_FLAGS], "{regular}"),
    cli("train-seed-too-large", ["diffusion", "train", "--data", "gmm8", "--seed", "99999999999999999999999",
                                 "--out", "{dir}/run", *TINY_FLAGS], "seed", argparse=True),
    cli("train-unknown-data", ["diffusion", "train", "--data", "no_such_data", "--out", "{dir}/run", *TINY_FLAGS],
        "no_such_data"),
    cli("train-over-a-finished-run", ["diffusion", "train", "--data", "gmm8", "--steps", "20", "--out", "{run}",
                                      *TINY_FLAGS], "--overwrite"),
    cli("elbo-no-run", ["diffusion", "elbo", "{dir}"], "{dir}"),
    cli("elbo-json-is-folder", ["diffusion", "elbo", "{run}", "--json", "{dir}"], "--json", "{dir}"),
    cli("elbo-plot-is-folder", ["diffusion", "elbo", "{run}", "--plot", "{dir}"], "--plot", "{dir}"),
    cli("elbo-max-examples-0", ["diffusion", "elbo", "{run}", "--max-examples", "0"], "--max-examples",
        argparse=True),
    cli("sample-out-is-folder", ["diffusion", "sample", "{run}", "--out", "{dir}"], "--out", "{dir}"),
    cli("sample-n-0", ["diffusion", "sample", "{run}", "--n", "0", "--out", "{dir}/s.png"], "--n", argparse=True),
]


@pytest.mark.parametrize("c", DIFFUSION_CLI_CASES)
def test_diffusion_cli_refuses(c: CliCase, run_cli, trained_run, tmp_path):
    paths = dict(dir=tmp_path / "folder", regular=tmp_path / "regular.txt", run=trained_run)
    paths["dir"].mkdir()
    paths["regular"].write_text("not a folder\n")
    before = {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()}

    status, out, err = run_cli(*(a.format(**paths) for a in c.argv))

    assert status == 2, f"exit status {status}; stderr: {err}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if c.argparse and lines[0].startswith("usage:"):
        assert re.match(r"elbox( \w+)*: error:", lines[-1]), err
    else:
        assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
        assert lines[0].startswith("elbox: error:"), err
    for name in c.names:
        name = name.format(**paths) if isinstance(name, str) else name
        assert (name.search(err) if isinstance(name, re.Pattern) else name in err), f"{name!r} not in: {err}"
    # Refusing touches nothing in the finished run.
    assert {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()} == before
