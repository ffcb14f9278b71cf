"""Paths built from data (stack ids, subject names) stay inside their output folder.

A manifest's ``subject_id`` (and ``subject``) becomes part of file names (``stacks/<id>_T2w.nii.gz``,
``transforms/<id>.tfm``, ``deformations/<subject>.h5``).  Such a name must be one plain file-name component on
every platform: :func:`name_problem` says what is wrong with one (``None`` when it is safe), :func:`inside`
joins names onto a folder and refuses any result that leaves it (the one check every writer uses), and
:func:`safe_name` turns free text (a Slicer node name) into a safe name.

Standard library only: the Slicer modules import it in Slicer's own process.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

#: letters, digits, ``.``, ``_``, ``-`` and ``+``; starts with a letter or digit; at most :data:`MAX_NAME_LENGTH`
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
MAX_NAME_LENGTH = 100
#: device names Windows reserves whatever the extension (``CON``, ``nul.txt`` …)
WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                              *(f"LPT{i}" for i in range(1, 10))})


def name_problem(name) -> str | None:
    """Why ``name`` cannot be a file-name component (one sentence), or None when it can."""
    text = str(name)
    if not text:
        return "is empty"
    if len(text) > MAX_NAME_LENGTH:
        return f"is {len(text)} characters long (at most {MAX_NAME_LENGTH})"
    if "/" in text or "\\" in text or os.path.isabs(text):
        return "is a path, not a name: it may not contain '/' or '\\'"
    if not SAFE_NAME.fullmatch(text):
        bad = sorted({c for c in text if not re.fullmatch(r"[A-Za-z0-9._+-]", c)})
        if bad:
            shown = ", ".join(repr(c) for c in bad[:5])
            return f"contains {shown}: use letters, digits, '.', '_', '-' and '+' only"
        return "must start with a letter or a digit"
    if text.endswith("."):
        return "may not end with '.' (Windows drops it)"
    if text.split(".")[0].upper() in WINDOWS_RESERVED:
        return f"is a device name Windows reserves ({text.split('.')[0].upper()})"
    return None


def require_name(name, what: str) -> str:
    """``name`` when it is a safe file-name component; ``ValueError`` naming ``what`` (e.g. ``row 3,
    column subject_id``) otherwise."""
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{what}: {str(name)!r} {problem}")
    return str(name)


def inside(folder, *parts) -> Path:
    """``folder / parts…``, refused (``ValueError``) unless it lies inside ``folder`` once ``..`` and links are
    resolved: the check every writer applies to a path built from data."""
    base = Path(os.path.realpath(folder))
    path = Path(folder).joinpath(*(str(p) for p in parts))
    resolved = Path(os.path.realpath(path))
    if resolved != base and base not in resolved.parents:
        raise ValueError(f"refusing to write {path}: it lies outside the output folder {folder}")
    return path


def safe_name(text, fallback: str) -> str:
    """Free text as a safe name: other characters become ``_``, leading/trailing ``_``/``.`` are dropped;
    ``fallback`` when nothing safe is left (or the result is still unsafe, e.g. a reserved device name)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("_.")[:MAX_NAME_LENGTH].rstrip(".")
    return name if name and name_problem(name) is None else fallback
