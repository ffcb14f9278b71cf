"""Thick-slice simulator: ground-truth poses, overlap with the source, slice profile, determinism, resume."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from infanite.io.cohort_checks import load_cohort
from infanite.geometry import apply_matrix, is_rigid
from infanite.io.images import Volume, load_labels, load_nifti
from infanite.reference.phantom import phantom_library
from infanite.io.resample import resample
from infanite.simulation.stacks import SimulationConfig, _SubjectSampler, simulate_cohort

LIB = phantom_library(1.2)   # coarser phantom grid keeps the suite fast


def generalized_dice(a: np.ndarray, b: np.ndarray, labels=range(1, 9)) -> float:
    num = sum(2 * np.count_nonzero((a == v) & (b == v)) for v in labels)
    den = sum(np.count_nonzero(a == v) + np.count_nonzero(b == v) for v in labels)
    return num / den


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate_cohort(SimulationConfig(n_subjects=2, ga_range=(23.0, 36.0), seed=3), out, library=LIB)
    return out


def test_cohort_is_valid_and_truth_complete(cohort_dir):
    cohort = load_cohort(cohort_dir / "cohort.tsv")
    truth = json.loads((cohort_dir / "truth.json").read_text())
    assert truth["coordinates"] == "RAS" and truth["direction"] == "template_to_stack"
    assert len(cohort.stacks) == 6 and len(cohort.subjects()) == 2
    assert {s.subject_id for s in cohort.stacks} == set(truth["stacks"])
    for stack in cohort.stacks:
        info = truth["stacks"][stack.subject_id]
        t2 = load_nifti(stack.t2w)
        assert is_rigid(np.asarray(info["template_to_stack"]))
        assert np.allclose(t2.voxel_to_ras, info["voxel_to_ras"], atol=1e-4)
        assert np.allclose(t2.spacing_mm, [1.0, 1.0, 3.3], atol=1e-4)
        assert stack.slice_thickness_mm == 3.0 and stack.scan_age == pytest.approx(info["ga_weeks"], abs=1e-3)
        assert len(info["slice_motion"]) == t2.shape[2]
        # the stack is planned along the head axes: its slice normal, in template space, is within the
        # obliquity (20°) of the plane's axis
        stack_to_template = np.linalg.inv(np.asarray(info["template_to_stack"]))
        normal = stack_to_template[:3, :3] @ (t2.voxel_to_ras[:3, 2] / 3.3)
        axis = {"axial": 2, "coronal": 1, "sagittal": 0}[info["plane"]]
        assert np.degrees(np.arccos(abs(normal[axis]))) <= 20.0 + 1e-6
        assert info["obliquity_deg"] <= 20.0 + 1e-6


def test_stacks_map_back_onto_the_source(cohort_dir):
    """Each stack's labels resampled into template space with its true matrix overlap the source labels."""
    truth = json.loads((cohort_dir / "truth.json").read_text())
    for sid, info in truth["stacks"].items():
        template = LIB.for_ga(info["ga_weeks"], "blend")
        labels = load_labels(cohort_dir / "stacks" / f"{sid}_dseg.nii.gz")
        matrix = np.asarray(info["template_to_stack"])
        back = resample(labels, template.grid, matrix, "nearest", default_value=-1)
        fov = back.array >= 0
        assert dice(back.array[fov] > 0, template.seg.array[fov] > 0) > 0.9, sid
        assert generalized_dice(back.array[fov], template.seg.array[fov]) > 0.7, sid
        # the wrong direction must not pass
        wrong = resample(labels, template.grid, np.linalg.inv(matrix), "nearest", default_value=-1)
        fov_w = wrong.array >= 0
        assert not fov_w.any() or generalized_dice(wrong.array[fov_w], template.seg.array[fov_w]) < 0.5


def test_without_motion_or_deformation_labels_are_exact(tmp_path):
    cfg = SimulationConfig(n_subjects=1, ga_range=(28.0, 28.0), motion_deg=0, motion_mm=0, deformation_mm=0,
                           seed=5)
    simulate_cohort(cfg, tmp_path, library=LIB)
    truth = json.loads((tmp_path / "truth.json").read_text())
    template = LIB.get(28.0)
    for sid, info in truth["stacks"].items():
        labels = load_labels(tmp_path / "stacks" / f"{sid}_dseg.nii.gz")
        matrix = np.asarray(info["template_to_stack"])
        forward = resample(template.seg, labels.grid, np.linalg.inv(matrix), "nearest")
        assert np.mean(forward.array == labels.array) > 0.999
        back = resample(labels, template.grid, matrix, "nearest", default_value=-1)
        fov = back.array >= 0
        assert generalized_dice(back.array[fov], template.seg.array[fov]) > 0.85


def _sinusoid_amplitude(values: np.ndarray, coord_mm: np.ndarray, wavelength: float) -> float:
    phase = 2 * np.pi * coord_mm / wavelength
    design = np.stack([np.ones_like(phase), np.sin(phase), np.cos(phase)], -1)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return float(np.hypot(coef[1], coef[2]))


