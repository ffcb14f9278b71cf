"""``infanite run``: register → weights → train → atlas → (evaluate) → report, resumable at every stage.

Layout of ``OUT`` (``OUT`` itself is the training run, so it is a valid ``--run`` for ``infanite atlas``)::

    OUT/registration/   registered.tsv, transforms.json, qc/*.png, stacks/, spatial_weighting/ (infanite register)
    OUT/checkpoint.pt, config.yaml, stacks.json, train_log.jsonl                    (infanite train)
    OUT/atlas/          atlas_ga-<GA>_T2w/_dseg.nii.gz, volumes.tsv, growth.png, montage.png (infanite atlas)
    OUT/evaluation/     metrics.json, metrics.md        (only with a reference atlas)
    OUT/loss.png, OUT/timings.json, OUT/run_info.json, OUT/report.html

A second call with the same ``OUT`` skips what is finished: registered stacks, a finished checkpoint (an unfinished one
is resumed exactly), atlas weeks already written.  Without a config the model is sized for the device:
:data:`~infanite.inr.config.CPU_DEFAULTS` (finishes within the hour on 2 CPU cores for ~20 stacks) or the paper's
settings on a GPU.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from infanite.inr.config import default_overrides
from infanite.io.atomic import atomic_write_text
from infanite.io.lock import folder_lock
from infanite.io.layout import (ATLAS_DIR, CHECKPOINT, EVALUATION_DIR, LOSS_PLOT, REGISTERED, REGISTRATION_DIR,
                                RUN_INFO, STACKS, TIMINGS, TRAIN_LOG)
from infanite.pipeline.report import save_loss_plot, write_report
from infanite.progress import ProgressReporter


def default_atlas_weeks(ga_weeks) -> list[float]:
    """The whole weeks inside the cohort's GA range (the nearest whole week when the range holds none)."""
    known = [float(g) for g in ga_weeks if g is not None]
    if not known:
        raise ValueError("no stack has a GA: give --ga for the atlas")
    weeks = [float(w) for w in range(math.ceil(min(known)), math.floor(max(known)) + 1)]
    return weeks or [float(round(sum(known) / len(known)))]


class _Timings:
    def __init__(self, out: Path):
        self.path = out / TIMINGS
        self.values = json.loads(self.path.read_text()) if self.path.exists() else {}

    def record(self, stage: str, seconds: float, note: str = "") -> None:
        previous = self.values.get(stage, {}).get("seconds", 0.0)
        self.values[stage] = {"seconds": round(previous + seconds, 2), "note": note}
        atomic_write_text(self.path, json.dumps(self.values, indent=1))


def _write_run_info(out: Path, manifest, config, device: str, command: str | None, spacing: float) -> None:
    """``OUT/run_info.json``: what the report's header states (version, date, command, device, model, data)."""
    import datetime

    import torch

    from infanite import __version__
    from infanite.io.layout import SIMULATION

    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    parameters = sum(int(v.numel()) for v in state["model"].values() if hasattr(v, "numel"))
    info = {"version": __version__, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command, "device": str(device), "manifest": str(Path(manifest).resolve()),
            "synthetic": (Path(manifest).resolve().parent / SIMULATION).is_file(), "atlas_spacing_mm": spacing,
            "model": {"type": config.model, "hidden_size": config.inr_decoder.hidden_size,
                      "hidden_layers": config.inr_decoder.num_hidden_layers, "parameters": parameters,
                      "data_term": config.data.term}}
    atomic_write_text(out / RUN_INFO, json.dumps(info, indent=1))


def cpu_template(manifest, device: str, say: bool = True) -> bool:
    """Whether the device-sized defaults take the template model for this cohort (CPU, and the cohort supports
    it); says why not on stderr (``say``) when a CPU cohort does not."""
    import sys

    from infanite.inr.build import template_unsupported
    from infanite.io.cohort import read_manifest

    if str(device).startswith("cuda"):
        return False
    cohort, _ = read_manifest(manifest, registration_input=True)
    why = template_unsupported(cohort.stacks) if cohort.stacks else "no stacks"
    if why and say:
        print(f"note: the paper's model (model: infanite) is trained: {why}, so the template model, the CPU "
              f"default, cannot be", file=sys.stderr)
    return why is None


def sized_defaults(manifest, device: str, say: bool = True) -> list[str]:
    """The config overrides used without ``--config``: :func:`~infanite.inr.config.default_overrides` for the
    device and this cohort (the template model where :func:`cpu_template` allows it, its GA nodes sized to the
    cohort's fetuses, the ``subject`` groups, and GA span)."""
    from infanite.inr.build import ga_span
    from infanite.io.cohort import read_manifest

    if not cpu_template(manifest, device, say=say):
        return default_overrides(device)
    cohort, _ = read_manifest(manifest, registration_input=True)
    lo, hi = ga_span([r.scan_age for r in cohort.stacks])
    return default_overrides(device, template=True, n_fetuses=len({r.subject for r in cohort.stacks}),
                             ga_span_weeks=hi - lo)


