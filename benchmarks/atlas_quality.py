"""Quality benchmark: is the atlas sharper and truer than averaging the aligned stacks?

    python benchmarks/atlas_quality.py [--quick | --smoke] [--work DIR] [--json results.json]
                                       [--atlas-dir CRL] [--subjects N] [--steps N] [--jobs 2] [--threads 2]
                                       [--rows ROW ...] [--no-slice-motion] [--set KEY=VALUE ...]
                                       [--position-sigma WEEKS]

Everything runs in one call, on one simulated cohort, and every row is compared with the same ground truth.

Cohort.  ``infanite.simulation.stacks`` on the CRL 2017 atlas (``--atlas-dir``, default ``../shared/data/crl2017-fetal-
atlas`` next to the repository): ``--subjects`` fetuses (default 40) × 3 stacks (axial, coronal, sagittal), GA
stratified over 21–38 weeks, simulator defaults otherwise (3 mm slices + 0.3 mm gap, 1 mm in-plane, ±20°
obliquity, 2°/1 mm per-slice motion, 2 mm deformation, 3 % Rician noise, 20 % bias), seed 0.  The stacks are
registered for real (``register_cohort``: orientation search + rigid NMI, no ground-truth transforms, ``--jobs``
worker processes) and resampled onto one 1.6 mm grid over the CRL field of view (the means' grid and the
reference data term's input); the INR atlases are queried at 0.8 mm.

Rows (every atlas at GA 22, 26, 30, 34 and 38 weeks):

  b        GKR-weighted mean of the aligned stacks (σ 0.5 weeks; per-stack min–max normalisation over the brain;
           weighted label vote with background; the INR atlas's label clean-up);
  c        as b, each stack's weight multiplied voxelwise by its observed/interpolated weight map W (1.6 / 0.8);
  a        the paper's model (modulated SIREN, per-stack latents, GKR of the latents) with the reference's data
           term (resampled stacks, W-weighted L1 of the mean over P PSF samples);
  a'       the same model with the exact data term (the acquired stack voxels at their registered positions, the
           unbiased split-sample PSF estimator, a per-stack gain and bias field);
  g        the deformation-aware template model (``model: template``, modulated encoding with GA-node latents,
           one node per ~3.3 fetuses as the CPU defaults of ``infanite run`` size them, 8³ × 3 control points
           of displacement per fetus) with the exact data term;
  g0, gP   g without displacements, g without PSF (``--quick`` only: the ablations);
  gT       oracle ablation (``--quick``): g with each fetus's displacement fixed to the simulator's recoverable
           field (its true field minus the cohort's GA-kernel mean, least-squares on the 8³ control grid): what
           g's template gives when the shapes are found exactly, at the same budget;
  gM       g as ``infanite run`` trains it on a CPU: each acquired slice's and each stack's rigid motion learnt with
           the model (``data.slice_motion``, ``data.stack_motion``), the halo's measured targets (only with
           ``--rows``);
  oU, oD   simulator oracles: the GKR mean (σ 0.5) over the fetuses of each one's *undeformed* template at its GA
           (perfect shape removal), and of its *deformed* truth (the best any intensity average can do);
  oS       oracle: as oU, every template warped by the cohort's mean shape at the atlas GA (the mean of the
           fetuses' true displacements, GA-kernel weighted as the template model's penalty weighs them): what the
           template model gives if it fits every fetus exactly (its template is the sample's mean shape).

a, a' and g share the model size (full mode: hidden 256 × 3 layers, the size of ``infanite run``'s CPU defaults;
quick mode: hidden 128; latents 32 × 3³), 4,000 samples × P 4 per step, learning rates and the step budget
(``--steps``; full mode 4,000 steps, the budget of ``infanite run``'s CPU defaults, each model under 30 min on 2 CPU
cores; quick mode 1,500).  ``--set KEY=VALUE`` adds a training override to
every INR row (after its own); like another ``--steps``, it trains into the row's own folders.
``--position-sigma`` generates the template rows' atlases with ``infanite atlas --position-sigma`` into their own
atlas folders, from the same runs.  Ground truth is the
CRL week itself (``evaluate_atlas``: each atlas resampled onto the 0.8 mm CRL grid).  Reported per row and GA: PSNR
and SSIM in both region conventions, mean Dice, HD95, TCT, sharpness (mean |∇I| per mm of the min–max normalised
atlas over the CRL brain mask; the truth's value in the header), volume L1, and as a diagnostic the PSNR (mask)
after the best affine intensity map of the atlas onto the truth (its gap to the PSNR is what the atlas's contrast
costs).  Diagnostics of every INR run (``diagnostics.json`` plus the simulator's truth): agreement of the atlas
with the mean of the per-fetus decodings, each fetus's reconstruction against its own deformed truth (as is and
after the best affine intensity map), latent norms, and for g how its fitted displacements
find the simulator's: RMS error against the whole field and against the recoverable part (the field minus the
cohort's GA-kernel mean), the fitted field's affine part, and the error and correlation of the non-affine parts.

Goal check (the issue's): the best INR row ≥ +3 dB PSNR (mask) and ≥ +0.05 mean Dice over c at GA 26, 30 and 34,
≥ +1.5 dB at 22 and 38, and above the deformed-truth oracle oD; a' above a.

``--no-slice-motion`` simulates the same cohort without per-slice motion (its own work subfolder): a diagnostic of
how much of the loss the motion costs, since no row corrects motion within a stack.

A table "where the loss is" sets, per INR row and GA, the atlas's PSNR beside the reconstruction of the fetuses
scanned around that GA (Gaussian σ 0.5 weeks over their GAs) against their own truth, each also after the best
affine intensity map: fetuses well above the atlas say the loss is in averaging them (shapes not removed); fetuses
at the atlas's level say the data fit itself is short; a large affine gap says the contrast is.

A position table sets, per row and GA, the atlas's offset (mm at the brain's centre) from the CRL week after the
best rigid alignment onto it, and its PSNR before → after that alignment, beside the rigid offsets of the
neighbouring CRL weeks from that week and their midpoint: the CRL weeks' brains are not centred alike, and the
simulator makes a fetus between two weeks as an intensity blend of both, so a template that changes smoothly with
GA sits near the midpoint; the PSNR after the alignment says what that position costs (a diagnostic: the
alignment uses the truth).  Each INR run's diagnostics are kept in ``<work>/diagnostics/`` and reused while its
checkpoint and the simulator's truth are unchanged.

A tissue table splits each row's squared error (the PSNR's region and normalisation) by the CRL week's labels:
per tissue its MSE and signed mean error, beside each tissue's share of the region's voxels, so that a row's
shortfall against another (oD) is located in the tissues where it arises and read as blur or as contrast.

The results end with a table of the goal's PSNR thresholds (c + the margin) beside the oracles: a threshold above
oS is out of reach of the template model on that cohort, however well it is trained.

Modes: default (full: 40 fetuses, 4,000 steps at hidden 256; about 1.5 h on 2 CPU cores), ``--quick`` (12
fetuses, 1,500 steps at hidden 128, with the ablations; ~40 min), ``--smoke`` (development only: 3 fetuses, GA
25–31, atlases at GA 27 and 30, a tiny model, 30 steps — checks the plumbing end to end, it is not a measurement).

Work folder.  Everything is written under ``--work`` (default: a new temporary folder, printed), in a subfolder
per mode and cohort size; the CRL atlas is licensed for non-commercial use only, so nothing derived from it may
be written inside the repository (refused).  A rerun with the same ``--work`` resumes: simulation and
registration skip finished stacks, a finished training run is reused (an unfinished one resumes exactly), atlas
GAs already written are skipped and finished evaluations are reused.  Every stage is timed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ATLAS = REPO.parent / "shared" / "data" / "crl2017-fetal-atlas"

from infanite.inr.config import CPU_DEFAULTS, CPU_TEMPLATE, CPU_TEMPLATE_STEPS  # noqa: E402  (after the path set-up)

#: Model size and optimisation of every INR row in the quick mode (and of atlas_budget.py): the CPU model of the
#: first measurements, hidden 128 (the paper's size needs a GPU).
SMALL_TRAINING = ["inr_decoder.hidden_size=128", "inr_decoder.num_hidden_layers=3",
                  "inr_decoder.modulated_layers=[1,3]", "inr_decoder.latent_dim=[32,3,3,3]", "n_samples=4000",
                  "epochs.train=1000", "checkpoint_every=500", "optimizer.lr_inr=1e-3",
                  "optimizer.lr_latent=1e-2", "inr_decoder.tf_dim=0", "psf.samples_per_epoch=[4]"]
#: Full mode: the model and optimisation of ``infanite run``'s CPU defaults (hidden 256), with this benchmark's
#: epoch and checkpoint settings; the step budget is the mode's.
FULL_TRAINING = [o for o in CPU_DEFAULTS if not o.startswith(("epochs.train=", "max_steps=", "checkpoint_every="))] + [
    "epochs.train=1000", "checkpoint_every=500"]
SMOKE_TRAINING = ["inr_decoder.hidden_size=32", "inr_decoder.num_hidden_layers=2",
                  "inr_decoder.modulated_layers=[1]", "inr_decoder.latent_dim=[8,3,3,3]", "n_samples=1000",
                  "epochs.train=1000", "checkpoint_every=10", "optimizer.lr_inr=1e-3",
                  "optimizer.lr_latent=1e-2", "inr_decoder.tf_dim=0", "psf.samples_per_epoch=[2]"]

MODES = {
    "full": {"subjects": 40, "ga_range": (21.0, 38.0), "atlas_ga": [22.0, 26.0, 30.0, 34.0, 38.0], "steps": 4000,
             "training": FULL_TRAINING, "ablations": False},
    "quick": {"subjects": 12, "ga_range": (21.0, 38.0), "atlas_ga": [22.0, 26.0, 30.0, 34.0, 38.0], "steps": 1500,
              "training": SMALL_TRAINING, "ablations": True},
    "smoke": {"subjects": 3, "ga_range": (25.0, 31.0), "atlas_ga": [27.0, 30.0], "steps": 30,
              "training": SMOKE_TRAINING, "ablations": True},
}
STACKS_PER_SUBJECT = 3
REGISTRATION_SPACING_MM = 1.6
ATLAS_SPACING_MM = 0.8
SIGMA_WEEKS = 0.5
SEED = 0
TEMPLATE = ["model=template", "template.encoding=modulated", "template.deformation_grid=8"]

#: key → (label, kind, options): kind "mean" (options: baseline keywords), "inr" (training overrides), "oracle"
ROWS = {
    "b": ("GKR mean", "mean", {"use_weight_maps": False}),
    "c": ("GKR mean + W", "mean", {"use_weight_maps": True}),
    "a": ("paper model, reference data term", "inr", ["data.term=reference"]),
    "a'": ("paper model, exact data term", "inr", ["data.term=exact"]),
    "g": ("template + deformation", "inr", TEMPLATE),
    "oU": ("oracle: mean of undeformed templates", "oracle", {"deformed": False}),
    "oD": ("oracle: mean of deformed truths", "oracle", {"deformed": True}),
    "oS": ("oracle: undeformed templates at the cohort's mean shape", "oracle", {"deformed": False,
                                                                               "mean_shape": True}),
    "g0": ("g without deformation", "inr", TEMPLATE + ["template.deformation_grid=0"]),
    "gP": ("g without PSF", "inr", TEMPLATE + ["psf.mode=none"]),
    "gT": ("g with the simulator's displacements, fixed (oracle)", "inr",
           TEMPLATE + ["template.lr_deformation=0", "template.deformation_init={oracle_deformations}"]),
    "gM": ("g as infanite run trains it on a CPU: per-slice and per-stack motion, halo targets measured", "inr",
           TEMPLATE + [o for o in CPU_TEMPLATE if o != "model=template" and not o.startswith("max_steps=")]),
}
#: rows trained as ``infanite run`` trains on a CPU: in the full mode (without --steps) they take its step budget
#: (the template model's, ``CPU_TEMPLATE_STEPS``) instead of the mode's
RUN_BUDGET_ROWS = ("gM",)
ABLATIONS = ("g0", "gP", "gT")
#: rows run only when named with --rows
ON_REQUEST = ("gM",)
#: the oracle displacements' lattice: spacing (mm) and half-width (mm) of a cube centred on the template origin
ORACLE_FIELD_SPACING_MM = 4.0
ORACLE_FIELD_HALF_MM = 112.0

#: (key in evaluate's summary rows, table title, digits, higher is better)
METRICS = [("psnr_mask_db", "PSNR mask (dB)", 2, True), ("psnr_bbox_db", "PSNR bbox (dB)", 2, True),
           ("ssim_mask", "SSIM mask", 4, True), ("ssim_bbox", "SSIM bbox", 4, True),
           ("dice_mean", "mean Dice", 4, True), ("hd95_mean_mm", "HD95 (mm)", 2, False),
           ("tct_test", "TCT", 3, True), ("sharpness", "sharpness (1/mm)", 4, True),
           ("vol_l1_reference", "volume L1 vs CRL", 4, False),
           ("psnr_affine_mask_db", "PSNR mask after the best affine intensity map (dB; a diagnostic)", 2, True),
           ("psnr_rigid_mask_db", "PSNR mask after the best rigid alignment onto the truth (dB; a diagnostic)", 2,
            True),
           ("rigid_offset_mm", "the atlas's rigid offset from the truth at the brain's centre (mm; a diagnostic)",
            2, False)]

GOAL_PSNR_DB = {22.0: 1.5, 26.0: 3.0, 30.0: 3.0, 34.0: 3.0, 38.0: 1.5}
GOAL_DICE = 0.05


def folder_key(name: str) -> str:
    """A row key as a folder name (a' → a_prime)."""
    return name.replace("'", "_prime")


# ------------------------------------------------------------------------------------------------ helpers

class Timer:
    """Seconds per stage, in order; ``reused`` marks stages whose result came from an earlier call."""

    def __init__(self):
        self.rows: list[dict] = []

    def run(self, stage: str, fn, reused_if=None):
        print(f"[{time.strftime('%H:%M:%S')}] {stage} …", flush=True)
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        reused = bool(reused_if(result)) if reused_if else False
        self.rows.append({"stage": stage, "seconds": round(seconds, 2), "reused": reused})
        print(f"[{time.strftime('%H:%M:%S')}] {stage}: {seconds:.1f} s{' (reused)' if reused else ''}", flush=True)
        return result


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _number(value) -> float:
    if value is None:
        return math.nan
    if value == "inf":
        return math.inf
    if value == "-inf":
        return -math.inf
    return float(value)


def _mean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def train_variant(manifest: Path, overrides: list[str], run_dir: Path) -> dict:
    """Train (or reuse/resume) one INFANiTE run; returns ``{"steps", "total_steps", "reused"}``, and for a run
    trained here its last loss and ``cpu_matmul`` (``bf16`` or ``fp32``: how a CPU run multiplied)."""
    import torch

    from infanite.inr.ceiling import write_run_intensity_ceiling
    from infanite.inr.train import train
    from infanite.io.layout import CHECKPOINT, INTENSITY_CEILING
    from infanite.inr.config_loading import load_train_config

    config = load_train_config(None, overrides)
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.exists():
        saved = load_train_config(run_dir / "config.yaml")
        if saved.to_dict() != config.to_dict():
            raise SystemExit(f"{run_dir} holds a run with other training settings; use another --work")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if int(state["global_step"]) >= int(state["total_steps"]):
            if not (run_dir / INTENSITY_CEILING).is_file():     # a run finished before ceilings were written
                write_run_intensity_ceiling(run_dir, manifest)
            return {"steps": int(state["global_step"]), "total_steps": int(state["total_steps"]), "reused": True}
    summary = train(manifest, config, run_dir, resume=checkpoint.exists())
    return {"steps": summary["steps"], "total_steps": summary["total_steps"], "reused": False,
            "last_loss": summary["last"].get("loss"), "cpu_matmul": summary.get("cpu_matmul")}


def generate_variant(run_dir: Path, gas: list[float], out: Path, spacing: float, device: str,
                     position_sigma: float | None = None) -> dict:
    """The atlas of a run at ``gas`` (weeks), ``spacing`` mm (``position_sigma``: ``infanite atlas
    --position-sigma``, weeks; None: its default)."""
    from infanite.atlas.generate import generate

    more = {} if position_sigma is None else {"position_sigma_weeks": position_sigma}
    # overwrite: an atlas folder left from an earlier checkpoint of this run is replaced, not refused
    result = generate(run_dir, gas, out, spacing_mm=spacing, device=device, sigma_weeks=SIGMA_WEEKS, overwrite=True,
                      **more)
    return {"generated": result["generated"], "skipped": result["skipped"],
            "ess": {k: v.get("ess") for k, v in result["ga"].items()}}


def mean_variant(registered: Path, gas: list[float], out: Path, use_weight_maps: bool) -> dict:
    from infanite.io.layout import atlas_filenames
    from infanite.evaluation.baselines import gkr_mean_atlas

    todo = [g for g in gas if not all((out / atlas_filenames(g)[k]).is_file() for k in ("T2w", "dseg"))]
    if not todo:
        return {"generated": [], "skipped": [f"{g:.1f}" for g in gas]}
    result = gkr_mean_atlas(registered, todo, out, sigma_weeks=SIGMA_WEEKS, use_weight_maps=use_weight_maps)
    return {"generated": sorted(result["ga"]), "skipped": [f"{g:.1f}" for g in gas if g not in todo],
            "ess": {k: v["ess"] for k, v in result["ga"].items()}}


def evaluate_variant(atlas_dir: Path, reference: Path, out: Path, gas: list[float]) -> dict:
    """``{"rows": {GA key: summary row}, "reused": bool}``; reuses ``metrics.json`` newer than every atlas file."""
    from infanite.evaluation.against_reference import evaluate_atlas
    from infanite.io.layout import METRICS_JSON

    metrics_path = out / METRICS_JSON
    newest = max(p.stat().st_mtime for p in atlas_dir.glob("atlas_ga-*.nii.gz"))
    wanted = {f"{g:.1f}" for g in gas}
    if metrics_path.exists() and metrics_path.stat().st_mtime > newest:
        document = json.loads(metrics_path.read_text())
        rows = {f"{float(p['ga_weeks']):.1f}": {k: _number(v) for k, v in row.items()}
                for p, row in zip(document["per_ga"], document["summary"])}
        if wanted <= set(rows):
            return {"rows": {k: rows[k] for k in sorted(wanted, key=float)}, "reused": True}
    document = evaluate_atlas(atlas_dir, reference, out, ga_weeks=gas)
    rows = {f"{float(p['ga_weeks']):.1f}": {k: float(v) for k, v in row.items()}
            for p, row in zip(document["per_ga"], document["summary"])}
    return {"rows": rows, "reused": False}


_ANATOMY: dict = {}


def fetus_anatomy(index: int, library, sim_config) -> tuple:
    """Fetus ``index``'s simulated anatomy, (rng, template, deformation, deformed T2, deformed labels), computed
    once per process and cohort settings: the oracles and every INR row's diagnostics share it (the simulator is
    deterministic)."""
    from infanite.simulation.stacks import _fetus_anatomy, subject_ages

    key = (index, repr(sim_config))
    if key not in _ANATOMY:
        _ANATOMY[key] = _fetus_anatomy(index, float(subject_ages(sim_config)[index - 1]), library, sim_config)
    return _ANATOMY[key]


def oracle_deformations(truth_json: Path, folder: Path) -> dict:
    """``<folder>/<subject>.h5`` for every simulated fetus: the part of its true displacement that the template
    model can recover, the true field minus the GA-kernel mean (σ ``MEAN_KERNEL_WEEKS``) of the cohort's, as the
    run writes its own fitted fields (ITK displacement-field transforms, LPS), on a lattice of
    ``ORACLE_FIELD_SPACING_MM`` over ±``ORACLE_FIELD_HALF_MM`` around the template origin; ``template.
    deformation_init`` fits them onto the model's control grid.  Reused when every file is there."""
    import json

    import numpy as np
    import SimpleITK as sitk

    from infanite.inr.deformations import displacement_image
    from infanite.inr.template import MEAN_KERNEL_WEEKS
    from infanite.io.atomic import atomic_output
    from infanite.simulation.anatomy import displacement

    subjects = json.loads(truth_json.read_text())["subjects"]
    names = sorted(subjects)
    if all((folder / f"{n}.h5").is_file() for n in names):
        return {"written": 0, "fetuses": len(names)}
    folder.mkdir(parents=True, exist_ok=True)
    n = int(round(2 * ORACLE_FIELD_HALF_MM / ORACLE_FIELD_SPACING_MM)) + 1
    axis = np.linspace(-ORACLE_FIELD_HALF_MM, ORACLE_FIELD_HALF_MM, n, dtype=np.float32)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    xyz = np.stack([x, y, z], axis=-1)                                 # (z, y, x, 3) RAS mm
    fields = np.stack([displacement(subjects[k]["deformation"], xyz) for k in names])
    ga = np.array([float(subjects[k]["ga_weeks"]) for k in names])
    kernel = np.exp(-0.5 * ((ga[:, None] - ga[None, :]) / MEAN_KERNEL_WEEKS) ** 2)
    kernel /= kernel.sum(1, keepdims=True)
    for f, name in enumerate(names):
        recoverable = fields[f] - np.tensordot(kernel[f], fields, axes=1)
        image = displacement_image(np.moveaxis(recoverable, -1, 0), np.zeros(3), np.full(3, ORACLE_FIELD_HALF_MM))
        with atomic_output(folder / f"{name}.h5") as tmp:
            sitk.WriteTransform(sitk.DisplacementFieldTransform(image), str(tmp))
    return {"written": len(names), "fetuses": len(names)}


def oracle_variant(library, sim_config, gas: list[float], out: Path, deformed: bool,
                   mean_shape: bool = False) -> dict:
    """The GKR mean (σ 0.5 weeks, over the fetuses' GAs) of each simulated fetus's deformed truth, or of its
    undeformed template, on the CRL grid; labels by weighted vote (written as an atlas folder).

    ``mean_shape``: each undeformed template is first warped by the cohort's mean shape at the atlas GA, the
    Gaussian-weighted mean (σ ``MEAN_KERNEL_WEEKS``) of the fetuses' true displacements: what the template model
    gives when it fits every fetus exactly, since its penalty makes the displacements average to zero around
    each GA (the template is the sample's mean shape, not the population's, with a finite number of fetuses)."""
    import numpy as np
    from scipy import ndimage

    from infanite.geometry import apply_matrix
    from infanite.inr.template import MEAN_KERNEL_WEEKS
    from infanite.simulation.anatomy import displacement
    from infanite.atlas.kernel import gkr_weights
    from infanite.inr.data import brain_normalised
    from infanite.io.images import Volume, save_nifti
    from infanite.io.layout import atlas_filenames
    from infanite.io.resample import resample
    from infanite.simulation.stacks import subject_ages

    todo = [g for g in gas if not all((out / atlas_filenames(g)[k]).is_file() for k in ("T2w", "dseg"))]
    if not todo:
        return {"generated": []}
    ages = [float(a) for a in subject_ages(sim_config)]
    grid = library.get(float(round(gas[0]))).t2w.grid

    def anatomy(index: int):
        return fetus_anatomy(index, library, sim_config)

    shift = None
    xyz = grid.voxel_centres_ras().astype(np.float32) if mean_shape else None
    for g in todo:
        weights = gkr_weights(ages, g, SIGMA_WEEKS).weights
        if mean_shape:
            kernel = np.exp(-0.5 * ((np.asarray(ages) - g) / MEAN_KERNEL_WEEKS) ** 2)
            shift = np.zeros(xyz.shape, np.float32)
            for index, k in enumerate(kernel / kernel.sum(), start=1):
                if k >= 1e-4:
                    shift += k * displacement(anatomy(index)[2], xyz)
        image = np.zeros(grid.shape)
        votes = np.zeros(grid.shape + (9,), np.float32)
        for index, w in enumerate(weights, start=1):
            if w < 1e-4:
                continue
            _, template, _, t2, labels = anatomy(index)
            source = (t2, labels) if deformed else (template.t2w, template.seg)
            if shift is None:
                array = resample(source[0], grid, None, "linear").array
                seg = resample(source[1], grid, None, "nearest").array
            else:                                   # T_f(x + mean displacement(x)), the template convention
                ijk = np.moveaxis(apply_matrix(source[0].ras_to_voxel, xyz + shift), -1, 0)
                array = ndimage.map_coordinates(source[0].array, ijk, order=1, mode="constant", cval=0.0)
                seg = ndimage.map_coordinates(source[1].array, ijk, order=0, mode="constant", cval=0)
            image += w * brain_normalised(array, seg > 0)
            for value in range(9):
                votes[..., value] += w * (seg == value)
        dseg = votes.argmax(-1).astype(np.int16)
        names = atlas_filenames(g)
        save_nifti(Volume((image * (dseg > 0)).astype(np.float32), grid.voxel_to_ras), out / names["T2w"])
        save_nifti(Volume(dseg, grid.voxel_to_ras), out / names["dseg"])
    return {"generated": [f"{g:.1f}" for g in todo]}


def image_rows(atlas_dir: Path, atlas_root: Path, gas: list[float]) -> dict:
    """Per GA: the sharpness (1/mm) of the atlas T2w over the CRL brain mask of that week, and the PSNR (dB) of the
    best affine intensity map of the atlas onto the CRL T2w over the PSNR's brain region (the mask dilated by 2 mm;
    a diagnostic: its gap to the PSNR is what the atlas's contrast costs); the atlas resampled onto the CRL grid."""
    from infanite.evaluation.metrics import (DEFAULT_DILATION_MM, brain_mask_region, intensity_error_by_label,
                                             psnr_affine, sharpness)
    from infanite.io.images import load_labels, load_nifti
    from infanite.io.layout import atlas_filenames
    from infanite.io.resample import resample
    from infanite.labels import default_label_table

    labels = default_label_table().values
    out = {}
    for g in gas:
        week = atlas_root / f"HarvardSTA{int(round(g))}_Study1"
        mask = load_nifti(week / "mask.nii.gz", dtype=None)
        image = resample(load_nifti(atlas_dir / atlas_filenames(g)["T2w"]), mask.grid, None, "linear")
        region = brain_mask_region(mask, DEFAULT_DILATION_MM)
        truth = load_nifti(week / "srr.nii.gz")
        rigid = rigid_alignment(image, truth, region)
        blur = ga_blur(image, atlas_root, g)
        tissue = intensity_error_by_label(image, truth, region, load_labels(week / "parcellation.nii.gz"), labels)
        out[f"{g:.1f}"] = {"sharpness": sharpness(image, mask), "ga_blur_sigma_weeks": blur["best_sigma_weeks"],
                           "ga_blur_psnr_db": blur["best_psnr_db"],
                           "boundary_error": boundary_error(image, truth, mask, region), "tissue_error": tissue,
                           "psnr_affine_mask_db": psnr_affine(image, truth, region),
                           "psnr_rigid_mask_db": rigid["psnr_db"], "rigid_offset_mm": rigid["offset_norm_mm"],
                           "rigid_offset_ras_mm": rigid["offset_mm"]}
    return out


def rigid_alignment(image, reference, region) -> dict:
    """The best rigid map of ``image`` onto ``reference`` (Volumes on one grid): mean squares of the two min–max
    normalised over ``region`` (a boolean array of that grid), SimpleITK, linear interpolation.  Returns the PSNR
    (dB, :func:`~infanite.evaluation.metrics.psnr` over ``region``) of ``image`` after it; ``offset_mm``, where
    the image has the reference's content of the region's centroid, less that centroid (RAS mm); its norm; and
    the rotation (degrees).  A diagnostic of how much of an atlas's error is its position alone: a template that
    is smooth in GA sits between the reference's weeks, which are offset from one another
    (:func:`reference_offsets`)."""
    import numpy as np
    import SimpleITK as sitk

    from infanite.evaluation.metrics import minmax_normalise, psnr
    from infanite.geometry import apply_matrix
    from infanite.io.images import Volume, sitk_to_volume, volume_to_sitk

    region = np.asarray(region, bool)
    fixed = volume_to_sitk(Volume(minmax_normalise(reference.array, region).astype(np.float32),
                                  reference.voxel_to_ras))
    moving = volume_to_sitk(Volume(minmax_normalise(image.array, region).astype(np.float32), image.voxel_to_ras))
    centre_ras = apply_matrix(reference.voxel_to_ras, np.argwhere(region).mean(0))
    centre_lps = np.array([-centre_ras[0], -centre_ras[1], centre_ras[2]])
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in centre_lps])
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetMetricFixedMask(volume_to_sitk(Volume(region.astype(np.uint8), reference.voxel_to_ras)))
    method.SetOptimizerAsRegularStepGradientDescent(0.5, 1e-5, 500, gradientMagnitudeTolerance=1e-10)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(transform, True)        # optimised in place
    method.SetInterpolator(sitk.sitkLinear)
    method.Execute(fixed, moving)
    warped = sitk.Resample(volume_to_sitk(Volume(image.array.astype(np.float32), image.voxel_to_ras)), fixed,
                           transform, sitk.sitkLinear, 0.0)
    moved_lps = np.asarray(transform.TransformPoint([float(v) for v in centre_lps]))
    offset = (moved_lps - centre_lps) * np.array([-1.0, -1.0, 1.0])
    rotation = np.asarray(transform.GetMatrix()).reshape(3, 3)
    degrees = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(rotation) - 1) / 2))))
    return {"psnr_db": psnr(sitk_to_volume(warped), reference, region), "offset_mm": offset.tolist(),
            "offset_norm_mm": float(np.linalg.norm(offset)), "rotation_deg": degrees}


