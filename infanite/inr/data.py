"""Training data packed once into contiguous tensors, and the data terms.

Two sources (``data.term``): the reference's, every registered stack resampled onto the template grid
(:func:`pack_cohort`, here: brain + halo voxels of the resampled stacks, weighted by the W maps), and the acquired
samples themselves (:func:`infanite.inr.samples.pack_acquired`).  Per sample: template RAS coordinates (mm),
intensity (min–max normalised per stack over its brain voxels), label (the Seg value; ``halo_label`` for the
background halo around the brain, as in the reference; ``BRAIN_LABEL`` where a stack has no Seg), weight,
stack index and fetus index.  Per stack: the slice-aware PSF covariance in template space (mm², from
``registered.tsv``'s ``psf_cov_mm2``) and the GA.

Data terms: :func:`weighted_loss` (the reference: the mean over the P PSF samples compared with the target,
L1 or MSE — biased toward blur, since E[(mean − y)²] = (Kf − y)² + Var_PSF(f)/P) and :func:`split_psf_loss`
(the product of the errors of two independent halves of the P samples, whose expectation is exactly
(Kf − y)²: unbiased for MSE).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from infanite.io.cohort_checks import load_cohort
from infanite.geometry import apply_matrix, voxel_spacing
from infanite.io.images import load_labels, load_nifti


#: label of a sample that teaches the intensity only
IGNORE_LABEL = -1
#: label of a brain voxel of a stack with a brain mask and no tissue segmentation (a mask-only stack): it is some
#: tissue, which one is unknown; the label loss is −log P(any tissue class) (the classes other than background
#: and the halo), so mask-only stacks teach where the brain is, and stacks with a Seg which tissue it is
BRAIN_LABEL = -2


@dataclass
class PackedCohort:
    coords_mm: torch.Tensor      # (V, 3) float32, template RAS
    intensity: torch.Tensor      # (V,) float32 in [0, 1]
    label: torch.Tensor          # (V,) int64 (BRAIN_LABEL: brain, tissue unknown)
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
    stack_fetus: list = None     # (S,) fetus index of each stack
    fetus_ids: list = None       # fetus (``subject``) names, in first-seen order
    source: str = "resampled"    # "resampled" (the template grid) or "acquired" (each stack's own voxels)
    slice_thickness_mm: list = None    # (S,) slice thickness of each acquired stack (mm)
    finest_spacing_mm: float = None    # the finest voxel spacing of the data (mm)
    fetus_support: np.ndarray = None   # (F, *shape) bool: each fetus's stacks' brain + halo on the grid
    slice_index: torch.Tensor = None   # (V,) int64: each acquired sample's slice (0..L−1; acquired samples only)
    slice_stack: torch.Tensor = None   # (L,) int64: each slice's stack
    slice_centre_mm: torch.Tensor = None   # (L, 3) float32: each slice's centre, template RAS mm
    slice_number: torch.Tensor = None  # (L,) int64: each slice's through-plane voxel index in its stack

    @property
    def n_voxels(self) -> int:
        return int(self.coords_mm.shape[0])

    def to(self, device) -> "PackedCohort":
        for name in ("coords_mm", "intensity", "label", "weight", "stack", "psf_cov_mm2", "slice_index", "slice_stack",
                     "slice_centre_mm"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self


def fetus_index(records) -> tuple[list, list]:
    """``(stack → fetus index, fetus names)`` from the records' ``subject`` (first-seen order)."""
    names: list = []
    index = []
    for record in records:
        if record.subject not in names:
            names.append(record.subject)
        index.append(names.index(record.subject))
    return index, names


def training_grid(records, manifest) -> tuple:
    """The template grid every registered stack lies on (shape, voxel_to_ras); ``ValueError`` naming the row of a
    stack on another grid."""
    from infanite.io.images import read_header

    grid = None
    for record in records:
        shape, affine = read_header(record.t2w)
        if grid is None:
            grid = (tuple(shape), np.asarray(affine))
        elif tuple(shape) != grid[0] or not np.allclose(affine, grid[1], atol=1e-3):
            raise ValueError(f"{manifest} row {record.row}: {record.t2w} is not on the grid of the first stack; "
                             f"register every stack to one template grid")
    return grid


