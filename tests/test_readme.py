"""Every Python example in README.md runs as written.

Each ```python block is run on its own, in a fresh namespace, with nothing from the blocks
before it: a reader who copies one example into a session gets a working program, so every
block carries its own imports. Blocks in other languages (```bash) are not run here; the
commands they show are tested in ``test_cli.py``.

Each block runs in a temporary working folder, so files an example writes (``runs/gmm8``)
land there. Runtime on two CPU cores: the sampling and VI examples take about 30 s together
(the README's own settings: 4 chains of 1000 + 1000 Metropolis steps, a full-rank fit); the
diffusion example trains a short gmm8 run (2,000 steps) and then evaluates both bounds, about a
minute; a block that trains is marked slow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# A fenced block: its language tag and its body, up to the closing fence at the start of a line.
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
HEADING = re.compile(r"^#+\s+(?P<title>.+?)\s*$", re.M)

# Calls that take minutes: the block that makes one is marked slow (it still runs in CI).
SLOW_CALLS = ("train_run(",)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def readme_blocks() -> list[tuple[str, str, str]]:
    """(id, language, source) of every fenced block in the README, in order; the id is the
    section's heading and the block's number within that section."""
    text = README.read_text()
    headings = [(m.start(), _slug(m.group("title"))) for m in HEADING.finditer(text)]
    blocks, seen = [], {}
    for m in FENCE.finditer(text):
        section = [slug for start, slug in headings if start < m.start()][-1:] or ["top"]
        seen[section[0]] = seen.get(section[0], 0) + 1
        blocks.append((f"{section[0]}-{seen[section[0]]}", m.group("lang"), m.group("body")))
    return blocks


BLOCKS = readme_blocks()
PYTHON = [(name, source) for name, lang, source in BLOCKS if lang == "python"]


def test_readme_has_its_examples():
    # the extraction itself: a broken pattern would silently test nothing
    assert len(PYTHON) >= 4
    assert {lang for _, lang, _ in BLOCKS} <= {"python", "bash"}, "a block in a language this test does not know"


@pytest.mark.parametrize(
    ("name", "source"),
    [
        pytest.param(name, source, id=name, marks=[pytest.mark.slow] if any(c in source for c in SLOW_CALLS) else [])
        for name, source in PYTHON
    ],
)
def test_readme_python_block_runs_on_its_own(name, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = compile(source, f"README.md, block {name}", "exec")
    exec(code, {"__name__": "__readme__"})
