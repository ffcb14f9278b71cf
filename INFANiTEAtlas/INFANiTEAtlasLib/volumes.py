"""Tissue volumes (mL) against gestational age (weeks): a table node, a plot chart and a current-GA marker.

The table has a ``GA`` column (weeks), one column per tissue (the label abbreviation, mL) and one per normative
measure that ``infanite atlas`` compares in ``growth.png`` (TBV, ICV, GMV, SBV, e-CSFV, VV, CBV, BM: sums of
tissues as :data:`infanite.reference.normative.MEASURE_LABELS` defines them), each with the normative mean and mean ± 1
and ± 2 SD at the atlas GAs (columns ``"<measure> normative <band>"``).  Volumes come from the ``volumes.tsv``
next to each GA's files (what ``infanite atlas`` wrote) and, for GAs it lacks, from the dseg: voxel count ×
voxel volume (|det| of the affine, mm³ → mL).

The chart has one series per tissue in its label colour, the atlas measures, the normative mean and bands as
dashed lines, and a vertical "current GA" line (its own 2-row table, moved by :meth:`update_marker`).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
from infanite.io.layout import VOLUMES

if TYPE_CHECKING:
    from infanite.labels import LabelTable

    from infanite.atlas.folder import AtlasFiles

    from .loader import LoadedAtlas

#: Normative bands: column suffix → multiple of the SD added to the mean.
NORMATIVE_BANDS = (("mean", 0.0), ("-1SD", -1.0), ("+1SD", 1.0), ("-2SD", -2.0), ("+2SD", 2.0))
GA_COLUMN = "GA"
#: Colours (RGB 0–1) of measures that sum several tissues; single-tissue measures take the tissue's colour.
MEASURE_COLORS = {"TBV": (0.2, 0.2, 0.2), "ICV": (0.45, 0.3, 0.15), "SBV": (0.55, 0.45, 0.2)}


def normative_column(measure: str, band: str) -> str:
    """Table column of a measure's normative band (``"GMV normative +1SD"``)."""
    return f"{measure} normative {band}"


def read_volumes_tsv(path) -> dict:
    """``volumes.tsv`` as {GA (weeks, 0.1 precision): {column: mL}}; ``ValueError`` naming the file and row."""
    from infanite.io.layout import ga_key

    path = Path(path)
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            lines = [(reader.line_num, row) for row in reader]
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc
    if "ga_weeks" not in header:
        raise ValueError(f"{path}: no ga_weeks column")
    rows = {}
    for line, row in lines:
        try:
            values = {k: float(v) for k, v in row.items() if k and v not in (None, "")}
            rows[ga_key(values.pop("ga_weeks"))] = values
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: line {line}: not a row of numbers ({exc})") from exc
    return rows


def tissue_volume_rows(files: Iterable[AtlasFiles], table: LabelTable) -> list:
    """One dict per GA, ascending: ``ga_weeks``, each tissue's abbreviation → mL, each measure → mL, and
    ``source`` ("volumes.tsv" or "dseg").  A GA takes its row of the ``volumes.tsv`` beside its dseg when that
    row has every tissue; otherwise the dseg is counted (voxel count × voxel volume)."""
    from infanite.io.images import load_labels
    from infanite.reference.volumes import label_volumes_ml, measures_from_tissues

    abbrevs = {lab.value: lab.abbrev for lab in table.labels}
    tsv_cache: dict = {}
    rows = []
    for entry in sorted(files, key=lambda f: f.ga):
        tsv_path = Path(entry.dseg).parent / VOLUMES
        if tsv_path not in tsv_cache:
            tsv_cache[tsv_path] = read_volumes_tsv(tsv_path) if tsv_path.is_file() else {}
        written = tsv_cache[tsv_path].get(entry.ga)
        if written is not None and all(a in written for a in abbrevs.values()):
            tissue = {a: written[a] for a in abbrevs.values()}
            source = VOLUMES
        else:
            dseg = load_labels(entry.dseg)
            voxel_mm3 = abs(float(np.linalg.det(dseg.voxel_to_ras[:3, :3])))
            tissue = label_volumes_ml(dseg, abbrevs, voxel_mm3)
            written, source = None, "dseg"
        measures = measures_from_tissues(tissue)
        if written is not None:
            measures = {m: written.get(m, v) for m, v in measures.items()}
        rows.append({"ga_weeks": entry.ga, **tissue, **measures, "source": source})
    return rows