def reference_offsets(atlas_root: Path, gas: list[float]) -> dict:
    """Per GA ``w``: the rigid offsets (RAS mm, :func:`rigid_alignment`) of the CRL weeks ``w − 1`` and ``w + 1``
    from week ``w``, over week ``w``'s PSNR region, and their midpoint: where a template that changes smoothly
    with GA, fitted by fetuses on both sides of ``w``, sits against week ``w`` (the weeks' brains are not centred
    alike); a week missing from the atlas folder is left out."""
    import numpy as np

    from infanite.evaluation.metrics import DEFAULT_DILATION_MM, brain_mask_region
    from infanite.io.images import load_nifti
    from infanite.io.resample import resample

    out = {}
    for g in gas:
        w = int(round(g))
        week = atlas_root / f"HarvardSTA{w}_Study1"
        truth, mask = load_nifti(week / "srr.nii.gz"), load_nifti(week / "mask.nii.gz", dtype=None)
        region = brain_mask_region(mask, DEFAULT_DILATION_MM)
        sides = {}
        for other in (w - 1, w + 1):
            folder = atlas_root / f"HarvardSTA{other}_Study1"
            if (folder / "srr.nii.gz").is_file():
                image = resample(load_nifti(folder / "srr.nii.gz"), truth.grid, None, "linear")
                sides[other] = rigid_alignment(image, truth, region)["offset_mm"]
        row = {f"week_{k}_offset_mm": v for k, v in sides.items()}
        if len(sides) == 2:
            row["midpoint_mm"] = np.mean(list(sides.values()), axis=0).tolist()
            row["midpoint_norm_mm"] = float(np.linalg.norm(row["midpoint_mm"]))
        out[f"{g:.1f}"] = row
    return out


