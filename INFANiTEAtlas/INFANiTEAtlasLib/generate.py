"""Generate the atlas at one exact GA in a background process, then add it to the loaded sequences.

:func:`exact_ga_command` gives the argument list of ``python -m infanite atlas --run RUN --ga GA --spacing S
--out OUT --device D --progress-json -`` (progress as JSON lines on stdout); the module runs it with QProcess
or :mod:`subprocess`, never in Slicer's own process.  When it has finished, :func:`add_generated_ga` reads the
new ``atlas_ga-<GA>_T2w/dseg.nii.gz`` and inserts them into both sequences at their numeric place.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loader import LoadedAtlas


def exact_ga_command(run_dir, ga, out_dir, spacing_mm=0.8, device: str = "cpu", python: str | None = None
                     ) -> list:
    """The argument list (interpreter first) generating GA ``ga`` (weeks, 0.1 precision) from the finished run
    ``run_dir`` into ``out_dir`` at ``spacing_mm`` (mm) on ``device`` (cpu, cuda, cuda:N), with JSON-lines
    progress on stdout.  ``python``: the interpreter (default ``sys.executable``; PythonSlicer in Slicer).
    Using the atlas folder as ``out_dir`` adds the GA to that atlas (same run and spacing: its manifest,
    ``volumes.tsv`` and ``growth.png`` are updated).  ``ValueError`` for a GA or spacing out of range."""
    from infanite.atlas import GA_LIMITS

    try:
        weeks = round(float(ga), 1)
        spacing = float(spacing_mm)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"GA {ga!r} weeks and spacing {spacing_mm!r} mm must be numbers") from exc
    if not (math.isfinite(weeks) and GA_LIMITS[0] <= weeks <= GA_LIMITS[1]):
        raise ValueError(f"GA {ga!r} weeks is outside {GA_LIMITS[0]:g}-{GA_LIMITS[1]:g} weeks")
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"atlas spacing must be > 0 mm, got {spacing_mm!r}")
    return [python or sys.executable, "-m", "infanite", "atlas", "--run", str(run_dir), "--ga", f"{weeks:g}",
            "--spacing", f"{spacing:g}", "--out", str(out_dir), "--device", str(device), "--progress-json", "-"]


def add_generated_ga(loaded: LoadedAtlas, folder, ga, select: bool = False) -> float:
    """Insert the GA ``ga`` (weeks) that ``infanite atlas`` wrote into ``folder`` into both sequences, in
    numeric order (an item already at that GA is replaced).  The browser keeps showing the GA it showed, or
    shows the new one with ``select``.  ``loaded.files`` records the new files; call
    :meth:`TissueVolumePlot.update` to add its volumes.  ``ValueError`` naming a missing or bad file.
    Returns the GA (weeks) inserted."""
    from infanite.atlas import atlas_file_name

    from .loader import AtlasFiles, add_atlas_item, ga_key, select_ga

    folder = Path(folder)
    weeks = ga_key(ga)
    files = AtlasFiles(weeks, folder / atlas_file_name(weeks, "T2w"), folder / atlas_file_name(weeks, "dseg"))
    for path in (files.t2w, files.dseg):
        if not path.is_file():
            raise ValueError(f"{path}: missing; 'infanite atlas' has not written GA {weeks:.1f} weeks there")
    shown = loaded.current_ga
    add_atlas_item(loaded.t2_sequence, loaded.seg_sequence, files, loaded.label_table, loaded.name)
    loaded.files[weeks] = files
    select_ga(loaded.browser, weeks if select or shown is None else shown)
    return weeks
