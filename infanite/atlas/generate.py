"""``infanite atlas``: turn a trained run into a spatio-temporal atlas (T2w, tissue labels, volumes, growth charts).

For a requested gestational age *t* (weeks) the per-stack latent grids ``z_s`` of the run are combined by Gaussian
kernel regression (GKR) over the stacks' GAs (the paper's conditional atlas)::

    z(t) = Σ_s w_s(t) z_s,   w_s(t) ∝ exp(−(GA_s − t)² / 2σ²),   Σ_s w_s = 1

(stacks of unknown GA get weight 0; ``top_k`` keeps the k largest weights).  The support of *t* is summarised by
the effective sample size ESS = (Σ w)² / Σ w² of the kernel weights; an atlas is still generated, with a recorded
warning, when ESS < 3 or *t* lies outside the stacks' GA range.

The decoder is then queried PSF-free at every voxel centre (template RAS mm) of the atlas grid — the training
grid's field of view and direction cosines at the requested spacing — in memory-sized chunks (bf16 autocast on
CUDA).  Outputs per GA (``<GA>`` with one decimal): ``atlas_ga-<GA>_T2w.nii.gz`` (normalised intensity, float32,
≥ 0, zero outside the brain), ``atlas_ga-<GA>_dseg.nii.gz`` (label values; background and halo → 0; small
disconnected islands reassigned, the largest brain component kept) and optionally ``atlas_ga-<GA>_probseg.nii.gz``
(4-D softmax probability of each label value).  Then ``volumes.tsv`` (mL per tissue and per normative measure),
``growth.png`` (atlas volumes over the normative mean ± 1/2 SD), ``montage.png`` and, last,
``atlas_manifest.json``.  Every file is written atomically; GAs already complete according to the manifest of the
same atlas (same checkpoint contents, spacing, σ, top_k) are skipped, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from infanite.geometry import as_matrix, direction_cosines, voxel_spacing
from infanite.labels import LabelTable, default_label_table
from infanite.reference.normative import MEASURE_LABELS, NormativeTable, open_normative
from infanite.progress import ProgressReporter

if TYPE_CHECKING:   # torch, SciPy, nibabel and SimpleITK load on first use: ``infanite --help`` stays fast
    import torch

    from infanite.io.images import Grid

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
STACKS = "stacks.json"
CONFIG = "config.yaml"
MANIFEST = "atlas_manifest.json"
VOLUMES = "volumes.tsv"
GROWTH = "growth.png"
MONTAGE = "montage.png"
MANIFEST_FORMAT = "infanite-atlas/1"
#: Below this effective sample size (stacks) an atlas GA is flagged as weakly supported.
MIN_ESS = 3.0
#: Accepted gestational ages (weeks) for atlas generation.
GA_LIMITS = (10.0, 50.0)
#: CPU activation budget for one inference chunk (bytes).
CPU_BUDGET_BYTES = 256 * 2 ** 20
#: Live float32 N×hidden tensors per query point in the (non-lean) inference forward pass.
ACTIVATIONS_PER_POINT = 8
#: Most rows of the montage.
MONTAGE_ROWS = 8


# --------------------------------------------------------------------------------------------- kernel regression

@dataclass(frozen=True)
class KernelWeights:
    """GKR weights of the stacks for one target GA.

    ``weights`` (S,) sum to 1 (0 for stacks of unknown GA or outside ``top_k``); ``ess`` is the effective sample
    size (Σw)²/Σw² in stacks, of the weights kept after ``top_k``; ``support_weeks`` the (min, max) GA of the
    stacks with a known GA; ``warnings`` the support warnings (empty when the GA is well supported).
    """

    target_ga: float
    weights: np.ndarray
    ess: float
    support_weeks: tuple
    warnings: tuple = ()


def _check_sigma_top_k(sigma_weeks, top_k) -> None:
    try:
        sigma_ok = math.isfinite(float(sigma_weeks)) and float(sigma_weeks) > 0
    except (TypeError, ValueError):
        sigma_ok = False
    if not sigma_ok:
        raise ValueError(f"kernel width sigma must be > 0 weeks, got {sigma_weeks!r}")
    try:
        k_ok = top_k is None or (int(top_k) == top_k and int(top_k) >= 1)
    except (TypeError, ValueError):
        k_ok = False
    if not k_ok:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")


def gkr_weights(stack_ga_weeks, target_ga: float, sigma_weeks: float = 0.5, top_k: int | None = None
                ) -> KernelWeights:
    """Gaussian kernel weights over stacks for ``target_ga`` (weeks), bandwidth ``sigma_weeks`` (weeks).

    ``stack_ga_weeks`` may hold ``None``/NaN for stacks of unknown GA (weight 0).  The kernel is evaluated in log
    space relative to its largest value, so a target far from every stack still gets finite weights (the nearest
    stacks).  ``top_k`` keeps the ``k`` largest weights (ties by stack order).  Raises ``ValueError`` when no stack
    has a known GA or an argument is out of range.
    """
    ga = np.array([np.nan if g is None else float(g) for g in stack_ga_weeks], dtype=np.float64)
    known = np.isfinite(ga)
    target = float(target_ga)
    if not math.isfinite(target):
        raise ValueError(f"target GA must be a finite number of weeks, got {target_ga!r}")
    _check_sigma_top_k(sigma_weeks, top_k)
    if not known.any():
        raise ValueError("no stack of the run has a known gestational age; GA regression is impossible")
    log_w = np.full(ga.shape, -np.inf)
    log_w[known] = -0.5 * ((ga[known] - target) / float(sigma_weeks)) ** 2
    if top_k is not None and int(top_k) < int(known.sum()):
        order = np.argsort(-log_w, kind="stable")
        log_w[order[int(top_k):]] = -np.inf
    raw = np.exp(log_w - log_w.max())                # largest weight 1: no underflow to all-zero
    ess = float(raw.sum() ** 2 / np.square(raw).sum())
    lo, hi = float(ga[known].min()), float(ga[known].max())
    notes = []
    if target < lo or target > hi:
        notes.append(f"GA {target:.1f} weeks: generated, but outside the trained range {lo:.1f}-{hi:.1f} weeks "
                     f"of the stacks (support: ESS {ess:.2f} stacks at sigma {sigma_weeks} weeks); "
                     f"this is an extrapolation")
    if ess < MIN_ESS:
        notes.append(f"GA {target:.1f} weeks: weak support, effective sample size {ess:.2f} < {MIN_ESS:g} stacks "
                     f"within sigma {sigma_weeks} weeks (stacks span {lo:.1f}-{hi:.1f} weeks)")
    return KernelWeights(target, raw / raw.sum(), ess, (lo, hi), tuple(notes))


def regress_latent(latents: torch.Tensor, weights) -> torch.Tensor:
    """Weighted sum of per-stack latent grids: (S, C, G, G, G) and (S,) weights → (1, C, G, G, G)."""
    import torch

    w = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=latents.dtype, device=latents.device)
    if w.ndim != 1 or w.shape[0] != latents.shape[0]:
        raise ValueError(f"need one weight per stack ({latents.shape[0]}), got shape {tuple(w.shape)}")
    return torch.tensordot(w, latents, dims=1)[None]


# ------------------------------------------------------------------------------------------------- geometry

def atlas_grid(training_grid_shape, training_voxel_to_ras, spacing_mm) -> Grid:
    """The atlas grid: the training (template) grid's field of view and axes at ``spacing_mm`` (mm, 1 or 3 values).

    Same direction cosines and centre as the training grid; the number of voxels per axis is the largest that
    keeps the voxel centres inside the training grid's voxel-centre box (the domain the model was trained on), so
    every corner voxel centre lies less than half a new voxel inside the corresponding training corner.
    """
    from infanite.io.images import Grid

    affine = as_matrix(training_voxel_to_ras, "training voxel_to_ras")
    n = np.asarray(training_grid_shape, dtype=np.int64)
    if n.shape != (3,) or np.any(n < 1):
        raise ValueError(f"training grid shape must be 3 positive integers, got {training_grid_shape!r}")
    new = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(new)) or np.any(new <= 0):
        raise ValueError(f"atlas spacing must be > 0 mm, got {spacing_mm!r}")
    extent = voxel_spacing(affine) * (n - 1)
    shape = np.floor(extent / new + 1e-6).astype(np.int64) + 1
    centre = affine[:3, :3] @ ((n - 1) / 2.0) + affine[:3, 3]
    out = np.eye(4)
    out[:3, :3] = direction_cosines(affine) * new
    out[:3, 3] = centre - out[:3, :3] @ ((shape - 1) / 2.0)
    return Grid(tuple(int(s) for s in shape), out)


# ------------------------------------------------------------------------------------------------- cleaning

@dataclass(frozen=True)
class CleaningReport:
    """Voxels changed by :func:`clean_labels`: islands given to a neighbouring label, voxels set to background."""

    reassigned_voxels: int = 0
    removed_voxels: int = 0
    kept_raw: bool = False


_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)       # 26-connectivity


def clean_labels(dseg: np.ndarray, min_fraction: float = 0.01, min_voxels: int = 10
                 ) -> tuple[np.ndarray, CleaningReport]:
    """Remove small disconnected islands of a label map (0 = background).

    Per label, every connected component (26-connectivity) except the label's largest that has fewer than
    ``max(min_voxels, min_fraction × label volume)`` voxels is given to the most frequent non-background label
    touching it (to 0 when it touches only background).  Then only the largest connected component of the brain
    (all labels > 0) is kept.  The largest component of each label always stays, and the result is never
    blank: if cleaning would empty a non-empty map the raw map is returned (``kept_raw``).
    """
    from scipy import ndimage

    raw = np.asarray(dseg)
    out = raw.copy()
    reassigned = removed = 0
    for value in np.unique(raw[raw > 0]):
        comp, n = ndimage.label(out == value, _CONNECTIVITY)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        threshold = max(float(min_voxels), float(min_fraction) * float(sizes.sum()))
        largest = int(np.argmax(sizes)) + 1
        for c, box in enumerate(ndimage.find_objects(comp), start=1):
            if c == largest or box is None or sizes[c - 1] >= threshold:
                continue
            box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
            island = comp[box] == c
            ring = ndimage.binary_dilation(island, _CONNECTIVITY) & ~island
            neighbours = out[box][ring]
            neighbours = neighbours[(neighbours > 0) & (neighbours != value)]
            winner = int(np.bincount(neighbours).argmax()) if neighbours.size else 0
            out[box][island] = winner
            if winner:
                reassigned += int(island.sum())
            else:
                removed += int(island.sum())
    brain = out > 0
    comp, n = ndimage.label(brain, _CONNECTIVITY)
    if n > 1:
        keep = comp == int(np.argmax(np.bincount(comp.ravel())[1:])) + 1
        removed += int((brain & ~keep).sum())
        out[~keep] = 0
    if raw.any() and not out.any():
        return raw.copy(), CleaningReport(0, 0, True)
    return out, CleaningReport(reassigned, removed, False)


# ------------------------------------------------------------------------------------------------- volumes

def label_abbrevs(label_values, table: LabelTable | None = None) -> dict[int, str]:
    """Column name per label value: the table's abbreviation, ``label<v>`` for values it lacks."""
    table = table or default_label_table()
    known = {lab.value: lab.abbrev for lab in table.labels}
    return {int(v): known.get(int(v), f"label{int(v)}") for v in label_values}


