"""Quality benchmark of the INFANiTE atlas against non-learned baselines and its own ablations.

    python benchmarks/atlas_quality.py [--quick | --smoke] [--work DIR] [--json results.json]
                                       [--atlas-dir CRL] [--subjects N] [--spacing MM] [--jobs 2] [--threads 2]

Everything runs in one call, on one simulated cohort, and every variant is compared with the same ground truth.

Cohort.  ``infanite.simulation.stacks`` on the CRL 2017 atlas (``--atlas-dir``, default ``../shared/data/crl2017-fetal-
atlas`` next to the repository): ``--subjects`` fetuses (default 40) × 3 stacks (axial, coronal, sagittal), GA
stratified over 21–38 weeks, simulator defaults otherwise (3 mm slices + 0.3 mm gap, 1 mm in-plane, ±20°
obliquity, 2°/1 mm per-slice motion, 2 mm deformation, 3 % Rician noise, 20 % bias), seed 0.  The stacks are
registered for real (``register_cohort``: orientation search + rigid NMI, no ground-truth transforms, ``--jobs``
worker processes) and resampled onto one isotropic grid of ``--spacing`` mm (default 1.6 mm) over the CRL field
of view.

Variants (every atlas at GA 22, 26, 30, 34 and 38 weeks, on the registered grid):

  a  INFANiTE: train + generate, reduced CPU model (:data:`FULL_TRAINING`, the sizes of infanite.inr.config.CPU_DEFAULTS:
     modulated SIREN hidden 128, 3 layers, modulated [1, 3], latents [32, 3, 3, 3], 4,000 voxels per step,
     slice-aware PSF with P = 4 samples, AdamW lr 1e-3 / latents 1e-2 with cosine decay, no rigid refinement,
     3,000 steps (≈ 1.4 epochs of the 40-fetus cohort)); the atlas latent is the GKR of the stack latents
     (σ 0.5 weeks);
  b  GKR-weighted mean of the aligned stacks (:func:`infanite.evaluation.baselines.gkr_mean_atlas`, same kernel σ 0.5 weeks;
     per-stack min–max normalisation over the brain mask; weighted label vote with background; the INR atlas's
     label clean-up and zero intensity outside the labelled brain);
  c  as b, each stack's weight multiplied voxelwise by its observed/interpolated weight map W (1.6 / 0.8; a voxel
     outside a stack's mask votes background with 0.8, the INR's halo weight);
  d  INFANiTE with ``psf.mode=none`` (PSF-free training);
  e  INFANiTE with ``spatial_weighting.uniform=true`` (W maps ignored);
  f  INFANiTE trained on one stack per fetus (the first stack of each subject in ``registered.tsv``).

All INFANiTE variants use the same settings and step budget as a, except the switch named.  Ground truth is the
CRL atlas week itself (``evaluate_atlas`` against the CRL folder: each atlas is resampled onto the 0.8 mm CRL
grid).  Reported per variant and GA: PSNR and SSIM (mask = CRL brain mask dilated, and bbox conventions), mean
Dice, HD95 and ASD over the 8 labels, TCT (tissue contrast, CRL value in the header), volume L1 against the CRL
label volumes and against the normative table.  Goal check: a beats b and c by ≥ 2 dB PSNR (mask convention)
and ≥ 0.03 mean Dice at every GA; d and e worse than a (lower PSNR and lower Dice, averaged over the GAs).

Modes: default (full; sized for ~60 min on 2 CPU cores, estimated 30–50 min), ``--quick`` (12 fetuses, 600
training steps, same GAs; ~10 min), ``--smoke`` (development only: 3 fetuses over GA 25–31, atlases at GA 27 and
30, a tiny model (hidden 32, 2 layers, latents [8, 3, 3, 3], 1,000 voxels × P 2) trained 30 steps, a 2.4 mm grid —
checks the plumbing end to end, it is not a measurement).

Work folder.  Everything is written under ``--work`` (default: a new temporary folder, printed), in a subfolder
per mode, cohort size and grid spacing (e.g. ``full_40x3_1.6mm``); the CRL atlas is licensed for non-commercial
use only, so nothing derived from it may be written inside the repository (refused).  A rerun with the same
``--work`` resumes: the simulation and registration skip finished subjects/stacks, a finished training run is
reused (an unfinished one resumes exactly), atlas GAs already written are skipped and finished evaluations are
reused.  Every stage is timed (stages whose result came from an earlier call are marked "reused").

Threads.  ``--threads`` (default 2) sets torch's threads for training and atlas generation; registration runs
``--jobs`` processes of one thread each.  For development on a shared machine use ``--smoke --threads 1 --jobs 1``
with ``OMP_NUM_THREADS=1``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_ATLAS = REPO.parent / "shared" / "data" / "crl2017-fetal-atlas"

#: Model of the INFANiTE variants in the full run (infanite.inr.config.CPU_DEFAULTS sizes, a step budget, P = 4).
FULL_TRAINING = ["inr_decoder.hidden_size=128", "inr_decoder.num_hidden_layers=3",
                 "inr_decoder.modulated_layers=[1,3]", "inr_decoder.latent_dim=[32,3,3,3]", "n_samples=4000",
                 "epochs.train=20", "max_steps=3000", "checkpoint_every=250", "optimizer.lr_inr=1e-3",
                 "optimizer.lr_latent=1e-2", "inr_decoder.tf_dim=0", "psf.samples_per_epoch=[4]"]
QUICK_TRAINING = [o for o in FULL_TRAINING if not o.startswith(("max_steps", "checkpoint_every"))] + [
    "max_steps=600", "checkpoint_every=200"]
SMOKE_TRAINING = ["inr_decoder.hidden_size=32", "inr_decoder.num_hidden_layers=2",
                  "inr_decoder.modulated_layers=[1]", "inr_decoder.latent_dim=[8,3,3,3]", "n_samples=1000",
                  "epochs.train=20", "max_steps=30", "checkpoint_every=10", "optimizer.lr_inr=1e-3",
                  "optimizer.lr_latent=1e-2", "inr_decoder.tf_dim=0", "psf.samples_per_epoch=[2]"]

MODES = {
    "full": {"subjects": 40, "ga_range": (21.0, 38.0), "atlas_ga": [22.0, 26.0, 30.0, 34.0, 38.0],
             "spacing": 1.6, "training": FULL_TRAINING},
    "quick": {"subjects": 12, "ga_range": (21.0, 38.0), "atlas_ga": [22.0, 26.0, 30.0, 34.0, 38.0],
              "spacing": 1.6, "training": QUICK_TRAINING},
    "smoke": {"subjects": 3, "ga_range": (25.0, 31.0), "atlas_ga": [27.0, 30.0],
              "spacing": 2.4, "training": SMOKE_TRAINING},
}
STACKS_PER_SUBJECT = 3
SIGMA_WEEKS = 0.5
SEED = 0

#: name → (label, kind, extra training overrides or baseline options)
VARIANTS = {
    "a": ("INFANiTE", "inr", []),
    "b": ("GKR mean", "mean", {"use_weight_maps": False}),
    "c": ("GKR mean + W", "mean", {"use_weight_maps": True}),
    "d": ("no PSF", "inr", ["psf.mode=none"]),
    "e": ("uniform W", "inr", ["spatial_weighting.uniform=true"]),
    "f": ("single stack", "inr", []),
}

#: (key in evaluate's summary rows, table title, digits, higher is better)
METRICS = [("psnr_mask_db", "PSNR mask (dB)", 2, True), ("psnr_bbox_db", "PSNR bbox (dB)", 2, True),
           ("ssim_mask", "SSIM mask", 4, True), ("ssim_bbox", "SSIM bbox", 4, True),
           ("dice_mean", "mean Dice", 4, True), ("hd95_mean_mm", "HD95 (mm)", 2, False),
           ("asd_mean_mm", "ASD (mm)", 2, False), ("tct_test", "TCT", 3, True),
           ("vol_l1_reference", "volume L1 vs CRL", 4, False), ("vol_l1_normative", "volume L1 vs normative", 4, False)]

GOAL_PSNR_DB = 2.0
GOAL_DICE = 0.03


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


def single_stack_manifest(registered: Path, out: Path) -> Path:
    """``out`` (written next to ``registered``): its header and the first row of each fetus, lines unchanged."""
    from infanite.io.cohort import read_manifest
    from infanite.io.atomic import atomic_write_text

    cohort, problems = read_manifest(registered)
    if problems:
        raise SystemExit(f"{registered}: " + "; ".join(str(p) for p in problems))
    lines = registered.read_text().splitlines()
    keep, seen = [lines[0]], set()
    for record in cohort.stacks:              # manifest order: the first stack of each subject
        if record.subject not in seen:
            seen.add(record.subject)
            keep.append(lines[record.row - 1])
    return atomic_write_text(out, "\n".join(keep) + "\n")


# ------------------------------------------------------------------------------------------------ stages

def train_variant(manifest: Path, overrides: list[str], run_dir: Path) -> dict:
    """Train (or reuse/resume) one INFANiTE run; returns ``{"steps", "total_steps", "reused", "seconds"}``."""
    import torch

    from infanite.inr.train import train
    from infanite.io.layout import CHECKPOINT
    from infanite.inr.config_loading import load_train_config

    config = load_train_config(None, overrides)
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.exists():
        saved = load_train_config(run_dir / "config.yaml")
        if saved.to_dict() != config.to_dict():
            raise SystemExit(f"{run_dir} holds a run with other training settings; use another --work")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if int(state["global_step"]) >= int(state["total_steps"]):
            return {"steps": int(state["global_step"]), "total_steps": int(state["total_steps"]), "reused": True}
    summary = train(manifest, config, run_dir, resume=checkpoint.exists())
    return {"steps": summary["steps"], "total_steps": summary["total_steps"], "reused": False,
            "last_loss": summary["last"].get("loss")}


def generate_variant(run_dir: Path, gas: list[float], out: Path, spacing: float, device: str) -> dict:
    from infanite.atlas.generate import generate

    # overwrite: an atlas folder left from an earlier checkpoint of this run is replaced, not refused
    result = generate(run_dir, gas, out, spacing_mm=spacing, device=device, sigma_weeks=SIGMA_WEEKS, overwrite=True)
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


# ------------------------------------------------------------------------------------------------ report

def metric_tables(metrics: dict, gas: list[float], names: list[str]) -> str:
    from infanite.evaluation.report import format_metric

    keys = [f"{g:.1f}" for g in gas]
    header = "| GA | " + " | ".join(f"{n} {VARIANTS[n][0]}" for n in names) + " |"
    rule = "|---|" + "---|" * len(names)
    parts = []
    for key, title, digits, higher in METRICS:
        lines = [f"### {title} ({'higher' if higher else 'lower'} is better)", "", header, rule]
        for ga in keys:
            cells = [format_metric(metrics[n][ga][key], digits) for n in names]
            if key == "tct_test":
                ref = metrics[names[0]][ga]["tct_reference"]
                lines.append(f"| {ga} (CRL {format_metric(ref, digits)}) | " + " | ".join(cells) + " |")
            else:
                lines.append(f"| {ga} | " + " | ".join(cells) + " |")
        means = [format_metric(_mean([metrics[n][ga][key] for ga in keys]), digits) for n in names]
        lines.append("| **mean** | " + " | ".join(means) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def goal_checks(metrics: dict, gas: list[float]) -> list[dict]:
    keys = [f"{g:.1f}" for g in gas]
    checks = []
    for base in ("b", "c"):
        d_psnr = {ga: metrics["a"][ga]["psnr_mask_db"] - metrics[base][ga]["psnr_mask_db"] for ga in keys}
        d_dice = {ga: metrics["a"][ga]["dice_mean"] - metrics[base][ga]["dice_mean"] for ga in keys}
        ok = all(d_psnr[ga] >= GOAL_PSNR_DB and d_dice[ga] >= GOAL_DICE for ga in keys)
        detail = "; ".join(f"GA {ga}: ΔPSNR {d_psnr[ga]:+.2f} dB, ΔDice {d_dice[ga]:+.4f}" for ga in keys)
        checks.append({"check": f"a beats {base} ({VARIANTS[base][0]}) by ≥ {GOAL_PSNR_DB:g} dB PSNR (mask) and "
                                f"≥ {GOAL_DICE:g} mean Dice at every GA", "pass": ok, "detail": detail,
                       "delta_psnr_db": d_psnr, "delta_dice": d_dice})
    mean = {n: {k: _mean([metrics[n][ga][k] for ga in keys]) for k in ("psnr_mask_db", "dice_mean")}
            for n in metrics}
    for ablation in ("d", "e"):
        ok = (mean[ablation]["psnr_mask_db"] < mean["a"]["psnr_mask_db"]
              and mean[ablation]["dice_mean"] < mean["a"]["dice_mean"])
        wins = sum(metrics["a"][ga]["psnr_mask_db"] > metrics[ablation][ga]["psnr_mask_db"]
                   and metrics["a"][ga]["dice_mean"] > metrics[ablation][ga]["dice_mean"] for ga in keys)
        detail = (f"mean PSNR (mask) a {mean['a']['psnr_mask_db']:.2f} vs {ablation} "
                  f"{mean[ablation]['psnr_mask_db']:.2f} dB; mean Dice a {mean['a']['dice_mean']:.4f} vs {ablation} "
                  f"{mean[ablation]['dice_mean']:.4f}; a better on both at {wins}/{len(keys)} GAs")
        checks.append({"check": f"{ablation} ({VARIANTS[ablation][0]}) worse than a (lower mean PSNR and mean Dice "
                                f"over the GAs)", "pass": ok, "detail": detail})
    return checks


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="~10 min: 12 fetuses, 600 training steps")
    mode.add_argument("--smoke", action="store_true", help="plumbing check only (tiny everything; no measurement)")
    parser.add_argument("--atlas-dir", type=Path, default=DEFAULT_ATLAS, help="CRL 2017 atlas folder")
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder outside the repository (default: a new temporary folder); reuse to resume")
    parser.add_argument("--json", type=Path, default=None, help="also write every setting, value and timing here")
    parser.add_argument("--subjects", type=int, default=None, help="fetuses (3 stacks each); default per mode")
    parser.add_argument("--spacing", type=float, default=None, help="registered/atlas grid spacing in mm")
    parser.add_argument("--jobs", type=int, default=2, help="registration worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of this process (default 2)")
    parser.add_argument("--device", default="cpu", help="training/atlas device (default cpu)")
    args = parser.parse_args(argv)

    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = dict(MODES[mode_name])
    if args.subjects is not None:
        settings["subjects"] = args.subjects
    if args.spacing is not None:
        settings["spacing"] = args.spacing
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
    work = work_root / f"{mode_name}_{settings['subjects']}x{STACKS_PER_SUBJECT}_{settings['spacing']:g}mm"

    import torch

    torch.set_num_threads(max(1, args.threads))
    from infanite.registration.register import RegisterOptions, register_cohort
    from infanite.simulation.stacks import SimulationConfig, simulate_cohort
    from infanite.reference.templates import TemplateLibrary

    gas = settings["atlas_ga"]
    training = list(settings["training"]) + [f"device={args.device}"]
    sim_config = SimulationConfig(n_subjects=settings["subjects"], stacks_per_subject=STACKS_PER_SUBJECT,
                                  ga_range=settings["ga_range"], seed=SEED)
    print(f"# INFANiTE atlas quality benchmark — mode {mode_name}"
          f"{' (plumbing check, not a measurement)' if mode_name == 'smoke' else ''}\n")
    print(f"- cohort: {settings['subjects']} fetuses × {STACKS_PER_SUBJECT} stacks, GA {settings['ga_range'][0]:g}–"
          f"{settings['ga_range'][1]:g} weeks, simulated from {atlas_dir} (seed {SEED}, simulator defaults)")
    print(f"- registration: register_cohort, real (orientation search + rigid NMI), {settings['spacing']:g} mm grid, "
          f"{args.jobs} job(s)")
    print(f"- atlas GAs: {', '.join(f'{g:g}' for g in gas)} weeks; GKR σ {SIGMA_WEEKS} weeks; ground truth: the CRL "
          f"week (evaluate_atlas, atlases resampled onto the 0.8 mm CRL grid)")
    print(f"- INFANiTE training overrides: {' '.join(training)}")
    print("- variants: " + "; ".join(f"{n} {label}" + (f" [{' '.join(extra)}]" if kind == "inr" and extra else "")
                                     + (" [W maps]" if kind == "mean" and extra["use_weight_maps"] else "")
                                     for n, (label, kind, extra) in VARIANTS.items()))
    print(f"- machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, device {args.device}")
    print(f"- work folder: {work}\n")

    timer = Timer()
    library = TemplateLibrary.from_folder(atlas_dir)
    already = len(list((work / "sim" / "stacks").glob("*.truth.json"))) if (work / "sim" / "stacks").is_dir() else 0
    timer.run("simulate", lambda: simulate_cohort(sim_config, work / "sim", library=library),
              reused_if=lambda _: already >= sim_config.n_subjects)
    reg = timer.run("register", lambda: register_cohort(
        work / "sim" / "cohort.tsv", atlas_dir, work / "reg",
        RegisterOptions(spacing_mm=settings["spacing"], jobs=args.jobs)),
        reused_if=lambda r: not set(r["done"]) - set(r["skipped"]))
    if reg["failed"]:
        print(f"registration failed for {len(reg['failed'])} stack(s): {', '.join(sorted(reg['failed']))}")
    if not reg["done"]:
        print("atlas_quality: every stack failed to register", file=sys.stderr)
        return 1
    registered = work / "reg" / "registered.tsv"
    single = single_stack_manifest(registered, work / "reg" / "registered_single_stack.tsv")

    atlases, results = {}, {"train": {}, "atlas": {}}
    for name, (label, kind, extra) in VARIANTS.items():
        out = work / "atlases" / name
        atlases[name] = out
        if kind == "mean":
            results["atlas"][name] = timer.run(f"{name} {label}: atlas", lambda: mean_variant(
                registered, gas, out, extra["use_weight_maps"]), reused_if=lambda r: not r["generated"])
            continue
        run_dir = work / "runs" / name
        manifest = single if name == "f" else registered
        results["train"][name] = timer.run(f"{name} {label}: train", lambda: train_variant(
            manifest, training + extra, run_dir), reused_if=lambda r: r["reused"])
        results["atlas"][name] = timer.run(f"{name} {label}: atlas", lambda: generate_variant(
            run_dir, gas, out, settings["spacing"], args.device), reused_if=lambda r: not r["generated"])

    metrics = {}
    for name, (label, _, _) in VARIANTS.items():
        evaluation = timer.run(f"{name} {label}: evaluate", lambda: evaluate_variant(
            atlases[name], atlas_dir, work / "eval" / name, gas), reused_if=lambda r: r["reused"])
        metrics[name] = evaluation["rows"]

    names = list(VARIANTS)
    print(f"\n## Results ({mode_name}; {settings['subjects']} fetuses, {settings['spacing']:g} mm)\n")
    print(metric_tables(metrics, gas, names))
    checks = goal_checks(metrics, gas)
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
        document = {"mode": mode_name, "settings": {**settings, "ga_range": list(settings["ga_range"]),
                                                    "stacks_per_subject": STACKS_PER_SUBJECT, "seed": SEED,
                                                    "sigma_weeks": SIGMA_WEEKS, "jobs": args.jobs,
                                                    "threads": torch.get_num_threads(), "device": args.device,
                                                    "atlas_dir": str(atlas_dir), "work": str(work),
                                                    "training_overrides": training,
                                                    "variants": {n: {"label": v[0], "kind": v[1], "options": v[2]}
                                                                 for n, v in VARIANTS.items()}},
                    "registration": {"done": len(reg["done"]), "failed": reg["failed"]},
                    "metrics": metrics, "goal_check": checks, "timings": timer.rows, "stages": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        from infanite.evaluation.report import jsonable

        args.json.write_text(json.dumps(jsonable(document), indent=1, allow_nan=False) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
