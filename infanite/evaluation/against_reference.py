"""``infanite evaluate``: quality of generated atlases against a reference atlas, or against the cohort's stacks.

Atlas mode (:func:`evaluate_atlas`): ``ATLAS`` holds ``atlas_ga-<GA>_T2w.nii.gz`` and ``atlas_ga-<GA>_dseg.nii.gz``
(GA in weeks with one decimal, optional ``atlas_ga-<GA>_mask.nii.gz``); the reference is a folder of the same
naming or a template folder readable by :meth:`~infanite.reference.templates.TemplateLibrary.from_folder` (CRL
``HarvardSTA<week>_Study1/``, NiftyMIC, ``templates.tsv``).  Every GA present in both is compared: the atlas is
resampled onto the reference grid first when the grids differ (world coordinates, identity transform; linear for
T2, nearest for labels), then :mod:`infanite.evaluation.metrics` gives PSNR and SSIM in both region conventions, Dice, HD95
and ASD per label and their means, the tissue contrast (TCT) of atlas and reference, and the volume L1 errors
against the reference and against a normative table.

Subject-consistency mode (:func:`evaluate_subject_consistency`): for every stack of a ``registered.tsv``
(written by ``infanite register``: stacks already resampled into template space), the atlas of the generated GA
nearest to the stack's GA is registered rigidly to the stack (short SimpleITK refinement from identity), resampled
onto the stack's grid and compared with the stack and its label map with the same metrics; the mean over stacks is
reported too.

Outputs in ``OUT`` (written atomically): ``metrics.json`` (every value; NaN written as null, infinity as the
string ``"inf"``) and ``metrics.md`` (a table shaped like the paper's Table 1).  Bad input (missing folder or
file, no matching GA, grids that cannot be compared) raises :class:`EvaluationInputError` before any work.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from infanite.evaluation import metrics
from infanite.atlas.generate import atlas_file_name
from infanite.geometry import direction_cosines
from infanite.io.images import ImageReadError, Grid, Volume, atomic_write_text, load_labels, load_nifti, read_header
from infanite.labels import LabelTable, default_label_table, load_label_table
from infanite.reference.normative import NormativeTable, open_normative
from infanite.io.resample import resample
from infanite.reference.templates import Template, TemplateLibrary

ATLAS_FILE = re.compile(r"atlas_ga-(\d+(?:\.\d+)?)_(T2w|dseg|mask)\.nii\.gz")
GA_MATCH_WEEKS = 1e-3
METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"


class EvaluationInputError(ValueError):
    """Input that cannot be evaluated (missing folder or file, no matching GA, incomparable grids)."""


def scan_atlas_folder(folder) -> dict[float, dict[str, Path]]:
    """GA (weeks) → ``{"T2w": path, "dseg": path, "mask": path}`` (the kinds found) of a generated-atlas folder."""
    found: dict[float, dict[str, Path]] = {}
    for file in sorted(Path(folder).iterdir()):
        match = ATLAS_FILE.fullmatch(file.name)
        if match and file.is_file():
            found.setdefault(float(match.group(1)), {})[match.group(2)] = file
    return dict(sorted(found.items()))


@dataclass
class ImageSet:
    """T2w (float32), brain mask (uint8 0/1) and label map of one GA, on one grid; ``source`` names them."""

    t2w: Volume
    mask: Volume
    seg: Volume
    source: str


class AtlasFolder:
    """A folder of ``atlas_ga-<GA>_{T2w,dseg[,mask]}.nii.gz`` files (mask absent: ``dseg > 0``)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.files = scan_atlas_folder(self.folder)
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
    if scan_atlas_folder(folder):
        return AtlasFolder(folder)
    return TemplateReference(folder)


# ---------------------------------------------------------------------------------------------------------
# checks before any work


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
    atlas = AtlasFolder(_check_folder(atlas_dir, "atlas"))
    if not atlas.files:
        raise EvaluationInputError(f"atlas folder {atlas.folder} holds no {atlas_file_name(24.0, 'T2w')}-style files "
                                   f"(atlas_ga-<GA>_T2w.nii.gz and atlas_ga-<GA>_dseg.nii.gz)")
    return atlas


