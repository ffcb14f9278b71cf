"""The atlas-quality benchmark's goal checks on known numbers (no CRL data, no training)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "atlas_quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("atlas_quality", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(psnr: dict, dice: float = 0.8) -> dict:
    return {f"{g:.1f}": {"psnr_mask_db": v, "dice_mean": dice} for g, v in psnr.items()}


GAS = [22.0, 26.0, 30.0, 34.0, 38.0]


def test_the_goal_passes_only_with_the_margins_the_issue_asks(quality):
    c = _rows({g: 16.0 for g in GAS}, dice=0.70)
    good = _rows({22.0: 17.6, 26.0: 19.1, 30.0: 19.1, 34.0: 19.1, 38.0: 17.6}, dice=0.76)
    short = _rows({22.0: 17.6, 26.0: 18.9, 30.0: 19.1, 34.0: 19.1, 38.0: 17.6}, dice=0.76)
    oracle = _rows({g: 17.0 for g in GAS})
    passed = quality.goal_checks({"c": c, "a": short, "a'": good, "oD": oracle}, GAS)
    assert [check["pass"] for check in passed] == [True, True, True]
    failed = quality.goal_checks({"c": c, "a'": short, "oD": oracle}, GAS)
    assert failed[0]["pass"] is False and "GA 26.0: ΔPSNR +2.90 dB" in failed[0]["detail"]


def test_checks_need_only_the_rows_that_were_measured(quality):
    c = _rows({g: 16.0 for g in GAS})
    checks = quality.goal_checks({"c": c, "g": _rows({g: 17.0 for g in GAS})}, GAS)
    assert len(checks) == 1 and checks[0]["check"].startswith("best INR row (g)")
    assert quality.goal_checks({"c": c}, GAS) == []
