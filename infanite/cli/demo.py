"""``infanite demo``: the whole method on a small simulated cohort."""
from __future__ import annotations

from pathlib import Path

from infanite.cli.common import add_progress
from infanite.progress import ProgressReporter


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the whole method on a small simulated cohort (CPU, a few minutes)",
                       description="Simulate a small phantom cohort, then register, train, generate the atlas, "
                                   "evaluate it against the ground truth and write report.html.  Opens nothing; "
                                   "prints where the report is.")
    p.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    p.add_argument("--atlas-dir", default=None, help="use a real template folder instead of the phantom")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from infanite.pipeline.demo import run_demo

    with ProgressReporter(args.progress_json) as progress:
        report = run_demo(Path(args.out), atlas_dir=args.atlas_dir, progress=progress)
    print(f"demo finished — open the report: {report}")
    return 0