def _normative(normative) -> NormativeTable:
    try:
        return open_normative(normative)
    except ValueError as exc:
        raise EvaluationInputError(str(exc)) from exc


def _find_week(weeks, ga: float) -> float | None:
    return next((w for w in weeks if abs(w - ga) < GA_MATCH_WEEKS), None)


@dataclass
class AtlasPlan:
    """What :func:`evaluate_atlas` will compare: matched GAs (atlas week, reference week) and the sources."""

    atlas: AtlasFolder
    reference: object
    pairs: list[tuple[float, float]]
    normative: NormativeTable
    table: LabelTable
    out: Path


def plan_atlas_evaluation(atlas_dir, reference, out, ga_weeks=None, normative=None,
                          table: LabelTable | None = None) -> AtlasPlan:
    """Check everything :func:`evaluate_atlas` needs; raises :class:`EvaluationInputError` listing every problem."""
    out = _check_out(out)
    atlas = _open_atlas(atlas_dir)
    ref_folder = _check_folder(reference, "reference")
    try:
        ref = open_reference(ref_folder)
    except ValueError as exc:
        raise EvaluationInputError(f"reference {ref_folder}: {exc}") from exc
    norm = _normative(normative)
    pairs = [(w, _find_week(ref.weeks, w)) for w in atlas.weeks]
    pairs = [(a, r) for a, r in pairs if r is not None]
    available = f"atlas GAs {[f'{w:g}' for w in atlas.weeks]}, reference GAs {[f'{w:g}' for w in ref.weeks]}"
    if ga_weeks:
        wanted = [float(g) for g in ga_weeks]
        missing = [g for g in wanted if _find_week([a for a, _ in pairs], g) is None]
        if missing:
            raise EvaluationInputError(f"requested GA {', '.join(f'{g:g}' for g in missing)} not present in both "
                                       f"{atlas.folder} and {ref_folder} ({available})")
        pairs = [(a, r) for a, r in pairs if _find_week(wanted, a) is not None]
    if not pairs:
        raise EvaluationInputError(f"no GA present in both {atlas.folder} and {ref_folder} ({available})")
    problems = []
    for a, r in pairs:
        atlas_problems, atlas_grid = atlas.problems(a)
        ref_problems, ref_grid = ref.problems(r)
        problems += atlas_problems + ref_problems
        if atlas_grid is not None and ref_grid is not None:
            problem = comparability_problem(atlas_grid, ref_grid, str(atlas.files[a]["T2w"]),
                                            f"reference GA {r:g} in {ref_folder}")
            if problem:
                problems.append(problem)
    if problems:
        raise EvaluationInputError("cannot evaluate:\n  " + "\n  ".join(problems))
    return AtlasPlan(atlas, ref, pairs, norm, table or default_label_table(), out)


# ---------------------------------------------------------------------------------------------------------
# metrics of one pair


def _keyed(per_label: dict, table: LabelTable) -> dict:
    abbrev = {lab.value: lab.abbrev for lab in table.labels}
    return {abbrev.get(k, str(k)): v for k, v in per_label.items()}


