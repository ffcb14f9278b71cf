"""Cohort manifests: one TSV per cohort, one row per thick-slice stack.

Columns (tab separated, one header row; paths relative to the TSV's folder, or absolute):

* ``subject_id`` (required, unique): the reference form ``GA_SUBJECT_STACK`` (e.g. ``24_0001_602``) or any
  non-empty string;
* ``scan_age`` (required): gestational age at the scan, in weeks;
* ``T2w`` (required): the stack;
* ``Seg`` and ``Mask``: its tissue label map and its brain mask, on the same voxel grid; each row needs at least one
  of them (a header needs at least one of the two columns).  A mask-only stack (``T2w`` + ``Mask``, what clinical
  pipelines have) teaches the intensity; a stack with a ``Seg`` also teaches the labels.  An empty ``Mask`` means
  ``Seg > 0``;
* ``subject`` (optional): groups the stacks of one fetus; empty means the middle part of a reference-style id
  (``24_0001_602`` → ``0001``), else the id itself;
* ``slice_thickness_mm`` (optional): empty means the largest voxel size of the T2w image, in mm.

Other columns are kept and written back.  The reference code's ``configs/fetal.tsv`` (rows selected by
``configs/subject_ids.yaml``) is read as it is: when the TSV's folder is named ``configs``, relative paths are
resolved against its parent, the working directory of the reference code.

Checks never stop at the first problem: every problem of every row becomes a :class:`Problem` naming row, column and
file, and :func:`~infanite.io.cohort_checks.load_cohort` raises one :class:`ManifestError` listing them all.  Nothing is
written except by :meth:`Cohort.write` and :func:`write_manifest`.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infanite.io.atomic import atomic_write_text
from infanite.io.paths import name_problem

REQUIRED_COLUMNS = ("subject_id", "scan_age", "T2w")
#: Registration also takes stacks without a known GA (empty ``scan_age``).
REQUIRED_COLUMNS_FOR_REGISTRATION = ("subject_id", "T2w")
#: a header needs at least one of these; a row at least one of them filled in
BRAIN_COLUMNS = ("Seg", "Mask")
OPTIONAL_COLUMNS = ("Seg", "Mask", "subject", "slice_thickness_mm")
#: Key of the reference's ``subject_ids.yaml`` used when the file has several and none is named.
DEFAULT_DATASET_NAME = "fetal_atlas"
_REFERENCE_ID = re.compile(r"^\d+(?:\.\d+)?_([^_\s]+)_[^_\s]+$")
#: Largest distance (label units) of a label-map value from an integer (as in ``imageio.load_labels``).


@dataclass(frozen=True)
class Problem:
    """One problem in a manifest or its images.

    ``row`` is the 1-based line of the TSV (header = 1) or None, ``column`` the manifest column, ``file`` the
    image or YAML file concerned (absolute), ``kind`` a short machine-readable code (``missing_column``,
    ``bad_value``, ``duplicate_id``, ``missing``, ``unreadable``, ``corrupt_gzip``, ``not_3d``, ``nan_inf``,
    ``grid_mismatch``, ``empty_mask``, ``unknown_labels``, ``ga_out_of_range``, ``not_labels``, ``unknown_id``,
    ``empty_manifest``, ``singular_affine``, ``not_tab_separated``) and ``manifest`` the manifest's file name,
    which ``str()`` puts first.
    """

    row: int | None
    column: str | None
    file: str | None
    kind: str
    message: str
    manifest: str | None = None

    def __str__(self) -> str:
        where = ", ".join(part for part in (self.row and f"row {self.row}", self.column and f"column {self.column}")
                          if part)
        head = " ".join(part for part in (self.manifest, where) if part)
        if self.file:
            head = f"{head} ({self.file})" if head else self.file
        return f"{head}: {self.message}" if head else self.message


class ManifestError(ValueError):
    """A manifest that cannot be used; ``problems`` lists every problem found, ``str()`` one per line."""

    def __init__(self, manifest_path, problems: list[Problem]):
        self.manifest_path = Path(manifest_path)
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"{self.manifest_path}: {count} problem{'' if count == 1 else 's'}"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


def subject_from_id(subject_id: str) -> str:
    """The fetus a stack belongs to: ``0001`` for a reference-style id ``24_0001_602``, else the id itself."""
    match = _REFERENCE_ID.match(subject_id)
    return match.group(1) if match else subject_id


@dataclass
class StackRecord:
    """One stack of a cohort.

    ``row`` is the 1-based TSV line (header = 1), ``scan_age`` the gestational age in weeks, ``t2w``/``seg``/
    ``mask`` the image paths (absolute when read from a manifest; ``mask`` None means ``Seg > 0``), ``subject``
    the fetus (empty → :func:`subject_from_id`), ``slice_thickness_mm`` the slice thickness in mm (None until
    filled from the T2w header by :func:`validate_images`) and ``extra`` the other manifest columns (text).
    """

    row: int
    subject_id: str
    scan_age: float | None
    t2w: Path
    seg: Path | None
    mask: Path | None = None
    subject: str = ""
    slice_thickness_mm: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.t2w = Path(self.t2w)
        self.seg = None if self.seg in (None, "") else Path(self.seg)
        self.mask = None if self.mask in (None, "") else Path(self.mask)
        if not self.subject:
            self.subject = subject_from_id(self.subject_id)


@dataclass
class Cohort:
    """The stacks of one manifest (``manifest_path`` absolute), in manifest order."""

    manifest_path: Path
    stacks: list[StackRecord]

    def subjects(self) -> dict[str, list[StackRecord]]:
        """Stacks grouped by fetus (``StackRecord.subject``), in manifest order."""
        groups: dict[str, list[StackRecord]] = {}
        for record in self.stacks:
            groups.setdefault(record.subject, []).append(record)
        return groups

    def write(self, path) -> Path:
        """Write the manifest with every column filled in (see :func:`write_manifest`)."""
        return write_manifest(self.stacks, path)


def manifest_base_dir(path) -> Path:
    """The folder relative paths of the manifest at ``path`` refer to: its own folder, or the parent of a
    ``configs`` folder (the working directory of the reference code)."""
    folder = Path(os.path.abspath(path)).parent
    return folder.parent if folder.name == "configs" else folder


def _path_cell(path: Path, base: Path) -> str:
    absolute = Path(os.path.abspath(path))
    return absolute.relative_to(base).as_posix() if absolute.is_relative_to(base) else str(absolute)


def write_manifest(stacks: list[StackRecord], path) -> Path:
    """Atomically write ``stacks`` as a manifest TSV with all columns, then the extra columns.

    Paths inside the manifest's base folder (see :func:`manifest_base_dir`) are written relative to it, others
    absolute; a None GA, seg, mask or thickness is written as an empty cell.
    """
    path = Path(os.path.abspath(path))
    base = manifest_base_dir(path)
    extras = list(dict.fromkeys(key for record in stacks for key in record.extra))
    clashes = set(extras) & set(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    if clashes:
        raise ValueError(f"extra columns {sorted(clashes)} clash with manifest columns")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *extras])
    for record in stacks:
        writer.writerow([
            record.subject_id, "" if record.scan_age is None else repr(float(record.scan_age)),
            _path_cell(record.t2w, base), "" if record.seg is None else _path_cell(record.seg, base),
            "" if record.mask is None else _path_cell(record.mask, base),
            record.subject, "" if record.slice_thickness_mm is None else repr(float(record.slice_thickness_mm)),
            *(str(record.extra.get(key, "")) for key in extras)])
    return atomic_write_text(path, buffer.getvalue())


def _finite_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_subject_ids(yaml_path: Path, dataset_name: str | None, tsv_ids: set[str],
                      manifest: str) -> tuple[set[str] | None, list[Problem]]:
    """Ids selected by a reference ``subject_ids.yaml`` (None: every row) and the problems of the file."""

    def problem(kind: str, message: str) -> Problem:
        return Problem(None, "subject_id", str(yaml_path), kind, message, manifest)

    if not yaml_path.is_file():
        return None, [problem("missing", "subject-ids file does not exist")]
    try:
        doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return None, [problem("unreadable", f"not a readable YAML file ({exc})")]
    if doc is None:
        return None, []
    if not isinstance(doc, dict):
        return None, [problem("bad_value", "expected {<dataset_name>: {subject_ids: {train: [ids...]}}}")]
    name = dataset_name or (next(iter(doc)) if len(doc) == 1 else DEFAULT_DATASET_NAME)
    if name not in doc:
        return None, [problem("bad_value", f"no dataset {name!r} (keys: {', '.join(map(str, doc))})")]
    listed, trail = doc[name], str(name)
    for key in ("subject_ids", "train"):
        if listed is None:
            break
        if not isinstance(listed, dict):
            return None, [problem("bad_value", f"{trail} must be a mapping with the key {key!r}")]
        listed, trail = listed.get(key), f"{trail}.{key}"
    if not listed:
        return None, []
    if not isinstance(listed, list):
        return None, [problem("bad_value", f"{trail} must be a list of subject ids")]
    wanted, problems = set(), []
    for entry in listed:
        if str(entry) in tsv_ids:
            wanted.add(str(entry))
        elif isinstance(entry, str):
            problems.append(problem("unknown_id", f"id {entry!r} listed in {trail} is not in the TSV"))
        else:
            guesses = sorted(i for i in tsv_ids if i.replace("_", "") == str(entry))
            hint = f"; did you mean {guesses[0]!r}?" if guesses else ""
            problems.append(problem("bad_value", f"id {entry!r} in {trail} is not text (YAML reads an unquoted "
                                                 f"24_0001_602 as the number 240001602): quote the ids{hint}"))
    return wanted, problems


def _name_problems(cells: dict[str, str]) -> list[tuple[str, str]]:
    """(column, message) for a ``subject_id`` or ``subject`` (given, or taken from a reference-style id) that is not
    a safe file-name component (:func:`infanite.io.paths.name_problem`): both name output files."""
    out = []
    subject_id, subject = cells.get("subject_id"), cells.get("subject", "")
    if subject_id and name_problem(subject_id):
        out.append(("subject_id", f"subject_id {subject_id!r} {name_problem(subject_id)} (it names the stack's "
                                  f"output files)"))
    elif subject and name_problem(subject):
        out.append(("subject", f"subject {subject!r} {name_problem(subject)} (it names the fetus's output files)"))
    elif subject_id and not subject and name_problem(subject_from_id(subject_id)):
        derived = subject_from_id(subject_id)
        out.append(("subject_id", f"the fetus taken from subject_id {subject_id!r}, {derived!r}, "
                                  f"{name_problem(derived)}; give a 'subject' column"))
    return out


def _parse_row(line: int, cells: dict[str, str], base: Path, manifest: str,
               registration_input: bool = False) -> tuple[StackRecord | None, list[Problem]]:
    """A record from one row's cells (None when a value is unusable) and the row's problems.

    With ``registration_input`` an empty ``scan_age`` (GA unknown) and an empty ``Seg`` (when ``Mask`` is given)
    are allowed.
    """
    problems = []

    def bad(column: str, message: str) -> None:
        problems.append(Problem(line, column, None, "bad_value", message, manifest))

    def resolve(column: str) -> Path | None:
        text = cells.get(column, "")
        return Path(os.path.abspath(base / Path(text).expanduser())) if text else None

    if cells.get("subject_id") == "":
        bad("subject_id", "empty subject_id")
    else:
        for column, message in _name_problems(cells):
            bad(column, message)
    scan_age = _finite_number(cells.get("scan_age", ""))
    if "scan_age" in cells and scan_age is None and not (registration_input and cells["scan_age"] == ""):
        bad("scan_age", f"scan_age must be a finite number of weeks, got {cells['scan_age']!r}")
    if cells.get("T2w") == "":
        bad("T2w", "empty T2w path")
    if not cells.get("Seg") and not cells.get("Mask") and any(c in cells for c in BRAIN_COLUMNS):
        bad("Seg" if "Seg" in cells else "Mask", "no Seg and no Mask: a stack needs its brain mask (Mask) or its "
                                                 "tissue labels (Seg), on the T2w's grid")
    thickness = None
    if cells.get("slice_thickness_mm"):
        thickness = _finite_number(cells["slice_thickness_mm"])
        if thickness is None or thickness <= 0:
            bad("slice_thickness_mm", f"slice_thickness_mm must be a positive number of mm, "
                                      f"got {cells['slice_thickness_mm']!r}")
    required = REQUIRED_COLUMNS_FOR_REGISTRATION if registration_input else REQUIRED_COLUMNS
    if problems or any(column not in cells for column in required):
        return None, problems
    extra = {key: value for key, value in cells.items() if key not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    record = StackRecord(line, cells["subject_id"], scan_age, resolve("T2w"), resolve("Seg"), resolve("Mask"),
                         cells.get("subject", ""), thickness, extra)
    return record, problems


def manifest_rows(text: str) -> tuple[list[str] | None, int, list[tuple[int, list[str]]]]:
    """The header, its 1-based line and the ``(line, cells)`` of every data row of a manifest's text (cells
    stripped, blank lines skipped; ``line`` is where the row starts, quoted multi-line cells included)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    header: list[str] | None = None
    header_line = 1
    rows: list[tuple[int, list[str]]] = []
    last_line = 0
    for cells in reader:
        line, last_line = last_line + 1, reader.line_num
        cells = [cell.strip() for cell in cells]
        if not any(cells):
            continue
        if header is None:
            header, header_line = cells, line
        else:
            rows.append((line, cells))
    return header, header_line, rows


