"""An ``infanite atlas`` folder → GA-indexed sequences in one sequence browser.

The folder holds, per gestational age (GA, weeks, one decimal in the file names), ``atlas_ga-<GA>_T2w.nii.gz``
and ``atlas_ga-<GA>_dseg.nii.gz`` on one grid, ``volumes.tsv`` and ``atlas_manifest.json`` (written last; it
lists the complete GAs and their files, the run and the label values).  Loading makes:

- a ``vtkMRMLSequenceNode`` of scalar volumes (T2w) and one of segmentations (tissues), both with the numeric
  index "gestational age" in "weeks" and index values ``f"{ga:g}"`` (``24``, ``26.5``);
- one ``vtkMRMLSequenceBrowserNode`` with the T2w sequence as master and the tissue sequence synchronised, so its
  two proxy nodes always show the same GA.

Geometry is exact: a T2w proxy's IJKToRAS is the file's affine (RAS mm), and every tissue segmentation item holds
one shared binary labelmap on the dseg's grid.  Segment IDs are ``label_<value>``, the same in every item, so
per-tissue display settings carry over when the GA changes; names and colours are the label table's.

The label table is the one ``infanite atlas`` used: the manifest records only the label values (``label_values``)
and atlas.py names them with the built-in table (values missing from it become ``label<v>``), unless the
manifest names a ``label_table`` file or the caller passes another table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from infanite.atlas.folder import AtlasFiles, scan_atlas_folder
from infanite.io.layout import ga_key

if TYPE_CHECKING:
    from infanite.io.images import Volume
    from infanite.labels import LabelTable

#: Index name and unit of both sequences.
INDEX_NAME = "gestational age"
INDEX_UNIT = "weeks"
#: Segment ID of a label value, the same in every item of the tissue sequence.
SEGMENT_ID = "label_{value}"
#: Largest affine difference (mm) accepted between a GA's T2w and dseg grids.
GRID_TOLERANCE_MM = 1e-3


def ga_index(ga) -> str:
    """The sequence index value of a GA (weeks): ``f"{ga:g}"`` after rounding to 0.1 (``24``, ``26.5``)."""
    return f"{ga_key(ga):g}"


def segment_id(value: int) -> str:
    """Segment ID of a label value (``label_5``)."""
    return SEGMENT_ID.format(value=int(value))


def atlas_label_table(manifest: dict | None = None, labels=None, folder=None) -> LabelTable:
    """The label table of an atlas: ``labels`` (a LabelTable or a YAML/TSV path) if given, else the manifest's
    ``label_table`` file (relative to ``folder``) if it names one, else the built-in table that ``infanite atlas``
    names its label values with; manifest ``label_values`` missing from the table are added as ``label<v>``
    (grey), as atlas.py's volume columns call them."""
    from infanite.labels import Label, LabelTable, default_label_table, load_label_table

    if isinstance(labels, LabelTable):
        table = labels
    elif labels is not None:
        table = load_label_table(labels)
    elif manifest and isinstance(manifest.get("label_table"), str):
        path = Path(manifest["label_table"])
        table = load_label_table(path if path.is_absolute() or folder is None else Path(folder) / path)
    else:
        table = default_label_table()
    extra = [int(v) for v in (manifest or {}).get("label_values") or [] if int(v) not in table.values]
    if not extra:
        return table
    return LabelTable(list(table.labels) + [Label(v, f"label{v}", f"label{v}", (128, 128, 128)) for v in extra],
                      source=f"{table.source} + atlas label values {extra}")


def read_atlas_pair(files: AtlasFiles, table: LabelTable) -> tuple:
    """``(T2w Volume, dseg Volume)`` of one GA, checked: same grid (shape, affine within 1e-3 mm) and only label
    values of ``table``; ``ValueError`` naming the file otherwise (unreadable files too)."""
    from infanite.io.images import load_labels, load_nifti

    t2 = load_nifti(files.t2w)
    dseg = load_labels(files.dseg)
    if dseg.shape != t2.shape or not np.allclose(dseg.voxel_to_ras, t2.voxel_to_ras, atol=GRID_TOLERANCE_MM):
        raise ValueError(f"{files.dseg}: grid (shape {dseg.shape}) differs from its T2w {files.t2w} "
                         f"(shape {t2.shape}) beyond {GRID_TOLERANCE_MM} mm")
    unknown = table.unknown_values(dseg.array)
    if unknown:
        raise ValueError(f"{files.dseg}: label values {unknown} are not in the label table ({table.source})")
    return t2, dseg