def _ga_key(ga: float) -> str:
    return f"{float(ga):.1f}"


def atlas_file_name(ga: float, kind: str) -> str:
    """``atlas_ga-<GA>_<kind>.nii.gz``, GA (weeks) with one decimal (kind: T2w, dseg, probseg, mask)."""
    return f"atlas_ga-{_ga_key(ga)}_{kind}.nii.gz"


def atlas_filenames(ga: float) -> dict[str, str]:
    """Per-GA output names: T2w, dseg and probseg (e.g. ``atlas_ga-24.0_T2w.nii.gz``)."""
    return {kind: atlas_file_name(ga, kind) for kind in ("T2w", "dseg", "probseg")}


# ------------------------------------------------------------------------------------------------- the run

@dataclass
class TrainedRun:
    """A finished training run: its config, stacks.json contents, checkpoint state and checkpoint SHA-256."""

    run_dir: Path
    config: object
    stacks: dict
    state: dict
    checkpoint_sha256: str

    @property
    def training_grid(self) -> Grid:
        """The training (template space) grid of the run, from stacks.json."""
        from infanite.io.images import Grid

        affine = np.asarray(self.stacks["grid_voxel_to_ras"], dtype=np.float64)
        return Grid(tuple(int(n) for n in self.stacks["grid_shape"]), affine)

    def model(self, device) -> torch.nn.Module:
        """The decoder with the checkpoint's weights, in eval mode on ``device``."""
        from infanite.inr.train import build_model

        model = build_model(self.config, len(self.stacks["stack_ids"]), int(self.stacks["halo_label"]),
                            self.stacks["centre_mm"], self.stacks["half_extent_mm"])
        model.load_state_dict(self.state["model"])
        model.lean = False          # inference: the plain forward frees each layer's activations as it goes
        return model.to(device).eval()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_run(run_dir) -> TrainedRun:
    """Read and check a run folder; raises ``ValueError`` naming what is missing or unfinished."""
    import torch

    from infanite.inr.config import load_train_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} does not exist")
    missing = [name for name in (CHECKPOINT, STACKS, CONFIG) if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(f"run folder {run_dir} lacks {', '.join(missing)}; give the --out folder of a "
                         f"finished 'infanite train'")
    config = load_train_config(run_dir / CONFIG)
    try:
        stacks = json.loads((run_dir / STACKS).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{run_dir / STACKS}: unreadable ({exc})") from exc
    needed = {"stack_ids", "ga_weeks", "halo_label", "label_values", "grid_shape", "grid_voxel_to_ras",
              "centre_mm", "half_extent_mm"}
    if not isinstance(stacks, dict) or needed - set(stacks):
        raise ValueError(f"{run_dir / STACKS}: missing key(s) {sorted(needed - set(stacks or {}))}")
    try:
        state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise ValueError(f"{run_dir / CHECKPOINT}: unreadable checkpoint ({exc})") from exc
    if not isinstance(state, dict) or not {"model", "global_step", "total_steps"} <= set(state):
        raise ValueError(f"{run_dir / CHECKPOINT}: not an infanite training checkpoint")
    step, total = int(state["global_step"]), int(state["total_steps"])
    if step < total:
        raise ValueError(f"{run_dir / CHECKPOINT} is unfinished: training stopped at step {step} of {total} "
                         f"({100.0 * step / max(total, 1):.0f} %); finish it with 'infanite train --manifest "
                         f"<registered.tsv> --out {run_dir} --resume' before generating an atlas")
    if list(state.get("stack_ids", stacks["stack_ids"])) != list(stacks["stack_ids"]):
        raise ValueError(f"{run_dir}: {STACKS} and {CHECKPOINT} list different stacks (a mixed-up run folder)")
    if len(stacks["ga_weeks"]) != len(stacks["stack_ids"]):
        raise ValueError(f"{run_dir / STACKS}: ga_weeks and stack_ids differ in length")
    return TrainedRun(run_dir, config, stacks, state, _sha256(run_dir / CHECKPOINT))


# ------------------------------------------------------------------------------------------------- inference

def chunk_size(device: torch.device, hidden_size: int) -> int:
    """Query points per forward chunk: half the free GPU memory (CUDA) or :data:`CPU_BUDGET_BYTES` (CPU)
    over about ``ACTIVATIONS_PER_POINT`` float32 activations of ``hidden_size`` per point."""
    import torch

    per_point = int(hidden_size) * 4 * ACTIVATIONS_PER_POINT
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(np.clip(0.5 * free // per_point, 4096, 1 << 22))
    return int(np.clip(CPU_BUDGET_BYTES // per_point, 1024, 1 << 20))


@dataclass
class Prediction:
    """Raw model outputs on an atlas grid: intensity (float32), argmax class (int), optional probabilities."""

    intensity: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray | None = None


def predict_grid(model, grid: Grid, latent: torch.Tensor, device, label_values, probabilities: bool = False,
                 chunk: int | None = None, on_chunk=None) -> Prediction:
    """Query ``model`` with the latent (1, C, G, G, G) at every voxel centre of ``grid`` (RAS mm), PSF-free.

    Returns arrays of ``grid.shape``; ``probabilities`` adds a (*shape, L) softmax probability per label value
    (softmax over all classes, background and halo included).  ``on_chunk(done, total)`` is called after each
    chunk.
    """
    import torch

    device = torch.device(device)
    shape = tuple(int(s) for s in grid.shape)
    n = int(np.prod(shape))
    chunk = chunk or chunk_size(device, model.first.out_features)
    affine = np.asarray(grid.voxel_to_ras, dtype=np.float64)
    intensity = np.empty(n, np.float32)
    classes = np.empty(n, np.int64)
    probs = np.empty((n, len(label_values)), np.float32) if probabilities else None
    label_index = torch.as_tensor([int(v) + 1 for v in label_values], device=device)   # output columns
    latent = latent.to(device=device, dtype=torch.float32)
    n_chunks = max(1, math.ceil(n / chunk))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for c, start in enumerate(range(0, n, chunk)):
            stop = min(start + chunk, n)
            ijk = np.stack(np.unravel_index(np.arange(start, stop), shape), axis=1).astype(np.float64)
            xyz = torch.from_numpy((ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)).to(device)
            out = model(xyz, torch.zeros(stop - start, dtype=torch.long, device=device), latents=latent).float()
            intensity[start:stop] = out[:, 0].cpu().numpy()
            classes[start:stop] = out[:, 1:].argmax(1).cpu().numpy()
            if probs is not None:
                probs[start:stop] = torch.softmax(out[:, 1:], dim=1)[:, label_index - 1].cpu().numpy()
            if on_chunk is not None:
                on_chunk(c + 1, n_chunks)
    return Prediction(intensity.reshape(shape), classes.reshape(shape).astype(np.int16),
                      None if probs is None else probs.reshape(*shape, len(label_values)))


def classes_to_labels(classes: np.ndarray, label_values, halo_label: int) -> np.ndarray:
    """Map argmax class indices (0 background, label values, halo) to label values (background, halo → 0)."""
    lut = np.zeros(int(halo_label) + 1, dtype=np.int16)
    for v in label_values:
        lut[int(v)] = int(v)
    return lut[np.clip(classes, 0, halo_label)]


def _save_nifti_4d(array: np.ndarray, voxel_to_ras: np.ndarray, path: Path) -> Path:
    """Write a 4-D float32 NIfTI atomically (qform and sform = ``voxel_to_ras``)."""
    from infanite.io.images import save_nifti_array

    return save_nifti_array(np.asarray(array, dtype=np.float32), voxel_to_ras, path)


# ------------------------------------------------------------------------------------------------- figures

def plot_growth(rows: list[dict], table: NormativeTable, path) -> Path:
    """``growth.png``: per normative measure, atlas volume (mL) vs GA over the normative mean ± 1 SD and ± 2 SD.

    ``rows``: dicts with ``ga_weeks`` and measure volumes (mL), as in ``volumes.tsv``.
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


# ------------------------------------------------------------------------------------------------- generation

def read_atlas_manifest(folder, hint: str = "") -> dict | None:
    """``folder/atlas_manifest.json`` (None when absent); ``ValueError`` naming the file, followed by ``hint``, when
    it is unreadable or not an infanite atlas manifest."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable atlas manifest ({exc}){hint}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not an infanite atlas manifest (format {MANIFEST_FORMAT!r} expected){hint}")
    return manifest


def _read_manifest(out_dir: Path) -> dict | None:
    return read_atlas_manifest(out_dir, "; use another output folder or --overwrite")


def _remove_previous(out_dir: Path, manifest: dict | None) -> None:
    """Delete the files an old manifest names (plain names inside ``out_dir`` only), then the manifest."""
    if manifest is None:
        (out_dir / MANIFEST).unlink(missing_ok=True)
        return
    names = [manifest.get(k) for k in ("volumes", "growth", "montage")]
    for entry in (manifest.get("ga") or {}).values():
        names += list((entry.get("files") or {}).values()) if isinstance(entry, dict) else []
    for name in names:
        if isinstance(name, str) and name and Path(name).name == name:
            (out_dir / name).unlink(missing_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)


def _entry_complete(out_dir: Path, entry, probabilities: bool) -> bool:
    if not isinstance(entry, dict) or not entry.get("complete"):
        return False
    files = entry.get("files") or {}
    needed = ("T2w", "dseg", "probseg") if probabilities else ("T2w", "dseg")
    return all(k in files and (out_dir / files[k]).is_file() for k in needed)


def _parse_gas(ga_weeks) -> list[float]:
    values = [ga_weeks] if isinstance(ga_weeks, (int, float)) else list(ga_weeks or [])
    if not values:
        raise ValueError("give at least one gestational age (weeks)")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"gestational age {v!r} is not a number") from exc
        if not math.isfinite(f) or not GA_LIMITS[0] <= f <= GA_LIMITS[1]:
            raise ValueError(f"gestational age {v!r} weeks is outside {GA_LIMITS[0]:g}-{GA_LIMITS[1]:g} weeks")
        out.append(round(f, 1))
    return sorted(set(out))


def _resolve_device(device) -> torch.device:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available; use --device cpu")
    return dev


def _write_volumes(out_dir: Path, rows: list[dict], columns: list[str]) -> Path:
    from infanite.io.images import atomic_write_text

    lines = ["\t".join(["ga_weeks"] + columns)]
    for r in rows:
        lines.append("\t".join([f"{r['ga_weeks']:.1f}"] + [f"{r[c]:.3f}" for c in columns]))
    return atomic_write_text(out_dir / VOLUMES, "\n".join(lines) + "\n")


def generate(run_dir, ga_weeks, out_dir, *, spacing_mm=0.8, device="cpu", sigma_weeks: float = 0.5,
             top_k: int | None = None, probabilities: bool = False, overwrite: bool = False,
             progress: ProgressReporter | None = None, normative=None) -> dict:
    """Generate the atlas of a finished run at the GAs ``ga_weeks`` (weeks, rounded to 0.1) into ``out_dir``.

    ``spacing_mm``: atlas voxel size (mm; 1 or 3 values); ``sigma_weeks``: GKR kernel width (weeks); ``top_k``:
    keep only the k most weighted stacks; ``probabilities``: also write 4-D ``probseg`` maps; ``normative``: CSV
    path or :class:`NormativeTable` for ``growth.png`` (default Ren et al. 2022).  Every input is checked before
    any work; ``ValueError`` for a missing/unfinished run, bad arguments or an ``out_dir`` that already holds a
    different atlas (another checkpoint, spacing, σ or top_k) unless ``overwrite``.  GAs already complete in
    ``out_dir``'s manifest are skipped; the summary files cover every complete GA of the folder.

    Returns a summary dict: ``out_dir``, ``manifest``, ``ga`` (per-GA entries: files, ESS, warnings, volumes),
    ``generated`` and ``skipped`` GA keys, ``warnings``, and the summary file paths.
    """
    from infanite.io.images import atomic_write_text

    gas = _parse_gas(ga_weeks)
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"atlas spacing must be > 0 mm, got {spacing_mm!r}")
    _check_sigma_top_k(sigma_weeks, top_k)
    dev = _resolve_device(device)
    run = load_run(run_dir)
    table = open_normative(normative)
    stacks = run.stacks
    kernels = {_ga_key(g): gkr_weights(stacks["ga_weeks"], g, sigma_weeks, top_k) for g in gas}
    grid = atlas_grid(stacks["grid_shape"], stacks["grid_voxel_to_ras"], spacing)
    support = training_support(run.run_dir, grid)
    out_dir = Path(out_dir)
    identity = json.loads(json.dumps({"checkpoint_sha256": run.checkpoint_sha256,
                                      "spacing_mm": [round(float(s), 6) for s in spacing],
                                      "sigma_weeks": float(sigma_weeks),
                                      "top_k": None if top_k is None else int(top_k)}))
    try:
        previous = _read_manifest(out_dir)
    except ValueError:
        if not overwrite:
            raise
        _remove_previous(out_dir, None)          # an unreadable manifest: nothing of it can be trusted
        previous = None
    if previous is not None and previous.get("identity") != identity:
        if not overwrite:
            old = previous.get("identity") or {}
            raise ValueError(
                f"{out_dir} already holds a different atlas (from {previous.get('run_dir')}, checkpoint "
                f"{str(old.get('checkpoint_sha256'))[:12]}, spacing {old.get('spacing_mm')} mm, sigma "
                f"{old.get('sigma_weeks')} weeks, top_k {old.get('top_k')}); use another --out or --overwrite")
        _remove_previous(out_dir, previous)
        previous = None

    label_values = [int(v) for v in stacks["label_values"]]
    halo = int(stacks["halo_label"])
    abbrevs = label_abbrevs(label_values)
    voxel_ml = abs(float(np.linalg.det(grid.voxel_to_ras[:3, :3]))) / 1000.0
    done_entries = {k: e for k, e in ((previous or {}).get("ga") or {}).items()
                    if _entry_complete(out_dir, e, False)}
    todo = [g for g in gas if not _entry_complete(out_dir, done_entries.get(_ga_key(g)), probabilities)]
    keys_all = sorted(set(done_entries) | {_ga_key(g) for g in gas}, key=float)
    summary_names = {"volumes": VOLUMES, "growth": GROWTH, "montage": MONTAGE}
    if (not todo and previous is not None and previous.get("status") == "complete"
            and set(keys_all) == set(previous.get("ga") or {})
            and previous.get("normative") == table.source
            and all((out_dir / n).is_file() for n in summary_names.values())):
        return _summary(out_dir, previous, generated=[], skipped=[_ga_key(g) for g in gas])

    manifest = {"format": MANIFEST_FORMAT, "status": "in_progress", "identity": identity,
                "run_dir": str(Path(run_dir).resolve()),
                "checkpoint": {"global_step": int(run.state["global_step"]),
                               "total_steps": int(run.state["total_steps"]), "sha256": run.checkpoint_sha256},
                "spacing_mm": identity["spacing_mm"], "sigma_weeks": float(sigma_weeks), "top_k": identity["top_k"],
                "grid": {"shape": list(grid.shape), "voxel_to_ras": grid.voxel_to_ras.tolist()},
                "label_values": label_values, "probseg_labels": label_values,
                "stack_ga_range_weeks": list(next(iter(kernels.values())).support_weeks),
                "normative": table.source, "ga": dict(done_entries)}
    out_dir.mkdir(parents=True, exist_ok=True)
    generated = []
    if todo:
        model = run.model(dev)
        latents = model.latents.detach()
        chunk = chunk_size(dev, model.first.out_features)
        n_chunks = max(1, math.ceil(int(np.prod(grid.shape)) / chunk))
        progress = progress or ProgressReporter(None)
        progress.start("atlas", len(todo) * n_chunks,
                       f"{len(todo)} GA(s) on a {'x'.join(map(str, grid.shape))} grid")
        for i, g in enumerate(todo):
            key = _ga_key(g)
            kw = kernels[key]
            for note in kw.warnings:
                logger.warning(note)

            def on_chunk(done, total, base=i * n_chunks, key=key):
                progress.update(base + done, f"GA {key}: chunk {done}/{total}", ga_weeks=float(key))

            latent = regress_latent(latents, kw.weights)
            pred = predict_grid(model, grid, latent, dev, label_values, probabilities, chunk, on_chunk)
            entry = _write_ga(out_dir, grid, g, pred, label_values, halo, abbrevs, voxel_ml, support)
            entry.update({"ess": round(kw.ess, 4), "warnings": list(kw.warnings),
                          "weights": {sid: round(float(w), 6) for sid, w in zip(stacks["stack_ids"], kw.weights)
                                      if w > 1e-6}})
            manifest["ga"][key] = entry
            atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1))
            generated.append(key)
    for key in keys_all:           # skipped GAs: refresh their support notes (same run, same σ → same values)
        if key in kernels and key not in generated:
            kw = kernels[key]
            manifest["ga"][key].update({"ess": round(kw.ess, 4), "warnings": list(kw.warnings)})
    manifest["ga"] = {k: manifest["ga"][k] for k in keys_all}

    columns = list(abbrevs.values())
    rows = []
    for key in keys_all:
        vols = manifest["ga"][key]["volumes_ml"]
        rows.append({"ga_weeks": float(key), **vols})
    columns += [m for m in MEASURE_LABELS if rows and m in rows[0]]
    _write_volumes(out_dir, rows, columns)
    plot_growth(rows, table, out_dir / GROWTH)
    _write_montage(out_dir, manifest, keys_all)
    manifest.update({"status": "complete", **summary_names})
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1))
    return _summary(out_dir, manifest, generated=generated,
                    skipped=[_ga_key(g) for g in gas if _ga_key(g) not in generated])


