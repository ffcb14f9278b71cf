"""Atlas metrics against analytic values: PSNR/SSIM and their regions, Dice, surface distances (mm, anisotropic
spacing), tissue contrast, volumes (mL) and the same-grid checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from infanite.evaluation import metrics as M
from infanite.io.images import Volume
from infanite.labels import default_label_table
from infanite.reference.normative import NormativeTable, ren2022


def _sphere(shape, spacing, radius_mm, centre_vox=None):
    spacing = np.asarray(spacing, dtype=np.float64)
    centre = (np.asarray(shape) - 1) / 2.0 if centre_vox is None else np.asarray(centre_vox, dtype=np.float64)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return np.linalg.norm((ijk - centre) * spacing, axis=-1) <= radius_mm


@pytest.fixture(scope="module")
def smooth_image():
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=(32, 30, 28)), 2.0)
    mask = _sphere(image.shape, (1, 1, 1), 10.0)
    return image, mask


# ---------------------------------------------------------------------------------------------------------
# PSNR, SSIM and their regions


def test_psnr_identical_is_inf_and_invariant_to_affine_intensity_change(smooth_image):
    image, mask = smooth_image
    assert M.psnr(image, image, mask) == math.inf
    # min–max normalisation over the region removes a positive gain and an offset (up to rounding: > 250 dB)
    assert M.psnr(3.0 * image + 7.0, image, mask) > 250.0
    assert M.ssim(3.0 * image + 7.0, image, mask) == pytest.approx(1.0, abs=1e-9)


def test_psnr_of_a_known_offset_equals_the_analytic_value():
    # reference values in the region span [0, 1] (one voxel at 0, one at 1); every other region voxel of the test
    # is offset by d, so the normalisation leaves the offset intact: MSE = d² (N − 2) / N
    rng = np.random.default_rng(1)
    reference = np.zeros((12, 12, 12))
    region = np.zeros_like(reference, dtype=bool)
    region[2:10, 2:10, 2:10] = True
    n = int(region.sum())
    reference[region] = rng.uniform(0.2, 0.7, n)
    idx = np.argwhere(region)
    lo, hi = tuple(idx[0]), tuple(idx[-1])
    reference[lo], reference[hi] = 0.0, 1.0
    d = 0.1
    test = reference.copy()
    test[region] += d
    test[lo], test[hi] = 0.0, 1.0
    expected = 10 * math.log10(n / ((n - 2) * d * d))
    assert M.psnr(test, reference, region) == pytest.approx(expected, rel=1e-9)
    # a larger offset gives a lower PSNR by exactly 20 log10(2) when doubled
    test2 = reference.copy()
    test2[region] += 2 * d
    test2[lo], test2[hi] = 0.0, 1.0
    assert M.psnr(test, reference, region) - M.psnr(test2, reference, region) == pytest.approx(20 * math.log10(2))


def test_intensity_error_by_label_puts_a_known_offset_in_its_tissue():
    # reference in the region spans [0, 1] (two voxels of label 1 pinned at 0 and 1); the test is the reference
    # plus d on every label-2 voxel only, so the normalised error is d there and 0 elsewhere
    rng = np.random.default_rng(2)
    reference = np.zeros((14, 14, 14))
    region = np.zeros_like(reference, dtype=bool)
    region[2:12, 2:12, 2:12] = True
    seg = np.zeros(reference.shape, np.int16)
    seg[3:11, 3:11, 3:7] = 1
    seg[3:11, 3:11, 7:11] = 2                       # the region's rim (one voxel thick) keeps label 0
    reference[region] = rng.uniform(0.2, 0.7, int(region.sum()))
    reference[3, 3, 3], reference[10, 10, 6] = 0.0, 1.0
    d = 0.05
    test = reference + d * (seg == 2)
    out = M.intensity_error_by_label(test, reference, region, seg, [1, 2, 3])
    n = int(region.sum())
    two = out["per_label"][2]
    assert two["fraction"] == pytest.approx(np.count_nonzero(seg == 2) / n)
    assert two["mse"] == pytest.approx(d * d, rel=1e-9)
    assert two["bias"] == pytest.approx(d, rel=1e-9)
    assert two["share"] == pytest.approx(1.0)
    for part in (out["per_label"][1], out["outside"]):
        assert part["mse"] == pytest.approx(0.0, abs=1e-20) and part["share"] == pytest.approx(0.0, abs=1e-12)
    assert out["outside"]["fraction"] == pytest.approx(np.count_nonzero(region & (seg == 0)) / n)
    absent = out["per_label"][3]                                       # no voxel of label 3
    assert absent["fraction"] == 0.0 and absent["share"] == 0.0 and math.isnan(absent["mse"])
    # the region's MSE is the PSNR's, and the parts add up to it
    assert 10 * math.log10(1 / out["mse"]) == pytest.approx(M.psnr(test, reference, region), rel=1e-12)
    # a darker test tissue gives a negative bias
    assert M.intensity_error_by_label(reference - d * (seg == 2), reference, region, seg, [2])[
        "per_label"][2]["bias"] == pytest.approx(-d, rel=1e-9)


def test_intensity_error_by_label_adds_up_to_the_psnr_on_noise(smooth_image):
    image, mask = smooth_image
    rng = np.random.default_rng(3)
    test = image + 0.3 * rng.normal(size=image.shape)
    seg = np.digitize(image, np.quantile(image[mask], [0.3, 0.6])).astype(np.int16) + 1     # labels 1, 2, 3
    seg[~_sphere(image.shape, (1, 1, 1), 8.0)] = 0                                            # a band outside
    out = M.intensity_error_by_label(test, image, mask, seg, [1, 2, 3])
    parts = list(out["per_label"].values()) + [out["outside"]]
    assert sum(p["fraction"] for p in parts) == pytest.approx(1.0)
    assert sum(p["share"] for p in parts) == pytest.approx(1.0)
    assert sum(p["fraction"] * p["mse"] for p in parts) == pytest.approx(out["mse"], rel=1e-12)
    assert out["outside"]["fraction"] > 0
    assert 10 * math.log10(1 / out["mse"]) == pytest.approx(M.psnr(test, image, mask), rel=1e-12)
    with pytest.raises(ValueError, match="reference labels"):
        M.intensity_error_by_label(test, image, mask, seg[:-1], [1, 2, 3])


def test_affine_psnr_forgives_only_an_intensity_map(smooth_image):
    image, mask = smooth_image
    region = np.asarray(mask) > 0
    # any affine map of the reference, a negative gain included, is fitted exactly
    assert M.psnr_affine(-2.0 * image + 5.0, image, mask) == math.inf
    # uncorrelated over the region: reference [0, 0, 1, 1], test [0, 1, 0, 1] → the fit is the mean 0.5, MSE 0.25
    # (6.02 dB), where the min–max PSNR compares the two as they are (MSE 0.5, 3.01 dB)
    reference, test, four = np.zeros((2, 2, 1)), np.zeros((2, 2, 1)), np.ones((2, 2, 1), bool)
    reference[1, :, 0] = 1.0
    test[:, 1, 0] = 1.0
    assert M.psnr_affine(test, reference, four) == pytest.approx(10 * math.log10(4), rel=1e-12)
    assert M.psnr(test, reference, four) == pytest.approx(10 * math.log10(2), rel=1e-12)
    # a constant test maps to the reference's mean: the MSE is the normalised reference's variance
    normalised = M.minmax_normalise(image, region)[region]
    assert M.psnr_affine(np.full_like(image, 3.0), image, mask) == pytest.approx(
        10 * math.log10(1 / normalised.var()), rel=1e-9)
    # never below the min–max PSNR; a compressed contrast with one outlier costs the min–max PSNR, not this one
    rng = np.random.default_rng(3)
    noisy = image + rng.normal(0, 0.05 * float(np.ptp(image[region])), image.shape)
    compressed = 0.5 * noisy
    compressed[tuple(np.argwhere(region)[0])] = float(noisy[region].max()) * 2
    for t in (noisy, compressed):
        assert M.psnr_affine(t, image, mask) >= M.psnr(t, image, mask)
    assert M.psnr_affine(compressed, image, mask) - M.psnr(compressed, image, mask) > 3.0


def test_ssim_is_one_for_identical_images_and_decreases_with_noise(smooth_image):
    image, mask = smooth_image
    assert M.ssim(image, image, mask) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(2)
    noise = rng.normal(size=image.shape) * image[mask].std()
    values = [M.ssim(image + s * noise, image, mask) for s in (0.05, 0.2, 0.8)]
    assert 1.0 > values[0] > values[1] > values[2]


def test_ssim_on_the_cropped_box_equals_the_whole_image_map(smooth_image):
    from skimage.metrics import structural_similarity

    image, _ = smooth_image
    rng = np.random.default_rng(3)
    test = image + 0.3 * image.std() * rng.normal(size=image.shape)
    big = np.zeros((60, 64, 56))
    big_test = np.zeros_like(big)
    big[14:46, 17:47, 14:42] = image
    big_test[14:46, 17:47, 14:42] = test
    region = np.zeros(big.shape, bool)
    region[20:40, 22:40, 20:36] = True
    # the whole-image SSIM map after the same normalisation, averaged over the region
    a, b = M.minmax_normalise(big_test, region), M.minmax_normalise(big, region)
    _, smap = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    assert M.ssim(big_test, big, region) == pytest.approx(float(smap[region].mean()), abs=1e-10)


def test_region_conventions():
    spacing = (1.0, 1.0, 2.0)
    mask = _sphere((40, 40, 24), spacing, 9.0)
    box = M.bounding_box_region(mask)
    dilated = M.brain_mask_region(mask, 2.0, spacing)
    # the brain-mask region is exactly the voxels within 2 mm of the mask (distances in mm on the anisotropic grid)
    within = ndimage.distance_transform_edt(~mask, sampling=spacing) <= 2.0 + 1e-9
    np.testing.assert_array_equal(dilated, within)
    # both contain the mask; the box is the mask's bounding box
    assert np.all(box[mask]) and np.all(dilated[mask])
    idx = np.argwhere(mask)
    expected = np.zeros_like(mask)
    expected[tuple(slice(lo, hi + 1) for lo, hi in zip(idx.min(0), idx.max(0)))] = True
    np.testing.assert_array_equal(box, expected)
    # a sphere's box has corners outside the dilated sphere, the dilation reaches beyond the box faces
    assert np.any(box & ~dilated) and np.any(dilated & ~box)
    # spacing comes from a Volume; dilation 0 gives the mask itself
    vol = Volume(mask.astype(np.uint8), np.diag([*spacing, 1.0]))
    np.testing.assert_array_equal(M.brain_mask_region(vol), dilated)
    np.testing.assert_array_equal(M.brain_mask_region(mask, 0.0, spacing), mask)
    with pytest.raises(ValueError, match="spacing_mm is required"):
        M.brain_mask_region(mask)
    with pytest.raises(ValueError, match="empty"):
        M.bounding_box_region(np.zeros((5, 5, 5)))


def test_psnr_and_ssim_differ_between_the_two_regions(smooth_image):
    image, mask = smooth_image
    test = image + 0.3 * image[mask].std() * np.random.default_rng(4).normal(size=image.shape)
    box = M.bounding_box_region(mask)
    assert M.psnr(test, image, mask) != pytest.approx(M.psnr(test, image, box))
    assert M.ssim(test, image, mask) != pytest.approx(M.ssim(test, image, box))


# ---------------------------------------------------------------------------------------------------------
# Dice and surface distances


def test_dice_of_two_boxes():
    a = np.zeros((30, 30, 30), np.int16)
    b = np.zeros_like(a)
    a[5:15, 5:15, 5:15] = 1          # 1000 voxels
    b[8:18, 5:15, 5:15] = 1          # shifted by 3: overlap 700
    a[20:24, 20:25, 20:22] = 2       # label 2 only in a
    result = M.dice(a, b, [1, 2, 3])
    assert result["per_label"][1] == pytest.approx(2 * 700 / 2000)
    assert result["per_label"][2] == 0.0
    assert math.isnan(result["per_label"][3])               # absent from both: left out of the mean
    assert result["mean"] == pytest.approx((0.7 + 0.0) / 2)
    assert M.dice(a, a, [1, 2])["mean"] == 1.0


def test_concentric_spheres_give_the_radius_difference_with_anisotropic_spacing():
    spacing = (1.0, 1.0, 2.0)
    shape = (48, 48, 24)
    for r1, r2 in ((10.0, 14.0), (12.0, 15.0)):
        a = _sphere(shape, spacing, r1).astype(np.int16)
        b = _sphere(shape, spacing, r2).astype(np.int16)
        result = M.surface_distances(a, b, 1, spacing)
        assert result["note"] is None
        # within a voxel (1 mm in plane) of |r1 − r2|
        assert result["hd95_mm"] == pytest.approx(r2 - r1, abs=1.0)
        assert result["asd_mm"] == pytest.approx(r2 - r1, abs=1.0)
        assert result["asd_mm"] <= result["hd95_mm"] <= result["hd_mm"]
        # symmetric: swapping the images changes nothing
        swapped = M.surface_distances(b, a, 1, spacing)
        assert swapped["hd95_mm"] == result["hd95_mm"]
        assert swapped["asd_mm"] == pytest.approx(result["asd_mm"])


def test_shifted_box_gives_the_shift_in_mm():
    a = np.zeros((30, 30, 20), np.int16)
    a[5:25, 5:25, 5:9] = 3
    b = np.roll(a, 2, axis=2)                   # 2 voxels along the 2 mm axis: 4 mm
    vol_a, vol_b = (Volume(x, np.diag([1.0, 1.0, 2.0, 1.0])) for x in (a, b))
    result = M.surface_distances(vol_a, vol_b, 3)  # spacing from the Volumes
    assert result["hd95_mm"] == pytest.approx(4.0, abs=1e-5)
    assert result["hd_mm"] == pytest.approx(4.0, abs=1e-5)
    assert 0.0 < result["asd_mm"] < 4.0
    # the same shift along a 1 mm axis is 2 mm
    c = np.roll(a, 2, axis=0)
    assert M.surface_distances(a, c, 3, (1.0, 1.0, 2.0))["hd_mm"] == pytest.approx(2.0, abs=1e-5)
    same = M.surface_distances(a, a, 3, (1.0, 1.0, 2.0))
    assert same["hd95_mm"] == same["asd_mm"] == 0.0


def test_symmetric_asd_pools_both_directions_by_hand():
    # a: one voxel; b: a line of 5 voxels along i through it, spacing 1.5 mm along i.
    # surface of a = {a}; surface of b = its 5 voxels.  a→b: [0]; b→a: [3, 1.5, 0, 1.5, 3] mm.
    # pooled [0, 3, 1.5, 0, 1.5, 3]: ASD = 9 / 6 = 1.5 mm (the mean of the two directional means would be 0.9)
    a = np.zeros((11, 5, 5), np.int16)
    b = np.zeros_like(a)
    a[5, 2, 2] = 1
    b[3:8, 2, 2] = 1
    result = M.surface_distances(a, b, 1, (1.5, 1.0, 1.0))
    assert result["asd_mm"] == pytest.approx(1.5, abs=1e-5)
    assert result["hd_mm"] == pytest.approx(3.0, abs=1e-5)
    assert result["hd95_mm"] == pytest.approx(float(np.percentile([0, 3, 1.5, 0, 1.5, 3], 95)), abs=1e-5)


def test_missing_label_gives_nan_with_a_reason():
    a = np.zeros((10, 10, 10), np.int16)
    a[2:5, 2:5, 2:5] = 1
    b = np.zeros_like(a)
    b[3:6, 3:6, 3:6] = 1
    b[6:8, 6:8, 6:8] = 2
    result = M.surface_distances(a, b, 2, 1.0, names=("atlas", "ref"))
    assert math.isnan(result["hd95_mm"]) and math.isnan(result["asd_mm"])
    assert result["note"] == "label 2 absent from atlas"
    both = M.surface_distances(a, b, 5, 1.0)
    assert "absent from test and reference" in both["note"]
    table = M.surface_distance_table(a, b, [1, 2], 1.0)
    assert table["hd95_mm"]["mean"] == table["hd95_mm"]["per_label"][1] > 0
    assert table["notes"] == {2: "label 2 absent from test"}


def test_label_touching_the_image_border():
    a = np.zeros((8, 8, 8), np.int16)
    a[0:4] = 1
    b = np.zeros_like(a)
    b[0:5] = 1
    # the border counts as outside: the faces at i = 0 coincide, the inner faces are 1 voxel apart
    result = M.surface_distances(a, b, 1, 1.0)
    assert result["hd_mm"] == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# tissue contrast and volumes


def test_tct_of_two_gaussian_tissues():
    rng = np.random.default_rng(5)
    seg = np.zeros((40, 40, 40), np.int16)
    seg[:20] = 5
    seg[20:] = 1
    image = np.where(seg == 5, rng.normal(100.0, 10.0, seg.shape), rng.normal(160.0, 20.0, seg.shape))
    expected = 60.0 / math.sqrt(10.0 ** 2 + 20.0 ** 2)
    assert M.tct(image, seg) == pytest.approx(expected, rel=0.02)
    assert M.tct(image, seg, gm_label=1, wm_label=5) == M.tct(image, seg)
    assert math.isnan(M.tct(image, seg, gm_label=3))


def test_box_volumes_in_ml():
    table = default_label_table()
    seg = np.zeros((30, 30, 30), np.int16)
    seg[0:10, 0:20, 0:5] = table.by_abbrev("WM").value       # 1000 voxels
    seg[20:30, 0:10, 0:3] = table.by_abbrev("cGM").value     # 300 voxels
    spacing = (0.8, 0.8, 1.5)
    voxel_mm3 = 0.8 * 0.8 * 1.5
    vol = Volume(seg, np.diag([*spacing, 1.0]))
    tissues = M.tissue_volumes_ml(vol)
    assert tissues["WM"] == pytest.approx(1000 * voxel_mm3 / 1000.0)
    assert tissues["cGM"] == pytest.approx(300 * voxel_mm3 / 1000.0)
    assert tissues["vent"] == 0.0
    assert M.tissue_volumes_ml(seg, voxel_mm3) == pytest.approx(tissues)
    measures = M.measure_volumes_ml(vol)
    assert measures["TBV"] == pytest.approx(1.3 * voxel_mm3)
    assert measures["SBV"] == pytest.approx(1.0 * voxel_mm3)
    assert measures["GMV"] == pytest.approx(0.3 * voxel_mm3)
    assert measures["VV"] == 0.0
    with pytest.raises(ValueError, match="voxel_volume_mm3 is required"):
        M.tissue_volumes_ml(seg)


def test_volume_l1_vs_reference():
    seg = np.zeros((20, 20, 20), np.int16)
    ref = np.zeros_like(seg)
    seg[0:10, 0:10, 0:10] = 1         # WM 1000
    ref[0:10, 0:10, 0:8] = 1          # WM 800 → |1000 − 800| / 800 = 0.25
    seg[15:20, 15:20, 15:19] = 5      # cGM 100
    ref[15:20, 15:20, 15:20] = 5      # cGM 125 → 0.2
    result = M.volume_l1_vs_reference(seg, ref, 1.0)
    assert result["per_tissue"]["WM"] == pytest.approx(0.25)
    assert result["per_tissue"]["cGM"] == pytest.approx(0.2)
    assert math.isnan(result["per_tissue"]["vent"])         # absent from the reference: left out
    assert result["mean"] == pytest.approx(0.225)
    assert M.volume_l1_vs_reference(ref, ref, 1.0)["mean"] == 0.0


def test_normative_l1_is_zero_at_the_mean_and_z_is_in_sds():
    table = ren2022()
    ga = 27.5
    at_mean = {m: table.mean(m, ga) for m in table.mean_ml}
    result = M.normative_deviation(at_mean, ga, table)
    assert result["mean"] == 0.0
    assert all(z == 0.0 for z in result["z"].values())
    one_sd = {m: table.mean(m, ga) + table.sd(m, ga) for m in table.mean_ml}
    result = M.normative_deviation(one_sd, ga, table)
    for m in table.mean_ml:
        assert result["z"][m] == pytest.approx(1.0)
        assert result["per_measure"][m] == pytest.approx(table.sd(m, ga) / table.mean(m, ga))
    # from a label map: a normative table whose means are that map's own measure volumes gives 0
    seg = np.zeros((20, 20, 20), np.int16)
    for value in range(1, 9):
        seg[value * 2:value * 2 + 2, 0:10, 0:5 + value] = value
    own = M.measure_volumes_ml(seg, 0.512)
    custom = NormativeTable(np.array([20.0, 30.0]), {m: [v, v] for m, v in own.items()},
                            {m: [1.0, 1.0] for m in own}, "custom")
    assert M.volume_l1_vs_normative(seg, 25.0, custom, 0.512)["mean"] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------
# grids


def test_grid_mismatch_raises_naming_both():
    rng = np.random.default_rng(6)
    array = rng.normal(size=(16, 16, 16))
    seg = (array > 0).astype(np.int16)
    a = Volume(array, np.eye(4))
    moved = np.eye(4)
    moved[:3, 3] = [0.0, 0.0, 0.01]                    # 0.01 mm: beyond the 1e-3 tolerance
    b = Volume(array, moved)
    names = ("atlas_ga-24.0_T2w.nii.gz", "HarvardSTA24/srr.nii.gz")
    mask = np.ones(array.shape, bool)
    for call in (lambda: M.psnr(a, b, mask, names), lambda: M.ssim(a, b, mask, names),
                 lambda: M.dice(a.with_array(seg), Volume(seg, moved), [1], names),
                 lambda: M.surface_distances(a.with_array(seg), Volume(seg, moved), 1, names=names),
                 lambda: M.volume_l1_vs_reference(a.with_array(seg), Volume(seg, moved), names=names),
                 lambda: M.tct(a, Volume(seg, moved), names=names)):
        with pytest.raises(ValueError, match="not on the same grid") as info:
            call()
        assert names[0] in str(info.value) and names[1] in str(info.value)
    # within tolerance: accepted
    close = np.eye(4)
    close[:3, 3] = 5e-4
    assert M.psnr(a, Volume(array, close), mask) == math.inf
    # plain arrays: shapes are compared
    with pytest.raises(ValueError, match=r"test and reference are not on the same grid.*\(16, 16, 15\)"):
        M.dice(seg, seg[:, :, :15], [1])