@pytest.mark.parametrize("axis,wavelength", [(2, 12.0), (0, 4.0)])
def test_slice_profile_is_the_gaussian_psf(axis, wavelength):
    """A sinusoid of the template is attenuated by exp(−2π²σ²/λ²) with σ the slice-profile σ on that axis."""
    cfg = SimulationConfig(fov_margin_mm=0.0)
    spacing = 0.4
    n = 150
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = -(n - 1) * spacing / 2
    ijk = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1)
    xyz = apply_matrix(affine, ijk)
    image = 100 + 50 * np.sin(2 * np.pi * xyz[..., axis] / wavelength)
    brain = (np.abs(xyz) < 12).all(-1).astype(np.int16)
    sampler = _SubjectSampler(Volume(image.astype(np.float32), affine), Volume(brain, affine), cfg)
    shape, voxel_to_head = sampler.stack_grid(np.eye(3), np.zeros(3))
    t2, _ = sampler.sample(shape, voxel_to_head, np.stack([np.eye(4)] * shape[2]))
    stack_xyz = apply_matrix(voxel_to_head, np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1))
    inner = (np.abs(stack_xyz) < 10).all(-1)
    measured = _sinusoid_amplitude(t2[inner], stack_xyz[inner][:, axis], wavelength) / 50
    sigma = cfg.psf_sigma_mm[axis]
    expected = np.exp(-2 * np.pi ** 2 * sigma ** 2 / wavelength ** 2)
    assert measured == pytest.approx(expected, rel=0.03), (measured, expected)


def test_deterministic_and_resumable(tmp_path):
    cfg = SimulationConfig(n_subjects=2, stacks_per_subject=1, ga_range=(25.0, 27.0), seed=11)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    simulate_cohort(cfg, a, library=LIB)
    simulate_cohort(cfg, b, library=LIB)
    files = sorted(p.name for p in (a / "stacks").glob("*.nii.gz"))
    assert len(files) == 6
    for name in files:
        assert np.array_equal(load_nifti(a / "stacks" / name).array, load_nifti(b / "stacks" / name).array)
    assert (a / "cohort.tsv").read_text() == (b / "cohort.tsv").read_text()
    assert (a / "truth.json").read_text() == (b / "truth.json").read_text()
    # a killed run: the second subject never finished
    shutil.copytree(a, c)
    (c / "stacks" / "0002.truth.json").unlink()
    (c / "truth.json").unlink()
    (c / "cohort.tsv").unlink()
    first = (c / "stacks").glob("*_0001_*_T2w.nii.gz").__next__()
    mtime = first.stat().st_mtime_ns
    simulate_cohort(cfg, c, library=LIB)
    assert first.stat().st_mtime_ns == mtime            # finished subject skipped
    assert (c / "truth.json").read_text() == (a / "truth.json").read_text()
    with pytest.raises(ValueError, match="other settings"):
        simulate_cohort(SimulationConfig(n_subjects=2, stacks_per_subject=1, seed=12), c, library=LIB)
    other = tmp_path / "d"
    simulate_cohort(SimulationConfig(n_subjects=2, stacks_per_subject=1, ga_range=(25.0, 27.0), seed=12), other,
                    library=LIB)
    first_a = sorted((a / "stacks").glob("*_T2w.nii.gz"))[0]
    first_other = sorted((other / "stacks").glob("*_T2w.nii.gz"))[0]
    assert not np.array_equal(load_nifti(first_a).array, load_nifti(first_other).array)


def test_random_poses_and_bad_settings(tmp_path):
    cfg = SimulationConfig(n_subjects=1, stacks_per_subject=3, random_poses=True, seed=2, ga_range=(30.0, 30.0))
    simulate_cohort(cfg, tmp_path, library=LIB)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert all(info["plane"] == "random" for info in truth["stacks"].values())
    with pytest.raises(ValueError, match="slice thickness"):
        SimulationConfig(slice_thickness_mm=0)
    with pytest.raises(ValueError, match="ga_range"):
        SimulationConfig(ga_range=(30.0, 25.0))


def test_cli_simulate_from_the_crl_atlas_validates(crl_atlas_dir, tmp_path):
    """``simulate --atlas-dir <CRL>`` writes a cohort that ``validate`` accepts (licensed data read in place)."""
    from infanite.cli.main import main

    out = tmp_path / "crl"
    assert main(["simulate", "--atlas-dir", str(crl_atlas_dir), "--out", str(out), "--subjects", "2"]) == 0
    assert main(["validate", str(out / "cohort.tsv")]) == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["template_source"].startswith("crl:") and len(truth["stacks"]) == 6
    labels = load_labels(next((out / "stacks").glob("*_dseg.nii.gz")))
    present = set(np.unique(labels.array).tolist())
    assert present <= set(range(9)) and len(present - {0}) >= 6
