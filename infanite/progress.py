"""Progress reporting: a terminal bar for people, JSON lines for GUIs (``--progress-json FILE|-``).

Each JSON line is one object: ``{"stage", "step", "total", "message", "elapsed_s", "eta_s"}`` plus any stage specific
fields passed to ``update(..., **fields)`` (training adds its loss terms, samples/s and memory) — ``eta_s`` is ``null``
until a first step of this session has finished.  A stage resumed at step k (``start(..., initial=k)``) estimates its
ETA from the steps done since the resume.  The Slicer modules parse these lines from a child process' output.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO


class ProgressReporter:
    """Reports progress of one or more stages to a terminal and/or a JSON-lines stream."""

    def __init__(self, json_target: str | None = None, terminal: IO | None = None, bar_width: int = 30,
                 quiet: bool = False):
        self._json: IO | None = None
        self._owns_json = False
        if json_target == "-":
            self._json = sys.stdout
        elif json_target:
            # the file often lies inside the command's output folder, which may not exist yet
            Path(json_target).parent.mkdir(parents=True, exist_ok=True)
            self._json = open(json_target, "a", buffering=1)
            self._owns_json = True
        self._term = None if quiet else terminal if terminal is not None else (
            sys.stderr if sys.stderr.isatty() else None)        # quiet: no bar (a data-parallel worker rank)
        self._bar_width = bar_width
        self._stage = ""
        self._total = 0
        self._t0 = time.monotonic()
        self._initial = 0

    def start(self, stage: str, total: int, message: str = "", initial: int = 0) -> None:
        """Begin a stage of ``total`` steps, ``initial`` of them already done (a resumed run)."""
        self._stage, self._total, self._t0, self._initial = stage, int(total), time.monotonic(), int(initial)
        self.update(self._initial, message)

    def update(self, step: int, message: str = "", **fields) -> None:
        elapsed = time.monotonic() - self._t0
        done = step - self._initial
        eta = elapsed / done * (self._total - step) if done > 0 and self._total else None
        record = {"stage": self._stage, "step": int(step), "total": self._total, "message": message,
                  "elapsed_s": round(elapsed, 3), "eta_s": None if eta is None else round(eta, 1), **fields}
        if self._json is not None:
            self._json.write(json.dumps(record) + "\n")
            self._json.flush()
        if self._term is not None:
            frac = step / self._total if self._total else 1.0
            filled = int(round(frac * self._bar_width))
            eta_txt = "" if eta is None else f" ETA {eta:5.0f}s"
            self._term.write(f"\r{self._stage:>10} [{'#' * filled}{'.' * (self._bar_width - filled)}] "
                             f"{step}/{self._total}{eta_txt} {message[:40]:<40}")
            if step >= self._total:
                self._term.write("\n")
            self._term.flush()

    def close(self) -> None:
        if self._owns_json and self._json is not None:
            self._json.close()
        self._json = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
