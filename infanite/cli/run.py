"""``infanite run``: register → train → atlas → (evaluate) → report, resumable at every stage."""
from __future__ import annotations

import sys
from pathlib import Path

from infanite.cli.common import add_progress
from infanite.progress import ProgressReporter


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="the whole method: register, train, atlas, (evaluate), report",
                       description="register -> weights -> train -> atlas -> report, resumable at every stage. "
                                   "OUT is also a valid --run for 'infanite atlas'.  Without --config the model "
                                   "is sized for the device (small on CPU, the paper's on a GPU).")
    p.add_argument("--manifest", required=True, help="cohort TSV")
    p.add_argument("--templates", required=True, help="template folder (CRL, NiftyMIC, templates.tsv) or 'phantom'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", default=None, help="training YAML config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a training config key")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--ga", type=float, nargs="+", default=None,
                   help="atlas GAs in weeks (default: every whole week of the cohort's range)")
    p.add_argument("--spacing", type=float, default=None, help="atlas spacing in mm (default 0.8 on a GPU, 1.6 on CPU)")
    p.add_argument("--reference", default=None, help="reference atlas folder to evaluate against (optional)")
    p.add_argument("--jobs", type=int, default=1, help="stacks registered in parallel")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from infanite.io.cohort import ManifestError
    from infanite.pipeline.run import run_pipeline
    from infanite.registration.register import RegisterOptions

    try:
        with ProgressReporter(args.progress_json) as progress:
            result = run_pipeline(args.manifest, args.templates, Path(args.out), config_path=args.config,
                                  overrides=args.set or [], device=args.device, ga_weeks=args.ga,
                                  atlas_spacing_mm=args.spacing, reference=args.reference,
                                  register_options=RegisterOptions(jobs=args.jobs), progress=progress)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if result.get("stopped"):
        print(f"stopped at training step {result['steps']} of {result['total_steps']}; run the same command again "
              f"to resume", file=sys.stderr)
        return 0
    failed = result["registration"]["failed"]
    for sid, reason in failed.items():
        print(f"FAILED {sid}: {reason.splitlines()[0]}", file=sys.stderr)
    print(f"report: {result['report']}")
    return 1 if failed else 0
