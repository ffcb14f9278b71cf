"""Generate the atlas at one exact GA in a background process, then add it to the loaded sequences.

:func:`atlas_range_command` gives the command line of a whole atlas (a GA range); :func:`exact_ga_target` where
one more GA of a loaded atlas is generated from (run, spacing) and written to.

:func:`exact_ga_command` gives the argument list of ``python -m infanite atlas --run RUN --ga GA --spacing S
--out OUT --device D --progress-json -`` (progress as JSON lines on stdout); the module runs it with QProcess
or :mod:`subprocess`, never in Slicer's own process.  When it has finished, :func:`add_generated_ga` reads the
new ``atlas_ga-<GA>_T2w/dseg.nii.gz`` and inserts them into both sequences at their numeric place.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loader import LoadedAtlas

#: Where an exact GA from another run than the atlas's goes (inside the atlas folder; not part of that atlas).
EXACT_SUBFOLDER = "exact-ga"


def _atlas_command(run_dir, which: list, out_dir, spacing_mm, device: str, python: str | None) -> list:
    from INFANiTECommonLib.process import python_command

    return python_command(["atlas", "--run", str(run_dir), *which, "--spacing", f"{float(spacing_mm):g}", "--out",
                           str(out_dir), "--device", str(device), "--progress-json", "-"], python=python)


def exact_ga_command(run_dir, ga, out_dir, spacing_mm=0.8, device: str = "cpu", python: str | None = None
                     ) -> list:
    """The argument list (interpreter first) generating GA ``ga`` (weeks, 0.1 precision) from the finished run
    ``run_dir`` into ``out_dir`` at ``spacing_mm`` (mm) on ``device`` (cpu, cuda, cuda:N), with JSON-lines
    progress on stdout.  ``python``: the interpreter (default ``sys.executable``; PythonSlicer in Slicer).
    Using the atlas folder as ``out_dir`` adds the GA to that atlas (same run and spacing: its manifest,
    ``volumes.tsv`` and ``growth.png`` are updated).  The values are checked by ``infanite atlas`` itself, which
    refuses a bad one (exit status 2, the reason on one line) before any work."""
    return _atlas_command(run_dir, ["--ga", f"{round(float(ga), 1):g}"], out_dir, spacing_mm, device, python)


def atlas_range_command(run_dir, ga_start, ga_stop, ga_step, out_dir, spacing_mm=0.8, device: str = "cpu",
                        python: str | None = None) -> list:
    """The argument list (interpreter first) generating the atlas of the finished run ``run_dir`` at GAs
    ``ga_start``, ``ga_start + ga_step``, ... up to ``ga_stop`` (weeks, inclusive) into ``out_dir`` at
    ``spacing_mm`` (mm) on ``device``, with JSON-lines progress on stdout; ``infanite atlas`` checks the values."""
    which = ["--ga-range", f"{float(ga_start):g}", f"{float(ga_stop):g}", "--ga-step", f"{float(ga_step):g}"]
    return _atlas_command(run_dir, which, out_dir, spacing_mm, device, python)


def exact_ga_target(loaded: LoadedAtlas, run_dir=None, spacing_mm=0.8) -> tuple:
    """``(run folder, spacing mm, output folder)`` for generating one more GA of ``loaded``.

    The run is ``run_dir`` when given, else the one the atlas manifest names (``ValueError`` when neither).  The
    spacing is the atlas's own (manifest ``spacing_mm``) when recorded, so the new GA lies on the atlas grid, else
    ``spacing_mm``.  The output is the atlas folder itself when the atlas came from that run (``infanite atlas``
    then adds the GA to its manifest, ``volumes.tsv`` and ``growth.png``), else its ``exact-ga`` subfolder."""
    manifest = loaded.manifest or {}
    atlas_run = manifest.get("run_dir")
    from INFANiTECommonLib.logic import given_path

    given = given_path(run_dir)
    if given is None and not atlas_run:
        raise ValueError(f"choose the run folder of the training that made {loaded.folder} (its manifest names none)")
    run = given if given is not None else Path(atlas_run)
    recorded = manifest.get("spacing_mm")
    if isinstance(recorded, (int, float)):
        recorded = [recorded]
    spacing = float(recorded[0]) if isinstance(recorded, list) and recorded else float(spacing_mm)
    same_run = bool(atlas_run) and Path(atlas_run).resolve() == run.resolve()
    return run, spacing, Path(loaded.folder) if same_run else Path(loaded.folder) / EXACT_SUBFOLDER


def add_generated_ga(loaded: LoadedAtlas, folder, ga, select: bool = False) -> float:
    """Insert the GA ``ga`` (weeks) that ``infanite atlas`` wrote into ``folder`` into both sequences, in
    numeric order (an item already at that GA is replaced).  The browser keeps showing the GA it showed, or
    shows the new one with ``select``.  ``loaded.files`` records the new files; call
    :meth:`TissueVolumePlot.update` to add its volumes.  ``ValueError`` naming a missing or bad file.
    Returns the GA (weeks) inserted."""
    from infanite.atlas.folder import AtlasFiles
    from infanite.io.layout import atlas_file_name, ga_key

    from .loader import add_atlas_item, select_ga

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
