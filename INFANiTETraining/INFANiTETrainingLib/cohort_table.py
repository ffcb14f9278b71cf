"""The training cohort (a ``registered.tsv``) as a ``vtkMRMLTableNode``: one row per stack, its problems in the row.

Problems come from the core's checks (:func:`infanite.io.cohort.read_manifest`, :func:`~infanite.io.cohort.
validate_images`), plus a check that each ``Weight`` map exists.  Rows the core cannot parse are shown too, with
their error, so the user sees every stack of the file.  A problem of the whole file (missing file, missing column)
is in :attr:`CohortSummary.errors`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: table columns (``Row`` is the TSV line, header = 1)
COLUMNS = ("Row", "Subject", "Stack", "GA", "T2w", "Seg", "Weight", "Status")
OK = "ok"


@dataclass
class CohortRow:
    """One stack of the manifest: TSV ``row`` (header = 1), the fetus ``subject``, ``stack_id``, ``ga`` in weeks
    (None when unreadable), the path cells as written, and ``errors`` (``"column: message"``)."""

    row: int
    subject: str
    stack_id: str
    ga: float | None
    t2w: str
    seg: str
    weight: str
    errors: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def status(self) -> str:
        """``"ok"`` or the row's problems, each naming its column."""
        return OK if self.ok else "; ".join(self.errors)


@dataclass
class CohortSummary:
    """All rows of a manifest and the problems of the file as a whole (header, missing file, …)."""

    manifest: Path
    rows: list
    errors: list

    @property
    def ok(self) -> bool:
        """True when the cohort can be trained on: no file problem, at least one row, no row problem."""
        return not self.errors and bool(self.rows) and all(r.ok for r in self.rows)

    @property
    def n_subjects(self) -> int:
        return len({r.subject for r in self.rows})

    def labels_message(self) -> str:
        """What tissue labels the atlas will get: learnt from the stacks with a Seg, or, when none has one (a
        mask-only cohort), the templates' labels propagated by registration."""
        labelled = sum(1 for r in self.rows if r.seg)
        if not self.rows:
            return ""
        if labelled == 0:
            return ("no stack has tissue labels (Seg): the atlas's labels will be the templates', carried over by "
                    "registration when the atlas is generated")
        return f"the atlas's tissue labels are learnt from the {labelled} of {len(self.rows)} stacks with a Seg"

    def message(self) -> str:
        """One line for the GUI."""
        bad = sum(not r.ok for r in self.rows)
        text = f"{len(self.rows)} stacks of {self.n_subjects} fetuses"
        if bad:
            text += f"; {bad} with problems"
        elif self.rows:
            text += f"; {self.labels_message()}"
        if self.errors:
            text += "; " + "; ".join(self.errors)
        return text


def _raw_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(line, cells)`` of every data row, numbered as :func:`infanite.io.cohort.read_manifest` does."""
    from infanite.io.cohort import manifest_rows

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return [], []
    header, _, rows = manifest_rows(text)
    header = header or []
    return header, [(line, dict(zip(header, cells + [""] * max(0, len(header) - len(cells))))) for line, cells in rows]


def read_cohort(manifest, check_images: bool = True, ga_range=(21.0, 39.0)) -> CohortSummary:
    """Read and check ``manifest`` (``check_images``: open every image, as training will; GA range in weeks)."""
    from infanite.io.cohort import read_manifest, subject_from_id, Problem
    from infanite.io.cohort_checks import check_ages, validate_images
    from infanite.labels import default_label_table

    path = Path(os.path.abspath(manifest))
    cohort, problems = read_manifest(path)
    problems = list(problems)
    problems += validate_images(cohort, default_label_table(), ga_range) if check_images \
        else check_ages(cohort, ga_range)
    for record in cohort.stacks:
        weight = record.extra.get("Weight", "")
        if weight and not (cohort.manifest_path.parent / weight).is_file():
            problems.append(Problem(record.row, "Weight", str(cohort.manifest_path.parent / weight), "missing",
                                    "weight map file does not exist", path.name))
    _, raw = _raw_rows(path)
    by_row: dict[int, list[str]] = {}
    file_errors = []
    lines = {line for line, _ in raw}
    for problem in problems:
        text = f"{problem.column}: {problem.message}" if problem.column else problem.message
        if problem.row in lines:
            by_row.setdefault(problem.row, []).append(text)
        else:
            file_errors.append(str(problem))
    rows = []
    for line, cells in raw:
        try:
            ga = float(cells.get("scan_age", ""))
        except ValueError:
            ga = None
        sid = cells.get("subject_id", "")
        rows.append(CohortRow(line, cells.get("subject") or subject_from_id(sid), sid, ga, cells.get("T2w", ""),
                              cells.get("Seg", ""), cells.get("Weight", ""), list(dict.fromkeys(by_row.get(line, [])))))
    return CohortSummary(path, rows, list(dict.fromkeys(file_errors)))


def fill_cohort_table(node, summary: CohortSummary):
    """Replace the content of ``node`` (a ``vtkMRMLTableNode``) by ``summary``'s rows; returns the node."""
    import vtk

    was = node.StartModify()
    node.RemoveAllColumns()
    arrays = {}
    for name in COLUMNS:
        array = vtk.vtkIntArray() if name == "Row" else vtk.vtkStringArray()
        array.SetName(name)
        node.AddColumn(array)
        arrays[name] = node.GetTable().GetColumnByName(name)
    for r in summary.rows:
        ga = "" if r.ga is None else f"{r.ga:g}"
        arrays["Row"].InsertNextValue(int(r.row))
        for name, value in (("Subject", r.subject), ("Stack", r.stack_id), ("GA", ga), ("T2w", r.t2w),
                            ("Seg", r.seg), ("Weight", r.weight), ("Status", r.status)):
            arrays[name].InsertNextValue(value)
    node.SetColumnUnitLabel("GA", "weeks")
    node.SetColumnDescription("Row", "line of the manifest (header = 1)")
    node.SetColumnDescription("Status", "ok, or the row's problems naming the column")
    node.SetUseColumnTitleAsColumnHeader(True)
    node.SetAttribute("INFANiTE.Manifest", str(summary.manifest))
    node.GetTable().Modified()
    node.Modified()
    node.EndModify(was)
    return node


def cohort_table_node(scene, manifest, node=None, check_images: bool = True, name: str = "INFANiTE cohort"):
    """Read ``manifest`` into ``node`` (a new ``vtkMRMLTableNode`` named ``name`` when None); returns
    ``(node, summary)``."""
    summary = read_cohort(manifest, check_images=check_images)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    return fill_cohort_table(node, summary), summary


__all__ = ["COLUMNS", "CohortRow", "CohortSummary", "cohort_table_node", "fill_cohort_table", "read_cohort"]
