"""Qt-free logic of the INFANiTE Atlas module: browse an ``infanite atlas`` folder in Slicer.

- :mod:`.loader`: the atlas folder → a T2w volume sequence and a tissue segmentation sequence indexed by
  gestational age (weeks), synchronised in one sequence browser; :func:`select_ga` shows the nearest GA.
- :mod:`.display`: per-tissue visibility and opacity of the shown segmentation.
- :mod:`.volumes`: tissue volumes (mL) against GA in a table node and a plot chart, with the normative
  mean ± 1 and 2 SD of the measures ``infanite atlas`` compares (``growth.png``) and a current-GA marker.
- :mod:`.generate`: the ``infanite atlas`` command line for one exact GA (run in a background process) and the
  insertion of its result into the loaded sequences.
- :mod:`.export`: the shown GA to NIfTI (T2w and label values) and optionally ``.seg.nrrd``.
- :mod:`.sample`: a tiny atlas folder (no model) for the module's self-test.

Everything takes scene and node objects and plain values, so it runs in desktop Slicer and in the tests against
PyPI's ``slicer-core``.  World geometry is RAS mm throughout: a proxy volume's IJKToRAS is the file's affine.
"""
from __future__ import annotations

from .display import TissueDisplay
from .export import export_current
from .generate import add_generated_ga, atlas_range_command, exact_ga_command, exact_ga_target
from .loader import (INDEX_NAME, INDEX_UNIT, AtlasLoader, LoadedAtlas, atlas_label_table, current_ga, ga_index,
                     load_atlas, select_ga, sequence_gas)
from .sample import write_sample_atlas
from .volumes import NORMATIVE_BANDS, TissueVolumePlot, normative_column, tissue_volume_rows

__all__ = ["INDEX_NAME", "INDEX_UNIT", "NORMATIVE_BANDS", "AtlasLoader", "LoadedAtlas",
           "TissueDisplay", "TissueVolumePlot", "add_generated_ga", "atlas_label_table", "atlas_range_command",
           "current_ga", "exact_ga_command", "exact_ga_target", "export_current", "ga_index", "load_atlas",
           "normative_column", "select_ga", "sequence_gas", "tissue_volume_rows",
           "write_sample_atlas"]
