"""An atlas folder as ``infanite atlas`` writes it: one reader for generation, evaluation and the Slicer Atlas
module.

Per gestational age (GA, weeks; keys rounded to 0.1 week, :func:`~infanite.io.layout.ga_key`) the folder holds
``atlas_ga-<GA>_T2w.nii.gz`` and ``atlas_ga-<GA>_dseg.nii.gz`` on one grid (optionally ``_probseg`` and, in
reference folders, ``_mask``), and ``atlas_manifest.json``, written last, which lists the GAs and marks those whose
files are ``complete``.  :func:`scan_atlas_folder` lists the complete GAs of the manifest (a GA still being written
is left out), or, for a folder without a manifest (a reference atlas written by hand or a simulator), the
T2w/dseg pairs found by name.  Standard library only: the Slicer module reads folders with it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from infanite.io.layout import ATLAS_MANIFEST, ATLAS_MANIFEST_FORMAT, atlas_file_name, ga_key

_ATLAS_FILE = re.compile(r"^atlas_ga-(\d+(?:\.\d+)?)_(T2w|dseg|mask)\.nii\.gz$")


@dataclass(frozen=True)
class AtlasFiles:
    """One GA of an atlas folder: ``ga`` (weeks, 0.1 precision), its T2w and dseg NIfTI paths, and its brain mask
    when the folder has one (reference atlases; a generated atlas's mask is ``dseg > 0``)."""

    ga: float
    t2w: Path | None
    dseg: Path | None
    mask: Path | None = None

    @property
    def missing(self) -> list[str]:
        """The kinds a GA needs (T2w, dseg) that its files lack (only with ``allow_incomplete``)."""
        return [kind for kind, path in (("T2w", self.t2w), ("dseg", self.dseg)) if path is None]


def read_atlas_manifest(folder, hint: str = "") -> dict | None:
    """``folder/atlas_manifest.json`` (None when absent); ``ValueError`` naming the file, followed by ``hint``, when
    it is unreadable or not an infanite atlas manifest."""
    path = Path(folder) / ATLAS_MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable atlas manifest ({exc}){hint}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != ATLAS_MANIFEST_FORMAT:
        raise ValueError(f"{path}: not an infanite atlas manifest (format {ATLAS_MANIFEST_FORMAT!r} expected){hint}")
    return manifest


def _files_from_manifest(folder: Path, manifest: dict) -> list[AtlasFiles]:
    where = folder / ATLAS_MANIFEST
    entries = manifest.get("ga")
    if not isinstance(entries, dict):
        raise ValueError(f"{where}: no 'ga' entries")
    out = []
    for key, entry in entries.items():
        if not isinstance(entry, dict) or not entry.get("complete"):
            continue                                    # a GA still being generated
        names = entry.get("files") or {}
        paths = {}
        for kind in ("T2w", "dseg"):
            name = names.get(kind)
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}: GA {key} names no {kind} file")
            paths[kind] = folder / name
            if not paths[kind].is_file():
                raise ValueError(f"{paths[kind]}: missing (listed for GA {key} weeks in {where})")
        try:
            ga = ga_key(entry.get("ga_weeks", key))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: GA {key!r} is not a number of weeks") from exc
        mask = folder / names["mask"] if isinstance(names.get("mask"), str) and (folder / names["mask"]).is_file() \
            else None
        out.append(AtlasFiles(ga, paths["T2w"], paths["dseg"], mask))
    return out


def _files_from_names(folder: Path, allow_incomplete: bool) -> list[AtlasFiles]:
    found: dict = {}
    for path in sorted(folder.iterdir()):
        match = _ATLAS_FILE.match(path.name)
        if match and path.is_file():
            found.setdefault(ga_key(match.group(1)), {})[match.group(2)] = path
    out = []
    for ga, kinds in sorted(found.items()):
        for kind, other in (("T2w", "dseg"), ("dseg", "T2w")):
            if kind in kinds and other not in kinds and not allow_incomplete:
                raise ValueError(f"{kinds[kind]}: no matching {other} file ({atlas_file_name(ga, other)}) "
                                 f"for GA {ga:.1f} weeks")
        if "T2w" in kinds or "dseg" in kinds:
            out.append(AtlasFiles(ga, kinds.get("T2w"), kinds.get("dseg"), kinds.get("mask")))
    return out


def scan_atlas_folder(folder, allow_incomplete: bool = False) -> tuple:
    """``(manifest or None, [AtlasFiles sorted by GA])`` of an atlas folder; reads no image.

    With ``atlas_manifest.json`` its complete GAs are listed (each named file must exist); without it, the
    ``atlas_ga-<GA>_T2w/dseg.nii.gz`` pairs of the folder.  ``ValueError`` naming the folder or file: no such
    folder, no atlas files, a T2w without its dseg (or the reverse; listed with the kind missing instead when
    ``allow_incomplete``, for a caller that reports every problem at once), an unreadable manifest.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"atlas folder {folder} does not exist")
    manifest = read_atlas_manifest(folder)
    files = _files_from_manifest(folder, manifest) if manifest is not None else \
        _files_from_names(folder, allow_incomplete)
    if not files:
        raise ValueError(f"{folder}: no atlas files (atlas_ga-<GA>_T2w.nii.gz with atlas_ga-<GA>_dseg.nii.gz); "
                         f"give the --out folder of 'infanite atlas'")
    return manifest, sorted(files, key=lambda f: f.ga)


def match_ga(weeks, ga) -> float | None:
    """The member of ``weeks`` with the same GA key as ``ga`` (0.1 week), or None."""
    key = ga_key(ga)
    return next((w for w in weeks if ga_key(w) == key), None)


def entry_complete(folder: Path, entry, probabilities: bool = False) -> bool:
    """True when a manifest GA entry is marked complete and its files (probseg too with ``probabilities``) exist."""
    if not isinstance(entry, dict) or not entry.get("complete"):
        return False
    files = entry.get("files") or {}
    needed = ("T2w", "dseg", "probseg") if probabilities else ("T2w", "dseg")
    return all(k in files and (Path(folder) / files[k]).is_file() for k in needed)


def remove_atlas(folder: Path, manifest: dict | None) -> None:
    """Delete the files a manifest names (plain names inside ``folder`` only), then the manifest."""
    folder = Path(folder)
    if manifest is None:
        (folder / ATLAS_MANIFEST).unlink(missing_ok=True)
        return
    names = [manifest.get(k) for k in ("volumes", "growth", "montage")]
    for entry in (manifest.get("ga") or {}).values():
        names += list((entry.get("files") or {}).values()) if isinstance(entry, dict) else []
    for name in names:
        if isinstance(name, str) and name and Path(name).name == name:
            (folder / name).unlink(missing_ok=True)
    (folder / ATLAS_MANIFEST).unlink(missing_ok=True)