def _blend(color, amount: float) -> tuple:
    """``color`` moved ``amount`` (0–1) of the way to white."""
    return tuple(float(c + (1.0 - c) * amount) for c in color)


class TissueVolumePlot:
    """Table, chart and current-GA marker of a loaded atlas's tissue volumes (mL) against GA (weeks).

    ``normative``: a CSV path or :class:`~infanite.reference.normative.NormativeTable` (default: the built-in Ren et al.
    2022 table, as ``infanite atlas``).  ``series`` maps a table column to its plot series node.
    """

    def __init__(self, scene, loaded: LoadedAtlas, normative=None, name: str = "tissue volumes"):
        from infanite.reference.normative import open_normative

        self.scene = scene
        self.loaded = loaded
        self.normative = open_normative(normative)
        self.table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{loaded.name} {name}")
        self.marker_table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{loaded.name} {name} current GA")
        self.chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{loaded.name} {name}")
        self.chart.SetTitle(f"{loaded.name}: tissue volumes vs {self.normative.source}")
        self.chart.SetXAxisTitle("gestational age (weeks)")
        self.chart.SetYAxisTitle("volume (mL)")
        self.series: dict = {}
        self.tissues: list = []
        self.measures: list = []
        self.rows: list = []
        self.marker = self._new_series("current GA", self.marker_table, "volume (mL)", (0.0, 0.0, 0.0),
                                       line_style="LineStyleSolid", width=2)
        self.update()
        self.update_marker(loaded.current_ga)

    # ------------------------------------------------------------------------------------ table

    def update(self) -> None:
        """(Re)compute the rows from the atlas's current items and refill the table; new series as needed."""
        from infanite.reference.normative import MEASURE_LABELS

        table = self.loaded.label_table
        self.rows = tissue_volume_rows(self.loaded.files.values(), table)
        self.tissues = [lab.abbrev for lab in table.labels]
        self.measures = [m for m in MEASURE_LABELS
                         if m in self.normative.mean_ml and self.rows and all(m in r for r in self.rows)]
        columns = {GA_COLUMN: [r["ga_weeks"] for r in self.rows]}
        columns.update({a: [r[a] for r in self.rows] for a in self.tissues})
        for m in self.measures:
            columns[m] = [r[m] for r in self.rows]
            mean = np.array([self.normative.mean(m, r["ga_weeks"]) for r in self.rows])
            sd = np.array([self.normative.sd(m, r["ga_weeks"]) for r in self.rows])
            for band, k in NORMATIVE_BANDS:
                columns[normative_column(m, band)] = list(mean + k * sd)
        self._fill(self.table, columns)
        self.table.SetColumnUnitLabel(GA_COLUMN, "weeks")
        self.table.SetColumnTitle(GA_COLUMN, "gestational age")
        for lab in table.labels:
            self.table.SetColumnUnitLabel(lab.abbrev, "mL")
            self.table.SetColumnTitle(lab.abbrev, lab.name)
        for name in columns:
            if name != GA_COLUMN and name not in self.tissues:
                self.table.SetColumnUnitLabel(name, "mL")
        self._make_series()

    @staticmethod
    def _fill(table_node, columns: dict) -> None:
        import vtk

        data = vtk.vtkTable()
        for name, values in columns.items():
            array = vtk.vtkDoubleArray()
            array.SetName(name)
            for v in values:
                array.InsertNextValue(float(v))
            data.AddColumn(array)
        table_node.SetAndObserveTable(data)

    def column(self, name: str) -> np.ndarray:
        """A column of the volume table (``GA``, a tissue abbreviation, a measure, a normative column)."""
        return self._column(self.table, name)

    @staticmethod
    def _column(table_node, name: str) -> np.ndarray:
        array = table_node.GetTable().GetColumnByName(name)
        if array is None:
            raise KeyError(f"no column {name!r} in table {table_node.GetName()!r}")
        return np.array([array.GetValue(i) for i in range(array.GetNumberOfTuples())], dtype=np.float64)

    # ------------------------------------------------------------------------------------ series

    def _new_series(self, name: str, table_node, y_column: str, color, line_style: str = "LineStyleSolid",
                    marker: str = "MarkerStyleNone", width: int = 1):
        node = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{self.loaded.name} {name}")
        node.SetAndObserveTableNodeID(table_node.GetID())
        node.SetXColumnName(GA_COLUMN)
        node.SetYColumnName(y_column)
        node.SetPlotType(node.PlotTypeScatter)
        node.SetLineStyle(getattr(node, line_style))
        node.SetMarkerStyle(getattr(node, marker))
        node.SetLineWidth(width)
        node.SetColor(*color)
        self.chart.AddAndObservePlotSeriesNodeID(node.GetID())
        return node

    def _measure_color(self, measure: str) -> tuple:
        from infanite.reference.normative import MEASURE_LABELS

        tissues = MEASURE_LABELS[measure]
        if len(tissues) == 1 and tissues[0] in self.tissues:
            return tuple(c / 255.0 for c in self.loaded.label_table.by_abbrev(tissues[0]).color)
        return MEASURE_COLORS.get(measure, (0.3, 0.3, 0.3))

    def _make_series(self) -> None:
        for lab in self.loaded.label_table.labels:
            if lab.abbrev not in self.series:
                self.series[lab.abbrev] = self._new_series(lab.abbrev, self.table, lab.abbrev,
                                                           tuple(c / 255.0 for c in lab.color),
                                                           marker="MarkerStyleCircle", width=2)
        for m in self.measures:
            color = self._measure_color(m)
            if m not in self.series:
                self.series[m] = self._new_series(m, self.table, m, color, marker="MarkerStyleSquare", width=2)
            for band, k in NORMATIVE_BANDS:
                column = normative_column(m, band)
                if column not in self.series:
                    self.series[column] = self._new_series(column, self.table, column,
                                                           _blend(color, 0.25 * abs(k)), "LineStyleDash",
                                                           width=2 if k == 0 else 1)

    def show(self, keys=None) -> None:
        """Chart only the series of the given tissues (abbreviations) and measures (with their normative
        bands); ``None`` charts every series.  The current-GA marker is always shown."""
        wanted = None if keys is None else set(keys)
        self.chart.RemoveAllPlotSeriesNodeIDs()
        for column, node in self.series.items():
            owner = column.split(" normative ")[0]
            if wanted is None or owner in wanted:
                self.chart.AddAndObservePlotSeriesNodeID(node.GetID())
        self.chart.AddAndObservePlotSeriesNodeID(self.marker.GetID())

    # ------------------------------------------------------------------------------------ marker

    def update_marker(self, ga=None) -> float | None:
        """Move the vertical current-GA line to ``ga`` (weeks; default: the GA the browser shows), spanning
        0 to just above the largest charted value.  Returns the GA."""
        ga = self.loaded.current_ga if ga is None else float(ga)
        values = [self.column(c) for c in self.series if self.table.GetTable().GetColumnByName(c) is not None]
        top = max([float(np.max(v)) for v in values if v.size] + [1.0]) * 1.05
        x = float("nan") if ga is None else ga
        self._fill(self.marker_table, {GA_COLUMN: [x, x], "volume (mL)": [0.0, top]})
        return ga

    @property
    def marker_ga(self) -> float:
        """The GA (weeks) the marker stands at."""
        return float(self._column(self.marker_table, GA_COLUMN)[0])

    def remove(self) -> None:
        """Remove the chart, series and tables from the scene."""
        from INFANiTECommonLib.mrml import remove_nodes

        remove_nodes(self.scene, [self.chart, self.marker] + list(self.series.values())
                     + [self.table, self.marker_table])
