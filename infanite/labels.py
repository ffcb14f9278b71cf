"""Tissue label tables.

The default table is the 8-class table of the CRL 2017 atlas with refined labels (Fidon et al. 2022):
1 white matter … 8 corpus callosum, with its mapping to the 7 FeTA challenge classes.  Other tables are read
from a small YAML or TSV file (columns/keys ``value``, ``name``, optional ``abbrev``, ``color`` as ``#rrggbb``,
optional ``feta``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml


@dataclass(frozen=True)
class Label:
    value: int
    name: str
    abbrev: str
    color: tuple[int, int, int]
    feta: int | None = None


FETA_NAMES = {0: "background", 1: "external CSF", 2: "grey matter", 3: "white matter", 4: "ventricles",
              5: "cerebellum", 6: "deep grey matter", 7: "brainstem"}


@dataclass
class LabelTable:
    """Ordered tissue labels (background 0 is implicit and never listed)."""

    labels: list[Label] = field(default_factory=list)
    source: str = "built-in CRL 8-class table"

    def __post_init__(self):
        values = [lab.value for lab in self.labels]
        if len(set(values)) != len(values):
            raise ValueError(f"{self.source}: duplicate label values {values}")
        if any(v <= 0 for v in values):
            raise ValueError(f"{self.source}: label values must be positive integers (0 is background)")

    @property
    def values(self) -> list[int]:
        return [lab.value for lab in self.labels]

    def by_abbrev(self, abbrev: str) -> Label:
        for lab in self.labels:
            if lab.abbrev == abbrev:
                return lab
        raise KeyError(f"no label {abbrev!r} in {self.source}")

    def name_of(self, value: int) -> str:
        for lab in self.labels:
            if lab.value == value:
                return lab.name
        return "background" if value == 0 else f"unknown ({value})"

    def to_feta(self, label_map: np.ndarray) -> np.ndarray:
        """Map a label array to the FeTA 7-class convention (labels without a FeTA class become 0)."""
        lut = np.zeros(max(self.values + [0]) + 1, dtype=np.uint8)
        for lab in self.labels:
            lut[lab.value] = lab.feta or 0
        label_map = np.asarray(label_map)
        if label_map.min(initial=0) < 0 or label_map.max(initial=0) >= len(lut):
            raise ValueError("label map holds values outside the label table")
        return lut[label_map]

    def unknown_values(self, label_map: np.ndarray) -> list[int]:
        """Values present in ``label_map`` that are neither background nor in the table."""
        present = np.unique(np.asarray(label_map))
        allowed = set(self.values) | {0}
        return [int(v) for v in present if int(v) not in allowed]

    def to_yaml(self) -> str:
        rows = [{"value": lab.value, "name": lab.name, "abbrev": lab.abbrev,
                 "color": "#%02x%02x%02x" % lab.color, "feta": lab.feta} for lab in self.labels]
        return yaml.safe_dump({"labels": rows}, sort_keys=False)


def default_label_table() -> LabelTable:
    """The CRL 2017 / Fidon 8-class table (colours chosen for overlays: CSF blue, GM red, WM pale)."""
    rows = [
        (1, "white matter", "WM", (245, 245, 220), 3),
        (2, "intra-axial CSF (ventricles)", "vent", (70, 130, 230), 4),
        (3, "cerebellum", "cereb", (220, 180, 60), 5),
        (4, "extra-axial CSF", "eCSF", (120, 200, 240), 1),
        (5, "cortical grey matter", "cGM", (200, 60, 60), 2),
        (6, "deep grey matter", "dGM", (160, 90, 170), 6),
        (7, "brainstem", "BS", (90, 170, 90), 7),
        (8, "corpus callosum", "CC", (250, 210, 160), 3),
    ]
    return LabelTable([Label(v, n, a, c, f) for v, n, a, c, f in rows])


def _parse_color(text, where: str) -> tuple[int, int, int]:
    if isinstance(text, str) and text.strip().startswith("["):  # "[r, g, b]" written in a TSV cell
        text = [c.strip() for c in text.strip().strip("[]").split(",")]
    if isinstance(text, (list, tuple)):
        try:
            rgb = tuple(int(c) for c in text)
        except (TypeError, ValueError):
            rgb = ()
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"{where}: colour must be '#rrggbb' or [r, g, b] with 0-255 integers, got {text!r}")
        return rgb
    s = str(text).strip().lstrip("#")
    if len(s) != 6:
        raise ValueError(f"{where}: colour must be '#rrggbb' or [r, g, b], got {text!r}")
    try:
        return tuple(int(s[i:i + 2], 16) for i in (0, 2, 4))
    except ValueError as exc:
        raise ValueError(f"{where}: colour must be '#rrggbb', got {text!r}") from exc


def _label_from_row(row: dict, where: str) -> Label:
    try:
        value = int(row["value"])
        name = str(row["name"]).strip()
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: needs an integer 'value' and a 'name' ({exc})") from exc
    feta = row.get("feta")
    try:
        feta = None if feta in (None, "", "None") else int(feta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: 'feta' must be an integer FeTA class, got {feta!r}") from exc
    color = _parse_color(row.get("color") or "#808080", where)
    return Label(value, name, str(row.get("abbrev") or name), color, feta)


def load_label_table(path) -> LabelTable:
    """Read a label table from ``.yaml``/``.yml`` (``labels: [{value, name, …}]``) or ``.tsv``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: label table file does not exist")
    if path.suffix.lower() in (".yaml", ".yml"):
        doc = yaml.safe_load(path.read_text())
        rows = doc.get("labels") if isinstance(doc, dict) else None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a mapping with a 'labels' list")
        entries = [(f"labels[{i}]", r if isinstance(r, dict) else {}) for i, r in enumerate(rows)]
    else:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            entries = [(f"row {i + 2}", r) for i, r in enumerate(reader)]
    labels, seen = [], {}
    for entry, row in entries:
        where = f"{path}: {entry}"
        lab = _label_from_row(row, where)
        if lab.value == 0:  # an explicit background row is allowed and ignored
            continue
        if lab.value < 0:
            raise ValueError(f"{where}: label value must be a positive integer (0 is background), got {lab.value}")
        if lab.value in seen:
            raise ValueError(f"{where}: duplicate label value {lab.value} (already used by {seen[lab.value]})")
        seen[lab.value] = entry
        labels.append(lab)
    return LabelTable(labels, source=str(path))
