"""Normative fetal brain tissue volumes (mL) by gestational age (weeks).

Built in: the weekly means and SDs of Ren et al. 2022 (Table 1; 188 fetuses, GA 19–37), as transcribed in the
MIT-licensed ``ajoshiusc/fetal-brain-growth`` repository (``references/ren2022_weekly_mean_sd.csv``).
Cite: J.-Y. Ren et al., Front. Neurosci. 16:886083 (2022), doi:10.3389/fnins.2022.886083.

Measures: TBV total brain, ICV intracranial, GMV cortical grey matter, SBV supratentorial brain (white matter +
deep grey), e-CSFV extra-cerebral CSF, VV ventricles, CBV cerebellum, BM brainstem.  Values between weeks are
interpolated linearly; outside 19–37 weeks they are extrapolated from the end week with the log-linear
growth rate of the four end weeks.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REN2022_WEEKS = np.arange(19, 38, dtype=np.float64)
#: measure → (means, SDs) for weeks 19..37, mL.
REN2022 = {
    "TBV": ([29.33, 37.63, 47.28, 56.08, 64.98, 74.98, 83.17, 91.10, 122.30, 140.80, 164.10, 175.60, 182.00,
             197.80, 212.10, 236.90, 260.30, 294.00, 316.90],
            [2.38, 2.87, 5.63, 3.66, 3.78, 6.60, 3.80, 4.04, 10.18, 11.65, 11.55, 6.09, 8.92, 6.43, 11.10, 8.87,
             12.11, 9.97, 10.20]),
    "ICV": ([69.55, 76.74, 86.40, 109.30, 125.70, 141.50, 158.50, 175.40, 215.50, 246.80, 277.50, 302.50, 304.70,
             328.80, 344.50, 386.60, 426.70, 460.00, 491.80],
            [3.05, 2.13, 5.65, 11.90, 9.34, 12.11, 9.53, 9.45, 21.33, 15.27, 13.94, 15.51, 12.19, 9.25, 10.24,
             12.09, 23.28, 9.74, 11.47]),
    "GMV": ([6.57, 7.28, 9.99, 12.05, 13.63, 15.42, 16.96, 18.47, 24.31, 29.98, 33.44, 39.71, 40.95, 45.78, 47.84,
             58.23, 65.24, 77.26, 83.96],
            [0.43, 0.48, 1.08, 0.68, 0.88, 0.97, 0.96, 1.18, 1.81, 2.66, 4.44, 3.76, 2.53, 4.14, 3.68, 3.70, 4.23,
             5.04, 3.20]),
    "SBV": ([20.65, 27.93, 34.40, 40.96, 47.59, 55.35, 61.39, 67.15, 91.02, 99.43, 120.80, 124.90, 129.30, 137.70,
             150.00, 162.10, 175.50, 193.30, 207.10],
            [1.98, 2.30, 5.11, 2.68, 3.72, 5.97, 3.93, 3.62, 9.20, 12.54, 11.43, 6.29, 7.60, 8.89, 9.27, 7.39, 7.95,
             8.88, 10.27]),
    "e-CSFV": ([38.15, 37.32, 37.60, 50.17, 57.23, 63.76, 72.38, 81.57, 90.38, 103.10, 110.70, 124.10, 119.50,
                129.60, 128.00, 160.40, 164.10, 158.50, 166.10],
               [1.07, 1.09, 5.85, 11.28, 7.42, 12.21, 11.33, 8.24, 21.36, 10.13, 20.53, 18.73, 11.20, 10.68, 16.53,
                16.00, 17.51, 13.08, 15.17]),
    "VV": ([2.08, 1.80, 1.53, 3.05, 3.29, 2.73, 2.97, 2.74, 2.90, 2.98, 2.73, 2.70, 3.20, 3.50, 4.34, 5.11, 5.94,
            7.51, 8.86],
           [0.53, 0.77, 0.43, 0.79, 0.84, 0.93, 0.82, 0.86, 0.92, 0.89, 0.85, 0.72, 0.95, 1.22, 1.24, 1.42, 1.64,
            0.64, 0.61]),
    "CBV": ([1.32, 1.54, 1.85, 1.84, 2.41, 2.64, 3.15, 3.58, 4.50, 5.63, 6.75, 7.54, 8.32, 10.43, 10.49, 12.71,
             15.14, 17.76, 18.83],
            [0.15, 0.24, 0.36, 0.43, 0.22, 0.49, 0.55, 0.70, 0.77, 0.70, 0.54, 0.76, 1.09, 0.99, 1.91, 1.32, 2.00,
             0.48, 0.64]),
    "BM": ([0.79, 0.87, 1.05, 1.23, 1.36, 1.57, 1.67, 1.90, 2.42, 3.14, 3.09, 3.49, 3.54, 3.79, 3.83, 3.87, 4.89,
            5.70, 7.07],
           [0.14, 0.16, 0.23, 0.21, 0.24, 0.37, 0.34, 0.39, 0.52, 0.67, 0.35, 0.41, 0.42, 0.32, 0.53, 0.30, 0.46,
            0.76, 0.42]),
}

#: Which labels of the default (CRL 8-class) table each measure sums, by label abbreviation.
MEASURE_LABELS = {
    "TBV": ("WM", "CC", "cGM", "dGM", "cereb", "BS"),
    "ICV": ("WM", "vent", "cereb", "eCSF", "cGM", "dGM", "BS", "CC"),
    "GMV": ("cGM",),
    "SBV": ("WM", "CC", "dGM"),
    "e-CSFV": ("eCSF",),
    "VV": ("vent",),
    "CBV": ("cereb",),
    "BM": ("BS",),
}


@dataclass(frozen=True)
class NormativeTable:
    """Weekly normative mean and SD (mL) per measure."""

    weeks: np.ndarray
    mean_ml: dict
    sd_ml: dict
    source: str

    def mean(self, measure: str, ga_weeks: float) -> float:
        """Mean volume (mL) at a GA (weeks): linear between weeks, log-linear extrapolation outside."""
        return _interp_loglinear(self.weeks, np.asarray(self.mean_ml[measure], dtype=np.float64), ga_weeks)

    def sd(self, measure: str, ga_weeks: float) -> float:
        return _interp_loglinear(self.weeks, np.asarray(self.sd_ml[measure], dtype=np.float64), ga_weeks)


def _interp_loglinear(weeks: np.ndarray, values: np.ndarray, ga: float) -> float:
    if weeks[0] <= ga <= weeks[-1]:
        return float(np.interp(ga, weeks, values))
    side, anchor = (slice(-4, None), -1) if ga > weeks[-1] else (slice(0, 4), 0)
    slope = np.polyfit(weeks[side], np.log(values[side]), 1)[0]
    return float(values[anchor] * np.exp(slope * (ga - weeks[anchor])))   # continuous at the end week


def ren2022() -> NormativeTable:
    """The built-in Ren et al. 2022 table."""
    return NormativeTable(REN2022_WEEKS, {k: v[0] for k, v in REN2022.items()},
                          {k: v[1] for k, v in REN2022.items()}, "Ren et al. 2022 (built in)")


def load_normative_csv(path) -> NormativeTable:
    """Read a table with columns ``measure, gestational_age_weeks, mean_ml, sd_ml`` (Ren 2022 CSV format)."""
    path = Path(path)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"measure", "gestational_age_weeks", "mean_ml", "sd_ml"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for row in reader:
            line = reader.line_num  # the file's line (DictReader skips blank lines)
            try:
                rows.setdefault(row["measure"], []).append(
                    (float(row["gestational_age_weeks"]), float(row["mean_ml"]), float(row["sd_ml"])))
            except (TypeError, ValueError) as exc:  # TypeError: a short row leaves a cell None
                raise ValueError(f"{path}: row {line}: {exc}") from exc
    weeks = None
    means, sds = {}, {}
    for measure, values in rows.items():
        values.sort()
        w = np.array([v[0] for v in values])
        if weeks is None:
            weeks = w
        elif not np.array_equal(w, weeks):
            raise ValueError(f"{path}: measure {measure} covers other weeks than the first measure")
        means[measure] = [v[1] for v in values]
        sds[measure] = [v[2] for v in values]
    if weeks is None:
        raise ValueError(f"{path}: no rows")
    return NormativeTable(weeks, means, sds, str(path))


def open_normative(normative=None) -> NormativeTable:
    """``None`` → the built-in table; a :class:`NormativeTable` as is; a path → :func:`load_normative_csv`.
    Raises ``ValueError`` naming the file when it is missing or malformed."""
    if normative is None:
        return ren2022()
    if isinstance(normative, NormativeTable):
        return normative
    path = Path(normative)
    if not path.is_file():
        raise ValueError(f"normative table {path} does not exist")
    try:
        return load_normative_csv(path)
    except (ValueError, OSError) as exc:
        raise ValueError(f"normative table {path}: {exc}") from exc
