"""Observed-sample map and spatial loss weights (the reference's ``spatial_weighting.py``, computed exactly).

Each thick-slice stack is rigidly registered to a template (``template_to_stack``: template RAS mm → stack RAS
mm, the direction used in ``truth.json``) and resampled onto the template grid.  A template voxel is
**observed** when an acquired slice plane of the stack passes through it (within ``tolerance_mm`` of the plane,
measured along the slice normal) inside the stack's field of view.  The INR loss is then weighted per voxel by
``w_obs`` (observed, inside the brain), ``w_int`` (interpolated: inside the brain, not observed) or 0 (outside
the brain).

The reference derives the same map from a resampled voxel-ID volume and an ID-matching search (method
reference §4), which is slow and wrong where interpolated IDs collide; here it follows from the geometry alone.
"""
from __future__ import annotations


import numpy as np

from infanite.geometry import as_matrix
from infanite.io.images import Grid

#: Template voxels processed per chunk (whole slabs along the first template axis), bounding memory use.
_CHUNK_VOXELS = 1 << 21


def _check_grid(grid: Grid, name: str) -> tuple[tuple[int, int, int], np.ndarray]:
    shape = tuple(int(n) for n in grid.shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name} must be a non-empty 3-D grid, got shape {shape}")
    affine = as_matrix(grid.voxel_to_ras, f"{name}.voxel_to_ras")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{name}.voxel_to_ras is singular")
    return shape, affine


def slice_axis(stack_grid: Grid) -> int:
    """The stack's through-plane array axis: the one with the largest voxel spacing (ties → the last axis)."""
    spacing = np.asarray(stack_grid.spacing_mm, dtype=np.float64)
    return int(np.flatnonzero(spacing >= spacing.max() * (1 - 1e-9))[-1])


def observed_map(template_grid: Grid, stack_grid: Grid, template_to_stack: np.ndarray,
                 tolerance_mm: float | None = None) -> np.ndarray:
    """Template voxels (uint8, template grid shape) through which an acquired slice plane of the stack passes.

    For each template voxel centre ``x`` (template RAS mm), ``v = stack_ras_to_voxel · template_to_stack · x``
    is its continuous stack voxel index.  With ``k`` the slice axis (:func:`slice_axis`) and ``a``, ``b`` the
    in-plane axes, the voxel is observed (1) when

    * its distance (stack mm, along the slice normal) to the nearest slice plane, ``|v_k − round(v_k)|`` times
      the plane spacing, is ≤ ``tolerance_mm``;
    * ``round(v_k)`` is an acquired slice, 0 … n_k − 1;
    * it lies inside the in-plane field of view: ``−0.5 ≤ v_a ≤ n_a − 0.5`` (same for ``b``).

    Args:
        template_grid: the template grid (voxel indices → template RAS mm).
        stack_grid: the stack's original acquisition grid (voxel indices → stack RAS mm).
        template_to_stack: 4x4 matrix, template RAS mm → stack RAS mm.
        tolerance_mm: half-width (mm) of the observed slab around each slice plane.  Default: half the template
            voxel size measured along the slice normal (``0.5·‖Aᵀn‖``, A the template's 3x3 affine, n the unit
            normal in template RAS), i.e. the plane passes through the template voxel: about one template voxel
            per acquired sample through-plane, as the reference intends.
    Returns:
        uint8 array of ``template_grid.shape``: 1 observed, 0 otherwise.
    """
    t_shape, t_affine = _check_grid(template_grid, "template_grid")
    s_shape, s_affine = _check_grid(stack_grid, "stack_grid")
    m_ts = as_matrix(template_to_stack, "template_to_stack")
    k = slice_axis(stack_grid)
    in_plane = [a for a in range(3) if a != k]
    s_inv = np.linalg.inv(s_affine)
    plane_spacing_mm = 1.0 / np.linalg.norm(s_inv[k, :3])    # = spacing_k for orthogonal stack axes
    if tolerance_mm is None:
        normal_template = (s_inv @ m_ts)[k, :3]
        normal_template /= np.linalg.norm(normal_template)
        tolerance_mm = 0.5 * float(np.linalg.norm(t_affine[:3, :3].T @ normal_template))
    tolerance_mm = float(tolerance_mm)
    if not np.isfinite(tolerance_mm) or tolerance_mm <= 0:
        raise ValueError(f"tolerance_mm must be a finite number > 0, got {tolerance_mm}")
    tol_vox = tolerance_mm / plane_spacing_mm

    m = s_inv @ m_ts @ t_affine                 # template voxel index → stack voxel index
    nj, nk = t_shape[1], t_shape[2]
    jj, kk = np.meshgrid(np.arange(nj, dtype=np.float64), np.arange(nk, dtype=np.float64), indexing="ij")
    base = [m[a, 1] * jj + m[a, 2] * kk + m[a, 3] for a in range(3)]      # (nj, nk) per stack axis
    out = np.zeros(t_shape, np.uint8)
    slab = max(1, _CHUNK_VOXELS // (nj * nk))
    for i0 in range(0, t_shape[0], slab):
        ii = np.arange(i0, min(i0 + slab, t_shape[0]), dtype=np.float64)[:, None, None]
        v = base[k] + m[k, 0] * ii
        nearest = np.floor(v + 0.5)
        ok = (np.abs(v - nearest) <= tol_vox) & (nearest >= 0) & (nearest <= s_shape[k] - 1)
        for a in in_plane:
            v = base[a] + m[a, 0] * ii
            ok &= (v >= -0.5) & (v <= s_shape[a] - 0.5)
        out[i0:i0 + len(ii)] = ok
    return out


def weight_map(observed: np.ndarray, brain_mask: np.ndarray, w_obs: float = 1.6, w_int: float = 0.8) -> np.ndarray:
    """Per-voxel loss weight W (float32): ``w_obs`` observed & brain, ``w_int`` brain & not observed, 0 outside.

    ``observed`` and ``brain_mask`` are arrays on the same grid; non-zero means true.
    """
    observed, brain_mask = np.asarray(observed), np.asarray(brain_mask)
    if observed.shape != brain_mask.shape:
        raise ValueError(f"observed {observed.shape} and brain_mask {brain_mask.shape} differ in shape")
    for name, w in (("w_obs", w_obs), ("w_int", w_int)):
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"{name} must be a finite weight ≥ 0, got {w}")
    brain = brain_mask != 0
    out = np.zeros(observed.shape, np.float32)
    out[brain] = np.float32(w_int)
    out[brain & (observed != 0)] = np.float32(w_obs)
    return out
