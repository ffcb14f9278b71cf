"""Label tables: the built-in CRL 8-class table, FeTA mapping, YAML/TSV loading, round trip, and each failure."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from infanite.labels import FETA_NAMES, Label, LabelTable, default_label_table, load_label_table

from conftest import CRL_ATLAS, require

# The CRL 2017 / Fidon table (../shared/data/crl2017-fetal-atlas/README.md, "Label values"), transcribed:
# value → (name, abbrev, FeTA class).  FeTA: feta = [0,3,4,5,1,2,6,7,3][label].
CRL_TABLE = {
    1: ("white matter", "WM", 3),
    2: ("intra-axial CSF (ventricles)", "vent", 4),
    3: ("cerebellum", "cereb", 5),
    4: ("extra-axial CSF", "eCSF", 1),
    5: ("cortical grey matter", "cGM", 2),
    6: ("deep grey matter", "dGM", 6),
    7: ("brainstem", "BS", 7),
    8: ("corpus callosum", "CC", 3),
}
FETA_LUT = [0, 3, 4, 5, 1, 2, 6, 7, 3]


# --------------------------------------------------------------------------------------------- default table

def test_default_table_values_names_abbrevs():
    table = default_label_table()
    assert table.values == list(range(1, 9))
    for lab in table.labels:
        name, abbrev, feta = CRL_TABLE[lab.value]
        assert (lab.name, lab.abbrev, lab.feta) == (name, abbrev, feta)
        assert table.name_of(lab.value) == name
        assert table.by_abbrev(abbrev) is lab
        assert len(lab.color) == 3 and all(0 <= c <= 255 for c in lab.color)
    assert table.name_of(0) == "background"
    assert table.name_of(42) == "unknown (42)"
    with pytest.raises(KeyError, match="nope"):
        table.by_abbrev("nope")


@pytest.mark.shared_data
def test_default_table_matches_crl_readme():
    """Cross-check against the README of the shared atlas copy (skips where the shared data is absent)."""
    readme = require(CRL_ATLAS / "README.md", "CRL 2017 atlas README")
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|\s*(\d+)\s*\|\s*$", readme.read_text(), flags=re.M)
    readme_rows = {int(v): (struct, int(feta)) for v, struct, feta in rows}
    assert sorted(readme_rows) == list(range(0, 9))
    table = default_label_table()
    for lab in table.labels:
        struct, feta = readme_rows[lab.value]
        assert lab.feta == feta
        # our short names are the README's structure names without the parenthesised detail, or vice versa
        core = lambda s: re.sub(r"\s*\(.*?\)", "", s).strip().lower()
        assert core(lab.name) == core(struct), (lab.value, lab.name, struct)
    assert "feta = [0,3,4,5,1,2,6,7,3][label]" in readme.read_text()


def test_to_feta_every_label():
    table = default_label_table()
    labels = np.arange(9).reshape(3, 3)
    labels = np.concatenate([labels, labels[::-1]], axis=0).astype(np.uint16)  # every value, twice, 2-D
    feta = table.to_feta(labels)
    assert feta.shape == labels.shape
    np.testing.assert_array_equal(feta, np.asarray(FETA_LUT)[labels])
    assert set(np.unique(feta)) == set(FETA_NAMES)  # all 8 FeTA classes (0..7) reached


def test_to_feta_rejects_values_outside_table():
    table = default_label_table()
    with pytest.raises(ValueError, match="outside the label table"):
        table.to_feta(np.array([0, 1, 9]))
    with pytest.raises(ValueError, match="outside the label table"):
        table.to_feta(np.array([-1, 1]))


def test_label_without_feta_maps_to_background():
    table = LabelTable([Label(1, "a", "a", (0, 0, 0), 3), Label(5, "b", "b", (0, 0, 0), None)])
    np.testing.assert_array_equal(table.to_feta(np.array([0, 1, 5, 5])), [0, 3, 0, 0])


def test_unknown_values():
    table = default_label_table()
    assert table.unknown_values(np.arange(9)) == []
    assert table.unknown_values(np.array([[0, 1, 9], [12, 9, 3]])) == [9, 12]
    assert table.unknown_values(np.zeros((2, 2), np.uint8)) == []


def test_label_table_constructor_rejects_duplicates_and_non_positive():
    with pytest.raises(ValueError, match="duplicate"):
        LabelTable([Label(1, "a", "a", (0, 0, 0)), Label(1, "b", "b", (0, 0, 0))], source="mine")
    with pytest.raises(ValueError, match="positive"):
        LabelTable([Label(0, "a", "a", (0, 0, 0))], source="mine")


# ----------------------------------------------------------------------------------------------- loading

YAML_TEXT = """\
labels:
  - {value: 1, name: white matter, abbrev: WM, color: "#f5f5dc", feta: 3}
  - {value: 2, name: ventricles, abbrev: vent, color: [70, 130, 230], feta: 4}
  - {value: 10, name: lesion, color: "#FF0000"}
