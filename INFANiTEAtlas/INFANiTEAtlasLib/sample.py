"""A tiny atlas folder for the module's self-test: written with the core writers, no model or run needed.

Per GA, ``atlas_ga-<GA>_T2w.nii.gz`` and ``atlas_ga-<GA>_dseg.nii.gz`` (the names ``infanite atlas`` writes) on a
20×24×18 grid at 2 mm (RAS, non-zero origin), without a manifest: nested spherical shells of every label of the
built-in table whose radii grow with GA, and a T2w that is a function of the label and the GA.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPE = (20, 24, 18)
SPACING_MM = 2.0


def sample_affine() -> np.ndarray:
    """The voxel → RAS (mm) matrix of the sample grid."""
    affine = np.diag([SPACING_MM] * 3 + [1.0])
    affine[:3, 3] = (-20.0, -24.0, -18.0)
    return affine


def sample_labels(ga: float, values) -> np.ndarray:
    """Label values as nested shells (outermost ``values[0]``), outer radius ``ga - 16`` voxels: every label
    present from 20 weeks on, more voxels at an older GA."""
    centre = (np.asarray(SHAPE, dtype=np.float64) - 1.0) / 2.0
    radius = np.linalg.norm(np.indices(SHAPE).transpose(1, 2, 3, 0) - centre, axis=-1)
    labels = np.zeros(SHAPE, np.uint8)
    for i, value in enumerate(values):
        labels[radius < (float(ga) - 16.0) * (1.0 - i / (len(values) + 1))] = value
    return labels


def write_sample_atlas(folder, gas=(24.0, 28.0)) -> Path:
    """Write the sample atlas at ``gas`` (weeks) into ``folder`` (made when missing); returns the folder."""
    from infanite.io.layout import atlas_filenames
    from infanite.io.images import Volume, save_nifti
    from infanite.labels import default_label_table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = default_label_table().values
    for ga in gas:
        labels = sample_labels(ga, values)
        names = atlas_filenames(ga)
        save_nifti(Volume(labels * 0.1 + float(ga) / 100.0, sample_affine()), folder / names["T2w"],
                   dtype=np.float32)
        save_nifti(Volume(labels, sample_affine()), folder / names["dseg"], dtype=np.uint8)
    return folder
