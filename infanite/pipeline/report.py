"""``report.html`` of a whole run (``infanite run``, the demo): what was made, from what, and how it looks.

One self-contained file (every image embedded as a PNG data URI, so it can be mailed or moved), readable at 800 px:
a header (cohort, date, version, command, device, model and its size, atlas spacing, run times), the atlas's
gestational ages with their support (effective sample size in fetuses; weak-support and extrapolated GAs marked,
with what to do) and how their labels were made, the montage (plain T2w beside the label overlay, as 3D Slicer
shows it, with a legend), the tissue volumes (mL) against the normative curves, the quality against a reference
when one was given, the training loss, and the registration QC of every stack with its NMI, margin and
confidence.  Everything shown is read from the files of the run folder, so the report says what they say.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from infanite.io.atomic import atomic_write_text
from infanite.io.layout import (ATLAS_DIR, ATLAS_MANIFEST, CONFIG, EVALUATION_DIR, GROWTH, LOSS_PLOT, METRICS_JSON,
                                MONTAGE, QC_DIR, REGISTERED, REGISTRATION_DIR, REPORT, RUN_INFO, STACKS, TIMINGS,
                                TRANSFORMS, VOLUMES)

#: spelled out once in the report
MEASURE_NAMES = {"TBV": "total brain volume", "ICV": "intracranial volume", "GMV": "cortical grey-matter volume",
                 "SBV": "supratentorial brain volume", "e-CSFV": "extra-cerebral CSF volume",
                 "VV": "ventricular volume", "CBV": "cerebellar volume", "BM": "brainstem volume"}

_STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:auto;padding:0 8px;line-height:1.4}"
          "table{border-collapse:collapse;margin:6px 0;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}"
          "td{text-align:right}td.l,th{text-align:left}img{max-width:100%;height:auto}"
          ".warn{color:#a40}.qc{display:inline-block;width:250px;margin:4px;vertical-align:top;font-size:80%}"
          "dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{font-weight:bold}dd{margin:0}")


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
    for key, label in (("loss", "total"), ("loss_intensity", "intensity"), ("loss_seg", "segmentation (CE)")):
        values = [r.get(key) for r in rows]
        if all(v is not None and v > 0 for v in values):
            ax.plot(steps, values, label=label, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title("training loss")
    return save_figure(fig, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _embedded(path: Path, alt: str, width: int | None = None, link: bool = False) -> str:
    """An ``<img>`` holding the PNG ``path`` itself (a data URI); ``link``: clicking it opens it at full size."""
    if not path.is_file():
        return ""
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    size = f' width="{width}"' if width else ""
    img = f'<img src="{uri}" alt="{html.escape(alt)}"{size}>'
    return f'<a href="{uri}" target="_blank">{img}</a>' if link else img


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns left-aligned (text), the others right-aligned (numbers)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=l' if i < left else ''}>{html.escape(_cell(c))}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"
    return "" if value is None else str(value)


def _cohort_rows(out: Path) -> tuple[list[tuple[str, str]], dict]:
    """(label, value) lines describing the registered cohort, and the per-stack rows of ``registered.tsv``."""
    from infanite.io.cohort import read_manifest

    registered = out / REGISTRATION_DIR / REGISTERED
    if not registered.is_file():
        return [], {}
    cohort, _ = read_manifest(registered)
    stacks = {r.subject_id: r for r in cohort.stacks}
    ages = [r.scan_age for r in cohort.stacks if r.scan_age is not None]
    estimated = [r.subject_id for r in cohort.stacks if r.extra.get("ga_estimated") == "1"]
    with_seg = sum(1 for r in cohort.stacks if r.extra.get("source_Seg"))
    lines = [("Stacks", f"{len(cohort.stacks)} ({with_seg} with a tissue segmentation, "
                        f"{len(cohort.stacks) - with_seg} with a brain mask only)"),
             ("Fetuses", str(len(cohort.subjects())))]
    if ages:
        lines.append(("GA range", f"{min(ages):.1f}–{max(ages):.1f} weeks"))
    if estimated:
        lines.append(("Estimated GA", f"{len(estimated)} stacks had no scan_age: register estimated it from the "
                                      f"best-matching template week; they take no part in the GA regression "
                                      f"unless --accept-estimated-ga"))
    return lines, stacks


def write_report(out: Path, failed: dict | None = None) -> Path:
    """``OUT/report.html`` of the run folder ``out`` (see the module docstring)."""
    from infanite.atlas.outputs import support_flag
    from infanite.labels import default_label_table

    out = Path(out)
    info = _read_json(out / RUN_INFO) or {}
    manifest = _read_json(out / ATLAS_DIR / ATLAS_MANIFEST) or {}
    stacks_json = _read_json(out / STACKS) or {}
    timings = _read_json(out / TIMINGS) or {}
    parts = ["<!doctype html><html><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>INFANiTE report — {html.escape(out.name)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>INFANiTE atlas — {html.escape(out.name)}</h1>"]

    # -- header
    cohort_lines, registered = _cohort_rows(out)
    header = list(cohort_lines)
    if info.get("synthetic") is not None:
        header.append(("Data", "simulated (the thick-slice simulator's cohort)" if info["synthetic"] else
                       "acquired stacks"))
    for key, label in (("date", "Date"), ("version", "INFANiTE version"), ("command", "Command"),
                       ("device", "Device")):
        if info.get(key):
            header.append((label, str(info[key])))
    model = info.get("model") or {}
    if model:
        header.append(("Model", f"{model.get('type')} (hidden {model.get('hidden_size')} × "
                                f"{model.get('hidden_layers')} layers, {model.get('parameters', 0):,} parameters; "
                                f"data term {model.get('data_term')})"))
    if manifest.get("spacing_mm"):
        position = (manifest.get("identity") or {}).get("position_sigma_weeks")
        appearance = (manifest.get("identity") or {}).get("appearance_sigma_weeks")
        header.append(("Atlas spacing", f"{manifest['spacing_mm'][0]:g} mm, σ {manifest.get('sigma_weeks')} weeks"
                       + ("" if position is None else f"; fetuses' positions over σ {position:g} weeks")
                       + ("" if appearance is None else
                          f"; fetuses' appearance offsets over σ {appearance:g} weeks"
                          + (", widened where the fetuses are sparse"
                             if (manifest.get("identity") or {}).get("appearance_adaptive") else "")
                          if appearance > 0 else "; the template alone (no appearance offsets)")))
    if timings:
        total = sum(v["seconds"] for v in timings.values())
        header.append(("Run time", f"{total / 60:.1f} min (" + ", ".join(
            f"{k} {v['seconds'] / 60:.1f} min" for k, v in timings.items()) + ")"))
    parts.append("<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in header)
                 + "</dl>")

    # -- atlas: GAs, support, labels
    entries = manifest.get("ga") or {}
    parts.append(f"<h2>Atlas: {len(entries)} gestational ages</h2>")
    if entries:
        rows, notes = [], []
        for key, entry in entries.items():
            flag = support_flag(entry)
            labels = entry.get("labels") or {"labels_from": "stacks"}
            made = ("learnt from the stacks' segmentations" if labels.get("labels_from") == "stacks" else
                    f"template week {labels.get('template_ga_weeks'):g} propagated ({labels.get('method')})")
            rows.append([f"{float(key):.1f}", entry.get("ess"), entry.get("ess_stacks"), made,
                         flag.strip(" ()") or "ok"])
            notes += entry.get("warnings", [])
        parts.append(_table(["GA (weeks)", "ESS (fetuses)", "ESS (stacks)", "tissue labels", "support"], rows,
                            left=1))
        parts.append("<p>ESS: the effective number of fetuses (Kish) the GA kernel draws on at that GA; below "
                     "3 the atlas rests on too few fetuses.</p>")
        if notes:
            parts.append("<p class=warn><b>Warnings</b><br>" + "<br>".join(html.escape(str(w)) for w in notes)
                         + "</p>")
    parts.append("<h3>Montage</h3><p>Plain T2w (left) and the tissue labels over it (right), as 3D Slicer shows "
                 "them (radiological: the patient's right on the left).</p>"
                 + _embedded(out / ATLAS_DIR / MONTAGE, "atlas montage", link=True))

    # -- volumes
    parts.append("<h2>Tissue volumes against normative growth</h2>"
                 + _embedded(out / ATLAS_DIR / GROWTH, "growth chart", link=True))
    volumes = out / ATLAS_DIR / VOLUMES
    if volumes.is_file():
        lines = [line.split("\t") for line in volumes.read_text().splitlines() if line.strip()]
        if lines:
            head = ["GA (weeks)"] + [f"{c} (mL)" for c in lines[0][1:]]
            parts.append(_table(head, [[r[0]] + [float(v) for v in r[1:]] for r in lines[1:]]))
            table = default_label_table()
            names = {lab.abbrev: lab.name for lab in table.labels}
            legend = [f"{a}: {names.get(a, MEASURE_NAMES.get(a, a))}" for a in lines[0][1:]]
            parts.append("<p><small>" + html.escape("; ".join(legend)) + "</small></p>")

    # -- quality against a reference
    metrics = _read_json(out / EVALUATION_DIR / METRICS_JSON)
    if metrics:
        parts.append("<h2>Quality against the reference</h2>" + _metrics_table(metrics))
        figure = _reference_montage(out, manifest, metrics)
        if figure is not None:
            parts.append("<p>The atlas (odd rows) above the reference at the same GA (even rows), same views.</p>"
                         + _embedded(figure, "atlas beside the reference", link=True))

    # -- training
    config_text = (out / CONFIG).read_text() if (out / CONFIG).is_file() else ""
    parts.append("<h2>Training</h2>" + _embedded(out / LOSS_PLOT, "training loss"))
    if stacks_json.get("labelled_stacks") == []:
        parts.append("<p>No stack had a tissue segmentation: the network learnt the intensity and where the brain "
                     "is; the atlas's tissue labels are the templates', propagated by registration (per GA "
                     "above).</p>")
    if config_text:
        parts.append("<details><summary>Configuration (config.yaml)</summary><pre>" + html.escape(config_text)
                     + "</pre></details>")

    # -- registration QC
    qc_files = sorted((out / REGISTRATION_DIR / QC_DIR).glob("*.png"))
    if qc_files:
        qc = (_read_json(out / REGISTRATION_DIR / TRANSFORMS) or {}).get("qc", {})
        parts.append(f"<h2>Registration QC ({len(qc_files)} stacks)</h2><p>Each stack resampled into template space "
                     f"with the template's label boundaries; click for full size. NMI: normalised mutual "
                     f"information with the template (1–2, higher is better); margin: its lead over the next-best "
                     f"orientation.</p>")
        for path in qc_files:
            q = qc.get(path.stem, {})
            ga = registered.get(path.stem).scan_age if path.stem in registered else None
            caption = f"{path.stem}: NMI {_cell(q.get('nmi'))}, margin {_cell(q.get('margin'))}, confidence " \
                      f"{q.get('confidence', '?')}" + (f", GA {ga:.1f} w" if ga is not None else "")
            parts.append(f"<div class=qc>{_embedded(path, path.stem, 250, link=True)}<br>"
                         f"{html.escape(caption)}</div>")
    if failed:
        parts.append("<h2>Failed stacks</h2><ul>" + "".join(
            f"<li>{html.escape(k)}: {html.escape(str(v).splitlines()[0])}</li>" for k, v in failed.items()) + "</ul>")
    if timings:
        parts.append("<h2>Run times</h2>" + _table(["stage", "seconds", "note"], [
            [k, float(v["seconds"]), v.get("note", "")] for k, v in timings.items()]))
    parts.append("</body></html>")
    path = out / REPORT
    atomic_write_text(path, "\n".join(parts))
    return path


def _reference_montage(out: Path, manifest: dict, metrics: dict) -> Path | None:
    """``OUT/evaluation/atlas_vs_reference.png``: each montage GA of the atlas above the reference image (and its
    labels, when it has them) that the evaluation compared it with; None when nothing can be drawn."""
    from infanite.atlas.outputs import _montage_selection, support_flag
    from infanite.io.figures import save_montage
    from infanite.io.images import ImageReadError, load_labels, load_nifti

    entries = manifest.get("ga") or {}
    by_ga = {f"{float(e['ga_weeks']):.1f}": e for e in metrics.get("per_ga") or []
             if isinstance(e, dict) and e.get("reference")}
    rows = []
    try:
        for key in _montage_selection([k for k in entries if k in by_ga]):
            files = entries[key]["files"]
            rows.append((f"atlas {key} w{support_flag(entries[key])}", load_nifti(out / ATLAS_DIR / files["T2w"]),
                         load_labels(out / ATLAS_DIR / files["dseg"])))
            reference = Path(by_ga[key]["reference"])
            seg = _reference_labels(reference)
            rows.append((f"reference {float(by_ga[key].get('reference_ga_weeks', key)):.1f} w", load_nifti(reference),
                         load_labels(seg) if seg is not None else None))
    except (OSError, ValueError, ImageReadError, KeyError):
        return None
    if not rows:
        return None
    return save_montage(rows, out / EVALUATION_DIR / "atlas_vs_reference.png", title="atlas and reference")


def _reference_labels(t2w: Path) -> Path | None:
    """The label map beside a reference T2w: ``*_dseg`` for ``*_T2w`` (phantom/our layout) or ``parcellation`` for
    CRL's ``srr``; None when there is none."""
    name = t2w.name
    for old, new in (("_T2w.nii.gz", "_dseg.nii.gz"), ("srr.nii.gz", "parcellation.nii.gz")):
        if name.endswith(old):
            candidate = t2w.with_name(name[: -len(old)] + new)
            if candidate.is_file():
                return candidate
    return None


