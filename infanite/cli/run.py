"""``infanite run``: register → train → atlas → (evaluate) → report, resumable at every stage."""
from __future__ import annotations

import sys
from pathlib import Path

from infanite.cli.common import (add_appearance_sigma, add_position_sigma, add_progress, appearance_sigma,
                                 command_line, position_sigma)
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
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU when PyTorch sees one, else the CPU), cpu, cuda or cuda:N (default auto); "
                        "without --config the model is sized for it")
    p.add_argument("--ga", type=float, nargs="+", default=None,
                   help="atlas GAs in weeks (default: every whole week of the cohort's range)")
    p.add_argument("--spacing", type=float, default=None, help="atlas spacing in mm (default 0.8 on a GPU, 1.6 on CPU)")
    p.add_argument("--reference", default=None, help="reference atlas folder to evaluate against (optional)")
    p.add_argument("--jobs", type=int, default=1, help="stacks registered in parallel (processes; default 1)")
    p.add_argument("--n4", action="store_true", help="N4 bias-field correction of each stack before registration")
    p.add_argument("--fix-headers", action="store_true",
                   help="accept T2w/Mask/Seg headers that differ by rounding noise (as 'infanite register')")
    p.add_argument("--max-ga-gap", type=float, default=2.0,
                   help="largest distance in weeks from a stack's GA to the nearest template (default 2)")
    p.add_argument("--sigma", type=float, default=0.5,
                   help="atlas GA kernel width in weeks (default 0.5; wider for sparse cohorts)")
    add_position_sigma(p)
    add_appearance_sigma(p)
    p.add_argument("--probabilities", action="store_true", help="also write 4-D tissue probability maps")
    p.add_argument("--label-method", choices=["demons", "bspline", "none"], default="demons",
                   help="how template labels reach the atlas of a mask-only cohort (default demons)")
    p.add_argument("--accept-estimated-ga", action="store_true",
                   help="let stacks whose GA 'register' estimated take part in the atlas's GA regression")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from infanite.io.cohort import ManifestError
    from infanite.devices import choose_device
    from infanite.pipeline.run import run_pipeline
    from infanite.registration.register import RegisterOptions

    device = choose_device(args.device)
    print(f"run: device {device}; " + ("the model of " + args.config if args.config else
                                       "the model sized for it (no --config)"), file=sys.stderr)
    try:
        with ProgressReporter(args.progress_json) as progress:
            result = run_pipeline(args.manifest, args.templates, Path(args.out), config_path=args.config,
                                  overrides=args.set or [], device=device, ga_weeks=args.ga,
                                  atlas_spacing_mm=args.spacing, reference=args.reference,
                                  register_options=RegisterOptions(jobs=args.jobs, n4=args.n4,
                                                                   fix_headers=args.fix_headers,
                                                                   max_ga_gap_weeks=args.max_ga_gap),
                                  progress=progress, command=command_line(),
                                  atlas_options={"sigma_weeks": args.sigma, "probabilities": args.probabilities,
                                                 "label_method": args.label_method,
                                                 "accept_estimated_ga": args.accept_estimated_ga,
                                                 **position_sigma(args), **appearance_sigma(args)})
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
