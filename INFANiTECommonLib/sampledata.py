"""The CC0 sample stacks (MIAL super-resolution toolkit, sub-01, six real thick-slice T2 stacks with manual brain
masks) registered as SampleData sources.  The files ship with the extension (``INFANiTERegistration/Resources/
SampleData``), so the URIs are local ``file://`` URLs with SHA-256 checksums.

SampleData applies ONE ``loadFileProperties`` dict to every file of a source (it copies it and writes
``fileName``/``name`` into it: ``Modules/Scripted/SampleData/SampleData.py``), so a T2 stack (scalar volume) and its
brain mask (label map) are two sources: "INFANiTE fetal stack N" and "INFANiTE fetal stack N brain mask".
"""
from __future__ import annotations

from pathlib import Path

CATEGORY = "INFANiTE"
STACK_RUNS = range(1, 7)


def _checksums(folder: Path) -> dict:
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name] = digest
    return sums


def sample_sources(folder) -> list[dict]:
    """The SampleData sources of the stacks: per stack its T2 volume (``labelmap`` False) and its brain mask
    (``labelmap`` True), each checksummed (reads ``SHA256SUMS`` in ``folder``).  Each dict holds exactly the
    keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource``."""
    folder = Path(folder)
    sums = _checksums(folder)
    thumbnail = str(folder / "thumbnail.png") if (folder / "thumbnail.png").is_file() else None
    sources = []
    for run in STACK_RUNS:
        t2, mask = f"sub-01_run-{run}_T2w.nii.gz", f"sub-01_run-{run}_T2w_desc-brain_mask.nii.gz"
        if t2 not in sums or mask not in sums:
            continue
        for file_name, sample_name, node_name, labelmap in (
                (t2, f"INFANiTE fetal stack {run}", f"fetal stack {run}", False),
                (mask, f"INFANiTE fetal stack {run} brain mask", f"fetal stack {run} brain mask", True)):
            sources.append({
                "category": CATEGORY, "sampleName": sample_name, "uris": [(folder / file_name).as_uri()],
                "fileNames": [file_name], "nodeNames": [node_name], "checksums": [f"SHA256:{sums[file_name]}"],
                "loadFileTypes": ["VolumeFile"], "loadFileProperties": {"labelmap": labelmap},
                "thumbnailFileName": thumbnail})
    return sources


def register_sample_data(folder) -> int:
    """Register the stacks and masks with Slicer's SampleData module; returns how many sources were registered."""
    import SampleData

    sources = sample_sources(folder)
    for source in sources:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)
    return len(sources)
