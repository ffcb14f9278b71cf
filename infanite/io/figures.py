"""PNG figures: three orthogonal planes of volumes, optionally with a label overlay (matplotlib, no display)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from infanite.io.atomic import atomic_output
from infanite.io.images import Volume
from infanite.labels import LabelTable, default_label_table


PLANE_NAMES = ("axial", "coronal", "sagittal")


def orthogonal_planes(volume: Volume, centre_voxel=None):
    """Axial, coronal, sagittal slices through ``centre_voxel`` of an axis-aligned RAS-ish volume."""
    arr = volume.array
    c = np.asarray(arr.shape) // 2 if centre_voxel is None else np.asarray(centre_voxel, int)
    return [np.rot90(arr[:, :, c[2]]), np.rot90(arr[:, c[1], :]), np.rot90(arr[c[0], :, :])]


def plane_aspects(spacing_mm) -> list[float]:
    """``imshow`` aspect (row height / column width in mm) of the three planes of :func:`orthogonal_planes`."""
    s = np.asarray(spacing_mm, dtype=np.float64)
    return [s[1] / s[0], s[2] / s[0], s[2] / s[1]]


def save_figure(fig, path, dpi: int = 90) -> Path:
    """Save ``fig`` as ``path`` atomically (temporary sibling + rename) and close it."""
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def label_rgba(labels: np.ndarray, table: LabelTable, alpha: float = 0.45) -> np.ndarray:
    """RGBA overlay image of a 2-D label array (background transparent)."""
    rgba = np.zeros(labels.shape + (4,), np.float32)
    for lab in table.labels:
        sel = labels == lab.value
        rgba[sel, :3] = np.asarray(lab.color) / 255.0
        rgba[sel, 3] = alpha
    return rgba


def save_montage(rows: list[tuple[str, Volume, Volume | None]], path, table: LabelTable | None = None,
                 title: str | None = None) -> Path:
    """Write a PNG with one row per ``(caption, image, labels-or-None)`` and three planes per row.

    Each volume is shown in its own voxel grid (axial, coronal, sagittal through its centre).
    """
    table = table or default_label_table()
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (caption, image, labels) in enumerate(rows):
        vmax = float(np.percentile(image.array[image.array > 0], 99.5)) if np.any(image.array > 0) else 1.0
        label_planes = orthogonal_planes(labels) if labels is not None else [None] * 3
        for c, (plane, lab, name) in enumerate(zip(orthogonal_planes(image), label_planes, PLANE_NAMES)):
            ax = axes[r, c]
            aspect = plane_aspects(image.spacing_mm)[c]
            ax.imshow(plane, cmap="gray", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
            if lab is not None:
                ax.imshow(label_rgba(lab, table), aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(caption, fontsize=8)
            if r == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
