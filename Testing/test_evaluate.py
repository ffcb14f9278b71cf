"""``infanite evaluate``: a phantom atlas against itself and against perturbed copies, other grids, the real CRL
atlas, subject consistency against registered phantom stacks, and bad input (exit code 2 before any work)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from infanite.evaluation import metrics
from infanite.cli.evaluate import run as command
from infanite.cli.main import build_parser
from infanite.evaluation.against_reference import evaluate_atlas
from infanite.evaluation.inputs import EvaluationInputError
from infanite.evaluation.subject_consistency import evaluate_subject_consistency
from infanite.io.layout import atlas_file_name, METRICS_JSON, METRICS_MD
from infanite.geometry import rigid_matrix, rotation_matrix
from infanite.io.images import Volume, save_nifti
from infanite.registration.orientation import pose_distance
from infanite.reference.phantom import make_phantom
from infanite.registration.register import output_grid
from infanite.io.resample import resample
from infanite.reference.templates import TemplateLibrary

WEEKS = (24.0, 26.0)
SPACING = 2.0


def _write_atlas(folder, ga, t2, seg):
    folder.mkdir(parents=True, exist_ok=True)
    save_nifti(t2, folder / atlas_file_name(ga, "T2w"), dtype=np.float32)
    save_nifti(seg, folder / atlas_file_name(ga, "dseg"), dtype=np.int16)


@pytest.fixture(scope="module")
def phantom_atlas(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas")
    for ga in WEEKS:
        t2, _, seg = make_phantom(ga, SPACING)
        _write_atlas(folder, ga, t2, seg)
    return folder


def _strict_json(path):
    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def _ga_rows(markdown: str, table: int = 0) -> list[str]:
    """The rows of ``metrics.md``'s first table (the metrics; ``table`` 1: where the intensity error lies)."""
    part = markdown.split("## Where the intensity error lies")[table]
    return [line for line in part.splitlines() if line.startswith("| ") and line[2:3].isdigit()]


def test_atlas_against_itself_scores_perfectly(phantom_atlas, tmp_path):
    out = tmp_path / "out"
    doc = evaluate_atlas(phantom_atlas, phantom_atlas, out)
    assert [r["ga_weeks"] for r in doc["per_ga"]] == list(WEEKS)
    for result in doc["per_ga"]:
        assert result["resampled_to_reference_grid"] is False
        assert result["psnr_db"] == {"brain_mask": math.inf, "bounding_box": math.inf}
        assert result["ssim"] == {"brain_mask": pytest.approx(1.0), "bounding_box": pytest.approx(1.0)}
        assert result["dice"]["mean"] == 1.0 and set(result["dice"]["per_label"].values()) == {1.0}
        assert result["hd95_mm"]["mean"] == 0.0 and result["asd_mm"]["mean"] == 0.0
        assert result["tct"]["atlas"] == result["tct"]["reference"] > 1.0
        assert result["volume_l1_reference"]["mean"] == 0.0
        # the phantom is built to the normative volumes, so its normative error is small
        assert result["volume_l1_normative"]["atlas"]["mean"] < 0.05
        assert result["intensity_error"]["mse"] == 0.0
        assert all(math.isnan(p["share"]) and p["mse"] == 0.0 for p in result["intensity_error"]["per_label"].values())
    written = _strict_json(out / METRICS_JSON)
    assert written["per_ga"][0]["psnr_db"]["brain_mask"] == "inf"
    assert written["per_ga"][1]["dice"]["per_label"]["cGM"] == 1.0
    markdown = (out / METRICS_MD).read_text()
    assert len(_ga_rows(markdown)) == len(WEEKS)
    assert [row.split("|")[1].strip() for row in _ga_rows(markdown)] == ["24.0", "26.0"]
    for header in ("PSNR", "SSIM", "Dice", "HD95", "ASD", "TCT", "Vol L1"):
        assert header in markdown
    assert "dilated by 2 mm" in markdown and "bounding box" in markdown       # both conventions stated


def _perturbed_reference(folder, seed: int, noise: float, label_shift: int):
    """The phantom weeks with Gaussian noise (SD ``noise``) in the brain and labels shifted by ``label_shift``
    voxels along the first axis."""
    rng = np.random.default_rng(seed)
    for ga in WEEKS:
        t2, _, seg = make_phantom(ga, SPACING)
        noisy = t2.array + rng.normal(0.0, noise, t2.shape).astype(np.float32) * (t2.array > 0)
        _write_atlas(folder, ga, t2.with_array(noisy), seg.with_array(np.roll(seg.array, label_shift, axis=0)))
    return folder