def training_support(run_dir: Path, grid: Grid) -> np.ndarray | None:
    """Where the INR was trained (union of the stacks' brain + halo, ``support_mask.nii.gz`` of the run) on
    ``grid`` (nearest neighbour, world coordinates); ``None`` for runs that predate the file.  Outside it the
    network was never asked for anything, so the atlas is background there."""
    from infanite.io.images import load_nifti
    from infanite.io.resample import resample
    from infanite.inr.train import SUPPORT

    path = Path(run_dir) / SUPPORT
    if not path.exists():
        return None
    return resample(load_nifti(path, dtype=np.float32), grid, None, "nearest").array > 0.5


def _write_ga(out_dir: Path, grid: Grid, ga: float, pred: Prediction, label_values, halo: int, abbrevs,
              voxel_ml: float, support: np.ndarray | None = None) -> dict:
    """Write one GA's NIfTI files from the raw prediction; returns its manifest entry."""
    from infanite.io.images import Volume, save_nifti

    names = atlas_filenames(ga)
    raw = classes_to_labels(pred.classes, label_values, halo)
    if support is not None:
        raw = np.where(support, raw, 0).astype(raw.dtype)
    dseg, report = clean_labels(raw)
    intensity = np.where(dseg > 0, np.clip(pred.intensity, 0.0, None), 0.0).astype(np.float32)
    files = {"T2w": names["T2w"], "dseg": names["dseg"]}
    if pred.probabilities is not None:
        _save_nifti_4d(pred.probabilities, grid.voxel_to_ras, out_dir / names["probseg"])
        files["probseg"] = names["probseg"]
    save_nifti(Volume(intensity, grid.voxel_to_ras), out_dir / names["T2w"], dtype=np.float32)
    save_nifti(Volume(dseg.astype(np.int16), grid.voxel_to_ras), out_dir / names["dseg"],
               dtype=np.uint8 if max(label_values) < 256 else np.int16)
    from infanite.evaluation.metrics import label_volumes_ml, measures_from_tissues

    tissue = label_volumes_ml(dseg, abbrevs, voxel_ml * 1000.0)
    return {"ga_weeks": float(_ga_key(ga)), "files": files, "complete": True,
            "volumes_ml": {k: round(v, 4) for k, v in {**tissue, **measures_from_tissues(tissue)}.items()},
            "cleaning": {"reassigned_voxels": report.reassigned_voxels, "removed_voxels": report.removed_voxels,
                         "kept_raw": report.kept_raw}}


