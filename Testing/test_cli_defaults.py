"""Command-line defaults: ``auto`` devices, ``--version``, and every option's default stated in its help."""
from __future__ import annotations

import argparse
import subprocess
import sys

import torch

from infanite import __version__
from infanite.cli.main import build_parser
from infanite.devices import choose_device


def test_auto_is_the_gpu_when_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device(None) == expected and choose_device("auto") == expected and choose_device("AUTO") == expected
    assert choose_device("cpu") == "cpu" and choose_device("cuda:1") == "cuda:1"


def test_version():
    done = subprocess.run([sys.executable, "-m", "infanite", "--version"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"infanite {__version__}"


def test_every_option_with_a_default_says_it_in_its_help():
    """An option whose default is a value (not None, not a flag's False) names it: 'default …' in its help."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, command in sub.choices.items():
        for action in command._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS) \
                    or action.dest in ("help", "func"):
                continue
            if "default" not in (action.help or ""):
                missing.append(f"{name} {action.option_strings[0]} (default {action.default!r})")
    assert not missing, missing


def test_devices_default_to_auto():
    parser = build_parser()
    for argv in (["run", "--manifest", "m", "--templates", "t", "--out", "o"],
                 ["atlas", "--run", "r", "--ga", "28", "--out", "o"],
                 ["register", "--manifest", "m", "--templates", "t", "--out", "o"]):
        assert parser.parse_args(argv).device == "auto"
