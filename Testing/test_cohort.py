"""Cohort manifests: parsing, defaults, round trip, the reference configs pair, and one test per failure."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from infanite.cli.main import main
from infanite.io.cohort import read_manifest, write_manifest, ManifestError, Problem, StackRecord
from infanite.io.cohort_checks import load_cohort

SHAPE = (12, 12, 6)
AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])
COLUMNS = ["subject_id", "scan_age", "T2w", "Seg"]


def save(path: Path, array, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def t2w_array(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(10, 100, shape).astype(np.float32)


def seg_array(shape=SHAPE) -> np.ndarray:
    seg = np.zeros(shape, np.int16)
    seg[3:9, 3:9, 1:5] = 1
    seg[5:7, 5:7, 2:4] = 5
    return seg


def make_stack(folder: Path, name: str, seed=0) -> tuple[Path, Path]:
    """A T2w/Seg pair on the 12x12x6 grid with 3 mm slices."""
    return (save(folder / f"{name}.nii.gz", t2w_array(seed=seed)),
            save(folder / f"{name}_seg.nii.gz", seg_array()))


def write_tsv(path: Path, columns: list[str], rows: list[dict], newline="\n", bom="") -> Path:
    lines = ["\t".join(columns)] + ["\t".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((bom + newline.join(lines) + newline).encode("utf-8"))
    return path


def problems_of(tsv: Path, **kwargs) -> list[Problem]:
    with pytest.raises(ManifestError) as info:
        load_cohort(tsv, **kwargs)
    assert str(info.value).splitlines()[0] == f"{tsv}: {len(info.value.problems)} problem" + (
        "" if len(info.value.problems) == 1 else "s")
    return info.value.problems


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------------------------------------------- valid input


def test_valid_manifest_defaults_and_round_trip(tmp_path):
    a_t2, a_seg = make_stack(tmp_path / "img", "24_0001_602")
    b_t2, b_seg = make_stack(tmp_path / "img", "fetus-b", seed=1)
    mask = save(tmp_path / "img" / "fetus-b_mask.nii.gz", (seg_array() > 0).astype(np.uint8))
    tsv = write_tsv(tmp_path / "cohort.tsv", COLUMNS + ["Mask", "subject", "slice_thickness_mm", "site"], [
        {"subject_id": "24_0001_602", "scan_age": "24.0", "T2w": "img/24_0001_602.nii.gz",
         "Seg": "./img/24_0001_602_seg.nii.gz", "site": "A"},
        {"subject_id": "fetus-b", "scan_age": "31.5", "T2w": str(b_t2), "Seg": str(b_seg), "Mask": str(mask),
         "subject": "twin-1", "slice_thickness_mm": "2.5", "site": "B"},
    ])
    cohort = load_cohort(tsv)
    first, second = cohort.stacks
    assert first == StackRecord(2, "24_0001_602", 24.0, a_t2, a_seg, None, "0001", 3.0, {"site": "A"})
    assert second == StackRecord(3, "fetus-b", 31.5, b_t2, b_seg, mask, "twin-1", 2.5, {"site": "B"})
    assert all(p.is_absolute() for p in (first.t2w, first.seg, second.mask))
    assert list(cohort.subjects()) == ["0001", "twin-1"]

    out = tmp_path / "resolved.tsv"
    cohort.write(out)
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == ["subject_id", "scan_age", "T2w", "Seg", "Mask", "subject",
                                    "slice_thickness_mm", "site"]
    assert lines[1].split("\t") == ["24_0001_602", "24.0", "img/24_0001_602.nii.gz",
                                    "img/24_0001_602_seg.nii.gz", "", "0001", "3.0", "A"]
    assert lines[2].split("\t")[2:5] == ["img/fetus-b.nii.gz", "img/fetus-b_seg.nii.gz", "img/fetus-b_mask.nii.gz"]
    assert load_cohort(out).stacks == cohort.stacks

    elsewhere = tmp_path / "other" / "resolved.tsv"
    write_manifest(cohort.stacks, elsewhere)
    assert elsewhere.read_text().splitlines()[1].split("\t")[2] == str(a_t2)
    assert load_cohort(elsewhere).stacks == cohort.stacks


def test_windows_line_endings_and_bom(tmp_path):
    make_stack(tmp_path, "s1")
    tsv = write_tsv(tmp_path / "cohort.tsv", COLUMNS,
                    [{"subject_id": "s1", "scan_age": "22", "T2w": "s1.nii.gz", "Seg": "s1_seg.nii.gz"}],
                    newline="\r\n", bom="\ufeff")
    (record,) = load_cohort(tsv).stacks
    assert (record.subject_id, record.subject, record.scan_age, record.t2w) == ("s1", "s1", 22.0, tmp_path / "s1.nii.gz")


def test_seg_affine_within_tolerance_passes(tmp_path):
    make_stack(tmp_path, "s1")
    shifted = AFFINE.copy()
    shifted[0, 3] += 1e-5
    save(tmp_path / "s1_seg.nii.gz", seg_array(), shifted)
    tsv = write_tsv(tmp_path / "cohort.tsv", COLUMNS,
                    [{"subject_id": "s1", "scan_age": "30", "T2w": "s1.nii.gz", "Seg": "s1_seg.nii.gz"}])
    assert len(load_cohort(tsv).stacks) == 1


# ------------------------------------------------------------------------------------- reference configs pair


def reference_layout(root: Path, train_yaml: str) -> tuple[Path, Path]:
    ids = ["24_0001_502", "24_0001_602", "35_0003_502"]
    for i, sid in enumerate(ids):
        save(root / "thickslices" / f"{sid}.nii.gz", t2w_array(seed=i))
        save(root / "thickslices_seg" / f"{sid}_seg.nii.gz", seg_array())
    tsv = write_tsv(root / "configs" / "fetal.tsv", COLUMNS, [
        {"subject_id": sid, "scan_age": f"{sid[:2]}.0", "T2w": f"./thickslices/{sid}.nii.gz",
         "Seg": f"./thickslices_seg/{sid}_seg.nii.gz"} for sid in ids])
    ids_yaml = root / "configs" / "subject_ids.yaml"
    ids_yaml.write_text(f"fetal_atlas:\n  subject_ids:\n    train:{train_yaml}\n")
    return tsv, ids_yaml


def test_reference_pair_selects_train_ids(tmp_path):
    tsv, ids_yaml = reference_layout(tmp_path, '\n      - "24_0001_602"\n      - "35_0003_502"')
    cohort = load_cohort(tsv, subject_ids_yaml=ids_yaml)
    assert [s.subject_id for s in cohort.stacks] == ["24_0001_602", "35_0003_502"]
    assert [s.row for s in cohort.stacks] == [3, 4]
    assert cohort.stacks[0].t2w == tmp_path / "thickslices" / "24_0001_602.nii.gz"
    assert {k: [s.subject_id for s in v] for k, v in cohort.subjects().items()} == {
        "0001": ["24_0001_602"], "0003": ["35_0003_502"]}


@pytest.mark.parametrize("train", [" []", ""])
def test_reference_pair_empty_list_means_all_rows(tmp_path, train):
    tsv, ids_yaml = reference_layout(tmp_path, train)
    cohort = load_cohort(tsv, subject_ids_yaml=ids_yaml)
    assert [s.subject for s in cohort.stacks] == ["0001", "0001", "0003"]


def test_reference_pair_unknown_id(tmp_path):
    tsv, ids_yaml = reference_layout(tmp_path, '\n      - "24_0001_602"\n      - "30_0009_501"')
    cohort, problems = read_manifest(tsv, subject_ids_yaml=ids_yaml)
    assert [s.subject_id for s in cohort.stacks] == ["24_0001_602"]
    (problem,) = problems
    assert problem.kind == "unknown_id" and "30_0009_501" in str(problem) and "subject_ids.yaml" in str(problem)
    assert [p.kind for p in problems_of(tsv, subject_ids_yaml=ids_yaml)] == ["unknown_id"]


def test_reference_pair_unquoted_id_gets_a_hint(tmp_path):
    tsv, ids_yaml = reference_layout(tmp_path, "\n      - 24_0001_602")
    problem, nothing_selected = read_manifest(tsv, subject_ids_yaml=ids_yaml)[1]
    assert problem.kind == "bad_value" and "quote" in problem.message and "'24_0001_602'" in problem.message
    assert nothing_selected.kind == "empty_manifest" and "subject_ids.yaml" in nothing_selected.message


# ------------------------------------------------------------------------------------ one failure per manifest


@dataclass
class Setup:
    """Two valid stacks (rows 2 and 3 of cohort.tsv); each case breaks row 3 in one way."""

    root: Path
    columns: list
    rows: list

    @property
    def img(self) -> Path:
        return self.root / "img"

    def use(self, column: str, path: Path) -> None:
        if column not in self.columns:
            self.columns.append(column)
        self.rows[1][column] = str(path.relative_to(self.root))


def case_missing_file(s):
    s.rows[1]["T2w"] = "img/nothere.nii.gz"
    return "missing", "T2w", "nothere.nii.gz"


def case_unreadable(s):
    junk = s.img / "junk.nii"
    junk.write_bytes(b"this is not a NIfTI image\n" * 40)
    s.use("Seg", junk)
    return "unreadable", "Seg", "junk.nii"


def case_truncated_gzip(s):
    path = s.img / "b.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "corrupt_gzip", "T2w", "b.nii.gz"


def case_garbage_gzip(s):
    path = s.img / "b_seg.nii.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    return "corrupt_gzip", "Seg", "b_seg.nii.gz"


def case_not_3d(s):
    save(s.img / "b.nii.gz", np.stack([t2w_array(), t2w_array(seed=3)], axis=-1))
    return "not_3d", "T2w", "b.nii.gz"


def case_nan_t2w(s):
    t2 = t2w_array()
    t2[2, 3, 4] = np.nan
    save(s.img / "b.nii.gz", t2)
    return "nan_inf", "T2w", "b.nii.gz"


def case_inf_t2w(s):
    t2 = t2w_array()
    t2[0, 0, 0] = np.inf
    save(s.img / "b.nii.gz", t2)
    return "nan_inf", "T2w", "b.nii.gz"


def case_nan_seg(s):
    seg = seg_array().astype(np.float32)
    seg[4, 4, 2] = np.nan
    save(s.img / "b_seg.nii.gz", seg)
    return "nan_inf", "Seg", "b_seg.nii.gz"


def case_seg_shape_differs(s):
    save(s.img / "b_seg.nii.gz", seg_array((12, 12, 5)))
    return "grid_mismatch", "Seg", "b_seg.nii.gz"


def case_seg_shifted_0_01_mm(s):
    shifted = AFFINE.copy()
    shifted[1, 3] += 0.01
    save(s.img / "b_seg.nii.gz", seg_array(), shifted)
    return "grid_mismatch", "Seg", "b_seg.nii.gz"


def case_mask_grid_differs(s):
    s.use("Mask", save(s.img / "b_mask.nii.gz", np.ones(SHAPE, np.uint8), np.diag([1.0, 1.0, 2.5, 1.0])))
    return "grid_mismatch", "Mask", "b_mask.nii.gz"


def case_empty_mask(s):
    s.use("Mask", save(s.img / "b_mask.nii.gz", np.zeros(SHAPE, np.uint8)))
    return "empty_mask", "Mask", "b_mask.nii.gz"


def case_empty_seg_without_mask(s):
    save(s.img / "b_seg.nii.gz", np.zeros(SHAPE, np.int16))
    return "empty_mask", "Seg", "b_seg.nii.gz"


def case_unknown_label(s):
    seg = seg_array()
    seg[4, 4, 2] = 12
    save(s.img / "b_seg.nii.gz", seg)
    return "unknown_labels", "Seg", "b_seg.nii.gz"


def case_non_integer_labels(s):
    seg = seg_array().astype(np.float32)
    seg[4, 4, 2] = 1.5
    save(s.img / "b_seg.nii.gz", seg)
    return "not_labels", "Seg", "b_seg.nii.gz"


def case_ga_out_of_range(s):
    s.rows[1]["scan_age"] = "19.5"
    return "ga_out_of_range", "scan_age", "cohort.tsv"


def case_duplicate_id(s):
    s.rows[1]["subject_id"] = s.rows[0]["subject_id"]
    return "duplicate_id", "subject_id", "cohort.tsv"


def case_non_numeric_scan_age(s):
    s.rows[1]["scan_age"] = "twenty-four"
    return "bad_value", "scan_age", "cohort.tsv"


def case_bad_thickness(s):
    s.columns.append("slice_thickness_mm")
    s.rows[1]["slice_thickness_mm"] = "-3"
    return "bad_value", "slice_thickness_mm", "cohort.tsv"


def case_empty_path(s):
    s.rows[1]["Seg"] = ""
    return "bad_value", "Seg", "cohort.tsv"


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.fixture
def setup(tmp_path) -> Setup:
    make_stack(tmp_path / "img", "a")
    make_stack(tmp_path / "img", "b", seed=1)
    rows = [{"subject_id": sid, "scan_age": "28.0", "T2w": f"img/{name}.nii.gz", "Seg": f"img/{name}_seg.nii.gz"}
            for sid, name in (("28_0001_501", "a"), ("28_0002_501", "b"))]
    return Setup(tmp_path, list(COLUMNS), rows)


def test_setup_is_valid(setup):
    tsv = write_tsv(setup.root / "cohort.tsv", setup.columns, setup.rows)
    assert [s.subject for s in load_cohort(tsv).stacks] == ["0001", "0002"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_failure(setup, case):
    kind, column, file_name = CASES[case](setup)
    tsv = write_tsv(setup.root / "cohort.tsv", setup.columns, setup.rows)
    (problem,) = problems_of(tsv)
    assert (problem.kind, problem.row, problem.column) == (kind, 3, column)
    text = str(problem)
    assert text.startswith(f"cohort.tsv row 3, column {column}")
    assert file_name in text
    if case == "duplicate_id":
        assert "rows 2 and 3" in text


def test_missing_column(setup):
    setup.columns.remove("T2w")
    tsv = write_tsv(setup.root / "cohort.tsv", setup.columns, setup.rows)
    (problem,) = problems_of(tsv)
    assert (problem.kind, problem.row, problem.column) == ("missing_column", 1, "T2w")
    assert str(problem).startswith("cohort.tsv row 1, column T2w")


def test_a_header_needs_a_seg_or_a_mask_column(setup):
    """Seg is optional (mask-only stacks), but a stack needs one of the two for its brain."""
    columns = [c for c in setup.columns if c not in ("Seg", "Mask")]
    tsv = write_tsv(setup.root / "cohort.tsv", columns, setup.rows)
    kinds = [(p.kind, p.column) for p in problems_of(tsv)]
    assert ("missing_column", "Mask") in kinds
    assert any("Mask (brain mask) or a Seg" in str(p) for p in problems_of(tsv))


def test_header_only_manifest_is_empty(tmp_path):
    tsv = write_tsv(tmp_path / "cohort.tsv", COLUMNS, [])
    assert [p.kind for p in problems_of(tsv)] == ["empty_manifest"]


def test_all_problems_reported_at_once(setup):
    case_truncated_gzip(setup)  # row 3, T2w
    case_unknown_label(setup)  # row 3, Seg
    setup.rows[0]["scan_age"] = "19.5"
    setup.rows[0]["T2w"] = "img/gone.nii.gz"
    setup.rows += [
        {"subject_id": "28_0003_501", "scan_age": "abc", "T2w": "img/a.nii.gz", "Seg": "img/a_seg.nii.gz"},
        {"subject_id": "28_0001_501", "scan_age": "30", "T2w": "img/a.nii.gz", "Seg": "img/a_seg.nii.gz"},
    ]
    tsv = write_tsv(setup.root / "cohort.tsv", setup.columns, setup.rows)
    problems = problems_of(tsv)
    assert [(p.row, p.column, p.kind) for p in problems] == [
        (2, "scan_age", "ga_out_of_range"), (2, "T2w", "missing"),
        (3, "T2w", "corrupt_gzip"), (3, "Seg", "unknown_labels"),
        (4, "scan_age", "bad_value"), (5, "subject_id", "duplicate_id")]
    with pytest.raises(ManifestError) as info:
        load_cohort(tsv)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{tsv}: 6 problems"
    assert lines[1:] == [f"  {p}" for p in problems]


def test_no_images_checks_the_table_only(setup):
    case_missing_file(setup)
    setup.rows[0]["scan_age"] = "40"
    tsv = write_tsv(setup.root / "cohort.tsv", setup.columns, setup.rows)
    assert [(p.row, p.kind) for p in problems_of(tsv, check_images=False)] == [(2, "ga_out_of_range")]


# ------------------------------------------------------------------------------------------------------ the CLI


def test_cli_bad_manifest_writes_nothing(setup, capsys):
    case_seg_shape_differs(setup)
    tsv = write_tsv(setup.root / "cohort.tsv", setup.columns, setup.rows)
    out = setup.root / "resolved.tsv"
    before = tree(setup.root)
    assert main(["validate", str(tsv), "--write-resolved", str(out)]) == 2
    assert not out.exists()
    assert tree(setup.root) == before
    err = capsys.readouterr().err
    assert "row 3, column Seg" in err and "b_seg.nii.gz" in err and "1 problem" in err


def test_cli_good_manifest_writes_resolved(setup, capsys):
    tsv = write_tsv(setup.root / "cohort.tsv", setup.columns, setup.rows)
    out = setup.root / "out" / "resolved.tsv"
    assert main(["validate", str(tsv), "--write-resolved", str(out)]) == 0
    assert "OK — 2 stacks of 2 subjects" in capsys.readouterr().out
    assert out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["resolved.tsv"]
    assert load_cohort(out).stacks == load_cohort(tsv).stacks
    assert main(["validate", str(out)]) == 0
    assert os.path.isabs(out.read_text().splitlines()[1].split("\t")[2])
