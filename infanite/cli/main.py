"""Command line: ``python -m infanite <command> [options]`` (``--help`` on every command).

Every long command accepts ``--progress-json FILE|-`` (one JSON object per line: stage, step, total, message,
elapsed_s, eta_s) and shows a progress bar when stderr is a terminal.  Exit codes: 0 success, 1 failure of the
work, 2 invalid input (reported before any work starts).

Each command is a module of this package with ``add_parser(subparsers)`` and ``run(args)``; argparse lives here
and nowhere else, and a module imports the domain code it runs only inside ``run`` (``--help`` stays fast and
needs neither torch nor nibabel).
"""
from __future__ import annotations

import argparse
import sys

from infanite.cli import (atlas, demo, devices, evaluate, get_templates, manifest, register, run, simulate,
                          train, validate)

#: the commands in the order ``--help`` lists them
COMMANDS = (validate, manifest, simulate, register, train, atlas, evaluate, run, demo, get_templates, devices)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infanite", description=__doc__.split("\n\n")[0] + "\n\n"
                                     + __doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    from infanite import __version__

    parser.add_argument("--version", action="version", version=f"infanite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def main(argv=None) -> int:
    """Run a command; exit 0 on success, 2 for bad input (``ValueError``, a missing file, a folder in use), 1 when
    the work failed (:class:`~infanite.errors.WorkFailed`, a full disk, out of memory), with one line on stderr."""
    from infanite.errors import WorkFailed, describe_os_error, is_out_of_memory

    args = build_parser().parse_args(argv)
    prefix = f"{args.command}: error"
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prefix}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except WorkFailed as exc:
        print(f"{prefix}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        message = describe_os_error(exc, getattr(args, "out", None))
        if message is None:
            raise
        print(f"{prefix}: {message}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        print(f"{prefix}: out of memory ({_one_line(exc)[:200]}); use a smaller model or batch (n_samples, "
              f"inr_decoder.hidden_size, psf.samples_per_epoch) or a machine with more memory; finished parts "
              f"are kept", file=sys.stderr)
        return 1