def compare(test_t2: Volume, test_seg: Volume, reference: ImageSet, ga_weeks: float, normative: NormativeTable,
            table: LabelTable, test_native: tuple[Volume, Volume] | None = None,
            names: tuple[str, str] = ("atlas", "reference"), sides: tuple[str, str] = ("atlas", "reference"),
            dilation_mm: float = metrics.DEFAULT_DILATION_MM, reference_ga_weeks: float | None = None) -> dict:
    """Every metric of a test image and label map already on the reference grid (lengths mm, volumes mL).

    ``test_native`` (T2w, labels) on the test's own grid gives the test's TCT and normative volumes (default: the
    resampled ones).  Normative volumes are looked up at ``ga_weeks`` for the test and at ``reference_ga_weeks``
    (default the same) for the reference.  ``names`` name the two images in error messages, ``sides`` key the
    two-sided entries (TCT, normative volume errors).
    """
    native_t2, native_seg = test_native or (test_t2, test_seg)
    values = {lab.abbrev: lab.value for lab in table.labels}
    gm, wm = values.get("cGM"), values.get("WM")    # a table without them gets no TCT (NaN)

    def contrast(image, seg):
        return math.nan if gm is None or wm is None else metrics.tct(image, seg, gm, wm)

    regions = {"brain_mask": metrics.brain_mask_region(reference.mask, dilation_mm),
               "bounding_box": metrics.bounding_box_region(reference.mask)}
    labels = table.values
    surface = metrics.surface_distance_table(test_seg, reference.seg, labels, names=names)
    overlap = metrics.dice(test_seg, reference.seg, labels, names=names)
    vol_ref = metrics.volume_l1_vs_reference(test_seg, reference.seg, table=table, names=names)
    norm_test = metrics.volume_l1_vs_normative(native_seg, ga_weeks, normative, table=table)
    ref_ga = ga_weeks if reference_ga_weeks is None else reference_ga_weeks
    norm_ref = metrics.volume_l1_vs_normative(reference.seg, ref_ga, normative, table=table)
    return {
        "psnr_db": {k: metrics.psnr(test_t2, reference.t2w, r, names) for k, r in regions.items()},
        "ssim": {k: metrics.ssim(test_t2, reference.t2w, r, names) for k, r in regions.items()},
        "dice": {"per_label": _keyed(overlap["per_label"], table), "mean": overlap["mean"]},
        "hd95_mm": {"per_label": _keyed(surface["hd95_mm"]["per_label"], table), "mean": surface["hd95_mm"]["mean"]},
        "asd_mm": {"per_label": _keyed(surface["asd_mm"]["per_label"], table), "mean": surface["asd_mm"]["mean"]},
        "surface_notes": _keyed(surface["notes"], table),
        "tct": {sides[0]: contrast(native_t2, native_seg), sides[1]: contrast(reference.t2w, reference.seg)},
        "volume_l1_reference": vol_ref,
        "volume_l1_normative": {sides[0]: norm_test, sides[1]: norm_ref},
    }


def summary_row(result: dict, sides: tuple[str, str] = ("atlas", "reference")) -> dict:
    """The scalar values of one comparison shown in ``metrics.md`` (and averaged)."""
    return {"psnr_mask_db": result["psnr_db"]["brain_mask"], "psnr_bbox_db": result["psnr_db"]["bounding_box"],
            "ssim_mask": result["ssim"]["brain_mask"], "ssim_bbox": result["ssim"]["bounding_box"],
            "dice_mean": result["dice"]["mean"], "hd95_mean_mm": result["hd95_mm"]["mean"],
            "asd_mean_mm": result["asd_mm"]["mean"], "tct_test": result["tct"][sides[0]],
            "tct_reference": result["tct"][sides[1]], "vol_l1_reference": result["volume_l1_reference"]["mean"],
            "vol_l1_normative": result["volume_l1_normative"][sides[0]]["mean"]}


def mean_row(rows: list[dict]) -> dict:
    """Mean of each summary value over ``rows`` (NaN left out; any ``inf`` PSNR makes the mean ``inf``)."""
    return {key: metrics.nanmean(row[key] for row in rows) for key in rows[0]} if rows else {}


# ---------------------------------------------------------------------------------------------------------
# outputs


