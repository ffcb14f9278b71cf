"""Registration QC figure: aligned stack in grey with the template's tissue boundaries drawn over it."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from infanite.geometry import rigid_matrix
from infanite.io.images import Volume
from infanite.labels import default_label_table
from infanite.io.figures import orthogonal_planes
from infanite.registration.qc import EDGE_COLOR, label_boundaries, registration_qc_images, save_registration_qc
from infanite.io.resample import resample
from infanite.reference.templates import Template

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHAPE = (48, 56, 44)


def _synthetic_template(spacing=(1.5, 1.5, 1.5), with_seg=True) -> Template:
    """Ellipsoidal 'brain' (label 4 rim, 1 inside) with two 'ventricles' (label 2), off-centre in the grid."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.asarray(spacing) * (np.array(SHAPE) - 1) / 2
    ijk = np.indices(SHAPE, dtype=np.float64)
    centre = np.array([25.0, 30.0, 21.0])
    r = np.sqrt(sum(((ijk[a] - centre[a]) * spacing[a] / s) ** 2 for a, s in enumerate((26.0, 30.0, 24.0))))
    seg = np.zeros(SHAPE, np.int16)
    seg[r < 1.0] = 4
    seg[r < 0.85] = 1
    for dx in (-5, 5):
        v = np.sqrt(((ijk[0] - centre[0] - dx) / 2.5) ** 2 + ((ijk[1] - centre[1]) / 8) ** 2
                    + ((ijk[2] - centre[2]) / 4) ** 2)
        seg[v < 1.0] = 2
    t2 = np.select([seg == 4, seg == 2, seg == 1], [2500.0, 2600.0, 1800.0], 0.0).astype(np.float32)
    t2 += np.float32(30.0) * np.sin(ijk[0] / 3.0).astype(np.float32)   # some texture
    t2[seg == 0] = 0
    return Template(28.0, Volume(t2, affine), Volume((seg > 0).astype(np.uint8), affine.copy()),
                    Volume(seg, affine.copy()) if with_seg else None, "synthetic")


@pytest.fixture(scope="module")
def template() -> Template:
    return _synthetic_template()


def _edge_pixels(rgb: np.ndarray, colour=EDGE_COLOR, tol=0.08) -> np.ndarray:
    return np.all(np.abs(rgb[..., :3] - np.asarray(colour)) < tol, axis=-1)


def _misaligned(template: Template) -> Volume:
    """The template T2w seen through an 8 mm / 10° misregistration."""
    from infanite.geometry import rotation_matrix

    wrong = rigid_matrix(rotation_matrix([0.0, 0.0, 10.0]), [8.0, -6.0, 5.0])
    return resample(template.t2w, template.grid, wrong)


def test_png_written_atomically_with_edges(template, tmp_path):
    out = tmp_path / "qc" / "sub-01_registration.png"
    path = save_registration_qc(template.t2w, template, out, title="sub-01 → GA 28 template")
    assert path == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub-01_registration.png"]   # no temp file left
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 5_000 < len(data) < 5_000_000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert 300 < img.shape[0] < 2500 and 400 < img.shape[1] < 2500
    edges = _edge_pixels(img)
    assert edges.sum() > 300, "no boundary-coloured pixels in the PNG"
    rows_with_edges = np.flatnonzero(edges.any(axis=1))
    half = img.shape[0] / 2
    assert (rows_with_edges < half).any() and (rows_with_edges > half).any(), "edges missing in one figure row"
    # the grey image itself never produces the edge colour
    grey_only = img[..., :3]
    assert not _edge_pixels(np.repeat(grey_only.mean(-1, keepdims=True), 3, -1)).any()


def test_edges_follow_the_template_labels(template):
    aligned_row, template_row = registration_qc_images(template.t2w, template)
    centre = np.rint(np.array([25.0, 30.0, 21.0])).astype(int)   # centre of mass of the symmetric brain
    expected = [label_boundaries(p) for p in orthogonal_planes(template.seg, centre)]
    for rgb_a, rgb_t, exp in zip(aligned_row, template_row, expected):
        assert exp.sum() > 20
        np.testing.assert_array_equal(_edge_pixels(rgb_a, tol=1e-6), exp)
        np.testing.assert_array_equal(_edge_pixels(rgb_t, tol=1e-6), exp)
        # aligned == template here, so the two rows are identical
        np.testing.assert_array_equal(rgb_a, rgb_t)
    # the ventricle boundaries (label 2 inside label 1) are drawn, not only the brain outline
    axial_labels = orthogonal_planes(template.seg, centre)[0]
    assert (expected[0] & (axial_labels == 2)).sum() > 5