def test_two_processes_give_the_one_process_results_in_ga_order(phantom_atlas, tmp_path):
    reference = _perturbed_reference(tmp_path / "perturbed", 1, 50.0, 0)
    one = evaluate_atlas(phantom_atlas, reference, tmp_path / "one")
    two = evaluate_atlas(phantom_atlas, reference, tmp_path / "two", jobs=2)
    assert [r["ga_weeks"] for r in two["per_ga"]] == list(WEEKS)
    assert two["summary"] == one["summary"] and two["mean"] == one["mean"]
    assert _strict_json(tmp_path / "two" / METRICS_JSON)["per_ga"] == _strict_json(tmp_path / "one" /
                                                                                    METRICS_JSON)["per_ga"]
    with pytest.raises(ValueError, match="--jobs must be a whole number >= 1"):
        evaluate_atlas(phantom_atlas, reference, tmp_path / "three", jobs=0)


def test_perturbed_reference_scores_worse(phantom_atlas, tmp_path):
    reference = _perturbed_reference(tmp_path / "perturbed", 0, 100.0, 1)
    doc = evaluate_atlas(phantom_atlas, reference, tmp_path / "out", ga_weeks=[26])
    assert len(doc["per_ga"]) == 1
    result = doc["per_ga"][0]
    assert 10.0 < result["psnr_db"]["brain_mask"] < 40.0
    assert result["ssim"]["brain_mask"] < 0.99
    assert 0.3 < result["dice"]["mean"] < 0.99
    # every label moved by one 2 mm voxel: the largest surface distance is 2 mm
    assert result["hd95_mm"]["mean"] == pytest.approx(SPACING, abs=1e-4)
    assert 0.0 < result["asd_mm"]["mean"] < SPACING
    assert result["tct"]["reference"] < result["tct"]["atlas"]
    markdown = (tmp_path / "out" / METRICS_MD).read_text()
    assert len(_ga_rows(markdown)) == 1
    # where the PSNR's error lies: the tissues and the band outside them share all of it
    error = result["intensity_error"]
    parts = list(error["per_label"].values()) + [error["outside"]]
    assert set(error["per_label"]) == {"WM", "vent", "cereb", "eCSF", "cGM", "dGM", "BS", "CC"}
    assert sum(p["share"] for p in parts) == pytest.approx(1.0)
    assert sum(p["fraction"] * p["mse"] for p in parts if p["fraction"]) == pytest.approx(error["mse"])
    assert 10 * math.log10(1 / error["mse"]) == pytest.approx(result["psnr_db"]["brain_mask"])
    rows = _ga_rows(markdown, 1)
    assert len(rows) == 1 and rows[0].startswith("| 26.0 | ")
    assert rows[0].count(" %") == sum(p["fraction"] > 0 for p in parts)


def test_atlas_on_another_grid_is_resampled_onto_the_reference(phantom_atlas, tmp_path):
    reference = tmp_path / "ref16"
    t2, _, seg = make_phantom(24.0, 1.6)
    _write_atlas(reference, 24.0, t2, seg)
    doc = evaluate_atlas(phantom_atlas, reference, tmp_path / "out")
    assert [r["ga_weeks"] for r in doc["per_ga"]] == [24.0]            # only the GA present in both
    result = doc["per_ga"][0]
    assert result["resampled_to_reference_grid"] is True
    assert 0.7 < result["dice"]["mean"] < 1.0
    assert 0.0 < result["hd95_mm"]["mean"] <= 2.5
    assert result["ssim"]["brain_mask"] > 0.8
    assert result["volume_l1_reference"]["mean"] < 0.1


