"""Template library: folder layouts, lazy loading, nearest/blend lookup, brain-volume lookup.

Synthetic libraries are written to ``tmp_path``; the real CRL atlas is only read (never copied) when present.
"""
from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from infanite.geometry import apply_matrix
from infanite.io.images import Volume
from infanite.reference.templates import Template, TemplateLibrary

SHAPE = (20, 24, 20)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = [-19.0, -23.0, -19.0]


def _write(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def t2_array(week: int, shape=SHAPE) -> np.ndarray:
    """Integer intensities depending on the week and the voxel (so blends are exact in float32)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (100 * week + i + 2 * j + 3 * k).astype(np.int16)


def mask_array(week: int, shape=SHAPE) -> np.ndarray:
    """A box whose size grows with the week: (week - 16) x 10 x 10 voxels."""
    m = np.zeros(shape, np.uint8)
    m[2:2 + week - 16, 5:15, 5:15] = 1
    return m


def seg_array(week: int, shape=SHAPE) -> np.ndarray:
    s = mask_array(week, shape).astype(np.int16)
    s[:, :10] *= 2
    return s


def mask_ml(week: int) -> float:
    return (week - 16) * 100 * 8.0 / 1000.0


def make_niftymic(folder, weeks=(24, 25, 27)):
    for w in weeks:
        _write(folder / f"STA{w}.nii.gz", t2_array(w))
        _write(folder / f"STA{w}_mask.nii.gz", mask_array(w))
        _write(folder / f"STA{w}_parc.nii.gz", seg_array(w))
    return folder


def make_crl(folder, weeks=(24, 25)):
    for w in weeks:
        sub = folder / f"HarvardSTA{w}_Study1"
        _write(sub / "srr.nii.gz", t2_array(w))
        _write(sub / "mask.nii.gz", mask_array(w).astype(np.uint16))
        _write(sub / "parcellation.nii.gz", seg_array(w).astype(np.uint16))
    return folder


def make_tsv(folder, rows, header="ga\tT2w\tMask\tSeg"):
    (folder / "templates.tsv").write_text("\n".join([header, *rows]) + "\n")
    return folder / "templates.tsv"


def test_niftymic_layout(tmp_path):
    make_niftymic(tmp_path, weeks=(24, 25, 27))
    (tmp_path / "STA25_parc.nii.gz").unlink()
    _write(tmp_path / "STA25_dseg.nii.gz", seg_array(25))
    (tmp_path / "STA27_parc.nii.gz").unlink()
    (tmp_path / "STA27_mask.nii.gz").unlink()
    lib = TemplateLibrary.from_folder(tmp_path)
    assert lib.weeks == [24.0, 25.0, 27.0] and len(lib) == 3 and lib.source.startswith("niftymic:")
    t = lib.get(24)
    assert t.ga_weeks == 24 and t.t2w.array.dtype == np.float32 and t.mask.array.dtype == np.uint8
    np.testing.assert_array_equal(t.t2w.array, t2_array(24))
    np.testing.assert_array_equal(t.mask.array, mask_array(24))
    np.testing.assert_array_equal(t.seg.array, seg_array(24))
    assert np.issubdtype(t.seg.array.dtype, np.integer)
    assert t.grid.shape == SHAPE and np.allclose(t.grid.voxel_to_ras, AFFINE)
    np.testing.assert_array_equal(lib.get(25).seg.array, seg_array(25))
    t27 = lib.get(27)
    assert t27.seg is None
    np.testing.assert_array_equal(t27.mask.array, (t2_array(27) > 0).astype(np.uint8))
    with pytest.raises(KeyError, match="26"):
        lib.get(26)


def test_tsv_layout(tmp_path):
    _write(tmp_path / "img" / "a.nii.gz", t2_array(30))
    _write(tmp_path / "img" / "a_mask.nii.gz", mask_array(30))
    _write(tmp_path / "img" / "b.nii.gz", t2_array(31))
    _write(tmp_path / "img" / "b_seg.nii.gz", seg_array(31))
    make_tsv(tmp_path, ["30\timg/a.nii.gz\timg/a_mask.nii.gz\t", "31.5\timg/b.nii.gz\t\timg/b_seg.nii.gz"])
    make_niftymic(tmp_path, weeks=(24,))  # an explicit templates.tsv wins over other layouts
    lib = TemplateLibrary.from_folder(tmp_path)
    assert lib.weeks == [30.0, 31.5] and lib.source.startswith("tsv:")
    a, b = lib.get(30), lib.get(31.5)
    np.testing.assert_array_equal(a.mask.array, mask_array(30))
    assert a.seg is None
    np.testing.assert_array_equal(b.mask.array, (t2_array(31) > 0).astype(np.uint8))
    np.testing.assert_array_equal(b.seg.array, seg_array(31))


@pytest.mark.parametrize("header, rows, message", [
    ("ga\tImage\tMask\tSeg", ["30\timg/a.nii.gz\t\t"], r"missing column\(s\) \['T2w'\]"),
    ("ga\tT2w\tMask\tSeg", ["30\timg/a.nii.gz\t\t", "x\timg/a.nii.gz\t\t"], r"line 3: ga must be a number"),
    ("ga\tT2w\tMask\tSeg", ["30\timg/a.nii.gz\t\t\textra"], r"line 2: wrong number of cells"),
    ("ga\tT2w\tMask\tSeg", ["30\timg/a.nii.gz"], r"line 2: wrong number of cells"),
    ("ga\tT2w\tMask\tSeg", ["30\t\t\t"], r"line 2: empty T2w"),
    ("ga\tT2w\tMask\tSeg", ["30\timg/a.nii.gz\t\t", "30\timg/a.nii.gz\t\t"], r"line 3: GA 30 listed twice"),
    ("ga\tT2w\tMask\tSeg", ["30\timg/a.nii.gz\timg/nope_mask.nii.gz\t"], r"line 2: template file missing: .*nope_mask"),
    ("ga\tT2w\tMask\tSeg", [], r"no template rows"),
])
def test_tsv_errors(tmp_path, header, rows, message):
    _write(tmp_path / "img" / "a.nii.gz", t2_array(30))
    make_tsv(tmp_path, rows, header)
    with pytest.raises(ValueError, match=message):
        TemplateLibrary.from_folder(tmp_path)


def test_crl_layout(tmp_path):
    make_crl(tmp_path, weeks=(24, 25))
    (tmp_path / "HarvardSTA99_extra").mkdir()  # does not match the folder pattern: ignored
    (tmp_path / "README.md").write_text("not a template")
    lib = TemplateLibrary.from_folder(tmp_path)
    assert lib.weeks == [24.0, 25.0] and lib.source.startswith("crl:")
    t = lib.get(25)
    assert t.mask.array.dtype == np.uint8 and set(np.unique(t.mask.array)) == {0, 1}
    np.testing.assert_array_equal(t.seg.array, seg_array(25))
    assert t.source.endswith("srr.nii.gz")


def test_missing_file_named(tmp_path):
    make_crl(tmp_path, weeks=(24, 25))
    (tmp_path / "HarvardSTA25_Study1" / "parcellation.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"GA 25 .*HarvardSTA25_Study1/parcellation\.nii\.gz"):
        TemplateLibrary.from_folder(tmp_path)


def test_layout_detection_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    _write(tmp_path / "T2w.nii.gz", t2_array(24))
    with pytest.raises(ValueError) as err:
        TemplateLibrary.from_folder(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "templates.tsv" in msg and "HarvardSTA" in msg and "STA<GA>.nii.gz" in msg
    with pytest.raises(ValueError, match="does not exist"):
        TemplateLibrary.from_folder(tmp_path / "absent")


def test_grid_mismatch_in_files(tmp_path):
    make_niftymic(tmp_path, weeks=(24,))
    _write(tmp_path / "STA24_mask.nii.gz", mask_array(24)[:, :, :10])
    lib = TemplateLibrary.from_folder(tmp_path)  # geometry is only checked when loading
    with pytest.raises(ValueError, match=r"GA 24 .*mask grid"):
        lib.get(24)


def _fake_template(ga, value=0.0, affine=AFFINE, shape=SHAPE):
    t2w = Volume(np.full(shape, value, np.float32), affine)
    return Template(ga, t2w, t2w.with_array(np.ones(shape, np.uint8)), None, "test")


def test_lazy_loading_and_cache():
    calls = []

    def loader(ga):
        def load():
            calls.append(ga)
            return _fake_template(ga, ga)
        return load

    lib = TemplateLibrary({ga: loader(ga) for ga in (22, 23, 24)}, source="fake", cache_size=2)
    assert calls == []
    assert lib.get(22) is lib.get(22) and calls == [22]
    lib.get(23), lib.get(24)  # evicts 22
    lib.get(22)
    assert calls == [22, 23, 24, 22]
    with pytest.raises(ValueError, match="no templates"):
        TemplateLibrary({})
    with pytest.raises(TypeError, match="not Template"):
        TemplateLibrary({30: lambda: "oops"}).get(30)


def test_a_library_pickles_for_worker_processes_without_its_lock_or_cache():
    # `infanite evaluate --jobs N` sends the reference's library to spawned processes
    import functools
    import pickle

    lib = TemplateLibrary({ga: functools.partial(_fake_template, ga, ga) for ga in (22, 23)}, source="fake")
    original = lib.get(22)
    copy = pickle.loads(pickle.dumps(lib))
    assert copy.weeks == [22, 23] and copy.source == "fake" and len(copy._cache) == 0
    again = copy.get(22)
    assert again is not original and np.array_equal(again.t2w.array, original.t2w.array)
    assert copy.get(22) is again                                  # the copy caches with a lock of its own
    assert lib.get(22) is original


def test_nearest_ties_and_clamping(caplog):
    lib = TemplateLibrary({ga: (lambda ga=ga: _fake_template(ga, ga)) for ga in (24, 25, 27)}, source="fake")
    assert lib.nearest(24.4).ga_weeks == 24
    assert lib.nearest(24.5).ga_weeks == 24  # tie → lower week
    assert lib.nearest(26.0).ga_weeks == 25  # tie between 25 and 27 → 25
    assert lib.nearest(26.1).ga_weeks == 27
    assert lib.for_ga(25.2).ga_weeks == 25
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="infanite.reference.templates"):
        assert lib.nearest(19.0).ga_weeks == 24
        assert lib.nearest(40.0).ga_weeks == 27
    assert len(caplog.records) == 2 and "outside the template range" in caplog.records[0].getMessage()
    with pytest.raises(ValueError, match="finite"):
        lib.nearest(float("nan"))
    with pytest.raises(ValueError, match="mode"):
        lib.for_ga(25, mode="average")


def test_blend_shared_grid(tmp_path):
    lib = TemplateLibrary.from_folder(make_niftymic(tmp_path, weeks=(24, 25, 27)))
    b = lib.blend(24.25)
    expected = (0.75 * t2_array(24) + 0.25 * t2_array(25)).astype(np.float32)
    np.testing.assert_array_equal(b.t2w.array, expected)
    assert b.ga_weeks == 24.25 and b.t2w.array.dtype == np.float32
    np.testing.assert_array_equal(b.mask.array, mask_array(24))  # labels from the nearest week
    np.testing.assert_array_equal(b.seg.array, seg_array(24))
    b2 = lib.for_ga(24.75, mode="blend")
    np.testing.assert_array_equal(b2.mask.array, mask_array(25))
    np.testing.assert_array_equal(b2.t2w.array, (0.25 * t2_array(24) + 0.75 * t2_array(25)).astype(np.float32))
    b3 = lib.blend(26.5)  # weeks 25 and 27 bracket 26.5
    np.testing.assert_array_equal(b3.t2w.array, (0.25 * t2_array(25) + 0.75 * t2_array(27)).astype(np.float32))
    assert lib.blend(25.0) is lib.get(25)
    assert lib.blend(30.0) is lib.get(27)


def test_blend_resamples_other_grid():
    other = np.diag([1.5, 2.5, 1.0, 1.0])
    other[:3, 3] = [-21.3, -27.7, -16.4]
    other_shape = (30, 24, 36)

    def world_linear(affine, shape):  # intensity linear in RAS mm: reproduced exactly by linear interpolation
        i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
        xyz = apply_matrix(affine, np.stack([i, j, k], -1).astype(float))
        return (1000 + 3 * xyz[..., 0] + 2 * xyz[..., 1] - xyz[..., 2]).astype(np.float32)

    t24 = _fake_template(24, 0.0)
    t24.t2w.array[:] = t2_array(24)
    t25 = Template(25, Volume(world_linear(other, other_shape), other),
                   Volume(np.ones(other_shape, np.uint8), other), None, "other grid")
    lib = TemplateLibrary({24: lambda: t24, 25: lambda: t25}, source="fake")
    b = lib.blend(24.25)
    assert b.grid.shape == SHAPE and np.allclose(b.grid.voxel_to_ras, AFFINE)
    for ijk in [(10, 12, 10), (5, 7, 13), (14, 18, 4)]:
        x, y, z = apply_matrix(AFFINE, np.array(ijk, float))
        expected = 0.75 * t2_array(24)[ijk] + 0.25 * (1000 + 3 * x + 2 * y - z)
        assert b.t2w.array[ijk] == pytest.approx(expected, abs=1e-3)
    b2 = lib.blend(24.75)  # nearer week is 25: result on its grid
    assert b2.grid.shape == other_shape and np.allclose(b2.grid.voxel_to_ras, other)


def test_template_grid_check():
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    t2w = Volume(np.zeros(SHAPE, np.float32), AFFINE)
    with pytest.raises(ValueError, match="mask grid"):
        Template(24, t2w, Volume(np.zeros(SHAPE, np.uint8), shifted), None, "x")


def test_brain_volumes(tmp_path):
    lib = TemplateLibrary.from_folder(make_niftymic(tmp_path, weeks=(24, 25, 27)))
    vols = lib.brain_volumes_ml()
    assert list(vols) == [24.0, 25.0, 27.0]
    for week, ml in vols.items():
        assert ml == pytest.approx(mask_ml(int(week)))
    assert lib.week_for_brain_volume(mask_ml(25)) == 25
    assert lib.week_for_brain_volume(mask_ml(25) + 0.1) == 25
    assert lib.week_for_brain_volume((mask_ml(25) + mask_ml(27)) / 2 - 0.01) == 25
    assert lib.week_for_brain_volume((mask_ml(25) + mask_ml(27)) / 2 + 0.01) == 27
    assert lib.week_for_brain_volume(1e6) == 27 and lib.week_for_brain_volume(0.01) == 24
    with pytest.raises(ValueError, match="positive"):
        lib.week_for_brain_volume(-1)


@pytest.mark.shared_data
def test_real_crl_atlas(crl_atlas_dir):
    lib = TemplateLibrary.from_folder(crl_atlas_dir)
    assert lib.weeks == [float(w) for w in range(21, 39)]
    t29, t30 = lib.get(29), lib.get(30)
    grid = t29.grid
    assert grid.shape == (135, 189, 155)
    np.testing.assert_allclose(grid.spacing_mm, 0.8, atol=1e-5)
    np.testing.assert_allclose(grid.voxel_to_ras[:3, 3], [-53.6, -75.2, -61.6], atol=1e-3)
    assert set(np.unique(t29.seg.array)) <= set(range(9))
    assert set(np.unique(t29.mask.array)) == {0, 1}
    b = lib.blend(29.5)
    lo = np.minimum(t29.t2w.array, t30.t2w.array)
    hi = np.maximum(t29.t2w.array, t30.t2w.array)
    assert np.all(b.t2w.array >= lo - 1e-3) and np.all(b.t2w.array <= hi + 1e-3)
    assert b.mask is t29.mask  # tie at 29.5 → the lower week's labels
