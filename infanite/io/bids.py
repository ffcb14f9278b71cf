"""A cohort manifest from a BIDS folder or a flat folder of stacks (``python -m infanite manifest``).

:func:`find_stacks` finds the T2w stacks, pairs each with its brain mask and label map, gives it a gestational age
(GA, weeks) and returns one :class:`StackRow` per usable stack plus one :class:`Skipped` per file left out, with the
reason.  :func:`manifest_text` turns the rows into a manifest TSV (:mod:`infanite.io.cohort`).

**Stacks.**  Without ``pattern`` (BIDS mode): ``sub-*/anat/*_T2w.nii[.gz]``, ``sub-*/ses-*/anat/*_T2w.nii[.gz]`` and
``*_T2w.nii[.gz]`` directly in the folder (a flat BIDS-like folder such as the MIAL sample).  With ``pattern``: the
files matching that glob relative to the folder (``**`` allowed), except mask and label-map names (below).

**Masks and label maps.**  A stack file ``<stem>.nii[.gz]`` has the *stem* (``sub-01_run-1_T2w``) and, when the
stem ends in ``_T2w``, the *entity stem* without it (``sub-01_run-1``).  For either stem, in this order:

* brain mask (``Mask`` column): ``<stem>_desc-brain_mask``, ``<stem>_desc-brainmask``, ``<stem>_mask``;
* label map (``Seg`` column): ``<stem>_dseg``;

each with ``.nii.gz`` then ``.nii``, looked for first beside the stack, then in the same relative folder under every
``derivatives/<pipeline>/`` (pipelines in name order; e.g. ``derivatives/masks/sub-01/anat/
sub-01_run-1_desc-brain_mask.nii.gz`` for ``sub-01/anat/sub-01_run-1_T2w.nii.gz``).  The first found is used; a
stack with neither a mask nor a label map is skipped.

**GA** (weeks, finite, :data:`GA_MIN_WEEKS`–:data:`GA_MAX_WEEKS`), first source that has a value:

1. ``ga`` (``--ga WEEKS``): one GA for every stack (one fetus); the tables are not read;
2. ``sub-XX/sub-XX_sessions.tsv``, row whose ``session_id`` is the stack's ``ses-`` entity;
3. ``participants.tsv`` in the folder, row whose ``participant_id`` is the stack's ``sub-XX`` (or ``XX``).

The GA column is ``ga_column`` when given, else the first of :data:`GA_COLUMNS` (``ga_weeks``,
``gestational_age``, ``ga``, ``scan_age``) in the table's header.  Empty and ``n/a`` cells mean unknown; any other
value that is not a finite number of weeks in range is refused (``ValueError`` naming file, row and column).
Stacks with no GA are skipped; when no stack has one, the folder is refused, naming the stacks and what was looked
for.

**Names.**  ``subject`` (one fetus at one scan) is ``sub-<label>`` plus ``_ses-<label>`` when the stack has a
session; a stack without a ``sub-`` entity belongs to its top-level folder under the root (pattern mode), or to the
root folder itself.  ``subject_id`` is the entity stem (``sub-01_run-1``), prefixed with ``<subject>_`` when it does
not start with the ``sub-`` entity or folder name, made a safe file name (:func:`infanite.io.paths.safe_name`) and
unique (``_2``, ``_3``…).

**Slice thickness** (mm) is the ``SliceThickness`` of the stack's JSON sidecar ``<stem>.json`` when present and
positive, else left empty (filled from the image header later).

**Skipped** files (each with its reason): a stack with no mask or label map, or with no GA; a mask or label map
no stack uses (no matching stack, or another one came first); an unreadable ``participants.tsv`` or sessions table
or one without its key column; an unreadable JSON sidecar (the stack is kept, thickness left empty).

Standard library only.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from infanite.io.paths import MAX_NAME_LENGTH, safe_name

#: accepted gestational ages, weeks
GA_MIN_WEEKS = 15.0
GA_MAX_WEEKS = 45.0
#: GA columns of ``participants.tsv`` / ``sub-XX_sessions.tsv``, tried in this order
GA_COLUMNS = ("ga_weeks", "gestational_age", "ga", "scan_age")
#: cells meaning "unknown" in a BIDS table
MISSING_CELLS = ("", "n/a")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
#: brain-mask suffixes after a stem, in the order they are tried
MASK_SUFFIXES = ("_desc-brain_mask", "_desc-brainmask", "_mask")
#: label-map suffixes after a stem
SEG_SUFFIXES = ("_dseg",)
#: the stack globs of BIDS mode, relative to the root
BIDS_STACK_GLOBS = tuple(f"{folder}*_T2w{ext}" for folder in ("sub-*/anat/", "sub-*/ses-*/anat/", "")
                         for ext in NIFTI_EXTENSIONS)
#: the manifest columns :func:`manifest_text` writes, in order
MANIFEST_COLUMNS = ("subject_id", "subject", "scan_age", "T2w", "Mask", "Seg", "slice_thickness_mm")

_ENTITY = re.compile(r"(?:^|_)(sub|ses)-([A-Za-z0-9]+)(?=_|$)")
_LABEL_FILE = re.compile(r"(?:%s)(?:\.nii\.gz|\.nii)$" % "|".join(re.escape(s) for s in MASK_SUFFIXES + SEG_SUFFIXES))


@dataclass(frozen=True)
class StackRow:
    """One stack of the manifest: ``scan_age`` in weeks, ``t2w``/``mask``/``seg`` absolute paths (``mask`` or
    ``seg`` None when absent, never both), ``slice_thickness_mm`` in mm (None: from the header later) and
    ``ga_source`` saying where the GA came from (``--ga``, or file, row and column)."""

    subject_id: str
    subject: str
    scan_age: float
    t2w: Path
    mask: Path | None
    seg: Path | None
    slice_thickness_mm: float | None
    ga_source: str


@dataclass(frozen=True)
class Skipped:
    """A file left out of the manifest (or read only in part) and why (one sentence)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class _GaTable:
    """A BIDS table's GA column: ``weeks`` maps the key (``participant_id`` / ``session_id``) to (GA in weeks or
    None for unknown, 1-based line); ``column`` None when the header has none of the columns looked for."""

    path: Path
    column: str | None
    header: tuple[str, ...]
    weeks: dict


