"""Normative volumes: the built-in Ren 2022 table against the shared CSV, interpolation, extrapolation, CSV errors."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from infanite.labels import default_label_table
from infanite.reference.normative import MEASURE_LABELS, REN2022, REN2022_WEEKS, load_normative_csv, ren2022

MEASURES = ["TBV", "ICV", "GMV", "SBV", "e-CSFV", "VV", "CBV", "BM"]


@pytest.mark.shared_data
def test_builtin_equals_shared_csv(normative_csv):
    builtin = ren2022()
    loaded = load_normative_csv(normative_csv)
    assert loaded.source == str(normative_csv)
    np.testing.assert_array_equal(loaded.weeks, np.arange(19, 38))
    np.testing.assert_array_equal(builtin.weeks, loaded.weeks)
    assert sorted(loaded.mean_ml) == sorted(builtin.mean_ml) == sorted(MEASURES)
    for measure in MEASURES:
        assert len(loaded.mean_ml[measure]) == 19
        np.testing.assert_allclose(builtin.mean_ml[measure], loaded.mean_ml[measure], rtol=0, atol=1e-9,
                                   err_msg=f"mean {measure}")
        np.testing.assert_allclose(builtin.sd_ml[measure], loaded.sd_ml[measure], rtol=0, atol=1e-9,
                                   err_msg=f"sd {measure}")
        for week in range(19, 38):  # the table's own lookup at whole weeks returns the CSV row exactly
            i = week - 19
            assert builtin.mean(measure, week) == pytest.approx(loaded.mean_ml[measure][i], abs=1e-9)
            assert builtin.sd(measure, week) == pytest.approx(loaded.sd_ml[measure][i], abs=1e-9)


@pytest.mark.shared_data
def test_shared_csv_row_by_row(normative_csv):
    """Independent of load_normative_csv: every CSV row is found in the built-in table."""
    with normative_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(MEASURES) * 19
    for row in rows:
        i = int(row["gestational_age_weeks"]) - 19
        means, sds = REN2022[row["measure"]]
        assert means[i] == pytest.approx(float(row["mean_ml"]), abs=1e-9), row
        assert sds[i] == pytest.approx(float(row["sd_ml"]), abs=1e-9), row


def test_builtin_shape_and_measure_labels():
    table = ren2022()
    np.testing.assert_array_equal(REN2022_WEEKS, np.arange(19, 38))
    abbrevs = {lab.abbrev for lab in default_label_table().labels}
    for measure in MEASURES:
        assert len(table.mean_ml[measure]) == len(table.sd_ml[measure]) == 19
        assert all(v > 0 for v in table.mean_ml[measure]) and all(v > 0 for v in table.sd_ml[measure])
        assert set(MEASURE_LABELS[measure]) <= abbrevs
    assert table.mean("TBV", 19) == 29.33 and table.mean("TBV", 37) == 316.90
    assert table.sd("BM", 30) == 0.41


@pytest.mark.parametrize("measure", MEASURES)
def test_interpolation_halfway_is_average(measure):
    table = ren2022()
    means, sds = (np.asarray(v) for v in REN2022[measure])
    for week in range(19, 37):
        i = week - 19
        assert table.mean(measure, week + 0.5) == pytest.approx((means[i] + means[i + 1]) / 2, rel=1e-12)
        assert table.sd(measure, week + 0.5) == pytest.approx((sds[i] + sds[i + 1]) / 2, rel=1e-12)
    # a quarter of the way is linear too
    assert table.mean(measure, 30.25) == pytest.approx(0.75 * means[11] + 0.25 * means[12], rel=1e-12)


def test_extrapolation_beyond_37_increasing_and_positive():
    table = ren2022()
    ages = [37.25, 37.5, 38, 39, 40, 42, 45]
    tbv = [table.mean("TBV", ga) for ga in ages]
    assert all(v > 0 for v in tbv)
    assert all(b > a for a, b in zip(tbv, tbv[1:]))
    assert tbv[0] > 294.0  # beyond week 36's mean: continues the growth, does not collapse
    assert tbv[2] < 2 * 316.9  # and stays plausible a week out
    # log-linear: constant ratio per week
    assert tbv[3] / tbv[2] == pytest.approx(tbv[4] / tbv[3], rel=1e-9)
    assert all(table.sd("TBV", ga) > 0 for ga in ages)


def test_extrapolation_below_19_positive_and_smaller():
    table = ren2022()
    for measure in MEASURES:
        below = [table.mean(measure, ga) for ga in (15, 17, 18.5)]
        assert all(v > 0 for v in below)
    tbv = [table.mean("TBV", ga) for ga in (15, 17, 18.5)]
    assert tbv[0] < tbv[1] < tbv[2] < 29.33


def test_unknown_measure_raises():
    with pytest.raises(KeyError):
        ren2022().mean("XYZ", 30)


# -------------------------------------------------------------------------------------------- CSV loading

def _write(tmp_path, text, name="norm.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_small_csv_sorts_weeks(tmp_path):
    path = _write(tmp_path, "measure,gestational_age_weeks,mean_ml,sd_ml\n"
                            "A,22,30,3\nA,20,10,1\nA,21,20,2\nB,21,2,0.2\nB,20,1,0.1\nB,22,3,0.3\n")
    table = load_normative_csv(path)
    np.testing.assert_array_equal(table.weeks, [20, 21, 22])
    assert table.mean_ml == {"A": [10, 20, 30], "B": [1, 2, 3]}
    assert table.sd_ml["B"] == [0.1, 0.2, 0.3]
    assert table.mean("A", 20.5) == pytest.approx(15)


@pytest.mark.parametrize("missing", ["measure", "gestational_age_weeks", "mean_ml", "sd_ml"])
def test_load_missing_column(tmp_path, missing):
    cols = [c for c in ["measure", "gestational_age_weeks", "mean_ml", "sd_ml"] if c != missing]
    path = _write(tmp_path, ",".join(cols) + "\n" + ",".join("1" for _ in cols) + "\n")
    with pytest.raises(ValueError) as info:
        load_normative_csv(path)
    assert str(path) in str(info.value) and missing in str(info.value)


def test_load_empty_file(tmp_path):
    path = _write(tmp_path, "")
    with pytest.raises(ValueError, match="missing column"):
        load_normative_csv(path)
    path = _write(tmp_path, "measure,gestational_age_weeks,mean_ml,sd_ml\n", "header_only.csv")
    with pytest.raises(ValueError, match="no rows"):
        load_normative_csv(path)


@pytest.mark.parametrize("bad_row, line", [
    ("TBV,21,abc,1.0", 4),
    ("TBV,twenty,1.0,1.0", 4),
    ("TBV,21,1.0,", 4),
    ("TBV,21,1.0", 4),  # a short row: sd_ml is missing altogether
])
def test_load_bad_number_names_row(tmp_path, bad_row, line):
    path = _write(tmp_path, "measure,gestational_age_weeks,mean_ml,sd_ml\nTBV,19,1,1\nTBV,20,2,1\n"
                            f"{bad_row}\nTBV,22,4,1\n")
    with pytest.raises(ValueError) as info:
        load_normative_csv(path)
    assert str(path) in str(info.value) and f"row {line}" in str(info.value)


def test_load_bad_number_row_counts_blank_lines(tmp_path):
    path = _write(tmp_path, "measure,gestational_age_weeks,mean_ml,sd_ml\nTBV,19,1,1\n\nTBV,20,x,1\n")
    with pytest.raises(ValueError, match=r"row 4\b"):
        load_normative_csv(path)


def test_load_inconsistent_weeks(tmp_path):
    path = _write(tmp_path, "measure,gestational_age_weeks,mean_ml,sd_ml\nA,20,1,1\nA,21,2,1\nB,20,1,1\n")
    with pytest.raises(ValueError, match="measure B covers other weeks"):
        load_normative_csv(path)
