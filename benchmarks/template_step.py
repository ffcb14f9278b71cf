"""The template model's training step on a CPU: seconds per step with float32 matrix products and with them
computed in bf16 (``cpu_matmul``), measured in the same run.

    python benchmarks/template_step.py --manifest REGISTERED.tsv [--config CONFIG.yaml] [--steps 60] [--json OUT]

Each case is the real ``infanite train`` in a fresh process (``--config`` as given, default: ``infanite train``'s
own CPU defaults for the cohort), the displacements and slice motions free from the first step (their warm-ups
set to 0, so every step costs what a step after the warm-ups does), ``--steps`` steps into a temporary folder.
Seconds per step: the median over the steps after the first ten, from the run's ``train_log.jsonl``
(``samples_per_s`` of each step: its coordinates × PSF samples over the step's wall time).  Cases: ``fp32``
(``cpu_matmul=fp32``, float32 throughout) and ``auto`` (bf16 products where the CPU multiplies bf16 natively; the
table says whether this one does).  Run it alone: anything else on the cores slows the steps.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = ("fp32", "auto")
SKIPPED_STEPS = 10


def seconds_per_step(manifest: Path, config: Path | None, mode: str, steps: int, work: Path) -> dict:
    """One case in a fresh process; returns its median seconds per step and what ``cpu_matmul`` did."""
    out = work / mode
    command = [sys.executable, "-m", "infanite", "train", "--manifest", str(manifest), "--out", str(out),
               *(["--config", str(config)] if config is not None else []), "--device", "cpu"]
    for setting in (f"max_steps={steps}", "template.deformation_warmup=0", "data.slice_motion_warmup=0",
                    f"cpu_matmul={mode}", "checkpoint_every=100000"):
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"template_step: infanite train failed for cpu_matmul={mode}:\n{done.stderr[-2000:]}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    from infanite.inr.config_loading import load_train_config

    coordinates = load_train_config(out / "config.yaml").n_samples               # per step (≤ the cohort's voxels)
    per_step = [coordinates * r["psf_samples"] / r["samples_per_s"] for r in log[SKIPPED_STEPS:]]
    first = next((line for line in done.stderr.splitlines() if line.startswith("train: model")), "")
    return {"seconds_per_step": statistics.median(per_step), "samples_per_step": coordinates * log[-1]["psf_samples"],
            "bf16": "computed in bf16" in first, "steps": len(log)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True, help="a registered.tsv (infanite register)")
    parser.add_argument("--config", type=Path, default=None, help="training config (default: the CPU defaults)")
    parser.add_argument("--steps", type=int, default=60, help=f"steps per case (the first {SKIPPED_STEPS} skipped)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not args.manifest.is_file():
        print(f"template_step: --manifest {args.manifest} is not a file", file=sys.stderr)
        return 2
    if args.steps <= SKIPPED_STEPS:
        print(f"template_step: --steps must exceed the {SKIPPED_STEPS} skipped, got {args.steps}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="infanite-template-step-") as tmp:
        results = {mode: seconds_per_step(args.manifest, args.config, mode, args.steps, Path(tmp)) for mode in CASES}
    base = results["fp32"]["seconds_per_step"]
    print("| cpu_matmul | bf16 products | s / step | samples / step | vs fp32 |")
    print("|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {'yes' if r['bf16'] else 'no'} | {r['seconds_per_step']:.3f} | {r['samples_per_step']} "
              f"| {base / r['seconds_per_step']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
