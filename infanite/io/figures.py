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


#: the letters at the left, right, top and bottom edge of each plane as :func:`slicer_planes` shows it
PLANE_LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def slicer_planes(volume: Volume, centre_ras=None) -> list[np.ndarray]:
    """Axial, coronal and sagittal planes through ``centre_ras`` (RAS mm; default the grid centre) as 3D Slicer's
    default views show them (radiological: the patient's right on the left of axial and coronal views, anterior on
    the left of the sagittal view, superior and anterior up), for any voxel orientation: the array is first
    permuted/flipped to the closest RAS axes (nibabel's orientation codes)."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(volume.voxel_to_ras)
    arr = nio.apply_orientation(volume.array, ornt)
    to_ras = nio.inv_ornt_aff(ornt, volume.array.shape)
    affine = volume.voxel_to_ras @ to_ras
    if centre_ras is None:
        c = np.asarray(arr.shape) // 2
    else:
        ijk = np.linalg.solve(affine, np.append(np.asarray(centre_ras, dtype=np.float64), 1.0))[:3]
        c = np.clip(np.rint(ijk).astype(int), 0, np.asarray(arr.shape) - 1)
    return [np.fliplr(np.rot90(arr[:, :, c[2]])), np.fliplr(np.rot90(arr[:, c[1], :])),
            np.fliplr(np.rot90(arr[c[0], :, :]))]


def _ras_spacing(volume: Volume) -> np.ndarray:
    import nibabel.orientations as nio

    ornt = nio.io_orientation(volume.voxel_to_ras)
    spacing = np.asarray(volume.spacing_mm, dtype=np.float64)
    return spacing[np.argsort(ornt[:, 0])]


def _letters(ax, plane: str) -> None:
    left, right, top, bottom = PLANE_LETTERS[plane]
    style = {"color": "yellow", "fontsize": 7, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def save_montage(rows: list[tuple[str, Volume, Volume | None]], path, table: LabelTable | None = None,
                 title: str | None = None, alpha: float = 0.45) -> Path:
    """Write a PNG with one row per ``(caption, image, labels-or-None)``: the image's three planes, plain, then
    (when labels are given) the same planes with the label overlay, as 3D Slicer shows them (see
    :func:`slicer_planes`; orientation letters on every plane), and a colour legend of the labels shown.  Each row
    is cut through the centre of its labels (else of its grid)."""
    table = table or default_label_table()
    with_labels = any(labels is not None for _, _, labels in rows)
    n_cols = 6 if with_labels else 3
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.0 * n_cols, 2.1 * len(rows) + 0.6), squeeze=False)
    shown = set()
    for r, (caption, image, labels) in enumerate(rows):
        centre = None
        if labels is not None and np.any(labels.array > 0):
            centre = labels.voxel_to_ras[:3, :3] @ np.argwhere(labels.array > 0).mean(0) + labels.voxel_to_ras[:3, 3]
        vmax = float(np.percentile(image.array[image.array > 0], 99.5)) if np.any(image.array > 0) else 1.0
        planes = slicer_planes(image, centre)
        label_planes = slicer_planes(labels, centre) if labels is not None else [None] * 3
        sp = _ras_spacing(image)
        aspects = [sp[1] / sp[0], sp[2] / sp[0], sp[2] / sp[1]]
        for c in range(n_cols):
            ax = axes[r, c]
            k = c % 3
            ax.imshow(planes[k], cmap="gray", vmin=0, vmax=vmax, aspect=aspects[k], interpolation="nearest")
            if c >= 3 and label_planes[k] is not None:
                ax.imshow(label_rgba(label_planes[k], table, alpha), aspect=aspects[k], interpolation="nearest")
                shown |= {int(v) for v in np.unique(label_planes[k]) if v > 0}
            _letters(ax, PLANE_NAMES[k])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(caption, fontsize=8)
            if r == 0:
                ax.set_title(PLANE_NAMES[k] + (" + labels" if c >= 3 else ""), fontsize=8)
    if shown:
        from matplotlib.patches import Patch

        handles = [Patch(color=np.asarray(lab.color) / 255.0, label=f"{lab.abbrev}: {lab.name}")
                   for lab in table.labels if lab.value in shown]
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if shown else 0, 1, 1))
    return save_figure(fig, path, dpi=90)