#: Gaussian widths (weeks) of the CRL-week mixtures an atlas is compared with (:func:`ga_blur`); 0: the week itself
GA_BLUR_WIDTHS = (0.0, 0.35, 0.5, 0.75, 1.0, 1.5)


def ga_blur(image, atlas_root: Path, ga: float, widths=GA_BLUR_WIDTHS) -> dict:
    """How far in GA an atlas ``image`` (a Volume at ``ga`` weeks) is blurred: its PSNR (dB, brain region of the
    CRL week ``w`` = round(ga)) against the Gaussian mixture ``Σ_k w_k I_k / Σ w_k`` of the CRL weeks ``k`` within 3
    weeks of ``ga`` (each divided by its 99th percentile over the region; weights ``exp(−(k − ga)²/2σ²)``, σ = 0
    the nearest week alone) for each σ of ``widths`` (weeks).  An atlas that matches a wider mixture better than
    its own week averages the weeks around it, as a template smooth in GA or a kernel mean over the fetuses'
    GAs does.  Returns ``{"psnr_db": {σ: dB}, "best_sigma_weeks": σ, "best_psnr_db": dB}``; weeks missing from
    the atlas folder are left out of the mixtures."""
    import numpy as np

    from infanite.evaluation.metrics import DEFAULT_DILATION_MM, brain_mask_region, psnr
    from infanite.io.images import load_nifti
    from infanite.io.resample import resample

    w = int(round(ga))
    mask = load_nifti(atlas_root / f"HarvardSTA{w}_Study1" / "mask.nii.gz", dtype=None)
    region = brain_mask_region(mask, DEFAULT_DILATION_MM)
    weeks = {}
    for k in range(w - 3, w + 4):
        path = atlas_root / f"HarvardSTA{k}_Study1" / "srr.nii.gz"
        if path.is_file():
            week = resample(load_nifti(path), mask.grid, None, "linear").array.astype(np.float64)
            weeks[k] = week / max(float(np.percentile(week[region], 99)), 1e-12)
    image = resample(image, mask.grid, None, "linear").array
    scores = {}
    for sigma in widths:
        if sigma <= 0:
            mixture = weeks[min(weeks, key=lambda k: abs(k - ga))]
        else:
            weights = {k: math.exp(-0.5 * ((k - ga) / sigma) ** 2) for k in weeks}
            total = sum(weights.values())
            mixture = sum(weights[k] / total * weeks[k] for k in weeks)
        scores[float(sigma)] = psnr(image, mixture, region)
    best = max(scores, key=scores.get)
    return {"psnr_db": scores, "best_sigma_weeks": best, "best_psnr_db": scores[best]}