def grid_box(shape, affine) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half extent (mm, RAS) of a grid's voxel-centre box."""
    corners = apply_matrix(affine, np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                                             for k in (0, shape[2] - 1)], dtype=np.float64))
    lo, hi = corners.min(0), corners.max(0)
    return (lo + hi) / 2, (hi - lo) / 2


def psf_covariance(record, isotropic_sigma_mm=None) -> np.ndarray:
    """The stack's PSF covariance in template axes (mm², ``psf_cov_mm2`` of registered.tsv), else isotropic."""
    cov_text = record.extra.get("psf_cov_mm2", "")
    if cov_text:
        return np.array([float(v) for v in cov_text.split(",")]).reshape(3, 3)
    sigma = np.broadcast_to(np.asarray(isotropic_sigma_mm if isotropic_sigma_mm is not None else 1.0), (3,))
    return np.diag(sigma ** 2)


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
    grid = training_grid(cohort.stacks, cohort.manifest_path)
    stack_fetus, fetus_ids = fetus_index(cohort.stacks)
    fetus_support = np.zeros((len(fetus_ids),) + tuple(grid[0]), dtype=bool)
    for s, record in enumerate(cohort.stacks):
        t2 = load_nifti(record.t2w)
        seg = load_labels(record.seg) if record.seg else None
        mask = load_nifti(record.mask, dtype=None).array > 0 if record.mask else seg.array > 0
        weight_path = record.extra.get("Weight")
        base = cohort.manifest_path.parent
        if uniform_weights:
            weight = mask.astype(np.float32)
        else:
            weight = load_nifti(base / weight_path).array if weight_path else np.where(mask, w_int, 0.0)
        halo = (ndimage.gaussian_filter(mask.astype(np.float32), halo_sigma_voxels) > halo_threshold) & ~mask
        fetus_support[stack_fetus[s]] |= mask | halo
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
                parts["label"].append(seg.array[region].astype(np.int64) if seg is not None else
                                      np.full(len(ijk), BRAIN_LABEL, np.int64))
                parts["weight"].append(weight[region].astype(np.float32))
            parts["stack"].append(np.full(len(ijk), s, np.int64))
        covs.append(psf_covariance(record, isotropic_sigma_mm))
        ids.append(record.subject_id)
        ages.append(record.scan_age)
    shape, affine = grid
    centre, half = grid_box(shape, affine)
    return PackedCohort(
        torch.from_numpy(np.concatenate(parts["coords"])), torch.from_numpy(np.concatenate(parts["intensity"])),
        torch.from_numpy(np.concatenate(parts["label"])), torch.from_numpy(np.concatenate(parts["weight"])),
        torch.from_numpy(np.concatenate(parts["stack"])), torch.as_tensor(np.stack(covs), dtype=torch.float32),
        ids, ages, halo_label, fetus_support.any(0), centre, half, affine, shape, stack_fetus, fetus_ids,
        "resampled", [r.slice_thickness_mm for r in cohort.stacks], float(np.min(voxel_spacing(affine))),
        fetus_support)


def psf_jitter(coords_mm: torch.Tensor, chol_mm: torch.Tensor, samples: int, generator=None) -> torch.Tensor:
    """(N, 3) coordinates and (N, 3, 3) Cholesky factors → (N, P, 3) Gaussian-jittered coordinates (mm)."""
    eps = torch.randn(coords_mm.shape[0], samples, 3, generator=generator, device=coords_mm.device,
                      dtype=coords_mm.dtype)
    return coords_mm[:, None, :] + torch.einsum("nij,npj->npi", chol_mm, eps)


def loss_norms(weight: torch.Tensor, label: torch.Tensor, intensity: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisers of the data term over a batch: (Σw over the samples with an intensity (a NaN intensity is
    none: :func:`intensity_weight`) for intensity, Σw over the labelled samples for the segmentation).
    Data-parallel training computes them on the global batch and passes them to every rank's shard (``norms`` of
    :func:`weighted_loss` / :func:`split_psf_loss`), so that the shards' terms add up."""
    w_int = weight if intensity is None else intensity_weight(weight, intensity)[0]
    return w_int.sum().clamp_min(1e-12), (weight * (label != IGNORE_LABEL)).sum().clamp_min(1e-12)