@dataclass
class _Stack:
    """A T2w file found, before pairing: ``subject``, the ``participant`` key (``sub-XX``, or the subject) and the
    ``session`` label (``ses-YY``, or None)."""

    t2w: Path
    stem: str
    entity_stem: str
    subject: str
    participant: str
    session: str | None
    sub_label: str | None


def _split_nifti(name: str) -> tuple[str, str] | None:
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext) and len(name) > len(ext):
            return name[:-len(ext)], ext
    return None


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.as_posix())]


def _entities(text: str) -> dict[str, str]:
    return {key: value for key, value in _ENTITY.findall(text)}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _shorten(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _find_t2w_files(root: Path, pattern: str | None) -> list[Path]:
    """The stack files (absolute), sorted naturally; in pattern mode mask and label-map names are left out."""
    if pattern is None:
        found = {p for glob in BIDS_STACK_GLOBS for p in root.glob(glob) if p.is_file()}
    else:
        if not pattern.strip() or os.path.isabs(pattern) or ".." in Path(pattern).parts:
            raise ValueError(f"--pattern {pattern!r} must be a non-empty glob relative to the folder {root} "
                             f"(no '..'), e.g. '*.nii.gz'")
        found = {p for p in root.glob(pattern) if p.is_file() and _split_nifti(p.name)
                 and not _LABEL_FILE.search(p.name) and "derivatives" not in p.relative_to(root).parts[:1]}
    return sorted(found, key=_natural_key)


def _describe_stack(root: Path, t2w: Path) -> _Stack:
    stem = _split_nifti(t2w.name)[0]
    entity_stem = stem[:-len("_T2w")] if stem.endswith("_T2w") and len(stem) > 4 else stem
    relative = t2w.relative_to(root)
    from_folders = _entities("_".join(relative.parts[:-1]))
    from_name = _entities(stem)
    sub_label = from_folders.get("sub") or from_name.get("sub")
    ses_label = from_folders.get("ses") or from_name.get("ses")
    if sub_label:
        participant = f"sub-{sub_label}"
    elif len(relative.parts) > 1:
        participant = safe_name(relative.parts[0], "subject")
    else:
        participant = safe_name(root.name, "subject")
    session = f"ses-{ses_label}" if ses_label else None
    subject = safe_name(participant + (f"_{session}" if session else ""), "subject")
    return _Stack(t2w, stem, entity_stem, subject, participant, session, sub_label)


def _label_candidates(root: Path, stack: _Stack, suffixes: tuple[str, ...]) -> list[Path]:
    """Every name looked for (existing or not), in order: beside the stack, then under each derivatives pipeline."""
    relative_folder = stack.t2w.parent.relative_to(root)
    folders = [stack.t2w.parent]
    derivatives = root / "derivatives"
    if derivatives.is_dir():
        folders += [pipeline / relative_folder for pipeline in sorted(derivatives.iterdir()) if pipeline.is_dir()]
    stems = list(dict.fromkeys((stack.stem, stack.entity_stem)))
    return [folder / f"{stem}{suffix}{ext}" for folder in folders for stem in stems for suffix in suffixes
            for ext in NIFTI_EXTENSIONS]


def _looked_for(root: Path, stack: _Stack, suffixes: tuple[str, ...]) -> str:
    stems = list(dict.fromkeys((stack.stem, stack.entity_stem)))
    names = ", ".join(f"{stem}{suffix}.nii[.gz]" for stem in stems for suffix in suffixes)
    relative_folder = stack.t2w.parent.relative_to(root).as_posix()
    return f"{names} beside it and in derivatives/*/{'' if relative_folder == '.' else relative_folder + '/'}"


def _label_files(root: Path, stacks: list[_Stack]) -> list[Path]:
    """Mask and label-map files where stacks and their derivatives live (to report those no stack uses)."""
    folders = {root} | {stack.t2w.parent for stack in stacks}
    folders |= {p for glob in ("sub-*/anat", "sub-*/ses-*/anat") for p in root.glob(glob) if p.is_dir()}
    files = {p for folder in folders for p in folder.iterdir() if p.is_file() and _LABEL_FILE.search(p.name)}
    derivatives = root / "derivatives"
    if derivatives.is_dir():
        files |= {p for p in derivatives.rglob("*") if p.is_file() and _LABEL_FILE.search(p.name)}
    return sorted(files, key=_natural_key)


def _unused_label_reason(path: Path) -> str:
    stem = _LABEL_FILE.sub("", path.name)
    kind = "label map" if _split_nifti(path.name)[0].endswith(SEG_SUFFIXES) else "brain mask"
    expected = stem if stem.endswith("_T2w") else f"{stem}_T2w"
    return (f"{kind} with no matching T2w stack (expected {expected}.nii[.gz] beside it, or in the same folder "
            f"outside derivatives/)")


def _parse_ga(text: str, where: str) -> float | None:
    """GA in weeks from a cell (None for empty / ``n/a``); ``ValueError`` naming ``where`` otherwise."""
    if text.strip().lower() in MISSING_CELLS:
        return None
    try:
        weeks = float(text)
    except ValueError:
        raise ValueError(f"{where}: GA {text!r} is not a number of weeks (use n/a for unknown)") from None
    if not math.isfinite(weeks) or not GA_MIN_WEEKS <= weeks <= GA_MAX_WEEKS:
        hint = " (days? give weeks)" if math.isfinite(weeks) and weeks > 100 else ""
        raise ValueError(f"{where}: GA {text!r} must be a finite number of weeks in "
                         f"{GA_MIN_WEEKS:g}–{GA_MAX_WEEKS:g}{hint}")
    return weeks


def _read_ga_table(path: Path, key_column: str, ga_column: str | None,
                   skipped: list[Skipped]) -> _GaTable | None:
    """The GA column of a BIDS table, None when it is absent or unreadable (the latter reported in ``skipped``)."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        skipped.append(Skipped(path, f"unreadable, no GA taken from it ({exc})"))
        return None
    rows = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    for cells in reader:
        if any(cell.strip() for cell in cells):
            rows.append((reader.line_num, [cell.strip() for cell in cells]))
    if not rows or key_column not in rows[0][1]:
        header = ", ".join(rows[0][1]) if rows else "empty file"
        skipped.append(Skipped(path, f"no {key_column} column (header: {header}), no GA taken from it; "
                                     f"BIDS tables are tab-separated"))
        return None
    header = tuple(rows[0][1])
    wanted = (ga_column,) if ga_column else GA_COLUMNS
    column = next((name for name in wanted if name in header), None)
    if column is None:
        return _GaTable(path, None, header, {})
    key_index, ga_index = header.index(key_column), header.index(column)
    weeks: dict = {}
    for line, cells in rows[1:]:
        cells = cells + [""] * (len(header) - len(cells))
        key = cells[key_index]
        where = f"{path}, row {line}, column {column}"
        value = _parse_ga(cells[ga_index], where)
        if key in weeks:
            raise ValueError(f"{path}, row {line}, column {key_column}: {key!r} also on row {weeks[key][1]}")
        weeks[key] = (value, line)
    return _GaTable(path, column, header, weeks)


def _table_lookup(table: _GaTable | None, path: Path, keys: tuple[str, ...]) -> tuple[float | None, str]:
    """(GA in weeks, where it came from) or (None, why not) for the first of ``keys`` in the table at ``path``."""
    if table is None:
        return None, f"{path.name} {'not usable' if path.is_file() else 'absent'}"
    if table.column is None:
        return None, f"{path.name} has no GA column"
    for key in keys:
        if key in table.weeks:
            value, line = table.weeks[key]
            if value is None:
                return None, f"{path.name} row {line} column {table.column} is n/a"
            return value, f"{path}, row {line}, column {table.column}"
    return None, f"{path.name} has no row {keys[0]}"


def _unique_id(wanted: str, used: set[str]) -> str:
    candidate, number = wanted, 1
    while candidate in used:
        number += 1
        tail = f"_{number}"
        candidate = wanted[:MAX_NAME_LENGTH - len(tail)].rstrip("._") + tail
    used.add(candidate)
    return candidate


def _slice_thickness(stack: _Stack, skipped: list[Skipped]) -> float | None:
    sidecar = stack.t2w.parent / f"{stack.stem}.json"
    if not sidecar.is_file():
        return None
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8-sig")).get("SliceThickness")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        skipped.append(Skipped(sidecar, f"unreadable JSON sidecar ({exc}); slice_thickness_mm left empty"))
        return None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        skipped.append(Skipped(sidecar, f"SliceThickness {value!r} is not a positive number of mm; "
                                        f"slice_thickness_mm left empty"))
        return None
    return float(value)


def _table_state(path: Path, table: _GaTable | None, skipped: list[Skipped]) -> str:
    """``path (what it holds)`` for the refusal message."""
    if table is not None:
        return f"{path} ({f'column {table.column}' if table.column else 'header: ' + ', '.join(table.header)})"
    reason = next((entry.reason for entry in skipped if entry.path == path), "absent")
    return f"{path} ({reason})"


def _ga_sources_text(root: Path, participants: _GaTable | None, sessions: dict, ga_column: str | None,
                     skipped: list[Skipped]) -> str:
    columns = ga_column or ", ".join(GA_COLUMNS)
    parts = [_table_state(root / "participants.tsv", participants, skipped)]
    parts += [_table_state(path, table, skipped) for path, table in list(sessions.items())[:3]]
    if len(sessions) > 3:
        parts.append(f"{len(sessions) - 3} more sessions tables")
    if not sessions:
        parts.append("sub-XX/sub-XX_sessions.tsv (none: no stack has a ses- entity)")
    return (f"looked for a GA column ({columns}) in {'; '.join(parts)}; give --ga WEEKS (one GA in weeks for every "
            f"stack) or add a ga_weeks column to participants.tsv (matched on participant_id) or to "
            f"sub-XX/sub-XX_sessions.tsv (matched on session_id)")


def find_stacks(root, pattern: str | None = None, ga: float | None = None,
                ga_column: str | None = None) -> tuple[list[StackRow], list[Skipped]]:
    """The stacks of the folder ``root`` with mask/label map and GA in weeks, and the files skipped with why.

    ``pattern`` is a glob relative to ``root`` for the stacks of a folder that is not BIDS (see the module
    docstring); ``ga`` one GA in weeks for every stack; ``ga_column`` the GA column of the BIDS tables.  Raises
    ``ValueError`` naming what was looked for when the folder has no stack, no stack with a mask or label map, or
    no stack with a GA, and naming file, row and column for a GA that is not a finite number in range.
    """
    root = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not root.is_dir():
        raise ValueError(f"folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    if ga is not None:
        ga = _parse_ga(str(ga), "--ga")
    if ga_column is not None and not ga_column.strip():
        raise ValueError("--ga-column is empty: give the name of the GA column")
    files = _find_t2w_files(root, pattern)
    if not files:
        if pattern is None:
            looked = ", ".join(BIDS_STACK_GLOBS[::2]).replace(".nii.gz", ".nii[.gz]")
            raise ValueError(f"no T2w stacks in {root}: looked for {looked}; for a folder that is not BIDS give "
                             f"--pattern GLOB (e.g. '*.nii.gz')")
        raise ValueError(f"no stack in {root} matches --pattern {pattern!r} (NIfTI .nii/.nii.gz files; mask and "
                         f"label-map names {', '.join(MASK_SUFFIXES + SEG_SUFFIXES)} and derivatives/ excluded)")
    stacks = [_describe_stack(root, path) for path in files]
    skipped: list[Skipped] = []

    participants, sessions = None, {}
    if ga is None:
        participants = _read_ga_table(root / "participants.tsv", "participant_id", ga_column, skipped)
        for stack in stacks:
            if stack.sub_label and stack.session:
                path = root / stack.participant / f"{stack.participant}_sessions.tsv"
                if path not in sessions:
                    sessions[path] = _read_ga_table(path, "session_id", ga_column, skipped)

    used_labels: set[Path] = set()
    rows: list[StackRow] = []
    unlabelled, undated = [], []
    used_ids: set[str] = set()
    for stack in stacks:
        masks = [p for p in _label_candidates(root, stack, MASK_SUFFIXES) if p.is_file()]
        segs = [p for p in _label_candidates(root, stack, SEG_SUFFIXES) if p.is_file()]
        for chosen, others, kind in ((masks[:1], masks[1:], "brain mask"), (segs[:1], segs[1:], "label map")):
            used_labels.update(chosen + others)
            skipped += [Skipped(p, f"another {kind} of {stack.t2w.name} comes first: {chosen[0]}") for p in others]
        if not masks and not segs:
            unlabelled.append(stack)
            skipped.append(Skipped(stack.t2w, f"no brain mask found (looked for "
                                              f"{_looked_for(root, stack, MASK_SUFFIXES)}) and no label map "
                                              f"({_looked_for(root, stack, SEG_SUFFIXES)})"))
            continue
        if ga is not None:
            weeks, source = ga, "--ga"
        else:
            weeks, why_not = None, []
            if stack.session and stack.sub_label:
                path = root / stack.participant / f"{stack.participant}_sessions.tsv"
                weeks, source = _table_lookup(sessions.get(path), path, (stack.session,))
                why_not.append(source)
            if weeks is None:
                keys = (stack.participant,) + ((stack.sub_label,) if stack.sub_label else ())
                weeks, source = _table_lookup(participants, root / "participants.tsv", keys)
                why_not.append(source)
            if weeks is None:
                source = "; ".join(why_not)
        if weeks is None:
            undated.append(stack)
            skipped.append(Skipped(stack.t2w, f"no gestational age ({source})"))
            continue
        prefix = "" if stack.entity_stem.startswith(stack.participant) else f"{stack.subject}_"
        subject_id = _unique_id(safe_name(prefix + stack.entity_stem, stack.subject), used_ids)
        rows.append(StackRow(subject_id, stack.subject, weeks, stack.t2w, masks[0] if masks else None,
                             segs[0] if segs else None, _slice_thickness(stack, skipped), source))

    skipped += [Skipped(p, _unused_label_reason(p)) for p in _label_files(root, stacks) if p not in used_labels]
    if not rows and unlabelled and not undated:
        names = [stack.t2w.name for stack in unlabelled]
        raise ValueError(f"none of the {_plural(len(names), 'T2w stack')} in {root} has a brain mask or a label "
                         f"map ({_shorten(names)}): looked for {_looked_for(root, unlabelled[0], MASK_SUFFIXES)} "
                         f"and {_looked_for(root, unlabelled[0], SEG_SUFFIXES)}")
    if not rows:
        names = [stack.t2w.name for stack in undated]
        raise ValueError(f"no gestational age for {_plural(len(names), 'stack')} ({_shorten(names)}): "
                         f"{_ga_sources_text(root, participants, sessions, ga_column, skipped)}")
    return rows, skipped


def manifest_text(rows: list[StackRow], base) -> str:
    """The manifest TSV of ``rows`` (:data:`MANIFEST_COLUMNS`): paths inside the folder ``base`` relative to it,
    others absolute; GA in weeks, slice thickness in mm, empty cells for an absent Mask, Seg or thickness."""
    base = Path(os.path.abspath(base))

    def cell(path: Path | None) -> str:
        if path is None:
            return ""
        absolute = Path(os.path.abspath(path))
        try:
            return absolute.relative_to(base).as_posix()
        except ValueError:
            return str(absolute)

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row in rows:
        writer.writerow([row.subject_id, row.subject, repr(float(row.scan_age)), cell(row.t2w), cell(row.mask),
                         cell(row.seg), "" if row.slice_thickness_mm is None else repr(row.slice_thickness_mm)])
    return buffer.getvalue()
