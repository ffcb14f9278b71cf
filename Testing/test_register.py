"""``infanite register``: accuracy against the simulator's truth, outputs, manual transforms, resume, failures
and bad input.  Uses phantom templates written as a ``templates.tsv`` folder at 1.2 mm to stay fast."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

import infanite.registration.register as register_module
from infanite.cli.main import main
from infanite.io.cohort import ManifestError
from infanite.io.cohort_checks import load_cohort
from infanite.io.images import load_nifti, save_nifti
from infanite.registration.orientation import pose_distance
from infanite.reference.phantom import make_phantom
from infanite.registration.register import RegisterOptions, register_cohort
from infanite.simulation.stacks import SimulationConfig, simulate_cohort
from infanite.reference.templates import TemplateLibrary
from infanite.io.transforms import read_itk_tfm, read_transforms_json

WEEKS = (26, 27, 28, 29, 30)


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("templates")
    rows = ["ga\tT2w\tMask\tSeg"]
    for week in WEEKS:
        t2, mask, seg = make_phantom(week, 1.2)
        for name, vol in (("t2", t2), ("mask", mask), ("seg", seg)):
            save_nifti(vol, folder / f"w{week}_{name}.nii.gz")
        rows.append(f"{week}\tw{week}_t2.nii.gz\tw{week}_mask.nii.gz\tw{week}_seg.nii.gz")
    (folder / "templates.tsv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def cohort(templates, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    simulate_cohort(SimulationConfig(n_subjects=1, stacks_per_subject=3, ga_range=(27.6, 28.4), seed=21), out,
                    library=TemplateLibrary.from_folder(templates))
    return out


@pytest.fixture(scope="module")
def registered(cohort, templates, tmp_path_factory):
    out = tmp_path_factory.mktemp("registered")
    result = register_cohort(cohort / "cohort.tsv", templates, out)
    assert not result["failed"]
    return out


def subset(cohort, tmp_path, n, name="subset.tsv"):
    lines = (cohort / "cohort.tsv").read_text().splitlines()
    text = "\n".join(lines[: n + 1]).replace("stacks/", f"{cohort}/stacks/") + "\n"
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_registration_recovers_the_true_pose(registered, cohort):
    truth = json.loads((cohort / "truth.json").read_text())["stacks"]
    found = read_transforms_json(registered / "transforms.json")
    assert set(found) == set(truth)
    for sid, info in truth.items():
        angle, dist = pose_distance(found[sid], np.asarray(info["template_to_stack"]),
                                    info["brain_centre_template_ras_mm"])
        assert angle < 2.0 and dist < 1.0, (sid, angle, dist)


def test_outputs_are_complete_and_consistent(registered, cohort, templates):
    doc = json.loads((registered / "transforms.json").read_text())
    assert doc["coordinates"] == "RAS" and doc["direction"] == "template_to_stack"
    library = TemplateLibrary.from_folder(templates)
    grid = library.get(28.0).grid
    reg = load_cohort(registered / "registered.tsv")          # directly usable as a manifest
    assert len(reg.stacks) == 3
    for stack in reg.stacks:
        sid = stack.subject_id
        qc = doc["qc"][sid]
        assert qc["confidence"] in ("high", "low") and qc["nmi"] > 1.0 and qc["template_ga"] == pytest.approx(
            stack.scan_age)
        np.testing.assert_allclose(read_itk_tfm(registered / "transforms" / f"{sid}.tfm"),
                                   doc["transforms"][sid], atol=1e-9)
        weight = load_nifti(registered / stack.extra["Weight"])
        observed = load_nifti(registered / stack.extra["Observed"], dtype=None)
        mask = load_nifti(stack.mask, dtype=None)
        for vol in (weight, observed, mask, load_nifti(stack.t2w)):
            assert vol.shape == grid.shape and np.allclose(vol.voxel_to_ras, grid.voxel_to_ras, atol=1e-4)
        assert set(np.unique(weight.array).astype(float).round(3)) <= {0.0, 0.8, 1.6}
        brain = mask.array > 0
        assert np.all(weight.array[~brain] == 0)
        # observed ≈ template voxel / slice spacing through-plane (1.2 mm / 3.3 mm)
        assert 0.25 < observed.array[brain].mean() < 0.5
        reference = nib.load(registered / "spatial_weighting" / f"0001_{sid.split('_')[2]}_mask_sample.nii.gz")
        assert np.array_equal(reference.get_fdata(), weight.array)
        assert (registered / "qc" / f"{sid}.png").stat().st_size > 10_000


def test_fixed_and_initial_transforms(cohort, templates, tmp_path):
    manifest = subset(cohort, tmp_path, 1)
    sid = load_cohort(manifest).stacks[0].subject_id
    info = json.loads((cohort / "truth.json").read_text())["stacks"][sid]
    true = np.asarray(info["template_to_stack"])
    assert register_cohort(manifest, templates, tmp_path / "fixed", fixed_transforms=cohort / "truth.json",
                           options=RegisterOptions())["failed"] == {}
    fixed = json.loads((tmp_path / "fixed" / "transforms.json").read_text())
    np.testing.assert_allclose(fixed["transforms"][sid], true, atol=1e-9)
    assert fixed["qc"][sid]["confidence"] == "fixed"
    # a start 8° and 4 mm away is refined back (the search is skipped)
    from infanite.geometry import rigid_matrix, rotation_matrix
    from infanite.io.transforms import write_transforms_json

    centre = np.asarray(info["brain_centre_template_ras_mm"])
    start = true @ rigid_matrix(rotation_matrix([8.0, 0, 0]), [4.0, 0, 0], centre)
    write_transforms_json(tmp_path / "init.json", {sid: start}, {})
    register_cohort(manifest, templates, tmp_path / "init", init_transforms=tmp_path / "init.json")
    doc = json.loads((tmp_path / "init" / "transforms.json").read_text())
    angle, dist = pose_distance(np.asarray(doc["transforms"][sid]), true, centre)
    assert angle < 2.0 and dist < 1.0
    assert doc["qc"][sid]["margin"] is None


def test_failure_is_isolated_then_resumed(cohort, templates, tmp_path, monkeypatch):
    manifest = subset(cohort, tmp_path, 2)
    stacks = load_cohort(manifest).stacks
    bad = stacks[1].subject_id
    real = register_module.register_stack

    def flaky(t2, mask, template, settings=None, initial_template_to_stack=None):
        if np.allclose(t2.voxel_to_ras, load_nifti(stacks[1].t2w).voxel_to_ras):
            raise RuntimeError("simulated crash")
        return real(t2, mask, template, settings, initial_template_to_stack)

    monkeypatch.setattr(register_module, "register_stack", flaky)
    out = tmp_path / "out"
    result = register_cohort(manifest, templates, out)
    assert list(result["failed"]) == [bad] and "simulated crash" in result["failed"][bad]
    failures = json.loads((out / "failures.json").read_text())
    assert failures[bad]["row"] == stacks[1].row
    done = out / "stacks" / f"{stacks[0].subject_id}.json"
    mtime = done.stat().st_mtime_ns
    assert list(read_transforms_json(out / "transforms.json")) == [stacks[0].subject_id]
    monkeypatch.setattr(register_module, "register_stack", real)
    result = register_cohort(manifest, templates, out)
    assert result["skipped"] == [stacks[0].subject_id] and not result["failed"]
    assert done.stat().st_mtime_ns == mtime
    assert not (out / "failures.json").exists()
    assert set(read_transforms_json(out / "transforms.json")) == {s.subject_id for s in stacks}


def _bad_copy(cohort, tmp_path, edit):
    """A one-stack manifest whose mask is edited by ``edit(mask_volume) -> volume`` (the stack keeps its Seg, so
    that the mask's own checks are what is tested, not the plausible-volume check of mask-only stacks)."""
    stack = load_cohort(cohort / "cohort.tsv").stacks[0]
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(stack.t2w, folder / "t2.nii.gz")
    shutil.copy(stack.seg, folder / "seg.nii.gz")
    save_nifti(edit(load_nifti(stack.mask, dtype=None), load_nifti(stack.t2w)), folder / "mask.nii.gz")
    (folder / "m.tsv").write_text(f"subject_id\tscan_age\tT2w\tSeg\tMask\n{stack.subject_id}\t{stack.scan_age}\t"
                                  "t2.nii.gz\tseg.nii.gz\tmask.nii.gz\n")
    return folder / "m.tsv"


def _shifted(mask, t2, shift_mm):
    affine = mask.voxel_to_ras.copy()
    affine[0, 3] += shift_mm
    return type(mask)(mask.array, affine)


@pytest.mark.parametrize("case,kind,text", [
    ("empty", "empty_mask", "all zero"),
    ("off_image", "mask_off_image", "does not overlap"),
    ("header_noise", "grid_mismatch", "--fix-headers"),
    ("far_grid", "grid_mismatch", "voxel grid differs"),
])
def test_bad_masks_are_reported_before_any_work(case, kind, text, cohort, templates, tmp_path):
    edits = {
        "empty": lambda m, t: m.with_array(np.zeros_like(m.array)),
        "off_image": lambda m, t: m.with_array(((t.array == 0) & (np.arange(t.shape[2]) < 2)).astype(np.uint8)),
        "header_noise": lambda m, t: _shifted(m, t, 0.01),
        "far_grid": lambda m, t: _shifted(m, t, 5.0),
    }
    manifest = _bad_copy(cohort, tmp_path, edits[case])
    out = tmp_path / "out"
    with pytest.raises(ManifestError) as info:
        register_cohort(manifest, templates, out)
    problems = info.value.problems
    assert [p.kind for p in problems] == [kind] and problems[0].row == 2 and text in str(info.value)
    assert not out.exists()
    if case == "header_noise":
        result = register_cohort(manifest, templates, out, RegisterOptions(fix_headers=True),
                                 fixed_transforms=cohort / "truth.json")
        assert not result["failed"]


def test_ga_far_from_templates_and_bad_transforms_file(cohort, templates, tmp_path):
    manifest = subset(cohort, tmp_path, 1)
    text = manifest.read_text().splitlines()
    cells = text[1].split("\t")
    cells[1] = "35.0"
    manifest.write_text("\n".join([text[0], "\t".join(cells)]) + "\n")
    (tmp_path / "t.json").write_text(json.dumps({"coordinates": "LPS", "direction": "template_to_stack",
                                                 "transforms": {"nope": np.eye(4).tolist()}, "qc": {}}))
    out = tmp_path / "out"
    code = main(["register", "--manifest", str(manifest), "--templates", str(templates), "--out", str(out),
                 "--init-transforms", str(tmp_path / "t.json")])
    assert code == 2 and not out.exists()
    with pytest.raises(ManifestError) as info:
        register_cohort(manifest, templates, out, init_transforms=tmp_path / "t.json")
    kinds = {p.kind for p in info.value.problems}
    assert kinds == {"no_template", "bad_transforms"}
    assert "no template within 2 weeks of GA 35" in str(info.value) and "coordinates" in str(info.value)


def test_unknown_ga_is_chosen_by_brain_volume(cohort, templates, tmp_path):
    manifest = subset(cohort, tmp_path, 1)
    lines = manifest.read_text().splitlines()
    cells = lines[1].split("\t")
    true_ga = float(cells[1])
    cells[1] = ""
    manifest.write_text("\n".join([lines[0], "\t".join(cells)]) + "\n")
    out = tmp_path / "out"
    register_cohort(manifest, templates, out, fixed_transforms=cohort / "truth.json")
    qc = json.loads((out / "transforms.json").read_text())["qc"][cells[0]]
    assert qc["ga_estimated"] is True and qc["template_ga"] in WEEKS and abs(qc["template_ga"] - true_ga) <= 2
    reg = load_cohort(out / "registered.tsv")
    assert reg.stacks[0].scan_age == qc["template_ga"] and reg.stacks[0].extra["ga_estimated"] == "1"


def test_real_mial_stacks_land_consistently(mial_dir, crl_atlas_dir, tmp_path):
    """Two real orthogonal clinical stacks (CC0) registered to the CRL atlas agree with each other."""
    rows = ["subject_id\tscan_age\tT2w\tMask"]
    rows += [f"run-{i}\t23\t{mial_dir}/sub-01_run-{i}_T2w.nii.gz\t{mial_dir}/sub-01_run-{i}_T2w_desc-brain_mask.nii.gz"
             for i in (3, 5)]
    (tmp_path / "mial.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = register_cohort(tmp_path / "mial.tsv", crl_atlas_dir, out)
    assert not result["failed"]
    qc = json.loads((out / "transforms.json").read_text())["qc"]
    assert all(q["confidence"] == "high" for q in qc.values()), qc
    brain = TemplateLibrary.from_folder(crl_atlas_dir).get(23.0).mask.array > 0
    a = load_nifti(out / "stacks" / "run-3_T2w.nii.gz").array
    b = load_nifti(out / "stacks" / "run-5_T2w.nii.gz").array
    both = brain & (a > 0) & (b > 0)
    assert both.sum() > 0.5 * brain.sum()
    assert np.corrcoef(a[both], b[both])[0, 1] > 0.5


def test_spacing_jobs_and_cli_exit_codes(cohort, templates, tmp_path, monkeypatch):
    """--spacing gives an isotropic grid over the template's field of view; --jobs 2 runs worker processes."""
    manifest = subset(cohort, tmp_path, 2)
    out = tmp_path / "coarse"
    code = main(["register", "--manifest", str(manifest), "--templates", str(templates), "--out", str(out),
                 "--spacing", "2.4", "--jobs", "2", "--fixed-transforms", str(cohort / "truth.json")])
    assert code == 0
    template_grid = TemplateLibrary.from_folder(templates).get(28.0).grid
    for stack in load_cohort(out / "registered.tsv").stacks:
        vol = load_nifti(stack.t2w)
        assert np.allclose(vol.spacing_mm, 2.4)
        extent = vol.spacing_mm * (np.asarray(vol.shape) - 1)
        template_extent = template_grid.spacing_mm * (np.asarray(template_grid.shape) - 1)
        assert np.all(extent <= template_extent + 1e-6) and np.all(extent > template_extent - 2.4)
        centre = vol.voxel_to_ras @ np.r_[(np.asarray(vol.shape) - 1) / 2, 1]
        template_centre = template_grid.voxel_to_ras @ np.r_[(np.asarray(template_grid.shape) - 1) / 2, 1]
        np.testing.assert_allclose(centre, template_centre, atol=1e-4)   # NIfTI stores float32

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(register_module, "register_stack", broken)
    code = main(["register", "--manifest", str(manifest), "--templates", str(templates), "--out",
                 str(tmp_path / "broken")])
    assert code == 1
    assert len(json.loads((tmp_path / "broken" / "failures.json").read_text())) == 2


def test_n4_removes_a_smooth_bias_field():
    from infanite.registration.bias import n4_correct
    from infanite.io.images import Volume

    t2, mask, _ = make_phantom(30.0, 1.6)
    xyz = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in t2.shape], indexing="ij"), -1)
    biased = t2.with_array(t2.array * np.exp(0.4 * xyz[..., 0] + 0.2 * xyz[..., 2]).astype(np.float32))
    corrected = n4_correct(biased, mask)
    brain = mask.array > 0
    wm = brain & (np.abs(t2.array - 2000.0) < 60)          # white-matter-like voxels of the phantom

    def spread(vol: Volume) -> float:
        values = vol.array[wm]
        return float(values.std() / values.mean())

    assert spread(corrected) < 0.6 * spread(biased)