#: Signed distances (mm, + outside) to the CRL brain boundary that bin the squared error (:func:`boundary_error`):
#: deep inside, the cortex, the thin extra-axial CSF rim, the boundary voxel, just outside, the 2 mm dilation
BOUNDARY_BINS_MM = (-math.inf, -4.0, -2.0, -1.0, 0.0, 1.0, math.inf)


def boundary_error(image, truth, mask, region, bins_mm=BOUNDARY_BINS_MM) -> dict:
    """Where an atlas's error lies relative to the brain's edge: ``image`` and ``truth`` (Volumes on the grid of
    the brain ``mask``) min–max normalised over ``region`` as :func:`~infanite.evaluation.metrics.psnr` does, the
    squared error binned by the signed distance (mm, + outside, from both sides' Euclidean distance transforms at
    the mask's spacing) of each region voxel to the mask's boundary.  Per bin ``(lo, hi]``: its share of the
    region's squared error (%), its voxels' share of the region (%), and the mean normalised intensity of the
    image and of the truth there (``lo_mm``/``hi_mm`` None: unbounded).  Also the region's MSE."""
    import numpy as np
    from scipy import ndimage

    from infanite.evaluation.metrics import minmax_normalise

    inside = np.asarray(mask.array) > 0
    region = np.asarray(region, bool)
    spacing = mask.spacing_mm
    signed = (ndimage.distance_transform_edt(~inside, sampling=spacing)
              - ndimage.distance_transform_edt(inside, sampling=spacing))
    a = minmax_normalise(np.asarray(image.array), region)
    t = minmax_normalise(np.asarray(truth.array), region)
    error = (a - t) ** 2
    total = float(error[region].sum())
    rows = []
    for lo, hi in zip(bins_mm[:-1], bins_mm[1:]):
        sel = region & (signed > lo) & (signed <= hi)
        n = int(sel.sum())
        rows.append({"lo_mm": float(lo) if math.isfinite(lo) else None,
                     "hi_mm": float(hi) if math.isfinite(hi) else None,
                     "error_share_pct": 100.0 * float(error[sel].sum()) / total if total > 0 else 0.0,
                     "voxel_share_pct": 100.0 * n / int(region.sum()),
                     "image_mean": float(a[sel].mean()) if n else None,
                     "truth_mean": float(t[sel].mean()) if n else None})
    return {"mse": total / int(region.sum()), "bins": rows}


def truth_sharpness(atlas_root: Path, gas: list[float]) -> dict:
    from infanite.evaluation.metrics import sharpness
    from infanite.io.images import load_nifti

    out = {}
    for g in gas:
        week = atlas_root / f"HarvardSTA{int(round(g))}_Study1"
        out[f"{g:.1f}"] = sharpness(load_nifti(week / "srr.nii.gz"), load_nifti(week / "mask.nii.gz", dtype=None))
    return out



def displacement_agreement(points, fitted, target) -> dict:
    """How well fitted displacements (N, 3) mm find a target field at ``points`` (N, 3) RAS mm: RMS of the target,
    of the fitted field's affine part (least squares over the points) and of the error, raw and with the affine
    parts of both removed, and the correlation of the two non-affine parts (1: same field; 0: unrelated)."""
    import numpy as np

    design = np.c_[points, np.ones(len(points))]

    def non_affine(field):
        coef, *_ = np.linalg.lstsq(design, field, rcond=None)
        return field - design @ coef

    def rms(field):
        return float(np.sqrt((field ** 2).sum(1).mean()))

    fitted_na, target_na = non_affine(fitted), non_affine(target)
    norm = float(np.sqrt((fitted_na ** 2).sum() * (target_na ** 2).sum()))
    return {"rms_target": rms(target), "rms_error": rms(fitted - target),
            "rms_fitted_affine": rms(fitted - fitted_na), "rms_error_nonaffine": rms(fitted_na - target_na),
            "correlation_nonaffine": float((fitted_na * target_na).sum() / norm) if norm > 0 else 0.0}


