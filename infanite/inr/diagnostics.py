"""Where a trained model stands between averaging and shape removal: ``diagnostics.json`` of every finished run.

At a diagnostic GA (the cohort's median, or given), on the training grid within the support:

- ``agreement_db``: PSNR (brain region, min–max normalised) of the atlas against the GKR-weighted mean of the
  per-fetus decodings at their own GAs (the paper's model: each stack's decoder output with its own latent; the
  template model: each fetus's reconstruction ``T(x + u_f(x), GA_f)`` in template space).  Around 25 dB or more
  means the atlas is still an intensity average of the fetuses; lower means it is not (for the template model,
  the fetuses' shapes were registered out first);
- ``sharpness``: mean |∇I| (per mm) of the min–max normalised atlas in its brain (``sharpness_truth`` too when a
  truth is given);
- latent norms (the paper's model: per stack, and of the GKR latent; the template's GA-node latents) and the
  displacements (template model: mean and largest control-point displacement per fetus, mm);
- with the simulator's truth (``fetus_truth``: fetus name → (T2 Volume, labels Volume) in template space), each
  fetus's reconstruction against its own deformed truth (PSNR, brain region of the truth), the test that tells
  a blurry data fit (low) from a sharp fit that averaging blurs (high, while the atlas is low); and the same after
  the best affine intensity map of the reconstruction onto the truth (``fetus_reconstruction_affine_db``): where
  the two differ, the fit has the shapes but not the contrast (tissue intensities pulled toward their mean).
"""
from __future__ import annotations

import math

import numpy as np
import torch

#: Gaussian width (weeks) of the kernel over fetus GAs for the diagnostic mean
SIGMA_WEEKS = 0.5