def test_normative_csv_and_its_source(phantom_atlas, tmp_path):
    # a normative table whose means are the phantom's own measure volumes at every week gives 0
    _, _, seg = make_phantom(24.0, SPACING)
    own = metrics.measure_volumes_ml(seg)
    lines = ["measure,gestational_age_weeks,mean_ml,sd_ml"]
    lines += [f"{m},{w},{v!r},1.0" for m, v in own.items() for w in (20, 30)]
    csv = tmp_path / "norm.csv"
    csv.write_text("\n".join(lines) + "\n")
    doc = evaluate_atlas(phantom_atlas, phantom_atlas, tmp_path / "out", ga_weeks=[24.0], normative=csv)
    assert doc["normative"] == str(csv)
    assert doc["per_ga"][0]["volume_l1_normative"]["atlas"]["mean"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.shared_data
def test_two_processes_against_a_template_folder(crl_atlas_dir, tmp_path):
    """A template folder as the reference (the CRL atlas) reaches the worker processes of --jobs 2, with the
    results of one process."""
    library = TemplateLibrary.from_folder(crl_atlas_dir)
    atlas = tmp_path / "atlas"
    for week in (30, 31):
        template = library.get(week)
        grid = output_grid(template.grid, 2.0)
        _write_atlas(atlas, float(week), resample(template.t2w, grid), resample(template.seg, grid, None, "nearest"))
    two = evaluate_atlas(atlas, crl_atlas_dir, tmp_path / "two", jobs=2)
    assert [r["ga_weeks"] for r in two["per_ga"]] == [30.0, 31.0]
    one = evaluate_atlas(atlas, crl_atlas_dir, tmp_path / "one")
    assert _strict_json(tmp_path / "two" / METRICS_JSON)["per_ga"] == _strict_json(tmp_path / "one" /
                                                                                    METRICS_JSON)["per_ga"]
    assert one["per_ga"][0]["psnr_db"]["brain_mask"] > 20


@pytest.mark.shared_data
def test_crl_week_against_itself_resampled_to_1p5_mm(crl_atlas_dir, tmp_path):
    template = TemplateLibrary.from_folder(crl_atlas_dir).get(30)
    grid = output_grid(template.grid, 1.5)
    atlas = tmp_path / "atlas"
    _write_atlas(atlas, 30.0, resample(template.t2w, grid), resample(template.seg, grid, None, "nearest"))
    doc = evaluate_atlas(atlas, crl_atlas_dir, tmp_path / "out", ga_weeks=[30])
    result = doc["per_ga"][0]
    assert result["resampled_to_reference_grid"] is True
    assert result["reference"].endswith("HarvardSTA30_Study1/srr.nii.gz")
    assert 0.8 < result["dice"]["mean"] < 1.0
    assert 0.5 < result["hd95_mm"]["mean"] < 2.0              # about a voxel of the 0.8 mm reference
    assert 0.0 < result["asd_mm"]["mean"] < 1.0
    assert 0.9 < result["ssim"]["brain_mask"] < 1.0 and 0.9 < result["ssim"]["bounding_box"] < 1.0
    assert 20.0 < result["psnr_db"]["brain_mask"] < 60.0
    assert result["tct"]["reference"] == pytest.approx(metrics.tct(template.t2w, template.seg))
    assert result["volume_l1_reference"]["mean"] < 0.1
    assert len(_ga_rows((tmp_path / "out" / METRICS_MD).read_text())) == 1


# ---------------------------------------------------------------------------------------------------------
# subject consistency


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Phantom 'registered' stacks: the phantom moved by a small known rigid transform (not a half voxel)."""
    folder = tmp_path_factory.mktemp("registered")
    truths = {}
    rows = ["subject_id\tscan_age\tT2w\tSeg\tMask"]
    for sid, ga, rot_deg, shift in (("24_0001_1", 24.3, [0, 0, 3], [1.6, -0.8, 0.6]),
                                    ("26_0002_1", 25.8, [2, 0, 0], [-0.6, 0.9, 0.0])):
        t2, mask, seg = make_phantom(round(ga), SPACING)
        stack_to_atlas = rigid_matrix(rotation_matrix(rot_deg), shift)
        truths[sid] = np.linalg.inv(stack_to_atlas)
        for name, vol, interp in (("T2w", t2, "linear"), ("dseg", seg, "nearest"), ("mask", mask, "nearest")):
            save_nifti(resample(vol, vol, stack_to_atlas, interp), folder / "stacks" / f"{sid}_{name}.nii.gz")
        rows.append(f"{sid}\t{ga}\tstacks/{sid}_T2w.nii.gz\tstacks/{sid}_dseg.nii.gz\tstacks/{sid}_mask.nii.gz")
    (folder / "registered.tsv").write_text("\n".join(rows) + "\n")
    return folder, truths


def test_subject_consistency_registers_the_atlas_to_each_stack(phantom_atlas, registered, tmp_path):
    folder, truths = registered
    doc = evaluate_subject_consistency(phantom_atlas, folder / "registered.tsv", tmp_path / "out")
    unregistered = evaluate_subject_consistency(phantom_atlas, folder / "registered.tsv", tmp_path / "out0",
                                                register=None)
    assert [s["atlas_ga_weeks"] for s in doc["per_subject"]] == [24.0, 26.0]        # nearest generated GA
    for subject, plain in zip(doc["per_subject"], unregistered["per_subject"]):
        angle, dist = pose_distance(np.asarray(subject["atlas_to_stack"]), truths[subject["subject_id"]],
                                    np.zeros(3))
        assert angle < 1.0 and dist < 0.5
        assert subject["dice"]["mean"] > 0.8
        assert subject["dice"]["mean"] > plain["dice"]["mean"]
        assert subject["psnr_db"]["brain_mask"] > plain["psnr_db"]["brain_mask"]
        assert set(subject["tct"]) == {"atlas", "stack"}
    assert doc["mean"]["dice_mean"] == pytest.approx(np.mean([s["dice"]["mean"] for s in doc["per_subject"]]))
    markdown = (tmp_path / "out" / METRICS_MD).read_text()
    assert "| 24_0001_1 | 24.3 | 24.0 |" in markdown and "| 26_0002_1 | 25.8 | 26.0 |" in markdown
    assert "**mean**" in markdown
    assert _strict_json(tmp_path / "out" / METRICS_JSON)["mode"] == "subject_consistency"


# ---------------------------------------------------------------------------------------------------------
# bad input


def _args(*argv):
    return build_parser().parse_args(["evaluate", *argv])


def test_command_reports_a_missing_folder(phantom_atlas, tmp_path, capsys):
    missing = tmp_path / "no-such-atlas"
    assert command(_args("--atlas", str(missing), "--reference", str(phantom_atlas),
                         "--out", str(tmp_path / "out"))) == 2
    assert str(missing) in capsys.readouterr().err
    missing_ref = tmp_path / "no-such-reference"
    assert command(_args("--atlas", str(phantom_atlas), "--reference", str(missing_ref),
                         "--out", str(tmp_path / "out"))) == 2
    assert str(missing_ref) in capsys.readouterr().err
    assert command(_args("--atlas", str(phantom_atlas), "--registered", str(tmp_path / "registered.tsv"),
                         "--out", str(tmp_path / "out"))) == 2
    assert "registered.tsv does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()                           # nothing written


def test_command_runs_and_needs_exactly_one_mode(phantom_atlas, tmp_path, capsys):
    assert command(_args("--atlas", str(phantom_atlas), "--reference", str(phantom_atlas),
                         "--out", str(tmp_path / "out"), "--ga", "26")) == 0
    assert "metrics written" in capsys.readouterr().out
    assert len(_ga_rows((tmp_path / "out" / METRICS_MD).read_text())) == 1
    with pytest.raises(SystemExit):
        _args("--atlas", "a", "--reference", "b", "--registered", "c", "--out", "d")
    with pytest.raises(SystemExit):
        _args("--atlas", "a", "--out", "d")


def test_no_matching_ga_and_unknown_requested_ga(phantom_atlas, tmp_path, capsys):
    other = tmp_path / "other"
    t2, _, seg = make_phantom(30.0, SPACING)
    _write_atlas(other, 30.0, t2, seg)
    with pytest.raises(EvaluationInputError, match=r"no GA present in both.*'24', '26'.*'30'"):
        evaluate_atlas(phantom_atlas, other, tmp_path / "out")
    assert command(_args("--atlas", str(phantom_atlas), "--reference", str(phantom_atlas), "--out",
                         str(tmp_path / "out"), "--ga", "25")) == 2
    assert "requested GA 25 not present in both" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_grids_that_cannot_be_compared_and_missing_files(phantom_atlas, tmp_path):
    far = tmp_path / "far"
    t2, _, seg = make_phantom(24.0, SPACING)
    affine = t2.voxel_to_ras.copy()
    affine[:3, 3] += 500.0                                     # fields of view 500 mm apart
    _write_atlas(far, 24.0, Volume(t2.array, affine), Volume(seg.array, affine))
    with pytest.raises(EvaluationInputError, match="grids cannot be compared.*do not overlap"):
        evaluate_atlas(phantom_atlas, far, tmp_path / "out")
    # a GA with its T2w but no dseg, and a dseg on another grid than its T2w
    broken = tmp_path / "broken"
    shutil.copytree(phantom_atlas, broken)
    (broken / atlas_file_name(24.0, "dseg")).unlink()
    save_nifti(Volume(seg.array, affine), broken / atlas_file_name(26.0, "dseg"), dtype=np.int16)
    with pytest.raises(EvaluationInputError) as info:
        evaluate_atlas(broken, phantom_atlas, tmp_path / "out")
    message = str(info.value)
    assert "GA 24.0 lacks atlas_ga-24.0_dseg.nii.gz" in message
    assert "atlas_ga-26.0_dseg.nii.gz and" in message and "not on the same grid" in message
    assert not (tmp_path / "out").exists()
    # a folder with neither layout as the reference
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationInputError, match="no template layout found"):
        evaluate_atlas(phantom_atlas, empty, tmp_path / "out")
