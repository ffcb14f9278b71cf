"""Progress reporting (JSON lines, terminal bar) and the command line (help, exit codes, simulate → validate)."""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infanite.cli.main import build_parser, main
from infanite.progress import ProgressReporter

REPO = Path(__file__).resolve().parents[1]
KEYS = {"stage", "step", "total", "message", "elapsed_s", "eta_s"}


def read_jsonl(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert lines, f"{path} is empty"
    return [json.loads(line) for line in lines]


# ------------------------------------------------------------------------------------------------ progress

def test_progress_json_lines(tmp_path):
    path = tmp_path / "sub" / "p.jsonl"  # the folder does not exist yet
    with ProgressReporter(str(path), terminal=io.StringIO()) as progress:
        progress.start("register", 3, "three steps")
        for step in (1, 2, 3):
            progress.update(step, f"step {step}")
    records = read_jsonl(path)
    assert len(records) == 4
    for i, rec in enumerate(records):
        assert set(rec) == KEYS
        assert rec["stage"] == "register" and rec["total"] == 3 and rec["step"] == i
        assert isinstance(rec["elapsed_s"], (int, float)) and rec["elapsed_s"] >= 0
    assert records[0]["message"] == "three steps" and records[2]["message"] == "step 2"
    assert records[0]["eta_s"] is None
    for rec in records[1:]:
        assert isinstance(rec["eta_s"], (int, float)) and rec["eta_s"] >= 0
    assert records[-1]["eta_s"] == 0
    assert records[-1]["step"] == records[-1]["total"]
    assert [r["elapsed_s"] for r in records] == sorted(r["elapsed_s"] for r in records)


def test_progress_appends_and_restarts_per_stage(tmp_path):
    path = tmp_path / "p.jsonl"
    with ProgressReporter(str(path), terminal=io.StringIO()) as progress:
        progress.start("a", 1)
        progress.update(1)
        progress.start("b", 2)
        progress.update(1)
    with ProgressReporter(str(path), terminal=io.StringIO()) as progress:  # a second run appends
        progress.start("c", 1)
    records = read_jsonl(path)
    assert [(r["stage"], r["step"], r["total"]) for r in records] == [
        ("a", 0, 1), ("a", 1, 1), ("b", 0, 2), ("b", 1, 2), ("c", 0, 1)]
    assert records[2]["eta_s"] is None and records[3]["eta_s"] is not None


def test_progress_resumed_stage_and_extra_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    with ProgressReporter(str(path), terminal=io.StringIO()) as progress:
        progress.start("train", 10, "resumed", initial=6)
        progress.update(7, "step 7", loss=0.25, samples_per_s=1000.0)
    first, second = read_jsonl(path)
    assert first["step"] == 6 and first["eta_s"] is None          # no step of this session done yet
    assert second["loss"] == 0.25 and second["samples_per_s"] == 1000.0
    assert second["eta_s"] == pytest.approx(3 * second["elapsed_s"], abs=0.2)  # 3 steps left at 1 step's pace


def test_progress_json_to_stdout(capsys):
    progress = ProgressReporter("-", terminal=io.StringIO())
    progress.start("s", 2)
    progress.update(2, "done")
    progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 2]


def test_progress_terminal_bar():
    term = io.StringIO()
    progress = ProgressReporter(None, terminal=term, bar_width=10)
    progress.start("fit", 4, "go")
    progress.update(1, "one")
    progress.update(2, "two")
    text_mid = term.getvalue()
    assert "\n" not in text_mid  # the bar is redrawn in place with \r until the end
    progress.update(4, "last")
    text = term.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    frames = text.rstrip("\n").split("\r")[1:]
    assert len(frames) == 4
    assert "[..........] 0/4" in frames[0] and "ETA" not in frames[0]
    assert "[#####.....] 2/4" in frames[2] and "ETA" in frames[2] and "two" in frames[2]
    assert "[##########] 4/4" in frames[3] and "last" in frames[3]
    assert all("fit" in f for f in frames)
    progress.close()


def test_progress_without_outputs_is_silent(tmp_path, capsys):
    progress = ProgressReporter(None, terminal=None)
    progress.start("x", 2)
    progress.update(2)
    progress.close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # pytest's stderr is no terminal: no bar


# ----------------------------------------------------------------------------------------------------- CLI

def subcommands() -> list[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return sorted(actions[0].choices)


def test_subcommands_enumerated():
    assert {"validate", "simulate", "demo"} <= set(subcommands())


@pytest.mark.parametrize("command", subcommands())
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m infanite {command}")
    assert "--help" in out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m infanite")
    for command in subcommands():
        assert command in out


def test_help_subprocess():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "infanite", "--help"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m infanite")
    for command in subcommands():
        assert command in result.stdout


@pytest.mark.parametrize("argv", [["frobnicate"], []])
def test_unknown_or_missing_command_fails(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code != 0
    assert "usage:" in capsys.readouterr().err


def test_simulate_needs_a_source(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["simulate", "--out", str(out), "--progress-json", str(tmp_path / "p.jsonl")]) == 2
    assert "--phantom" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_simulate_phantom_then_validate(tmp_path, capsys):
    out = tmp_path / "cohort"
    progress_json = out / "p.jsonl"  # inside the not-yet-created output folder
    rc = main(["simulate", "--phantom", "--subjects", "1", "--stacks", "1", "--inplane", "2.5",
               "--thickness", "4", "--phantom-spacing", "1.6", "--out", str(out),
               "--progress-json", str(progress_json)])
    assert rc == 0
    assert str(out / "cohort.tsv") in capsys.readouterr().out
    records = read_jsonl(progress_json)
    assert all(set(r) == KEYS for r in records)
    assert records[0]["step"] == 0 and records[0]["eta_s"] is None
    assert records[-1]["step"] == records[-1]["total"] == 1
    assert (out / "truth.json").is_file()
    rows = (out / "cohort.tsv").read_text().splitlines()
    assert len(rows) == 2  # header + one stack
    assert main(["validate", str(out / "cohort.tsv")]) == 0
    assert "OK" in capsys.readouterr().out
