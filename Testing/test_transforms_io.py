"""transforms.json and ITK ``.tfm`` IO; the ``.tfm`` direction is cross-checked against Slicer's MRML (slicer-core)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from infanite.geometry import apply_matrix, ras_matrix_to_lps, rigid_matrix, rotation_matrix
from infanite.io.images import Grid, Volume
from infanite.io.resample import itk_transform_from_ras, resample
from infanite.io.transforms import (read_itk_tfm, read_transforms_json, read_transforms_qc, write_itk_tfm,
                                    write_transforms_json)

T_A = rigid_matrix(rotation_matrix([12.0, -25.0, 40.0]), [7.5, -3.0, 12.0], center_mm=[1.0, 2.0, -3.0])
T_B = rigid_matrix(rotation_matrix([-80.0, 5.0, 170.0]), [-20.0, 31.0, 4.0])


def _write_doc(path, doc) -> str:
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


def _doc(**transforms):
    return {"coordinates": "RAS", "direction": "template_to_stack",
            "transforms": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in transforms.items()}}


# ----------------------------------------------------------------------------------------------------------------
# transforms.json
# ----------------------------------------------------------------------------------------------------------------

def test_json_round_trip(tmp_path):
    qc = {"sub-b": {"ncc": np.float32(0.81), "iterations": np.int64(40), "failed": False, "nan_metric": np.nan},
          "sub-a": {"ncc": 0.9, "per_level": np.array([0.5, 0.7])},
          "sub-c": {"error": "did not converge"}}
    path = write_transforms_json(tmp_path / "out" / "transforms.json", {"sub-b": T_B, "sub-a": T_A}, qc)
    assert path == tmp_path / "out" / "transforms.json"
    assert sorted(p.name for p in path.parent.iterdir()) == ["transforms.json"]   # no temp file left

    doc = json.loads(path.read_text())
    assert list(doc) == ["coordinates", "direction", "transforms", "qc"]
    assert doc["coordinates"] == "RAS" and doc["direction"] == "template_to_stack"
    assert list(doc["transforms"]) == ["sub-a", "sub-b"]
    assert list(doc["qc"]) == ["sub-a", "sub-b", "sub-c"]
    assert all(isinstance(v, float) for row in doc["transforms"]["sub-a"] for v in row)
    assert doc["qc"]["sub-b"] == {"ncc": pytest.approx(0.81), "iterations": 40, "failed": False, "nan_metric": None}
    assert doc["qc"]["sub-a"]["per_level"] == [0.5, 0.7]

    back = read_transforms_json(path)
    assert sorted(back) == ["sub-a", "sub-b"]
    np.testing.assert_array_equal(back["sub-a"], T_A)   # JSON floats round-trip exactly
    np.testing.assert_array_equal(back["sub-b"], T_B)
    assert back["sub-a"].dtype == np.float64 and back["sub-a"].shape == (4, 4)
    assert read_transforms_qc(path)["sub-c"] == {"error": "did not converge"}


def test_write_refuses_matrices_it_could_not_read_back(tmp_path):
    with pytest.raises(ValueError, match=r"'bad'.*not rigid"):
        write_transforms_json(tmp_path / "t.json", {"ok": T_A, "bad": np.diag([2.0, 1.0, 1.0, 1.0])}, {})
    assert list(tmp_path.iterdir()) == []


def _reflection():
    m = T_A.copy()
    m[:3, 0] *= -1
    return m


def _scaled():
    m = T_A.copy()
    m[:3, :3] *= 1.01
    return m


def _last_row():
    m = T_A.copy()
    m[3] = [0.0, 0.0, 0.1, 1.0]
    return m


MATRIX_FAILURES = {
    "3x4": (lambda: T_A[:3].tolist(), r"not 4x4 \(shape \(3, 4\)\)"),
    "ragged": (lambda: [[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]], r"not a 4x4 matrix of numbers"),
    "strings": (lambda: [["a"] * 4] * 4, r"not a 4x4 matrix of numbers"),
    "nan": (lambda: np.where(np.eye(4) == 1, np.nan, T_A).tolist(), r"NaN or infinite"),
    "last_row": (lambda: _last_row().tolist(), r"last row is \[0\.0, 0\.0, 0\.1, 1\.0\], not \[0, 0, 0, 1\]"),
    "scaled": (lambda: _scaled().tolist(), r"not rigid"),
    "reflection": (lambda: _reflection().tolist(), r"not rigid .*det = -1"),
}


@pytest.mark.parametrize("case", sorted(MATRIX_FAILURES))
def test_each_bad_matrix_is_named_with_its_id(tmp_path, case):
    make, pattern = MATRIX_FAILURES[case]
    path = _write_doc(tmp_path / "transforms.json", _doc(**{"good_id": T_A, f"id_{case}": make()}))
    with pytest.raises(ValueError) as err:
        read_transforms_json(path)
    msg = str(err.value)
    assert path in msg
    assert re.search(rf"'id_{case}' (is |contains |has |last row ).*", msg), msg
    assert re.search(pattern, msg), msg
    assert "good_id" not in msg
    assert "1 problem(s)" in msg


def test_nearly_rigid_matrix_within_tolerance_is_accepted(tmp_path):
    m = T_A.copy()
    m[:3, :3] *= 1 + 2e-5
    path = _write_doc(tmp_path / "t.json", _doc(a=m))
    np.testing.assert_array_equal(read_transforms_json(path)["a"], m)


NON_JSON_INF = '{"coordinates": "RAS", "direction": "template_to_stack", "transforms": {"inf_id": ' \
               '[[Infinity, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}}'

FILE_FAILURES = {
    "not_json": ("{not json", r"not valid JSON"),
    "not_object": ("[1, 2]", r"expected a JSON object"),
    "wrong_coordinates": ({**_doc(a=T_A), "coordinates": "LPS"}, r"'coordinates' is 'LPS', expected 'RAS'"),
    "missing_coordinates": ({k: v for k, v in _doc(a=T_A).items() if k != "coordinates"},
                            r"missing 'coordinates'"),
    "wrong_direction": ({**_doc(a=T_A), "direction": "stack_to_template"},
                        r"'direction' is 'stack_to_template', expected 'template_to_stack'"),
    "missing_direction": ({k: v for k, v in _doc(a=T_A).items() if k != "direction"}, r"missing 'direction'"),
    "missing_transforms": ({"coordinates": "RAS", "direction": "template_to_stack"}, r"missing 'transforms'"),
    "transforms_not_mapping": ({**_doc(), "transforms": [T_A.tolist()]}, r"'transforms' must map ids"),
    "infinite": (NON_JSON_INF, r"'inf_id' contains NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(FILE_FAILURES))
def test_each_file_problem_is_reported(tmp_path, case):
    doc, pattern = FILE_FAILURES[case]
    path = _write_doc(tmp_path / f"{case}.json", doc)
    with pytest.raises(ValueError) as err:
        read_transforms_json(path)
    assert path in str(err.value)
    assert re.search(pattern, str(err.value)), str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "nope.json"))):
        read_transforms_json(tmp_path / "nope.json")


def test_all_problems_reported_together(tmp_path):
    doc = _doc(fine=T_A, flat=T_A[:2].tolist(), stretched=_scaled(), skewed_row=_last_row())
    doc["coordinates"] = "LPS"
    del doc["direction"]
    path = _write_doc(tmp_path / "many.json", doc)
    with pytest.raises(ValueError) as err:
        read_transforms_json(path)
    msg = str(err.value)
    assert path in msg and "5 problem(s)" in msg
    for needle in ("'coordinates' is 'LPS'", "missing 'direction'", "'flat' is not 4x4", "'stretched' is not rigid",
                   "'skewed_row' last row"):
        assert needle in msg, msg
    assert "'fine'" not in msg


def test_truth_json_is_accepted(tmp_path):
    truth = {"coordinates": "RAS", "direction": "template_to_stack", "units": "mm", "template_source": "phantom",
             "config": {"seed": 1},
             "stacks": {"24_0001_101": {"template_to_stack": T_A.tolist(), "voxel_to_ras": np.eye(4).tolist(),
                                        "plane": "axial", "subject": "0001", "ga_weeks": 24.3},
                        "24_0001_201": {"template_to_stack": T_B.tolist(), "voxel_to_ras": np.eye(4).tolist(),
                                        "plane": "coronal", "subject": "0001", "ga_weeks": 24.3}},
             "subjects": {"0001": {"subject": "0001", "ga_weeks": 24.3}}}
    path = _write_doc(tmp_path / "truth.json", truth)
    back = read_transforms_json(path)
    assert sorted(back) == ["24_0001_101", "24_0001_201"]
    np.testing.assert_array_equal(back["24_0001_201"], T_B)

    truth["stacks"]["24_0001_301"] = {"plane": "sagittal"}
    truth["stacks"]["24_0001_102"] = {"template_to_stack": _scaled().tolist()}
    truth["direction"] = "stack_to_template"
    with pytest.raises(ValueError) as err:
        read_transforms_json(_write_doc(tmp_path / "truth_bad.json", truth))
    msg = str(err.value)
    assert "'24_0001_301' has no 'template_to_stack'" in msg
    assert "'24_0001_102' template_to_stack is not rigid" in msg
    assert "'direction' is 'stack_to_template'" in msg


def test_truth_json_written_by_the_simulator_reads_back(tmp_path):
    """A real simulated cohort's truth.json is accepted as transforms (guards against the two drifting apart)."""
    from infanite.reference.phantom import phantom_library
    from infanite.simulation.stacks import SimulationConfig, simulate_cohort

    cfg = SimulationConfig(n_subjects=1, stacks_per_subject=2, ga_range=(30.0, 30.0), inplane_spacing_mm=2.0,
                           seed=4)
    simulate_cohort(cfg, tmp_path, library=phantom_library(1.6))
    truth = json.loads((tmp_path / "truth.json").read_text())
    transforms = read_transforms_json(tmp_path / "truth.json")
    assert set(transforms) == set(truth["stacks"])
    for sid, matrix in transforms.items():
        np.testing.assert_allclose(matrix, truth["stacks"][sid]["template_to_stack"])


