"""``infanite manifest``: a cohort manifest (``cohort.tsv``) from a BIDS folder or a flat folder of stacks."""
from __future__ import annotations

import sys

GA_COLUMNS_TEXT = "ga_weeks, gestational_age, ga, scan_age"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "manifest", help="build a cohort manifest (cohort.tsv) from a BIDS folder or a folder of stacks",
        description="Find the T2w stacks of a BIDS folder (sub-*/[ses-*/]anat/*_T2w.nii[.gz], and *_T2w.nii[.gz] "
                    "in the folder itself), pair each with its brain mask (<stem>_desc-brain_mask, "
                    "<stem>_desc-brainmask, <stem>_mask) and label map (<stem>_dseg) beside it or under "
                    "derivatives/*/, take the gestational age from --ga, sub-XX/sub-XX_sessions.tsv or "
                    "participants.tsv, and write a manifest TSV.  Every file left out is listed on stderr with the "
                    "reason.  Exit 2 for unusable input.")
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="BIDS folder, or any folder of stacks with --pattern")
    p.add_argument("--out", required=True, metavar="TSV",
                   help="manifest to write (required; paths inside its folder are written relative to it, others "
                        "absolute)")
    p.add_argument("--ga", type=float, default=None, metavar="WEEKS",
                   help="one gestational age in weeks (15-45) for every stack, i.e. one fetus (default: from "
                        "sub-XX/sub-XX_sessions.tsv, then participants.tsv)")
    p.add_argument("--ga-column", default=None, metavar="NAME",
                   help=f"GA column (weeks) of participants.tsv and the sessions tables (default: the first of "
                        f"{GA_COLUMNS_TEXT} present)")
    p.add_argument("--pattern", default=None, metavar="GLOB",
                   help="glob relative to BIDS_DIR for the stacks of a folder that is not BIDS, e.g. '*.nii.gz' or "
                        "'**/*_T2w.nii*'; mask and label-map names are left out (default: the BIDS layout above; "
                        "for a flat folder the same as '*_T2w.nii*')")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (default: refuse)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    from pathlib import Path

    from infanite.io.atomic import atomic_write_text
    from infanite.io.bids import find_stacks, manifest_text
    from infanite.io.cohort import manifest_base_dir

    out = Path(os.path.abspath(os.path.expanduser(args.out)))
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give the manifest's file name, e.g. {out / 'cohort.tsv'}")
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {out} already exists: give --overwrite to replace it, or another file name")
    rows, skipped = find_stacks(args.bids_dir, pattern=args.pattern, ga=args.ga, ga_column=args.ga_column)
    for entry in skipped:
        print(f"manifest: skipped {entry.path}: {entry.reason}", file=sys.stderr)
    atomic_write_text(out, manifest_text(rows, manifest_base_dir(out)))
    fetuses = len({row.subject for row in rows})
    ages = [row.scan_age for row in rows]
    with_mask = sum(row.mask is not None for row in rows)
    with_seg = sum(row.seg is not None for row in rows)
    print(f"{out}: {len(rows)} stack{'' if len(rows) == 1 else 's'} of {fetuses} "
          f"fetus{'' if fetuses == 1 else 'es'}, GA {min(ages):.1f}–{max(ages):.1f} weeks "
          f"({with_mask} with a brain mask, {with_seg} with a label map); {len(skipped)} "
          f"file{'' if len(skipped) == 1 else 's'} skipped")
    return 0