def slice_motion_agreement(run_dir: Path, truth_json: Path) -> dict | None:
    """How a run's fitted slice motions (``slice_motion.json``, ``data.slice_motion``) find the simulator's.

    The simulator moved slice ``k`` of a stack by ``M_k`` (rotation vector ``r_k`` degrees about the brain centre,
    then ``t_k`` mm; template RAS): the sample planned at ``x`` came from ``M_k⁻¹ x``, which is what the fitted motion
    should map ``x`` to.  Compared per slice at its fitted centre ``c``: the true displacement ``M_k⁻¹ c − c`` and the
    rotation vector of ``M_k⁻¹``, each less its mean over the stack's slices (the stack's registration is the
    gauge), against the fitted translation and rotation.  None when the run has no slice motions."""
    import json

    import numpy as np

    from infanite.geometry import rigid_matrix, rotation_matrix
    from infanite.io.layout import SLICE_MOTION

    path = Path(run_dir) / SLICE_MOTION
    if not path.is_file():
        return None
    fitted = json.loads(path.read_text())["stacks"]
    truth = json.loads(truth_json.read_text())["stacks"]
    true_d, fit_d, true_r, fit_r = [], [], [], []
    for stack_id, slices in fitted.items():
        if not slices:                        # data.stack_motion without data.slice_motion
            continue
        stack = truth[stack_id]
        centre = np.asarray(stack["brain_centre_template_ras_mm"], np.float64)
        moves = {m["slice"]: m for m in stack["slice_motion"]}
        d, r = [], []
        for row in slices:
            move = moves[row["slice"]]
            inverse = np.linalg.inv(rigid_matrix(rotation_matrix(move["rotation_deg"]), move["translation_mm"],
                                                 centre))
            c = np.asarray(row["centre_mm"], np.float64)
            d.append(inverse[:3, :3] @ c + inverse[:3, 3] - c)
            r.append(-np.asarray(move["rotation_deg"], np.float64))
        d, r = np.asarray(d), np.asarray(r)
        true_d.append(d - d.mean(0))
        true_r.append(r - r.mean(0))
        fit_d.append(np.asarray([row["translation_mm"] for row in slices]))
        fit_r.append(np.asarray([row["rotation_deg"] for row in slices]))
    if not true_d:
        return None
    true_d, fit_d, true_r, fit_r = (np.concatenate(a) for a in (true_d, fit_d, true_r, fit_r))

    def rms(a):
        return float(np.sqrt((a ** 2).sum(1).mean()))

    def corr(a, b):
        return float((a * b).sum() / max(np.sqrt((a ** 2).sum() * (b ** 2).sum()), 1e-12))

    return {"slices": int(len(true_d)), "translation_rms_true_mm": rms(true_d), "translation_rms_error_mm":
            rms(fit_d - true_d), "translation_correlation": corr(fit_d, true_d), "rotation_rms_true_deg": rms(true_r),
            "rotation_rms_error_deg": rms(fit_r - true_r), "rotation_correlation": corr(fit_r, true_r)}


def stack_motion_agreement(run_dir: Path, truth_json: Path, transforms_json: Path, radius_mm: float = 25.0,
                           n_points: int = 500) -> dict | None:
    """How a run's fitted stack motions (``slice_motion.json``'s ``stack_motion``, ``data.stack_motion``) correct the
    registration between a fetus's stacks.

    A sample that the registration (``transforms_json``'s ``template_to_stack`` ``E``) puts at template RAS ``x``
    truly lies at ``T⁻¹ E x`` (``T`` the simulator's, ``truth_json``).  Over ``n_points`` points of a ball of
    ``radius_mm`` about the stack's fetus centre: that needed displacement less its mean over the fetus's stacks
    (the run's ``stacks.json`` grouping; the gauge of the stack motions), its RMS before
    (``between_stack_error_mm``) and after the fitted motion is applied (``after_mm``), mm.  None when the run has
    no stack motions."""
    import json

    import numpy as np

    from infanite.geometry import rigid_matrix, rotation_matrix
    from infanite.io.layout import SLICE_MOTION, STACKS
    from infanite.io.transforms import read_transforms_json

    path = Path(run_dir) / SLICE_MOTION
    fitted = json.loads(path.read_text()).get("stack_motion") if path.is_file() else None
    if not fitted:
        return None
    stacks = json.loads((Path(run_dir) / STACKS).read_text())
    fetus_of = dict(zip(stacks["stack_ids"], stacks.get("stack_fetus") or range(len(stacks["stack_ids"]))))
    registered, truth = read_transforms_json(transforms_json), read_transforms_json(truth_json)
    rng = np.random.default_rng(0)
    ball = rng.normal(size=(n_points, 3))
    ball *= radius_mm * rng.uniform(0, 1, (n_points, 1)) ** (1 / 3) / np.linalg.norm(ball, axis=1, keepdims=True)
    by_fetus: dict = {}
    for stack_id, move in fitted.items():
        centre = np.asarray(move["centre_mm"], np.float64)
        points = np.c_[ball + centre, np.ones(n_points)]
        needed = points @ (np.linalg.inv(truth[stack_id]) @ registered[stack_id]).T
        applied = points @ rigid_matrix(rotation_matrix(move["rotation_deg"]), move["translation_mm"], centre).T
        by_fetus.setdefault(fetus_of[stack_id], []).append(((needed - points)[:, :3], (applied - points)[:, :3]))
    before, after = [], []
    for moves in by_fetus.values():
        mean = np.mean([needed for needed, _ in moves], axis=0)
        for needed, applied in moves:
            before.append(((needed - mean) ** 2).sum(1).mean())
            after.append(((needed - mean - applied) ** 2).sum(1).mean())
    return {"stacks": len(before), "between_stack_error_mm": float(np.sqrt(np.mean(before))),
            "after_mm": float(np.sqrt(np.mean(after)))}


def run_diagnostics(run_dir: Path, library, sim_config, truth_json: Path | None = None,
                    transforms_json: Path | None = None) -> dict:
    """The run's diagnostics with the simulator's truth: per-fetus reconstruction and, for the template model,
    how its fitted displacements find the simulator's over each fetus's brain (mm, template RAS).

    The target of fetus ``f`` is its true displacement minus the GA-kernel mean of the cohort's (the run's
    ``template.mean_kernel_weeks``, and its ``position_kernel_weeks`` for the mean displacements over fetus
    ``f``'s brain), the part the template model can recover (its penalty pushes that mean to zero); the errors are
    given raw (``rms_error`` against ``rms_true``, the whole true field) and against the target, and with the
    affine parts removed (a fitted affine part also absorbs rigid misregistration and growth between weeks)."""
    import numpy as np
    import torch

    from infanite.atlas.predict import load_run
    from infanite.geometry import apply_matrix
    from infanite.inr.diagnostics import compute_diagnostics
    from infanite.inr.template import MEAN_KERNEL_WEEKS, TemplateINR
    from infanite.simulation.anatomy import displacement

    run = load_run(run_dir)
    names = run.stacks.get("fetus_ids") or []
    truth, fields = {}, {}
    for name in names:
        index = int(name)
        _, _, field, t2, labels = fetus_anatomy(index, library, sim_config)
        truth[name], fields[name] = (t2, labels), (field, labels)
    result = compute_diagnostics(run, "cpu", fetus_truth=truth)
    model = run.model("cpu")
    if isinstance(model, TemplateINR) and model.deformation is not None:
        ga = model.fetus_ga.numpy().astype(np.float64)

        def ga_kernel(width):
            kernel = np.exp(-0.5 * ((ga[:, None] - ga[None, :]) / width) ** 2)
            return kernel / kernel.sum(1, keepdims=True)

        shape_kernel = ga_kernel(getattr(model, "mean_kernel_weeks", MEAN_KERNEL_WEEKS))
        position_kernel = ga_kernel(getattr(model, "position_kernel_weeks", MEAN_KERNEL_WEEKS))
        rows = []
        for f, name in enumerate(names):
            field, labels = fields[name]
            points = apply_matrix(labels.voxel_to_ras, np.argwhere(labels.array > 0)[::20]).astype(np.float32)
            true = displacement(field, points)
            mean = 0.0                    # the shape kernel's mean, its position part over the position kernel's
            for j in range(len(names)):
                if max(shape_kernel[f, j], position_kernel[f, j]) >= 1e-4:
                    other = displacement(fields[names[j]][0], points)
                    position = other.mean(0)
                    mean = mean + shape_kernel[f, j] * (other - position) + position_kernel[f, j] * position
            with torch.no_grad():
                fitted = model.displacement(torch.from_numpy(points), torch.full((len(points),), f)).numpy()
            against_target = displacement_agreement(points, fitted, true - mean)
            against_target["rms_error_target"] = against_target.pop("rms_error")
            rows.append({"rms_true": float(np.sqrt((true ** 2).sum(1).mean())),
                         "rms_error": float(np.sqrt(((fitted - true) ** 2).sum(1).mean())), **against_target})
        result["displacement_error_mm"] = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    moved = slice_motion_agreement(run_dir, truth_json) if truth_json is not None else None
    if moved is not None:
        result["slice_motion_agreement"] = moved
    stacks = (stack_motion_agreement(run_dir, truth_json, transforms_json)
              if truth_json is not None and transforms_json is not None else None)
    if stacks is not None:
        result["stack_motion_agreement"] = stacks
    return result


