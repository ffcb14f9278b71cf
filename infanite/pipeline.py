"""``infanite run``: register → weights → train → atlas → (evaluate) → report, resumable at every stage.

Layout of ``OUT`` (``OUT`` itself is the training run, so it is a valid ``--run`` for ``infanite atlas``)::

    OUT/registration/   registered.tsv, transforms.json, qc/*.png, stacks/, spatial_weighting/ (infanite register)
    OUT/checkpoint.pt, config.yaml, stacks.json, train_log.jsonl                    (infanite train)
    OUT/atlas/          atlas_ga-<GA>_T2w/_dseg.nii.gz, volumes.tsv, growth.png, montage.png (infanite atlas)
    OUT/evaluation/     metrics.json, metrics.md        (only with a reference atlas)
    OUT/loss.png, OUT/timings.json, OUT/report.html

A second call with the same ``OUT`` skips what is finished: registered stacks, a finished checkpoint (an
unfinished one is resumed exactly), atlas weeks already written.  Without a config the model is sized for the
device: :data:`CPU_DEFAULTS` (finishes within the hour on 2 CPU cores for ~20 stacks) or the paper's settings on
a GPU.
"""
from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path

from infanite.io.images import atomic_write_text
from infanite.progress import ProgressReporter

#: Overrides of the paper's settings used on a CPU when no ``--config`` is given (a small model, ~1 h budget).
CPU_DEFAULTS = ["inr_decoder.hidden_size=128", "inr_decoder.num_hidden_layers=3",
                "inr_decoder.modulated_layers=[1,3]", "inr_decoder.latent_dim=[32,3,3,3]", "n_samples=4000",
                "epochs.train=20", "max_steps=3000", "checkpoint_every=250", "optimizer.lr_inr=1e-3",
                "optimizer.lr_latent=1e-2", "inr_decoder.tf_dim=0"]
#: The demo: a tiny model that trains in a couple of minutes on 2 CPU cores.
DEMO_TRAINING = ["inr_decoder.hidden_size=64", "inr_decoder.num_hidden_layers=3",
                 "inr_decoder.modulated_layers=[1,3]", "inr_decoder.latent_dim=[16,3,3,3]", "n_samples=3000",
                 "epochs.train=40", "max_steps=2000", "checkpoint_every=250", "optimizer.lr_inr=1e-3",
                 "optimizer.lr_latent=1e-2", "inr_decoder.tf_dim=0", "psf.samples_per_epoch=[4]"]
TIMINGS = "timings.json"


def default_overrides(device: str) -> list[str]:
    """Config overrides applied when the user gives no ``--config``: CPU-sized on a CPU, none on a GPU."""
    return [] if str(device).startswith("cuda") else list(CPU_DEFAULTS)


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


def run_pipeline(manifest, templates, out, config_path=None, overrides=(), device: str = "cpu",
                 ga_weeks=None, atlas_spacing_mm: float | None = None, reference=None, jobs: int = 1,
                 register_options=None, progress: ProgressReporter | None = None) -> dict:
    """Run every stage into ``out``; returns a summary with the report path.  Bad input raises ``ValueError``
    (from the stage that reads it) before that stage writes anything."""
    from infanite.atlas.generate import generate
    from infanite.registration.register import RegisterOptions, register_cohort
    from infanite.inr.train import CHECKPOINT, train
    from infanite.inr.config import load_train_config

    out = Path(out)
    progress = progress or ProgressReporter(None)
    overrides = list(overrides) if config_path else default_overrides(device) + list(overrides)
    config = load_train_config(config_path, overrides + [f"device={device}"])   # validated before any work
    out.mkdir(parents=True, exist_ok=True)
    timings = _Timings(out)

    t0 = time.perf_counter()
    options = register_options or RegisterOptions(jobs=jobs)
    result = register_cohort(manifest, templates, out / "registration", options, progress=progress)
    registered = out / "registration" / "registered.tsv"
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
    stacks = json.loads((out / "stacks.json").read_text())
    weeks = [float(g) for g in ga_weeks] if ga_weeks else default_atlas_weeks(stacks["ga_weeks"])
    spacing = atlas_spacing_mm or (0.8 if str(device).startswith("cuda") else 1.6)
    atlas = generate(out, weeks, out / "atlas", spacing_mm=spacing, device=device, progress=progress)
    timings.record("atlas", time.perf_counter() - t0, f"{len(weeks)} GAs at {spacing} mm")

    metrics = None
    if reference:
        from infanite.evaluation.against_reference import evaluate_atlas

        t0 = time.perf_counter()
        metrics = evaluate_atlas(out / "atlas", reference, out / "evaluation", progress=progress)
        timings.record("evaluate", time.perf_counter() - t0)
    save_loss_plot(out / "train_log.jsonl", out / "loss.png")
    report = write_report(out, failed=result["failed"])
    return {"report": report, "atlas": atlas, "train": summary, "registration": result, "metrics": metrics}


