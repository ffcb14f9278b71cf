"""``infanite validate``: check a cohort manifest and its images, reporting every problem at once."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check a cohort manifest and its images before any work",
                       description="Check a cohort TSV (or a reference configs/fetal.tsv with --subject-ids) and "
                                   "report every problem at once, each naming row, column and file.")
    p.add_argument("manifest", help="cohort TSV (paths relative to its folder)")
    p.add_argument("--subject-ids", default=None, metavar="YAML",
                   help="the reference's configs/subject_ids.yaml selecting rows of the TSV")
    p.add_argument("--labels", default=None, metavar="FILE", help="label table (.yaml or .tsv); default CRL 8-class")
    p.add_argument("--ga-range", nargs=2, type=float, default=[21.0, 39.0], metavar=("MIN", "MAX"),
                   help="accepted gestational ages in weeks (default 21 39)")
    p.add_argument("--no-images", action="store_true", help="check the table only, do not open the images")
    p.add_argument("--write-resolved", default=None, metavar="TSV",
                   help="when valid, write the manifest with every default filled in (paths relative to its folder "
                        "when inside it)")
    p.set_defaults(func=run)


def run(args) -> int:
    from infanite.io.cohort import ManifestError
    from infanite.io.cohort_checks import load_cohort
    from infanite.labels import default_label_table, load_label_table

    table = load_label_table(args.labels) if args.labels else default_label_table()
    try:
        cohort = load_cohort(args.manifest, label_table=table, ga_range=tuple(args.ga_range),
                             subject_ids_yaml=args.subject_ids, check_images=not args.no_images)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.write_resolved:
        cohort.write(args.write_resolved)
    print(f"{args.manifest}: OK — {len(cohort.stacks)} stacks of {len(cohort.subjects())} subjects, "
          f"GA {min(s.scan_age for s in cohort.stacks):.1f}–{max(s.scan_age for s in cohort.stacks):.1f} weeks")
    return 0
