"""From the network's classes to an atlas label map: cleaning of small islands, and tissue column names."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from infanite.labels import LabelTable, default_label_table


@dataclass(frozen=True)
class CleaningReport:
    """Voxels changed by :func:`clean_labels`: islands given to a neighbouring label, voxels set to background."""

    reassigned_voxels: int = 0
    removed_voxels: int = 0
    kept_raw: bool = False


_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)       # 26-connectivity


def clean_labels(dseg: np.ndarray, min_fraction: float = 0.01, min_voxels: int = 10
                 ) -> tuple[np.ndarray, CleaningReport]:
    """Remove small disconnected islands of a label map (0 = background).

    Per label, every connected component (26-connectivity) except the label's largest that has fewer than
    ``max(min_voxels, min_fraction × label volume)`` voxels is given to the most frequent non-background label
    touching it (to 0 when it touches only background).  Then only the largest connected component of the brain
    (all labels > 0) is kept.  The largest component of each label always stays, and the result is never
    blank: if cleaning would empty a non-empty map the raw map is returned (``kept_raw``).
    """
    from scipy import ndimage

    raw = np.asarray(dseg)
    out = raw.copy()
    reassigned = removed = 0
    for value in np.unique(raw[raw > 0]):
        comp, n = ndimage.label(out == value, _CONNECTIVITY)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        threshold = max(float(min_voxels), float(min_fraction) * float(sizes.sum()))
        largest = int(np.argmax(sizes)) + 1
        for c, box in enumerate(ndimage.find_objects(comp), start=1):
            if c == largest or box is None or sizes[c - 1] >= threshold:
                continue
            box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
            island = comp[box] == c
            ring = ndimage.binary_dilation(island, _CONNECTIVITY) & ~island
            neighbours = out[box][ring]
            neighbours = neighbours[(neighbours > 0) & (neighbours != value)]
            winner = int(np.bincount(neighbours).argmax()) if neighbours.size else 0
            out[box][island] = winner
            if winner:
                reassigned += int(island.sum())
            else:
                removed += int(island.sum())
    brain = out > 0
    comp, n = ndimage.label(brain, _CONNECTIVITY)
    if n > 1:
        keep = comp == int(np.argmax(np.bincount(comp.ravel())[1:])) + 1
        removed += int((brain & ~keep).sum())
        out[~keep] = 0
    if raw.any() and not out.any():
        return raw.copy(), CleaningReport(0, 0, True)
    return out, CleaningReport(reassigned, removed, False)


def label_abbrevs(label_values, table: LabelTable | None = None) -> dict[int, str]:
    """Column name per label value: the table's abbreviation, ``label<v>`` for values it lacks."""
    table = table or default_label_table()
    known = {lab.value: lab.abbrev for lab in table.labels}
    return {int(v): known.get(int(v), f"label{int(v)}") for v in label_values}


def classes_to_labels(classes: np.ndarray, label_values, halo_label: int) -> np.ndarray:
    """Map argmax class indices (0 background, label values, halo) to label values (background, halo → 0)."""
    lut = np.zeros(int(halo_label) + 1, dtype=np.int16)
    for v in label_values:
        lut[int(v)] = int(v)
    return lut[np.clip(classes, 0, halo_label)]
