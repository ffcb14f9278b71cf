"""``infanite register``: every stack aligned to an age-matched template."""
from __future__ import annotations

import sys
from pathlib import Path

from infanite.cli.common import add_progress
from infanite.progress import ProgressReporter


def add_parser(sub) -> None:
    p = sub.add_parser("register", help="align every stack to an age-matched template (orientation search + NMI)",
                       description="Slice-to-template registration: orientation search over 24 axis rotations and "
                                   "4 principal-axis candidates, rigid NMI refinement, resampling into template "
                                   "space with observed-voxel and weight maps.  Resumable; failed stacks are "
                                   "reported without stopping the others (exit code 1).")
    p.add_argument("--manifest", required=True, help="cohort TSV (scan_age may be empty: GA from brain volume; "
                                                      "Seg may be empty when Mask is given)")
    p.add_argument("--templates", required=True,
                   help="template folder (CRL, NiftyMIC or templates.tsv layout), or 'phantom'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--spacing", type=float, default=None,
                   help="isotropic output spacing in mm (default: the template grid, 0.8 mm for CRL)")
    p.add_argument("--jobs", type=int, default=1, help="stacks registered in parallel (processes; default 1)")
    p.add_argument("--n4", action="store_true", help="N4 bias-field correction of each stack first")
    p.add_argument("--backend", choices=["torch", "sitk"], default="torch",
                   help="fine registration back end: batched PyTorch NMI (default) or SimpleITK correlation")
    p.add_argument("--device", default="auto", help="torch device for the NMI back end: auto, cpu, cuda (default "
                                                  "auto: the GPU when PyTorch sees one)")
    p.add_argument("--w-obs", type=float, default=1.6, help="weight of observed voxels (default 1.6)")
    p.add_argument("--w-int", type=float, default=0.8, help="weight of interpolated brain voxels (default 0.8)")
    p.add_argument("--max-ga-gap", type=float, default=2.0,
                   help="largest accepted distance (weeks) from a stack's GA to the nearest template week "
                        "(default 2)")
    p.add_argument("--init-transforms", default=None, metavar="JSON",
                   help="start these stacks from the given template_to_stack matrices (no search), then refine")
    p.add_argument("--fixed-transforms", default=None, metavar="JSON",
                   help="take these matrices as final: only resample")
    p.add_argument("--fix-headers", action="store_true",
                   help="use the T2w geometry for Seg/Mask whose headers differ from it only by float noise")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from infanite.devices import choose_device
    from infanite.io.cohort import ManifestError
    from infanite.registration.register import RegisterOptions, register_cohort
    from infanite.registration.stack import RegistrationSettings

    options = RegisterOptions(spacing_mm=args.spacing, jobs=args.jobs, n4=args.n4, w_obs=args.w_obs,
                              w_int=args.w_int, fix_headers=args.fix_headers, max_ga_gap_weeks=args.max_ga_gap,
                              settings=RegistrationSettings(fine_backend=args.backend,
                                                             device=choose_device(args.device)))
    try:
        with ProgressReporter(args.progress_json) as progress:
            result = register_cohort(args.manifest, args.templates, args.out, options, args.init_transforms,
                                     args.fixed_transforms, progress)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    for sid, reason in result["failed"].items():
        print(f"FAILED {sid}: {reason.splitlines()[0]}", file=sys.stderr)
    print(f"registered {len(result['done'])} stacks ({len(result['skipped'])} already done), "
          f"{len(result['failed'])} failed: {Path(args.out) / 'registered.tsv'}")
    return 1 if result["failed"] else 0
