"""Per-tissue visibility and opacity of the atlas's tissue segmentation (the browser's proxy node).

Tissues are named by label value (``5``), abbreviation (``"cGM"``) or name (``"cortical grey matter"``, any
case).  The settings live on the proxy's display node under the segment IDs ``label_<value>`` that every GA's
item shares, and the loader keeps unused display properties, so they survive GA changes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from .loader import segment_id

if TYPE_CHECKING:
    from infanite.labels import Label

    from .loader import LoadedAtlas


class TissueDisplay:
    """Visibility and opacity (0–1) per tissue of ``loaded``'s shown segmentation."""

    def __init__(self, loaded: LoadedAtlas):
        self.loaded = loaded

    @property
    def display_node(self):
        """The proxy segmentation's display node (made when missing; keeps settings across GA changes)."""
        seg = self.loaded.seg_proxy
        if seg.GetDisplayNode() is None:
            seg.CreateDefaultDisplayNodes()
        node = seg.GetDisplayNode()
        node.SetRemoveUnusedDisplayProperties(False)
        return node

    def label(self, tissue) -> Label:
        """The table label of a value, abbreviation or name; ``ValueError`` listing the choices otherwise."""
        labels = self.loaded.label_table.labels
        for label in labels:
            if isinstance(tissue, str):
                if tissue.strip().lower() in (label.abbrev.lower(), label.name.lower()):
                    return label
            elif int(tissue) == label.value:
                return label
        choices = ", ".join(f"{lab.value} {lab.abbrev}" for lab in labels)
        raise ValueError(f"unknown tissue {tissue!r}; the atlas has {choices}")

    def segment_id(self, tissue) -> str:
        """The segment ID of a tissue (``label_<value>``)."""
        return segment_id(self.label(tissue).value)

    def set_visible(self, tissue, visible: bool = True) -> None:
        self.display_node.SetSegmentVisibility(self.segment_id(tissue), bool(visible))

    def is_visible(self, tissue) -> bool:
        return bool(self.display_node.GetSegmentVisibility(self.segment_id(tissue)))

    def set_opacity(self, tissue, opacity: float) -> None:
        """Opacity 0–1 of a tissue in 2D (fill and outline) and 3D."""
        opacity = float(opacity)
        if not 0.0 <= opacity <= 1.0:
            raise ValueError(f"opacity must be within 0-1, got {opacity}")
        self.display_node.SetSegmentOpacity(self.segment_id(tissue), opacity)

    def opacity(self, tissue) -> float:
        """The tissue's own opacity (the 2D fill value; the node-wide 2D fill opacity multiplies it)."""
        return float(self.display_node.GetSegmentOpacity2DFill(self.segment_id(tissue)))

    def set_all_visible(self, visible: bool = True) -> None:
        for label in self.loaded.label_table.labels:
            self.display_node.SetSegmentVisibility(segment_id(label.value), bool(visible))

    def show_only(self, tissues: Iterable) -> None:
        """Show the given tissues and hide every other."""
        keep = {self.label(t).value for t in tissues}
        for label in self.loaded.label_table.labels:
            self.display_node.SetSegmentVisibility(segment_id(label.value), label.value in keep)
