"""Atlas quality metrics: image similarity, label overlap, surface distances, tissue contrast and volumes.

Pure functions on :class:`~infanite.io.images.Volume` objects or plain arrays in (i, j, k) order.  Conventions:

* **Same grid.** Every function taking two images checks that they are on the same grid (same shape and, for
  Volumes, ``voxel_to_ras`` equal within 1e-3 element-wise) and raises ``ValueError`` naming both otherwise
  (``names`` sets the names used).  Plain arrays carry no geometry, so only their shapes are compared.
  Resampling onto a common grid is the caller's job (:mod:`infanite.evaluation.against_reference` does it).
* **Regions.** PSNR and SSIM are computed over a boolean region: either :func:`brain_mask_region` (the
  reference brain mask dilated by 2 mm, a ball in mm) or :func:`bounding_box_region` (the reference brain
  mask's bounding box, which contains the former up to the dilation).
* **Intensities.** Before PSNR/SSIM each image is min–max normalised over the region voxels (so its values in
  the region span [0, 1]; a constant image becomes 0); the data range is then 1.  PSNR and SSIM are therefore
  invariant to a positive affine intensity change of either image.
* **Lengths** are in mm, **volumes** in mL (1 mL = 1000 mm³), GA in weeks.
* **Surface distances** (SimpleITK): the surface of a label is its inner contour (label voxels with a
  face-neighbour outside it, ``sitk.LabelContour``); the distance of a surface voxel to the other surface is
  the exact Euclidean distance (mm, image spacing) to the nearest surface voxel of the other label map
  (``sitk.SignedMaurerDistanceMap`` of that surface).  The distances of both directions are pooled:
  symmetric ASD = their mean, HD95 = their 95th percentile (numpy linear interpolation), HD = their maximum.
"""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from infanite.io.images import Grid, Volume
from infanite.labels import LabelTable
from infanite.reference.normative import NormativeTable, ren2022
from infanite.reference.volumes import measure_volumes_ml, tissue_volumes_ml, voxel_volume_of

#: Element-wise tolerance on ``voxel_to_ras`` (mm) for two images to count as being on the same grid.
GRID_ATOL = 1e-3
#: SSIM settings (Wang et al. 2004 with a Gaussian window; σ in voxels).
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
#: Default dilation (mm) of the reference brain mask for the brain-mask region.
DEFAULT_DILATION_MM = 2.0


# ---------------------------------------------------------------------------------------------------------
# inputs and grids


def _array(image) -> np.ndarray:
    return image.array if isinstance(image, Volume) else np.asarray(image)


def _shape(image) -> tuple:
    return tuple(int(n) for n in (image.shape if isinstance(image, (Volume, Grid)) else np.shape(image)))


def _describe(image) -> str:
    if isinstance(image, (Volume, Grid)):
        return f"shape {_shape(image)}, voxel_to_ras {np.round(image.voxel_to_ras, 4).tolist()}"
    return f"shape {_shape(image)}"


def check_same_grid(a, b, names: tuple[str, str] = ("test", "reference"), atol: float = GRID_ATOL) -> None:
    """Raise ``ValueError`` naming ``names`` unless ``a`` and ``b`` lie on the same grid.

    ``a``/``b`` are Volumes, Grids or arrays; the affines are compared (element-wise, ``atol`` mm) only when both
    carry one.
    """
    same = _shape(a) == _shape(b)
    if same and isinstance(a, (Volume, Grid)) and isinstance(b, (Volume, Grid)):
        same = bool(np.allclose(a.voxel_to_ras, b.voxel_to_ras, rtol=0.0, atol=atol))
    if not same:
        raise ValueError(f"{names[0]} and {names[1]} are not on the same grid (resample one onto the other first): "
                         f"{names[0]} has {_describe(a)}; {names[1]} has {_describe(b)}")


def _spacing(image, spacing_mm) -> np.ndarray:
    if spacing_mm is not None:
        spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    elif isinstance(image, Volume):
        spacing = image.spacing_mm
    else:
        raise ValueError("spacing_mm is required for plain arrays (Volumes carry their own)")
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ValueError(f"voxel spacing must be positive mm, got {spacing.tolist()}")
    return spacing


