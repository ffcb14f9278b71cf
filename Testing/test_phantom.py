"""The built-in phantom: labels, normative volumes, nesting, contrast and gyrification."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from infanite.labels import default_label_table
from infanite.reference.normative import MEASURE_LABELS, load_normative_csv
from infanite.reference.phantom import make_phantom, phantom_grid, phantom_library

TABLE = default_label_table()
V = {lab.abbrev: lab.value for lab in TABLE.labels}
SPACING = 1.2   # coarser than the 0.8 mm default to keep the suite fast; the volumes are grid-independent


def volumes_ml(seg: np.ndarray, spacing: float) -> dict[str, float]:
    voxel_ml = spacing ** 3 / 1000.0
    return {abbrev: float((seg == value).sum()) * voxel_ml for abbrev, value in V.items()}


@pytest.mark.parametrize("ga", [21, 25, 29, 33, 37])
def test_volumes_follow_normative_curves(ga, normative_csv):
    table = load_normative_csv(normative_csv)
    _, _, seg = make_phantom(ga, SPACING)
    vols = volumes_ml(seg.array, SPACING)
    for measure, labels in MEASURE_LABELS.items():
        phantom_ml = sum(vols[a] for a in labels)
        reference = table.mean(measure, ga)
        assert abs(phantom_ml - reference) <= 0.25 * reference, (measure, ga, phantom_ml, reference)


@pytest.mark.parametrize("ga", [21.0, 30.5, 39.0])
def test_all_labels_nested_and_contrast(ga):
    t2, mask, seg = make_phantom(ga, SPACING)
    s = seg.array
    assert set(np.unique(s)) == set(range(9))
    assert np.array_equal(mask.array > 0, s > 0)
    outside = ~ndimage.binary_erosion(s > 0)
    boundary = (s > 0) & outside
    # extra-axial CSF wraps the brain: nearly all of the intracranial boundary is eCSF
    assert np.mean(s[boundary] == V["eCSF"]) > 0.9
    # the cortex separates white matter from the extra-axial CSF
    near_ecsf = ndimage.binary_dilation(s == V["eCSF"])
    assert np.mean(near_ecsf[s == V["WM"]]) < 0.01
    assert not np.any(near_ecsf[s == V["vent"]])
    # T2 contrast: CSF brightest, cortex darkest
    mean = {a: float(t2.array[ndimage.binary_erosion(s == v)].mean()) for a, v in V.items()
            if ndimage.binary_erosion(s == v).any()}
    assert min(mean["eCSF"], mean["vent"]) > max(v for a, v in mean.items() if a not in ("eCSF", "vent"))
    assert mean["cGM"] == min(mean.values())
    assert np.all(t2.array[~ndimage.binary_dilation(s > 0, iterations=2)] == 0)


def surface_index(seg: np.ndarray) -> float:
    """Cerebral surface faces / volume^(2/3): grows as the cortex folds."""
    cerebrum = np.isin(seg, [V["WM"], V["cGM"], V["dGM"], V["CC"], V["vent"]])
    faces = sum(np.count_nonzero(np.diff(cerebrum.astype(np.int8), axis=a)) for a in range(3))
    return faces / cerebrum.sum() ** (2 / 3)


def test_cortex_gyrifies_with_age():
    index = [surface_index(make_phantom(ga, SPACING)[2].array) for ga in (21, 28, 34, 39)]
    assert all(a < b for a, b in zip(index, index[1:])), index
    assert index[-1] > 1.1 * index[0]


def test_deterministic_grid_and_range():
    a = make_phantom(26.3, SPACING)
    b = make_phantom(26.3, SPACING)
    assert np.array_equal(a[0].array, b[0].array) and np.array_equal(a[2].array, b[2].array)
    grid = phantom_grid(SPACING)
    assert np.allclose(a[0].voxel_to_ras, grid.voxel_to_ras)
    centre = grid.voxel_to_ras @ np.r_[(np.asarray(grid.shape) - 1) / 2.0, 1.0]
    assert np.allclose(centre[:3], 0.0, atol=1e-9)
    with pytest.raises(ValueError, match="21"):
        make_phantom(20.0)
    lib = phantom_library(SPACING)
    assert lib.weeks == [float(w) for w in range(21, 40)]
    assert np.array_equal(lib.get(30.0).seg.array, make_phantom(30.0, SPACING)[2].array)