"""


def test_load_yaml(tmp_path):
    path = tmp_path / "labels.yaml"
    path.write_text(YAML_TEXT)
    table = load_label_table(path)
    assert table.source == str(path)
    assert table.values == [1, 2, 10]
    wm, vent, lesion = table.labels
    assert wm == Label(1, "white matter", "WM", (245, 245, 220), 3)
    assert vent == Label(2, "ventricles", "vent", (70, 130, 230), 4)
    # abbrev defaults to the name, upper-case hex is accepted, feta is optional
    assert lesion == Label(10, "lesion", "lesion", (255, 0, 0), None)
    np.testing.assert_array_equal(table.to_feta(np.array([0, 1, 2, 10])), [0, 3, 4, 0])


def test_load_tsv_with_hex_and_list_colours(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("value\tname\tabbrev\tcolor\tfeta\n"
                    "0\tbackground\tbg\t#000000\t0\n"  # an explicit background row is ignored
                    "1\twhite matter\tWM\t#f5f5dc\t3\n"
                    "4\textra-axial CSF\teCSF\t[120, 200, 240]\t1\n"
                    "5\tcortical grey matter\tcGM\t\t\n")
    table = load_label_table(path)
    assert table.values == [1, 4, 5]
    assert table.labels[0] == Label(1, "white matter", "WM", (245, 245, 220), 3)
    assert table.labels[1] == Label(4, "extra-axial CSF", "eCSF", (120, 200, 240), 1)
    assert table.labels[2] == Label(5, "cortical grey matter", "cGM", (128, 128, 128), None)  # default grey


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_round_trip_default_table(tmp_path, suffix):
    table = default_label_table()
    path = tmp_path / f"table{suffix}"
    path.write_text(table.to_yaml())
    loaded = load_label_table(path)
    assert loaded.labels == table.labels
    assert loaded.source == str(path)


def test_round_trip_table_with_missing_feta(tmp_path):
    table = LabelTable([Label(3, "x", "X", (1, 2, 3), None), Label(7, "y z", "YZ", (255, 0, 16), 7)])
    path = tmp_path / "t.yaml"
    path.write_text(table.to_yaml())
    assert load_label_table(path).labels == table.labels


# ------------------------------------------------------------------------------------------------ errors

def _error(path: Path) -> str:
    with pytest.raises(ValueError) as info:
        load_label_table(path)
    return str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    msg = _error(path)
    assert str(path) in msg and "does not exist" in msg


@pytest.mark.parametrize("text", ["{}\n", "other: []\n", "labels: {value: 1}\n", "", "- 1\n- 2\n"])
def test_yaml_without_labels_list(tmp_path, text):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    msg = _error(path)
    assert str(path) in msg and "'labels'" in msg


def test_yaml_duplicate_value_names_entry(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("labels:\n  - {value: 1, name: a}\n  - {value: 2, name: b}\n  - {value: 1, name: c}\n")
    msg = _error(path)
    assert str(path) in msg and "labels[2]" in msg and "duplicate" in msg and "labels[0]" in msg


def test_tsv_duplicate_value_names_row(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("value\tname\n3\ta\n3\tb\n")
    msg = _error(path)
    assert str(path) in msg and "row 3" in msg and "duplicate" in msg


@pytest.mark.parametrize("value", [-1, -8])
def test_yaml_non_positive_value_names_entry(tmp_path, value):
    path = tmp_path / "t.yaml"
    path.write_text(f"labels:\n  - {{value: 1, name: a}}\n  - {{value: {value}, name: b}}\n")
    msg = _error(path)
    assert str(path) in msg and "labels[1]" in msg and "positive" in msg


def test_tsv_non_positive_value_names_row(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("value\tname\n1\ta\n2\tb\n-3\tc\n")
    msg = _error(path)
    assert str(path) in msg and "row 4" in msg and "positive" in msg


@pytest.mark.parametrize("colour", ['"#12345"', '"#gg0000"', "[1, 2]", "[0, 0, 256]", "[a, b, c]", "red"])
def test_yaml_bad_colour_names_entry(tmp_path, colour):
    path = tmp_path / "t.yaml"
    path.write_text(f"labels:\n  - {{value: 1, name: a}}\n  - {{value: 2, name: b, color: {colour}}}\n")
    msg = _error(path)
    assert str(path) in msg and "labels[1]" in msg and "colour" in msg


@pytest.mark.parametrize("colour", ["#12345", "#zzzzzz", "[1,2,3,4]", "[-1,0,0]", "blue"])
def test_tsv_bad_colour_names_row(tmp_path, colour):
    path = tmp_path / "t.tsv"
    path.write_text(f"value\tname\tcolor\n1\ta\t#000000\n2\tb\t{colour}\n")
    msg = _error(path)
    assert str(path) in msg and "row 3" in msg and "colour" in msg


def test_bad_value_or_missing_name_names_row(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("value\tname\none\ta\n")
    msg = _error(path)
    assert str(path) in msg and "row 2" in msg and "'value'" in msg
    path = tmp_path / "t.yaml"
    path.write_text("labels:\n  - {value: 1}\n")
    msg = _error(path)
    assert str(path) in msg and "labels[0]" in msg and "'name'" in msg


def test_bad_feta_names_row(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("value\tname\tfeta\n1\ta\tthree\n")
    msg = _error(path)
    assert str(path) in msg and "row 2" in msg and "feta" in msg
