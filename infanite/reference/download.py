"""Download the CRL 2017 fetal brain atlas templates (``python -m infanite get-templates``).

The CRL spatio-temporal fetal brain atlas (Gholipour et al. 2017) is licensed for non-commercial research and
education only and may not be redistributed, so INFANiTE never bundles it: each user fetches the images directly
from the source with :func:`download_templates`, after accepting :data:`LICENCE_TEXT`.

The default source is the copy in NiftyMIC's GitHub repository (``gift-surg/NiftyMIC``, folder
``data/templates/``).  The file names in :data:`TEMPLATE_FILES` are those listed in that folder in indexed
snapshots of the repository (commits ``05abb391`` and ``fbb1a3c2``); they could not be checked against the
current ``master`` branch from here, so treat them as assumed and correct the table if the source changes:

* ``STA<week>.nii.gz`` (T2w) and ``STA<week>_mask.nii.gz`` (brain mask), weeks 21–37 — the folder's README
  (the atlas version edited 11/21/16) says "atlas images and labels for gestational age (GA) weeks 21-37", so
  the default weeks are 21–37 although week 38 is accepted for other sources (``base_url``);
* parcellation ``STA<week>_parc.nii.gz`` (weeks 30–37) or ``STA<week>_WMZparc.nii.gz`` (weeks 21–30, with the
  developing white-matter zones); either is saved as ``STA<week>_parc.nii.gz``, the name
  :meth:`infanite.reference.templates.TemplateLibrary.from_folder` reads (the URL each file came from is recorded in
  ``LICENCE-CRL-ATLAS.txt``).  These parcellations use the CRL label key (37 Hippocampus_L … 125 Misc, see the
  source's README), not INFANiTE's 8-class table.

The downloaded folder has the NiftyMIC layout of :mod:`infanite.reference.templates`.  Every file goes through a
temporary sibling that is checked to be a readable NIfTI image before it is renamed into place, so the folder
never holds a partial image; a re-run fetches only what is missing (a damaged file already there is fetched
again).
"""
from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from infanite.io.atomic import atomic_output, atomic_write_text
from infanite.progress import ProgressReporter

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/gift-surg/NiftyMIC/master/data/templates/"
#: Weeks a caller may ask for (the CRL 2017 atlas spans 21–38 weeks).
WEEK_RANGE = (21, 38)
#: Weeks fetched by default: those of NiftyMIC's copy (its README: weeks 21-37).
DEFAULT_WEEKS = tuple(range(21, 38))
#: The licence record written next to the images.
LICENCE_RECORD = "LICENCE-CRL-ATLAS.txt"
#: The source's own licence file (remote name, local name); fetched when present, a warning otherwise.
SOURCE_LICENCE_FILE = ("LICENSE", "LICENSE-source.txt")
#: Seconds the default opener waits for the server.
TIMEOUT_S = 60.0

LICENCE_TEXT = """\
CRL spatio-temporal fetal brain atlas (CRL 2017 fetal brain atlas)
Computational Radiology Laboratory (CRL), Boston Children's Hospital.

Gholipour A, Rollins CK, Velasco-Annis C, et al. A normative spatiotemporal MRI atlas of the fetal brain for
automatic segmentation and analysis of early brain growth. Scientific Reports 7:476 (2017).
doi:10.1038/s41598-017-00525-w

* The atlas images are licensed for non-commercial research and education use only.
* Publications that use the atlas must cite the paper above and attribute the atlas to CRL.
* Do not redistribute the images (INFANiTE does not bundle them, and neither should you).
* You download the images directly from the source yourself and are responsible for complying with its licence.

This is a summary, not the licence: see the source's licence file for the authoritative terms (for the
NiftyMIC copy: https://github.com/gift-surg/NiftyMIC/blob/master/data/templates/LICENSE).
"""


@dataclass(frozen=True)
class TemplateFile:
    """One file per week: ``local`` name in the output folder, ``remote`` names tried in order (``{week}`` is
    replaced by the week), and whether a week without it is an error (``required``) or only a warning."""

    role: str
    local: str
    remote: tuple
    required: bool


#: Per-week files (assumed names, see the module docstring); edit here if the source renames them.
TEMPLATE_FILES = (
    TemplateFile("T2w", "STA{week}.nii.gz", ("STA{week}.nii.gz",), True),
    TemplateFile("mask", "STA{week}_mask.nii.gz", ("STA{week}_mask.nii.gz",), False),
    TemplateFile("parcellation", "STA{week}_parc.nii.gz", ("STA{week}_parc.nii.gz", "STA{week}_WMZparc.nii.gz"),
                 False),
)


class TemplateDownloadWarning(UserWarning):
    """An optional file (mask, parcellation, the source's licence) is missing at the source or was damaged."""


class DownloadError(OSError):
    """A file could not be fetched (network failure, server error): the message names the URL."""