def read_manifest(path, subject_ids_yaml=None, dataset_name: str | None = None,
                  registration_input: bool = False) -> tuple[Cohort, list[Problem]]:
    """Parse a manifest TSV (no image is opened) into a :class:`Cohort` and the list of table problems.

    With ``subject_ids_yaml`` (the reference's ``{<dataset_name>: {subject_ids: {train: [ids...]}}}``;
    ``dataset_name`` defaults to the file's only key, else ``fetal_atlas``) only the listed ids are kept; an
    empty or absent list keeps every row.  Rows with an unusable value are reported and left out of the cohort.
    Accepts UTF-8 with or without BOM and Windows line endings.
    """
    path = Path(os.path.abspath(path))
    name = path.name
    base = manifest_base_dir(path)
    if not path.is_file():
        return Cohort(path, []), [Problem(None, None, str(path), "missing", "manifest file does not exist", name)]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return Cohort(path, []), [Problem(None, None, str(path), "unreadable",
                                          f"cannot read the manifest as UTF-8 text ({exc})", name)]
    header, header_line, rows = manifest_rows(text)
    if header is None:
        return Cohort(path, []), [Problem(None, None, None, "empty_manifest", "file is empty (no header row)", name)]

    if len(header) == 1 and "," in header[0]:
        return Cohort(path, []), [Problem(header_line, None, None, "not_tab_separated",
                                          "the manifest looks comma-separated (its header has commas and no tabs); "
                                          "INFANiTE manifests are tab-separated (.tsv): save it with tabs", name)]
    problems = [Problem(header_line, column, None, "bad_value", "column appears more than once in the header", name)
                for column in dict.fromkeys(c for c in header if header.count(c) > 1)]
    required = REQUIRED_COLUMNS_FOR_REGISTRATION if registration_input else REQUIRED_COLUMNS
    problems += [Problem(header_line, column, None, "missing_column",
                         f"required column is missing (header: {', '.join(header)})", name)
                 for column in required if column not in header]
    if not any(column in header for column in BRAIN_COLUMNS):
        problems.append(Problem(header_line, "Mask", None, "missing_column",
                                f"the header needs a Mask (brain mask) or a Seg (tissue labels) column "
                                f"(header: {', '.join(header)})", name))
    table = []
    for line, cells in rows:
        if len(cells) > len(header):
            problems.append(Problem(line, None, None, "bad_value",
                                    f"row has {len(cells)} cells but the header has {len(header)} columns", name))
            continue
        table.append((line, dict(zip(header, cells + [""] * (len(header) - len(cells))))))

    wanted = None
    if subject_ids_yaml is not None:
        wanted, yaml_problems = _read_subject_ids(Path(os.path.abspath(subject_ids_yaml)), dataset_name,
                                                  {cells.get("subject_id", "") for _, cells in table}, name)
        problems += yaml_problems
    selected = [(line, cells) for line, cells in table if wanted is None or cells.get("subject_id") in wanted]
    if not selected:
        if not rows:
            why = "no data rows"
        elif wanted is not None:
            why = f"none of the {len(rows)} data rows is listed in {Path(subject_ids_yaml).name}"
        else:
            why = "no usable data rows"
        problems.append(Problem(None, None, None, "empty_manifest", why, name))

    stacks, first_line = [], {}
    for line, cells in selected:
        record, row_problems = _parse_row(line, cells, base, name, registration_input)
        problems += row_problems
        subject_id = cells.get("subject_id")
        if subject_id and subject_id in first_line:
            problems.append(Problem(line, "subject_id", None, "duplicate_id",
                                    f"subject_id {subject_id!r} is used on rows {first_line[subject_id]} and {line}",
                                    name))
        elif subject_id:
            first_line[subject_id] = line
        if record is not None:
            stacks.append(record)
    return Cohort(path, stacks), problems
