"""A finished training run, read and checked, and the network queried on an atlas grid (PSF-free, chunked).

The atlas grid is the training (template) grid's field of view and direction cosines at the requested spacing;
the decoder is queried at every voxel centre (template RAS mm) in memory-sized chunks (bf16 autocast on CUDA).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from infanite.geometry import as_matrix, direction_cosines, voxel_spacing
from infanite.io.layout import CHECKPOINT, CONFIG, FETUS_SUPPORT, STACKS, SUPPORT

if TYPE_CHECKING:   # torch, SciPy, nibabel and SimpleITK load on first use
    import torch

    from infanite.io.images import Grid

#: CPU activation budget for one inference chunk (bytes).
CPU_BUDGET_BYTES = 256 * 2 ** 20
#: Live float32 N×hidden tensors per query point in the (non-lean) inference forward pass.
ACTIVATIONS_PER_POINT = 8


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
        """The network with the checkpoint's weights, in eval mode on ``device`` (the paper's modulated SIREN or
        the template model, as the run's config says)."""
        from infanite.inr.build import build_model, ga_span

        stacks = self.stacks
        model = build_model(self.config, len(stacks["stack_ids"]), int(stacks["halo_label"]), stacks["centre_mm"],
                            stacks["half_extent_mm"], stack_fetus=stacks.get("stack_fetus"),
                            stack_ga_weeks=stacks["ga_weeks"],
                            ga_range_weeks=stacks.get("ga_range_weeks") or ga_span(stacks["ga_weeks"]))
        model.load_state_dict(self.state["model"])
        model.lean = False          # inference: the plain forward frees each layer's activations as it goes
        return model.to(device).eval()


#: σ (weeks) of the GA kernel over which a template run's atlas takes the fetuses' positions (``--position-sigma``):
#: measured best of 0.25 / 0.35 / 0.5 and none (benchmarks/README.md, "The atlas where the fetuses are")
POSITION_SIGMA_WEEKS = 0.25


def atlas_position(model, ga_weeks: float, region, grid: Grid, sigma_weeks: float):
    """A template run's atlas position at GA ``ga_weeks``: where the fetuses scanned around it sit against the
    template ((3,) mm, template RAS; :meth:`~infanite.inr.template.TemplateINR.cohort_position` over the voxels of
    ``region``, a boolean array on ``grid``, or the whole grid where ``region`` is None, with a GA kernel of σ
    ``sigma_weeks``).  ``None`` for the paper's model, a run without displacements, or ``sigma_weeks`` 0 (the
    template where training left it)."""
    from infanite.geometry import mask_points_mm
    from infanite.inr.template import TemplateINR

    if not isinstance(model, TemplateINR) or model.deformation is None or not sigma_weeks:
        return None
    mask = np.ones(grid.shape, bool) if region is None or not np.any(region) else region
    points = mask_points_mm(mask, grid.voxel_to_ras)
    return model.cohort_position(float(ga_weeks), points, float(sigma_weeks)).cpu().numpy().astype(np.float64)


def atlas_query(model, ga_weeks: float, kernel_weights, shift_mm=None):
    """The atlas at GA ``ga_weeks`` as a function of template RAS points (N, 3) → outputs (N, 1 + classes): the
    template model's ``T(x + shift, GA)`` (no deformation; ``shift_mm`` from :func:`atlas_position`, default
    none), or the paper's decoder at the Gaussian-kernel regression of the stack latents (``kernel_weights``, one
    per stack)."""
    import torch

    from infanite.atlas.kernel import regress_latent
    from infanite.inr.template import TemplateINR

    if isinstance(model, TemplateINR):
        shift = None if shift_mm is None else torch.as_tensor(np.asarray(shift_mm), dtype=torch.float32)
        return lambda xyz: model.atlas(xyz, float(ga_weeks), None if shift is None else shift.to(xyz.device))
    latent = regress_latent(model.latents.detach(), kernel_weights).float()

    def query(xyz):
        return model(xyz, torch.zeros(xyz.shape[0], dtype=torch.long, device=xyz.device),
                     latents=latent.to(xyz.device))
    return query


def model_width(model) -> int:
    """Floats held per query point in the widest layer (for :func:`chunk_size`)."""
    from infanite.inr.template import GridTemplate, ModulatedTemplate, TemplateINR

    if isinstance(model, TemplateINR):
        t = model.template
        if isinstance(t, GridTemplate):
            nodes = sum(int(g.shape[0]) * int(g.shape[1]) for g in t.features.grids)
            return max(nodes, t.head.in_features)
        if isinstance(t, ModulatedTemplate):
            return t.decoder.first.out_features
        return t.first.out_features
    return model.first.out_features


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_run(run_dir) -> TrainedRun:
    """Read and check a run folder; raises ``ValueError`` naming what is missing or unfinished."""
    from infanite.inr.checkpoint import non_finite_parameters, read_checkpoint
    from infanite.inr.config_loading import load_train_config

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
    state = read_checkpoint(run_dir / CHECKPOINT, required={"model", "global_step", "total_steps"})
    broken = non_finite_parameters(state["model"])
    if broken:
        raise ValueError(f"{run_dir / CHECKPOINT}: the model's parameters are not finite (NaN or inf in "
                         f"{', '.join(broken[:4])}{' …' if len(broken) > 4 else ''}): training diverged; train again "
                         f"with lower learning rates (--overwrite)")
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


