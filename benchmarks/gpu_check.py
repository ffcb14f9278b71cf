"""One-command GPU check: training throughput and MFU, atlas time, a short quality run; ``gpu_check.json`` + ``.md``.

    bash benchmarks/gpu_check.sh [--out DIR]            # on a CUDA GPU: the paper's sizes, under 8 minutes
    python benchmarks/gpu_check.py --reduced --out DIR  # on a CPU: the same code at tiny sizes (tested in the suite)

Nothing is downloaded: every input is simulated (the built-in phantom).  Sections:

1. **Training throughput** — one full training step (jitter with the stacks' PSF, forward, the data term,
   backward, AdamW) at the paper configuration (H 1024, 5 layers, modulated [1,3,5], latents [256,3,3,3],
   600 stacks, 18,000 coordinates × P 16 = 288,000 samples, bf16 autocast): the paper model in the reference's
   naive mode (the whole latent grid copied per sample), ours eager and ours under ``torch.compile``; the
   deformation-aware template model (``model: template``, its GPU settings: the paper decoder with 6 GA latent
   nodes and an 8³ displacement grid for 200 fetuses) eager and compiled.  Samples/s (median of the timed steps),
   peak memory (``torch.cuda.max_memory_allocated``; the resident set on CPU), FLOPs per sample counted by
   ``torch.utils.flop_counter`` (forward + backward), MFU = FLOPs/s ÷ the GPU's dense bf16 peak.
2. **Atlas generation** — ``infanite atlas`` of 19 GAs (21–39 weeks) at 0.8 mm with the paper-size model on the
   phantom's field of view (140 × 160 × 140 voxels), wall time.  Goal: < 30 s.
3. **Quality** — the paper model and the template model trained for the same number of steps on a simulated
   phantom cohort (6 fetuses × 3 stacks, 25–33 weeks), atlases at 26/29/32 weeks against the phantom truth:
   PSNR in the brain and mean Dice.

``--reduced``: tiny sizes (H 64, 500 coordinates × P 4, 2 GAs at 3 mm, 20 steps), and ``torch.compile`` with the
``aot_eager`` backend (no C++ compiler needed): the same code paths in about a minute on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: dense bf16 peak of the GPUs we know (TFLOP/s)
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0}
PAPER = {"decoder": ["inr_decoder.hidden_size=1024", "inr_decoder.num_hidden_layers=5",
                     "inr_decoder.modulated_layers=[1,3,5]", "inr_decoder.latent_dim=[256,3,3,3]"],
         "stacks": 600, "fetuses": 200, "coords": 18_000, "psf": 16, "steps": 10, "warmup": 3,
         "atlas_gas": [float(g) for g in range(21, 40)], "atlas_spacing": 0.8,
         "quality_steps": 1500, "quality_samples": 18_000, "quality_psf": 8}
REDUCED = {"decoder": ["inr_decoder.hidden_size=64", "inr_decoder.num_hidden_layers=3",
                       "inr_decoder.modulated_layers=[1,3]", "inr_decoder.latent_dim=[16,3,3,3]"],
           "stacks": 24, "fetuses": 8, "coords": 500, "psf": 4, "steps": 2, "warmup": 1,
           "atlas_gas": [27.0, 29.0], "atlas_spacing": 3.0,
           "quality_steps": 20, "quality_samples": 1000, "quality_psf": 2}
N_OUTPUTS = 11                     # intensity + background + 8 labels + halo


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(kind: str, mode: str, compiled: bool, sizes: dict, device_name: str, reduced: bool) -> dict:
    """One case of section 1: samples/s, peak memory, FLOPs/sample, MFU."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from infanite.inr.build import build_model
    from infanite.inr.config_loading import load_train_config
    from infanite.inr.data import psf_jitter, split_psf_loss
    from infanite.inr.train import peak_memory_mb

    device = torch.device(device_name)
    torch.manual_seed(0)
    config = load_train_config(None, sizes["decoder"] + [f"model={kind}", "template.encoding=modulated"])
    n_stacks, n_fetus = sizes["stacks"], sizes["fetuses"]
    stack_fetus = [s % n_fetus for s in range(n_stacks)]
    fetus_ga = np.linspace(21.0, 38.0, n_fetus)
    ga = [float(fetus_ga[f]) for f in stack_fetus]
    model = build_model(config, n_stacks, N_OUTPUTS - 2, np.zeros(3), np.array([56.0, 64.0, 56.0]),
                        naive=mode == "naive", stack_fetus=stack_fetus, stack_ga_weeks=ga,
                        ga_range_weeks=(21.0, 38.0)).to(device)
    if kind == "template":
        model.use_deformation = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model, backend="aot_eager" if reduced or device.type != "cuda" else "inductor") \
        if compiled else model
    n_vox = max(4 * sizes["coords"], 100_000)
    coords = (torch.rand(n_vox, 3, device=device) * 2 - 1) * torch.tensor([50.0, 58.0, 50.0], device=device)
    intensity = torch.rand(n_vox, device=device)
    label = torch.randint(0, N_OUTPUTS - 1, (n_vox,), device=device)
    weight = torch.ones(n_vox, device=device)
    stack = torch.randint(0, n_stacks, (n_vox,), device=device)
    chol = torch.diag(torch.tensor([0.45, 0.45, 1.3], device=device)).expand(n_stacks, 3, 3).contiguous()
    class_weights = torch.ones(N_OUTPUTS - 1, device=device)
    amp = device.type == "cuda"
    p, n = sizes["psf"], sizes["coords"]

    def step(n_coords: int) -> None:
        idx = torch.randint(0, n_vox, (n_coords,), device=device)
        st = stack[idx]
        jitter = psf_jitter(coords[idx], chol[st], p)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            raw = forward(jitter.reshape(-1, 3), st.repeat_interleave(p)).float()
        loss = split_psf_loss(raw.reshape(n_coords, p, -1), intensity[idx], label[idx], weight[idx],
                              class_weights)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t_compile = time.perf_counter()
    for _ in range(sizes["warmup"]):
        step(n)
    _sync(device)
    warmup_s = time.perf_counter() - t_compile
    counter = FlopCounterMode(display=False)
    small = max(64, n // 16)
    with counter:                                      # FLOPs of forward + backward on the eager model
        idx = torch.arange(small, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            raw = model(psf_jitter(coords[idx], chol[stack[idx]], p).reshape(-1, 3),
                        stack[idx].repeat_interleave(p)).float()
        raw.square().mean().backward()
    flops_per_sample = counter.get_total_flops() / (small * p)
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(sizes["steps"]):
        t0 = time.perf_counter()
        step(n)
        _sync(device)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    samples_per_s = n * p / seconds
    result = {"model": kind, "mode": mode, "compiled": compiled, "coords": n, "psf": p, "samples": n * p,
              "seconds_per_step": seconds, "samples_per_s": samples_per_s, "peak_memory_mb": peak_memory_mb(device),
              "flops_per_sample": flops_per_sample, "warmup_s": warmup_s,
              "parameters": sum(q.numel() for q in model.parameters())}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        result["mfu"] = flops_per_sample * samples_per_s / (peak * 1e12) if peak else None
    return result


def _case(args_json: str) -> None:
    """A throughput case in a fresh process (its own peak memory, no compile cache shared)."""
    case = json.loads(args_json)
    print(json.dumps(throughput(**case)))


def run_throughput_case(case: dict) -> dict:
    import subprocess

    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"model": case["kind"], "mode": case["mode"], "compiled": case["compiled"],
                "error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def phantom_run(work: Path, sizes: dict, device: str, model: str, steps: int, n_subjects: int = 6,
                weeks=tuple(range(25, 34))) -> tuple[Path, dict]:
    """Train ``model`` for ``steps`` on a simulated phantom cohort (true poses); returns (run folder, cohort)."""
    from infanite.inr.config_loading import load_train_config
    from infanite.inr.train import train
    from infanite.simulation.stacks import tiny_phantom_cohort

    cohort_dir = work / f"cohort_{n_subjects}"
    if not (cohort_dir / "reg" / "registered.tsv").exists():
        tiny_phantom_cohort(cohort_dir, weeks=weeks, n_subjects=n_subjects, stacks_per_subject=3, register=True)
    cohort = {"registered": cohort_dir / "reg" / "registered.tsv", "templates": cohort_dir / "tpl"}
    overrides = sizes["decoder"] + [f"model={model}", f"max_steps={steps}", "epochs.train=100000",
                                    f"n_samples={sizes['quality_samples']}",
                                    f"psf.samples_per_epoch=[{sizes['quality_psf']}]", f"device={device}",
                                    f"checkpoint_every={max(steps, 1)}",
                                    f"template.deformation_warmup={steps // 3}"]
    run = work / f"run_{model}_{steps}"
    summary = train(cohort["registered"], load_train_config(None, overrides), run, overwrite=True)
    return run, {**cohort, "train_seconds": summary["seconds"]}


def atlas_time(work: Path, sizes: dict, device: str) -> dict:
    """Section 2: a paper-size model (2 steps trained: the time does not depend on the weights) → 19 GAs."""
    from infanite.atlas.generate import generate

    run, _ = phantom_run(work, sizes, device, "infanite", 2, n_subjects=2, weeks=(27, 28, 29))
    out = work / "atlas_time"
    t0 = time.perf_counter()
    result = generate(run, sizes["atlas_gas"], out, spacing_mm=sizes["atlas_spacing"], device=device,
                      overwrite=True, sigma_weeks=1.0)
    seconds = time.perf_counter() - t0
    manifest = json.loads((out / "atlas_manifest.json").read_text())
    shape = manifest["grid"]["shape"]
    return {"gas": len(result["generated"]), "spacing_mm": sizes["atlas_spacing"], "grid_shape": shape,
            "voxels_per_ga": int(shape[0] * shape[1] * shape[2]), "seconds": seconds,
            "seconds_per_ga": seconds / max(len(result["generated"]), 1)}


def quality(work: Path, sizes: dict, device: str) -> dict:
    """Section 3: the paper model and the template model, same steps, against the phantom truth."""
    from infanite.atlas.generate import generate
    from infanite.evaluation.against_reference import evaluate_atlas

    gas = [26.0, 29.0, 32.0]
    rows = {}
    for model in ("infanite", "template"):
        run, cohort = phantom_run(work, sizes, device, model, sizes["quality_steps"])
        t0 = time.perf_counter()
        generate(run, gas, work / f"atlas_{model}", spacing_mm=1.6, device=device, overwrite=True, sigma_weeks=1.5)
        atlas_s = time.perf_counter() - t0
        truth = work / "truth_templates"
        if not (truth / "templates.tsv").exists():
            from infanite.reference.phantom import write_phantom_templates

            write_phantom_templates(truth, [int(g) for g in gas], 1.6)
        document = evaluate_atlas(work / f"atlas_{model}", truth, work / f"eval_{model}", ga_weeks=gas)
        summary = document["summary"]
        rows[model] = {"train_seconds": cohort["train_seconds"], "atlas_seconds": atlas_s,
                       "psnr_mask_db": statistics.mean(float(r["psnr_mask_db"]) for r in summary),
                       "dice_mean": statistics.mean(float(r["dice_mean"]) for r in summary),
                       "steps": sizes["quality_steps"]}
    return rows


def markdown(report: dict) -> str:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    lines = [f"# INFANiTE GPU check ({report['device_name']}, {report['mode']})", "",
             f"{report['date']}; torch {report['torch']}; total {report['total_seconds']:.0f} s", "",
             "## Training throughput (one full step; bf16 autocast on CUDA)", "",
             "| model | mode | compile | coords × P | samples/s | s/step | peak memory MB | MFLOP/sample | MFU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["throughput"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['mode']} | {r['compiled']} | | failed: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['mode']} | {'yes' if r['compiled'] else 'no'} | {r['coords']} × {r['psf']}"
                     f" | {r['samples_per_s']:,.0f} | {r['seconds_per_step']:.4f} | {f(r['peak_memory_mb'], ',.0f')} | "
                     f"{r['flops_per_sample'] / 1e6:.3f} | {f(r.get('mfu') and 100 * r['mfu'], '.1f')}"
                     f"{'%' if r.get('mfu') else ''} |")
    for key, text in report["ratios"].items():
        lines.append(f"\n{key}: {text}")
    a = report["atlas"]
    lines += ["", "## Atlas generation", "",
              f"{a['gas']} GAs at {a['spacing_mm']} mm ({'×'.join(map(str, a['grid_shape']))} = "
              f"{a['voxels_per_ga']:,} voxels each): {a['seconds']:.1f} s ({a['seconds_per_ga']:.2f} s per GA)"
              + (f"; goal < 30 s: {'met' if a['seconds'] < 30 else 'missed'}" if report["mode"] == "full" else ""),
              "", "## Quality (phantom cohort, same steps)", "",
              "| model | steps | train s | atlas s | PSNR brain dB | mean Dice |", "|---|---|---|---|---|---|"]
    for model, r in report["quality"].items():
        lines.append(f"| {model} | {r['steps']} | {r['train_seconds']:.1f} | {r['atlas_seconds']:.1f} | "
                     f"{r['psnr_mask_db']:.2f} | {r['dice_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", default=None, help="default: cuda when PyTorch sees a GPU, else cpu")
    parser.add_argument("--reduced", action="store_true", help="tiny sizes (CPU; what the test suite runs)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        _case(args.case)
        return 0
    import logging

    import torch

    logging.getLogger("infanite").setLevel(logging.ERROR)      # the atlas's support notes: expected here
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU is visible to PyTorch; run with --reduced on a CPU", file=sys.stderr)
        return 2
    reduced = args.reduced or not device.startswith("cuda")
    sizes = REDUCED if reduced else PAPER
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cases = [("infanite", "naive", False), ("infanite", "ours", False), ("infanite", "ours", True),
             ("template", "ours", False), ("template", "ours", True)]
    results = []
    for kind, mode, compiled in cases:
        results.append(run_throughput_case({"kind": kind, "mode": mode, "compiled": compiled, "sizes": sizes,
                                            "device_name": device, "reduced": reduced}))
        print(f"gpu_check: {kind} {mode}{' compiled' if compiled else ''}: "
              f"{results[-1].get('samples_per_s', results[-1].get('error'))}", file=sys.stderr, flush=True)
    ok = {(r["model"], r["mode"], r["compiled"]): r for r in results if "error" not in r}
    ratios = {}
    naive, eager = ok.get(("infanite", "naive", False)), ok.get(("infanite", "ours", False))
    best = max((r for r in ok.values() if r["model"] == "infanite" and r["mode"] == "ours"),
               key=lambda r: r["samples_per_s"], default=None)
    if naive and best:
        ratios["paper model, best of ours / naive samples/s"] = (
            f"{best['samples_per_s'] / naive['samples_per_s']:.2f}× (goal ≥ 3×)")
    if eager and ok.get(("infanite", "ours", True)):
        ratios["paper model, compiled / eager samples/s"] = (
            f"{ok[('infanite', 'ours', True)]['samples_per_s'] / eager['samples_per_s']:.2f}×")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        atlas = atlas_time(work, sizes, device)
        print(f"gpu_check: atlas {atlas['gas']} GAs in {atlas['seconds']:.1f} s", file=sys.stderr, flush=True)
        scores = quality(work, sizes, device)
    report = {"mode": "reduced" if reduced else "full", "device": device,
              "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor()
              or "cpu", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
              "cpu_cores": os.cpu_count(), "sizes": sizes, "throughput": results, "ratios": ratios,
              "atlas": atlas, "quality": scores, "total_seconds": time.perf_counter() - t0}
    from infanite.io.atomic import atomic_write_text

    atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=1))
    atomic_write_text(out / "gpu_check.md", markdown(report))
    print(markdown(report))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
