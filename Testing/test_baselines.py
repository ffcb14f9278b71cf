"""The GKR-weighted mean atlas baseline: exact weighted means and votes on two synthetic aligned stacks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from infanite.evaluation.baselines import gkr_mean_atlas
from infanite.io.images import Volume, load_labels, load_nifti, save_nifti

SHAPE = (4, 4, 4)
AFFINE = np.array([[2.0, 0, 0, -4.0], [0, 2.0, 0, -5.0], [0, 0, 2.0, -6.0], [0, 0, 0, 1]])


def _write_stack(folder, sid, ga, t2, seg, weight):
    names = {k: f"stacks/{sid}_{k}.nii.gz" for k in ("T2w", "dseg", "mask", "weight")}
    save_nifti(Volume(t2.astype(np.float32), AFFINE), folder / names["T2w"])
    save_nifti(Volume(seg.astype(np.int16), AFFINE), folder / names["dseg"])
    save_nifti(Volume((seg > 0).astype(np.uint8), AFFINE), folder / names["mask"])
    save_nifti(Volume(weight.astype(np.float32), AFFINE), folder / names["weight"])
    return f"{sid}\t{ga}\t{names['T2w']}\t{names['dseg']}\t{names['mask']}\t{sid}\t{names['weight']}"


@pytest.fixture()
def two_stacks(tmp_path):
    """Stack A (GA 30.0) and B (GA 30.5).  A's mask: x < 3; B's mask: x ≥ 1 (so x = 3 is B only).

    A: T2 10 where y < 2, 30 elsewhere → normalised 0 / 1; labels 1 (WM).  B: T2 = 2 + 2·z over its mask
    (z = 0..3 → normalised z / 3); labels 5 (cGM).  Weights W: A 0.8 everywhere in its mask; B 1.6 where z ≥ 2,
    0.8 elsewhere in its mask.
    """
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    mask_a, mask_b = x < 3, x >= 1
    t2_a = np.where(mask_a, np.where(y < 2, 10.0, 30.0), 0.0)
    t2_b = np.where(mask_b, 2.0 + 2.0 * z, 0.0)
    seg_a, seg_b = np.where(mask_a, 1, 0), np.where(mask_b, 5, 0)
    w_a = np.where(mask_a, 0.8, 0.0)
    w_b = np.where(mask_b, np.where(z >= 2, 1.6, 0.8), 0.0)
    rows = ["subject_id\tscan_age\tT2w\tSeg\tMask\tsubject\tWeight",
            _write_stack(tmp_path, "a", 30.0, t2_a, seg_a, w_a), _write_stack(tmp_path, "b", 30.5, t2_b, seg_b, w_b)]
    (tmp_path / "registered.tsv").write_text("\n".join(rows) + "\n")
    expected = {"a": np.where(y < 2, 0.0, 1.0), "b": z / 3.0, "mask_a": mask_a, "mask_b": mask_b,
                "w_a": w_a, "w_b": w_b}
    return tmp_path / "registered.tsv", expected


def test_plain_weighted_mean_and_vote(two_stacks, tmp_path):
    tsv, e = two_stacks
    out = tmp_path / "plain"
    summary = gkr_mean_atlas(tsv, [30.0], out, sigma_weeks=0.5, clean=False)
    wa, wb = 1.0, math.exp(-0.5)                      # kernel at target 30: A at 0 σ, B at 1 σ
    wa, wb = wa / (wa + wb), wb / (wa + wb)
    t2 = load_nifti(out / "atlas_ga-30.0_T2w.nii.gz")
    seg = load_labels(out / "atlas_ga-30.0_dseg.nii.gz")
    assert np.allclose(t2.voxel_to_ras, AFFINE) and t2.shape == SHAPE
    assert summary["ga"]["30.0"]["n_stacks_used"] == 2
    both = e["mask_a"] & e["mask_b"]
    only_a = e["mask_a"] & ~e["mask_b"]
    only_b = e["mask_b"] & ~e["mask_a"]
    # overlap: exact weighted mean; A is heavier, so its label (WM = 1) wins
    assert np.allclose(t2.array[both], (wa * e["a"] + wb * e["b"])[both], atol=1e-6)
    assert np.all(seg.array[both] == 1)
    # A only: A's label beats B's background vote; intensity = A's
    assert np.all(seg.array[only_a] == 1)
    assert np.allclose(t2.array[only_a], e["a"][only_a], atol=1e-6)
    # B only: A's background vote (heavier) wins → background, intensity 0
    assert np.all(seg.array[only_b] == 0) and np.all(t2.array[only_b] == 0)


def test_weight_maps_reweight_observed_voxels(two_stacks, tmp_path):
    tsv, e = two_stacks
    out = tmp_path / "weighted"
    gkr_mean_atlas(tsv, [30.0], out, sigma_weeks=0.5, use_weight_maps=True, clean=False)
    wa, wb = 1.0 / (1.0 + math.exp(-0.5)), math.exp(-0.5) / (1.0 + math.exp(-0.5))
    t2 = load_nifti(out / "atlas_ga-30.0_T2w.nii.gz").array
    seg = load_labels(out / "atlas_ga-30.0_dseg.nii.gz").array
    both = e["mask_a"] & e["mask_b"]
    va, vb = wa * e["w_a"], wb * e["w_b"]
    assert np.allclose(t2[both], ((va * e["a"] + vb * e["b"]) / (va + vb))[both], atol=1e-6)
    # where B is observed (W 1.6, z ≥ 2) it outweighs A (0.8 · wa < 1.6 · wb): B's label 5; elsewhere A's
    z = np.indices(SHAPE)[2]
    assert np.all(seg[both & (z >= 2)] == 5) and np.all(seg[both & (z < 2)] == 1)
    # B only, observed: B's 1.6·wb against A's background vote 0.8·wa → B wins; not observed → background
    only_b = e["mask_b"] & ~e["mask_a"]
    assert np.all(seg[only_b & (z >= 2)] == 5) and np.all(seg[only_b & (z < 2)] == 0)
    assert np.allclose(t2[only_b & (z >= 2)], e["b"][only_b & (z >= 2)], atol=1e-6)


def test_far_target_uses_the_nearest_stack(two_stacks, tmp_path):
    tsv, e = two_stacks
    out = tmp_path / "far"
    summary = gkr_mean_atlas(tsv, [38.0], out, clean=False)    # A at 16 σ, B at 15 σ: ratio e^-15.5 < 1e-6
    assert summary["ga"]["38.0"]["n_stacks_used"] == 1 and summary["ga"]["38.0"]["warnings"]
    seg = load_labels(out / "atlas_ga-38.0_dseg.nii.gz").array
    assert np.array_equal(seg, np.where(e["mask_b"], 5, 0))
