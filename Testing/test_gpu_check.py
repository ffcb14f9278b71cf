"""``benchmarks/gpu_check.sh`` in its reduced CPU mode: every section runs and writes its report, so that the GPU
check cannot rot between the times a GPU is at hand."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_gpu_check_reduced_mode_measures_every_section(tmp_path):
    from training import flops_per_sample

    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--reduced", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "reduced"
    cases = {(r["model"], r["mode"], r["compiled"]): r for r in report["throughput"]}
    assert set(cases) == {("infanite", "naive", False), ("infanite", "ours", False), ("infanite", "ours", True),
                          ("template", "ours", False), ("template", "ours", True)}
    for r in cases.values():
        assert "error" not in r and r["samples_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert r["samples"] == 500 * 4
    # FLOPs counted by torch's flop counter ≈ 6 × the decoder's multiply-adds (H 64, 3 layers, [1,3], 16 channels)
    analytic = flops_per_sample(64, 3, [1, 3], [16, 3, 3, 3])
    for key in (("infanite", "naive", False), ("infanite", "ours", False)):
        assert abs(cases[key]["flops_per_sample"] / analytic - 1) < 0.15, (cases[key]["flops_per_sample"], analytic)
    assert report["atlas"]["gas"] == 2 and report["atlas"]["seconds"] > 0
    for model in ("infanite", "template"):
        row = report["quality"][model]
        assert row["steps"] == 20 and math.isfinite(row["psnr_mask_db"]) and 0 <= row["dice_mean"] <= 1
    md = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## Training throughput", "## Atlas generation", "## Quality"):
        assert heading in md
