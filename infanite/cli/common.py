"""What every command shares: the ``--progress-json`` option and one-line errors."""
from __future__ import annotations

import argparse
import sys


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress-json", metavar="FILE|-", default=None,
                        help="write progress as JSON lines to FILE, or to stdout with '-'")


def error(command: str, exc: BaseException, prefix: str = "error") -> int:
    """Print ``<command>: <prefix>: <message on one line>`` to stderr; returns 2 (invalid input)."""
    message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"{command}: {prefix}: {message}", file=sys.stderr)
    return 2


def command_line() -> str:
    """This process's command line as a user would type it again (``python -m infanite …``, shell-quoted)."""
    import shlex

    return "python -m infanite " + " ".join(shlex.quote(a) for a in sys.argv[1:])
