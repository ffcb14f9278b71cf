"""The images of a cohort manifest checked before any work: GA range, files that exist and read, 3-D voxel grids
shared by T2w/Seg/Mask, finite voxels, a non-empty brain mask, integer labels of the label table.

:func:`load_cohort` reads a manifest (:func:`~infanite.io.cohort.read_manifest`) and checks it and its images;
every problem of every row is collected and raised at once in a :class:`~infanite.io.cohort.ManifestError`.
"""
from __future__ import annotations

import math

import numpy as np

from infanite.geometry import same_grid, voxel_spacing
from infanite.io.cohort import Cohort, ManifestError, Problem, StackRecord, read_manifest
from infanite.io.images import ImageReadError, load_nifti, read_header
from infanite.labels import LabelTable, default_label_table

#: largest distance of a label value from an integer
_LABEL_TOLERANCE = 1e-3


def _check_ga_range(ga_range) -> tuple[float, float]:
    low, high = (float(v) for v in ga_range)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"invalid gestational-age range {ga_range!r} (weeks, MIN <= MAX)")
    return low, high


def check_ages(cohort: Cohort, ga_range=(21.0, 39.0)) -> list[Problem]:
    """Stacks whose ``scan_age`` (weeks) lies outside the inclusive ``ga_range`` (weeks)."""
    low, high = _check_ga_range(ga_range)
    return [Problem(r.row, "scan_age", None, "ga_out_of_range",
                    f"scan_age {r.scan_age:g} weeks is outside the accepted range {low:g}–{high:g} weeks",
                    cohort.manifest_path.name)
            for r in cohort.stacks if r.scan_age is not None and not low <= r.scan_age <= high]


def _voxel_problems(column: str, array: np.ndarray, seg_is_mask: bool,
                    label_table: LabelTable) -> list[tuple[str, str]]:
    """(kind, message) for the voxel values of one image of a stack."""
    inexact = np.issubdtype(array.dtype, np.inexact)
    if inexact:
        n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        if n_nan or n_inf:
            return [("nan_inf", f"{n_nan} NaN and {n_inf} infinite voxel values")]
    if column == "T2w":
        return []
    if column == "Mask":
        return [] if np.any(array != 0) else [("empty_mask", "mask is all zero")]
    if inexact:
        rounded = np.rint(array)
        worst = float(np.abs(array - rounded).max(initial=0))
        if worst > _LABEL_TOLERANCE:
            return [("not_labels", f"label map holds non-integer values (up to {worst:.3g} from an integer)")]
        array = rounded.astype(np.int64)
    found = []
    unknown = label_table.unknown_values(array)
    if unknown:
        found.append(("unknown_labels", f"label values {unknown} are not in the label table ({label_table.source})"))
    if seg_is_mask and not np.any(array > 0):
        found.append(("empty_mask", "no label > 0, so the brain mask (Seg > 0 without a Mask column) is empty"))
    return found


def _stack_image_problems(record: StackRecord, label_table: LabelTable, manifest: str) -> list[Problem]:
    files = {"T2w": record.t2w}
    if record.seg is not None:
        files["Seg"] = record.seg
    if record.mask is not None:
        files["Mask"] = record.mask
    problems = []

    def add(column: str, kind: str, message: str) -> None:
        problems.append(Problem(record.row, column, str(files[column]), kind, message, manifest))

    grids = {}
    for column, path in files.items():
        try:
            grids[column] = read_header(path)
        except ImageReadError as exc:
            add(column, exc.kind, exc.detail)
    if grids:
        reference, *others = grids
        for column in others:
            same, why = same_grid(*grids[reference], *grids[column])
            if not same:
                add(column, "grid_mismatch", f"voxel grid differs from {reference} ({why})")
    if "T2w" in grids and record.slice_thickness_mm is None:
        record.slice_thickness_mm = float(voxel_spacing(grids["T2w"][1]).max())
    for column in grids:
        try:
            volume = load_nifti(files[column], dtype=np.float32 if column == "T2w" else None)
        except ImageReadError as exc:
            add(column, exc.kind, exc.detail)
            continue
        found = _voxel_problems(column, volume.array, record.mask is None, label_table)
        for kind, message in found:
            add(column, kind, message)
        if column == "Mask" and record.seg is None and not found:
            problem = _implausible_mask(volume, record.scan_age)
            if problem:
                add(column, "small_mask", problem)
    return problems


def _implausible_mask(mask, ga_weeks: float | None) -> str | None:
    """Why a mask-only stack's brain mask is too small to be a fetal brain at ``ga_weeks``, else None."""
    from infanite.reference.volumes import (MIN_MASK_FRACTION_OF_TBV, mean_total_brain_volume_ml,
                                            minimum_brain_mask_ml, voxel_volume_mm3)

    volume_ml = float(np.count_nonzero(mask.array)) * voxel_volume_mm3(mask) / 1000.0
    bound = minimum_brain_mask_ml(ga_weeks)
    if volume_ml >= bound:
        return None
    at = f"GA {ga_weeks:g} weeks" if ga_weeks is not None else "18 weeks (GA unknown)"
    return (f"brain mask of {volume_ml:.1f} mL is smaller than any plausible fetal brain at {at}: the bound is "
            f"{bound:.1f} mL ({MIN_MASK_FRACTION_OF_TBV:g} × the mean total brain volume "
            f"{mean_total_brain_volume_ml(18.0 if ga_weeks is None else ga_weeks):.1f} mL of Jarvis et al. 2016); "
            f"a stack with only a Mask needs one that covers the whole brain")


def validate_images(cohort: Cohort, label_table: LabelTable, ga_range=(21.0, 39.0)) -> list[Problem]:
    """Every problem of every stack: GA outside ``ga_range`` (weeks), and for T2w, Seg and Mask missing,
    unreadable, corrupt-gzip or non-3-D files, NaN/inf voxels, voxel grids that differ (shape, or affine beyond
    1e-3 mm), an empty brain mask, non-integer label maps and labels not in ``label_table``.

    Each file's header is read first and its voxels once.  Missing ``slice_thickness_mm`` values are filled in
    place with the largest voxel size (mm) of the T2w image.
    """
    problems = check_ages(cohort, ga_range)
    for record in cohort.stacks:
        problems += _stack_image_problems(record, label_table, cohort.manifest_path.name)
    return problems


def load_cohort(path, label_table: LabelTable | None = None, ga_range=(21.0, 39.0), subject_ids_yaml=None,
                check_images: bool = True, registration_input: bool = False) -> Cohort:
    """Read a manifest and check it (and its images unless ``check_images`` is False).

    ``label_table`` defaults to :func:`labels.default_label_table`, ``ga_range`` is in weeks.  Raises
    :class:`ManifestError` listing every table and image problem, sorted by row; rows with unusable table
    values are not opened.  ``registration_input`` accepts rows with an unknown GA (empty ``scan_age``) or with
    only a ``Mask`` (no ``Seg``), as ``infanite register`` does.  Nothing is written.
    """
    cohort, problems = read_manifest(path, subject_ids_yaml, registration_input=registration_input)
    if check_images:
        table = default_label_table() if label_table is None else label_table
        problems += validate_images(cohort, table, ga_range)
    else:
        problems += check_ages(cohort, ga_range)
    if problems:
        raise ManifestError(cohort.manifest_path,
                            sorted(problems, key=lambda p: (p.row is not None, p.row or 0)))
    return cohort