# ------------------------------------------------------------------------------------------------ MRML items

def segmentation_item(dseg: Volume, table: LabelTable, reference=None):
    """A segmentation node (not in a scene) holding ``dseg`` as one shared binary labelmap on its grid: one
    segment per table label (ID ``label_<value>``, the label's name, colour and value; empty when absent).
    ``reference``: a volume node whose geometry becomes the segmentation's reference image geometry."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    from INFANiTECommonLib.mrml import vtk_matrix

    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    big = max(table.values + [0]) >= 32768
    array = np.ascontiguousarray(np.asarray(dseg.array).transpose(2, 1, 0)).ravel()   # VTK: i fastest
    scalars = numpy_support.numpy_to_vtk(array.astype(np.int32 if big else np.int16), deep=True,
                                         array_type=vtk.VTK_INT if big else vtk.VTK_SHORT)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*dseg.shape)
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(vtk_matrix(dseg.voxel_to_ras))
    node = slicer.vtkMRMLSegmentationNode()
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(labelmap_name)
    for label in table.labels:
        segment = slicer.vtkSegment()
        segment.SetName(label.name)
        segment.SetColor(*(c / 255.0 for c in label.color))
        segment.SetLabelValue(int(label.value))
        segment.AddRepresentation(labelmap_name, image)          # one image for all: a shared labelmap
        segmentation.AddSegment(segment, segment_id(label.value))
    if reference is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    return node


def add_atlas_item(t2_sequence, seg_sequence, files: AtlasFiles, table: LabelTable, name: str = "atlas") -> float:
    """Read one GA and set it in both sequences at index ``ga_index(files.ga)`` (numeric order; an item already
    at that GA is replaced).  The item nodes are built outside the scene and deep-copied by the sequences, so
    no temporary node is left behind.  Returns the GA (weeks)."""
    import slicer

    from INFANiTECommonLib.mrml import volume_node

    t2, dseg = read_atlas_pair(files, table)
    index = ga_index(files.ga)
    t2_node = volume_node(None, t2, f"{name} T2w GA {index}", node=slicer.vtkMRMLScalarVolumeNode())
    t2_node.SetName(f"{name} T2w GA {index}")
    seg_node = segmentation_item(dseg, table, reference=t2_node)
    seg_node.SetName(f"{name} tissues GA {index}")
    t2_sequence.SetDataNodeAtValue(t2_node, index)
    seg_sequence.SetDataNodeAtValue(seg_node, index)
    return files.ga


# ------------------------------------------------------------------------------------------------ browsing

def sequence_gas(sequence) -> list:
    """The GAs (weeks) of a sequence's items, in item order."""
    return [float(sequence.GetNthIndexValue(i)) for i in range(sequence.GetNumberOfDataNodes())]


def current_ga(browser) -> float | None:
    """The GA (weeks) the browser shows, ``None`` when its sequence is empty."""
    sequence = browser.GetMasterSequenceNode()
    item = browser.GetSelectedItemNumber()
    if sequence is None or not 0 <= item < sequence.GetNumberOfDataNodes():
        return None
    return float(sequence.GetNthIndexValue(item))


def select_ga(browser, ga) -> float:
    """Show the item nearest to ``ga`` (weeks; ties go to the younger GA) and return the GA actually shown."""
    sequence = browser.GetMasterSequenceNode()
    values = sequence_gas(sequence) if sequence is not None else []
    if not values:
        raise ValueError(f"sequence browser {browser.GetName()!r} has no items")
    item = int(np.argmin(np.abs(np.asarray(values) - float(ga))))
    browser.SetSelectedItemNumber(item)
    return values[item]


