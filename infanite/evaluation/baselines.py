"""Non-learned atlas baselines built from a registered cohort (for ``benchmarks/atlas_quality.py``).

:func:`gkr_mean_atlas` is the classical "average the aligned stacks" atlas, with the same Gaussian kernel over
GA as the INR atlas (:func:`infanite.atlas.kernel.gkr_weights`, σ 0.5 weeks by default).  For a target GA *t*, with
``w_s`` the kernel weight of stack *s* (weights summing to 1), ``I_s`` its registered T2 min–max normalised over
its brain mask ``M_s`` (clipped at 0, as :func:`infanite.inr.data.pack_cohort` does for training) and ``v_s`` a
per-voxel factor (1, or the stack's weight map ``W_s`` when ``use_weight_maps``)::

    intensity(x) = Σ_s w_s v_s(x) I_s(x) [x ∈ M_s]  /  Σ_s w_s v_s(x) [x ∈ M_s]
    vote_l(x)    = Σ_s w_s v_s(x) [seg_s(x) = l]   for each tissue label l,  inside M_s
    vote_0(x)    = Σ_s w_s b      [x ∉ M_s]         background (b = 1, or ``background_weight`` with W maps)
    dseg(x)      = argmax_l vote_l(x)                (ties: the lower label value, background first)

Background takes part in the vote, so the atlas brain is a weighted majority of the stacks' masks rather than
their union.  The W maps are 0 outside the brain, so with ``use_weight_maps`` a voxel outside stack *s*'s mask
votes background with ``w_s · background_weight`` (default ``w_int`` = 0.8, the weight the INR gives to its
background halo): W then reweights observed (1.6) against interpolated (0.8) brain voxels only.  Stacks whose
kernel weight is below ``min_weight`` (relative to the largest) are skipped (their contribution is < 1e-6).

The label map is post-processed exactly like the INR atlas (:func:`infanite.atlas.labels.clean_labels`: small islands
reassigned, largest brain component kept) unless ``clean=False``, and the intensity is set to 0 outside the
labelled brain, as :mod:`infanite.atlas.generate` does.  Files are written atomically on the registered grid, named like
the INR atlas: ``atlas_ga-<GA:.1f>_T2w.nii.gz`` (float32) and ``atlas_ga-<GA:.1f>_dseg.nii.gz``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from infanite.atlas.kernel import gkr_weights
from infanite.atlas.labels import clean_labels
from infanite.io.layout import atlas_filenames
from infanite.io.cohort_checks import load_cohort
from infanite.io.images import Volume, load_labels, load_nifti, save_nifti
from infanite.inr.data import brain_normalised
from infanite.labels import default_label_table


def gkr_mean_atlas(registered_tsv, ga_weeks, out_dir, sigma_weeks: float = 0.5, use_weight_maps: bool = False,
                   *, background_weight: float = 0.8, label_values=None, clean: bool = True,
                   min_weight: float = 1e-6) -> dict:
    """Write the GKR-weighted mean atlas of a ``registered.tsv`` at each GA of ``ga_weeks`` into ``out_dir``.

    ``use_weight_maps`` multiplies each stack's weight voxelwise by its ``Weight`` map (the ``registered.tsv``
    column written by ``infanite register``); ``background_weight`` is then the weight of a background vote.
    ``label_values`` are the tissue labels (default: the CRL 8-class table); seg values not in it count as
    background.  Returns ``{"out_dir", "ga": {"<GA>": {"files", "ess", "n_stacks_used", "warnings"}}}``.
    """
    registered_tsv = Path(registered_tsv)
    out_dir = Path(out_dir)
    cohort = load_cohort(registered_tsv, ga_range=(0.0, 100.0), check_images=False)
    base = cohort.manifest_path.parent
    labels = [int(v) for v in (label_values if label_values is not None else default_label_table().values)]
    lut_size = max(labels) + 1
    label_index = np.zeros(max(lut_size, 1), np.int64)            # seg value → vote channel (0 = background)
    for i, value in enumerate(labels, start=1):
        label_index[value] = i
    if use_weight_maps:
        missing = [r.subject_id for r in cohort.stacks if not r.extra.get("Weight")]
        if missing:
            raise ValueError(f"{registered_tsv}: no Weight map for stack(s) {', '.join(missing[:5])}; "
                             f"use the registered.tsv written by 'infanite register'")
    ages = [r.scan_age for r in cohort.stacks]
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"out_dir": str(out_dir), "ga": {}}
    cache: dict[int, tuple] = {}
    grid = None
    for ga in ga_weeks:
        kernel = gkr_weights(ages, float(ga), sigma_weeks)
        used = [s for s, w in enumerate(kernel.weights) if w > min_weight * kernel.weights.max()]
        intensity_sum = intensity_norm = votes = None
        for s in [k for k in cache if k not in used]:     # keep only the stacks this GA uses (memory)
            del cache[s]
        for s in used:
            if s not in cache:       # one stack's arrays are read once per call (GA windows overlap)
                record = cohort.stacks[s]
                t2 = load_nifti(record.t2w)
                if grid is None:
                    grid = (t2.shape, t2.voxel_to_ras)
                elif t2.shape != grid[0] or not np.allclose(t2.voxel_to_ras, grid[1], atol=1e-3):
                    raise ValueError(f"{registered_tsv} row {record.row}: {record.t2w} is not on the grid of the "
                                     f"other stacks; register every stack to one template grid")
                if record.seg is None:
                    raise ValueError(f"{registered_tsv} row {record.row}: stack {record.subject_id} has no Seg")
                seg = load_labels(record.seg).array
                mask = (load_nifti(record.mask, dtype=None).array > 0) if record.mask else seg > 0
                channel = np.where((seg >= 0) & (seg < lut_size), label_index[np.clip(seg, 0, lut_size - 1)], 0)
                channel = np.where(mask, channel, 0).astype(np.int16)
                factor = (load_nifti(base / record.extra["Weight"]).array if use_weight_maps
                          else mask.astype(np.float32))
                factor = np.where(mask, factor, 0.0).astype(np.float32)
                cache[s] = (brain_normalised(t2.array, mask), mask, channel, factor)
            values, mask, channel, factor = cache[s]
            w = float(kernel.weights[s])
            if votes is None:
                intensity_sum = np.zeros(values.shape, np.float64)
                intensity_norm = np.zeros(values.shape, np.float64)
                votes = np.zeros((len(labels) + 1, *values.shape), np.float64)
            brain_w = w * factor.astype(np.float64)
            intensity_sum += brain_w * values
            intensity_norm += brain_w
            background = np.where(mask, 0.0, w * (background_weight if use_weight_maps else 1.0))
            votes[0] += background
            for i in range(1, len(labels) + 1):       # inside the mask; channel 0 there: unlabelled brain
                sel = channel == i
                votes[i][sel] += brain_w[sel]
            unlabelled = mask & (channel == 0)
            votes[0][unlabelled] += brain_w[unlabelled]
        affine = grid[1]
        winner = np.argmax(votes, axis=0)                       # ties → the lower channel (background first)
        lut = np.array([0] + labels, np.int64)
        dseg = lut[winner]
        if clean:
            dseg, _ = clean_labels(dseg)
        mean = np.divide(intensity_sum, intensity_norm, out=np.zeros_like(intensity_sum), where=intensity_norm > 0)
        mean = np.where(dseg > 0, mean, 0.0).astype(np.float32)
        names = atlas_filenames(ga)
        save_nifti(Volume(mean, affine), out_dir / names["T2w"], dtype=np.float32)
        save_nifti(Volume(dseg.astype(np.int16), affine), out_dir / names["dseg"],
                   dtype=np.uint8 if max(labels) < 256 else np.int16)
        summary["ga"][f"{float(ga):.1f}"] = {"files": {"T2w": names["T2w"], "dseg": names["dseg"]},
                                             "ess": round(kernel.ess, 4), "n_stacks_used": len(used),
                                             "warnings": list(kernel.warnings)}
    return summary


__all__ = ["gkr_mean_atlas"]
