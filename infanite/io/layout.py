"""The name of every file INFANiTE writes: a registration folder, a training run, an atlas folder, an evaluation
and a whole-pipeline folder.  One home for these names, read by the core and by the Slicer modules alike.

Standard library only (no torch, no nibabel): the Slicer modules import it in Slicer's own process.  GA keys (the
0.1-week precision of atlas file names) live here too, because file names are built from them.
"""
from __future__ import annotations

import re
from pathlib import Path

# -- a registration folder (``infanite register --out``) ----------------------------------------------------------
REGISTERED = "registered.tsv"            # the aligned stacks' manifest: the input of training
TRANSFORMS = "transforms.json"           # template_to_stack matrices (RAS mm) and QC per stack
FAILURES = "failures.json"               # stacks that failed, with the manifest row and the reason
STACKS_DIR, TFM_DIR, QC_DIR, WEIGHTS_DIR = "stacks", "transforms", "qc", "spatial_weighting"
#: per-stack image kinds → file-name suffix in ``stacks/`` (``<id>_<suffix>.nii.gz``)
STACK_IMAGES = {"T2w": "T2w", "Seg": "dseg", "Mask": "mask", "Observed": "observed", "Weight": "weight"}


#: a reference-style stack id ``GA_SUBJECT_STACK`` (``24_0001_602``)
REFERENCE_STACK_ID = re.compile(r"^\d+(?:\.\d+)?_([^_]+)_([^_]+)$")


def reference_mask_sample_name(subject_id: str) -> str:
    """The file name the reference trainer reads from ``spatial_weighting.path`` for a stack.

    A reference-style id ``GA_SUBJECT_STACK`` (e.g. ``24_0001_602``) drops its GA prefix:
    ``0001_602_mask_sample.nii.gz``; any other id gives ``{subject_id}_mask_sample.nii.gz``.

    The reference loader casts this file to uint8 and treats values > 0.5 as observed (weight 1.6), everything
    else as interpolated (0.8).  Writing the weight map W (1.6 / 0.8 / 0) there is therefore compatible: 1.6
    casts to 1 (observed), 0.8 and 0 cast to 0.  The file must lie on exactly the T2w / Seg grid.
    """
    subject_id = str(subject_id).strip()
    if not subject_id:
        raise ValueError("subject_id is empty")
    match = REFERENCE_STACK_ID.match(subject_id)
    if match:
        return f"{match.group(1)}_{match.group(2)}_mask_sample.nii.gz"
    return f"{subject_id}_mask_sample.nii.gz"


def stack_paths(out, subject_id: str) -> dict[str, Path]:
    """Every file ``infanite register`` writes for one stack into ``out``: the images of :data:`STACK_IMAGES`,
    ``result`` (its summary JSON: the marker that it is finished), ``tfm`` (ITK transform), ``qc`` (PNG) and
    ``reference`` (the weight map under the reference trainer's name)."""
    from infanite.io.paths import inside, require_name

    require_name(subject_id, "subject_id")
    paths = {key: inside(out, STACKS_DIR, f"{subject_id}_{suffix}.nii.gz") for key, suffix in STACK_IMAGES.items()}
    paths.update(result=inside(out, STACKS_DIR, f"{subject_id}.json"), tfm=inside(out, TFM_DIR, f"{subject_id}.tfm"),
                 qc=inside(out, QC_DIR, f"{subject_id}.png"),
                 reference=inside(out, WEIGHTS_DIR, reference_mask_sample_name(subject_id)))
    return paths


# -- a training run (``infanite train --out``) -----------------------------------------------------------------------
CHECKPOINT = "checkpoint.pt"             # model, optimizer, scheduler, RNG state, step (torch, weights_only)
TRAIN_LOG = "train_log.jsonl"            # one JSON object per step: step, loss terms, samples/s, memory
STACKS = "stacks.json"                   # stack ids, GAs and the training grid
SUPPORT = "support_mask.nii.gz"          # union of the stacks' brain + halo on the training grid
FETUS_SUPPORT = "support_fetuses.nii.gz"  # 4-D: each fetus's brain + halo on the training grid (GA-local support)
CONFIG = "config.yaml"                   # the resolved training config
STOP_FILE = "STOP"                       # created (by a GUI) to stop at the next step boundary, checkpoint first
DIAGNOSTICS = "diagnostics.json"         # a finished run: averaging vs shape removal (infanite.inr.diagnostics)
SLICE_MOTION = "slice_motion.json"       # data.slice_motion: each acquired slice's fitted rigid motion
DEFORMATIONS_DIR = "deformations"        # template model: <fetus>.h5, each fetus's fitted displacement (ITK)
INTENSITY_CEILING = "intensity_ceiling.json"  # a finished run: the brightest measured intensity per GA

# -- an atlas folder (``infanite atlas --out``) ----------------------------------------------------------------------
ATLAS_MANIFEST = "atlas_manifest.json"   # written last: the complete GAs, their files, the run, the label values
ATLAS_MANIFEST_FORMAT = "infanite-atlas/1"
VOLUMES = "volumes.tsv"                  # tissue volumes (mL) per GA
GROWTH = "growth.png"                    # volumes against the normative curves
MONTAGE = "montage.png"                  # mid-slices of every GA
ATLAS_KINDS = ("T2w", "dseg", "probseg", "mask")


def ga_key(ga) -> float:
    """A GA (weeks) rounded to 0.1 week: the precision of atlas file names and the key of a GA everywhere."""
    return round(float(ga), 1)


def ga_text(ga) -> str:
    """The GA of a file name, one decimal (``24.0``, ``26.5``)."""
    return f"{ga_key(ga):.1f}"


def atlas_file_name(ga, kind: str) -> str:
    """``atlas_ga-<GA>_<kind>.nii.gz`` (kind: T2w, dseg, probseg, mask), GA (weeks) with one decimal."""
    if kind not in ATLAS_KINDS:
        raise ValueError(f"atlas file kind must be one of {', '.join(ATLAS_KINDS)}, got {kind!r}")
    return f"atlas_ga-{ga_text(ga)}_{kind}.nii.gz"


def atlas_filenames(ga) -> dict[str, str]:
    """Per-GA output names of ``infanite atlas``: T2w, dseg and probseg."""
    return {kind: atlas_file_name(ga, kind) for kind in ("T2w", "dseg", "probseg")}


# -- an evaluation (``infanite evaluate --out``) ---------------------------------------------------------------------
METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"

# -- a simulated cohort (``infanite simulate --out``) ----------------------------------------------------------------
COHORT = "cohort.tsv"
TRUTH = "truth.json"
SIMULATION = "simulation.json"            # the simulator's settings: the cohort is synthetic

# -- a whole pipeline (``infanite run --out``): the run folder itself is the training run ---------------------------
REGISTRATION_DIR, ATLAS_DIR, EVALUATION_DIR = "registration", "atlas", "evaluation"
TIMINGS = "timings.json"
RUN_INFO = "run_info.json"
LOSS_PLOT = "loss.png"
REPORT = "report.html"
