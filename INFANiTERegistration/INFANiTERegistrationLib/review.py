"""Review of a registered cohort in MRML: each stack under its transform over its template, by eye.

Frames: the template's RAS space is the scene's world.  The core stores ``template_to_stack`` (template RAS →
stack RAS, the resampling direction); a stack volume node shows aligned when it sits under a linear transform
whose *to parent* matrix is ``stack_to_template = inv(template_to_stack)``.  A manual correction of that transform
node is therefore read back as ``template_to_stack = inv(matrix)``, used as the start of "Refine from here", and
written by "Accept" as a fixed transform of ``infanite register --fixed-transforms``.

Long work never runs here (the GUI's process): "Refine from here" and "Accept" build the ``python -m infanite
register`` command that a background process runs (:meth:`RegistrationReview.refine_command`,
:meth:`RegistrationReview.accept_command`), and read its result back when it has ended
(:meth:`RegistrationReview.finish_refine`, :meth:`RegistrationReview.finish_accept`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from infanite.io.layout import FAILURES, TRANSFORMS, stack_paths

#: cohort-level NMI outliers: below median − this × MAD (scaled to σ) are flagged
NMI_OUTLIER_SIGMAS = 3.0
TABLE_COLUMNS = ("Stack", "GA (weeks)", "NMI", "Margin", "Confidence", "Flag", "Status")


@dataclass
class ReviewRow:
    """One stack in the review table (``nmi``/``margin``: Studholme NMI and its lead over the runner-up pose)."""

    stack_id: str
    ga_weeks: float
    nmi: float | None
    margin: float | None
    confidence: str
    flag: str = ""
    status: str = "to review"

    @property
    def order_key(self) -> tuple:
        """Worst first: failed, then flagged, then by NMI ascending."""
        return (self.status != "failed", self.flag == "", -math.inf if self.nmi is None else self.nmi)


@dataclass
class StackNodes:
    volume: object
    transform: object
    template: object
    mask: object = None


@dataclass
class _Stack:
    record: object
    template_to_stack: np.ndarray
    qc: dict = field(default_factory=dict)
    failed: str = ""


class RegistrationReview:
    """The stacks of one registration run (``search_dir`` written by ``infanite register``) for review in ``scene``.

    ``manifest`` is the cohort TSV that was registered, ``templates`` the template folder (or ``"phantom"``),
    ``options`` the :class:`infanite.registration.register.RegisterOptions` of the run (grid spacing, template mode,
    weights), which "Accept" reuses so that its files equal the command line's.
    """

    def __init__(self, scene, manifest, templates, search_dir, options=None):
        from infanite.io.cohort import read_manifest
        from infanite.registration.register import RegisterOptions, open_library
        from infanite.io.transforms import read_transforms_json, read_transforms_qc

        self.scene = scene
        self.manifest = Path(manifest)
        self.templates = templates
        self.search_dir = Path(search_dir)
        self.options = options or RegisterOptions()
        self.library = open_library(templates)
        cohort, problems = read_manifest(self.manifest)
        if problems:
            raise ValueError(f"{self.manifest}: " + "; ".join(str(p) for p in problems))
        transforms_path = self.search_dir / TRANSFORMS
        if not transforms_path.is_file():
            raise ValueError(f"{transforms_path} not found: run the registration first (infanite register "
                             f"--out {self.search_dir})")
        transforms = read_transforms_json(transforms_path)
        qc = read_transforms_qc(transforms_path)
        failures_path = self.search_dir / FAILURES
        failures = json.loads(failures_path.read_text()) if failures_path.is_file() else {}
        self._stacks: dict[str, _Stack] = {}
        for record in cohort.stacks:
            sid = record.subject_id
            if sid in transforms:
                self._stacks[sid] = _Stack(record, transforms[sid], dict(qc.get(sid, {})))
            else:
                reason = failures.get(sid, {}).get("reason", "not registered")
                self._stacks[sid] = _Stack(record, self._fallback_pose(record), {}, reason.strip().splitlines()[-1])
        self._nodes: dict[str, StackNodes] = {}
        self._transforms: dict[str, object] = {}
        self._templates: dict[float, object] = {}
        self.accepted: dict[str, np.ndarray] = {}
        self.table = None

    # -------------------------------------------------------------------------------------------- table

    @property
    def stack_ids(self) -> list[str]:
        """Stack ids, worst first (the review order)."""
        return [row.stack_id for row in self.rows()]

    def rows(self) -> list[ReviewRow]:
        """One row per stack, worst first: failed, flagged (low confidence or NMI outlier), then by NMI."""
        values = [s.qc.get("nmi") for s in self._stacks.values() if s.qc.get("nmi") is not None]
        threshold = -math.inf
        if len(values) >= 3:
            median = float(np.median(values))
            mad = 1.4826 * float(np.median(np.abs(np.asarray(values) - median)))
            threshold = median - NMI_OUTLIER_SIGMAS * max(mad, 1e-3)
        rows = []
        for sid, stack in self._stacks.items():
            nmi, margin = stack.qc.get("nmi"), stack.qc.get("margin")
            confidence = stack.qc.get("confidence", "") or ""
            flags = []
            if stack.failed:
                flags.append(f"failed: {stack.failed}")
            if confidence == "low":
                flags.append("low confidence")
            if nmi is not None and nmi < threshold:
                flags.append("low NMI")
            status = "failed" if stack.failed else "accepted" if sid in self.accepted else \
                stack.qc.get("status", "to review")
            ga = stack.record.scan_age if stack.record.scan_age is not None else stack.qc.get("template_ga", math.nan)
            rows.append(ReviewRow(sid, float(ga), nmi, margin, confidence, "; ".join(flags), status))
        return sorted(rows, key=lambda r: r.order_key)

    def update_table(self, name: str = "INFANiTE registration review"):
        """Fill (creating on first call) a ``vtkMRMLTableNode`` with :meth:`rows`, worst first; returns it."""
        import vtk

        if self.table is None or self.scene.GetNodeByID(self.table.GetID()) is None:
            self.table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        table = self.table
        was = table.StartModify()
        # column names as the header: otherwise qMRMLTableModel shows them in an editable first row, and every
        # view row is one off its table row (qMRMLTableModel::mrmlTableRowIndex); the user reviews, not edits
        table.SetUseColumnTitleAsColumnHeader(True)
        table.SetLocked(True)
        table.RemoveAllColumns()
        rows = self.rows()
        for column in TABLE_COLUMNS:
            array = vtk.vtkStringArray()
            array.SetName(column)
            table.AddColumn(array)
        for row in rows:
            values = [row.stack_id, f"{row.ga_weeks:g}", "" if row.nmi is None else f"{row.nmi:.4f}",
                      "" if row.margin is None else f"{row.margin:.4f}", row.confidence, row.flag, row.status]
            index = table.AddEmptyRow()
            for column, value in enumerate(values):
                table.SetCellText(index, column, value)
        table.EndModify(was)
        return table

    def stack_at_row(self, row: int) -> str:
        """The stack id in table row ``row`` (a view row: the table's header is its column names)."""
        if self.table is None or not 0 <= int(row) < self.table.GetNumberOfRows():
            raise ValueError(f"no stack in review table row {row}")
        return self.table.GetCellText(int(row), TABLE_COLUMNS.index("Stack"))

    # -------------------------------------------------------------------------------------------- nodes

    def _fallback_pose(self, record) -> np.ndarray:
        """Start of a stack whose registration failed: mask centroid moved onto the template's brain centre."""
        from infanite.geometry import apply_matrix
        from infanite.io.images import load_labels

        mask = load_labels(record.mask or record.seg)
        centroid = apply_matrix(mask.voxel_to_ras, np.argwhere(mask.array > 0)).mean(0)
        ga = record.scan_age if record.scan_age is not None else self.library.weeks[len(self.library.weeks) // 2]
        template = self.library.for_ga(ga, self.options.template_mode)
        centre = apply_matrix(template.mask.voxel_to_ras, np.argwhere(template.mask.array > 0)).mean(0)
        pose = np.eye(4)
        pose[:3, 3] = centroid - centre
        return pose

    def _template_ga(self, sid: str) -> float:
        stack = self._stacks[sid]
        return float(stack.qc.get("template_ga", stack.record.scan_age if stack.record.scan_age is not None
                                  else self.library.weeks[0]))

    def template_node(self, ga_weeks: float):
        """The template (T2) for ``ga_weeks`` as a volume node, made once per GA."""
        from INFANiTECommonLib.mrml import volume_node

        key = round(float(ga_weeks), 3)
        node = self._templates.get(key)
        if node is None or self.scene.GetNodeByID(node.GetID()) is None:
            template = self.library.for_ga(key, self.options.template_mode)
            node = volume_node(self.scene, template.t2w, f"template GA {key:g}")
            self._templates[key] = node
        return node

    def transform_node(self, sid: str):
        """The stack's linear transform node (``<id> to template``, to parent = stack → template), made once."""
        from INFANiTECommonLib.mrml import set_transform

        node = self._transforms.get(sid)
        if node is None or self.scene.GetNodeByID(node.GetID()) is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", f"{sid} to template")
            set_transform(node, np.linalg.inv(self._stacks[sid].template_to_stack))
            self._transforms[sid] = node
        return node

    def build_transform_nodes(self) -> list:
        """A transform node for every stack (stack volumes are loaded only when shown)."""
        return [self.transform_node(sid) for sid in self._stacks]

    def nodes(self, sid: str) -> StackNodes:
        """The stack's volume node under its transform node, and its template node (created on first use)."""
        from INFANiTECommonLib.mrml import load_volume

        if sid not in self._stacks:
            raise ValueError(f"unknown stack {sid!r}; stacks: {', '.join(self._stacks)}")
        nodes = self._nodes.get(sid)
        if nodes is None or self.scene.GetNodeByID(nodes.volume.GetID()) is None:
            stack = self._stacks[sid]
            volume = load_volume(self.scene, stack.record.t2w, f"{sid} T2w")
            transform = self.transform_node(sid)
            volume.SetAndObserveTransformNodeID(transform.GetID())
            nodes = StackNodes(volume, transform, self.template_node(self._template_ga(sid)))
            self._nodes[sid] = nodes
        return nodes

    def template_to_stack(self, sid: str) -> np.ndarray:
        """The current pose of a stack, read from its transform node when it has one (manual edits included)."""
        from INFANiTECommonLib.mrml import get_transform

        node = self._transforms.get(sid)
        if node is not None and self.scene.GetNodeByID(node.GetID()) is not None:
            return np.linalg.inv(get_transform(node))
        return self._stacks[sid].template_to_stack.copy()

    def brain_centre(self, sid: str) -> np.ndarray:
        """Centre (RAS mm, template space) of the template's brain mask for this stack's GA."""
        from infanite.geometry import apply_matrix

        template = self.library.for_ga(self._template_ga(sid), self.options.template_mode)
        return apply_matrix(template.mask.voxel_to_ras, np.argwhere(template.mask.array > 0)).mean(0)

    def show(self, sid: str, opacity: float = 0.5) -> StackNodes:
        """Template as background, the stack (under its transform) as foreground at ``opacity``, in all slice
        views, centred on the brain.  Every other stack's transform handles are turned off (only the shown stack
        can be adjusted)."""
        from .views import centre_slice_views, show_in_slice_views

        for other, transform in self._transforms.items():
            display = transform.GetDisplayNode() if other != sid else None
            if display is not None and display.GetEditorVisibility():
                self.set_adjust(other, False)
        nodes = self.nodes(sid)
        show_in_slice_views(self.scene, nodes.template, nodes.volume, opacity)
        centre_slice_views(self.scene, self.brain_centre(sid))
        return nodes

    def set_adjust(self, sid: str, enabled: bool) -> None:
        """Interaction handles on the stack's transform (rotate/translate in 2-D and 3-D; no scaling)."""
        from .views import set_transform_handles

        set_transform_handles(self.transform_node(sid), enabled)
        if enabled:
            self._stacks[sid].qc["status"] = "adjusting"

    def neighbour(self, sid: str | None, step: int) -> str:
        """The stack ``step`` places after ``sid`` in review order (wraps around; ``None``: the first)."""
        ids = self.stack_ids
        if sid not in ids:
            return ids[0]
        return ids[(ids.index(sid) + step) % len(ids)]

    # -------------------------------------------------------------------------------------------- actions

    def _apply_refined(self, sid: str, template_to_stack, nmi: float, template_ga: float) -> None:
        """A refined pose: into the stack's record, its transform node, its QC (confidence "manual") and the
        table; a stack accepted before must be accepted again."""
        from INFANiTECommonLib.mrml import set_transform

        stack = self._stacks[sid]
        stack.template_to_stack = np.asarray(template_to_stack, dtype=np.float64)
        stack.failed = ""
        stack.qc.update(nmi=float(nmi), margin=None, confidence="manual", status="refined",
                        template_ga=float(template_ga))
        set_transform(self.transform_node(sid), np.linalg.inv(stack.template_to_stack))
        self.accepted.pop(sid, None)
        if self.table is not None:
            self.update_table()

    def refine_command(self, sid: str, work_dir, python: str | None = None) -> list:
        """"Refine from here" in a background process: writes ``work_dir/<sid>/`` (the stack's manifest row and its
        current pose, read from the transform node, as ``--init-transforms``) and returns the ``python -m infanite
        register`` command that runs the fine NMI registration from that pose (no orientation search).  Call
        :meth:`finish_refine` when it has ended.  A refine of the same stack before is discarded."""
        import shutil

        from infanite.io.cohort import write_manifest
        from infanite.io.transforms import write_transforms_json

        from .inputs import registration_command

        if sid not in self._stacks:
            raise ValueError(f"unknown stack {sid!r}")
        folder = Path(work_dir) / sid
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        manifest = write_manifest([self._stacks[sid].record], folder / "input.tsv")
        start = write_transforms_json(folder / "start_transforms.json", {sid: self.template_to_stack(sid)})
        return registration_command(manifest, self.templates, folder / "out", spacing_mm=self.options.spacing_mm,
                                    jobs=1, n4=self.options.n4, init_transforms=start, python=python)

    def finish_refine(self, sid: str, work_dir) -> dict:
        """After :meth:`refine_command`'s process: apply its pose (transform node, QC, table); returns the stack's
        QC (``nmi`` …).  ``ValueError`` naming the folder when the process wrote no result (failed, cancelled)."""
        from infanite.io.transforms import read_transforms_json, read_transforms_qc

        result = Path(work_dir) / sid / "out" / TRANSFORMS
        poses = read_transforms_json(result) if result.is_file() else {}
        if sid not in poses:
            raise ValueError(f"{sid}: the refinement wrote no pose into {result.parent} (failed or cancelled)")
        qc = read_transforms_qc(result).get(sid, {})
        self._apply_refined(sid, poses[sid], qc.get("nmi", float("nan")),
                            qc.get("template_ga", self._template_ga(sid)))
        return dict(self._stacks[sid].qc)

    def prepare_accept(self, sids, out_dir) -> tuple:
        """Record ``sids`` as accepted with their current poses and write what ``infanite register
        --fixed-transforms`` reads: ``out_dir/accepted_transforms.json`` (every stack accepted so far) and
        ``out_dir/accepted_input.tsv`` (their rows of the input manifest).  A stack accepted again is written again
        (its finished-marker is removed).  Returns ``(manifest, transforms_json)``."""
        from infanite.io.cohort import write_manifest
        from infanite.io.transforms import write_transforms_json

        sids = list(sids)
        unknown = [s for s in sids if s not in self._stacks]
        if unknown:
            raise ValueError(f"unknown stack(s) {', '.join(unknown)}")
        out = Path(out_dir)
        if out.resolve() == self.search_dir.resolve():
            raise ValueError(f"accept into a folder other than the registration's own ({self.search_dir})")
        for sid in sids:
            self.accepted[sid] = self.template_to_stack(sid)
            marker = stack_paths(out, sid)["result"]
            if marker.exists():                   # accepted before with another pose: write it again
                marker.unlink()
        fixed = write_transforms_json(out / "accepted_transforms.json", self.accepted)
        records = [s.record for sid, s in self._stacks.items() if sid in self.accepted]
        return write_manifest(records, out / "accepted_input.tsv"), fixed

    def accept_command(self, sids, out_dir, python: str | None = None) -> list:
        """:meth:`prepare_accept`, then the ``python -m infanite register --fixed-transforms`` command line that
        writes them (for a background process); call :meth:`finish_accept` when it has ended."""
        from .inputs import registration_command

        manifest, fixed = self.prepare_accept(sids, out_dir)
        return registration_command(manifest, self.templates, out_dir, spacing_mm=self.options.spacing_mm,
                                    jobs=self.options.jobs, n4=self.options.n4, fixed_transforms=fixed,
                                    python=python)

    def finish_accept(self, out_dir) -> list:
        """After an accept: stacks without their finished-marker in ``out_dir`` (failed or cancelled) are no longer
        accepted; returns their ids.  Updates the table."""
        missing = [sid for sid in self.accepted if not stack_paths(out_dir, sid)["result"].is_file()]
        for sid in missing:
            self.accepted.pop(sid, None)
        if self.table is not None:
            self.update_table()
        return missing

    def remove_nodes(self) -> None:
        """Remove every node this review created (stacks, transforms, templates, table)."""
        from INFANiTECommonLib.mrml import remove_nodes

        nodes = [s.volume for s in self._nodes.values()] + list(self._transforms.values())
        remove_nodes(self.scene, nodes + list(self._templates.values()) + [self.table])
        self._nodes.clear()
        self._transforms.clear()
        self._templates.clear()
        self.table = None
