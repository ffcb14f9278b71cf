"""The CC0 sample stacks (MIAL super-resolution toolkit, sub-01, six real thick-slice T2 stacks with manual brain
masks) registered as a SampleData source.  The files ship with the extension (``INFANiTERegistration/Resources/
SampleData``), so the URIs are local ``file://`` URLs with SHA-256 checksums."""
from __future__ import annotations

from pathlib import Path

CATEGORY = "INFANiTE"


def sample_sources(folder) -> list[dict]:
    """One SampleData source per stack: its T2 volume and mask, checksummed (reads ``SHA256SUMS`` in ``folder``)."""
    folder = Path(folder)
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name] = digest
    sources = []
    for run in range(1, 7):
        t2, mask = f"sub-01_run-{run}_T2w.nii.gz", f"sub-01_run-{run}_T2w_desc-brain_mask.nii.gz"
        if t2 not in sums or mask not in sums:
            continue
        sources.append({
            "category": CATEGORY, "sampleName": f"INFANiTE fetal stack {run}",
            "uris": [(folder / t2).as_uri(), (folder / mask).as_uri()], "fileNames": [t2, mask],
            "nodeNames": [f"fetal stack {run}", f"fetal stack {run} brain mask"],
            "checksums": [f"SHA256:{sums[t2]}", f"SHA256:{sums[mask]}"], "loadFileTypes": ["VolumeFile", "VolumeFile"],
            "loadFileProperties": [{}, {"labelmap": True}],
            "thumbnailFileName": str(folder / "thumbnail.png") if (folder / "thumbnail.png").is_file() else None})
    return sources


def register_sample_data(folder) -> int:
    """Register the stacks with Slicer's SampleData module; returns how many were registered."""
    import SampleData

    sources = sample_sources(folder)
    for source in sources:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)
    return len(sources)
