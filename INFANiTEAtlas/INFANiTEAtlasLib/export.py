"""Export the GA the browser shows: T2w and tissue labels as NIfTI, optionally the segmentation as .seg.nrrd.

Names: ``<name>_ga-<GA>_T2w.nii.gz``, ``<name>_ga-<GA>_dseg.nii.gz`` and ``<name>_ga-<GA>.seg.nrrd`` (GA in weeks
with one decimal, as the atlas files).  The NIfTI files are written by the core writer (atomic; qform = sform =
the proxy's IJKToRAS, RAS mm).  The labels are the segmentation exported on the T2w grid with the label table's
values (segment names → values through the atlas colour table), so edits made to the shown segmentation are
exported too.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .loader import LoadedAtlas


def export_paths(out_dir, name: str, ga: float, seg_nrrd: bool = False) -> dict:
    """``{"T2w", "dseg"[, "seg"]}`` → the paths :func:`export_current` writes for GA ``ga`` (weeks)."""
    if not name or Path(name).name != name:
        raise ValueError(f"export name must be a plain file name prefix, got {name!r}")
    out_dir = Path(out_dir)
    stem = f"{name}_ga-{float(ga):.1f}"
    paths = {"T2w": out_dir / f"{stem}_T2w.nii.gz", "dseg": out_dir / f"{stem}_dseg.nii.gz"}
    if seg_nrrd:
        paths["seg"] = out_dir / f"{stem}.seg.nrrd"
    return paths


def labels_on_t2_grid(loaded: LoadedAtlas):
    """The shown segmentation as a labelmap node on the shown T2w's grid with the label table's values.

    The node is added to the scene; the caller removes it (``INFANiTECommonLib.mrml.remove_nodes``)."""
    import slicer
    import vtk

    seg, t2 = loaded.seg_proxy, loaded.t2_proxy
    ids = vtk.vtkStringArray()
    seg.GetSegmentation().GetSegmentIDs(ids)
    labelmap = loaded.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{loaded.name} export labels")
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        seg, ids, labelmap, t2, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, loaded.color_table)
    if not ok:
        loaded.scene.RemoveNode(labelmap)
        raise RuntimeError(f"could not export segmentation {seg.GetName()!r} to a labelmap")
    return labelmap


def _write_seg_nrrd(segmentation, path: Path) -> Path:
    """Write a segmentation node to ``.seg.nrrd`` atomically (temporary sibling, then rename)."""
    import slicer

    from infanite.io.atomic import atomic_output

    with atomic_output(path) as tmp:
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(tmp))
        if not storage.WriteData(segmentation):
            raise OSError(f"{path}: the segmentation could not be written")
    return Path(path)


def export_current(loaded: LoadedAtlas, out_dir, name: str = "atlas", seg_nrrd: bool = False,
                   overwrite: bool = False) -> dict:
    """Write the shown GA's T2w (float32) and labels (uint8, or int16 for values ≥ 256) into ``out_dir``, and
    the segmentation as ``.seg.nrrd`` with ``seg_nrrd``.  Refuses (``FileExistsError`` naming the files,
    nothing written) when a target exists, unless ``overwrite``.  Returns ``{"T2w", "dseg"[, "seg"]}`` →
    paths."""
    from INFANiTECommonLib.mrml import remove_nodes, save_volume

    ga = loaded.current_ga
    if ga is None:
        raise ValueError("the atlas browser shows no GA")
    paths = export_paths(out_dir, name, ga, seg_nrrd)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist; export with overwrite to replace")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_volume(loaded.t2_proxy, paths["T2w"], dtype=np.float32)
    labelmap = labels_on_t2_grid(loaded)
    try:
        big = max(loaded.label_table.values + [0]) >= 256
        save_volume(labelmap, paths["dseg"], dtype=np.int16 if big else np.uint8)
    finally:
        remove_nodes(loaded.scene, [labelmap])
    if seg_nrrd:
        _write_seg_nrrd(loaded.seg_proxy, paths["seg"])
    return paths
