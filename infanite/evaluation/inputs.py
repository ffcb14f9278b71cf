"""What an evaluation reads, checked before any work: the atlas folder, the reference (an atlas folder or a
template folder) or the registered stacks, the normative table and the label table.

:func:`plan_evaluation` is the one place these checks live, for both modes: it lists every problem at once
(missing files, no GA in common, grids that cannot be compared) in an :class:`EvaluationInputError` before
anything is computed or written.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infanite.atlas.folder import match_ga, scan_atlas_folder
from infanite.evaluation import metrics
from infanite.geometry import direction_cosines
from infanite.io.images import Grid, ImageReadError, Volume, load_labels, load_nifti, read_header
from infanite.io.layout import atlas_file_name
from infanite.labels import LabelTable, default_label_table
from infanite.reference.normative import NormativeTable, open_normative
from infanite.reference.templates import Template, TemplateLibrary


class EvaluationInputError(ValueError):
    """Input that cannot be evaluated (missing folder or file, no matching GA, incomparable grids)."""


@dataclass
class ImageSet:
    """T2w (float32), brain mask (uint8 0/1) and label map of one GA, on one grid; ``source`` names them."""

    t2w: Volume
    mask: Volume
    seg: Volume
    source: str


class AtlasFolder:
    """A folder of ``atlas_ga-<GA>_{T2w,dseg[,mask]}.nii.gz`` files, read through
    :func:`~infanite.atlas.folder.scan_atlas_folder` (a GA its manifest does not mark complete is left out; a GA
    lacking a file is kept, so that :meth:`problems` names it)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        _, found = scan_atlas_folder(self.folder, allow_incomplete=True)
        self.files = {f.ga: {kind: path for kind, path in (("T2w", f.t2w), ("dseg", f.dseg), ("mask", f.mask))
                             if path is not None} for f in found}
        self.source = str(self.folder)

    @property
    def weeks(self) -> list[float]:
        return list(self.files)

    def problems(self, ga: float) -> tuple[list[str], Grid | None]:
        """Header problems of one GA's files (missing T2w/dseg, unreadable, grids differ) and its grid."""
        files = self.files.get(ga, {})
        missing = [atlas_file_name(ga, k) for k in ("T2w", "dseg") if k not in files]
        if missing:
            return [f"{self.folder}: GA {ga:.1f} lacks {', '.join(missing)}"], None
        problems, grids = [], {}
        for kind, path in files.items():
            try:
                shape, affine = read_header(path)
                grids[kind] = Grid(shape, affine)
            except ImageReadError as exc:
                problems.append(str(exc))
        if "T2w" in grids:
            for kind in ("dseg", "mask"):
                if kind in grids:
                    try:
                        metrics.check_same_grid(grids[kind], grids["T2w"], (str(files[kind]), str(files["T2w"])))
                    except ValueError as exc:
                        problems.append(str(exc))
        return problems, grids.get("T2w")

    def load(self, ga: float) -> ImageSet:
        files = self.files[ga]
        t2w = load_nifti(files["T2w"], np.float32)
        seg = load_labels(files["dseg"])
        mask_array = load_nifti(files["mask"], dtype=None).array if "mask" in files else seg.array
        return ImageSet(t2w, t2w.with_array((mask_array > 0).astype(np.uint8)), seg.with_array(seg.array),
                        str(files["T2w"]))


class TemplateReference:
    """A template folder (CRL, NiftyMIC or ``templates.tsv``) used as the reference."""

    def __init__(self, folder):
        self.library = TemplateLibrary.from_folder(folder, cache_size=1)
        self.source = self.library.source

    @property
    def weeks(self) -> list[float]:
        return self.library.weeks

    def template(self, ga: float) -> Template:
        return self.library.get(ga)

    def problems(self, ga: float) -> tuple[list[str], Grid | None]:
        try:
            template = self.template(ga)
        except (ValueError, ImageReadError) as exc:
            return [str(exc)], None
        if template.seg is None:
            return [f"reference template GA {ga:g} ({template.source}) has no label map"], template.grid
        return [], template.grid

    def load(self, ga: float) -> ImageSet:
        template = self.template(ga)
        return ImageSet(template.t2w, template.mask, template.seg, template.source)


def open_reference(folder):
    """An :class:`AtlasFolder` when ``folder`` holds ``atlas_ga-*`` files, else a :class:`TemplateReference`."""
    folder = Path(folder)
    try:
        return AtlasFolder(folder)
    except ValueError:
        return TemplateReference(folder)


def _world_box(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, grid.shape[0] - 0.5) for j in (-0.5, grid.shape[1] - 0.5)
                        for k in (-0.5, grid.shape[2] - 0.5)])
    world = corners @ grid.voxel_to_ras.T
    return world[:, :3].min(0), world[:, :3].max(0)


def comparability_problem(test: Grid, reference: Grid, test_name: str, reference_name: str) -> str | None:
    """Why ``test`` cannot be resampled onto ``reference`` for comparison (None when it can)."""
    try:
        metrics.check_same_grid(test, reference)
        return None
    except ValueError:
        pass
    for name, grid in ((test_name, test), (reference_name, reference)):
        axes = direction_cosines(grid.voxel_to_ras)
        if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-5):
            return f"grids cannot be compared: {name} has a sheared affine, which cannot be resampled"
    (lo_a, hi_a), (lo_b, hi_b) = _world_box(test), _world_box(reference)
    overlap = np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b)
    if np.any(overlap <= 0):
        return (f"grids cannot be compared: the fields of view of {test_name} (RAS {np.round(lo_a, 1).tolist()} to "
                f"{np.round(hi_a, 1).tolist()} mm) and {reference_name} (RAS {np.round(lo_b, 1).tolist()} to "
                f"{np.round(hi_b, 1).tolist()} mm) do not overlap")
    return None


