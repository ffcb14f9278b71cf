"""Tissue labels for an atlas whose run had no stack with a ``Seg`` (a mask-only cohort): the template's labels,
propagated by deformable registration.

Each generated GA's T2w (on the atlas grid, template RAS: the stacks were registered to the same templates, so no
rigid step is needed) is the fixed image; the template of the nearest week (T2w masked by its brain mask) is the
moving image.  SimpleITK's diffeomorphic demons (``method="demons"``, the default: the template's intensities
histogram-matched to the atlas's, 50 iterations on a 1.6 mm grid, displacement field smoothed by 2 voxels) registers
them, and the template's label map is resampled through the result with nearest-neighbour interpolation.  Labels are
then confined to the atlas's own brain mask (the model's brain class: mask-only stacks teach where the brain is): a
brain voxel the warped template leaves at 0 takes the label of the nearest labelled voxel.

``method`` ``"bspline"`` (Mattes mutual information, a free-form B-spline with control points every ``mesh_mm``)
and ``"none"`` (the template's labels as they lie in template space) are kept for the measurement that chose
demons (README, *Stacks without a Seg*): on the phantom (the template one or two weeks from the atlas) demons gains
4–10 Dice points over none in 6 s, as B-spline does in 40–50 s; on the CRL simulator (5 GAs, the template one week
away) the mean Dice is 0.819 with demons, 0.809 with none and 0.753 with B-spline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Deformable methods measured; ``demons`` is the default
METHODS = ("demons", "bspline", "none")
#: diffeomorphic demons: iterations and Gaussian smoothing of the displacement field (voxels of the 1.6 mm grid)
DEMONS_ITERATIONS = 50
DEMONS_SIGMA_VOXELS = 2.0
#: B-spline control-point spacing (mm) at the finest level
MESH_MM = 16.0
#: Registration runs on the atlas resampled to at least this spacing (mm): labels are warped at full resolution
REGISTRATION_SPACING_MM = 1.6


@dataclass
class Propagated:
    """``labels`` (int16 array on the atlas grid) and ``note``, what the manifest records of how they were made."""

    labels: np.ndarray
    note: dict


def propagate_template_labels(t2w: np.ndarray, brain: np.ndarray, voxel_to_ras: np.ndarray, template,
                              method: str = "demons", mesh_mm: float = MESH_MM, seed: int = 0) -> Propagated:
    """Labels for the atlas T2w ``t2w`` (array on the grid ``voxel_to_ras``, RAS mm) inside ``brain`` (bool),
    from ``template`` (a :class:`~infanite.reference.templates.Template` with a ``seg``)."""
    import SimpleITK as sitk
    from scipy import ndimage

    from infanite.io.images import Volume, sitk_to_volume, volume_to_sitk

    if method not in METHODS:
        raise ValueError(f"label propagation method must be one of {', '.join(METHODS)}, got {method!r}")
    if template.seg is None:
        raise ValueError(f"template GA {template.ga_weeks:g} ({template.source}) has no label map to propagate")
    brain = np.asarray(brain, dtype=bool)
    fixed_full = volume_to_sitk(Volume(np.where(brain, t2w, 0.0).astype(np.float32), voxel_to_ras))
    moving_t2 = np.where(template.mask.array > 0, template.t2w.array, 0.0).astype(np.float32)
    moving = volume_to_sitk(Volume(moving_t2, template.t2w.voxel_to_ras))
    moving_seg = volume_to_sitk(Volume(template.seg.array.astype(np.int16), template.seg.voxel_to_ras))
    transform = sitk.Transform(3, sitk.sitkIdentity)
    note = {"labels_from": "template", "template_ga_weeks": float(template.ga_weeks),
            "template_source": str(template.source), "method": method}
    if method == "bspline" and brain.any():
        fixed = _at_least(fixed_full, REGISTRATION_SPACING_MM)
        mesh = [max(1, int(round(size * spacing / mesh_mm)))
                for size, spacing in zip(fixed.GetSize(), fixed.GetSpacing())]
        initial = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        fixed_mask = sitk.Cast(fixed > 0, sitk.sitkUInt8)
        reg.SetMetricFixedMask(fixed_mask)
        reg.SetMetricSamplingStrategy(reg.REGULAR)
        reg.SetMetricSamplingPercentage(0.25, seed)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=60,
                                 maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=400)
        reg.SetInitialTransform(initial, inPlace=True)
        reg.SetShrinkFactorsPerLevel([2, 1])
        reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
        moving_reg = sitk.Resample(moving, fixed, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0)
        reg.Execute(fixed, moving_reg)
        transform = initial
        note.update({"metric": "Mattes MI", "mesh_mm": float(mesh_mm),
                     "final_metric": round(float(reg.GetMetricValue()), 5),
                     "iterations": int(reg.GetOptimizerIteration())})
    if method == "demons" and brain.any():
        fixed = _at_least(fixed_full, REGISTRATION_SPACING_MM)
        moving_on_fixed = sitk.Resample(moving, fixed, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0)
        matched = sitk.HistogramMatching(moving_on_fixed, fixed, numberOfHistogramLevels=128, numberOfMatchPoints=7,
                                         thresholdAtMeanIntensity=True)
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(DEMONS_ITERATIONS)
        demons.SetStandardDeviations(DEMONS_SIGMA_VOXELS)
        demons.SetSmoothDisplacementField(True)
        field = demons.Execute(fixed, matched)
        transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        note.update({"metric": "demons (histogram-matched intensities)", "iterations": DEMONS_ITERATIONS,
                     "smoothing_voxels": DEMONS_SIGMA_VOXELS, "rms_change": round(float(demons.GetRMSChange()), 5)})
    warped = sitk_to_volume(sitk.Resample(moving_seg, fixed_full, transform, sitk.sitkNearestNeighbor, 0,
                                          sitk.sitkInt16)).array
    labels = np.where(brain, warped, 0).astype(np.int16)
    missing = brain & (labels == 0)
    if missing.any() and (labels > 0).any():
        _, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        filled = labels[tuple(nearest)]
        labels = np.where(missing, filled, labels).astype(np.int16)
        note["filled_voxels"] = int(missing.sum())
    return Propagated(labels, note)


def _at_least(image, spacing_mm: float):
    """``image`` resampled (linear) to a spacing of at least ``spacing_mm`` on every axis, same field of view."""
    import SimpleITK as sitk

    spacing = [max(float(s), spacing_mm) for s in image.GetSpacing()]
    if np.allclose(spacing, image.GetSpacing()):
        return image
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    origin_shift = [(t - s) / 2.0 for s, t in zip(image.GetSpacing(), spacing)]
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin()) + direction @ np.asarray(origin_shift)
    return sitk.Resample(image, size, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, origin.tolist(),
                         spacing, image.GetDirection(), 0.0, image.GetPixelID())
