"""Slice-view set-up for reviewing one stack against its template (MRML only: composite and slice nodes)."""
from __future__ import annotations

import numpy as np


def _nodes(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def show_in_slice_views(scene, background, foreground, foreground_opacity: float = 0.5, label=None) -> int:
    """Template as background, stack as foreground (``foreground_opacity``), optional label layer, in every slice
    view.  The views' link setting is the user's and is left as it is.  Returns the number of views set."""
    composites = _nodes(scene, "vtkMRMLSliceCompositeNode")
    for composite in composites:
        composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(float(foreground_opacity))
        composite.SetLabelVolumeID(label.GetID() if label is not None else None)
    return len(composites)


def set_foreground_opacity(scene, opacity: float) -> None:
    """Opacity (0–1) of the foreground layer (the stack) in every slice view."""
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        if abs(composite.GetForegroundOpacity() - float(opacity)) > 1e-9:
            composite.SetForegroundOpacity(float(opacity))


def centre_slice_views(scene, centre_ras) -> None:
    """Move every slice view so that it passes through and is centred on ``centre_ras`` (RAS mm)."""
    x, y, z = (float(v) for v in np.asarray(centre_ras, dtype=np.float64)[:3])
    for slice_node in _nodes(scene, "vtkMRMLSliceNode"):
        slice_node.JumpSliceByCentering(x, y, z)


def set_transform_handles(transform_node, enabled: bool) -> None:
    """Interaction handles of a rigid correction: translate and rotate in 2-D and 3-D views, never scale."""
    if transform_node.GetDisplayNode() is None:
        transform_node.CreateDefaultDisplayNodes()
    display = transform_node.GetDisplayNode()
    display.SetEditorVisibility(bool(enabled))
    for name in ("SetEditorVisibility3D", "SetEditorSliceIntersectionVisibility"):
        if hasattr(display, name):                      # Slicer ≥ 5.6 / 5.8
            getattr(display, name)(bool(enabled))
    display.SetEditorTranslationEnabled(True)
    display.SetEditorRotationEnabled(True)
    display.SetEditorScalingEnabled(False)
    for name, value in (("SetEditorTranslationSliceEnabled", True), ("SetEditorRotationSliceEnabled", True),
                        ("SetEditorScalingSliceEnabled", False)):
        if hasattr(display, name):                      # Slicer ≥ 5.8
            getattr(display, name)(value)
