"""Resampling a volume onto another grid through a world-space rigid (or affine) transform.

The transform is given as ``reference_to_source``: a 4x4 matrix mapping **reference RAS mm → source RAS mm**
(the same direction as ``template_to_stack`` in ``truth.json`` / ``transforms.json``).  Each reference voxel
centre is mapped into the source image and interpolated there.  Resampling runs in SimpleITK, whose LPS
conventions are handled here.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from infanite.geometry import as_matrix, direction_cosines, ras_matrix_to_lps
from infanite.io.images import Grid, Volume, sitk_reference_image, volume_to_sitk

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # σ = FWHM / 2.3548

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
    "label_gaussian": sitk.sitkLabelGaussian,
}


def itk_transform_from_ras(reference_to_source_ras: np.ndarray) -> sitk.AffineTransform:
    """SimpleITK transform equivalent to a RAS reference→source matrix (ITK maps output points to input points)."""
    lps = ras_matrix_to_lps(as_matrix(reference_to_source_ras, "reference_to_source"))
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in lps[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in lps[:3, 3]])
    return tx


def psf_sigma_source_voxels(source: Volume, reference: Grid, reference_to_source: np.ndarray,
                            fwhm_mm_reference_axes) -> np.ndarray:
    """Per-axis Gaussian σ (in source voxels) approximating a PSF given along the reference grid's axes.

    The PSF covariance ``Σ = U diag(σ²) Uᵀ`` (U = reference axes mapped into the source world) is projected onto
    the source array axes (its diagonal); this is exact when the two grids' axes are parallel. The source's
    own sampling (FWHM = its voxel size) is subtracted in quadrature.
    """
    fwhm = np.broadcast_to(np.asarray(fwhm_mm_reference_axes, dtype=np.float64), (3,))
    axes_ref_world = reference_to_source[:3, :3] @ direction_cosines(reference.voxel_to_ras)
    cov_world = axes_ref_world @ np.diag((fwhm * FWHM_TO_SIGMA) ** 2) @ axes_ref_world.T
    src_dirs = direction_cosines(source.voxel_to_ras)
    var_src_mm2 = np.einsum("ia,ij,ja->a", src_dirs, cov_world, src_dirs)
    var_src_mm2 -= (source.spacing_mm * FWHM_TO_SIGMA) ** 2
    return np.sqrt(np.clip(var_src_mm2, 0.0, None)) / source.spacing_mm


def resample(source: Volume, reference: Grid | Volume, reference_to_source=None, interpolation: str = "linear",
             default_value: float = 0.0, psf_fwhm_mm=None) -> Volume:
    """Resample ``source`` onto the grid of ``reference``.

    Args:
        source: image to sample.
        reference: target grid (a :class:`Grid`, or a :class:`Volume` whose grid is used).
        reference_to_source: 4x4 matrix, reference RAS mm → source RAS mm (identity when ``None``).
        interpolation: ``"linear"`` for intensities, ``"nearest"`` for labels (also ``"bspline"``,
            ``"label_gaussian"``).
        default_value: value outside the source field of view.
        psf_fwhm_mm: PSF-aware downsampling: Gaussian FWHM (mm) along the reference axes (scalar or 3 values;
            e.g. the reference spacing).  The source is blurred by this PSF before sampling.  Not allowed with
            label interpolators.
    Returns:
        A :class:`Volume` on the reference grid (float32 for intensities, the source dtype for nearest).
    """
    grid = reference.grid if isinstance(reference, Volume) else reference
    if interpolation not in _INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATORS)}, got {interpolation!r}")
    m = np.eye(4) if reference_to_source is None else as_matrix(reference_to_source, "reference_to_source")
    src_array = source.array
    if psf_fwhm_mm is not None:
        if interpolation in ("nearest", "label_gaussian"):
            raise ValueError("psf_fwhm_mm applies to intensity images, not to label interpolation")
        sigma = psf_sigma_source_voxels(source, grid, m, psf_fwhm_mm)
        src_array = ndimage.gaussian_filter(src_array.astype(np.float32), sigma, mode="nearest")
    label_mode = interpolation in ("nearest", "label_gaussian")
    if not label_mode:
        src_array = src_array.astype(np.float32, copy=False)
    src_img = volume_to_sitk(source.with_array(src_array))
    ref_img = sitk_reference_image(grid, src_img.GetPixelID())
    out = sitk.Resample(src_img, ref_img, itk_transform_from_ras(m), _INTERPOLATORS[interpolation],
                        float(default_value), src_img.GetPixelID())
    array = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    return Volume(np.ascontiguousarray(array), grid.voxel_to_ras.copy())
