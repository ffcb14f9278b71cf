"""``infanite get-templates``: download the CRL 2017 templates after the licence was accepted."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from infanite.cli.common import add_progress
from infanite.progress import ProgressReporter


def add_parser(sub) -> None:
    from infanite.reference.download import DEFAULT_BASE_URL, DEFAULT_WEEKS, WEEK_RANGE

    p = sub.add_parser("get-templates", help="download the CRL 2017 fetal atlas templates (licence: "
                                             "non-commercial research/education only)",
                       description="Download the CRL 2017 fetal brain atlas templates (T2w, mask, parcellation per "
                                   "week) from NiftyMIC's copy, or --base-url, into a NiftyMIC-layout folder.  The "
                                   "images are never bundled with INFANiTE: you fetch them yourself after accepting "
                                   "the licence (printed; type 'yes', or pass --accept-licence).  Resumable.")
    p.add_argument("--out", required=True,
                   help="folder for the templates (NiftyMIC layout, usable as --templates / --atlas-dir)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--weeks", type=int, nargs="+", metavar="WEEK",
                       help=f"weeks to fetch, {WEEK_RANGE[0]}–{WEEK_RANGE[1]} (default "
                            f"{DEFAULT_WEEKS[0]}–{DEFAULT_WEEKS[-1]}, the weeks of NiftyMIC's copy)")
    which.add_argument("--week-range", type=int, nargs=2, metavar=("FIRST", "LAST"),
                       help="weeks FIRST to LAST inclusive")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL,
                   help=f"folder URL holding STA<week>*.nii.gz (http, https or file; default {DEFAULT_BASE_URL})")
    p.add_argument("--accept-licence", "--accept-license", dest="accept_licence", action="store_true",
                   help="accept the atlas licence (non-commercial research/education only, cite "
                        "Gholipour et al. 2017, no redistribution) without the interactive prompt")
    add_progress(p)
    p.set_defaults(func=run)


def _print_warnings(caught) -> None:
    from infanite.reference.download import TemplateDownloadWarning

    for w in caught:
        if issubclass(w.category, TemplateDownloadWarning):
            print(f"get-templates: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def run(args) -> int:
    """Run ``infanite get-templates``: 0 done, 1 the download failed, 2 invalid input or licence not accepted."""
    from infanite.reference.download import (DEFAULT_WEEKS, LICENCE_RECORD, LICENCE_TEXT, TemplateDownloadWarning,
                                             download_templates, normalise_base_url, validate_weeks)

    try:
        if getattr(args, "week_range", None):
            first, last = args.week_range
            if last < first:
                raise ValueError(f"--week-range FIRST {first} is after LAST {last}")
            weeks = validate_weeks(range(first, last + 1))
        else:
            weeks = validate_weeks(args.weeks if getattr(args, "weeks", None) else DEFAULT_WEEKS)
        base = normalise_base_url(args.base_url)
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out} exists and is not a folder")
    except ValueError as exc:
        print(f"get-templates: error: {exc}", file=sys.stderr)
        return 2
    if not args.accept_licence:
        print(LICENCE_TEXT, flush=True)
        if sys.stdin is not None and sys.stdin.isatty():
            try:
                answer = input('Type "yes" to accept these terms and download the images: ')
            except EOFError:
                answer = ""
            if answer.strip().lower() != "yes":
                print("get-templates: licence not accepted; nothing was downloaded", file=sys.stderr)
                return 2
        else:
            print("get-templates: the CRL atlas licence must be accepted: read the terms printed above, then "
                  "re-run with --accept-licence", file=sys.stderr)
            return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TemplateDownloadWarning)
        try:
            with ProgressReporter(getattr(args, "progress_json", None)) as progress:
                folder = download_templates(args.out, weeks, base, accept_licence=True, progress=progress)
        except (ValueError, OSError) as exc:
            _print_warnings(caught)
            message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            print(f"get-templates: error: {message} (files already downloaded are kept; re-run to resume)",
                  file=sys.stderr)
            return 1
    _print_warnings(caught)
    print(f"templates ready (weeks {weeks[0]}–{weeks[-1]}, licence record {LICENCE_RECORD}): {folder}")
    return 0
