"""What an atlas folder holds besides the images' prediction: the per-GA files and their manifest entry, the
tissue volumes table, the growth chart against the normative curves and the montage."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from infanite.atlas.labels import classes_to_labels, clean_labels
from infanite.io.layout import MONTAGE, VOLUMES, atlas_filenames, ga_text
from infanite.reference.normative import MEASURE_LABELS, NormativeTable

if TYPE_CHECKING:
    from infanite.atlas.predict import Prediction
    from infanite.io.images import Grid

#: Most rows of the montage.
MONTAGE_ROWS = 8


def degenerate_warnings(ga: float, intensity: np.ndarray, dseg: np.ndarray) -> list[str]:
    """Warnings for an atlas that cannot be right: no brain label at all, or a constant T2w over the brain."""
    if not (dseg > 0).any():
        return [f"GA {ga_text(ga)} weeks: the segmentation is empty (no tissue label anywhere) and the T2w is "
                f"zero: the model predicts background everywhere; check its training (diagnostics.json, the loss)"]
    values = intensity[dseg > 0]
    if float(values.max() - values.min()) <= 1e-6 * max(1.0, float(abs(values).max())):
        return [f"GA {ga_text(ga)} weeks: the T2w is constant ({float(values.max()):.4g}) over the brain: the model "
                f"predicts no contrast; check its training (diagnostics.json, the loss)"]
    return []


def write_ga(out_dir: Path, grid: Grid, ga: float, pred: Prediction, label_values, halo: int, abbrevs,
              voxel_ml: float, support: np.ndarray | None = None, relabel=None, ceiling: float | None = None) -> dict:
    """Write one GA's NIfTI files from the raw prediction; returns its manifest entry.

    ``relabel(intensity, brain) -> (labels, note)`` replaces the predicted tissue labels inside the predicted brain
    (a mask-only run: template labels propagated); the entry's ``labels`` records how they were made.
    ``ceiling``: the T2w is capped there (:mod:`infanite.inr.ceiling`); the entry records it
    (``intensity_ceiling``) and how many brain voxels it capped (``intensity_capped_voxels``)."""
    from infanite.io.images import Volume, save_nifti

    names = atlas_filenames(ga)
    raw = classes_to_labels(pred.classes, label_values, halo)
    if support is not None:
        raw = np.where(support, raw, 0).astype(raw.dtype)
    dseg, report = clean_labels(raw)
    intensity = np.where(dseg > 0, np.clip(pred.intensity, 0.0, None), 0.0).astype(np.float32)
    labels_note = {"labels_from": "stacks"}
    if relabel is not None and (dseg > 0).any():      # from the uncapped intensity: the cap never moves a label
        dseg, labels_note = relabel(intensity, dseg > 0)
    capped = None
    if ceiling is not None:
        capped = int(np.count_nonzero(intensity > ceiling))
        intensity = np.minimum(intensity, np.float32(ceiling))
    files = {"T2w": names["T2w"], "dseg": names["dseg"]}
    if pred.probabilities is not None:
        _save_nifti_4d(pred.probabilities, grid.voxel_to_ras, out_dir / names["probseg"])
        files["probseg"] = names["probseg"]
    save_nifti(Volume(intensity, grid.voxel_to_ras), out_dir / names["T2w"], dtype=np.float32)
    save_nifti(Volume(dseg.astype(np.int16), grid.voxel_to_ras), out_dir / names["dseg"],
               dtype=np.uint8 if max(label_values) < 256 else np.int16)
    from infanite.reference.volumes import label_volumes_ml, measures_from_tissues

    tissue = label_volumes_ml(dseg, abbrevs, voxel_ml * 1000.0)
    entry = {"ga_weeks": float(ga_text(ga)), "files": files, "complete": True,
             "warnings": degenerate_warnings(ga, intensity, dseg), "labels": labels_note,
             "volumes_ml": {k: round(v, 4) for k, v in {**tissue, **measures_from_tissues(tissue)}.items()},
             "cleaning": {"reassigned_voxels": report.reassigned_voxels, "removed_voxels": report.removed_voxels,
                          "kept_raw": report.kept_raw}}
    if ceiling is not None:
        entry.update({"intensity_ceiling": round(float(ceiling), 6), "intensity_capped_voxels": capped})
    return entry


def _save_nifti_4d(array: np.ndarray, voxel_to_ras: np.ndarray, path: Path) -> Path:
    """Write a 4-D float32 NIfTI atomically (qform and sform = ``voxel_to_ras``)."""
    from infanite.io.images import save_nifti_array

    return save_nifti_array(np.asarray(array, dtype=np.float32), voxel_to_ras, path)


def write_volumes(out_dir: Path, rows: list[dict], columns: list[str]) -> Path:
    from infanite.io.atomic import atomic_write_text

    lines = ["\t".join(["ga_weeks"] + columns)]
    for r in rows:
        lines.append("\t".join([f"{r['ga_weeks']:.1f}"] + [f"{r[c]:.3f}" for c in columns]))
    return atomic_write_text(out_dir / VOLUMES, "\n".join(lines) + "\n")


def plot_growth(rows: list[dict], table: NormativeTable, path) -> Path:
    """``growth.png``: per normative measure, atlas volume (mL) vs GA over the normative mean ± 1 SD and ± 2 SD.

    ``rows``: dicts with ``ga_weeks`` and measure volumes (mL), as in ``volumes.tsv``, and optionally ``weak``
    (True for a weakly supported or extrapolated GA: drawn as an open marker, explained in the legend).
    """
    from infanite.io.figures import plt, save_figure

    measures = [m for m in MEASURE_LABELS if m in table.mean_ml and rows and m in rows[0]]
    ga = np.array([r["ga_weeks"] for r in rows], dtype=np.float64)
    lo = min(float(table.weeks[0]), float(ga.min()) - 0.5) if rows else float(table.weeks[0])
    hi = max(float(table.weeks[-1]), float(ga.max()) + 0.5) if rows else float(table.weeks[-1])
    x = np.linspace(lo, hi, 200)
    ncol = 4
    nrow = max(1, math.ceil(len(measures) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False)
    for ax, m in zip(axes.ravel(), measures):
        mean = np.array([table.mean(m, t) for t in x])
        sd = np.array([table.sd(m, t) for t in x])
        ax.fill_between(x, mean - 2 * sd, mean + 2 * sd, color="tab:blue", alpha=0.15, lw=0, label="±2 SD")
        ax.fill_between(x, mean - sd, mean + sd, color="tab:blue", alpha=0.3, lw=0, label="±1 SD")
        ax.plot(x, mean, color="tab:blue", lw=1, label="normative mean")
        ax.plot(ga, [r[m] for r in rows], "o-", color="tab:red", ms=4, lw=1, label="atlas")
        weak = [r for r in rows if r.get("weak")]
        if weak:
            ax.plot([r["ga_weeks"] for r in weak], [r[m] for r in weak], "o", mfc="white", mec="tab:red", ms=6,
                    label="weak support / extrapolated")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("GA (weeks)", fontsize=8)
        ax.set_ylabel("volume (mL)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(measures):]:
        ax.axis("off")
    if measures:
        axes.ravel()[0].legend(fontsize=6, loc="upper left")
    fig.suptitle(f"atlas volumes vs {table.source}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def _montage_selection(keys: list[str]) -> list[str]:
    if len(keys) <= MONTAGE_ROWS:
        return keys
    idx = np.unique(np.round(np.linspace(0, len(keys) - 1, MONTAGE_ROWS)).astype(int))
    return [keys[i] for i in idx]


def support_flag(entry: dict) -> str:
    """`` (extrapolated)``, `` (weak support)`` or both, from a GA's manifest entry; empty when well supported."""
    warnings = " ".join(entry.get("warnings", []))
    flags = [name for name, marker in (("extrapolated", "extrapolation"), ("weak support", "weak support"))
             if marker in warnings]
    return f" ({', '.join(flags)})" if flags else ""


def write_montage(out_dir: Path, manifest: dict, keys: list[str]) -> Path:
    from infanite.io.images import load_labels, load_nifti
    from infanite.io.figures import save_montage

    rows = []
    for key in _montage_selection(keys):
        files = manifest["ga"][key]["files"]
        rows.append((f"GA {key} w{support_flag(manifest['ga'][key])}", load_nifti(out_dir / files["T2w"]),
                     load_labels(out_dir / files["dseg"])))
    return save_montage(rows, out_dir / MONTAGE, title="INFANiTE atlas")