def _metrics_table(metrics: dict) -> str:
    """The per-GA quality table of ``metrics.json`` (PSNR dB, SSIM, mean Dice, HD95 mm, ASD mm, TCT, volume L1)."""
    def value(entry, key, sub):
        got = entry.get(key)
        return got.get(sub) if isinstance(got, dict) else None

    columns = [("PSNR in the brain (dB)", "psnr_db", "brain_mask"), ("SSIM in the brain", "ssim", "brain_mask"),
               ("mean Dice", "dice", "mean"), ("HD95 (mm)", "hd95_mm", "mean"), ("ASD (mm)", "asd_mm", "mean"),
               ("TCT atlas", "tct", "atlas"), ("TCT reference", "tct", "reference"),
               ("volume L1 vs reference", "volume_l1_reference", "mean")]
    rows = [[f"{float(e.get('ga_weeks')):.1f}"] + [value(e, k, s) for _, k, s in columns]
            for e in metrics.get("per_ga") or [] if isinstance(e, dict)]
    if not rows:
        return ""
    keep = [i for i in range(len(columns)) if any(r[i + 1] is not None for r in rows)]
    return (_table(["GA (weeks)"] + [columns[i][0] for i in keep], [[r[0]] + [r[i + 1] for i in keep] for r in rows])
            + "<p><small>PSNR and SSIM over the reference brain mask dilated by 2 mm, each image min–max normalised "
              "there; HD95/ASD: surface distances; TCT: tissue contrast |GM − WM| / √(sd² + sd²); volume L1: mean "
              "relative tissue-volume error.</small></p>")