def resolve_device(device) -> torch.device:
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


def predict_grid(query, grid: Grid, device, label_values, probabilities: bool = False, chunk: int = 65536,
                 on_chunk=None) -> Prediction:
    """Evaluate ``query`` (template RAS points (N, 3) → outputs, see :func:`atlas_query`) at every voxel centre of
    ``grid`` (RAS mm), PSF-free, ``chunk`` points at a time.

    Returns arrays of ``grid.shape``; ``probabilities`` adds a (*shape, L) softmax probability per label value
    (softmax over all classes, background and halo included).  ``on_chunk(done, total)`` is called after each
    chunk.
    """
    import torch

    device = torch.device(device)
    shape = tuple(int(s) for s in grid.shape)
    n = int(np.prod(shape))
    affine = np.asarray(grid.voxel_to_ras, dtype=np.float64)
    intensity = np.empty(n, np.float32)
    classes = np.empty(n, np.int64)
    probs = np.empty((n, len(label_values)), np.float32) if probabilities else None
    label_index = torch.as_tensor([int(v) + 1 for v in label_values], device=device)   # output columns
    n_chunks = max(1, math.ceil(n / chunk))
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for c, start in enumerate(range(0, n, chunk)):
            stop = min(start + chunk, n)
            ijk = np.stack(np.unravel_index(np.arange(start, stop), shape), axis=1).astype(np.float64)
            xyz = torch.from_numpy((ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)).to(device)
            out = query(xyz).float()
            intensity[start:stop] = out[:, 0].cpu().numpy()
            classes[start:stop] = out[:, 1:].argmax(1).cpu().numpy()
            if probs is not None:
                probs[start:stop] = torch.softmax(out[:, 1:], dim=1)[:, label_index - 1].cpu().numpy()
            if on_chunk is not None:
                on_chunk(c + 1, n_chunks)
    return Prediction(intensity.reshape(shape), classes.reshape(shape).astype(np.int16),
                      None if probs is None else probs.reshape(*shape, len(label_values)))


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


def training_support(run_dir: Path, grid: Grid) -> np.ndarray | None:
    """Where the INR was trained (union of the stacks' brain + halo, ``support_mask.nii.gz`` of the run) on
    ``grid`` (nearest neighbour, world coordinates); ``None`` for runs that predate the file.  Outside it the
    network was never asked for anything, so the atlas is background there."""
    from infanite.io.images import load_nifti
    from infanite.io.resample import resample

    path = Path(run_dir) / SUPPORT
    if not path.exists():
        return None
    return resample(load_nifti(path, dtype=np.float32), grid, None, "nearest").array > 0.5


#: a voxel is in the support of GA *t* when the fetuses observing it (brain + halo) hold at least this share of the
#: GA kernel's weight
GA_SUPPORT_FRACTION = 0.5


class GASupport:
    """The GA-local support of a run: where the fetuses near a GA were observed.

    The union of every stack's brain + halo (:func:`training_support`) spans the largest brains of the cohort; at a
    young GA most of it was seen only as brain of older fetuses, and a GA-conditioned model extrapolates tissue
    into that shell.  The support of GA *t* is instead the voxels where the fetuses observing them (each fetus's
    brain + halo, ``support_fetuses.nii.gz`` of the run) carry at least ``fraction`` of the kernel weights of *t*
    (each fetus weighs the sum of its stacks' weights): the kernel-weighted median fetus's brain + halo.  Runs that
    predate the file fall back to the union (``ga_local`` False)."""

    def __init__(self, run_dir: Path, grid: Grid, stack_fetus, fraction: float = GA_SUPPORT_FRACTION):
        self.grid, self.fraction = grid, float(fraction)
        self.union = training_support(run_dir, grid)
        path = Path(run_dir) / FETUS_SUPPORT
        self.ga_local = path.exists() and stack_fetus is not None
        if self.ga_local:
            import nibabel as nib

            img = nib.load(str(path))                    # (X, Y, Z, F), written by training
            masks = np.asanyarray(img.dataobj) > 0
            self.fetus_masks = np.moveaxis(masks if masks.ndim == 4 else masks[..., None], -1, 0)
            self.source_affine = np.asarray(img.affine, dtype=np.float64)
            self.stack_fetus = np.asarray(stack_fetus, dtype=np.int64)
            if self.stack_fetus.max() >= len(self.fetus_masks):
                raise ValueError(f"{path} holds {len(self.fetus_masks)} fetuses, fewer than stacks.json names")

    def at(self, stack_weights) -> np.ndarray | None:
        """The support (bool on the atlas grid) for the GA whose kernel gives ``stack_weights`` (one per stack)."""
        if not self.ga_local:
            return self.union
        from infanite.io.images import Volume
        from infanite.io.resample import resample

        w = np.bincount(self.stack_fetus, weights=np.asarray(stack_weights, dtype=np.float64),
                        minlength=len(self.fetus_masks))
        if w.sum() <= 0:
            return self.union
        share = np.tensordot(w / w.sum(), self.fetus_masks.astype(np.float32), axes=1).astype(np.float32)
        local = resample(Volume(share, self.source_affine), self.grid, None, "linear").array >= self.fraction
        return local if self.union is None else local & self.union