def save_loss_plot(log_path: Path, path: Path) -> Path | None:
    """Training loss terms against step (log scale)."""
    if not log_path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from infanite.io.figures import save_figure

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    steps = [r["step"] for r in rows]
    for key, label in (("loss", "total"), ("loss_intensity", "intensity (weighted L1)"),
                       ("loss_seg", "segmentation (weighted CE)")):
        ax.plot(steps, [r[key] for r in rows], label=label, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title("training loss")
    return save_figure(fig, path)


def _img(path: Path, root: Path, width: int | None = None) -> str:
    if not path.exists():
        return ""
    size = f' width="{width}"' if width else ""
    return f'<img src="{html.escape(str(path.relative_to(root)))}"{size}>'


def write_report(out: Path, failed: dict | None = None) -> Path:
    """``OUT/report.html``: montage, growth plot, loss, registration QC thumbnails, metrics and run times."""
    out = Path(out)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>INFANiTE report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>INFANiTE atlas — {html.escape(out.name)}</h1>"]
    manifest_path = out / "atlas" / "atlas_manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        parts.append(f"<p>Atlas: {len(manifest.get('ga_weeks', []))} gestational ages, "
                     f"{manifest.get('spacing_mm')} mm, in <code>atlas/</code>.</p>")
        warnings = [w for w in manifest.get("warnings", []) if w] if isinstance(manifest.get("warnings"), list) \
            else []
        if warnings:
            parts.append("<p><b>Warnings:</b><br>" + "<br>".join(html.escape(str(w)) for w in warnings) + "</p>")
    parts.append("<h2>Atlas</h2>" + _img(out / "atlas" / "montage.png", out))
    parts.append("<h2>Tissue volumes against normative growth</h2>" + _img(out / "atlas" / "growth.png", out))
    volumes = out / "atlas" / "volumes.tsv"
    if volumes.exists():
        parts.append(_tsv_table(volumes))
    metrics = out / "evaluation" / "metrics.md"
    if metrics.exists():
        parts.append("<h2>Quality against the reference</h2><pre>" + html.escape(metrics.read_text()) + "</pre>")
    parts.append("<h2>Training</h2>" + _img(out / "loss.png", out))
    qc = sorted((out / "registration" / "qc").glob("*.png"))
    if qc:
        parts.append(f"<h2>Registration QC ({len(qc)} stacks)</h2>")
        parts.append("".join(f"<figure style='display:inline-block;margin:4px'>{_img(p, out, 260)}"
                             f"<figcaption>{html.escape(p.stem)}</figcaption></figure>" for p in qc))
    if failed:
        parts.append("<h2>Failed stacks</h2><ul>" + "".join(
            f"<li>{html.escape(k)}: {html.escape(str(v).splitlines()[0])}</li>" for k, v in failed.items()) + "</ul>")
    timings = out / TIMINGS
    if timings.exists():
        rows = json.loads(timings.read_text())
        parts.append("<h2>Run times</h2><table><tr><th>stage</th><th>seconds</th><th>note</th></tr>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v['seconds']:.1f}</td><td>{html.escape(v.get('note', ''))}</td></tr>"
            for k, v in rows.items()) + "</table>")
    parts.append("</body></html>")
    path = out / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def _tsv_table(path: Path) -> str:
    lines = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in lines[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_short(c))}</td>" for c in row) + "</tr>" for row in lines[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _short(cell: str) -> str:
    try:
        return f"{float(cell):.2f}"
    except ValueError:
        return cell


__all__ = ["run_pipeline", "write_report", "save_loss_plot", "default_overrides", "default_atlas_weeks",
           "CPU_DEFAULTS", "DEMO_TRAINING"]