def _check_folder(path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise EvaluationInputError(f"{what} folder {path} does not exist or is not a folder")
    return path


def _check_out(out) -> Path:
    """The output folder (it may not exist yet); also checks that SSIM can be computed, before any work."""
    if importlib.util.find_spec("skimage") is None:
        raise EvaluationInputError("evaluate needs scikit-image for SSIM (pip install scikit-image)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvaluationInputError(f"output {out} exists and is not a folder")
    return out


def _open_atlas(atlas_dir) -> AtlasFolder:
    folder = _check_folder(atlas_dir, "atlas")
    try:
        return AtlasFolder(folder)
    except ValueError as exc:
        raise EvaluationInputError(str(exc)) from exc


def _normative(normative) -> NormativeTable:
    try:
        return open_normative(normative)
    except ValueError as exc:
        raise EvaluationInputError(str(exc)) from exc


@dataclass
class EvaluationPlan:
    """What an evaluation compares, all checked: ``pairs`` of (atlas GA, target), the target being a reference GA
    (``mode`` "atlas") or a registered stack's record (``mode`` "subject_consistency")."""

    mode: str
    atlas: AtlasFolder
    pairs: list
    normative: NormativeTable
    table: LabelTable
    out: Path
    reference: object = None                 # atlas mode: AtlasFolder or TemplateReference
    manifest: Path | None = None             # subject mode: the registered.tsv
    problems: list = field(default_factory=list)


def plan_evaluation(atlas_dir, out, *, reference=None, registered=None, ga_weeks=None, normative=None,
                    table: LabelTable | None = None) -> EvaluationPlan:
    """Check everything an evaluation needs, for both modes (exactly one of ``reference`` and ``registered``);
    raises :class:`EvaluationInputError` listing every problem, before any work."""
    if (reference is None) == (registered is None):
        raise EvaluationInputError("give exactly one of --reference DIR or --registered registered.tsv")
    out = _check_out(out)
    atlas = _open_atlas(atlas_dir)
    table = table or default_label_table()
    if reference is not None:
        ref_folder = _check_folder(reference, "reference")
        try:
            ref = open_reference(ref_folder)
        except ValueError as exc:
            raise EvaluationInputError(f"reference {ref_folder}: {exc}") from exc
        norm = _normative(normative)
        available = f"atlas GAs {[f'{w:g}' for w in atlas.weeks]}, reference GAs {[f'{w:g}' for w in ref.weeks]}"
        pairs = [(a, match_ga(ref.weeks, a)) for a in atlas.weeks]
        pairs = [(a, r) for a, r in pairs if r is not None]
        where, plan = f"both {atlas.folder} and {ref_folder}", EvaluationPlan("atlas", atlas, [], norm, table, out, ref)
    else:
        from infanite.io.cohort import ManifestError
        from infanite.io.cohort_checks import load_cohort

        manifest = Path(registered)
        if not manifest.is_file():
            raise EvaluationInputError(f"registered manifest {manifest} does not exist")
        norm = _normative(normative)
        try:
            cohort = load_cohort(manifest, label_table=table, ga_range=(0.0, 100.0))
        except ManifestError as exc:
            raise EvaluationInputError(str(exc)) from exc
        available = f"atlas GAs {[f'{w:g}' for w in atlas.weeks]}"
        pairs = [(w, w) for w in atlas.weeks]
        where = str(atlas.folder)
        plan = EvaluationPlan("subject_consistency", atlas, [], norm, table, out, manifest=manifest)
    if ga_weeks:
        wanted = [float(g) for g in ga_weeks]
        missing = [g for g in wanted if match_ga([a for a, _ in pairs], g) is None]
        if missing:
            raise EvaluationInputError(f"requested GA {', '.join(f'{g:g}' for g in missing)} not present in "
                                       f"{where} ({available})")
        pairs = [(a, r) for a, r in pairs if match_ga(wanted, a) is not None]
    if not pairs:
        raise EvaluationInputError(f"no GA present in {where} ({available})")
    problems, grids = [], {}
    for a, _ in pairs:
        atlas_problems, grids[a] = atlas.problems(a)
        problems += atlas_problems
    if plan.mode == "atlas":
        for a, r in pairs:
            ref_problems, ref_grid = plan.reference.problems(r)
            problems += ref_problems
            if grids[a] is not None and ref_grid is not None:
                problem = comparability_problem(grids[a], ref_grid, str(atlas.files[a]["T2w"]),
                                                f"reference GA {r:g} in {reference}")
                if problem:
                    problems.append(problem)
        plan.pairs = pairs
    else:
        weeks = [a for a, _ in pairs]
        for record in cohort.stacks:
            week = min(weeks, key=lambda w: (abs(w - record.scan_age), w))
            plan.pairs.append((week, record))
            if grids[week] is not None:
                shape, affine = read_header(record.t2w)
                problem = comparability_problem(grids[week], Grid(shape, affine), str(atlas.files[week]["T2w"]),
                                                f"{manifest.name} stack {record.subject_id} ({record.t2w})")
                if problem:
                    problems.append(problem)
    if problems:
        raise EvaluationInputError("cannot evaluate:\n  " + "\n  ".join(dict.fromkeys(problems)))
    return plan
