"""Why does the CPU-sized INFANiTE atlas not beat the stack means?  Training budget, model size and grid ceiling.

    python benchmarks/atlas_budget.py --work DIR [--atlas-dir CRL] [--threads 2] [--device cpu] [--json out.json]

Runs on the registered cohort of an earlier ``benchmarks/atlas_quality.py`` run (``--work`` is the same folder:
its ``full_40x3_1.6mm`` subfolder, or give ``--cohort`` for another one) and adds, in the same work folder
(outside the repository: the CRL licence), evaluated at the same GAs (22, 26, 30, 34, 38) against the CRL weeks:

  grid   the ground truth itself resampled onto the registered 1.6 mm grid (linear T2, nearest labels) and
         evaluated like every atlas (back onto the 0.8 mm CRL grid): the ceiling of any atlas on that grid;
  a      the quality benchmark's INFANiTE run (hidden 128, 3,000 steps), reused;
  a4x    the same model trained 4× longer (12,000 steps ≈ 5.6 epochs);
  a256   a wider, deeper model (hidden 256, 4 layers, modulated [1, 3], latents [64, 3, 3, 3]) for 6,000 steps;
  b, c   the GKR means of the quality benchmark, reused;
  b_truth, c_truth  the same means of the stacks resampled with their TRUE poses (the simulator's truth.json,
         ``register_cohort(..., fixed_transforms=truth.json)``): what the means reach with perfect registration.

Each row also gives the PSNR after the best affine intensity map of the atlas onto the truth (least squares over
the region) — the part of the PSNR gap that is only intensity mapping, not structure — and the final training
loss.  Training runs resume after a kill; a finished run and its evaluation are reused.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import atlas_quality as aq  # noqa: E402  (same folder; shares the quality benchmark's stages)

GAS = [22.0, 26.0, 30.0, 34.0, 38.0]
LONG = [o for o in aq.SMALL_TRAINING if not o.startswith(("max_steps", "checkpoint_every"))] + [
    "max_steps=12000", "checkpoint_every=500", "data.term=reference"]   # issue 5's runs: the reference data term
WIDE = [o for o in LONG if not o.startswith(("inr_decoder.hidden_size", "inr_decoder.num_hidden_layers",
                                             "inr_decoder.latent_dim", "max_steps"))] + [
    "inr_decoder.hidden_size=256", "inr_decoder.num_hidden_layers=4", "inr_decoder.latent_dim=[64,3,3,3]",
    "max_steps=6000"]
RUNS = {"a4x": ("hidden 128, 12,000 steps", LONG), "a256": ("hidden 256, 4 layers, 6,000 steps", WIDE)}


def grid_ceiling(run_dir: Path, atlas_dir: Path, out: Path, gas: list[float]) -> None:
    """The CRL weeks resampled onto the training grid of ``run_dir``, written as an atlas folder."""
    import numpy as np

    from infanite.atlas.predict import load_run
    from infanite.io.layout import atlas_filenames
    from infanite.io.images import save_nifti
    from infanite.io.resample import resample
    from infanite.reference.templates import TemplateLibrary

    grid = load_run(run_dir).training_grid
    library = TemplateLibrary.from_folder(atlas_dir)
    out.mkdir(parents=True, exist_ok=True)
    for ga in gas:
        names = atlas_filenames(ga)
        if all((out / names[k]).is_file() for k in ("T2w", "dseg")):
            continue
        template = library.get(ga)
        t2 = resample(template.t2w, grid, None, "linear")
        seg = resample(template.seg, grid, None, "nearest")
        save_nifti(t2.with_array(np.where(seg.array > 0, t2.array, 0).astype(np.float32)), out / names["T2w"])
        save_nifti(seg.with_array(seg.array.astype(np.uint8)), out / names["dseg"])


def affine_fit_psnr(atlas_dir: Path, atlas_ref: Path, gas: list[float]) -> dict:
    """PSNR (mask convention) after the least-squares affine intensity map of the atlas onto the truth."""
    import numpy as np

    from infanite.evaluation import metrics
    from infanite.io.layout import atlas_filenames
    from infanite.io.images import load_nifti
    from infanite.io.resample import resample
    from infanite.reference.templates import TemplateLibrary

    library = TemplateLibrary.from_folder(atlas_ref)
    result = {}
    for ga in gas:
        ref = library.get(ga)
        test = resample(load_nifti(atlas_dir / atlas_filenames(ga)["T2w"]), ref.t2w, None, "linear")
        region = metrics.brain_mask_region(ref.mask)
        x = test.array[region].astype(np.float64)
        y = metrics.minmax_normalise(ref.t2w.array, region)[region]
        design = np.stack([x, np.ones_like(x)], axis=1)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        mse = float(np.mean((design @ coef - y) ** 2))
        result[f"{ga:.1f}"] = 10 * math.log10(1 / mse)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the --work folder of benchmarks/atlas_quality.py")
    parser.add_argument("--cohort", default="full_40x3_1.6mm", help="subfolder of --work holding reg/ and runs/")
    parser.add_argument("--atlas-dir", type=Path, default=aq.DEFAULT_ATLAS, help="CRL 2017 atlas folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help="train only these runs (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    work = (args.work / args.cohort).resolve()
    registered = work / "reg" / "registered.tsv"
    if not registered.is_file() or not (work / "runs" / "a" / "checkpoint.pt").is_file():
        print(f"atlas_budget: {work} lacks reg/registered.tsv or runs/a; run benchmarks/atlas_quality.py "
              f"--work {args.work} first", file=sys.stderr)
        return 2
    if aq._inside(work, REPO):
        print("atlas_budget: the work folder lies inside the repository (CRL licence)", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(max(1, args.threads))
    from infanite.registration.register import RegisterOptions, register_cohort

    timer = aq.Timer()
    atlases = {"grid": work / "atlases" / "grid_ceiling", "a": work / "atlases" / "a",
               "b": work / "atlases" / "b", "c": work / "atlases" / "c"}
    timer.run("grid ceiling", lambda: grid_ceiling(work / "runs" / "a", args.atlas_dir, atlases["grid"], GAS))
    reg_truth = work / "reg_truth"
    timer.run("truth poses: resample", lambda: register_cohort(
        work / "sim" / "cohort.tsv", args.atlas_dir, reg_truth, RegisterOptions(spacing_mm=1.6, jobs=1),
        fixed_transforms=work / "sim" / "truth.json"))
    for name, use_w in (("b_truth", False), ("c_truth", True)):
        atlases[name] = work / "atlases" / name
        timer.run(f"{name}: atlas", lambda: aq.mean_variant(reg_truth / "registered.tsv", GAS, atlases[name], use_w),
                  reused_if=lambda r: not r["generated"])
    train_info = {}
    for name, (label, overrides) in RUNS.items():
        if args.only is not None and name not in args.only:
            continue
        run_dir = work / "runs" / name
        train_info[name] = timer.run(f"{name} ({label}): train", lambda: aq.train_variant(
            registered, overrides + [f"device={args.device}"], run_dir), reused_if=lambda r: r["reused"])
        atlases[name] = work / "atlases" / name
        timer.run(f"{name}: atlas", lambda: aq.generate_variant(run_dir, GAS, atlases[name], 1.6, args.device),
                  reused_if=lambda r: not r["generated"])

    rows = {}
    for name, folder in atlases.items():
        evaluation = timer.run(f"{name}: evaluate", lambda: aq.evaluate_variant(
            folder, args.atlas_dir, work / "eval" / ("grid_ceiling" if name == "grid" else name), GAS),
            reused_if=lambda r: r["reused"])
        fitted = affine_fit_psnr(folder, args.atlas_dir, GAS)
        rows[name] = {ga: {**evaluation["rows"][ga], "psnr_affine_db": fitted[ga]} for ga in evaluation["rows"]}

    losses = {}
    for name in ["a", *train_info]:
        log = work / "runs" / name / "train_log.jsonl"
        tail = [json.loads(line) for line in log.read_text().splitlines()[-200:]]
        losses[name] = {k: sum(e[k] for e in tail) / len(tail) for k in ("loss_intensity", "loss_seg")}

    keys = [f"{g:.1f}" for g in GAS]
    print("\n| atlas | PSNR mask dB | PSNR after affine fit dB | SSIM mask | mean Dice | HD95 mm | TCT | "
          "train L1 / CE (last 200 steps) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, per_ga in rows.items():
        mean = {k: aq._mean([per_ga[g][k] for g in keys]) for k in
                ("psnr_mask_db", "psnr_affine_db", "ssim_mask", "dice_mean", "hd95_mean_mm", "tct_test")}
        loss = losses.get(name)
        print(f"| {name} | {mean['psnr_mask_db']:.2f} | {mean['psnr_affine_db']:.2f} | {mean['ssim_mask']:.3f} | "
              f"{mean['dice_mean']:.3f} | {mean['hd95_mean_mm']:.2f} | {mean['tct_test']:.3f} | "
              + (f"{loss['loss_intensity']:.4f} / {loss['loss_seg']:.3f} |" if loss else "– |"))
    print("\nPer GA, PSNR mask dB / mean Dice:\n")
    print("| atlas | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, per_ga in rows.items():
        print(f"| {name} | " + " | ".join(f"{per_ga[g]['psnr_mask_db']:.2f} / {per_ga[g]['dice_mean']:.3f}"
                                         for g in keys) + " |")
    print("\n| stage | seconds | |\n|---|---|---|")
    for row in timer.rows:
        print(f"| {row['stage']} | {row['seconds']:.1f} | {'reused' if row['reused'] else ''} |")
    if args.json:
        from infanite.evaluation.report import jsonable

        args.json.write_text(json.dumps(jsonable({"rows": rows, "losses": losses, "train": train_info,
                                                  "timings": timer.rows}), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
