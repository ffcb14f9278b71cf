"""MRML nodes ↔ :class:`infanite.io.images.Volume` (RAS, voxel order i, j, k), colour tables and transforms.

World geometry is kept exactly: a node's ``IJKToRAS`` matrix *is* the volume's ``voxel_to_ras`` (both RAS mm), and
the node's voxel array (numpy order k, j, i) is the volume's array transposed.  Files are read and written by the
core (nibabel, atomic writes), so what the modules save equals what ``python -m infanite`` writes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: node attribute naming the file a node was loaded from / saved to
SOURCE_ATTRIBUTE = "INFANiTE.SourcePath"


def vtk_matrix(array) -> "object":
    """A ``vtkMatrix4x4`` holding the 4×4 ``array``."""
    import vtk

    m = vtk.vtkMatrix4x4()
    a = np.asarray(array, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {a.shape}")
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def numpy_matrix(matrix) -> np.ndarray:
    """The 4×4 numpy array of a ``vtkMatrix4x4``."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def volume_node(scene, volume, name: str, labelmap: bool = False, node=None):
    """Add (or update ``node``) a scalar/labelmap volume node holding ``volume`` (its world geometry exactly)."""
    import slicer.util

    array = np.asarray(volume.array)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    if labelmap and array.dtype.kind == "f":
        array = np.rint(array).astype(np.int16)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array.transpose(2, 1, 0)))
    node.SetIJKToRASMatrix(vtk_matrix(volume.voxel_to_ras))
    node.Modified()
    return node


def node_volume(node):
    """The :class:`~infanite.io.images.Volume` of a volume node (its own grid; parent transforms not applied)."""
    import slicer.util
    import vtk

    from infanite.io.images import Volume

    if node is None or node.GetImageData() is None:
        raise ValueError(f"volume node {getattr(node, 'GetName', lambda: None)()!r} holds no image data")
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    array = np.array(slicer.util.arrayFromVolume(node)).transpose(2, 1, 0)
    return Volume(np.ascontiguousarray(array), numpy_matrix(m))


def load_volume(scene, path, name: str | None = None, labelmap: bool = False):
    """Read a NIfTI file with the core reader and add it as a node; the path is kept in an attribute."""
    from infanite.io.images import load_labels, load_nifti

    path = Path(path)
    volume = load_labels(path) if labelmap else load_nifti(path)
    node = volume_node(scene, volume, name or path.name.split(".")[0], labelmap)
    node.SetAttribute(SOURCE_ATTRIBUTE, str(path))
    return node


def save_volume(node, path, dtype=None) -> Path:
    """Write a volume node to NIfTI (atomic; qform = sform = IJKToRAS)."""
    from infanite.io.images import save_nifti

    written = save_nifti(node_volume(node), path, dtype=dtype)
    node.SetAttribute(SOURCE_ATTRIBUTE, str(written))
    return written


def color_table_node(scene, table, name: str = "INFANiTE tissues"):
    """A user colour table node with the label table's names and colours (0 = transparent background).

    An existing node of that name is reused and refilled, so repeated calls do not pile up tables.
    """
    node = scene.GetFirstNodeByName(name)
    if node is None or not node.IsA("vtkMRMLColorTableNode"):
        node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(max(table.values + [0]) + 1)
    node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for value in range(1, node.GetNumberOfColors()):
        node.SetColor(value, "", 0.0, 0.0, 0.0, 0.0)
    for label in table.labels:
        r, g, b = (c / 255.0 for c in label.color)
        node.SetColor(label.value, label.name, r, g, b, 1.0)
    return node


def set_transform(node, matrix) -> None:
    """Set a linear transform node's *to parent* matrix (RAS)."""
    node.SetMatrixTransformToParent(vtk_matrix(matrix))


def get_transform(node) -> np.ndarray:
    """A linear transform node's *to parent* matrix (RAS) as numpy."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(m)
    return numpy_matrix(m)


def remove_nodes(scene, nodes) -> None:
    """Remove nodes (and their display/storage nodes) from the scene; ``None`` entries are ignored."""
    for node in nodes:
        if node is None or scene.GetNodeByID(node.GetID()) is None:
            continue
        if hasattr(node, "GetNumberOfDisplayNodes"):
            for display in [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]:
                if display is not None:
                    scene.RemoveNode(display)
        if hasattr(node, "GetStorageNode") and node.GetStorageNode() is not None:
            scene.RemoveNode(node.GetStorageNode())
        scene.RemoveNode(node)


def mask_volume(node, reference):
    """A brain mask as a :class:`~infanite.io.images.Volume` (uint8 0/1) on the grid of the volume node
    ``reference`` (the stack's T2), from a labelmap/scalar volume node (> 0) or from a segmentation node drawn in the
    Segment Editor (every segment, exported on the reference's geometry by Slicer's segmentations logic)."""
    from infanite.io.images import Volume

    if node.IsA("vtkMRMLSegmentationNode"):
        import vtk
        from slicer import vtkSlicerSegmentationsModuleLogic as SegmentationsLogic

        scene = node.GetScene()
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{node.GetName()} (mask export)")
        try:
            ids = vtk.vtkStringArray()
            node.GetSegmentation().GetSegmentIDs(ids)
            if ids.GetNumberOfValues() == 0:
                raise ValueError(f"segmentation {node.GetName()!r} has no segment: draw the brain in the Segment "
                                 f"Editor first")
            if not SegmentationsLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap, reference):
                raise ValueError(f"segmentation {node.GetName()!r} could not be exported on the grid of "
                                 f"{reference.GetName()!r}")
            volume = node_volume(labelmap)
        finally:
            scene.RemoveNode(labelmap)
    else:
        volume = node_volume(node)
    return Volume((volume.array > 0).astype(np.uint8), volume.voxel_to_ras)
