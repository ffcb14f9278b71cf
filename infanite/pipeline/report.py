"""``report.html`` of a whole run (``infanite run``, the demo): what was made, and how it looks."""
from __future__ import annotations

import html
import json
from pathlib import Path

from infanite.io.atomic import atomic_write_text
from infanite.io.layout import (ATLAS_DIR, ATLAS_MANIFEST, EVALUATION_DIR, GROWTH, LOSS_PLOT, METRICS_MD, MONTAGE,
                                QC_DIR, REGISTRATION_DIR, REPORT, TIMINGS, VOLUMES)


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
    manifest_path = out / ATLAS_DIR / ATLAS_MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        parts.append(f"<p>Atlas: {len(manifest.get('ga_weeks', []))} gestational ages, "
                     f"{manifest.get('spacing_mm')} mm, in <code>atlas/</code>.</p>")
        warnings = [w for w in manifest.get("warnings", []) if w] if isinstance(manifest.get("warnings"), list) \
            else []
        if warnings:
            parts.append("<p><b>Warnings:</b><br>" + "<br>".join(html.escape(str(w)) for w in warnings) + "</p>")
    parts.append("<h2>Atlas</h2>" + _img(out / ATLAS_DIR / MONTAGE, out))
    parts.append("<h2>Tissue volumes against normative growth</h2>" + _img(out / ATLAS_DIR / GROWTH, out))
    volumes = out / ATLAS_DIR / VOLUMES
    if volumes.exists():
        parts.append(_tsv_table(volumes))
    metrics = out / EVALUATION_DIR / METRICS_MD
    if metrics.exists():
        parts.append("<h2>Quality against the reference</h2><pre>" + html.escape(metrics.read_text()) + "</pre>")
    parts.append("<h2>Training</h2>" + _img(out / LOSS_PLOT, out))
    qc = sorted((out / REGISTRATION_DIR / QC_DIR).glob("*.png"))
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
    path = out / REPORT
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