def run_pipeline(manifest, templates, out, config_path=None, overrides=(), device: str = "cpu",
                 ga_weeks=None, atlas_spacing_mm: float | None = None, reference=None, jobs: int = 1,
                 register_options=None, progress: ProgressReporter | None = None, command: str | None = None,
                 atlas_options: dict | None = None) -> dict:
    """Run every stage into ``out``; returns a summary with the report path.  Bad input raises ``ValueError``
    (from the stage that reads it) before that stage writes anything.  ``atlas_options``: keywords of
    :func:`~infanite.atlas.generate.generate` (``sigma_weeks``, ``probabilities``, ``label_method``,
    ``accept_estimated_ga``, ``position_sigma_weeks``, ``appearance_sigma_weeks``, ``appearance_adaptive``), the GA
    kernels' widths checked before any work."""
    from infanite.atlas.generate import (check_appearance_adaptive, check_appearance_sigma, check_position_sigma,
                                         generate)
    from infanite.atlas.kernel import check_sigma_top_k
    from infanite.registration.register import RegisterOptions, register_cohort
    from infanite.inr.train import train
    from infanite.inr.config_loading import load_train_config

    out = Path(out)
    progress = progress or ProgressReporter(None)
    atlas_options = dict(atlas_options or {})
    check_sigma_top_k(atlas_options.get("sigma_weeks", 0.5), atlas_options.get("top_k"))
    if "position_sigma_weeks" in atlas_options:
        atlas_options["position_sigma_weeks"] = check_position_sigma(atlas_options["position_sigma_weeks"])
    if not config_path:
        from infanite.inr.config import defaults_then

        overrides = defaults_then(sized_defaults(manifest, device), list(overrides))
    else:
        overrides = list(overrides)
    config = load_train_config(config_path, overrides + [f"device={device}"])   # validated before any work
    if atlas_options.get("appearance_sigma_weeks") is not None:
        atlas_options["appearance_sigma_weeks"] = check_appearance_sigma(atlas_options["appearance_sigma_weeks"],
                                                                         config, "this run's training config")
    if atlas_options.get("appearance_adaptive") is not None:
        atlas_options["appearance_adaptive"] = check_appearance_adaptive(atlas_options["appearance_adaptive"],
                                                                         config, "this run's training config")
    with folder_lock(out, "run"):
        out.mkdir(parents=True, exist_ok=True)
        timings = _Timings(out)

        t0 = time.perf_counter()
        options = register_options or RegisterOptions(jobs=jobs)
        result = register_cohort(manifest, templates, out / REGISTRATION_DIR, options, progress=progress)
        registered = out / REGISTRATION_DIR / REGISTERED
        if result["failed"] and not result["done"] and not result["skipped"]:
            raise RuntimeError(f"registration failed for every stack: {result['failed']}")
        timings.record("register", time.perf_counter() - t0,
                       f"{len(result['done'])} stacks registered ({len(result['skipped'])} by an earlier call), "
                       f"{len(result['failed'])} failed")

        t0 = time.perf_counter()
        summary = train(registered, config, out, resume=(out / CHECKPOINT).exists(), progress=progress)
        timings.record("train", time.perf_counter() - t0, f"{summary['steps']}/{summary['total_steps']} steps")
        if summary.get("stopped"):      # a STOP file or SIGTERM: the checkpoint is saved, the atlas waits for --resume
            return {"stopped": True, "out": out, "steps": summary["steps"], "total_steps": summary["total_steps"]}

        t0 = time.perf_counter()
        stacks = json.loads((out / STACKS).read_text())
        weeks = [float(g) for g in ga_weeks] if ga_weeks else default_atlas_weeks(stacks["ga_weeks"])
        spacing = atlas_spacing_mm or (0.8 if str(device).startswith("cuda") else 1.6)
        atlas = generate(out, weeks, out / ATLAS_DIR, spacing_mm=spacing, device=device, progress=progress,
                         templates=templates, **atlas_options)
        timings.record("atlas", time.perf_counter() - t0, f"{len(weeks)} GAs at {spacing} mm")

        metrics = None
        if reference:
            from infanite.evaluation.against_reference import evaluate_atlas

            t0 = time.perf_counter()
            metrics = evaluate_atlas(out / ATLAS_DIR, reference, out / EVALUATION_DIR, progress=progress)
            timings.record("evaluate", time.perf_counter() - t0)
        save_loss_plot(out / TRAIN_LOG, out / LOSS_PLOT)
        _write_run_info(out, manifest, config, device, command, spacing)
        report = write_report(out, failed=result["failed"])
        return {"report": report, "atlas": atlas, "train": summary, "registration": result, "metrics": metrics}