# ----------------------------------------------------------------------------------------------------------------
# ITK .tfm
# ----------------------------------------------------------------------------------------------------------------

def test_tfm_round_trip_and_sitk_semantics(tmp_path):
    path = write_itk_tfm(tmp_path / "sub" / "a.tfm", T_A)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.tfm"]
    assert "AffineTransform_double_3_3" in path.read_text()
    np.testing.assert_allclose(read_itk_tfm(path), T_A, atol=1e-12, rtol=0)

    # The file holds the ITK resampling transform: template LPS point -> stack LPS point, the same transform
    # infanite.io.resample hands to sitk.Resample.
    tx = sitk.ReadTransform(str(path))
    lps = ras_matrix_to_lps(T_A)
    ref = itk_transform_from_ras(T_A)
    for p in ([0.0, 0.0, 0.0], [10.0, -20.0, 35.0], [-42.0, 7.0, -3.0]):
        np.testing.assert_allclose(tx.TransformPoint(p), apply_matrix(lps, np.array(p)), atol=1e-9)
        np.testing.assert_allclose(tx.TransformPoint(p), ref.TransformPoint(p), atol=1e-9)


def test_read_tfm_accepts_other_linear_itk_transforms_and_rejects_nonlinear(tmp_path):
    euler = sitk.Euler3DTransform([3.0, -4.0, 5.0], 0.1, -0.2, 0.3, [1.0, 2.0, 3.0])
    sitk.WriteTransform(euler, str(tmp_path / "euler.tfm"))
    m = read_itk_tfm(tmp_path / "euler.tfm")
    for p in ([0.0, 0.0, 0.0], [10.0, -20.0, 35.0]):
        lps = np.array(euler.TransformPoint(p))
        ras_in = np.array(p) * [-1, -1, 1]
        np.testing.assert_allclose(apply_matrix(m, ras_in), lps * [-1, -1, 1], atol=1e-9)

    bspline = sitk.BSplineTransformInitializer(sitk.Image([8, 8, 8], sitk.sitkFloat32), [4, 4, 4])
    params = np.array(bspline.GetParameters())
    bspline.SetParameters(list(np.random.default_rng(0).normal(0, 2.0, params.size)))
    sitk.WriteTransform(bspline, str(tmp_path / "bspline.tfm"))
    with pytest.raises(ValueError, match=r"bspline\.tfm.*not a linear"):
        read_itk_tfm(tmp_path / "bspline.tfm")

    (tmp_path / "junk.tfm").write_text("hello\n")
    with pytest.raises(ValueError, match=r"junk\.tfm"):
        read_itk_tfm(tmp_path / "junk.tfm")
    with pytest.raises(ValueError, match=r"missing\.tfm.*does not exist"):
        read_itk_tfm(tmp_path / "missing.tfm")