def _bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` grown by ``pad`` voxels (clipped to the array)."""
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        raise ValueError("empty region")
    return tuple(slice(max(int(i.min()) - pad, 0), min(int(i.max()) + 1 + pad, n)) for i, n in zip(idx, mask.shape))


# ---------------------------------------------------------------------------------------------------------
# regions


def ball_structure(radius_mm: float, spacing_mm) -> np.ndarray:
    """Boolean ball of radius ``radius_mm`` (mm) on a grid of voxel size ``spacing_mm`` (3 values, mm)."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    half = np.floor(radius_mm / spacing + 1e-9).astype(int)
    offsets = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(o ** 2 for o in offsets) <= radius_mm ** 2 + 1e-9


def brain_mask_region(ref_mask, dilation_mm: float = DEFAULT_DILATION_MM, spacing=None) -> np.ndarray:
    """Region (a): the reference brain mask (``> 0``) dilated by a ball of ``dilation_mm`` mm.

    ``spacing`` (mm, 3 values) is taken from ``ref_mask`` when it is a Volume.  Returns a boolean array.
    """
    mask = _array(ref_mask) > 0
    if not mask.any():
        raise ValueError("reference brain mask is empty")
    if dilation_mm <= 0:
        return mask
    ball = ball_structure(dilation_mm, _spacing(ref_mask, spacing))
    pad = max(ball.shape) // 2 + 1
    box = _bbox(mask, pad)
    out = np.zeros_like(mask)
    out[box] = ndimage.binary_dilation(mask[box], structure=ball)
    return out


def bounding_box_region(ref_mask) -> np.ndarray:
    """Region (b): the axis-aligned (voxel-axes) bounding box of the reference brain mask (``> 0``), boolean."""
    mask = _array(ref_mask) > 0
    if not mask.any():
        raise ValueError("reference brain mask is empty")
    out = np.zeros_like(mask)
    out[_bbox(mask)] = True
    return out


# ---------------------------------------------------------------------------------------------------------
# intensity similarity


def minmax_normalise(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``(image − min) / (max − min)`` with min and max over ``region`` voxels (float64; a constant → 0)."""
    values = image[region]
    lo, hi = float(values.min()), float(values.max())
    return (image.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(image.shape, np.float64)


def _intensity_inputs(test, reference, mask, names) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    check_same_grid(test, reference, names)
    check_same_grid(reference, mask, (names[1], "region mask"))
    region = _array(mask) > 0
    if not region.any():
        raise ValueError("region mask is empty")
    a, b = _array(test), _array(reference)
    for name, arr in zip(names, (a, b)):
        if not np.all(np.isfinite(arr[region])):
            raise ValueError(f"{name} has NaN or inf inside the region")
    return a, b, region


def psnr(test, reference, mask, names: tuple[str, str] = ("test", "reference")) -> float:
    """Peak signal-to-noise ratio (dB) of ``test`` against ``reference`` over the region ``mask``.

    Each image is min–max normalised over the region voxels first (data range 1), then
    ``PSNR = 10 log10(1 / MSE)`` with the MSE over the region.  Identical (normalised) images give ``inf``.
    """
    a, b, region = _intensity_inputs(test, reference, mask, names)
    mse = float(np.mean((minmax_normalise(a, region)[region] - minmax_normalise(b, region)[region]) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def psnr_affine(test, reference, mask, names: tuple[str, str] = ("test", "reference")) -> float:
    """PSNR (dB) of the best affine intensity map of ``test`` onto ``reference`` over the region ``mask``.

    The reference is min–max normalised over the region (data range 1) as in :func:`psnr`; the test is mapped by
    the least-squares ``α·test + β`` onto it (α of either sign; a constant test maps to the reference's mean).  It
    is never below :func:`psnr` (whose min–max normalisation is one affine map among all): the gap between the
    two is the part of the error that the test's contrast (its intensity scale against its extremes) accounts
    for, the rest is structure.  A diagnostic, not a quality metric: it forgives wrong tissue contrast."""
    a, b, region = _intensity_inputs(test, reference, mask, names)
    x = a[region].astype(np.float64)
    y = minmax_normalise(b, region)[region]
    xc = x - x.mean()
    denominator = float(xc @ xc)
    slope = float(xc @ (y - y.mean())) / denominator if denominator > 0 else 0.0
    mse = float(np.mean((y - y.mean() - slope * xc) ** 2))
    return math.inf if mse <= 1e-30 else 10.0 * math.log10(1.0 / mse)


def intensity_error_by_label(test, reference, mask, reference_seg, labels,
                             names: tuple[str, str] = ("test", "reference")) -> dict:
    """Where :func:`psnr`'s squared error lies: split by the tissue label of ``reference_seg`` (the reference's
    label map, same grid) over the region ``mask``, both images min–max normalised over the region as for the PSNR.

    Returns ``{"mse": the region's MSE (10^(−PSNR/10)), "per_label": {value: part}, "outside": part}``, ``outside``
    being the region voxels whose reference label is none of ``labels`` (e.g. the dilation band around the brain).
    Each part: ``fraction`` of the region's voxels, its own ``mse``, its ``share`` of the region's squared error
    (the shares sum to 1; NaN when the images agree exactly) and its ``bias``, the mean signed error test −
    reference (normalised units: > 0 where the test is too bright against its extremes).  A part with no voxel has
    fraction and share 0, mse and bias NaN.  So ``Σ fraction · mse`` is the region's MSE: a tissue whose mse
    exceeds another image's by Δ costs that image ``fraction · Δ`` of MSE."""
    a, b, region = _intensity_inputs(test, reference, mask, names)
    check_same_grid(reference, reference_seg, (names[1], f"{names[1]} labels"))
    seg = _array(reference_seg)[region]
    error = minmax_normalise(a, region)[region] - minmax_normalise(b, region)[region]
    squared = error ** 2
    total = float(squared.sum())
    n_region = int(error.size)

    def part(selected: np.ndarray) -> dict:
        n = int(np.count_nonzero(selected))
        if n == 0:
            return {"fraction": 0.0, "mse": math.nan, "share": 0.0, "bias": math.nan}
        sse = float(squared[selected].sum())
        return {"fraction": n / n_region, "mse": sse / n, "share": sse / total if total > 0 else math.nan,
                "bias": float(error[selected].mean())}

    values = [int(v) for v in labels]
    per_label = {v: part(seg == v) for v in values}
    return {"mse": total / n_region, "per_label": per_label, "outside": part(~np.isin(seg, values))}


def sharpness(image, mask, spacing_mm=None) -> float:
    """Mean gradient magnitude (per mm) of ``image`` min–max normalised over ``mask``, averaged over ``mask``.

    Central differences along each axis divided by the voxel spacing (a Volume's own, or ``spacing_mm``).  An
    edge blurred over a wider band has a lower mean gradient: the truth's value is the target, an average of
    misaligned anatomies falls below it."""
    check_same_grid(image, mask, ("image", "mask"))
    region = _array(mask) > 0
    if not region.any():
        raise ValueError("sharpness: the mask is empty")
    normalised = minmax_normalise(_array(image), region)
    gradients = np.gradient(normalised, *_spacing(image, spacing_mm))
    return float(np.sqrt(sum(g ** 2 for g in gradients))[region].mean())


def ssim(test, reference, mask, names: tuple[str, str] = ("test", "reference")) -> float:
    """Mean structural similarity of ``test`` and ``reference`` over the region ``mask`` (1 = identical).

    Each image is min–max normalised over the region voxels (data range 1); the 3-D SSIM map is
    ``skimage.metrics.structural_similarity(full=True, data_range=1, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` (Gaussian window σ = 1.5 voxels, truncated at 3.5 σ, reflected at the array
    border) and is averaged over the region.  The map is computed on the region's bounding box grown by the
    window radius, which gives the same values in the region as the whole image.
    """
    try:
        from skimage.metrics import structural_similarity
    except ImportError as exc:  # an optional dependency of the core package
        raise ImportError("SSIM needs scikit-image (pip install scikit-image)") from exc

    a, b, region = _intensity_inputs(test, reference, mask, names)
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    box = _bbox(region, radius + 1)
    a_n, b_n = minmax_normalise(a, region)[box], minmax_normalise(b, region)[box]
    if min(a_n.shape) < 2 * radius + 1:
        raise ValueError(f"SSIM needs at least {2 * radius + 1} voxels along every axis, got {a_n.shape}")
    _, smap = structural_similarity(a_n, b_n, data_range=1.0, gaussian_weights=True, sigma=SSIM_SIGMA,
                                    use_sample_covariance=False, full=True)
    return float(np.mean(smap[region[box]]))


# ---------------------------------------------------------------------------------------------------------
# label overlap and surface distances


def dice(a, b, labels, names: tuple[str, str] = ("test", "reference")) -> dict:
    """Dice overlap ``2|A∩B| / (|A| + |B|)`` per label value, and their mean.

    Returns ``{"per_label": {value: dice}, "mean": mean}``.  A label absent from one map scores 0; absent from
    both, NaN (left out of the mean, which is NaN when every label is).
    """
    check_same_grid(a, b, names)
    x, y = _array(a), _array(b)
    per_label = {}
    for value in labels:
        in_a, in_b = x == value, y == value
        total = int(np.count_nonzero(in_a)) + int(np.count_nonzero(in_b))
        per_label[int(value)] = math.nan if total == 0 else 2.0 * np.count_nonzero(in_a & in_b) / total
    return {"per_label": per_label, "mean": nanmean(per_label.values())}


def nanmean(values) -> float:
    """Mean of ``values`` leaving out NaN (and None); NaN when nothing is left.  ``inf`` values make it ``inf``."""
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _surface_and_distance(binary: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inner contour (bool) of ``binary`` and the distance (mm) of every voxel to that contour."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(binary.astype(np.uint8).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    contour = sitk.LabelContour(image, fullyConnected=False)
    distance = sitk.Abs(sitk.SignedMaurerDistanceMap(contour, insideIsPositive=False, squaredDistance=False,
                                                     useImageSpacing=True))
    return (sitk.GetArrayViewFromImage(contour).transpose(2, 1, 0) > 0,
            sitk.GetArrayFromImage(distance).transpose(2, 1, 0))


def surface_distances(a, b, label: int, spacing_mm=None, names: tuple[str, str] = ("test", "reference")) -> dict:
    """Symmetric surface distances (mm) between label ``label`` of ``a`` and of ``b``.

    Returns ``{"hd95_mm", "asd_mm", "hd_mm", "note"}``: the 95th percentile, mean and maximum of the pooled
    distances of both surfaces to each other (see the module docstring).  ``spacing_mm`` defaults to the Volumes'
    voxel size.  When the label is absent from one or both maps the distances are NaN and ``note`` says why
    (``note`` is None otherwise).
    """
    check_same_grid(a, b, names)
    spacing = _spacing(a if isinstance(a, Volume) else b, spacing_mm)
    in_a, in_b = _array(a) == label, _array(b) == label
    absent = [name for name, m in zip(names, (in_a, in_b)) if not m.any()]
    if absent:
        note = f"label {label} absent from {' and '.join(absent)}"
        return {"hd95_mm": math.nan, "asd_mm": math.nan, "hd_mm": math.nan, "note": note}
    box = _bbox(in_a | in_b, 1)
    # one voxel of background all round, so that the image border is treated as outside the label
    crop_a, crop_b = (np.pad(m[box], 1) for m in (in_a, in_b))
    surf_a, dist_a = _surface_and_distance(crop_a, spacing)
    surf_b, dist_b = _surface_and_distance(crop_b, spacing)
    pooled = np.concatenate([dist_b[surf_a], dist_a[surf_b]]).astype(np.float64)
    return {"hd95_mm": float(np.percentile(pooled, 95)), "asd_mm": float(pooled.mean()),
            "hd_mm": float(pooled.max()), "note": None}


def surface_distance_table(a, b, labels, spacing_mm=None, names: tuple[str, str] = ("test", "reference")) -> dict:
    """:func:`surface_distances` for every label: ``{"hd95_mm": {"per_label", "mean"}, "asd_mm": {...},
    "notes": {label: note}}`` (means leave out NaN labels)."""
    hd95, asd, notes = {}, {}, {}
    for value in labels:
        result = surface_distances(a, b, int(value), spacing_mm, names)
        hd95[int(value)], asd[int(value)] = result["hd95_mm"], result["asd_mm"]
        if result["note"]:
            notes[int(value)] = result["note"]
    return {"hd95_mm": {"per_label": hd95, "mean": nanmean(hd95.values())},
            "asd_mm": {"per_label": asd, "mean": nanmean(asd.values())}, "notes": notes}


# ---------------------------------------------------------------------------------------------------------
# tissue contrast


def tct(image, seg, gm_label: int = 5, wm_label: int = 1, names: tuple[str, str] = ("image", "seg")) -> float:
    """Tissue contrast ``|μ_GM − μ_WM| / sqrt(σ_GM² + σ_WM²)`` (unitless; population SDs of the intensities).

    Defaults: cortical grey matter 5 and white matter 1 of the CRL 8-class table.  NaN when either tissue has
    fewer than 2 voxels.
    """
    check_same_grid(image, seg, names)
    values, labels = _array(image), _array(seg)
    gm, wm = values[labels == gm_label].astype(np.float64), values[labels == wm_label].astype(np.float64)
    if gm.size < 2 or wm.size < 2:
        return math.nan
    spread = math.sqrt(gm.var() + wm.var())
    difference = abs(gm.mean() - wm.mean())
    return math.inf if spread == 0.0 and difference > 0 else (0.0 if spread == 0.0 else difference / spread)


# ---------------------------------------------------------------------------------------------------------
# volumes


def volume_l1_vs_reference(seg, ref_seg, voxel_volume_mm3: float | None = None, table: LabelTable | None = None,
                           names: tuple[str, str] = ("test", "reference")) -> dict:
    """Relative volume differences ``|V − V_ref| / V_ref`` per tissue and their mean (mean absolute relative
    difference; unitless).

    Both label maps must be on one grid.  Returns ``{"mean", "per_tissue", "volumes_ml", "reference_volumes_ml"}``;
    tissues absent from the reference get NaN and are left out of the mean.
    """
    check_same_grid(seg, ref_seg, names)
    voxel = voxel_volume_of(ref_seg if isinstance(ref_seg, Volume) else seg, voxel_volume_mm3)
    volumes = tissue_volumes_ml(seg, voxel, table)
    reference = tissue_volumes_ml(ref_seg, voxel, table)
    per_tissue = {k: (abs(volumes[k] - reference[k]) / reference[k] if reference[k] > 0 else math.nan)
                  for k in volumes}
    return {"mean": nanmean(per_tissue.values()), "per_tissue": per_tissue, "volumes_ml": volumes,
            "reference_volumes_ml": reference}


def normative_deviation(volumes_ml: dict, ga_weeks: float, normative_table: NormativeTable | None = None) -> dict:
    """Deviation of measure volumes (mL) from a normative table at ``ga_weeks``.

    For each measure present in both: relative error ``|V − mean| / mean`` and z-score ``(V − mean) / sd``.
    Returns ``{"mean", "per_measure", "z", "normative_mean_ml", "normative_sd_ml", "volumes_ml"}`` where
    ``mean`` is the mean relative error over the measures.
    """
    normative_table = normative_table or ren2022()
    per_measure, z, means, sds = {}, {}, {}, {}
    for measure, volume in volumes_ml.items():
        if measure not in normative_table.mean_ml:
            continue
        mu, sd = normative_table.mean(measure, ga_weeks), normative_table.sd(measure, ga_weeks)
        means[measure], sds[measure] = mu, sd
        per_measure[measure] = abs(volume - mu) / mu if mu > 0 else math.nan
        z[measure] = (volume - mu) / sd if sd > 0 else math.nan
    return {"mean": nanmean(per_measure.values()), "per_measure": per_measure, "z": z,
            "normative_mean_ml": means, "normative_sd_ml": sds,
            "volumes_ml": {m: volumes_ml[m] for m in per_measure}}


def volume_l1_vs_normative(seg, ga_weeks: float, normative_table: NormativeTable | None = None,
                           voxel_volume_mm3: float | None = None, table: LabelTable | None = None) -> dict:
    """:func:`normative_deviation` of the measure volumes of ``seg`` (see :func:`measure_volumes_ml`)."""
    return normative_deviation(measure_volumes_ml(seg, voxel_volume_mm3, table), ga_weeks, normative_table)
