"""What every command shares: the ``--progress-json``, ``--position-sigma`` and ``--appearance-sigma`` options and
one-line errors."""
from __future__ import annotations

import argparse
import sys


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress-json", metavar="FILE|-", default=None,
                        help="write progress as JSON lines to FILE, or to stdout with '-'")


def add_position_sigma(parser: argparse.ArgumentParser) -> None:
    """``--position-sigma WEEKS`` (template runs' atlas placement), shared by ``atlas`` and ``run``."""
    parser.add_argument("--position-sigma", type=float, default=None, metavar="WEEKS",
                        help="template runs: put the atlas at each GA where the fetuses scanned around it sit, "
                             "their positions averaged over a Gaussian of this width in weeks (default 0.25; 0: "
                             "the template where training left it)")


def position_sigma(args) -> dict:
    """``{"position_sigma_weeks": …}`` for :func:`~infanite.atlas.generate.generate` when ``--position-sigma`` was
    given, else ``{}`` (its default)."""
    value = getattr(args, "position_sigma", None)
    return {} if value is None else {"position_sigma_weeks": value}


def add_appearance_sigma(parser: argparse.ArgumentParser) -> None:
    """``--appearance-sigma WEEKS`` (template runs with per-fetus appearance offsets), shared by ``atlas`` and
    ``run``."""
    parser.add_argument("--appearance-sigma", type=float, default=None, metavar="WEEKS",
                        help="template runs with per-fetus appearance offsets (template.appearance, the CPU "
                             "default): add their mean over a Gaussian of this width in weeks around each GA "
                             "(default: the run's template.appearance_kernel_weeks, 0.5; 0: the template alone)")
    parser.add_argument("--appearance-fixed", action="store_true",
                        help="keep that kernel at its width at every GA (template.appearance_adaptive false); by "
                             "default it widens where the fetuses are sparse (the cohort's ends and beyond) until "
                             "it averages as many fetuses as at the median fetus's GA")


def appearance_sigma(args) -> dict:
    """``{"appearance_sigma_weeks": …}`` for :func:`~infanite.atlas.generate.generate` when ``--appearance-sigma``
    was given, and ``{"appearance_adaptive": False}`` with ``--appearance-fixed``; else ``{}`` (the run's own)."""
    value = getattr(args, "appearance_sigma", None)
    out = {} if value is None else {"appearance_sigma_weeks": value}
    if getattr(args, "appearance_fixed", False):
        out["appearance_adaptive"] = False
    return out


def error(command: str, exc: BaseException, prefix: str = "error") -> int:
    """Print ``<command>: <prefix>: <message on one line>`` to stderr; returns 2 (invalid input)."""
    message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"{command}: {prefix}: {message}", file=sys.stderr)
    return 2


def command_line() -> str:
    """This process's command line as a user would type it again (``python -m infanite …``, shell-quoted)."""
    import shlex

    return "python -m infanite " + " ".join(shlex.quote(a) for a in sys.argv[1:])