@dataclass
class LoadedAtlas:
    """The MRML nodes of a loaded atlas.

    ``browser`` (T2w master, tissues synchronised), ``t2_sequence`` and ``seg_sequence`` (index "gestational
    age", weeks), ``color_table`` (label values → names/colours), ``label_table``, ``manifest`` (or ``None``),
    ``files`` (GA in weeks → :class:`AtlasFiles` of every item) and the ``folder`` it was read from.
    """

    scene: object
    folder: Path
    browser: object
    t2_sequence: object
    seg_sequence: object
    color_table: object
    label_table: LabelTable
    manifest: dict | None = None
    files: dict = field(default_factory=dict)
    name: str = "atlas"

    @property
    def t2_proxy(self):
        """The scalar volume node showing the current GA's T2w."""
        return self.browser.GetProxyNode(self.t2_sequence)

    @property
    def seg_proxy(self):
        """The segmentation node showing the current GA's tissues."""
        return self.browser.GetProxyNode(self.seg_sequence)

    @property
    def gas(self) -> list:
        """GAs (weeks) of the items, ascending."""
        return sequence_gas(self.t2_sequence)

    @property
    def current_ga(self) -> float | None:
        return current_ga(self.browser)

    def select(self, ga) -> float:
        """Show the nearest GA (weeks); returns it."""
        return select_ga(self.browser, ga)

    def remove(self) -> None:
        """Remove the browser, its proxies and the sequences from the scene (the colour table is shared)."""
        from INFANiTECommonLib.mrml import remove_nodes

        proxies = [self.t2_proxy, self.seg_proxy]
        remove_nodes(self.scene, [self.browser] + proxies + [self.t2_sequence, self.seg_sequence])


class AtlasLoader:
    """Loads atlas folders into ``scene`` (which needs the Sequences logic, as desktop Slicer has)."""

    def __init__(self, scene):
        self.scene = scene

    def _sequence(self, name: str):
        node = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
        node.SetIndexName(INDEX_NAME)
        node.SetIndexUnit(INDEX_UNIT)
        node.SetIndexTypeFromString("numeric")
        return node

    def load(self, folder, labels=None, name: str = "atlas",
             on_item: Callable[[int, int], None] | None = None) -> LoadedAtlas:
        """Load every GA of ``folder`` and show the youngest.

        ``labels``: a LabelTable or table file overriding the atlas's own; ``name``: prefix of the node names;
        ``on_item(done, total)`` is called after each GA is read.  ``ValueError`` naming the folder or file for a
        bad folder (nothing is left in the scene then); ``RuntimeError`` when the scene cannot make a sequence
        browser (no Sequences logic).
        """
        from INFANiTECommonLib.mrml import color_table_node, remove_nodes

        folder = Path(folder)
        manifest, files = scan_atlas_folder(folder)
        table = atlas_label_table(manifest, labels, folder)
        t2_sequence = self._sequence(f"{name} T2w")
        seg_sequence = self._sequence(f"{name} tissues")
        try:
            for done, entry in enumerate(files, start=1):
                add_atlas_item(t2_sequence, seg_sequence, entry, table, name)
                if on_item is not None:
                    on_item(done, len(files))
        except Exception:
            remove_nodes(self.scene, [t2_sequence, seg_sequence])
            raise
        browser = self.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
        if browser is None:
            remove_nodes(self.scene, [t2_sequence, seg_sequence])
            raise RuntimeError("the scene cannot create a sequence browser: the Sequences module logic must be "
                               "attached to the scene")
        browser.SetAndObserveMasterSequenceNodeID(t2_sequence.GetID())
        browser.AddSynchronizedSequenceNodeID(seg_sequence.GetID())
        browser.SetSelectedItemNumber(0)
        loaded = LoadedAtlas(self.scene, folder, browser, t2_sequence, seg_sequence,
                             color_table_node(self.scene, table), table, manifest,
                             {f.ga: f for f in files}, name)
        _prepare_proxies(loaded)
        return loaded


def _prepare_proxies(loaded: LoadedAtlas) -> None:
    """Name the proxies and keep per-segment display settings across GA changes."""
    t2, seg = loaded.t2_proxy, loaded.seg_proxy
    t2.SetName(f"{loaded.name} T2w")
    seg.SetName(f"{loaded.name} tissues")
    if seg.GetDisplayNode() is None:
        seg.CreateDefaultDisplayNodes()
    seg.GetDisplayNode().SetRemoveUnusedDisplayProperties(False)   # item changes remove and re-add segments
    if t2.GetDisplayNode() is None:
        t2.CreateDefaultDisplayNodes()


def load_atlas(scene, folder, labels=None, name: str = "atlas", on_item=None) -> LoadedAtlas:
    """``AtlasLoader(scene).load(folder, labels, name, on_item)``."""
    return AtlasLoader(scene).load(folder, labels, name, on_item)
