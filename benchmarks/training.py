"""Benchmark of one INR training step: samples/s and peak memory, ours against the reference's naive latents.

    python benchmarks/training.py [--device cpu|cuda] [--quick] [--json results.json]
    python benchmarks/training.py --nproc 2 [--steps 40] [--json scaling.json]

``--nproc N`` measures data-parallel scaling instead: the real ``infanite train`` (CPU defaults: the model and
batch ``infanite run`` trains on a CPU) on a simulated phantom cohort, in 1 process (torch's default threads, and
one thread) and in N processes (``--nproc N``: torchrun, gloo on CPU, one thread each; NCCL with ``--device
cuda``), in the same run.  Per-step time is the median over the steps after the first five, from rank 0's
``train_log.jsonl`` (``samples_per_s`` of the global batch, the all-reduce included).  Speed-ups are given
against one process on all cores and against one single-thread process (torchrun gives each rank one thread);
scaling efficiency = the latter ÷ N.

A *sample* is one jittered coordinate: a step of N coordinates at PSF size P processes N·P samples.  Each case
runs a full training step — index a packed cohort, jitter with each stack's PSF, forward, weighted loss,
backward, AdamW — in a fresh process, after one warm-up step (optimizer state allocated).  Modes, measured in
the same run:

  naive     the reference: the whole latent grid copied per sample, then ``grid_sample``; plain autograd;
  8-vertex  our 8-neighbour latent gather, plain autograd;
  ours      8-neighbour gather + the memory-lean trunk (saves pre-activations only) — the default.

Configurations: the tiny CPU configuration of the tests (H 64, 3 layers, modulated [1,3], latents [16,3,3,3],
2000 coordinates, 24 stacks) at P 4 and 16, and the paper's (H 1024, 5 layers, modulated [1,3,5], latents
[256,3,3,3], 600 stacks, 18,000 coordinates, P 16 = 288,000 samples).  On CPU the paper step is measured at two
reduced sizes (18k and 36k samples); per-sample memory is the slope between them and the full step's memory is
extrapolated from it — the naive mode's full step does not fit in this machine's RAM.  Unless ``--quick``, our
full 288k-sample step is also run when it fits in 80 % of the available RAM, to check the extrapolation.

Memory: on CPU, the rise of the resident set over the step (``/proc/self/status`` VmHWM reset through
``clear_refs``; glibc's mmap threshold is pinned low so that freed blocks leave the resident set); on CUDA,
``torch.cuda.max_memory_allocated`` minus the memory held before the step.  On CUDA the step runs in bf16
autocast and MFU = model FLOPs/s ÷ the GPU's dense bf16 peak (H100/H200: 989 TFLOP/s), model FLOPs = 6 × the
forward multiply–adds per sample (41 MFLOP at the paper's settings).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY = dict(hidden=64, layers=3, modulated=[1, 3], latent=[16, 3, 3, 3], stacks=24)
PAPER = dict(hidden=1024, layers=5, modulated=[1, 3, 5], latent=[256, 3, 3, 3], stacks=600)
MODES = ("naive", "8-vertex", "ours")
N_OUTPUTS = 11                      # intensity + background + 8 labels + halo
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def flops_per_sample(hidden: int, layers: int, modulated: list, latent: list, n_out: int = N_OUTPUTS) -> float:
    """Model FLOPs per sample for forward + backward (6 × forward multiply–adds)."""
    channels = latent[0]
    macs = 3 * hidden + layers * hidden ** 2 + len(modulated) * channels * 2 * hidden + (hidden + channels) * n_out
    return 6.0 * macs


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def child(case: dict) -> dict:
    """One case in this (fresh) process; returns its measurements."""
    import torch

    from infanite.inr.data import psf_jitter, weighted_loss
    from infanite.inr.model import ModulatedSiren

    device = torch.device(case["device"])
    if case.get("threads"):
        torch.set_num_threads(int(case["threads"]))
    torch.manual_seed(0)
    cfg = case["config"]
    model = ModulatedSiren(cfg["stacks"], N_OUTPUTS, [0.0, 0.0, 0.0], [60.0, 70.0, 60.0], cfg["hidden"],
                           cfg["layers"], cfg["modulated"], cfg["latent"], naive=case["mode"] == "naive",
                           lean=case["mode"] == "ours").to(device)
    optimizer = torch.optim.AdamW([{"params": [p for n, p in model.named_parameters() if n != "latents"]},
                                   {"params": [model.latents], "lr": 5e-4}], lr=1e-4)
    n_vox = max(4 * case["coords"], 200_000)
    coords_mm = (torch.rand(n_vox, 3, device=device) * 2 - 1) * torch.tensor([55.0, 65.0, 55.0], device=device)
    intensity = torch.rand(n_vox, device=device)
    label = torch.randint(0, 10, (n_vox,), device=device)
    weight = torch.rand(n_vox, device=device) + 0.5
    stack = torch.randint(0, cfg["stacks"], (n_vox,), device=device)
    chol = torch.diag(torch.tensor([0.45, 0.45, 1.3], device=device)).expand(cfg["stacks"], 3, 3).contiguous()
    class_weights = torch.ones(10, device=device)
    use_amp = device.type == "cuda"
    samples = case["psf"]

    def step(n_coords: int) -> None:
        idx = torch.randint(0, n_vox, (n_coords,), device=device)
        st = stack[idx]
        jitter = psf_jitter(coords_mm[idx], chol[st], samples)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            raw = model(jitter.reshape(-1, 3), st.repeat_interleave(samples))
            pred = raw.float().reshape(n_coords, samples, -1).mean(1)
            loss = weighted_loss(pred, intensity[idx], label[idx], weight[idx], class_weights)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    measure_memory = case.get("measure", "both") in ("memory", "both")
    step(case["coords"] if not measure_memory or device.type == "cuda" else min(case["coords"], 256))  # warm-up
    if device.type == "cuda":
        step(case["coords"])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        import gc

        gc.collect()
        before = _status_kb("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")     # reset the peak resident set (VmHWM)
    t0 = time.perf_counter()
    for _ in range(case["steps"]):
        step(case["coords"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / case["steps"]
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status_kb("VmHWM") * 1024)
    n_samples = case["coords"] * samples
    result = {**case, "samples": n_samples, "seconds_per_step": seconds, "samples_per_s": n_samples / seconds,
              "step_memory_mb": (peak - before) / 2 ** 20 if measure_memory else None, "peak_mb": peak / 2 ** 20}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak_tflops = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        flops = flops_per_sample(cfg["hidden"], cfg["layers"], cfg["modulated"], cfg["latent"])
        result["gpu"] = name
        result["mfu"] = flops * result["samples_per_s"] / (peak_tflops * 1e12) if peak_tflops else None
    return result


def _run_child(case: dict, env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        return {**case, "error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_case(case: dict) -> dict:
    """On CUDA one process measures both; on CPU memory (glibc returning freed blocks at once, which costs page
    faults) and speed (default allocator, warm-up at full size) are measured in two fresh processes."""
    if case["device"].startswith("cuda"):
        return _run_child({**case, "measure": "both"}, dict(os.environ))
    memory = _run_child({**case, "measure": "memory", "steps": 1}, dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))
    speed = _run_child({**case, "measure": "speed"}, dict(os.environ))
    if "error" in memory or "error" in speed:
        return memory if "error" in memory else speed
    return {**speed, "step_memory_mb": memory["step_memory_mb"]}


def available_ram_mb() -> float:
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemAvailable:\s+(\d+)", text).group(1)) / 1024


def scaling(nproc: int, steps: int, device: str, json_path: str | None) -> None:
    """``--nproc``: per-step time and scaling efficiency of ``infanite train`` in 1 and ``nproc`` processes."""
    import statistics
    import tempfile

    from infanite.inr.config import default_overrides
    from infanite.simulation.stacks import tiny_phantom_cohort

    work = Path(tempfile.mkdtemp(prefix="infanite-scaling-"))
    cohort = tiny_phantom_cohort(work / "cohort", n_subjects=4, stacks_per_subject=3, register=True)
    overrides = default_overrides("cpu") + [f"max_steps={steps}", "checkpoint_every=100000", f"device={device}"]
    cases = [("1 process", 1, None), ("1 process, 1 thread", 1, "1"), (f"{nproc} processes", nproc, None)]
    if device.startswith("cuda"):
        cases = [c for c in cases if c[2] is None]
    rows = []
    for name, n, threads in cases:
        out = work / name.replace(" ", "_").replace(",", "")
        env = dict(os.environ, **({"OMP_NUM_THREADS": threads} if threads else {}))
        cmd = [sys.executable, "-m", "infanite", "train", "--manifest", str(cohort["registered"]), "--out", str(out),
               *[a for o in overrides for a in ("--set", o)]] + (["--nproc", str(n)] if n > 1 else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            rows.append({"case": name, "processes": n, "error": proc.stderr.strip().splitlines()[-1][:200]})
            continue
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        rate = statistics.median(r["samples_per_s"] for r in log[5:])
        batch = log[-1]["psf_samples"] * next(int(o.split("=")[1]) for o in overrides if o.startswith("n_samples="))
        rows.append({"case": name, "processes": n,
                     "threads_per_process": threads or ("1" if n > 1 and not device.startswith("cuda")
                                                        else str(torch_threads())),
                     "samples_per_s": rate, "seconds_per_step": batch / rate, "final_loss": log[-1]["loss"]})
    base = next((r for r in rows if r["case"] == "1 process" and "error" not in r), None)
    single = next((r for r in rows if r["case"] == "1 process, 1 thread" and "error" not in r), base)
    print(f"\n## Data-parallel training ({device}, {os.cpu_count()} CPU cores; {steps} steps of the CPU defaults on a "
          f"4-fetus × 3-stack phantom cohort)\n")
    print("| case | processes | threads/process | s/step | samples/s | speed-up vs 1 process (all threads) | "
          "speed-up vs 1 process × 1 thread | scaling efficiency |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | {r['processes']} | | failed: {r['error']} | | | |")
            continue
        speedup = r["samples_per_s"] / base["samples_per_s"] if base else None
        per_process = r["samples_per_s"] / single["samples_per_s"] if single else None
        r["speedup"], r["speedup_vs_one_thread"] = speedup, per_process
        r["efficiency"] = per_process / r["processes"] if per_process and r["case"] != "1 process" else None
        print(f"| {r['case']} | {r['processes']} | {r['threads_per_process']} | {r['seconds_per_step']:.3f} | "
              f"{r['samples_per_s']:,.0f} | {fmt(speedup, '.2f')}× | {fmt(per_process, '.2f')}× | "
              f"{fmt(r['efficiency'] and 100 * r['efficiency'], '.0f')}{'%' if r['efficiency'] else ''} |")
    losses = {r["case"]: r["final_loss"] for r in rows if "error" not in r}
    print(f"\nFinal loss after {steps} steps (the same global batch, so the same curve): "
          + ", ".join(f"{k} {v:.6f}" for k, v in losses.items()))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def fmt(value, spec=".0f") -> str:
    return "—" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer steps; skip the full-size CPU check")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per case (default: torch's)")
    parser.add_argument("--nproc", type=int, default=None,
                        help="measure data-parallel scaling of 'infanite train' in 1 and N processes instead")
    parser.add_argument("--steps", type=int, default=40, help="--nproc: training steps per case")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.nproc:
        scaling(args.nproc, args.steps, args.device, args.json)
        return
    cuda = args.device.startswith("cuda")
    results = []
    tiny_steps = 5 if args.quick else 20
    for psf in (4, 16):
        for mode in MODES:
            results.append(run_case({"name": "tiny", "config": TINY, "mode": mode, "coords": 2000, "psf": psf,
                                     "steps": tiny_steps, "device": args.device, "threads": args.threads}))
    paper_sizes = [18_000] if cuda else [1125, 2250]        # coordinates at P 16
    for coords in paper_sizes:
        for mode in MODES:
            results.append(run_case({"name": "paper", "config": PAPER, "mode": mode, "coords": coords, "psf": 16,
                                     "steps": 3 if cuda or not args.quick else 1, "device": args.device,
                                     "threads": args.threads}))
    threads = f", {args.threads} torch thread(s)" if args.threads else ""
    print(f"\n## Training step benchmark ({args.device}, {os.cpu_count()} CPU cores{threads})\n")
    print("| config | mode | coords × P | samples/s | step memory MB | KB/sample | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | {r['mode']} | {r['coords']} × {r['psf']} | failed: {r['error']} | | | |")
            continue
        print(f"| {r['name']} | {r['mode']} | {r['coords']} × {r['psf']} | {r['samples_per_s']:,.0f} | "
              f"{r['step_memory_mb']:,.0f} | {r['step_memory_mb'] * 1024 / r['samples']:.1f} | "
              f"{fmt(r.get('mfu') and 100 * r['mfu'], '.1f')}{'%' if r.get('mfu') else ''} |")
    summary = []
    for name, psf in (("tiny", 4), ("tiny", 16), ("paper", 16)):
        rows = {r["mode"]: r for r in results if r["name"] == name and r["psf"] == psf and "error" not in r
                and r["coords"] == max(x["coords"] for x in results if x["name"] == name)}
        if "naive" in rows and "ours" in rows:
            summary.append((name, psf, rows["naive"], rows["ours"]))
    print("\n| config | P | memory naive / ours | speed ours / naive |")
    print("|---|---|---|---|")
    for name, psf, naive, ours in summary:
        print(f"| {name} | {psf} | {naive['step_memory_mb'] / ours['step_memory_mb']:.2f}× | "
              f"{ours['samples_per_s'] / naive['samples_per_s']:.2f}× |")
    if not cuda:
        full = 18_000 * 16
        print(f"\nPaper step (18,000 × 16 = {full:,} samples), extrapolated from the per-sample slope:\n")
        print("| mode | KB/sample (slope) | fixed MB | extrapolated step memory GB |")
        print("|---|---|---|---|")
        extrapolated = {}
        for mode in MODES:
            small, large = ([r for r in results if r["name"] == "paper" and r["mode"] == mode and "error" not in r
                             and r["coords"] == c] for c in paper_sizes)
            if not small or not large:
                continue
            slope = (large[0]["step_memory_mb"] - small[0]["step_memory_mb"]) / (large[0]["samples"]
                                                                                 - small[0]["samples"])
            fixed = small[0]["step_memory_mb"] - slope * small[0]["samples"]
            extrapolated[mode] = fixed + slope * full
            print(f"| {mode} | {slope * 1024:.1f} | {fixed:.0f} | {extrapolated[mode] / 1024:.1f} |")
        if "naive" in extrapolated and "ours" in extrapolated:
            print(f"\nExtrapolated full-step memory, naive / ours: {extrapolated['naive'] / extrapolated['ours']:.2f}×")
        if not args.quick and "ours" in extrapolated:
            if extrapolated["ours"] < 0.8 * available_ram_mb():
                r = _run_child({"name": "paper-full", "config": PAPER, "mode": "ours", "coords": 18_000, "psf": 16,
                                "steps": 1, "device": args.device, "measure": "memory"},
                               dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))
                results.append(r)
                if "error" in r:
                    print(f"\nFull paper step (ours) failed: {r['error']}")
                else:
                    print(f"\nFull paper step (ours), measured: {r['step_memory_mb'] / 1024:.1f} GB step memory "
                          f"(extrapolated {extrapolated['ours'] / 1024:.1f} GB), {r['seconds_per_step']:.0f} s "
                          f"including first-touch page faults")
            else:
                print(f"\nFull paper step (ours) skipped: needs ~{extrapolated['ours'] / 1024:.1f} GB, "
                      f"{available_ram_mb() / 1024:.1f} GB available")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
