"""The acquired samples themselves: every voxel of every stack, at its registered position in template space.

A stack's voxel centre (stack RAS mm) maps into template RAS by the inverse of its registration
(``template_to_stack`` of ``registered.tsv``); its slice-aware PSF (``psf_cov_mm2``, already rotated into template
axes by the registration) goes with it.  Nothing is resampled, so no interpolated voxel becomes a target: this is
how slice-to-volume methods (NeSVoR, SVRTK) treat slices, and what removes the pull toward interpolation blur of
training on stacks resampled onto the template grid (``data.term: reference``).

Per stack: the brain voxels (``source_Mask``, else ``source_Seg > 0``) with their intensity (min–max normalised
over the brain, as the resampled data) and label (the stack's own ``source_Seg``; ``BRAIN_LABEL``, "some
tissue", without one), and the halo: voxels within ``halo_mm`` of the brain, outside it, as the background-halo
class at weight ``halo_weight`` (``data.halo_weight``) relative to a brain voxel, with intensity 0, the
stack's own value there, or none (``data.halo_intensity``: :func:`halo_targets`).  The template
grid and its box still come from the registration's resampled stacks (the atlas is generated on that grid's
field of view), and the support (where the network is trained, outside which the atlas is background) is the
union of the registered brain masks dilated by the same ``halo_mm``.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from infanite.geometry import apply_matrix, voxel_spacing
from infanite.inr.config import HALO_INTENSITIES
from infanite.inr.data import (BRAIN_LABEL, PackedCohort, brain_normalised, fetus_index, grid_box, psf_covariance,
                               training_grid)
from infanite.io.cohort_checks import load_cohort
from infanite.io.images import load_labels, load_nifti
from infanite.registration.register import SOURCE_COLUMNS

#: default weight of a halo sample relative to a brain sample (``data.halo_weight``)
HALO_WEIGHT = 0.5


def stack_pose(record, manifest) -> np.ndarray:
    """``template_to_stack`` (4×4, RAS mm) of a registered stack; ``ValueError`` naming the row when it is absent."""
    text = record.extra.get("template_to_stack", "")
    try:
        matrix = np.array([float(v) for v in text.split(",")], dtype=np.float64).reshape(4, 4)
    except ValueError:
        raise ValueError(f"{manifest} row {record.row} ({record.subject_id}): no valid 'template_to_stack' column "
                         f"(16 numbers); register the stacks again with this version, or train on the resampled "
                         f"stacks (--set data.term=reference)") from None
    return matrix


def missing_source_columns(cohort) -> list[str]:
    """The :data:`~infanite.registration.register.SOURCE_COLUMNS` a registered manifest lacks on some row."""
    missing = []
    for column in SOURCE_COLUMNS:
        if column in ("source_Mask", "source_Seg"):
            continue
        if any(not r.extra.get(column) for r in cohort.stacks):
            missing.append(column)
    return missing


def halo_targets(measured: np.ndarray, halo_intensity: str) -> np.ndarray:
    """The intensity targets of a stack's halo samples (``data.halo_intensity``) from what the stack measured
    there (``measured``, normalised as its brain): ``zero`` (the brain-only atlas is 0 outside the brain),
    ``measured`` (the slice profile of a voxel just outside the mask still reaches the brain's bright edge, so the
    stack's own value is what the PSF forward model predicts), ``none`` (NaN: no intensity target, the label only)."""
    if halo_intensity == "zero":
        return np.zeros(measured.shape, np.float32)
    if halo_intensity == "measured":
        return measured.astype(np.float32)
    if halo_intensity == "none":
        return np.full(measured.shape, np.nan, np.float32)
    raise ValueError(f"data.halo_intensity must be one of {', '.join(HALO_INTENSITIES)}; got {halo_intensity!r}")


def pack_acquired(manifest, label_values, halo_mm: float = 4.0, halo_weight: float = HALO_WEIGHT,
                  halo_intensity: str = "zero") -> PackedCohort:
    """Read ``registered.tsv`` and pack every acquired stack voxel of the brain and its halo (see the module
    docstring).  ``label_values`` are the tissue labels; the halo gets ``max(label_values) + 1``.  ``ValueError``
    naming the manifest and the missing column when the manifest does not point back at the acquired stacks."""
    cohort = load_cohort(manifest)
    missing = missing_source_columns(cohort)
    if missing:
        raise ValueError(f"{cohort.manifest_path}: no {', '.join(missing)} column(s): this registered.tsv does not "
                         f"point back at the acquired stacks; register them again with this version, or train on "
                         f"the resampled stacks (--set data.term=reference)")
    halo_label = int(max(label_values)) + 1
    grid = training_grid(cohort.stacks, cohort.manifest_path)
    parts = {k: [] for k in ("coords", "intensity", "label", "weight", "stack", "slice")}
    covs, ids, ages = [], [], []
    stack_fetus, fetus_ids = fetus_index(cohort.stacks)
    fetus_support = np.zeros((len(fetus_ids),) + tuple(grid[0]), dtype=bool)
    finest = float("inf")
    slice_offset, offsets = 0, []
    for s, record in enumerate(cohort.stacks):
        t2 = load_nifti(record.extra["source_T2w"])
        seg = load_labels(record.extra["source_Seg"]) if record.extra.get("source_Seg") else None
        if record.extra.get("source_Mask"):
            brain = load_nifti(record.extra["source_Mask"], dtype=None).array > 0
        elif seg is not None:
            brain = seg.array > 0
        else:
            raise ValueError(f"{cohort.manifest_path} row {record.row} ({record.subject_id}): neither source_Mask "
                             f"nor source_Seg: the acquired stack's brain is unknown")
        spacing = voxel_spacing(t2.voxel_to_ras)
        finest = min(finest, float(spacing.min()))
        outside = ndimage.distance_transform_edt(~brain, sampling=spacing)
        halo = (~brain) & (outside <= float(halo_mm))
        stack_to_template = np.linalg.inv(stack_pose(record, cohort.manifest_path))
        normalised = brain_normalised(t2.array, brain)
        through_plane = int(np.argmax(spacing))                 # the slices are along the widest-spaced axis
        offsets.append(slice_offset)
        for region, is_halo in ((brain, False), (halo, True)):
            ijk = np.argwhere(region)
            parts["slice"].append(slice_offset + ijk[:, through_plane].astype(np.int64))
            ras = apply_matrix(t2.voxel_to_ras, ijk)
            parts["coords"].append(apply_matrix(stack_to_template, ras).astype(np.float32))
            n = len(ijk)
            if is_halo:
                parts["intensity"].append(halo_targets(normalised[region], halo_intensity))
                parts["label"].append(np.full(n, halo_label, np.int64))
                parts["weight"].append(np.full(n, halo_weight, np.float32))
            else:
                parts["intensity"].append(normalised[region])
                parts["label"].append(seg.array[region].astype(np.int64) if seg is not None else
                                      np.full(n, BRAIN_LABEL, np.int64))
                parts["weight"].append(np.ones(n, np.float32))
            parts["stack"].append(np.full(n, s, np.int64))
        slice_offset += int(t2.array.shape[through_plane])
        registered = load_nifti(record.mask, dtype=None) if record.mask else load_labels(record.seg)
        registered_mask = registered.array > 0
        fetus_support[stack_fetus[s]] |= ndimage.distance_transform_edt(
            ~registered_mask, sampling=voxel_spacing(registered.voxel_to_ras)) \
            <= float(halo_mm)
        covs.append(psf_covariance(record))
        ids.append(record.subject_id)
        ages.append(record.scan_age)
    shape, affine = grid
    centre, half = grid_box(shape, affine)
    coords, stacks = np.concatenate(parts["coords"]), np.concatenate(parts["stack"])
    keys = np.concatenate(parts["slice"])
    slices, slice_stack, slice_centre = number_slices(keys, stacks, coords)
    slice_number = np.zeros(len(slice_stack), np.int64)       # each slice's through-plane index in its stack
    slice_number[slices] = keys - np.asarray(offsets, np.int64)[stacks]
    return PackedCohort(
        torch.from_numpy(coords), torch.from_numpy(np.concatenate(parts["intensity"])),
        torch.from_numpy(np.concatenate(parts["label"])), torch.from_numpy(np.concatenate(parts["weight"])),
        torch.from_numpy(stacks), torch.as_tensor(np.stack(covs), dtype=torch.float32),
        ids, ages, halo_label, fetus_support.any(0), centre, half, affine, shape, stack_fetus, fetus_ids,
        "acquired", [r.slice_thickness_mm for r in cohort.stacks], finest, fetus_support,
        torch.from_numpy(slices), torch.from_numpy(slice_stack), torch.from_numpy(slice_centre),
        torch.from_numpy(slice_number))


def number_slices(slice_keys: np.ndarray, stacks: np.ndarray, coords_mm: np.ndarray) -> tuple:
    """Number the slices that hold samples 0..L−1 (in order of ``slice_keys``, unique per stack and slice):
    (each sample's slice (V,), each slice's stack (L,), each slice's centre, the mean of its samples' template RAS
    coordinates (L, 3) mm)."""
    keys, slices = np.unique(slice_keys, return_inverse=True)
    slices = slices.reshape(-1).astype(np.int64)
    counts = np.bincount(slices, minlength=len(keys)).astype(np.float64)
    centre = np.stack([np.bincount(slices, weights=coords_mm[:, a], minlength=len(keys)) for a in range(3)], 1)
    slice_stack = np.zeros(len(keys), np.int64)
    slice_stack[slices] = stacks
    return slices, slice_stack, (centre / counts[:, None]).astype(np.float32)
