"""``infanite atlas``: the spatio-temporal atlas of a finished run at any GA and spacing."""
from __future__ import annotations

import logging
import sys

from infanite.cli.common import (add_appearance_sigma, add_position_sigma, add_progress, appearance_sigma,
                                 position_sigma)
from infanite.progress import ProgressReporter


def add_parser(sub) -> None:
    p = sub.add_parser("atlas", help="generate the spatio-temporal atlas (T2w, labels, volumes, growth) from a run",
                       description="GA-conditioned atlas: Gaussian kernel regression of the stack latents, the "
                                   "INR queried PSF-free on a grid in template space.  Resumable per GA.")
    p.add_argument("--run", required=True, help="run folder of a finished 'infanite train' (--out there)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--ga", type=float, nargs="+", metavar="WEEKS", help="gestational ages in weeks")
    which.add_argument("--ga-range", type=float, nargs=2, metavar=("START", "STOP"),
                       help="gestational ages START, START+STEP, ... up to STOP inclusive (weeks)")
    p.add_argument("--ga-step", type=float, default=1.0, help="step of --ga-range in weeks (default 1)")
    p.add_argument("--spacing", type=float, default=0.8, help="atlas voxel size in mm (default 0.8)")
    p.add_argument("--out", required=True, help="atlas folder (NIfTI per GA, volumes.tsv, growth.png, ...)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N (default auto: the GPU "
                                                  "when PyTorch sees one)")
    p.add_argument("--sigma", type=float, default=0.5,
                   help="Gaussian kernel width over stack GAs in weeks (default 0.5)")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="regress from the K most weighted stacks only")
    add_position_sigma(p)
    add_appearance_sigma(p)
    p.add_argument("--probabilities", action="store_true",
                   help="also write 4-D tissue probability maps (atlas_ga-<GA>_probseg.nii.gz)")
    p.add_argument("--normative", default=None, metavar="CSV",
                   help="normative volume table for growth.png (default: built-in Ren et al. 2022)")
    p.add_argument("--overwrite", action="store_true", help="replace a different atlas already in --out")
    p.add_argument("--templates", default=None, metavar="DIR",
                   help="template folder whose labels a mask-only run's atlas takes (needed when no stack had a Seg)")
    p.add_argument("--label-method", choices=["demons", "bspline", "none"], default="demons",
                   help="how template labels reach a mask-only run's atlas: diffeomorphic demons registration "
                        "(default), B-spline registration, or none (the template's labels as they lie)")
    p.add_argument("--accept-estimated-ga", action="store_true",
                   help="let stacks whose GA 'register' estimated (no scan_age) take part in the GA regression")
    p.add_argument("--no-intensity-ceiling", dest="intensity_ceiling", action="store_false",
                   help="do not cap the T2w at the brightest intensity the scanner measured around each GA (the "
                        "run's intensity_ceiling.json); by default it is capped where the run has one")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="make the GAs in N processes (on CUDA one per GPU in turn, on CPU the cores shared out); "
                        "default 1")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``infanite atlas``; 0 on success, 2 (one line on stderr) for invalid input.

    Support warnings are printed once here (the module logger is muted meanwhile, so they do not appear twice).
    """
    from infanite.atlas.generate import ga_list, generate, logger
    from infanite.devices import choose_device

    mute = logging.NullHandler()
    logger.addHandler(mute)
    propagate, logger.propagate = logger.propagate, False
    try:
        gas = ga_list(getattr(args, "ga", None), getattr(args, "ga_range", None), getattr(args, "ga_step", 1.0))
        with ProgressReporter(getattr(args, "progress_json", None)) as progress:
            result = generate(args.run, gas, args.out, spacing_mm=args.spacing,
                              device=choose_device(args.device),
                              sigma_weeks=args.sigma, top_k=args.top_k, probabilities=args.probabilities,
                              overwrite=args.overwrite, progress=progress, normative=args.normative,
                              templates=args.templates, label_method=args.label_method,
                              accept_estimated_ga=args.accept_estimated_ga, jobs=getattr(args, "jobs", 1),
                              intensity_ceiling=getattr(args, "intensity_ceiling", True),
                              **position_sigma(args), **appearance_sigma(args))
    except (ValueError, FileNotFoundError) as exc:
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"atlas: error: {message}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(mute)
        logger.propagate = propagate
    for note in result["warnings"]:
        print(f"atlas: warning: {note}", file=sys.stderr)
    print(f"atlas written: {result['out_dir']} ({len(result['ga'])} GA(s); {len(result['generated'])} generated, "
          f"{len(result['skipped'])} already done); manifest {result['manifest']}")
    return 0