def _default_opener(url: str):
    return urllib.request.urlopen(url, timeout=TIMEOUT_S)


def validate_weeks(weeks) -> list[int]:
    """The requested weeks as sorted unique integers in :data:`WEEK_RANGE` (ValueError naming every bad one)."""
    if isinstance(weeks, (int, float)) and not isinstance(weeks, bool):
        weeks = [weeks]
    if isinstance(weeks, (str, bytes)):
        raise ValueError(f"weeks must be a list of whole weeks {WEEK_RANGE[0]}–{WEEK_RANGE[1]}, got {weeks!r}")
    try:
        items = list(weeks)
    except TypeError:
        raise ValueError(f"weeks must be a list of whole weeks {WEEK_RANGE[0]}–{WEEK_RANGE[1]}, "
                         f"got {weeks!r}") from None
    good, bad = set(), []
    for week in items:
        try:
            value = float(week) if not isinstance(week, (bool, str, bytes)) else float("nan")
        except (TypeError, ValueError):
            value = float("nan")
        if value == value and value.is_integer() and WEEK_RANGE[0] <= value <= WEEK_RANGE[1]:
            good.add(int(value))
        else:
            bad.append(week)
    if bad:
        raise ValueError(f"weeks must be whole numbers from {WEEK_RANGE[0]} to {WEEK_RANGE[1]}; invalid: "
                         f"{', '.join(repr(b) for b in bad)}")
    if not good:
        raise ValueError("no weeks requested")
    return sorted(good)


def normalise_base_url(base_url: str) -> str:
    """``base_url`` with a trailing slash; only http, https and file URLs are accepted."""
    url = str(base_url).strip()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"base URL must be an http(s):// or file:// URL of the template folder, got {base_url!r}")
    return url if url.endswith("/") else url + "/"


def _licence_refusal() -> str:
    return ("the CRL fetal brain atlas licence must be accepted before downloading: read the terms below "
            "(infanite.reference.download.LICENCE_TEXT), then pass accept_licence=True "
            "(command line: --accept-licence)\n\n" + LICENCE_TEXT)