def cached_diagnostics(run_dir: Path, library, sim_config, truth_json: Path, cache: Path,
                       transforms_json: Path | None = None) -> dict:
    """:func:`run_diagnostics`, kept in ``cache`` (JSON) with what it was computed from (the run's checkpoint,
    by size and modification time, and the simulator's truth, by content: the simulation stage rewrites the
    file) and reused while both are unchanged: ``{"result": ..., "reused": bool}``."""
    import hashlib

    from infanite.io.atomic import atomic_write_text
    from infanite.io.layout import CHECKPOINT

    stat = (run_dir / CHECKPOINT).stat()
    source = {"checkpoint": [stat.st_size, stat.st_mtime_ns],
              "truth_sha256": hashlib.sha256(truth_json.read_bytes()).hexdigest()}
    if cache.is_file():
        kept = json.loads(cache.read_text())
        if kept.get("source") == source:
            return {"result": kept["result"], "reused": True}
    result = run_diagnostics(run_dir, library, sim_config, truth_json, transforms_json=transforms_json)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({"source": source, "result": result}, indent=1,
                                        default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    return {"result": result, "reused": False}


# ------------------------------------------------------------------------------------------------ report

def metric_tables(metrics: dict, gas: list[float], names: list[str], truth_sharp: dict) -> str:
    from infanite.evaluation.report import format_metric

    keys = [f"{g:.1f}" for g in gas]
    header = "| GA | " + " | ".join(names) + " |"
    rule = "|---|" + "---|" * len(names)
    parts = []
    for key, title, digits, higher in METRICS:
        lines = [f"### {title} ({'higher' if higher else 'lower'} is better)", "", header, rule]
        for ga in keys:
            cells = [format_metric(metrics[n][ga][key], digits) for n in names]
            if key == "tct_test":
                label = f"{ga} (CRL {format_metric(metrics[names[0]][ga]['tct_reference'], digits)})"
            elif key == "sharpness":
                label = f"{ga} (CRL {format_metric(truth_sharp[ga], digits)})"
            else:
                label = ga
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        means = [format_metric(_mean([metrics[n][ga][key] for ga in keys]), digits) for n in names]
        lines.append("| **mean** | " + " | ".join(means) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def diagnostics_table(diagnostics: dict) -> str:
    """One row per INR run: agreement of the atlas with the mean of the per-fetus decodings (dB), sharpness at the
    diagnostic GA, mean per-fetus reconstruction against its own deformed truth (dB), latent norm, displacement
    error against the simulator's (template model)."""
    from infanite.evaluation.report import format_metric

    lines = ["| row | diagnostic GA | agreement (dB) | sharpness (1/mm) | fetus recon. vs own truth (dB) | "
             "latent norm | fitted displacement (mm): RMS error / true RMS | slice motion: RMS error / true RMS "
             "(mm at the slice centre; degrees), r | stacks' disagreement (mm): registered → with their motions |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, d in diagnostics.items():
        latent = d.get("latent_norms", {})
        nodes = latent.get("ga_nodes")
        latent_value = latent.get("gkr_latent", _mean(nodes) if nodes else math.nan)
        moved = d.get("displacement_error_mm")
        moved_text = "—"
        if moved:
            moved_text = f"{moved['rms_error']:.2f} / {moved['rms_true']:.2f}"
            if "correlation_nonaffine" in moved:
                moved_text += (f"; vs recoverable {moved['rms_error_target']:.2f} / {moved['rms_target']:.2f}; "
                               f"non-affine {moved['rms_error_nonaffine']:.2f}, r {moved['correlation_nonaffine']:.2f}"
                               f"; fitted affine part {moved['rms_fitted_affine']:.2f}")
        lines.append(f"| {name} | {d.get('ga_weeks', math.nan):.1f} | {format_metric(d.get('agreement_db'), 2)} | "
                     f"{format_metric(d.get('sharpness'), 4)} | "
                     f"{format_metric(d.get('fetus_reconstruction_db', {}).get('mean'), 2)} | "
                     f"{format_metric(latent_value, 2)} | {moved_text} | "
                     f"{slice_text(d.get('slice_motion_agreement'))} | {stack_text(d.get('stack_motion_agreement'))} |")
    return "\n".join(lines)


def stack_text(agreement: dict | None) -> str:
    if not agreement:
        return "—"
    return f"{agreement['between_stack_error_mm']:.2f} → {agreement['after_mm']:.2f}"


def slice_text(agreement: dict | None) -> str:
    if not agreement:
        return "—"
    a = agreement
    return (f"{a['translation_rms_error_mm']:.2f} / {a['translation_rms_true_mm']:.2f} mm, r "
            f"{a['translation_correlation']:.2f}; {a['rotation_rms_error_deg']:.2f} / "
            f"{a['rotation_rms_true_deg']:.2f}°, r {a['rotation_correlation']:.2f}")


def fetus_scores_around(scores: dict, fetus_ga: dict, ga: float, sigma_weeks: float = SIGMA_WEEKS) -> float:
    """The GKR mean (the atlas's Gaussian kernel, σ ``sigma_weeks`` over the fetuses' GAs) of per-fetus ``scores``
    (name → value) around ``ga`` weeks; NaN without scores."""
    from infanite.atlas.kernel import gkr_weights

    names = [n for n in scores if n in fetus_ga]
    if not names:
        return math.nan
    weights = gkr_weights([fetus_ga[n] for n in names], ga, sigma_weeks).weights
    return float(sum(w * scores[n] for w, n in zip(weights, names)))


def loss_location_table(metrics: dict, diagnostics: dict, fetus_ga: dict, gas: list[float]) -> str:
    """Per INR row and GA: the atlas's PSNR (mask) as measured and after the best affine intensity map of the atlas
    onto the truth, and the reconstruction of the fetuses scanned around that GA against their own deformed truth,
    both ways (Gaussian σ ``SIGMA_WEEKS`` over the fetuses' GAs).  Reading it: a fetus reconstruction far above the
    atlas means the loss is in averaging the fetuses (shapes not removed); a reconstruction at the atlas's level
    means the data fit itself is short; a large gap between a score and its affine version means the contrast
    (tissue intensities pulled toward their mean, the extremes not reached) costs that much."""
    from infanite.evaluation.report import format_metric

    keys = [f"{g:.1f}" for g in gas]
    lines = ["| row | " + " | ".join(f"{k}: atlas / affine; fetuses / affine" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, d in diagnostics.items():
        if name not in metrics:
            continue
        per_fetus = {n: v for n, v in d.get("fetus_reconstruction_db", {}).items() if n != "mean"}
        per_fetus_affine = {n: v for n, v in d.get("fetus_reconstruction_affine_db", {}).items() if n != "mean"}
        cells = []
        for k in keys:
            m = metrics[name][k]
            cells.append(f"{format_metric(m['psnr_mask_db'], 2)} / {format_metric(m.get('psnr_affine_mask_db'), 2)}; "
                         f"{format_metric(fetus_scores_around(per_fetus, fetus_ga, float(k)), 2)} / "
                         f"{format_metric(fetus_scores_around(per_fetus_affine, fetus_ga, float(k)), 2)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def position_table(metrics: dict, offsets: dict, names: list[str], gas: list[float]) -> str:
    """Per GA: each row's rigid offset from the CRL week (mm) and its PSNR (mask) as measured → after the best rigid
    alignment, beside the offsets of the neighbouring CRL weeks from that week and their midpoint (mm, RAS
    vectors): an atlas near the midpoint and far from zero is where a template smooth in GA must sit."""
    from infanite.evaluation.report import format_metric

    def vector(v) -> str:
        return "(" + ", ".join(f"{x:+.2f}" for x in v) + ")" if v is not None else "—"

    lines = ["| GA | " + " | ".join(f"{n}: offset (vector); PSNR → rigid" for n in names)
             + " | CRL week −1 | CRL week +1 | midpoint (norm) |", "|---|" + "---|" * (len(names) + 3)]
    for g in gas:
        k, w = f"{g:.1f}", int(round(g))
        o = offsets.get(k, {})
        cells = [f"{format_metric(metrics[n][k].get('rigid_offset_mm'), 2)} "
                 f"{vector(metrics[n][k].get('rigid_offset_ras_mm'))}; "
                 f"{format_metric(metrics[n][k]['psnr_mask_db'], 2)} → "
                 f"{format_metric(metrics[n][k].get('psnr_rigid_mask_db'), 2)}" for n in names]
        mid = o.get("midpoint_norm_mm")
        cells += [vector(o.get(f"week_{w - 1}_offset_mm")), vector(o.get(f"week_{w + 1}_offset_mm")),
                  f"{vector(o.get('midpoint_mm'))} ({format_metric(mid, 2) if mid is not None else '—'})"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ga_blur_table(metrics: dict, names: list[str], gas: list[float]) -> str:
    """Per GA and row: the PSNR (mask, dB) against the CRL week → against the mixture of CRL weeks it matches best,
    and that mixture's width (weeks, :func:`ga_blur`): 0 is an atlas as sharp in GA as the reference."""
    from infanite.evaluation.report import format_metric

    lines = ["| row | " + " | ".join(f"{g:.1f}" for g in gas) + " |", "|---|" + "---|" * len(gas)]
    for n in names:
        cells = []
        for g in gas:
            row = metrics[n][f"{g:.1f}"]
            sigma = row.get("ga_blur_sigma_weeks")
            cells.append(f"{format_metric(row['psnr_mask_db'], 2)} → {format_metric(row.get('ga_blur_psnr_db'), 2)}"
                         f" (σ {'—' if sigma is None else f'{sigma:g}'})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tissue_error_table(metrics: dict, names: list[str], gas: list[float]) -> str:
    """Per GA and row (``tissue_error``, :func:`~infanite.evaluation.metrics.intensity_error_by_label` against the
    CRL week's labels): the region's MSE and, per tissue (and *outside*, the dilation band), its own MSE (×1000,
    normalised intensities) with its signed mean error (×100; > 0: the atlas too bright there).  The rows of one GA
    share each tissue's voxels, so their MSEs compare directly; a line per GA gives each tissue's share of the
    region's voxels (%): a tissue's MSE gap times that share is what it costs the region's MSE."""
    from infanite.evaluation.report import format_metric
    from infanite.labels import default_label_table

    names = [n for n in names if any(metrics[n][f"{g:.1f}"].get("tissue_error") for g in gas)]
    if not names:
        return ""
    abbrev = {lab.value: lab.abbrev for lab in default_label_table().labels}
    first = next(metrics[n][f"{g:.1f}"]["tissue_error"] for n in names for g in gas
                 if metrics[n][f"{g:.1f}"].get("tissue_error"))
    values = list(first["per_label"])
    lines = ["| GA | row | MSE ×1000 | " + " | ".join(abbrev.get(int(v), str(v)) for v in values) + " | outside |",
             "|---|---|---|" + "---|" * (len(values) + 1)]

    def cell(part) -> str:
        if not part["fraction"]:
            return "—"
        return f"{format_metric(1000 * part['mse'], 2)} ({format_metric(100 * part['bias'], 1)})"

    for g in gas:
        found = {n: metrics[n][f"{g:.1f}"].get("tissue_error") for n in names}
        found = {n: t for n, t in found.items() if t}
        if not found:
            continue
        some = next(iter(found.values()))
        parts = [some["per_label"][v] for v in values] + [some["outside"]]
        lines.append(f"| {g:.1f} | voxels | | " + " | ".join(f"{100 * p['fraction']:.0f} %" for p in parts) + " |")
        for n, t in found.items():
            cells = [cell(t["per_label"][v]) for v in values] + [cell(t["outside"])]
            lines.append(f"| {g:.1f} | {n} | {format_metric(1000 * t['mse'], 2)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def boundary_error_table(metrics: dict, names: list[str], gas: list[float]) -> str:
    """Per GA and row (:func:`boundary_error`): the region's MSE (×1000, normalised intensities) and, per band of
    signed distance to the CRL brain boundary, the share of the squared error (%) with the atlas's and the
    truth's mean intensity there."""
    from infanite.evaluation.report import format_metric

    def band(row) -> str:
        def edge(v):
            return "" if v is None else f"{v:g}"
        return f"{edge(row['lo_mm'])}…{edge(row['hi_mm'])}"

    first = next((metrics[n][f"{g:.1f}"].get("boundary_error") for n in names for g in gas
                  if metrics[n][f"{g:.1f}"].get("boundary_error")), None)
    if first is None:
        return ""
    lines = ["| GA | row | MSE ×1000 | " + " | ".join(band(b) + " mm" for b in first["bins"]) + " |",
             "|---|---|---|" + "---|" * len(first["bins"])]
    for g in gas:
        for n in names:
            found = metrics[n][f"{g:.1f}"].get("boundary_error")
            if not found:
                continue
            cells = [f"{b['error_share_pct']:.0f} % ({format_metric(b['image_mean'], 2)} / "
                     f"{format_metric(b['truth_mean'], 2)})" for b in found["bins"]]
            lines.append(f"| {g:.1f} | {n} | {1000 * found['mse']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_checks(metrics: dict, gas: list[float]) -> list[dict]:
    """The issue's goals, each checked only when the rows it needs were measured (``--rows`` may leave some out).
    The best model is the best of a, a', g and gM (g with per-slice motion, the CPU default); never the oracle gT."""
    keys = [f"{g:.1f}" for g in gas]
    inr = [n for n in ("a", "a'", "g", "gM") if n in metrics]
    if not inr or "c" not in metrics:
        return []
    best = max(inr, key=lambda n: _mean([metrics[n][k]["psnr_mask_db"] for k in keys]))
    d_psnr = {k: metrics[best][k]["psnr_mask_db"] - metrics["c"][k]["psnr_mask_db"] for k in keys}
    d_dice = {k: metrics[best][k]["dice_mean"] - metrics["c"][k]["dice_mean"] for k in keys}
    need = {k: GOAL_PSNR_DB.get(float(k), 3.0) for k in keys}
    ok = all(d_psnr[k] >= need[k] for k in keys) and all(
        d_dice[k] >= GOAL_DICE for k in keys if need[k] >= 3.0)
    checks = [{"check": f"best INR row ({best}) beats c by ≥ 3 dB PSNR (mask) and ≥ {GOAL_DICE:g} mean Dice at GA "
                        f"26/30/34, ≥ 1.5 dB at 22/38", "pass": ok,
               "detail": "; ".join(f"GA {k}: ΔPSNR {d_psnr[k]:+.2f} dB (need {need[k]:+.1f}), ΔDice {d_dice[k]:+.4f}"
                                   for k in keys)}]
    if "oD" in metrics:
        above = {k: metrics[best][k]["psnr_mask_db"] - metrics["oD"][k]["psnr_mask_db"] for k in keys}
        checks.append({"check": f"best INR row ({best}) above the deformed-truth oracle oD (PSNR mask)",
                       "pass": all(v > 0 for v in above.values()),
                       "detail": "; ".join(f"GA {k}: {v:+.2f} dB" for k, v in above.items())})
    if "a" in metrics and "a'" in metrics:
        mean = {n: _mean([metrics[n][k]["psnr_mask_db"] for k in keys]) for n in ("a", "a'")}
        checks.append({"check": "a' above a (mean PSNR mask)", "pass": mean["a'"] > mean["a"],
                       "detail": "a' {:.2f} dB, a {:.2f} dB".format(mean["a'"], mean["a"])})
    return checks


def threshold_table(metrics: dict, gas: list[float]) -> str:
    """Per GA: the PSNR (mask) the goal asks of the best INR row (c + the margin) beside what the oracles reach
    (oS, the template model fitting every fetus exactly; oD, the cap of any intensity average); a threshold above
    oS is out of reach of the template model with this cohort, whatever its training."""
    keys = [f"{g:.1f}" for g in gas]
    if "c" not in metrics:
        return ""
    oracles = [n for n in ("oS", "oD", "oU") if n in metrics]
    lines = ["| GA | needed (c + margin) | " + " | ".join(oracles) + " |",
             "|---|---|" + "---|" * len(oracles)]
    for k in keys:
        need = metrics["c"][k]["psnr_mask_db"] + GOAL_PSNR_DB.get(float(k), 3.0)
        cells = [f"{metrics[n][k]['psnr_mask_db']:.2f}{' (below)' if metrics[n][k]['psnr_mask_db'] < need else ''}"
                 for n in oracles]
        lines.append(f"| {k} | {need:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main

def _describe(name: str) -> str:
    label, kind, options = ROWS[name]
    if kind == "inr":
        return f"{name} {label} [{' '.join(options)}]"
    if kind == "mean":
        return f"{name} {label}" + (" [W maps]" if options["use_weight_maps"] else "")
    return f"{name} {label}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="~40 min: 12 fetuses, 1,500 steps, with the ablations")
    mode.add_argument("--smoke", action="store_true", help="plumbing check only (tiny everything; no measurement)")
    parser.add_argument("--atlas-dir", type=Path, default=DEFAULT_ATLAS, help="CRL 2017 atlas folder")
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder outside the repository (default: a new temporary folder); reuse to resume")
    parser.add_argument("--json", type=Path, default=None, help="also write every setting, value and timing here")
    parser.add_argument("--subjects", type=int, default=None, help="fetuses (3 stacks each); default per mode")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of every INR row; default per mode (other counts train into "
                        "their own folders)")
    parser.add_argument("--position-sigma", type=float, default=None, metavar="WEEKS",
                        help="the template rows' atlases with 'infanite atlas --position-sigma WEEKS' (default: its "
                             "default), into their own atlas folders (the runs are shared)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="extra",
                        help="a training override of every INR row, after the row's own (repeatable; the rows "
                             "then train into their own folders), e.g. --set template.ga_latents=6")
    parser.add_argument("--jobs", type=int, default=2, help="registration worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of this process (default 2)")
    parser.add_argument("--device", default="cpu", help="training/atlas device (default cpu)")
    parser.add_argument("--no-slice-motion", action="store_true",
                        help="simulate without per-slice motion (a diagnostic: how much of the loss the motion costs)")
    parser.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                        help=f"only these rows ({', '.join(ROWS)}; default: every row of the mode)")
    args = parser.parse_args(argv)

    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = dict(MODES[mode_name])
    if args.subjects is not None:
        settings["subjects"] = args.subjects
    if args.steps is not None:
        settings["steps"] = args.steps
    atlas_dir = args.atlas_dir.resolve()
    if not (atlas_dir / "HarvardSTA30_Study1" / "srr.nii.gz").is_file():
        print(f"atlas_quality: the CRL 2017 fetal atlas is needed and was not found at {atlas_dir} "
              f"(expected HarvardSTA<week>_Study1/srr.nii.gz); give --atlas-dir", file=sys.stderr)
        return 2
    work_root = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="infanite-atlas-quality-"))
    if _inside(work_root, REPO):
        print(f"atlas_quality: --work {work_root} lies inside the repository; the CRL atlas is licensed for "
              f"non-commercial use only, so nothing derived from it may be written there: choose a folder outside "
              f"{REPO}", file=sys.stderr)
        return 2
    work = work_root / (f"{mode_name}_{settings['subjects']}x{STACKS_PER_SUBJECT}"
                        f"{'_no-slice-motion' if args.no_slice_motion else ''}")

    import torch

    torch.set_num_threads(max(1, args.threads))
    from infanite.reference.templates import TemplateLibrary
    from infanite.registration.register import RegisterOptions, register_cohort
    from infanite.simulation.stacks import SimulationConfig, simulate_cohort

    gas = settings["atlas_ga"]
    training = list(settings["training"]) + [f"max_steps={settings['steps']}", f"device={args.device}"]
    from infanite.inr.config import TrainConfigError
    from infanite.inr.config_loading import load_train_config

    if args.position_sigma is not None and not (math.isfinite(args.position_sigma) and args.position_sigma >= 0):
        print(f"atlas_quality: --position-sigma must be a number of weeks >= 0, got {args.position_sigma}",
              file=sys.stderr)
        return 2
    names = [n for n in ROWS if (settings["ablations"] or n not in ABLATIONS) and n not in ON_REQUEST]
    if args.rows:
        unknown = sorted(set(args.rows) - set(ROWS))
        if unknown:
            print(f"atlas_quality: unknown --rows {unknown}; rows are {', '.join(ROWS)}", file=sys.stderr)
            return 2
        names = [n for n in ROWS if n in args.rows]
    for name in [n for n in names if ROWS[n][1] == "inr"] or ["g"]:   # a bad --set is refused before any work,
        try:                                                            # with each INR row's own settings
            load_train_config(None, [o for o in training + list(ROWS[name][2]) + args.extra if "{" not in o])
        except TrainConfigError as exc:
            print(f"atlas_quality: --set (row {name}): {exc}", file=sys.stderr)
            return 2
    sim_config = SimulationConfig(n_subjects=settings["subjects"], stacks_per_subject=STACKS_PER_SUBJECT,
                                  ga_range=settings["ga_range"], seed=SEED,
                                  **({"motion_deg": 0.0, "motion_mm": 0.0} if args.no_slice_motion else {}))
    # the template rows size their GA nodes to the cohort as the CPU defaults of `infanite run` do
    from infanite.inr.config import template_ga_nodes
    from infanite.simulation.stacks import subject_ages

    ages = [float(a) for a in subject_ages(sim_config)]
    template_nodes = [f"template.ga_latents={template_ga_nodes(sim_config.n_subjects, max(ages) - min(ages))}"]
    print(f"# INFANiTE atlas quality benchmark — mode {mode_name}"
          f"{' (plumbing check, not a measurement)' if mode_name == 'smoke' else ''}\n")
    print(f"- cohort: {settings['subjects']} fetuses × {STACKS_PER_SUBJECT} stacks, GA {settings['ga_range'][0]:g}–"
          f"{settings['ga_range'][1]:g} weeks, simulated from {atlas_dir} (seed {SEED}, simulator defaults"
          f"{'; no per-slice motion' if args.no_slice_motion else ''})")
    print(f"- registration: register_cohort, real (orientation search + rigid NMI), {REGISTRATION_SPACING_MM:g} mm "
          f"grid, {args.jobs} job(s)")
    print(f"- atlas GAs: {', '.join(f'{g:g}' for g in gas)} weeks; INR atlases at {ATLAS_SPACING_MM:g} mm; GKR σ "
          f"{SIGMA_WEEKS} weeks; ground truth: the CRL week (evaluate_atlas, every atlas resampled onto the 0.8 mm "
          f"CRL grid)")
    print(f"- INR training (every INR row): {' '.join(training)}; template rows also {template_nodes[0]} "
          f"(sized to the cohort as `infanite run` does){'; then ' + ' '.join(args.extra) if args.extra else ''}")
    budget_rows = [n for n in names if n in RUN_BUDGET_ROWS] if mode_name == "full" and args.steps is None else []
    if budget_rows:
        print(f"- {', '.join(budget_rows)}: max_steps={CPU_TEMPLATE_STEPS} instead (the template model's budget in "
              f"`infanite run`'s CPU defaults)")
    print("- rows: " + "; ".join(_describe(n) for n in names))
    print(f"- machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, device {args.device}")
    print(f"- work folder: {work}\n")

    timer = Timer()
    library = TemplateLibrary.from_folder(atlas_dir)
    already = len(list((work / "sim" / "stacks").glob("*.truth.json"))) if (work / "sim" / "stacks").is_dir() else 0
    timer.run("simulate", lambda: simulate_cohort(sim_config, work / "sim", library=library),
              reused_if=lambda _: already >= sim_config.n_subjects)
    reg = timer.run("register", lambda: register_cohort(
        work / "sim" / "cohort.tsv", atlas_dir, work / "reg",
        RegisterOptions(spacing_mm=REGISTRATION_SPACING_MM, jobs=args.jobs)),
        reused_if=lambda r: not set(r["done"]) - set(r["skipped"]))
    if reg["failed"]:
        print(f"registration failed for {len(reg['failed'])} stack(s): {', '.join(sorted(reg['failed']))}")
    if not reg["done"]:
        print("atlas_quality: every stack failed to register", file=sys.stderr)
        return 1
    registered = work / "reg" / "registered.tsv"

    # INR rows trained for another number of steps than the mode's keep their own folders (never reused across)
    steps_suffix = "" if settings["steps"] == MODES[mode_name]["steps"] else f"_{settings['steps']}steps"
    steps_suffix += "".join("_" + re.sub(r"[^A-Za-z0-9]+", "-", item).strip("-") for item in args.extra)
    position_suffix = "" if args.position_sigma is None else f"_position-sigma-{args.position_sigma:g}"
    atlases, results = {}, {"train": {}, "atlas": {}, "diagnostics": {}}
    for name in names:
        label, kind, options = ROWS[name]
        key = folder_key(name) + (steps_suffix if kind == "inr" else "")
        out = atlases[name] = work / "atlases" / (key + (position_suffix if kind == "inr" else ""))
        if kind == "mean":
            results["atlas"][name] = timer.run(f"{name} {label}: atlas", lambda: mean_variant(
                registered, gas, out, options["use_weight_maps"]), reused_if=lambda r: not r["generated"])
        elif kind == "oracle":
            results["atlas"][name] = timer.run(f"{name} {label}: atlas", lambda: oracle_variant(
                library, sim_config, gas, out, options["deformed"], options.get("mean_shape", False)),
                reused_if=lambda r: not r["generated"])
        else:
            run_dir = work / "runs" / key
            sized = template_nodes if "model=template" in options else []
            if any("{oracle_deformations}" in o for o in options):
                fields = work / "oracle_deformations"
                timer.run(f"{name} {label}: the simulator's displacements", lambda: oracle_deformations(
                    work / "sim" / "truth.json", fields), reused_if=lambda r: not r["written"])
                options = [o.replace("{oracle_deformations}", str(fields)) for o in options]
            steps = [f"max_steps={CPU_TEMPLATE_STEPS}"] if name in budget_rows else []
            results["train"][name] = timer.run(f"{name} {label}: train", lambda: train_variant(
                registered, training + options + sized + steps + args.extra, run_dir),
                reused_if=lambda r: r["reused"])
            results["atlas"][name] = timer.run(f"{name} {label}: atlas", lambda: generate_variant(
                run_dir, gas, out, ATLAS_SPACING_MM, args.device, args.position_sigma),
                reused_if=lambda r: not r["generated"])
            results["diagnostics"][name] = timer.run(f"{name} {label}: diagnostics", lambda: cached_diagnostics(
                run_dir, library, sim_config, work / "sim" / "truth.json", work / "diagnostics" / f"{key}.json",
                work / "reg" / "transforms.json"),
                reused_if=lambda r: r["reused"])["result"]

    metrics = {}
    truth_sharp = truth_sharpness(atlas_dir, gas)
    for name in names:
        label = ROWS[name][0]
        evaluation = timer.run(f"{name} {label}: evaluate", lambda: evaluate_variant(
            atlases[name], atlas_dir, work / "eval" / atlases[name].name, gas), reused_if=lambda r: r["reused"])
        images = image_rows(atlases[name], atlas_dir, gas)
        metrics[name] = {ga: {**row, **images[ga]} for ga, row in evaluation["rows"].items()}

    print(f"\n## Results ({mode_name}; {settings['subjects']} fetuses, {settings['steps']} steps per INR row)\n")
    print("| row | what |\n|---|---|")
    for name in names:
        print(f"| {name} | {ROWS[name][0]} |")
    print()
    print(metric_tables(metrics, gas, names, truth_sharp))
    print("\n## Diagnostics of the INR runs\n")
    print(diagnostics_table(results["diagnostics"]))
    fetus_ga = {f"{i:04d}": age for i, age in enumerate(ages, 1)}
    print("\n## Where the loss is (PSNR mask dB of the atlas, and of the fetuses scanned around each GA against "
          "their own truth; each also after the best affine intensity map)\n")
    print(loss_location_table(metrics, results["diagnostics"], fetus_ga, gas))
    offsets = reference_offsets(atlas_dir, gas)
    print("\n## Position: each atlas's rigid offset from the CRL week (mm at the brain's centre) and its PSNR as "
          "measured → after the best rigid alignment, beside the neighbouring CRL weeks' own offsets (RAS mm)\n")
    print(position_table(metrics, offsets, names, gas))
    print("\n## Blur in GA: PSNR (mask, dB) against the CRL week → against the Gaussian mixture of the CRL weeks "
          "around it that each atlas matches best (σ, weeks; 0: the week itself)\n")
    print(ga_blur_table(metrics, names, gas))
    print("\n## Where in the brain: share of the squared error by signed distance to the CRL brain boundary (mm, "
          "+ outside; the PSNR's region; in brackets the atlas's / the truth's mean normalised intensity there)\n")
    print(boundary_error_table(metrics, names, gas))
    print("\n## Which tissue: each tissue's MSE (×1000, normalised intensities; the PSNR's region) and, in brackets, "
          "its mean signed error (×100; > 0: the atlas too bright there), by the CRL week's labels\n")
    print(tissue_error_table(metrics, names, gas))
    checks = goal_checks(metrics, gas)
    thresholds = threshold_table(metrics, gas)
    if thresholds:
        print("\n## The goal's PSNR thresholds against the oracles\n")
        print(thresholds)
    print("\n## Goal check\n")
    for c in checks:
        print(f"- **{'PASS' if c['pass'] else 'FAIL'}** {c['check']}: {c['detail']}")
    print("\n## Timings\n\n| stage | seconds | |\n|---|---|---|")
    for row in timer.rows:
        print(f"| {row['stage']} | {row['seconds']:.1f} | {'reused' if row['reused'] else ''} |")
    total = sum(r["seconds"] for r in timer.rows)
    print(f"| **total** | {total:.1f} | |")
    print("\n" + "; ".join(f"training {name}: {r['steps']}/{r['total_steps']} steps"
                           for name, r in results["train"].items()))
    if args.json:
        from infanite.evaluation.report import jsonable

        document = {"mode": mode_name, "settings": {**settings, "ga_range": list(settings["ga_range"]),
                                                    "stacks_per_subject": STACKS_PER_SUBJECT, "seed": SEED,
                                                    "sigma_weeks": SIGMA_WEEKS, "jobs": args.jobs,
                                                    "registration_spacing_mm": REGISTRATION_SPACING_MM,
                                                    "atlas_spacing_mm": ATLAS_SPACING_MM,
                                                    "threads": torch.get_num_threads(), "device": args.device,
                                                    "atlas_dir": str(atlas_dir), "work": str(work),
                                                    "training_overrides": training,
                                                    "template_overrides": template_nodes, "extra_overrides": args.extra,
                                                    "rows": {n: {"label": ROWS[n][0], "kind": ROWS[n][1],
                                                                 "options": ROWS[n][2]} for n in names}},
                    "registration": {"done": len(reg["done"]), "failed": reg["failed"]},
                    "truth_sharpness": truth_sharp, "reference_offsets": offsets, "metrics": metrics,
                    "goal_check": checks,
                    "timings": timer.rows, "stages": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(jsonable(document), indent=1, allow_nan=False) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