def _write_montage(out_dir: Path, manifest: dict, keys: list[str]) -> Path:
    from infanite.io.images import load_labels, load_nifti
    from infanite.io.figures import save_montage

    rows = []
    for key in _montage_selection(keys):
        files = manifest["ga"][key]["files"]
        rows.append((f"GA {key} w", load_nifti(out_dir / files["T2w"]), load_labels(out_dir / files["dseg"])))
    return save_montage(rows, out_dir / MONTAGE, title="INFANiTE atlas")


def _summary(out_dir: Path, manifest: dict, generated: list[str], skipped: list[str]) -> dict:
    warnings = [w for entry in manifest["ga"].values() for w in entry.get("warnings", [])]
    return {"out_dir": out_dir, "manifest": out_dir / MANIFEST, "ga": manifest["ga"], "generated": generated,
            "skipped": skipped, "warnings": warnings, "volumes": out_dir / VOLUMES, "growth": out_dir / GROWTH,
            "montage": out_dir / MONTAGE}


# ------------------------------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``infanite atlas`` (exactly one of ``--ga`` / ``--ga-range`` is checked by :func:`command`)."""
    parser.add_argument("--run", required=True, help="run folder of a finished 'infanite train' (--out there)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--ga", type=float, nargs="+", metavar="WEEKS", help="gestational ages in weeks")
    which.add_argument("--ga-range", type=float, nargs=2, metavar=("START", "STOP"),
                       help="gestational ages START, START+STEP, ... up to STOP inclusive (weeks)")
    parser.add_argument("--ga-step", type=float, default=1.0, help="step of --ga-range in weeks (default 1)")
    parser.add_argument("--spacing", type=float, default=0.8, help="atlas voxel size in mm (default 0.8)")
    parser.add_argument("--out", required=True, help="atlas folder (NIfTI per GA, volumes.tsv, growth.png, ...)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--sigma", type=float, default=0.5,
                        help="Gaussian kernel width over stack GAs in weeks (default 0.5)")
    parser.add_argument("--top-k", type=int, default=None, metavar="K",
                        help="regress from the K most weighted stacks only")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write 4-D tissue probability maps (atlas_ga-<GA>_probseg.nii.gz)")
    parser.add_argument("--normative", default=None, metavar="CSV",
                        help="normative volume table for growth.png (default: built-in Ren et al. 2022)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different atlas already in --out")
    parser.add_argument("--progress-json", metavar="FILE|-", default=None,
                        help="write progress as JSON lines to FILE, or to stdout with '-'")
    return parser


