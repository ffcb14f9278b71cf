"""Training data: every registered stack's brain + halo voxels packed once into contiguous tensors.

Per voxel: template RAS coordinates (mm), intensity (min–max normalised per stack over its brain voxels),
label (the Seg value; ``halo_label`` for the background halo around the brain, as in the reference), weight (the
registration's W map; halo voxels get ``w_int``) and stack index.  Per stack: the slice-aware PSF covariance in
template space (mm², from ``registered.tsv``'s ``psf_cov_mm2``) and the GA.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from infanite.io.cohort_checks import load_cohort
from infanite.geometry import apply_matrix
from infanite.io.images import load_labels, load_nifti


@dataclass
class PackedCohort:
    coords_mm: torch.Tensor      # (V, 3) float32, template RAS
    intensity: torch.Tensor      # (V,) float32 in [0, 1]
    label: torch.Tensor          # (V,) int64
    weight: torch.Tensor         # (V,) float32
    stack: torch.Tensor          # (V,) int64
    psf_cov_mm2: torch.Tensor    # (S, 3, 3) float32
    stack_ids: list
    ga_weeks: list
    halo_label: int
    support_mask: np.ndarray     # grid-shaped bool: union of every stack's brain + halo (where the INR is trained)
    centre_mm: np.ndarray
    half_extent_mm: np.ndarray
    voxel_to_ras: np.ndarray
    shape: tuple

    @property
    def n_voxels(self) -> int:
        return int(self.coords_mm.shape[0])

    def to(self, device) -> "PackedCohort":
        for name in ("coords_mm", "intensity", "label", "weight", "stack", "psf_cov_mm2"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def brain_normalised(t2: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Intensities clipped at 0 and min–max normalised over the brain ``mask`` (float32; 0 for an empty mask)."""
    values = np.clip(t2, 0, None)
    if not mask.any():
        return np.zeros(values.shape, np.float32)
    lo, hi = float(values[mask].min()), float(values[mask].max())
    return ((values - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def pack_cohort(manifest, label_values, w_int: float = 0.8, halo_sigma_voxels: float = 1.5,
                halo_threshold: float = 0.01, isotropic_sigma_mm=None, uniform_weights: bool = False) -> PackedCohort:
    """Read ``registered.tsv`` (stacks on one template grid) and pack it.  ``label_values`` are the tissue labels;
    the halo gets ``max(label_values) + 1``.  ``uniform_weights`` ignores the W maps (brain weight 1; ablation)."""
    cohort = load_cohort(manifest)
    halo_label = int(max(label_values)) + 1
    parts = {k: [] for k in ("coords", "intensity", "label", "weight", "stack")}
    covs, ids, ages = [], [], []
    grid = None
    support = None
    for s, record in enumerate(cohort.stacks):
        t2 = load_nifti(record.t2w)
        seg = load_labels(record.seg)
        mask = load_nifti(record.mask, dtype=None).array > 0 if record.mask else seg.array > 0
        if grid is None:
            grid = (t2.shape, t2.voxel_to_ras)
        elif t2.shape != grid[0] or not np.allclose(t2.voxel_to_ras, grid[1], atol=1e-3):
            raise ValueError(f"{cohort.manifest_path} row {record.row}: {record.t2w} is not on the grid of the "
                             f"first stack; register every stack to one template grid")
        weight_path = record.extra.get("Weight")
        base = cohort.manifest_path.parent
        if uniform_weights:
            weight = mask.astype(np.float32)
        else:
            weight = load_nifti(base / weight_path).array if weight_path else np.where(mask, w_int, 0.0)
        halo = (ndimage.gaussian_filter(mask.astype(np.float32), halo_sigma_voxels) > halo_threshold) & ~mask
        support = (mask | halo) if support is None else (support | mask | halo)
        normalised = brain_normalised(t2.array, mask)
        for region, is_halo in ((mask, False), (halo, True)):
            ijk = np.argwhere(region)
            parts["coords"].append(apply_matrix(t2.voxel_to_ras, ijk).astype(np.float32))
            if is_halo:
                parts["intensity"].append(np.zeros(len(ijk), np.float32))
                parts["label"].append(np.full(len(ijk), halo_label, np.int64))
                parts["weight"].append(np.full(len(ijk), w_int, np.float32))
            else:
                parts["intensity"].append(normalised[region])
                parts["label"].append(seg.array[region].astype(np.int64))
                parts["weight"].append(weight[region].astype(np.float32))
            parts["stack"].append(np.full(len(ijk), s, np.int64))
        cov_text = record.extra.get("psf_cov_mm2", "")
        if cov_text:
            covs.append(np.array([float(v) for v in cov_text.split(",")]).reshape(3, 3))
        else:
            sigma = np.broadcast_to(np.asarray(isotropic_sigma_mm if isotropic_sigma_mm is not None else 1.0), (3,))
            covs.append(np.diag(sigma ** 2))
        ids.append(record.subject_id)
        ages.append(record.scan_age)
    shape, affine = grid
    corners = apply_matrix(affine, np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                                             for k in (0, shape[2] - 1)], dtype=np.float64))
    lo_c, hi_c = corners.min(0), corners.max(0)
    return PackedCohort(
        torch.from_numpy(np.concatenate(parts["coords"])), torch.from_numpy(np.concatenate(parts["intensity"])),
        torch.from_numpy(np.concatenate(parts["label"])), torch.from_numpy(np.concatenate(parts["weight"])),
        torch.from_numpy(np.concatenate(parts["stack"])), torch.as_tensor(np.stack(covs), dtype=torch.float32),
        ids, ages, halo_label, support, (lo_c + hi_c) / 2, (hi_c - lo_c) / 2, affine, shape)


def psf_jitter(coords_mm: torch.Tensor, chol_mm: torch.Tensor, samples: int, generator=None) -> torch.Tensor:
    """(N, 3) coordinates and (N, 3, 3) Cholesky factors → (N, P, 3) Gaussian-jittered coordinates (mm)."""
    eps = torch.randn(coords_mm.shape[0], samples, 3, generator=generator, device=coords_mm.device,
                      dtype=coords_mm.dtype)
    return coords_mm[:, None, :] + torch.einsum("nij,npj->npi", chol_mm, eps)


def weighted_loss(pred: torch.Tensor, intensity: torch.Tensor, label: torch.Tensor, weight: torch.Tensor,
                  class_weights: torch.Tensor, metric: str = "l1", seg_weight: float = 1.0):
    """Σw·ℓ_int/Σw + seg_weight·Σw·CE/Σw (CE with class weights), as the reference; returns (total, int, seg)."""
    diff = pred[:, 0] - intensity
    per_voxel = diff.abs() if metric == "l1" else diff * diff
    norm = weight.sum().clamp_min(1e-12)
    l_int = (weight * per_voxel).sum() / norm
    ce = torch.nn.functional.cross_entropy(pred[:, 1:], label, weight=class_weights, reduction="none")
    l_seg = (weight * ce).sum() / norm
    return l_int + seg_weight * l_seg, l_int, l_seg
