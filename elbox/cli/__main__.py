"""``python -m elbox.cli``: the same as the ``elbox`` command."""

import sys

from elbox.cli import run

sys.exit(run())