def ga_list(ga=None, ga_range=None, ga_step: float = 1.0) -> list[float]:
    """The GAs of the command line: ``ga`` as given, or START..STOP (inclusive) every ``ga_step`` weeks."""
    if (ga is None) == (ga_range is None):
        raise ValueError("give exactly one of --ga WEEKS... or --ga-range START STOP")
    if ga is not None:
        return [float(g) for g in ga]
    start, stop = (float(v) for v in ga_range)
    if not (math.isfinite(ga_step) and ga_step > 0):
        raise ValueError(f"--ga-step must be > 0 weeks, got {ga_step}")
    if stop < start:
        raise ValueError(f"--ga-range START {start:g} is after STOP {stop:g}")
    n = int(math.floor((stop - start) / ga_step + 1e-9))
    return [round(start + i * ga_step, 6) for i in range(n + 1)]


def command(args) -> int:
    """Run ``infanite atlas``; 0 on success, 2 (one line on stderr) for invalid input.

    Support warnings are printed once here (the module logger is muted meanwhile, so they do not appear twice).
    """
    mute = logging.NullHandler()
    logger.addHandler(mute)
    propagate, logger.propagate = logger.propagate, False
    try:
        gas = ga_list(getattr(args, "ga", None), getattr(args, "ga_range", None), getattr(args, "ga_step", 1.0))
        with ProgressReporter(getattr(args, "progress_json", None)) as progress:
            result = generate(args.run, gas, args.out, spacing_mm=args.spacing, device=args.device,
                              sigma_weeks=args.sigma, top_k=args.top_k, probabilities=args.probabilities,
                              overwrite=args.overwrite, progress=progress, normative=args.normative)
    except (ValueError, FileNotFoundError) as exc:
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"atlas: error: {message}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(mute)
        logger.propagate = propagate
    for note in result["warnings"]:
        print(f"atlas: warning: {note}", file=sys.stderr)
    print(f"atlas written: {result['out_dir']} ({len(result['ga'])} GA(s); {len(result['generated'])} generated, "
          f"{len(result['skipped'])} already done); manifest {result['manifest']}")
    return 0
