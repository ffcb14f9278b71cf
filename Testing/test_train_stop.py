"""Graceful stop of ``infanite train``: a STOP file or SIGTERM ends it at a step boundary with a checkpoint, and
``--resume`` continues exactly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from infanite.inr.train import train
from infanite.io.layout import CHECKPOINT, STOP_FILE
from infanite.inr.config_loading import load_train_config

TINY = ["inr_decoder.hidden_size=32", "inr_decoder.num_hidden_layers=2", "inr_decoder.modulated_layers=[1]",
        "inr_decoder.latent_dim=[4,3,3,3]", "n_samples=500", "epochs.train=50", "checkpoint_every=7",
        "psf.samples_per_epoch=[2]", "max_steps=30"]


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def logged_step(run) -> int:
    path = run / "train_log.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


@pytest.fixture(scope="module")
def registered(phantom_registered):
    return phantom_registered["registered"]


def test_stop_file_from_another_thread_stops_with_a_checkpoint_and_resume_finishes_exactly(registered, tmp_path,
                                                                                         caplog):
    config = load_train_config(None, TINY)
    full = train(registered, config, tmp_path / "full")
    assert full["steps"] == 30 and not full["stopped"]

    run = tmp_path / "run"
    run.mkdir()
    (run / STOP_FILE).write_text("")                      # left from before: removed with a warning, not obeyed
    seen = []

    def stopper():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and logged_step(run) < 5:
            time.sleep(0.005)
        seen.append(logged_step(run))
        (run / STOP_FILE).write_text("")

    thread = threading.Thread(target=stopper)
    thread.start()
    summary = train(registered, config, run)
    thread.join()
    assert summary["stopped"] and seen[0] >= 5
    assert any("left from before" in r.getMessage() for r in caplog.records)
    state = torch.load(run / CHECKPOINT, weights_only=True)
    assert state["global_step"] == summary["steps"] < state["total_steps"] == 30
    assert len(losses(run)) == summary["steps"] and not (run / STOP_FILE).exists()

    resumed = train(registered, load_train_config(run / "config.yaml"), run, resume=True)
    assert resumed["steps"] == 30 and not resumed["stopped"]
    np.testing.assert_allclose(losses(run), losses(tmp_path / "full"), rtol=1e-6, atol=1e-7)


def test_sigterm_stops_the_cli_gracefully_with_exit_code_0(registered, tmp_path):
    run = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("max_steps")] + ["max_steps=100000"]
    cmd = [sys.executable, "-m", "infanite", "train", "--manifest", str(registered), "--out", str(run),
           "--progress-json", "-"] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    events = []
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))
                if events[-1].get("step", 0) >= 5:
                    break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped = [json.loads(line) for line in rest.splitlines() if line.startswith("{")][-1]
    state = torch.load(run / CHECKPOINT, weights_only=True)
    assert stopped["stopped"] is True and stopped["step"] == state["global_step"] >= 5
    assert f"stopped at step {state['global_step']}" in stopped["message"] and "--resume" in stopped["message"]
    assert state["global_step"] < state["total_steps"]
    assert len(losses(run)) == state["global_step"] and not (run / STOP_FILE).exists()


def test_sigterm_handler_is_restored_after_training(registered, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    summary = train(registered, load_train_config(None, TINY[:-1] + ["max_steps=2"]), tmp_path / "run")
    assert summary["steps"] == 2 and not summary["stopped"]
    assert signal.getsignal(signal.SIGTERM) is before
    # in a worker thread no handler can be installed: training still runs
    result = []
    thread = threading.Thread(target=lambda: result.append(
        train(registered, load_train_config(None, TINY[:-1] + ["max_steps=2"]), tmp_path / "thread")))
    thread.start()
    thread.join()
    assert result[0]["steps"] == 2 and signal.getsignal(signal.SIGTERM) is before
