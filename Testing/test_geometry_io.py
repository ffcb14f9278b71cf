"""Geometry-exact IO and resampling, cross-checked against nibabel, SimpleITK and Slicer's MRML (slicer-core).

Every test builds small synthetic images with three kinds of affine (axis-aligned RAS, oblique, left-handed) and
checks that all three libraries place the same voxel at the same RAS world point, and that
``infanite.resample.resample`` moves image content where the matrices say it should.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from infanite import geometry
from infanite.io.images import Grid, Volume, load_nifti, save_nifti, sitk_to_volume, sitk_voxel_to_ras, volume_to_sitk
from infanite.io.resample import FWHM_TO_SIGMA, itk_transform_from_ras, psf_sigma_source_voxels, resample

SHAPE = (40, 30, 20)
MARKER_VOXEL = (17, 11, 6)  # lower corner of a 2x2x2 marker block; its centroid is MARKER_VOXEL + 0.5
FLIP = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS for 3-vectors


def _affine(linear: np.ndarray, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = origin
    return a


def _oblique_rotation() -> np.ndarray:
    axis = np.array([1.0, -2.0, 3.0])
    return geometry.rotation_matrix(axis / np.linalg.norm(axis) * 27.0)


AFFINES = {
    "axis_aligned_ras": _affine(np.diag([0.8, 0.9, 1.5]), [-10.0, 20.0, 5.0]),
    "oblique": _affine(_oblique_rotation() @ np.diag([0.7, 1.1, 2.0]), [12.3, -40.5, 7.25]),
    # LAS-like (x spacing negative) with a small extra rotation: determinant < 0
    "left_handed": _affine(geometry.rotation_matrix([0.0, 8.0, -5.0]) @ np.diag([-1.2, 1.0, 2.5]),
                           [30.0, -25.0, -12.0]),
}


@pytest.fixture(params=sorted(AFFINES), ids=sorted(AFFINES))
def affine(request) -> np.ndarray:
    return AFFINES[request.param].copy()


def test_affine_fixtures_are_what_they_claim():
    assert np.linalg.det(AFFINES["axis_aligned_ras"][:3, :3]) > 0
    assert np.linalg.det(AFFINES["oblique"][:3, :3]) > 0
    assert np.linalg.det(AFFINES["left_handed"][:3, :3]) < 0
    # the oblique affine really is oblique: no axis is aligned with a world axis
    dirs = geometry.direction_cosines(AFFINES["oblique"])
    assert np.abs(dirs).max() < 0.99


def _test_array(seed: int = 0) -> np.ndarray:
    """Asymmetric float32 image (so any axis flip or transpose shows) with a bright 2x2x2 marker block."""
    rng = np.random.default_rng(seed)
    arr = rng.uniform(0.0, 50.0, size=SHAPE).astype(np.float32)
    arr[2:10, 3:8, 1:4] = 300.0
    i, j, k = MARKER_VOXEL
    arr[i:i + 2, j:j + 2, k:k + 2] = 1000.0
    return arr


def _marker_only(shape=SHAPE) -> np.ndarray:
    arr = np.zeros(shape, np.float32)
    i, j, k = MARKER_VOXEL
    arr[i:i + 2, j:j + 2, k:k + 2] = 1000.0
    return arr


def _weighted_centroid_index(array: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid of the positive voxels, in the array's own index order."""
    w = np.clip(np.asarray(array, dtype=np.float64), 0.0, None)
    total = w.sum()
    assert total > 0, "marker not found in image"
    idx = np.indices(w.shape, dtype=np.float64).reshape(w.ndim, -1)
    return idx @ w.ravel() / total


# ----------------------------------------------------------------------------------------------------------------
# MRML helpers
# ----------------------------------------------------------------------------------------------------------------

def _slicer():
    return pytest.importorskip("slicer", reason="slicer-core (3D Slicer MRML, `pip install slicer-core`) "
                                                "is needed to cross-check geometry against MRML")


def _mrml_read(path, force_right_handed: bool | None = None):
    """Read a volume file through vtkMRMLVolumeArchetypeStorageNode. Returns (scene, node, storage_node)."""
    slicer = _slicer()
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if force_right_handed is not None:
        storage.SetForceRightHandedIJKCoordinateSystem(force_right_handed)
    assert storage.ReadData(node) == 1, f"MRML could not read {path}"
    return scene, node, storage