# ----------------------------------------------------------------------------------------------------------------
# Slicer (slicer-core): the .tfm loads as stack -> template, and hardening agrees with our resampling
# ----------------------------------------------------------------------------------------------------------------

def _slicer():
    return pytest.importorskip("slicer", reason="slicer-core (3D Slicer MRML, `pip install slicer-core`) "
                                                "is needed to check the .tfm direction in Slicer")


def _vtk_to_array(getter) -> np.ndarray:
    import vtk

    slicer = _slicer()
    m = vtk.vtkMatrix4x4()
    getter(m)
    return slicer.util.arrayFromVTKMatrix(m)


# oblique, anisotropic stack grid (thick slices along k)
STACK_SHAPE = (40, 36, 12)
STACK_AFFINE = np.eye(4)
STACK_AFFINE[:3, :3] = rotation_matrix([20.0, 35.0, -15.0]) @ np.diag([0.9, 0.8, 3.5])
STACK_AFFINE[:3, 3] = [-12.0, 8.0, -15.0]
MARKER = (23, 14, 7)
# template_to_stack that brings the stack's marker well inside the template field of view
T_STACK = rigid_matrix(rotation_matrix([-30.0, 10.0, 55.0]), [6.0, -4.0, 9.0])


def _load_tfm_in_slicer(path):
    slicer = _slicer()
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, f"Slicer could not read {path}"
    return scene, node