def _decode_stack(model, points: torch.Tensor, stack: int, chunk: int = 65536) -> np.ndarray:
    """The intensity that stack ``stack`` sees at ``points`` (N, 3), in chunks."""
    out = []
    with torch.no_grad():
        for start in range(0, points.shape[0], chunk):
            part = points[start:start + chunk]
            index = torch.full((part.shape[0],), int(stack), dtype=torch.long, device=part.device)
            out.append(model(part, index).float()[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from infanite.evaluation.metrics import minmax_normalise

    region = np.ones(a.shape, bool)
    mse = float(np.mean((minmax_normalise(a, region) - minmax_normalise(b, region)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def compute_diagnostics(run, device="cpu", ga_weeks: float | None = None, fetus_truth: dict | None = None) -> dict:
    """The diagnostics of a finished :class:`~infanite.atlas.predict.TrainedRun` (see the module docstring)."""
    from infanite.atlas.kernel import gkr_weights
    from infanite.atlas.predict import atlas_query, training_support
    from infanite.evaluation.metrics import sharpness
    from infanite.io.images import Volume
    from infanite.inr.template import TemplateINR

    model = run.model(device)
    stacks = run.stacks
    grid = run.training_grid
    support = training_support(run.run_dir, grid)
    if support is None:
        support = np.ones(grid.shape, bool)
    ga = float(np.median([g for g in stacks["ga_weeks"] if g is not None])) if ga_weeks is None else float(ga_weeks)
    kernel = gkr_weights(stacks["ga_weeks"], ga, SIGMA_WEEKS)
    ijk = np.argwhere(support)
    points = torch.as_tensor(ijk @ grid.voxel_to_ras[:3, :3].T + grid.voxel_to_ras[:3, 3], dtype=torch.float32,
                             device=device)
    query = atlas_query(model, ga, kernel.weights)
    with torch.no_grad():
        outputs = torch.cat([query(points[i:i + 65536]).float() for i in range(0, len(points), 65536)])
    atlas = outputs[:, 0].cpu().numpy()
    brain = outputs[:, 1:].argmax(1).cpu().numpy()
    brain = (brain > 0) & (brain < int(stacks["halo_label"]))
    result = {"model": stacks.get("model", "infanite"), "ga_weeks": ga, "ess": round(kernel.ess, 3)}
    stack_fetus = stacks.get("stack_fetus") or list(range(len(stacks["stack_ids"])))
    fetus_ids = stacks.get("fetus_ids") or list(stacks["stack_ids"])
    # the GKR-weighted mean of the per-fetus (per-stack for the paper's model) decodings
    mean = np.zeros_like(atlas)
    total = 0.0
    weights = np.asarray(kernel.weights, dtype=np.float64)
    if isinstance(model, TemplateINR):
        fetus_weight = np.zeros(len(fetus_ids))
        for s, w in enumerate(weights):
            fetus_weight[stack_fetus[s]] += w
        for f, w in enumerate(fetus_weight):
            if w > 1e-3:                                  # the fetus through one of its stacks
                mean += w * _decode_stack(model, points, stack_fetus.index(f))
                total += w
        summary = model.displacement_summary()
        if summary:
            result["displacement_mm"] = {"mean": float(np.mean(summary["mean_mm"])),
                                         "largest": float(np.max(summary["max_mm"])),
                                         "per_fetus_mean": dict(zip(fetus_ids, np.round(summary["mean_mm"], 3)))}
        latents = getattr(getattr(model.template, "decoder", None), "latents", None)
        if latents is not None:
            result["latent_norms"] = {"ga_nodes": latents.detach().flatten(1).norm(dim=1).cpu().tolist()}
    else:
        for s, w in enumerate(weights):
            if w > 1e-3:
                mean += w * _decode_stack(model, points, s)
                total += w
        norms = model.latents.detach().flatten(1).norm(dim=1).cpu().numpy()
        regressed = torch.tensordot(torch.as_tensor(weights, dtype=model.latents.dtype, device=model.latents.device),
                                    model.latents.detach(), dims=1).norm().item()
        result["latent_norms"] = {"stacks_mean": float(norms.mean()), "stacks_min": float(norms.min()),
                                  "stacks_max": float(norms.max()), "gkr_latent": float(regressed)}
    if total > 0 and brain.any():
        result["agreement_db"] = round(_psnr(atlas[brain], (mean / total)[brain]), 3)
    volume = np.zeros(grid.shape, np.float32)
    volume[tuple(ijk.T)] = atlas
    brain_volume = np.zeros(grid.shape, np.uint8)
    brain_volume[tuple(ijk.T)] = brain
    if brain.any():
        result["sharpness"] = round(sharpness(Volume(volume, grid.voxel_to_ras),
                                              Volume(brain_volume, grid.voxel_to_ras)), 5)
    if fetus_truth:
        result["fetus_reconstruction_db"], result["fetus_reconstruction_affine_db"] = _fetus_reconstruction(
            model, run, fetus_truth, device)
    return result


def _fetus_reconstruction(model, run, fetus_truth: dict, device) -> tuple[dict, dict]:
    """PSNR (dB, the truth's brain) of each fetus's reconstruction in template space against its own truth: min–max
    normalised, and after the best affine intensity map (:func:`~infanite.evaluation.metrics.psnr_affine`)."""
    from infanite.evaluation.metrics import psnr_affine
    from infanite.inr.template import TemplateINR

    stacks = run.stacks
    stack_fetus = stacks.get("stack_fetus") or list(range(len(stacks["stack_ids"])))
    fetus_ids = stacks.get("fetus_ids") or list(stacks["stack_ids"])
    out, affine = {}, {}
    for f, name in enumerate(fetus_ids):
        if name not in fetus_truth:
            continue
        t2, labels = fetus_truth[name]
        ijk = np.argwhere(labels.array > 0)
        points = torch.as_tensor(ijk @ t2.voxel_to_ras[:3, :3].T + t2.voxel_to_ras[:3, 3], dtype=torch.float32,
                                 device=device)
        members = [s for s, g in enumerate(stack_fetus) if g == f]
        if isinstance(model, TemplateINR):
            members = members[:1]             # every stack of a fetus sees the same anatomy
        decoded = [_decode_stack(model, points, s) for s in members]
        reconstruction, truth = np.mean(decoded, axis=0), t2.array[tuple(ijk.T)].astype(np.float64)
        out[name] = round(_psnr(reconstruction, truth), 3)
        affine[name] = round(psnr_affine(reconstruction, truth, np.ones(truth.shape, bool)), 3)
    for values in (out, affine):
        if values:
            values["mean"] = round(float(np.mean(list(values.values()))), 3)
    return out, affine


def write_diagnostics(run_dir, device="cpu", ga_weeks: float | None = None, fetus_truth: dict | None = None) -> dict:
    """Compute the diagnostics of the finished run in ``run_dir`` and write ``diagnostics.json`` there."""
    import json
    from pathlib import Path

    from infanite.atlas.predict import load_run
    from infanite.evaluation.report import jsonable
    from infanite.io.atomic import atomic_write_text
    from infanite.io.layout import DIAGNOSTICS

    result = compute_diagnostics(load_run(run_dir), device, ga_weeks, fetus_truth)
    atomic_write_text(Path(run_dir) / DIAGNOSTICS, json.dumps(jsonable(result), indent=1))
    return result