def test_misaligned_stack_looks_different(template, tmp_path):
    good = save_registration_qc(template.t2w, template, tmp_path / "good.png")
    bad = save_registration_qc(_misaligned(template), template, tmp_path / "bad.png")
    img_good, img_bad = mpimg.imread(good)[..., :3], mpimg.imread(bad)[..., :3]
    assert img_good.shape == img_bad.shape
    half = img_good.shape[0] // 2
    top_diff = np.abs(img_good[:half] - img_bad[:half]).mean()
    bottom_diff = np.abs(img_good[half:] - img_bad[half:]).mean()
    assert top_diff > 0.02, top_diff             # the aligned-stack row changed visibly
    assert bottom_diff < 1e-3, bottom_diff       # the template row did not
    # same boundaries in both, but under the misaligned stack they no longer sit on intensity edges
    rows_good, _ = registration_qc_images(template.t2w, template)
    rows_bad, _ = registration_qc_images(_misaligned(template), template)
    for g, b in zip(rows_good, rows_bad):
        np.testing.assert_array_equal(_edge_pixels(g, tol=1e-6), _edge_pixels(b, tol=1e-6))
    assert sum(np.abs(g - b).mean() for g, b in zip(rows_good, rows_bad)) > 0.05


def test_mask_edges_when_no_seg_and_table_colours(tmp_path):
    no_seg = _synthetic_template(with_seg=False)
    aligned_row, _ = registration_qc_images(no_seg.t2w, no_seg)
    centre = np.rint(np.array([25.0, 30.0, 21.0])).astype(int)
    for rgb, mask_plane in zip(aligned_row, orthogonal_planes(no_seg.mask, centre)):
        edges = _edge_pixels(rgb, tol=1e-6)
        np.testing.assert_array_equal(edges, label_boundaries(mask_plane))
        assert edges.sum() > 20
    assert save_registration_qc(no_seg.t2w, no_seg, tmp_path / "mask.png").read_bytes()[:8] == PNG_MAGIC

    with_seg = _synthetic_template()
    table = default_label_table()
    rows, _ = registration_qc_images(with_seg.t2w, with_seg, table=table)
    axial = rows[0]
    vent = np.asarray(next(lab.color for lab in table.labels if lab.value == 2)) / 255.0
    assert _edge_pixels(axial, vent, tol=1e-6).sum() > 5
    assert not _edge_pixels(axial, EDGE_COLOR, tol=1e-6).any()


def test_anisotropic_template_grid_and_grid_mismatch(tmp_path):
    aniso = _synthetic_template(spacing=(1.0, 1.2, 2.0))
    path = save_registration_qc(aniso.t2w, aniso, tmp_path / "aniso.png", title="anisotropic")
    img = mpimg.imread(path)
    assert _edge_pixels(img).sum() > 200

    other = Volume(np.zeros((10, 10, 10), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="template grid"):
        save_registration_qc(other, aniso, tmp_path / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aniso.png"]


def test_report_planes_are_shown_as_slicer_shows_them_for_any_voxel_order():
    """Radiological like 3D Slicer's default views: the patient's right on the left of the axial view, posterior at
    the bottom; the same picture whatever the voxel axes' order or signs (an LPS-stored copy)."""
    from infanite.io.figures import slicer_planes
    from infanite.io.images import Volume

    data = np.zeros((4, 5, 6))
    data[3, 0, 0] = 1.0                                   # x = 3 (the most right), y = 0 (posterior), z = 0 (inferior)
    ras = Volume(data, np.eye(4))
    axial, coronal, sagittal = slicer_planes(ras, (3.0, 0.0, 0.0))
    assert [tuple(p) for p in np.argwhere(axial == 1)] == [(4, 0)]      # bottom row (P), left column (R)
    assert [tuple(p) for p in np.argwhere(coronal == 1)] == [(5, 0)]    # bottom row (I), left column (R)
    assert [tuple(p) for p in np.argwhere(sagittal == 1)] == [(5, 4)]   # bottom row (I), right column (P)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [3.0, 4.0, 0.0]
    lps = Volume(data[::-1, ::-1, :].copy(), affine)     # the same image, voxel axes flipped in x and y
    for a, b in zip(slicer_planes(ras, (3.0, 0.0, 0.0)), slicer_planes(lps, (3.0, 0.0, 0.0))):
        np.testing.assert_array_equal(a, b)
