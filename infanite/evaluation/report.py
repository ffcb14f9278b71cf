"""The evaluation's outputs: ``metrics.json`` (every value; NaN as null, infinity as "inf") and ``metrics.md`` (a
table shaped like the paper's Table 1), with the conventions stated."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from infanite.evaluation import metrics
from infanite.io.atomic import atomic_write_text
from infanite.io.layout import METRICS_JSON, METRICS_MD
from infanite.labels import LabelTable
from infanite.reference.normative import NormativeTable


def summary_row(result: dict, sides: tuple[str, str] = ("atlas", "reference")) -> dict:
    """The scalar values of one comparison shown in ``metrics.md`` (and averaged)."""
    return {"psnr_mask_db": result["psnr_db"]["brain_mask"], "psnr_bbox_db": result["psnr_db"]["bounding_box"],
            "ssim_mask": result["ssim"]["brain_mask"], "ssim_bbox": result["ssim"]["bounding_box"],
            "dice_mean": result["dice"]["mean"], "hd95_mean_mm": result["hd95_mm"]["mean"],
            "asd_mean_mm": result["asd_mm"]["mean"], "tct_test": result["tct"][sides[0]],
            "tct_reference": result["tct"][sides[1]], "vol_l1_reference": result["volume_l1_reference"]["mean"],
            "vol_l1_normative": result["volume_l1_normative"][sides[0]]["mean"]}


def mean_row(rows: list[dict]) -> dict:
    """Mean of each summary value over ``rows`` (NaN left out; any ``inf`` PSNR makes the mean ``inf``)."""
    return {key: metrics.nanmean(row[key] for row in rows) for key in rows[0]} if rows else {}


def jsonable(value):
    """JSON-safe copy: NaN → null, ±infinity → "inf"/"-inf", numpy scalars → Python, other objects → str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, np.integer):
        return int(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


def format_metric(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _md_cells(row: dict) -> list[str]:
    return [f"{format_metric(row['psnr_mask_db'], 2)} / {format_metric(row['psnr_bbox_db'], 2)}",
            f"{format_metric(row['ssim_mask'], 4)} / {format_metric(row['ssim_bbox'], 4)}",
            format_metric(row["dice_mean"], 4),
            format_metric(row["hd95_mean_mm"], 2), format_metric(row["asd_mean_mm"], 2),
            f"{format_metric(row['tct_test'], 3)} ({format_metric(row['tct_reference'], 3)})",
            f"{format_metric(row['vol_l1_reference'], 4)} / {format_metric(row['vol_l1_normative'], 4)}"]


METRIC_HEADERS = ["PSNR (dB) mask / bbox", "SSIM mask / bbox", "Dice", "HD95 (mm)", "ASD (mm)", "TCT {test} ({ref})",
                  "Vol L1 vs {ref} / vs normative"]


def conventions_text(table: LabelTable, normative: NormativeTable, dilation_mm: float, test: str, ref: str) -> str:
    return (f"Conventions: PSNR and SSIM are given for two regions, *mask* = the {ref} brain mask dilated by "
            f"{dilation_mm:g} mm and *bbox* = the bounding box of the {ref} brain mask; in each region both images "
            f"are min–max normalised over the region's voxels (data range 1). SSIM: 3-D Gaussian window σ = 1.5 "
            f"voxels. Dice, HD95 and ASD are means over the {len(table.values)} labels of the {table.source} "
            f"(labels absent from both maps left out); HD95 = 95th percentile and ASD = mean of the pooled symmetric "
            f"surface distances (SimpleITK, mm). TCT = |μGM − μWM| / sqrt(σGM² + σWM²) of the {test} (of the "
            f"{ref} in brackets). Vol L1 = mean |V − V_{ref}| / V_{ref} over tissues / mean |V − mean| / mean over "
            f"the normative measures ({normative.source}).")


def conventions_dict() -> dict:
    return {"lengths": "mm", "volumes": "mL", "ga": "weeks",
            "regions": {"brain_mask": f"reference brain mask dilated by {metrics.DEFAULT_DILATION_MM:g} mm (ball)",
                        "bounding_box": "bounding box of the reference brain mask"},
            "intensity_normalisation": "each image min-max normalised over the region voxels, data range 1",
            "ssim": "skimage structural_similarity, 3-D, gaussian_weights, sigma 1.5 voxels, "
                    "use_sample_covariance False; SSIM map averaged over the region",
            "psnr": "10 log10(1 / MSE) over the region; inf when identical",
            "surface_distances": "SimpleITK inner label contours and Maurer distance maps in mm; HD95 = 95th "
                                 "percentile, ASD = mean of the pooled distances of both directions",
            "dice": "per label; NaN when the label is absent from both, left out of the mean",
            "tct": "|mean_GM - mean_WM| / sqrt(sd_GM^2 + sd_WM^2) with GM = cGM, WM = WM labels",
            "volume_l1_reference": "mean over tissues of |V - V_ref| / V_ref on the reference grid",
            "volume_l1_normative": "mean over measures of |V - mean| / mean at the GA, with z = (V - mean) / sd",
            "non_finite_json": "NaN is written as null, infinity as the string 'inf'"}


def markdown_table(title: str, conventions: str, key_headers: list[str], keys: list[list[str]], rows: list[dict],
                   mean: dict | None, test: str, ref: str) -> str:
    headers = key_headers + [h.format(test=test, ref=ref) for h in METRIC_HEADERS]
    lines = [f"# {title}", "", conventions, "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for key, row in zip(keys, rows):
        lines.append("| " + " | ".join(key + _md_cells(row)) + " |")
    if mean is not None and len(rows) > 1:
        lines.append("| " + " | ".join(["**mean**"] + [""] * (len(key_headers) - 1) + _md_cells(mean)) + " |")
    return "\n".join(lines) + "\n"


def intensity_error_table(key_headers: list[str], keys: list[list[str]], results: list[dict], ref: str) -> str:
    """``metrics.md``'s second table: per comparison, the region's MSE (×1000, the PSNR's: ``10 log10(1 / MSE)``)
    and per tissue of the reference's (``ref``) labels (and *outside*, the region's voxels without a label) its
    share of that squared error (%) and its signed mean error (×100, normalised intensities; > 0: too bright), from
    each result's ``intensity_error``."""
    if not results:
        return ""
    labels = list(results[0]["intensity_error"]["per_label"])
    headers = key_headers + ["MSE ×1000"] + labels + ["outside"]
    lines = ["## Where the intensity error lies (PSNR mask region)", "",
             f"Per tissue of the {ref}'s labels (*outside*: the region's voxels with none, e.g. the dilation band): "
             f"its share of the squared error (%) and, in brackets, its mean signed error (×100, both images min–max "
             f"normalised; > 0 where the atlas is too bright).", "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]

    def cell(part: dict) -> str:
        if not part["fraction"]:
            return "—"
        share = part["share"]
        share_text = "n/a" if share is None or math.isnan(share) else f"{100 * share:.0f} %"
        return f"{share_text} ({format_metric(100 * part['bias'], 1)})"

    for key, result in zip(keys, results):
        error = result["intensity_error"]
        cells = [cell(error["per_label"][label]) for label in labels] + [cell(error["outside"])]
        lines.append("| " + " | ".join(key + [format_metric(1000 * error["mse"], 2)] + cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, document: dict, markdown: str) -> dict:
    """Write ``metrics.json`` and ``metrics.md`` into ``out`` (atomically); returns ``document``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / METRICS_JSON, json.dumps(jsonable(document), indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / METRICS_MD, markdown)
    return document