def _mrml_ijk_to_ras(node) -> np.ndarray:
    slicer = _slicer()
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _mrml_array_ijk(node) -> np.ndarray:
    """MRML voxels in (i, j, k) order (arrayFromVolume is (k, j, i))."""
    slicer = _slicer()
    return slicer.util.arrayFromVolume(node).transpose(2, 1, 0)


def _mrml_write(node, path) -> None:
    slicer = _slicer()
    writer = slicer.vtkMRMLVolumeArchetypeStorageNode()
    writer.SetFileName(str(path))
    assert writer.WriteData(node) == 1, f"MRML could not write {path}"


# ----------------------------------------------------------------------------------------------------------------
# 1. Round trips through nibabel, SimpleITK and MRML
# ----------------------------------------------------------------------------------------------------------------

def test_nibabel_round_trip_and_header_codes(affine, tmp_path):
    vol = Volume(_test_array(), affine)
    path = save_nifti(vol, tmp_path / "img.nii.gz")
    back = load_nifti(path)
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, vol.array)
    # the sform is stored as float32: the affine comes back as exactly the float32-rounded input
    np.testing.assert_array_equal(back.voxel_to_ras, affine.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(back.voxel_to_ras, affine, atol=1e-5, rtol=0)

    hdr = nib.load(str(path)).header
    assert int(hdr["qform_code"]) == 1
    assert int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(hdr.get_qform(), affine, atol=1e-4, rtol=0)
    np.testing.assert_allclose(hdr.get_sform(), affine, atol=1e-5, rtol=0)
    # no stray temporary file next to the result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz"]


def test_sitk_round_trip_and_physical_points(affine, tmp_path):
    vol = Volume(_test_array(), affine)
    img = volume_to_sitk(vol)
    assert img.GetSize() == SHAPE

    back = sitk_to_volume(img)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.voxel_to_ras, affine, atol=1e-12, rtol=0)
    np.testing.assert_allclose(sitk_voxel_to_ras(img), affine, atol=1e-12, rtol=0)

    # SimpleITK's own index -> LPS physical point, flipped to RAS, must match our voxel_to_world
    for ijk in [(0, 0, 0), MARKER_VOXEL, (SHAPE[0] - 1, 3, SHAPE[2] - 1), (5, SHAPE[1] - 1, 9)]:
        lps = np.array(img.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
        np.testing.assert_allclose(FLIP @ lps, geometry.voxel_to_world(affine, np.array(ijk, float)),
                                   atol=1e-9, rtol=0)
    cont = (3.25, 7.5, 11.75)
    lps = np.array(img.TransformContinuousIndexToPhysicalPoint(cont))
    np.testing.assert_allclose(FLIP @ lps, geometry.voxel_to_world(affine, np.array(cont)), atol=1e-9, rtol=0)
    # and the voxel value SimpleITK reports at that index is ours
    assert img.GetPixel(*MARKER_VOXEL) == vol.array[MARKER_VOXEL]
    assert img.GetPixel(3, 4, 2) == vol.array[3, 4, 2]

    # written by SimpleITK's NIfTI writer, read with nibabel
    path = tmp_path / "sitk.nii.gz"
    sitk.WriteImage(img, str(path))
    from_file = load_nifti(path)
    np.testing.assert_array_equal(from_file.array, vol.array)
    np.testing.assert_allclose(from_file.voxel_to_ras, affine, atol=1e-4, rtol=0)


def test_mrml_reads_our_nifti(affine, tmp_path):
    vol = Volume(_test_array(), affine)
    path = save_nifti(vol, tmp_path / "img.nii.gz")
    marker_world = geometry.voxel_to_world(affine, np.array(MARKER_VOXEL, float))

    # Without forcing a right-handed IJK system MRML keeps the file's voxel order and affine exactly.
    _scene, node, _ = _mrml_read(path, force_right_handed=False)
    np.testing.assert_allclose(_mrml_ijk_to_ras(node), affine, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(_mrml_array_ijk(node), vol.array)

    # Default reader: right-handed files are unchanged; left-handed ones get their K axis reversed, but every
    # voxel stays at the same RAS world point.
    _scene2, node2, storage2 = _mrml_read(path)
    assert storage2.GetForceRightHandedIJKCoordinateSystem()
    m2 = _mrml_ijk_to_ras(node2)
    arr2 = _mrml_array_ijk(node2)
    assert arr2.shape == SHAPE
    if np.linalg.det(affine[:3, :3]) > 0:
        np.testing.assert_allclose(m2, affine, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(arr2, vol.array)
    else:
        assert np.linalg.det(m2[:3, :3]) > 0
        assert not np.allclose(m2, affine, atol=1e-2)
        assert not np.array_equal(arr2, vol.array)
        np.testing.assert_array_equal(arr2, vol.array[:, :, ::-1])
    # the marker block, wherever it sits in MRML's array, is at the same world position
    c_mrml = geometry.voxel_to_world(m2, _weighted_centroid_index(np.where(arr2 == 1000.0, 1.0, 0.0)))
    np.testing.assert_allclose(c_mrml, marker_world + affine[:3, :3] @ [0.5, 0.5, 0.5], atol=1e-4, rtol=0)
    # and the whole image maps voxel-for-voxel: each MRML voxel's world point lands on the same source value
    rng = np.random.default_rng(1)
    for ijk in rng.integers(0, SHAPE, size=(20, 3)):
        world = geometry.voxel_to_world(m2, ijk.astype(float))
        src_ijk = np.rint(geometry.world_to_voxel(affine, world)).astype(int)
        assert arr2[tuple(ijk)] == vol.array[tuple(src_ijk)]


def test_mrml_write_nifti_and_nrrd(affine, tmp_path):
    vol = Volume(_test_array(), affine)
    path = save_nifti(vol, tmp_path / "img.nii.gz")
    _scene, node, _ = _mrml_read(path, force_right_handed=False)

    out_nii = tmp_path / "mrml.nii.gz"
    _mrml_write(node, out_nii)
    back = load_nifti(out_nii)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.voxel_to_ras, affine, atol=1e-4, rtol=0)
    hdr = nib.load(str(out_nii)).header
    assert int(hdr["sform_code"]) > 0 or int(hdr["qform_code"]) > 0

    out_nrrd = tmp_path / "mrml.nrrd"
    _mrml_write(node, out_nrrd)
    nrrd = sitk_to_volume(sitk.ReadImage(str(out_nrrd)))
    np.testing.assert_array_equal(nrrd.array, vol.array)
    np.testing.assert_allclose(nrrd.voxel_to_ras, affine, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# 2. A point marker survives resampling at the analytically expected world position
# ----------------------------------------------------------------------------------------------------------------

REF_SHAPE = (26, 24, 22)


def _reference_grid_around(world_point, spacing=1.0, offset=(2.3, -1.7, 1.1)) -> Grid:
    """An oblique isotropic grid whose centre is near ``world_point`` (not aligned with it)."""
    rot = geometry.rotation_matrix([-12.0, 20.0, 33.0])
    lin = rot * spacing
    centre_index = (np.array(REF_SHAPE) - 1) / 2.0
    origin = np.asarray(world_point) + np.asarray(offset) - lin @ centre_index
    return Grid(REF_SHAPE, _affine(lin, origin))


REFERENCE_TO_SOURCE = geometry.rigid_matrix(geometry.rotation_matrix([10.0, -15.0, 20.0]),
                                            translation_mm=(4.0, -6.0, 3.5), center_mm=(5.0, 0.0, -5.0))


def _three_reader_centroids(path) -> dict:
    """World RAS centroid of the positive voxels of a saved image as read by nibabel, SimpleITK and MRML."""
    out = {}
    img = nib.load(str(path))
    arr = np.asarray(img.dataobj, dtype=np.float64)
    out["nibabel"] = geometry.voxel_to_world(img.affine, _weighted_centroid_index(arr))

    simg = sitk.ReadImage(str(path))
    kji = _weighted_centroid_index(sitk.GetArrayFromImage(simg))
    out["sitk"] = FLIP @ np.array(simg.TransformContinuousIndexToPhysicalPoint([float(v) for v in kji[::-1]]))

    _scene, node, _ = _mrml_read(path)  # default (right-handed forcing) reader on purpose
    out["mrml"] = geometry.voxel_to_world(_mrml_ijk_to_ras(node), _weighted_centroid_index(_mrml_array_ijk(node)))
    return out


def test_marker_lands_at_expected_world_position(affine, tmp_path):
    _slicer()
    source = Volume(_marker_only(), affine)
    marker_src_world = geometry.voxel_to_world(affine, np.array(MARKER_VOXEL, float) + 0.5)
    expected = geometry.apply_matrix(np.linalg.inv(REFERENCE_TO_SOURCE), marker_src_world)
    # the transform direction matters: the forward map puts it far away
    assert np.linalg.norm(geometry.apply_matrix(REFERENCE_TO_SOURCE, marker_src_world) - expected) > 5.0

    grid = _reference_grid_around(expected)
    out = resample(source, grid, REFERENCE_TO_SOURCE, interpolation="linear")
    assert out.shape == REF_SHAPE
    np.testing.assert_array_equal(out.voxel_to_ras, grid.voxel_to_ras)
    # mass is roughly conserved in voxel-volume units (marker fully inside the grid)
    src_mass = source.array.sum() * abs(np.linalg.det(affine[:3, :3]))
    assert out.array.sum() * 1.0 == pytest.approx(src_mass, rel=0.05)

    path = save_nifti(out, tmp_path / "resampled.nii.gz")
    centroids = _three_reader_centroids(path)
    for name, c in centroids.items():
        # the requirement is half a reference voxel (0.5 mm); a symmetric marker actually lands within ~0.02 mm
        assert np.linalg.norm(c - expected) < 0.1, f"{name}: {c} vs expected {expected}"
    for name in ("sitk", "mrml"):
        np.testing.assert_allclose(centroids[name], centroids["nibabel"], atol=1e-3, rtol=0)


def test_marker_matches_mrml_resample_to_reference(affine, tmp_path):
    slicer = _slicer()
    source = Volume(_marker_only(), affine)
    marker_world = geometry.voxel_to_world(affine, np.array(MARKER_VOXEL, float) + 0.5)
    grid = _reference_grid_around(marker_world)

    ours = resample(source, grid)  # identity reference_to_source
    c_ours = geometry.voxel_to_world(ours.voxel_to_ras, _weighted_centroid_index(ours.array))

    src_path = save_nifti(source, tmp_path / "source.nii.gz")
    ref_path = save_nifti(Volume(np.zeros(REF_SHAPE, np.float32), grid.voxel_to_ras), tmp_path / "ref.nii.gz")
    scene, src_node, _ = _mrml_read(src_path)  # default reader: flipped array for the left-handed case
    ref_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    ref_storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    ref_storage.SetFileName(str(ref_path))
    assert ref_storage.ReadData(ref_node) == 1
    out_node = slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(src_node, ref_node)
    assert out_node is not None
    m_out = _mrml_ijk_to_ras(out_node)
    np.testing.assert_allclose(m_out, grid.voxel_to_ras, atol=1e-4, rtol=0)
    arr = _mrml_array_ijk(out_node)
    assert arr.shape == REF_SHAPE
    c_mrml = geometry.voxel_to_world(m_out, _weighted_centroid_index(arr))

    # requirement: within half a reference voxel (0.5 mm); both actually land within ~0.03 mm
    assert np.linalg.norm(c_ours - marker_world) < 0.1
    assert np.linalg.norm(c_mrml - marker_world) < 0.1
    assert np.linalg.norm(c_ours - c_mrml) < 1e-3
    # both are trilinear interpolations of the same image on the same grid: voxel values agree too (max 1000)
    assert arr.max() > 100.0
    np.testing.assert_allclose(arr, ours.array, atol=0.05, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# 3. Nearest-neighbour labels and identity resampling
# ----------------------------------------------------------------------------------------------------------------

LABEL_VALUES = (0, 3, 7, 12, 250)


def _label_array(seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, np.int16)
    for value in LABEL_VALUES[1:]:
        for _ in range(4):
            lo = rng.integers(0, np.array(SHAPE) - 6)
            size = rng.integers(3, 9, size=3)
            lab[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] = value
    return lab


def test_nearest_keeps_label_values_under_oblique_rigid(affine):
    lab = Volume(_label_array(), affine)
    centre = geometry.voxel_to_world(affine, (np.array(SHAPE) - 1) / 2.0)
    grid = _reference_grid_around(centre, spacing=0.9, offset=(0.0, 0.0, 0.0))
    m = geometry.rigid_matrix(geometry.rotation_matrix([7.0, -11.0, 19.0]), (1.3, -0.7, 2.1), centre)
    out = resample(lab, grid, m, interpolation="nearest")
    assert out.array.dtype == np.int16
    values = set(np.unique(out.array).tolist())
    assert values <= set(LABEL_VALUES)
    assert len(values) >= 4  # the labels really were sampled, not just background
    linear = resample(lab, grid, m, interpolation="linear")
    assert not set(np.unique(linear.array).tolist()) <= set(LABEL_VALUES)  # linear does blend: the test can fail


@pytest.mark.parametrize("shift", [(2, -3, 1), (-4, 0, 2)])
def test_nearest_integer_voxel_translation_is_exact(affine, shift):
    lab = _label_array()
    vol = Volume(lab, affine)
    # reference == source grid; the world translation of an integer voxel shift
    t = affine[:3, :3] @ np.array(shift, float)
    m = geometry.rigid_matrix(translation_mm=t)
    out = resample(vol, vol.grid, m, interpolation="nearest", default_value=0)
    expected = np.zeros_like(lab)
    di, dj, dk = shift
    n0, n1, n2 = SHAPE
    dst = (slice(max(0, -di), n0 - max(0, di)), slice(max(0, -dj), n1 - max(0, dj)),
           slice(max(0, -dk), n2 - max(0, dk)))
    src = (slice(max(0, di), n0 - max(0, -di)), slice(max(0, dj), n1 - max(0, -dj)),
           slice(max(0, dk), n2 - max(0, -dk)))
    expected[dst] = lab[src]
    np.testing.assert_array_equal(out.array, expected)
    assert not np.array_equal(out.array, lab)


def test_linear_identity_same_grid_is_exact(affine):
    vol = Volume(_test_array(), affine)
    out = resample(vol, vol)
    assert out.array.dtype == np.float32
    np.testing.assert_array_equal(out.array, vol.array)
    np.testing.assert_array_equal(out.voxel_to_ras, affine)


# ----------------------------------------------------------------------------------------------------------------
# 4. PSF-aware downsampling
# ----------------------------------------------------------------------------------------------------------------

PSF_ROT = geometry.rotation_matrix([0.0, 0.0, 20.0])


def _fine_and_coarse():
    fine_shape = (48, 48, 48)
    fine = _affine(PSF_ROT * 0.5, [-5.0, 3.0, 1.0])
    # coarse 2 mm grid with parallel axes in the middle of the fine FOV; its voxel centres fall exactly on fine
    # voxel centres (fine indices 5, 9, ..., 41), leaving >= 2.5 mm of fine image outside it on every side
    coarse_shape = (10, 10, 10)
    centre = geometry.voxel_to_world(fine, np.array([23.0, 23.0, 23.0]))
    coarse_lin = PSF_ROT * 2.0
    coarse = _affine(coarse_lin, centre - coarse_lin @ ((np.array(coarse_shape) - 1) / 2.0))
    return fine_shape, fine, Grid(coarse_shape, coarse)


def test_psf_preserves_constant_and_linear_ramp():
    fine_shape, fine, coarse = _fine_and_coarse()
    const = Volume(np.full(fine_shape, 37.5, np.float32), fine)
    out = resample(const, coarse, psf_fwhm_mm=2.0)
    np.testing.assert_allclose(out.array, 37.5, atol=1e-4, rtol=0)

    grad = np.array([0.7, -1.3, 2.1])
    world = Grid(fine_shape, fine).voxel_centres_ras()
    ramp = Volume((world @ grad + 10.0).astype(np.float32), fine)
    out = resample(ramp, coarse, psf_fwhm_mm=2.0)
    expected = coarse.voxel_centres_ras() @ grad + 10.0
    interior = (slice(2, -2),) * 3
    np.testing.assert_allclose(out.array[interior], expected[interior], atol=2e-3, rtol=0)
    # the PSF really blurred something: a non-linear (quadratic) image is changed by it
    quad = Volume(((world[..., 0] - world[..., 0].mean()) ** 2).astype(np.float32), fine)
    plain = resample(quad, coarse)
    blurred = resample(quad, coarse, psf_fwhm_mm=2.0)
    assert np.abs(blurred.array[interior] - plain.array[interior]).mean() > 0.1


def _checkerboard(shape, cell: int) -> np.ndarray:
    return np.where((np.indices(shape) // cell).sum(0) % 2 == 0, 1.0, -1.0).astype(np.float32)


def test_psf_suppresses_aliasing_of_checkerboard():
    fine_shape, fine, coarse = _fine_and_coarse()
    # 1.5 mm cells: well above the 2 mm grid's Nyquist frequency; every coarse voxel centre hits a fine voxel
    # centre, so plain linear sampling returns the raw +-1 values (full-amplitude aliasing)
    vol = Volume(_checkerboard(fine_shape, 3), fine)
    plain = resample(vol, coarse)
    psf = resample(vol, coarse, psf_fwhm_mm=2.0)
    assert set(np.unique(plain.array).tolist()) == {-1.0, 1.0}
    assert plain.array.var() > 0.5
    assert psf.array.var() < 1e-2 * plain.array.var()
    assert np.abs(psf.array).max() < 0.1

    # 0.5 mm cells (one fine voxel): plain sampling aliases the zero-mean pattern to a constant -1 everywhere,
    # the PSF-blurred one gives its true local mean, 0
    vol1 = Volume(_checkerboard(fine_shape, 1), fine)
    np.testing.assert_array_equal(resample(vol1, coarse).array, -1.0)
    np.testing.assert_allclose(resample(vol1, coarse, psf_fwhm_mm=2.0).array, 0.0, atol=1e-3)


def test_psf_sigma_in_source_voxels_is_analytic():
    """Parallel axes: σ² = (FWHM² − source spacing²)·k² per axis (k = FWHM→σ), in source voxels, clipped at 0."""
    spacing = np.array([0.5, 1.0, 2.0])
    source = Volume(np.zeros((4, 4, 4), np.float32), _affine(np.diag(spacing), [1.0, 2.0, 3.0]))
    ref = Grid((3, 3, 3), _affine(np.diag([2.0, 3.0, 1.0]), [0.0, 0.0, 0.0]))
    fwhm = np.array([2.0, 3.0, 1.0])
    sigma = psf_sigma_source_voxels(source, ref, np.eye(4), fwhm)
    expected = np.sqrt(np.clip(fwhm ** 2 - spacing ** 2, 0, None)) * FWHM_TO_SIGMA / spacing
    np.testing.assert_allclose(sigma, expected, atol=1e-12)
    assert sigma[2] == 0.0 and sigma[0] > 0
    # a 90° rotation about z between the frames swaps which source axis sees which reference FWHM
    swap = geometry.rigid_matrix(geometry.rotation_matrix([0.0, 0.0, 90.0]))
    sigma_rot = psf_sigma_source_voxels(source, ref, swap, fwhm)
    fwhm_on_source = fwhm[[1, 0, 2]]
    expected_rot = np.sqrt(np.clip(fwhm_on_source ** 2 - spacing ** 2, 0, None)) * FWHM_TO_SIGMA / spacing
    np.testing.assert_allclose(sigma_rot, expected_rot, atol=1e-9)


def test_psf_with_nearest_raises():
    fine_shape, fine, coarse = _fine_and_coarse()
    vol = Volume(np.zeros(fine_shape, np.int16), fine)
    with pytest.raises(ValueError):
        resample(vol, coarse, interpolation="nearest", psf_fwhm_mm=2.0)
    with pytest.raises(ValueError):
        resample(vol, coarse, interpolation="cubic")


# ----------------------------------------------------------------------------------------------------------------
# 5. geometry helpers
# ----------------------------------------------------------------------------------------------------------------

def test_rotation_matrix_matches_scipy_and_is_proper():
    for rotvec in ([0.0, 0.0, 90.0], [10.0, -20.0, 35.0], [170.0, 5.0, -3.0]):
        r = geometry.rotation_matrix(rotvec)
        np.testing.assert_allclose(r, Rotation.from_rotvec(rotvec, degrees=True).as_matrix(), atol=1e-12)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        assert geometry.rotation_angle_deg(r) == pytest.approx(np.linalg.norm(rotvec))
        np.testing.assert_allclose(r @ np.asarray(rotvec), rotvec, atol=1e-10)  # the axis is fixed
    np.testing.assert_allclose(geometry.rotation_matrix([0, 0, 90]) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_array_equal(geometry.rotation_matrix([0, 0, 0]), np.eye(3))


def test_rigid_matrix_about_centre():
    r = geometry.rotation_matrix([30.0, -10.0, 45.0])
    c = np.array([12.0, -7.0, 3.5])
    m = geometry.rigid_matrix(r, center_mm=c)
    np.testing.assert_allclose(geometry.apply_matrix(m, c), c, atol=1e-12)
    p = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(geometry.apply_matrix(m, p), r @ (p - c) + c, atol=1e-12)
    assert np.linalg.norm(geometry.apply_matrix(m, p) - p) > 1.0
    t = np.array([1.0, -2.0, 0.5])
    mt = geometry.rigid_matrix(r, translation_mm=t, center_mm=c)
    np.testing.assert_allclose(geometry.apply_matrix(mt, c), c + t, atol=1e-12)
    assert geometry.is_rigid(mt)
    assert not geometry.is_rigid(AFFINES["left_handed"])


def test_ras_lps_matrices_inverse_and_consistent_with_sitk():
    m = geometry.rigid_matrix(geometry.rotation_matrix([15.0, 25.0, -40.0]), (3.0, -8.0, 11.0), (1.0, 2.0, 3.0))
    m[:3, :3] = m[:3, :3] @ np.diag([1.1, 0.9, 1.05])  # general affine, not only rigid
    lps = geometry.ras_matrix_to_lps(m)
    assert not np.allclose(lps, m)
    np.testing.assert_allclose(geometry.lps_matrix_to_ras(lps), m, atol=1e-12)
    np.testing.assert_allclose(geometry.ras_matrix_to_lps(geometry.lps_matrix_to_ras(m)), m, atol=1e-12)

    tx = itk_transform_from_ras(m)
    rng = np.random.default_rng(3)
    for p_ras in rng.uniform(-50, 50, size=(5, 3)):
        p_lps = FLIP @ p_ras
        mapped_lps = np.array(tx.TransformPoint([float(v) for v in p_lps]))
        np.testing.assert_allclose(mapped_lps, FLIP @ geometry.apply_matrix(m, p_ras), atol=1e-9)
        np.testing.assert_allclose(mapped_lps, geometry.apply_matrix(lps, p_lps), atol=1e-9)


def test_same_grid_tolerance():
    a = AFFINES["oblique"]
    ok, reason = geometry.same_grid(SHAPE, a, SHAPE, a.copy())
    assert ok and reason == ""
    shifted = a.copy()
    shifted[:3, 3] += [0.01, 0.0, 0.0]
    ok, reason = geometry.same_grid(SHAPE, a, SHAPE, shifted)
    assert not ok and "mm" in reason
    tiny = a.copy()
    tiny[:3, 3] += [1e-5, -1e-5, 1e-5]
    assert geometry.same_grid(SHAPE, a, SHAPE, tiny)[0]
    # a spacing change that moves the far corner by ~0.02 mm is caught too
    stretched = a.copy()
    stretched[:3, 0] *= 1.0005
    assert not geometry.same_grid(SHAPE, a, SHAPE, stretched)[0]
    ok, reason = geometry.same_grid(SHAPE, a, (40, 30, 21), a)
    assert not ok and "shape" in reason


@pytest.mark.parametrize("bad", [
    np.eye(3),
    np.eye(4)[:3],
    np.ones((4, 4, 1)),
    np.diag([1.0, 1.0, 1.0, 2.0]),
    np.vstack([np.eye(4)[:3], [0.0, 0.0, 0.1, 1.0]]),
    np.where(np.eye(4) == 1, np.nan, 0.0),
])
def test_as_matrix_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        geometry.as_matrix(bad)


def test_as_matrix_accepts_lists_and_returns_float64():
    m = geometry.as_matrix([[1, 0, 0, 2], [0, 1, 0, 3], [0, 0, 1, 4], [0, 0, 0, 1]])
    assert m.dtype == np.float64 and m.shape == (4, 4)
    with pytest.raises(ValueError):
        Volume(np.zeros(SHAPE, np.float32), np.diag([1.0, 0.0, 1.0, 1.0]))
