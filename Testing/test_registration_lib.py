"""INFANiTERegistrationLib against real MRML (slicer-core): review nodes, manual correction + refine, accept."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slicer


def _rotation(deg: float, axis: int) -> np.ndarray:
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


@pytest.fixture(scope="module")
def searched(tmp_path_factory, phantom_registered):
    """The phantom cohort registered from its true poses (refined: real NMI values), as ``infanite register``."""
    from infanite.registration.register import register_cohort

    root = phantom_registered["root"]
    out = tmp_path_factory.mktemp("review") / "search"
    register_cohort(root / "sim" / "cohort.tsv", phantom_registered["templates"], out,
                    init_transforms=root / "sim" / "truth.json")
    return {"manifest": root / "sim" / "cohort.tsv", "templates": phantom_registered["templates"], "search": out,
            "truth": root / "sim" / "truth.json"}


#: what ``benchmarks/registration.py`` counts as a successful registration (README, "Registration benchmark")
REGISTRATION_SUCCESS_DEG, REGISTRATION_SUCCESS_MM = 5.0, 3.0


def _pose_error(truth: np.ndarray, pose: np.ndarray) -> tuple:
    """Rotation (degrees) and translation (mm) of ``inv(truth) @ pose`` (both template → stack)."""
    error = np.linalg.inv(truth) @ pose
    angle = np.degrees(np.arccos(np.clip((np.trace(error[:3, :3]) - 1) / 2, -1, 1)))
    return float(angle), float(np.linalg.norm(error[:3, 3]))


def _review(mrml, searched):
    from INFANiTERegistrationLib import RegistrationReview

    return RegistrationReview(mrml["scene"], searched["manifest"], searched["templates"], searched["search"])


def _matrix(node) -> np.ndarray:
    from INFANiTECommonLib.mrml import get_transform

    return get_transform(node)


def test_review_rows_table_and_nodes(mrml, searched):
    from infanite.io.transforms import read_transforms_json, read_transforms_qc

    review = _review(mrml, searched)
    qc = read_transforms_qc(searched["search"] / "transforms.json")
    rows = review.rows()
    assert [r.stack_id for r in rows] == sorted(qc, key=lambda s: qc[s]["nmi"])     # nothing flagged: by NMI
    assert [r.nmi for r in rows] == [qc[r.stack_id]["nmi"] for r in rows]
    table = review.update_table()
    assert table.GetNumberOfRows() == len(rows)
    assert [table.GetCellText(i, 0) for i in range(len(rows))] == review.stack_ids
    assert table.GetCellText(0, 2) == f"{rows[0].nmi:.4f}"
    # column names are the header (else qMRMLTableModel shows them as an editable first row and every view row is
    # one off its table row); the review is read-only; a selected view row names its stack
    assert table.GetUseColumnTitleAsColumnHeader() and table.GetLocked()
    assert [review.stack_at_row(i) for i in range(len(rows))] == review.stack_ids
    with pytest.raises(ValueError, match="row 99"):
        review.stack_at_row(99)

    scene = mrml["scene"]
    transforms = review.build_transform_nodes()                 # one transform node per stack, volumes later
    assert [t.GetName() for t in transforms] == [f"{s} to template" for s in review._stacks]
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0
    sid = review.stack_ids[0]
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    assert composites.GetNumberOfItems() == 3
    links = [0, 1, 0]                                           # the user's own view-link settings …
    for i, link in enumerate(links):
        composites.GetItemAsObject(i).SetLinkedControl(link)
    nodes = review.show(sid)
    assert nodes.transform.GetID() == transforms[list(review._stacks).index(sid)].GetID()
    for i in range(3):
        c = composites.GetItemAsObject(i)
        assert c.GetBackgroundVolumeID() == nodes.template.GetID()
        assert c.GetForegroundVolumeID() == nodes.volume.GetID()
        assert c.GetForegroundOpacity() == pytest.approx(0.5)
        assert c.GetLinkedControl() == links[i]                # … are left as they were
    from INFANiTERegistrationLib import set_foreground_opacity

    set_foreground_opacity(scene, 0.8)
    assert all(composites.GetItemAsObject(i).GetForegroundOpacity() == pytest.approx(0.8) for i in range(3))
    # the stack sits under its transform: stack → template = inv(template_to_stack of transforms.json)
    assert nodes.volume.GetParentTransformNode().GetID() == nodes.transform.GetID()
    t2s = read_transforms_json(searched["search"] / "transforms.json")[sid]
    np.testing.assert_allclose(_matrix(nodes.transform), np.linalg.inv(t2s), atol=1e-9)
    # the template node is the template file's volume, with its world geometry
    template = review.library.for_ga(qc[sid]["template_ga"], review.options.template_mode)
    from INFANiTECommonLib.mrml import node_volume

    shown = node_volume(nodes.template)
    np.testing.assert_allclose(shown.voxel_to_ras, template.t2w.voxel_to_ras, atol=1e-6)
    np.testing.assert_array_equal(shown.array, template.t2w.array)
    # every slice view passes through the brain centre
    centre = review.brain_centre(sid)
    slices = scene.GetNodesByClass("vtkMRMLSliceNode")
    for i in range(slices.GetNumberOfItems()):
        from INFANiTECommonLib.mrml import numpy_matrix

        slice_to_ras = numpy_matrix(slices.GetItemAsObject(i).GetSliceToRAS())
        np.testing.assert_allclose(slice_to_ras[:3, 3], centre, atol=1e-6)
    # stack data equals the input file (world geometry kept)
    record_t2 = nib.load(str(review._stacks[sid].record.t2w))
    np.testing.assert_allclose(node_volume(nodes.volume).voxel_to_ras, record_t2.affine, atol=1e-5)
    assert review.neighbour(sid, 1) == review.stack_ids[1]
    assert review.neighbour(review.stack_ids[-1], 1) == review.stack_ids[0]
    assert review.neighbour(sid, -1) == review.stack_ids[-1]


def test_adjust_turns_on_rigid_handles(mrml, searched):
    review = _review(mrml, searched)
    sid = review.stack_ids[0]
    review.set_adjust(sid, True)
    display = review.nodes(sid).transform.GetDisplayNode()
    assert display.GetEditorVisibility() and display.GetEditorRotationEnabled()
    assert display.GetEditorTranslationEnabled() and not display.GetEditorScalingEnabled()
    if hasattr(display, "GetEditorScalingSliceEnabled"):
        assert not display.GetEditorScalingSliceEnabled() and display.GetEditorRotationSliceEnabled()
    assert display.GetEditorSliceIntersectionVisibility()
    assert review.rows()[0].status == "adjusting"
    review.set_adjust(sid, False)
    assert not display.GetEditorVisibility()


def test_showing_another_stack_turns_the_previous_handles_off(mrml, searched):
    """Next/Previous while Adjust is on: the handles of the stack left behind must not stay on."""
    review = _review(mrml, searched)
    first, second = review.stack_ids[:2]
    review.show(first)
    review.set_adjust(first, True)
    assert review.transform_node(first).GetDisplayNode().GetEditorVisibility()
    review.show(second)
    assert not review.transform_node(first).GetDisplayNode().GetEditorVisibility()
    review.set_adjust(second, True)
    review.show(second)                                           # showing the same stack again keeps them
    assert review.transform_node(second).GetDisplayNode().GetEditorVisibility()


def test_refine_in_a_background_process_starts_from_the_manual_pose(mrml, searched, tmp_path):
    """"Refine from here" as the module runs it: ``infanite register --init-transforms`` in a background process
    (the GUI never blocks), started from the pose of the transform node, its result applied to the node."""
    from infanite.io.transforms import read_transforms_json

    from INFANiTECommonLib.mrml import set_transform
    from INFANiTECommonLib.process import BackgroundProcess, infanite_env

    review = _review(mrml, searched)
    review.update_table()
    sid = review.stack_ids[0]
    truth = read_transforms_json(searched["truth"])[sid]
    manual = _rotation(6.0, 1) @ np.array([[1, 0, 0, -2.0], [0, 1, 0, 3.0], [0, 0, 1, 1.0], [0, 0, 0, 1]]) \
        @ np.linalg.inv(truth)
    set_transform(review.transform_node(sid), manual)
    work = tmp_path / "refine"
    command = review.refine_command(sid, work)
    np.testing.assert_allclose(read_transforms_json(work / sid / "start_transforms.json")[sid],
                               np.linalg.inv(manual), atol=1e-9)                    # from the manual pose
    assert "--init-transforms" in command and command[command.index("--manifest") + 1] == str(work / sid /
                                                                                             "input.tsv")
    with pytest.raises(ValueError, match="wrote no pose"):
        review.finish_refine(sid, work)                           # nothing yet (as after a cancel)
    process = BackgroundProcess(command, env=infanite_env()).start()
    assert process.wait(timeout=600) == 0, process.last_lines()
    qc = review.finish_refine(sid, work)
    final = np.linalg.inv(_matrix(review.transform_node(sid)))
    np.testing.assert_allclose(final, read_transforms_json(work / sid / "out" / "transforms.json")[sid], atol=1e-9)
    start_angle, start_mm = _pose_error(truth, np.linalg.inv(manual))
    angle, mm = _pose_error(truth, final)
    assert angle < start_angle and mm < start_mm, (angle, mm, start_angle, start_mm)
    assert angle < REGISTRATION_SUCCESS_DEG and mm < REGISTRATION_SUCCESS_MM, (angle, mm)
    row = next(r for r in review.rows() if r.stack_id == sid)
    assert row.status == "refined" and row.confidence == "manual" and row.nmi == pytest.approx(qc["nmi"])
    assert review.table.GetCellText(review.stack_ids.index(sid), 6) == "refined"


def _files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in (folder / "stacks").glob("*.nii.gz"))


def test_accept_writes_what_the_command_line_writes(mrml, searched, tmp_path):
    from INFANiTECommonLib.mrml import set_transform

    review = _review(mrml, searched)
    first, second = review.stack_ids[:2]
    # a manual correction of one stack is what gets written
    corrected = _rotation(2.0, 0) @ _matrix(review.nodes(first).transform)
    set_transform(review.nodes(first).transform, corrected)
    out = tmp_path / "accepted"
    # "Accept": the stack's command line in a background process, as the module runs it
    from INFANiTECommonLib.process import BackgroundProcess, infanite_env

    process = BackgroundProcess(review.accept_command([first], out), env=infanite_env()).start()
    assert process.wait(timeout=600) == 0, process.last_lines()
    assert review.finish_accept(out) == []
    rows = list(csv.DictReader(open(out / "registered.tsv"), delimiter="\t"))
    assert [r["subject_id"] for r in rows] == [first]
    assert [r.stack_id for r in review.rows() if r.status == "accepted"] == [first]
    # "Accept all": the same command line for every stack
    process = BackgroundProcess(review.accept_command(review.stack_ids, out), env=infanite_env()).start()
    assert process.wait(timeout=600) == 0, process.last_lines()
    assert review.finish_accept(out) == []
    rows = list(csv.DictReader(open(out / "registered.tsv"), delimiter="\t"))
    assert sorted(r["subject_id"] for r in rows) == sorted(review.stack_ids)
    assert all(r.status == "accepted" for r in review.rows())

    cli = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "infanite", "register", "--manifest", str(searched["manifest"]),
                    "--templates", str(searched["templates"]), "--out", str(cli), "--fixed-transforms",
                    str(out / "accepted_transforms.json")], check=True, capture_output=True)
    assert _files(out) == _files(cli) and len(_files(out)) >= 8
    for rel in _files(out):
        a, b = nib.load(str(out / rel)), nib.load(str(cli / rel))
        np.testing.assert_array_equal(a.affine, b.affine)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert (out / "registered.tsv").read_text() == (cli / "registered.tsv").read_text()
    # the accepted pose is the corrected one, and the written stack lies on the template grid in every library
    from infanite.io.transforms import read_transforms_json

    np.testing.assert_allclose(read_transforms_json(out / "accepted_transforms.json")[first],
                               np.linalg.inv(corrected), atol=1e-9)
    aligned = out / "stacks" / f"{first}_T2w.nii.gz"
    template = review.library.for_ga(review._template_ga(first), review.options.template_mode)
    _assert_geometry_round_trip(mrml["scene"], aligned, template.t2w.voxel_to_ras)


def _assert_geometry_round_trip(scene, path: Path, expected_affine: np.ndarray) -> None:
    import SimpleITK as sitk
    import slicer

    from infanite.io.images import sitk_voxel_to_ras

    from INFANiTECommonLib.mrml import numpy_matrix

    np.testing.assert_allclose(nib.load(str(path)).affine, expected_affine, atol=1e-5)
    np.testing.assert_allclose(sitk_voxel_to_ras(sitk.ReadImage(str(path))), expected_affine, atol=1e-5)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "reread")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetForceRightHandedIJKCoordinateSystem(False)
    assert storage.ReadData(node)
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    np.testing.assert_allclose(numpy_matrix(m), expected_affine, atol=1e-4)
    assert slicer.util.arrayFromVolume(node).shape == tuple(nib.load(str(path)).shape[::-1])


def test_accept_refuses_the_search_folder_and_unknown_stacks(mrml, searched):
    review = _review(mrml, searched)
    with pytest.raises(ValueError, match="other than the registration"):
        review.accept_command(review.stack_ids[:1], searched["search"])
    with pytest.raises(ValueError, match="unknown stack"):
        review.accept_command(["nope"], searched["search"].parent / "x")
    with pytest.raises(ValueError, match="unknown stack"):
        review.refine_command("nope", searched["search"].parent / "x")


def test_missing_registration_is_a_clear_error(mrml, searched, tmp_path):
    from INFANiTERegistrationLib import RegistrationReview

    with pytest.raises(ValueError, match="transforms.json not found"):
        RegistrationReview(mrml["scene"], searched["manifest"], searched["templates"], tmp_path)


def test_manifest_from_nodes_keeps_geometry_and_checks_inputs(mrml, searched, tmp_path):
    from infanite.io.cohort import read_manifest

    from INFANiTECommonLib.mrml import load_volume
    from INFANiTERegistrationLib import StackInput, manifest_from_nodes, registration_command

    scene = mrml["scene"]
    cohort, _ = read_manifest(searched["manifest"])
    record = cohort.stacks[0]
    t2 = load_volume(scene, record.t2w, "stack one")
    seg = load_volume(scene, record.seg, "stack one labels", labelmap=True)
    with pytest.raises(ValueError, match="needs a brain mask or a tissue segmentation"):
        manifest_from_nodes([StackInput(t2, ga_weeks=28.0)], tmp_path / "w0")
    with pytest.raises(ValueError, match="used twice"):
        manifest_from_nodes([StackInput(t2, seg=seg), StackInput(t2, seg=seg)], tmp_path / "w1")
    assert not (tmp_path / "w1").exists()                  # nothing written before the checks pass
    manifest = manifest_from_nodes([StackInput(t2, seg=seg, ga_weeks=record.scan_age)], tmp_path / "w")
    written, problems = read_manifest(manifest)
    assert not problems and written.stacks[0].subject_id == "stack_one"
    assert written.stacks[0].scan_age == record.scan_age
    for src, dst in ((record.t2w, written.stacks[0].t2w), (record.seg, written.stacks[0].seg)):
        a, b = nib.load(str(src)), nib.load(str(dst))
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
        np.testing.assert_allclose(np.asarray(a.dataobj), np.asarray(b.dataobj), atol=1e-4)
    command = registration_command(manifest, searched["templates"], tmp_path / "o", spacing_mm=1.6, jobs=2)
    assert command[1:4] == ["-m", "infanite", "register"] and "--progress-json" in command
    assert command[command.index("--spacing") + 1] == "1.6"


def test_sample_data_sources_match_the_shipped_files(mrml):
    """One source per file (SampleData applies ONE loadFileProperties dict to all files of a source and writes
    ``fileName`` into a copy of it): the T2 stacks load as scalar volumes, the masks as label maps."""
    import hashlib

    from INFANiTECommonLib.sampledata import sample_sources

    folder = Path(__file__).resolve().parents[1] / "INFANiTERegistration" / "Resources" / "SampleData"
    sources = sample_sources(folder)
    assert len(sources) == 12
    masks = [s for s in sources if s["sampleName"].endswith("brain mask")]
    assert len(masks) == 6
    scene = mrml["scene"]
    volumes = mrml["logics"]["volumes"]
    for source in sources:
        assert len(source["uris"]) == len(source["fileNames"]) == len(source["checksums"]) == 1
        uri, name, checksum = source["uris"][0], source["fileNames"][0], source["checksums"][0]
        path = folder / name
        assert uri == path.as_uri()
        assert checksum == "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        properties = dict(source["loadFileProperties"])            # what SampleData.loadNode does with it
        properties["fileName"] = str(path)
        labelmap = source in masks
        assert properties["labelmap"] is labelmap
        node = volumes.AddArchetypeVolume(str(path), source["nodeNames"][0], 1 if properties["labelmap"] else 0)
        assert bool(node.IsA("vtkMRMLLabelMapVolumeNode")) is labelmap
        scene.RemoveNode(node)
    for mask in masks:
        t2_name = mask["fileNames"][0].replace("_desc-brain_mask", "")
        image, labels = nib.load(str(folder / t2_name)), nib.load(str(folder / mask["fileNames"][0]))
        np.testing.assert_allclose(image.affine, labels.affine, atol=1e-4)     # mask on the stack's grid
        assert float(np.asarray(labels.dataobj).sum()) > 1000


def test_dependency_list_names_what_the_core_imports():
    from INFANiTECommonLib.dependencies import IMPORT_NAMES, missing_packages, requirement_lines

    names = [line.split(">")[0] for line in requirement_lines()]
    assert names and set(names) == set(IMPORT_NAMES)
    assert "torch" not in " ".join(requirement_lines())           # torch only through the PyTorch extension
    assert missing_packages() == []                              # this environment has the core's dependencies


def test_stacks_loaded_by_slicer_are_written_with_their_world_geometry(mrml, mial_dir, tmp_path):
    """Slicer's own reader flips the slice axis of left-handed files (ForceRightHandedIJKCoordinateSystem): the
    stacks a user loads that way must still be written with the same world geometry (same image in RAS)."""
    from infanite.io.images import load_nifti
    from infanite.io.resample import resample

    from INFANiTECommonLib.mrml import save_volume

    scene = mrml["scene"]
    # the MIAL stacks are right-handed; a left-handed copy of run 1 (i axis reversed: the same image in RAS)
    image = nib.load(str(mial_dir / "sub-01_run-1_T2w.nii.gz"))
    reverse_i = np.diag([-1.0, 1.0, 1.0, 1.0])
    reverse_i[0, 3] = image.shape[0] - 1
    left = image.affine @ reverse_i
    assert np.linalg.det(left[:3, :3]) < 0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1], left), str(tmp_path / "left.nii.gz"))
    paths = [mial_dir / f"sub-01_run-{run}_T2w.nii.gz" for run in (1, 3, 5)] + [tmp_path / "left.nii.gz"]
    flipped = 0
    for run, path in enumerate(paths):                       # one stack per orientation (RAS, IRP, IAR) + LAS
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"run{run}")
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))                        # Slicer's defaults, as "Add data" uses them
        assert storage.ReadData(node)
        written = save_volume(node, tmp_path / f"run{run}.nii.gz")
        original, copy = load_nifti(path), load_nifti(written)
        flipped += not np.allclose(copy.voxel_to_ras, original.voxel_to_ras, atol=1e-3)
        same_world = resample(copy, original.grid, None, "nearest")
        np.testing.assert_array_equal(same_world.array, original.array)
    assert flipped == 1      # Slicer's reader reversed the left-handed copy's k axis, and only that one


def test_stack_entries_round_trip_through_the_parameter_node_string(mrml, searched):
    """The module keeps each added stack as one string of its parameter node; the entry is the one place that
    format lives, and a removed node or a malformed entry is reported, never half-read."""
    from infanite.io.cohort_checks import load_cohort

    from INFANiTECommonLib.mrml import load_volume
    from INFANiTERegistrationLib import StackEntry

    scene = mrml["scene"]
    record = load_cohort(searched["manifest"], check_images=False).stacks[0]
    t2 = load_volume(scene, record.t2w)
    seg = load_volume(scene, record.seg, labelmap=True)
    entry = StackEntry.from_nodes(t2, None, seg, 27.5)
    assert StackEntry.from_parameter(entry.to_parameter()) == entry
    stack = entry.stack_input(scene)
    assert stack.t2w is t2 and stack.seg is seg and stack.mask is None and stack.ga_weeks == 27.5
    assert StackEntry.from_nodes(t2, seg, None, 0.0).ga_weeks is None              # GA 0: unknown
    with pytest.raises(ValueError, match="brain mask or tissue segmentation"):
        StackEntry.from_nodes(t2, None, None, 28.0)
    for bad in ("", "a|b", "a|b|c|twenty"):
        with pytest.raises(ValueError, match="input stack entry"):
            StackEntry.from_parameter(bad)
    scene.RemoveNode(seg)
    assert entry.stack_input(scene).seg is None


def test_a_mask_drawn_in_the_segment_editor_is_the_stack_s_brain_mask(mrml, searched, tmp_path):
    """A segmentation node as the mask: exported on the T2's grid by Slicer's segmentations logic."""
    from slicer import vtkSlicerSegmentationsModuleLogic as SegmentationsLogic

    from infanite.io.cohort import read_manifest

    from INFANiTECommonLib.mrml import load_volume
    from INFANiTERegistrationLib import StackInput, manifest_from_nodes, new_mask_segmentation

    scene = mrml["scene"]
    record = read_manifest(searched["manifest"])[0].stacks[0]
    t2 = load_volume(scene, record.t2w, "stack one")
    labels = load_volume(scene, record.mask, "stack one drawn mask", labelmap=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain drawn")
    assert SegmentationsLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing drawn")
    with pytest.raises(ValueError, match="no segment: draw the brain in the Segment Editor"):
        manifest_from_nodes([StackInput(t2, mask=empty, ga_weeks=record.scan_age)], tmp_path / "w0")
    offered = new_mask_segmentation(scene, t2)             # what the widget offers a stack without a mask
    assert offered.GetSegmentation().GetNumberOfSegments() == 1 and offered.GetName() == "stack one brain mask"
    with pytest.raises(ValueError, match="is empty: draw the brain"):          # nothing drawn in it yet
        manifest_from_nodes([StackInput(t2, mask=offered, ga_weeks=record.scan_age)], tmp_path / "w1")
    manifest = manifest_from_nodes([StackInput(t2, mask=segmentation, ga_weeks=record.scan_age)], tmp_path / "w")
    written, problems = read_manifest(manifest, registration_input=True)
    assert not problems and written.stacks[0].seg is None
    drawn, original = nib.load(str(written.stacks[0].mask)), nib.load(str(record.mask))
    np.testing.assert_allclose(drawn.affine, nib.load(str(record.t2w)).affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(drawn.dataobj) > 0, np.asarray(original.dataobj) > 0)
