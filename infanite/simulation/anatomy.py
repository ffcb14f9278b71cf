"""A simulated fetus: the age-matched template cropped to the brain and warped by a random smooth deformation.

The deformation is a sum of low-frequency sine waves (wavelength 40–90 mm, each displacement component at most
``max_mm``) whose affine part over the brain is removed, so the true rigid pose of a stack stays the best rigid
fit; ``subject(x) = template(x + d(x))`` (RAS mm).  The parameters are plain JSON (``truth.json`` records them).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from infanite.geometry import apply_matrix
from infanite.io.images import Volume
from infanite.reference.templates import Template


def crop_to_brain(template: Template, margin_mm: float) -> tuple[Volume, Volume]:
    """T2 and labels cropped to the brain bounding box plus a margin (keeps world geometry)."""
    labels = template.seg if template.seg is not None else template.mask
    brain = labels.array > 0
    idx = np.argwhere(brain)
    margin = np.ceil(margin_mm / template.t2w.spacing_mm).astype(int)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, brain.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = template.t2w.voxel_to_ras.copy()
    affine[:3, 3] = apply_matrix(affine, lo)
    return (Volume(np.ascontiguousarray(template.t2w.array[sl], dtype=np.float32), affine),
            Volume(np.ascontiguousarray(labels.array[sl]), affine.copy()))


def random_deformation(rng: np.random.Generator, max_mm: float, n_waves: int = 4) -> dict:
    """Parameters of a smooth displacement field: sums of low-frequency sine waves (wavelength 40–90 mm)."""
    directions = rng.normal(size=(3, n_waves, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    wavelength = rng.uniform(40.0, 90.0, size=(3, n_waves))
    amplitude = rng.normal(size=(3, n_waves))
    amplitude *= max_mm / max(np.abs(amplitude).sum(axis=1).max(), 1e-9)   # |d| ≤ max_mm per component
    phase = rng.uniform(0, 2 * np.pi, size=(3, n_waves))
    return {"wave_vectors_per_mm": (directions * (2 * np.pi / wavelength)[..., None]).tolist(),
            "amplitude_mm": amplitude.tolist(), "phase_rad": phase.tolist(), "max_component_mm": max_mm}


def displacement(params: dict, xyz: np.ndarray) -> np.ndarray:
    """Displacement (mm) at RAS points (..., 3) of a field from :func:`random_deformation`.

    The field's affine part over the brain (``affine_removed``, a 3×4 matrix) is subtracted, so the deformation
    is purely non-linear and the true rigid pose stays the best rigid fit.
    """
    k = np.asarray(params["wave_vectors_per_mm"])
    amp = np.asarray(params["amplitude_mm"])
    phase = np.asarray(params["phase_rad"])
    out = np.zeros(xyz.shape, np.float32)
    for c in range(3):
        for w in range(k.shape[1]):
            out[..., c] += amp[c, w] * np.sin(xyz @ k[c, w].astype(np.float32) + phase[c, w])
    if "affine_removed" in params:
        a = np.asarray(params["affine_removed"], dtype=np.float32)
        out -= xyz @ a[:, :3].T + a[:, 3]
    return out


def remove_affine_part(params: dict, brain_ras: np.ndarray) -> dict:
    """Fit the displacement over brain points by an affine map (least squares) and record it for removal."""
    design = np.c_[brain_ras, np.ones(len(brain_ras))]
    coef, *_ = np.linalg.lstsq(design, displacement(params, brain_ras.astype(np.float32)), rcond=None)
    return {**params, "affine_removed": coef.T.tolist()}


def deform(t2: Volume, labels: Volume, params: dict) -> tuple[Volume, Volume]:
    """Warp an image and its labels by the displacement field: subject(x) = template(x + d(x))."""
    xyz = t2.grid.voxel_centres_ras().astype(np.float32)
    src = xyz + displacement(params, xyz)
    ijk = apply_matrix(t2.ras_to_voxel, src).astype(np.float32)
    coords = np.moveaxis(ijk, -1, 0)
    warped = ndimage.map_coordinates(t2.array, coords, order=1, mode="constant", cval=0.0)
    warped_labels = ndimage.map_coordinates(labels.array, coords, order=0, mode="constant", cval=0)
    return t2.with_array(warped.astype(np.float32)), labels.with_array(warped_labels.astype(labels.array.dtype))
