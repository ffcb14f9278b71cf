"""Tissue volumes of a label map (mL) and the normative measures they add up to (TBV, ICV, GMV, …).

Used by atlas generation (``volumes.tsv``), evaluation (volume L1) and the Slicer Atlas module's volume chart.
A label map is a :class:`~infanite.io.images.Volume` (its own voxel volume) or a plain array with the voxel volume
given (mm³); volumes are in mL (1 mL = 1000 mm³).
"""
from __future__ import annotations

import numpy as np

from infanite.io.images import Volume
from infanite.labels import LabelTable, default_label_table
from infanite.reference.normative import MEASURE_LABELS


def voxel_volume_mm3(image) -> float:
    """Volume of one voxel (mm³) of a Volume or Grid."""
    return float(abs(np.linalg.det(np.asarray(image.voxel_to_ras)[:3, :3])))


def voxel_volume_of(seg, voxel_volume_mm3_: float | None) -> float:
    """``voxel_volume_mm3_`` when given, else the Volume's own voxel volume (mm³); ``ValueError`` for a plain array
    without it."""
    if voxel_volume_mm3_ is not None:
        return float(voxel_volume_mm3_)
    if isinstance(seg, Volume):
        return voxel_volume_mm3(seg)
    raise ValueError("voxel_volume_mm3 is required for plain arrays (Volumes carry their own)")


def label_volumes_ml(seg, names: dict, voxel_volume_mm3: float | None = None) -> dict:
    """Volume (mL) of each label value in ``names`` (value → key), from one count of the label map.

    ``voxel_volume_mm3`` defaults to the Volume's own voxel volume.
    """
    voxel_ml = voxel_volume_of(seg, voxel_volume_mm3) / 1000.0
    array = np.asarray(seg.array if isinstance(seg, Volume) else seg)
    counts = np.bincount(np.clip(array.ravel().astype(np.int64), 0, None),
                         minlength=max(int(v) for v in names) + 1)
    return {key: float(counts[int(value)]) * voxel_ml for value, key in names.items()}


def tissue_volumes_ml(seg, voxel_volume_mm3: float | None = None, table: LabelTable | None = None) -> dict:
    """Volume (mL) of every label of ``table`` (default CRL 8-class), keyed by abbreviation."""
    table = table or default_label_table()
    return label_volumes_ml(seg, {lab.value: lab.abbrev for lab in table.labels}, voxel_volume_mm3)


def measures_from_tissues(tissue_ml: dict) -> dict:
    """The normative measures (TBV, ICV, GMV, SBV, e-CSFV, VV, CBV, BM; mL) as sums of tissue volumes keyed by
    abbreviation (:data:`~infanite.reference.normative.MEASURE_LABELS`); a measure needing a missing tissue is left
    out."""
    return {measure: float(sum(tissue_ml[a] for a in abbrevs))
            for measure, abbrevs in MEASURE_LABELS.items() if all(a in tissue_ml for a in abbrevs)}


def measure_volumes_ml(seg, voxel_volume_mm3: float | None = None, table: LabelTable | None = None) -> dict:
    """The normative measures (mL) of a label map (see :func:`measures_from_tissues`)."""
    return measures_from_tissues(tissue_volumes_ml(seg, voxel_volume_mm3, table))


#: Fraction of the mean total brain volume below which a brain mask is implausible (thick-slice masks
#: overestimate the brain; a mask under half of it has missed most of the brain, or is not a brain mask).
MIN_MASK_FRACTION_OF_TBV = 0.5


def mean_total_brain_volume_ml(ga_weeks: float) -> float:
    """Mean fetal total brain volume (mL) at ``ga_weeks``: Jarvis et al. 2016's quadratic
    TBV = 89.69 − 13.33·GA + 0.53·GA² (GA clamped to 18–40 weeks, where it was fitted)."""
    ga = min(max(float(ga_weeks), 18.0), 40.0)
    return 89.69 - 13.33 * ga + 0.53 * ga * ga


def minimum_brain_mask_ml(ga_weeks: float | None) -> float:
    """The smallest plausible brain-mask volume (mL) of a stack at ``ga_weeks`` (None: unknown GA, the bound at
    18 weeks): :data:`MIN_MASK_FRACTION_OF_TBV` × :func:`mean_total_brain_volume_ml`."""
    return MIN_MASK_FRACTION_OF_TBV * mean_total_brain_volume_ml(18.0 if ga_weeks is None else ga_weeks)