def test_slicer_loads_tfm_as_stack_to_template(tmp_path):
    path = write_itk_tfm(tmp_path / "reg.tfm", T_STACK)
    _scene, node = _load_tfm_in_slicer(path)
    assert node.IsLinear()
    to_parent = _vtk_to_array(node.GetMatrixTransformToParent)
    np.testing.assert_allclose(to_parent, np.linalg.inv(T_STACK), atol=1e-9, rtol=0)
    np.testing.assert_allclose(_vtk_to_array(node.GetMatrixTransformFromParent), T_STACK, atol=1e-9, rtol=0)


def test_slicer_written_tfm_reads_back(tmp_path):
    """A transform saved by Slicer (ToParent = stack -> template) reads back as template_to_stack."""
    slicer = _slicer()
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.linalg.inv(T_STACK)))
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(tmp_path / "slicer.tfm"))
    assert storage.WriteData(node) == 1
    np.testing.assert_allclose(read_itk_tfm(tmp_path / "slicer.tfm"), T_STACK, atol=1e-9, rtol=0)


def test_hardening_in_slicer_matches_our_resampling(tmp_path):
    slicer = _slicer()
    path = write_itk_tfm(tmp_path / "reg.tfm", T_STACK)
    scene, node = _load_tfm_in_slicer(path)

    array = np.zeros(STACK_SHAPE, np.float32)
    array[MARKER] = 1000.0
    stack = Volume(array, STACK_AFFINE)
    vol = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "stack")
    vol.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(STACK_AFFINE))
    slicer.util.updateVolumeFromArray(vol, np.ascontiguousarray(array.transpose(2, 1, 0)))
    np.testing.assert_allclose(_vtk_to_array(vol.GetIJKToRASMatrix), STACK_AFFINE, atol=1e-9)

    vol.SetAndObserveTransformNodeID(node.GetID())
    assert slicer.vtkSlicerTransformLogic().hardenTransform(vol)
    assert vol.GetParentTransformNode() is None
    hardened = _vtk_to_array(vol.GetIJKToRASMatrix)
    np.testing.assert_allclose(hardened, np.linalg.inv(T_STACK) @ STACK_AFFINE, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(vol).transpose(2, 1, 0), array)  # voxels untouched
    marker_slicer = apply_matrix(hardened, np.array(MARKER, float))   # template RAS mm, per Slicer

    # our resampling of the stack onto a fine template grid puts the marker at the same place
    spacing = 0.5
    centre = apply_matrix(np.linalg.inv(T_STACK), apply_matrix(STACK_AFFINE, (np.array(STACK_SHAPE) - 1) / 2))
    shape = (100, 100, 100)
    grid_affine = np.diag([spacing, spacing, spacing, 1.0])
    grid_affine[:3, 3] = np.round(centre) - spacing * (np.array(shape) - 1) / 2
    aligned = resample(stack, Grid(shape, grid_affine), T_STACK, "linear")
    weights = np.clip(aligned.array.astype(np.float64), 0, None)
    assert weights.sum() > 0, "marker not found in the resampled image"
    com_voxel = np.array(ndimage.center_of_mass(weights))
    marker_ours = apply_matrix(grid_affine, com_voxel)
    assert np.linalg.norm(marker_ours - marker_slicer) < spacing / 2, (marker_ours, marker_slicer)
    # and it is nowhere near where the opposite convention (ToParent = template_to_stack) would put it
    assert np.linalg.norm(apply_matrix(T_STACK @ STACK_AFFINE, np.array(MARKER, float)) - marker_ours) > 10
