"""``infanite evaluate``: atlas quality against a reference atlas or the registered stacks."""
from __future__ import annotations

import sys
from pathlib import Path

from infanite.cli.common import add_progress
from infanite.progress import ProgressReporter


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="atlas quality metrics: PSNR, SSIM, Dice, HD95, ASD, TCT, volume L1",
                       description="Compare a generated atlas with a reference atlas (--reference) or with the "
                                   "registered stacks (--registered, subject consistency); writes "
                                   "OUT/metrics.json and OUT/metrics.md.")
    p.add_argument("--atlas", required=True, metavar="DIR",
                   help="generated atlas folder (atlas_ga-<GA>_T2w.nii.gz, atlas_ga-<GA>_dseg.nii.gz)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--reference", default=None, metavar="DIR",
                      help="reference atlas: a folder of the same naming, or a template folder (CRL "
                           "HarvardSTA<week>_Study1/, NiftyMIC, templates.tsv)")
    mode.add_argument("--registered", default=None, metavar="TSV",
                      help="subject-consistency mode: registered.tsv written by 'infanite register'")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (metrics.json, metrics.md)")
    p.add_argument("--normative", default=None, metavar="CSV",
                   help="normative volume table (measure, gestational_age_weeks, mean_ml, sd_ml); "
                        "default: built-in Ren et al. 2022")
    p.add_argument("--ga", nargs="+", type=float, default=None, metavar="WEEKS",
                   help="only these GAs (weeks); default every GA present in both")
    p.add_argument("--labels", default=None, metavar="FILE", help="label table (.yaml or .tsv); default CRL 8-class")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="--reference mode: compare the GAs in N processes (the same results); default 1")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``infanite evaluate``: 0 on success, 2 (message on stderr) for bad input found before any work."""
    from infanite.evaluation.against_reference import evaluate_atlas
    from infanite.evaluation.inputs import EvaluationInputError
    from infanite.evaluation.subject_consistency import evaluate_subject_consistency
    from infanite.io.layout import METRICS_JSON, METRICS_MD
    from infanite.labels import load_label_table

    if (args.reference is None) == (args.registered is None):
        print("evaluate: give exactly one of --reference DIR or --registered registered.tsv", file=sys.stderr)
        return 2
    try:
        table = load_label_table(args.labels) if getattr(args, "labels", None) else None
    except ValueError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    try:
        with ProgressReporter(getattr(args, "progress_json", None)) as progress:
            if args.reference is not None:
                evaluate_atlas(args.atlas, args.reference, args.out, args.ga, args.normative, table, progress,
                               jobs=getattr(args, "jobs", 1))
            else:
                evaluate_subject_consistency(args.atlas, args.registered, args.out, args.ga, args.normative, table,
                                             progress)
    except EvaluationInputError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    print(f"metrics written: {Path(args.out) / METRICS_JSON}, {Path(args.out) / METRICS_MD}")
    return 0