def jsonable(value):
    """JSON-safe copy: NaN → null, ±infinity → "inf"/"-inf", numpy scalars → Python, other objects → str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, np.integer):
        return int(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


def format_metric(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _md_cells(row: dict) -> list[str]:
    return [f"{format_metric(row['psnr_mask_db'], 2)} / {format_metric(row['psnr_bbox_db'], 2)}",
            f"{format_metric(row['ssim_mask'], 4)} / {format_metric(row['ssim_bbox'], 4)}", format_metric(row["dice_mean"], 4),
            format_metric(row["hd95_mean_mm"], 2), format_metric(row["asd_mean_mm"], 2),
            f"{format_metric(row['tct_test'], 3)} ({format_metric(row['tct_reference'], 3)})",
            f"{format_metric(row['vol_l1_reference'], 4)} / {format_metric(row['vol_l1_normative'], 4)}"]


METRIC_HEADERS = ["PSNR (dB) mask / bbox", "SSIM mask / bbox", "Dice", "HD95 (mm)", "ASD (mm)", "TCT {test} ({ref})",
                  "Vol L1 vs {ref} / vs normative"]


def conventions_text(table: LabelTable, normative: NormativeTable, dilation_mm: float, test: str, ref: str) -> str:
    return (f"Conventions: PSNR and SSIM are given for two regions, *mask* = the {ref} brain mask dilated by "
            f"{dilation_mm:g} mm and *bbox* = the bounding box of the {ref} brain mask; in each region both images "
            f"are min–max normalised over the region's voxels (data range 1). SSIM: 3-D Gaussian window σ = 1.5 "
            f"voxels. Dice, HD95 and ASD are means over the {len(table.values)} labels of the {table.source} "
            f"(labels absent from both maps left out); HD95 = 95th percentile and ASD = mean of the pooled symmetric "
            f"surface distances (SimpleITK, mm). TCT = |μGM − μWM| / sqrt(σGM² + σWM²) of the {test} (of the "
            f"{ref} in brackets). Vol L1 = mean |V − V_{ref}| / V_{ref} over tissues / mean |V − mean| / mean over "
            f"the normative measures ({normative.source}).")


def _markdown(title: str, conventions: str, key_headers: list[str], keys: list[list[str]], rows: list[dict],
              mean: dict | None, test: str, ref: str) -> str:
    headers = key_headers + [h.format(test=test, ref=ref) for h in METRIC_HEADERS]
    lines = [f"# {title}", "", conventions, "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for key, row in zip(keys, rows):
        lines.append("| " + " | ".join(key + _md_cells(row)) + " |")
    if mean is not None and len(rows) > 1:
        lines.append("| " + " | ".join(["**mean**"] + [""] * (len(key_headers) - 1) + _md_cells(mean)) + " |")
    return "\n".join(lines) + "\n"


def _write_outputs(out: Path, document: dict, markdown: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / METRICS_JSON, json.dumps(jsonable(document), indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / METRICS_MD, markdown)
    return document


# ---------------------------------------------------------------------------------------------------------
# atlas mode


def evaluate_atlas(atlas_dir, reference, out, ga_weeks=None, normative=None, table: LabelTable | None = None,
                   progress=None) -> dict:
    """Compare every GA of a generated atlas with a reference atlas; writes ``out/metrics.{json,md}``.

    ``ga_weeks`` restricts the GAs (each must be in both folders); ``normative`` is a CSV path or a
    :class:`~infanite.reference.normative.NormativeTable` (default: the built-in Ren et al. 2022 table); ``table`` the label
    table (default CRL 8-class).  Returns the document written to ``metrics.json`` (before JSON conversion).
    """
    plan = plan_atlas_evaluation(atlas_dir, reference, out, ga_weeks, normative, table)
    if progress is not None:
        progress.start("evaluate", len(plan.pairs), f"{len(plan.pairs)} GA to compare")
    per_ga, rows = [], []
    for step, (ga_atlas, ga_ref) in enumerate(plan.pairs, 1):
        atlas = plan.atlas.load(ga_atlas)
        ref = plan.reference.load(ga_ref)
        resampled = not _same_grid(atlas.t2w, ref.t2w)
        test_t2 = resample(atlas.t2w, ref.t2w, None, "linear") if resampled else atlas.t2w
        test_seg = resample(atlas.seg, ref.t2w, None, "nearest") if resampled else atlas.seg
        result = compare(test_t2, test_seg, ref, ga_atlas, plan.normative, plan.table, (atlas.t2w, atlas.seg),
                         names=(atlas.source, ref.source))
        per_ga.append({"ga_weeks": ga_atlas, "reference_ga_weeks": ga_ref, "atlas": atlas.source,
                       "reference": ref.source, "resampled_to_reference_grid": resampled, **result})
        rows.append(summary_row(result))
        if progress is not None:
            progress.update(step, f"GA {ga_atlas:.1f}")
    mean = mean_row(rows)
    document = {"mode": "atlas", "atlas_dir": plan.atlas.folder, "reference": plan.reference.source,
                "normative": plan.normative.source, "label_table": plan.table.source,
                "conventions": _conventions_dict(), "per_ga": per_ga, "summary": rows, "mean": mean}
    conventions = conventions_text(plan.table, plan.normative, metrics.DEFAULT_DILATION_MM, "atlas", "reference")
    markdown = _markdown(f"Atlas evaluation: {plan.atlas.folder} vs {plan.reference.source}", conventions,
                         ["GA (weeks)"], [[f"{ga:.1f}"] for ga, _ in plan.pairs], rows, mean, "atlas", "reference")
    return _write_outputs(plan.out, document, markdown)


def _same_grid(a: Volume, b: Volume) -> bool:
    try:
        metrics.check_same_grid(a, b)
        return True
    except ValueError:
        return False


def _conventions_dict() -> dict:
    return {"lengths": "mm", "volumes": "mL", "ga": "weeks",
            "regions": {"brain_mask": f"reference brain mask dilated by {metrics.DEFAULT_DILATION_MM:g} mm (ball)",
                        "bounding_box": "bounding box of the reference brain mask"},
            "intensity_normalisation": "each image min-max normalised over the region voxels, data range 1",
            "ssim": "skimage structural_similarity, 3-D, gaussian_weights, sigma 1.5 voxels, "
                    "use_sample_covariance False; SSIM map averaged over the region",
            "psnr": "10 log10(1 / MSE) over the region; inf when identical",
            "surface_distances": "SimpleITK inner label contours and Maurer distance maps in mm; HD95 = 95th "
                                 "percentile, ASD = mean of the pooled distances of both directions",
            "dice": "per label; NaN when the label is absent from both, left out of the mean",
            "tct": "|mean_GM - mean_WM| / sqrt(sd_GM^2 + sd_WM^2) with GM = cGM, WM = WM labels",
            "volume_l1_reference": "mean over tissues of |V - V_ref| / V_ref on the reference grid",
            "volume_l1_normative": "mean over measures of |V - mean| / mean at the GA, with z = (V - mean) / sd",
            "non_finite_json": "NaN is written as null, infinity as the string 'inf'"}


# ---------------------------------------------------------------------------------------------------------
# subject-consistency mode


@dataclass
class SubjectPlan:
    atlas: AtlasFolder
    stacks: list            # cohort StackRecords
    atlas_weeks: dict       # subject_id → atlas GA
    normative: NormativeTable
    table: LabelTable
    out: Path


def plan_subject_consistency(atlas_dir, registered_manifest, out, ga_weeks=None, normative=None,
                             table: LabelTable | None = None) -> SubjectPlan:
    """Check what :func:`evaluate_subject_consistency` needs; raises :class:`EvaluationInputError`."""
    from infanite.io.cohort import ManifestError, load_cohort

    out = _check_out(out)
    atlas = _open_atlas(atlas_dir)
    manifest = Path(registered_manifest)
    if not manifest.is_file():
        raise EvaluationInputError(f"registered manifest {manifest} does not exist")
    table = table or default_label_table()
    norm = _normative(normative)
    try:
        cohort = load_cohort(manifest, label_table=table, ga_range=(0.0, 100.0))
    except ManifestError as exc:
        raise EvaluationInputError(str(exc)) from exc
    weeks = atlas.weeks
    if ga_weeks:
        missing = [float(g) for g in ga_weeks if _find_week(weeks, float(g)) is None]
        if missing:
            raise EvaluationInputError(f"requested GA {', '.join(f'{g:g}' for g in missing)} not in {atlas.folder} "
                                       f"(atlas GAs {[f'{w:g}' for w in weeks]})")
        weeks = [w for w in weeks if _find_week([float(g) for g in ga_weeks], w) is not None]
    problems, chosen, grids = [], {}, {}
    for record in cohort.stacks:
        week = min(weeks, key=lambda w: (abs(w - record.scan_age), w))
        chosen[record.subject_id] = week
        if week not in grids:
            atlas_problems, grids[week] = atlas.problems(week)
            problems += atlas_problems
        if grids[week] is not None:
            shape, affine = read_header(record.t2w)
            problem = comparability_problem(grids[week], Grid(shape, affine), str(atlas.files[week]["T2w"]),
                                            f"{manifest.name} stack {record.subject_id} ({record.t2w})")
            if problem:
                problems.append(problem)
    if problems:
        raise EvaluationInputError("cannot evaluate:\n  " + "\n  ".join(problems))
    return SubjectPlan(atlas, cohort.stacks, chosen, norm, table, out)


def register_atlas_to_stack(atlas: ImageSet, ga_weeks: float, stack_t2: Volume, stack_mask: Volume) -> np.ndarray:
    """Rigid ``atlas_to_stack`` (RAS mm → RAS mm) of an atlas already roughly aligned with a stack.

    A short SimpleITK refinement from identity (:func:`~infanite.registration.stack.refine_sitk`: correlation
    metric over the stack's brain mask, multi-resolution 4/2/1).
    """
    from infanite.registration.stack import refine_sitk

    template = Template(ga_weeks, atlas.t2w, atlas.mask, atlas.seg, atlas.source)
    return refine_sitk(stack_t2, stack_mask, template, np.eye(4))


def evaluate_subject_consistency(atlas_dir, registered_manifest, out, ga_weeks=None, normative=None,
                                 table: LabelTable | None = None, progress=None,
                                 register: Callable | None = register_atlas_to_stack) -> dict:
    """Compare the atlas with every registered stack (``registered.tsv``); writes ``out/metrics.{json,md}``.

    Per stack: the atlas at the generated GA nearest to the stack's GA (ties: the lower GA) is registered rigidly
    to the stack (``register``; None skips it: identity) and resampled onto the stack's grid (linear T2, nearest
    labels), then compared with the stack, its label map and its brain mask (``Mask``, else ``Seg > 0``).  The
    atlas's normative volume errors are at its own GA, the stack's at its scan age.  Returns the document
    written to ``metrics.json``.
    """
    plan = plan_subject_consistency(atlas_dir, registered_manifest, out, ga_weeks, normative, table)
    if progress is not None:
        progress.start("evaluate", len(plan.stacks), f"{len(plan.stacks)} stacks to compare")
    per_subject, rows, keys = [], [], []
    loaded: dict[float, ImageSet] = {}
    for step, record in enumerate(plan.stacks, 1):
        week = plan.atlas_weeks[record.subject_id]
        if week not in loaded:
            loaded.clear()
            loaded[week] = plan.atlas.load(week)
        atlas = loaded[week]
        stack_t2 = load_nifti(record.t2w, np.float32)
        stack_seg = load_labels(record.seg)
        mask_array = load_nifti(record.mask, dtype=None).array if record.mask else stack_seg.array
        reference = ImageSet(stack_t2, stack_t2.with_array((mask_array > 0).astype(np.uint8)),
                             stack_t2.with_array(stack_seg.array), str(record.t2w))
        atlas_to_stack = np.eye(4) if register is None else register(atlas, week, stack_t2, reference.mask)
        stack_to_atlas = np.linalg.inv(atlas_to_stack)
        test_t2 = resample(atlas.t2w, stack_t2.grid, stack_to_atlas, "linear")
        test_seg = resample(atlas.seg, stack_t2.grid, stack_to_atlas, "nearest")
        result = compare(test_t2, test_seg, reference, week, plan.normative, plan.table, (atlas.t2w, atlas.seg),
                         names=(atlas.source, reference.source), sides=("atlas", "stack"),
                         reference_ga_weeks=record.scan_age)
        per_subject.append({"subject_id": record.subject_id, "scan_age": record.scan_age, "atlas_ga_weeks": week,
                            "atlas": atlas.source, "stack": str(record.t2w), "atlas_to_stack": atlas_to_stack.tolist(),
                            **result})
        rows.append(summary_row(result, ("atlas", "stack")))
        keys.append([record.subject_id, f"{record.scan_age:.1f}", f"{week:.1f}"])
        if progress is not None:
            progress.update(step, record.subject_id)
    mean = mean_row(rows)
    document = {"mode": "subject_consistency", "atlas_dir": plan.atlas.folder,
                "registered_manifest": str(Path(registered_manifest)), "normative": plan.normative.source,
                "label_table": plan.table.source, "conventions": _conventions_dict(), "per_subject": per_subject,
                "summary": rows, "mean": mean}
    conventions = conventions_text(plan.table, plan.normative, metrics.DEFAULT_DILATION_MM, "atlas", "stack")
    markdown = _markdown(f"Subject consistency: {plan.atlas.folder} vs {Path(registered_manifest)}", conventions,
                         ["Stack", "GA (weeks)", "Atlas GA"], keys, rows, mean, "atlas", "stack")
    return _write_outputs(plan.out, document, markdown)


# ---------------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser) -> None:
    """Arguments of ``infanite evaluate`` (add to a subparser)."""
    parser.add_argument("--atlas", required=True, metavar="DIR",
                        help="generated atlas folder (atlas_ga-<GA>_T2w.nii.gz, atlas_ga-<GA>_dseg.nii.gz)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--reference", default=None, metavar="DIR",
                      help="reference atlas: a folder of the same naming, or a template folder (CRL "
                           "HarvardSTA<week>_Study1/, NiftyMIC, templates.tsv)")
    mode.add_argument("--registered", default=None, metavar="TSV",
                      help="subject-consistency mode: registered.tsv written by 'infanite register'")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (metrics.json, metrics.md)")
    parser.add_argument("--normative", default=None, metavar="CSV",
                        help="normative volume table (measure, gestational_age_weeks, mean_ml, sd_ml); "
                             "default: built-in Ren et al. 2022")
    parser.add_argument("--ga", nargs="+", type=float, default=None, metavar="WEEKS",
                        help="only these GAs (weeks); default every GA present in both")
    parser.add_argument("--labels", default=None, metavar="FILE",
                        help="label table (.yaml or .tsv); default CRL 8-class")
    parser.add_argument("--progress-json", metavar="FILE|-", default=None,
                        help="write progress as JSON lines to FILE, or to stdout with '-'")


def command(args) -> int:
    """Run ``infanite evaluate``: 0 on success, 2 (message on stderr) for bad input found before any work."""
    from infanite.progress import ProgressReporter

    if (args.reference is None) == (args.registered is None):
        print("evaluate: give exactly one of --reference DIR or --registered registered.tsv", file=sys.stderr)
        return 2
    try:
        table = load_label_table(args.labels) if getattr(args, "labels", None) else None
    except ValueError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    try:
        with ProgressReporter(getattr(args, "progress_json", None)) as progress:
            if args.reference is not None:
                evaluate_atlas(args.atlas, args.reference, args.out, args.ga, args.normative, table, progress)
            else:
                evaluate_subject_consistency(args.atlas, args.registered, args.out, args.ga, args.normative, table,
                                             progress)
    except EvaluationInputError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    print(f"metrics written: {Path(args.out) / METRICS_JSON}, {Path(args.out) / METRICS_MD}")
    return 0