def _not_found(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in (404, 410)
    if isinstance(exc, urllib.error.URLError):
        return isinstance(exc.reason, FileNotFoundError)
    return isinstance(exc, FileNotFoundError)


class _NotFound(Exception):
    pass


def _fetch(url: str, tmp: Path, opener) -> int:
    """Write the body at ``url`` to ``tmp``; bytes written.  _NotFound for 404/missing file, DownloadError else."""
    try:
        response = opener(url)
    except Exception as exc:  # urllib raises HTTPError/URLError/OSError/timeouts; a custom opener anything
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # an HTTPError holds the open error response
        if _not_found(exc):
            raise _NotFound(url) from None
        raise DownloadError(f"download of {url} failed: {getattr(exc, 'reason', None) or exc}") from exc
    try:
        status = getattr(response, "status", None)
        if status is not None and not 200 <= int(status) < 300:
            if int(status) in (404, 410):
                raise _NotFound(url)
            raise DownloadError(f"download of {url} failed: HTTP status {status}")
        expected = None
        headers = getattr(response, "headers", None)
        if headers is not None and str(headers.get("Content-Length", "")).strip().isdigit():
            expected = int(headers.get("Content-Length"))
        size = 0
        with open(tmp, "wb") as fh:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                fh.write(chunk)
                size += len(chunk)
    except (_NotFound, DownloadError):
        raise
    except Exception as exc:
        raise DownloadError(f"download of {url} failed: {exc}") from exc
    finally:
        close = getattr(response, "close", None)
        if close is not None:
            close()
    if expected is not None and size != expected:
        raise DownloadError(f"download of {url} is incomplete: {size} of {expected} bytes received")
    return size


def _content_hint(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(200)
    except OSError:
        return ""
    if not head:
        return "; the server sent an empty file"
    if head.startswith(b"version https://git-lfs"):
        return "; the server sent a Git LFS pointer instead of the image"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        return "; the server sent an HTML/XML page (an error page?) instead of the image"
    try:
        snippet = head.decode("ascii").strip()
    except UnicodeDecodeError:
        return ""
    if snippet.isprintable():
        return f"; the server sent text starting {snippet[:60]!r}"
    return ""


def _readable_nifti(path: Path) -> str | None:
    """None when ``path`` is a readable NIfTI image (voxels included), else why not."""
    from infanite.io.images import load_nifti         # nibabel only when a file is checked

    try:
        load_nifti(path, dtype=None)
    except Exception as exc:  # ImageReadError, and anything nibabel may raise on exotic garbage
        return getattr(exc, "detail", None) or str(exc)
    return None


def _download_one(urls: list, final: Path, opener, nifti: bool):
    """Fetch the first of ``urls`` that exists into ``final`` (atomic); the URL used, or None when none exists."""
    for url in urls:
        try:
            with atomic_output(final) as tmp:
                _fetch(url, tmp, opener)
                if nifti:
                    problem = _readable_nifti(tmp)
                    if problem is not None:
                        raise ValueError(f"{url} is not a readable NIfTI image ({problem}{_content_hint(tmp)}); "
                                         f"nothing was saved as {final}")
        except _NotFound:
            continue
        return url
    return None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _licence_header(base_url: str) -> str:
    return ("This folder holds images of the CRL spatio-temporal fetal brain atlas, downloaded by the user with\n"
            "INFANiTE (python -m infanite get-templates) directly from the source below after accepting these "
            "terms.\nDo not redistribute them.\n\n" + LICENCE_TEXT +
            f"\nSource: {base_url}\nSource licence file (copy, when the source has one): "
            f"{SOURCE_LICENCE_FILE[1]}\nLicence accepted: {_now()}\n\nDownloads (local file <- URL):\n")


def _append_record(out: Path, base_url: str, fetched: list) -> None:
    record = out / LICENCE_RECORD
    text = record.read_text(encoding="utf-8") if record.is_file() else _licence_header(base_url)
    if fetched:
        lines = [f"{_now()} from {base_url}:"] + [f"  {name} <- {url}" for name, url in fetched]
        text = text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    atomic_write_text(record, text)


def download_templates(out_dir, weeks=DEFAULT_WEEKS, base_url: str = DEFAULT_BASE_URL,
                       accept_licence: bool = False, progress: ProgressReporter | None = None,
                       opener=_default_opener) -> Path:
    """Download the CRL atlas templates of ``weeks`` into ``out_dir`` (NiftyMIC layout); returns the folder.

    ``weeks``: whole weeks 21–38 (default 21–37, the weeks of NiftyMIC's copy).  ``base_url``: the folder
    holding the files (http, https or file URL).  ``accept_licence`` must be True (the user has read
    :data:`LICENCE_TEXT`), else ValueError and nothing is written.  Arguments are checked before anything is
    written or fetched.  ``progress``: stage ``download``, one step per file (files already there count as done).
    ``opener(url)`` returns a response like :func:`urllib.request.urlopen`'s (injectable for tests and proxies).

    Files already present and readable are kept (a re-run fetches only what is missing).  A downloaded file that
    is not a readable NIfTI image raises ValueError naming its URL (nothing is left of it); a week without its
    T2w at the source raises FileNotFoundError; a missing mask, parcellation or source licence file gives a
    :class:`TemplateDownloadWarning` and the download goes on; network or server failures raise
    :class:`DownloadError` (an OSError).  ``LICENCE-CRL-ATLAS.txt`` in ``out_dir`` records the licence, the
    source, the date and the URL of every file fetched.
    """
    week_list = validate_weeks(weeks)
    base = normalise_base_url(base_url)
    if not accept_licence:
        raise ValueError(_licence_refusal())
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")

    plan = []  # (local path, remote URLs, is NIfTI, TemplateFile or None)
    remote_name, local_name = SOURCE_LICENCE_FILE
    plan.append((out / local_name, [base + remote_name], False, None))
    for week in week_list:
        for spec in TEMPLATE_FILES:
            urls = [base + name.format(week=week) for name in spec.remote]
            plan.append((out / spec.local.format(week=week), urls, True, spec))

    out.mkdir(parents=True, exist_ok=True)
    if not (out / LICENCE_RECORD).is_file():
        _append_record(out, base, [])
    todo = []
    for item in plan:
        path, _, nifti, _ = item
        if path.is_file():
            problem = _readable_nifti(path) if nifti else None
            if problem is None:
                continue
            warnings.warn(f"{path} is damaged ({problem}); downloading it again", TemplateDownloadWarning,
                          stacklevel=2)
        todo.append(item)

    total, done = len(plan), len(plan) - len(todo)
    if progress is not None:
        progress.start("download", total, f"{done} of {total} files already present", initial=done)
    fetched = []
    try:
        for path, urls, nifti, spec in todo:
            url = _download_one(urls, path, opener, nifti)
            if url is not None:
                fetched.append((path.name, url))
                message = path.name
            elif spec is not None and spec.required:
                raise FileNotFoundError(
                    f"{spec.role} template not found at the source: {' or '.join(urls)} (NiftyMIC's copy has weeks "
                    f"21–37; check the weeks and the base URL)")
            else:
                what = spec.role if spec is not None else "the source's licence file"
                warnings.warn(f"{what} not found at the source ({' or '.join(urls)}); continuing without "
                              f"{path.name}", TemplateDownloadWarning, stacklevel=2)
                message = f"{path.name} not at the source"
            done += 1
            if progress is not None:
                progress.update(done, message)
    finally:
        if fetched:
            _append_record(out, base, fetched)
    return out


# ------------------------------------------------------------------------------------------------- command line
