"""``python -m infanite manifest``: a cohort manifest from a BIDS folder (synthetic trees built here with tiny NIfTI
files) or a flat folder (the real MIAL sample stacks), its skipped-file reports and its refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import MIAL_STACKS, REPO, require
from infanite.cli.main import main
from infanite.io.bids import find_stacks
from infanite.io.cohort import read_manifest

SHAPE = (4, 4, 2)


def nifti(path: Path, label: bool = False) -> Path:
    """A tiny 4×4×2 image (a 0/1 label map with ``label``) with 1×1×3 mm voxels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ones(SHAPE, np.uint8) if label else np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 3.0, 1.0])), str(path))
    return path


def tsv(path: Path, *rows: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(row.replace(" ", "\t") + "\n" for row in rows), encoding="utf-8")
    return path


def cli(*args) -> subprocess.CompletedProcess:
    """``python -m infanite ARGS`` in a subprocess (the real command line)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "infanite", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a refused command (exit 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("manifest: error: "), result.stderr
    return lines[0]


def read_rows(path: Path) -> list[dict]:
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]


@pytest.fixture
def bids(tmp_path) -> Path:
    """sub-01 with ses-1 (GA 24.5, from sessions.tsv) and ses-2 (GA 31), sub-02 without sessions (GA 27, from
    participants.tsv); masks beside and under derivatives/, label maps, a stack without mask, an orphan mask."""
    root = tmp_path / "bids"
    tsv(root / "participants.tsv", "participant_id ga_weeks sex", "sub-01 n/a F", "sub-02 27 n/a")
    tsv(root / "sub-01" / "sub-01_sessions.tsv", "session_id gestational_age", "ses-1 24.5", "ses-2 31")
    anat = root / "sub-01" / "ses-1" / "anat"
    nifti(anat / "sub-01_ses-1_run-1_T2w.nii.gz")
    nifti(anat / "sub-01_ses-1_run-1_T2w_desc-brain_mask.nii.gz", label=True)
    (anat / "sub-01_ses-1_run-1_T2w.json").write_text(json.dumps({"SliceThickness": 3.5}))
    nifti(anat / "sub-01_ses-1_run-2_T2w.nii.gz")
    nifti(root / "derivatives" / "masks" / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_run-2_desc-brain_mask.nii.gz",
          label=True)
    nifti(root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_run-1_T2w.nii")
    nifti(root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_run-1_dseg.nii.gz", label=True)
    nifti(root / "sub-02" / "anat" / "sub-02_run-1_T2w.nii.gz")
    nifti(root / "derivatives" / "masks" / "sub-02" / "anat" / "sub-02_run-1_mask.nii.gz", label=True)
    nifti(root / "derivatives" / "labels" / "sub-02" / "anat" / "sub-02_run-1_dseg.nii.gz", label=True)
    nifti(root / "sub-02" / "anat" / "sub-02_run-2_T2w.nii.gz")  # no mask, no dseg: skipped
    nifti(root / "derivatives" / "masks" / "sub-03" / "anat" / "sub-03_run-1_desc-brain_mask.nii.gz", label=True)
    return root


def test_bids_tree_rows_pairs_and_ga(bids):
    rows, skipped = find_stacks(bids)
    by_id = {row.subject_id: row for row in rows}
    assert list(by_id) == ["sub-01_ses-1_run-1", "sub-01_ses-1_run-2", "sub-01_ses-2_run-1", "sub-02_run-1"]
    assert {row.subject_id: row.subject for row in rows} == {
        "sub-01_ses-1_run-1": "sub-01_ses-1", "sub-01_ses-1_run-2": "sub-01_ses-1",
        "sub-01_ses-2_run-1": "sub-01_ses-2", "sub-02_run-1": "sub-02"}
    assert [row.scan_age for row in rows] == [24.5, 24.5, 31.0, 27.0]
    assert "sub-01_sessions.tsv, row 2, column gestational_age" in by_id["sub-01_ses-1_run-1"].ga_source
    assert "participants.tsv, row 3, column ga_weeks" in by_id["sub-02_run-1"].ga_source
    anat = bids / "sub-01" / "ses-1" / "anat"
    assert by_id["sub-01_ses-1_run-1"].mask == anat / "sub-01_ses-1_run-1_T2w_desc-brain_mask.nii.gz"
    assert by_id["sub-01_ses-1_run-1"].slice_thickness_mm == 3.5
    assert by_id["sub-01_ses-1_run-2"].mask == (bids / "derivatives" / "masks" / "sub-01" / "ses-1" / "anat"
                                                / "sub-01_ses-1_run-2_desc-brain_mask.nii.gz")
    assert by_id["sub-01_ses-1_run-2"].slice_thickness_mm is None
    ses2 = by_id["sub-01_ses-2_run-1"]
    assert ses2.t2w.name == "sub-01_ses-2_run-1_T2w.nii" and ses2.mask is None
    assert ses2.seg == bids / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_run-1_dseg.nii.gz"
    sub02 = by_id["sub-02_run-1"]
    assert sub02.mask.name == "sub-02_run-1_mask.nii.gz" and "derivatives/labels" in sub02.seg.as_posix()

    reasons = {entry.path.name: entry.reason for entry in skipped}
    assert set(reasons) == {"sub-02_run-2_T2w.nii.gz", "sub-03_run-1_desc-brain_mask.nii.gz"}, reasons
    no_mask = reasons["sub-02_run-2_T2w.nii.gz"]
    assert no_mask.startswith("no brain mask found (looked for")
    for looked_for in ("sub-02_run-2_T2w_desc-brain_mask.nii[.gz]", "sub-02_run-2_desc-brainmask.nii[.gz]",
                       "sub-02_run-2_mask.nii[.gz]", "derivatives/*/sub-02/anat/", "sub-02_run-2_dseg.nii[.gz]"):
        assert looked_for in no_mask
    assert "no matching T2w stack" in reasons["sub-03_run-1_desc-brain_mask.nii.gz"]
    assert "sub-03_run-1_T2w.nii[.gz]" in reasons["sub-03_run-1_desc-brain_mask.nii.gz"]


def test_cli_writes_a_manifest_read_back_without_problems(bids, tmp_path, capsys):
    out = tmp_path / "out" / "cohort.tsv"
    assert main(["manifest", str(bids), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "4 stacks of 3 fetuses, GA 24.5–31.0 weeks" in captured.out
    assert "skipped" in captured.err and "sub-02_run-2_T2w.nii.gz: no brain mask found" in captured.err
    assert "sub-03_run-1_desc-brain_mask.nii.gz: brain mask with no matching T2w stack" in captured.err
    header = out.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header == ["subject_id", "subject", "scan_age", "T2w", "Mask", "Seg", "slice_thickness_mm"]
    rows = read_rows(out)
    assert all(Path(row["T2w"]).is_absolute() for row in rows)  # outside the TSV's folder: absolute
    assert [row["Seg"] == "" for row in rows] == [True, True, False, False]
    assert [row["slice_thickness_mm"] for row in rows] == ["3.5", "", "", ""]
    cohort, problems = read_manifest(out, registration_input=True)
    assert problems == []
    assert [record.subject for record in cohort.stacks] == ["sub-01_ses-1", "sub-01_ses-1", "sub-01_ses-2", "sub-02"]
    assert [record.scan_age for record in cohort.stacks] == [24.5, 24.5, 31.0, 27.0]
    assert all(record.t2w.is_file() and (record.mask or record.seg).is_file() for record in cohort.stacks)

    inside = bids / "cohort.tsv"  # inside the BIDS folder: paths relative to it
    assert main(["manifest", str(bids), "--out", str(inside)]) == 0
    assert read_rows(inside)[0]["T2w"] == "sub-01/ses-1/anat/sub-01_ses-1_run-1_T2w.nii.gz"
    cohort, problems = read_manifest(inside, registration_input=True)
    assert problems == [] and cohort.stacks[0].t2w == bids / "sub-01/ses-1/anat/sub-01_ses-1_run-1_T2w.nii.gz"


def test_cli_refuses_to_overwrite_without_the_flag(bids, tmp_path, capsys):
    out = tmp_path / "cohort.tsv"
    out.write_text("keep me\n")
    assert main(["manifest", str(bids), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me\n"
    assert main(["manifest", str(bids), "--out", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("subject_id\t")


@pytest.mark.parametrize("value, message", [("abc", "is not a number of weeks"), ("nan", "finite number of weeks"),
                                            ("196", "(days? give weeks)"), ("12", "in 15–45")])
def test_bad_ga_value_is_refused_naming_file_row_and_column(bids, value, message):
    table = tsv(bids / "participants.tsv", "participant_id ga_weeks", "sub-01 n/a", f"sub-02 {value}")
    with pytest.raises(ValueError) as info:
        find_stacks(bids)
    assert f"{table}, row 3, column ga_weeks" in str(info.value) and message in str(info.value)


def test_bad_session_ga_names_the_sessions_table(bids):
    table = tsv(bids / "sub-01" / "sub-01_sessions.tsv", "session_id gestational_age", "ses-1 24.5", "ses-2 inf")
    with pytest.raises(ValueError, match=r"sub-01_sessions\.tsv, row 3, column gestational_age"):
        find_stacks(bids)
    assert table.is_file()


def test_ga_option_column_option_and_unknown_ga(bids):
    rows, _ = find_stacks(bids, ga=29)
    assert {row.scan_age for row in rows} == {29.0} and {row.ga_source for row in rows} == {"--ga"}
    with pytest.raises(ValueError, match=r"--ga: GA '300' must be a finite number of weeks in 15–45 \(days\?"):
        find_stacks(bids, ga=300)

    tsv(bids / "participants.tsv", "participant_id GA_at_scan ga_weeks", "sub-01 25 n/a", "sub-02 33 n/a")
    (bids / "sub-01" / "sub-01_sessions.tsv").unlink()
    rows, _ = find_stacks(bids, ga_column="GA_at_scan")
    assert [row.scan_age for row in rows] == [25.0, 25.0, 25.0, 33.0]
    # the default columns hold n/a only: every stack undated → refused, naming the stacks and what was looked for
    with pytest.raises(ValueError) as info:
        find_stacks(bids)
    assert "no gestational age for 4 stacks" in str(info.value) and "column ga_weeks" in str(info.value)

    tsv(bids / "participants.tsv", "participant_id ga_weeks", "sub-01 26", "sub-02 n/a")
    rows, skipped = find_stacks(bids)  # sub-02 undated: skipped, the others kept
    assert [row.subject for row in rows] == ["sub-01_ses-1", "sub-01_ses-1", "sub-01_ses-2"]
    undated = [entry for entry in skipped if entry.path.name == "sub-02_run-1_T2w.nii.gz"]
    assert len(undated) == 1 and "no gestational age (participants.tsv row 3 column ga_weeks is n/a)" in \
        undated[0].reason


def test_unreadable_participants_table_is_reported(bids):
    (bids / "participants.tsv").write_text("participant_id,ga_weeks\nsub-01,25\n")  # commas, not tabs
    rows, skipped = find_stacks(bids)
    assert [row.subject for row in rows] == ["sub-01_ses-1", "sub-01_ses-1", "sub-01_ses-2"]  # sessions.tsv
    reasons = {entry.path.name: entry.reason for entry in skipped}
    assert "no participant_id column" in reasons["participants.tsv"]
    assert "no gestational age" in reasons["sub-02_run-1_T2w.nii.gz"]


def test_flat_folder_with_pattern_and_unique_ids(tmp_path):
    root = tmp_path / "patientA"
    for name in ("axial", "coronal"):
        nifti(root / f"{name}.nii.gz")
        nifti(root / f"{name}_mask.nii.gz", label=True)
    nifti(root / "sagittal.nii.gz")
    rows, skipped = find_stacks(root, pattern="*.nii.gz", ga=30)
    assert [(row.subject_id, row.subject) for row in rows] == [("patientA_axial", "patientA"),
                                                               ("patientA_coronal", "patientA")]
    assert [entry.path.name for entry in skipped] == ["sagittal.nii.gz"]
    assert "sagittal_mask.nii[.gz]" in skipped[0].reason

    nested = tmp_path / "nested"
    for fetus in ("p1", "p2"):
        nifti(nested / fetus / "stack.nii.gz")
        nifti(nested / fetus / "stack_desc-brainmask.nii.gz", label=True)
    rows, _ = find_stacks(nested, pattern="**/*.nii.gz", ga=30)
    assert [(row.subject_id, row.subject) for row in rows] == [("p1_stack", "p1"), ("p2_stack", "p2")]

    twins = tmp_path / "twins"
    nifti(twins / "sub-01_run-1_T2w.nii.gz")
    nifti(twins / "sub-01_run-1_T2w.nii")
    nifti(twins / "sub-01_run-1_mask.nii.gz", label=True)
    rows, _ = find_stacks(twins, ga=30)
    assert sorted(row.subject_id for row in rows) == ["sub-01_run-1", "sub-01_run-1_2"]
    with pytest.raises(ValueError, match=r"no stack in .* matches --pattern '\*\.mgz'"):
        find_stacks(twins, pattern="*.mgz", ga=30)
    for outside in ("../*.nii.gz", str(twins / "*.nii.gz"), " "):
        with pytest.raises(ValueError, match="must be a non-empty glob relative to the folder"):
            find_stacks(twins, pattern=outside, ga=30)


def test_no_mask_anywhere_is_refused(tmp_path):
    nifti(tmp_path / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    with pytest.raises(ValueError, match=r"none of the 1 T2w stack .* has a brain mask or a label map .*"
                                         r"sub-01_T2w_desc-brain_mask\.nii\[\.gz\]"):
        find_stacks(tmp_path, ga=30)


def test_cli_refuses_a_folder_without_stacks(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    result = cli("manifest", tmp_path / "empty", "--out", tmp_path / "cohort.tsv", "--ga", "28")
    line = error_line(result)
    assert "no T2w stacks in" in line
    for looked_for in ("sub-*/anat/*_T2w.nii[.gz]", "sub-*/ses-*/anat/*_T2w.nii[.gz]", "*_T2w.nii[.gz]",
                       "--pattern"):
        assert looked_for in line
    assert not (tmp_path / "cohort.tsv").exists()


def test_cli_refuses_stacks_without_a_ga_source(tmp_path):
    root = tmp_path / "flat"
    nifti(root / "sub-07_run-1_T2w.nii.gz")
    nifti(root / "sub-07_run-1_T2w_desc-brain_mask.nii.gz", label=True)
    result = cli("manifest", root, "--out", tmp_path / "cohort.tsv")
    line = error_line(result)
    assert "no gestational age for 1 stack (sub-07_run-1_T2w.nii.gz)" in line
    for looked_for in ("participants.tsv (absent)", "ga_weeks, gestational_age, ga, scan_age", "sessions.tsv",
                       "--ga WEEKS"):
        assert looked_for in line
    assert not (tmp_path / "cohort.tsv").exists()


def test_help_shows_defaults_and_units():
    result = cli("manifest", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for expected in ("--ga WEEKS", "weeks (15-45)", "default: the first of ga_weeks, gestational_age, ga, scan_age",
                     "default: refuse", "default: the BIDS layout"):
        assert expected in text


def test_mial_sample_one_command(tmp_path):
    require(MIAL_STACKS / "sub-01_run-1_T2w.nii.gz", "MIAL CC0 sample stacks")
    out = tmp_path / "cohort.tsv"
    result = cli("manifest", MIAL_STACKS, "--out", out, "--ga", "28")
    assert result.returncode == 0, result.stderr
    assert "6 stacks of 1 fetus, GA 28.0–28.0 weeks (6 with a brain mask, 0 with a label map); 0 files skipped" \
        in result.stdout
    assert "skipped" not in result.stderr
    rows = read_rows(out)
    assert [row["subject_id"] for row in rows] == [f"sub-01_run-{i}" for i in range(1, 7)]
    assert {row["subject"] for row in rows} == {"sub-01"} and {row["scan_age"] for row in rows} == {"28.0"}
    assert [Path(row["Mask"]).name for row in rows] == [f"sub-01_run-{i}_T2w_desc-brain_mask.nii.gz"
                                                        for i in range(1, 7)]
    assert {row["Seg"] for row in rows} == {""} and {row["slice_thickness_mm"] for row in rows} == {"3.0"}
    cohort, problems = read_manifest(out, registration_input=True)
    assert problems == [] and len(cohort.stacks) == 6 and len(cohort.subjects()) == 1
    assert all(record.mask.is_file() and record.t2w.is_file() for record in cohort.stacks)

    refused = cli("manifest", MIAL_STACKS, "--out", tmp_path / "no-ga.tsv")  # the folder has no GA
    line = error_line(refused)
    assert "no gestational age for 6 stacks" in line and "participants.tsv" in line and "--ga WEEKS" in line
