"""Registration QC figure: the aligned stack on the template grid with the template's tissue boundaries on top."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from infanite.io.images import Volume
from infanite.labels import LabelTable
from infanite.io.figures import PLANE_NAMES, orthogonal_planes, plane_aspects, plt, save_figure
from infanite.reference.templates import Template, same_grid

#: Boundary colour (RGB 0–1) when no label table is given: pure yellow, never a grey level.
EDGE_COLOR = (1.0, 1.0, 0.0)
_CROSS = ndimage.generate_binary_structure(2, 1)


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Boolean map of the pixels of a 2-D label array that touch (4-neighbour) a lower label.

    One pixel wide: the boundary between labels a < b is drawn on the b side; the brain outline on the brain side.
    """
    labels = np.asarray(labels)
    return (labels != ndimage.grey_erosion(labels, footprint=_CROSS, mode="nearest")) & (labels > 0)


def _brain_centre_voxel(template: Template) -> np.ndarray:
    mask = template.mask.array > 0
    centre = ndimage.center_of_mass(mask) if mask.any() else (np.asarray(mask.shape) - 1) / 2.0
    return np.clip(np.rint(centre).astype(int), 0, np.asarray(mask.shape) - 1)


def _overlay_rgb(plane: np.ndarray, labels: np.ndarray, vmax: float, table: LabelTable | None) -> np.ndarray:
    """Grey RGB image of ``plane`` (0…vmax) with the boundaries of ``labels`` painted opaque."""
    grey = np.clip(np.nan_to_num(plane.astype(np.float64)) / vmax, 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    edges = label_boundaries(labels)
    if table is None:
        rgb[edges] = EDGE_COLOR
    else:
        colours = {lab.value: np.asarray(lab.color) / 255.0 for lab in table.labels}
        for value in np.unique(labels[edges]):
            rgb[edges & (labels == value)] = colours.get(int(value), EDGE_COLOR)
    return rgb


def _vmax(array: np.ndarray) -> float:
    positive = array[np.isfinite(array) & (array > 0)]
    return float(np.percentile(positive, 99.5)) if positive.size else 1.0


def registration_qc_images(aligned: Volume, template: Template, table: LabelTable | None = None):
    """RGB planes (axial, coronal, sagittal) of the QC figure: ``(aligned_row, template_row)``.

    Planes pass through the template brain's centre of mass.  Boundaries come from ``template.seg`` when present,
    else from ``template.mask``.  Colours: :data:`EDGE_COLOR`, or with ``table`` each label's own colour.
    """
    if not same_grid(aligned.grid, template.grid):
        raise ValueError(f"aligned image grid {aligned.shape} is not the template grid {template.grid.shape}; "
                         f"resample the stack onto the template grid first")
    labels = template.seg if template.seg is not None else template.mask
    centre = _brain_centre_voxel(template)
    label_planes = orthogonal_planes(labels, centre)
    rows = []
    for image in (aligned, template.t2w):
        vmax = _vmax(image.array)
        rows.append([_overlay_rgb(p, lab, vmax, table)
                     for p, lab in zip(orthogonal_planes(image, centre), label_planes)])
    return rows[0], rows[1]


def save_registration_qc(aligned: Volume, template: Template, path, title: str = "",
                         table: LabelTable | None = None) -> Path:
    """Write a registration QC PNG (atomically) and return its path.

    Top row: the stack already resampled onto the template grid (``aligned``), grey, with the template's tissue
    boundaries over it; bottom row: the template T2w with the same boundaries, for comparison.  Three planes
    through the template brain's centre of mass; pixel aspect follows the template grid spacing.  The figure is
    sized for about two screen pixels per voxel (700–1800 px wide), so one-voxel boundaries stay visible.
    """
    rows = registration_qc_images(aligned, template, table)
    aspects = plane_aspects(template.grid.spacing_mm)
    spacing = template.grid.spacing_mm
    widths_mm = [p.shape[1] * spacing[[0, 0, 1][c]] for c, p in enumerate(rows[0])]
    height_mm = max(p.shape[0] * spacing[[1, 2, 2][c]] for c, p in enumerate(rows[0]))
    dpi = 100
    px_per_mm = float(np.clip(2.0 / spacing.min(), 700.0 / sum(widths_mm), 1800.0 / sum(widths_mm)))
    fig_w = sum(widths_mm) * px_per_mm / dpi + 0.6
    fig_h = 2 * height_mm * px_per_mm / dpi + (0.7 if title else 0.4)
    fig, axes = plt.subplots(2, 3, figsize=(fig_w, fig_h), squeeze=False,
                             gridspec_kw={"width_ratios": widths_mm})
    for r, (caption, planes) in enumerate(zip(("aligned stack", "template"), rows)):
        for c, rgb in enumerate(planes):
            ax = axes[r, c]
            ax.imshow(rgb, aspect=aspects[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(caption, fontsize=8)
            if r == 0:
                ax.set_title(PLANE_NAMES[c], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.3)
    return save_figure(fig, path, dpi=dpi)