def intensity_weight(weight: torch.Tensor, intensity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, target) of the intensity term: a sample whose intensity is NaN has no intensity target (a halo
    sample under ``data.halo_intensity: none``), so its weight there is 0 and its target a finite placeholder;
    its label still counts."""
    known = torch.isfinite(intensity)
    return weight * known, torch.where(known, intensity, torch.zeros_like(intensity))


def _segmentation_loss(logits: torch.Tensor, label: torch.Tensor, weight: torch.Tensor,
                       class_weights: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
    """Σw·CE/Σw over the samples that have a label (``IGNORE_LABEL`` excluded); a :data:`BRAIN_LABEL` sample
    contributes −log Σ_tissue softmax (the classes other than 0 and the last, the halo).  ``norm`` replaces the
    batch's Σw (a shard of a larger batch)."""
    has = label != IGNORE_LABEL
    brain = label == BRAIN_LABEL
    ce = torch.nn.functional.cross_entropy(logits, label.clamp_min(0), weight=class_weights, reduction="none")
    if bool(brain.any()):
        log_all = torch.logsumexp(logits.float(), dim=1)
        log_tissue = torch.logsumexp(logits[:, 1:-1].float(), dim=1)
        ce = torch.where(brain, (log_all - log_tissue).to(ce.dtype), ce)
    w = weight * has
    return (w * ce).sum() / (w.sum().clamp_min(1e-12) if norm is None else norm)


def weighted_loss(pred: torch.Tensor, intensity: torch.Tensor, label: torch.Tensor, weight: torch.Tensor,
                  class_weights: torch.Tensor, metric: str = "l1", seg_weight: float = 1.0, norms=None):
    """The reference's data term on the mean prediction over the PSF samples ``pred`` (N, 1 + classes):
    Σw·ℓ_int/Σw + seg_weight·Σw·CE/Σw (CE with class weights); returns (total, int, seg).  ``norms``: the
    (intensity, segmentation) normalisers of the global batch (:func:`loss_norms`) when this is a shard of it."""
    w_int, intensity = intensity_weight(weight, intensity)
    diff = pred[:, 0] - intensity
    per_voxel = diff.abs() if metric == "l1" else diff * diff
    norm_int, norm_seg = norms if norms is not None else (w_int.sum().clamp_min(1e-12), None)
    l_int = (w_int * per_voxel).sum() / norm_int
    l_seg = _segmentation_loss(pred[:, 1:], label, weight, class_weights, norm_seg)
    return l_int + seg_weight * l_seg, l_int, l_seg


def split_psf_loss(samples: torch.Tensor, intensity: torch.Tensor, label: torch.Tensor, weight: torch.Tensor,
                   class_weights: torch.Tensor, seg_weight: float = 1.0, norms=None):
    """The unbiased data term on the P PSF samples of each target, ``samples`` (N, P, 1 + classes).

    Intensity: Σw·(ā_A − y)(ā_B − y)/Σw with ā_A, ā_B the means of the two halves of the P samples (P even;
    P = 1 is plain MSE).  The halves are independent, so the expectation of the product is (Kf − y)², the squared
    error of the PSF-convolved field, with no variance term that rewards flattening the field inside the PSF.
    A single product may be negative; the batch mean is what is minimised.  Labels: class-weighted CE of the
    mean logits over the P samples.  Returns (total, int, seg).  ``norms`` as for :func:`weighted_loss`."""
    p = samples.shape[1]
    if p == 1:
        a = b = samples[:, 0, 0]
    else:
        half = p // 2
        a, b = samples[:, :half, 0].mean(1), samples[:, half:2 * half, 0].mean(1)
    w_int, intensity = intensity_weight(weight, intensity)
    norm_int, norm_seg = norms if norms is not None else (w_int.sum().clamp_min(1e-12), None)
    l_int = (w_int * (a - intensity) * (b - intensity)).sum() / norm_int
    l_seg = _segmentation_loss(samples[:, :, 1:].mean(1), label, weight, class_weights, norm_seg)
    return l_int + seg_weight * l_seg, l_int, l_seg
