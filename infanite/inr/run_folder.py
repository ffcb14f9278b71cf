"""What a training run folder may hold before ``infanite train`` writes into it, checked before any work.

- a folder holding a model (``checkpoint.pt``) is only continued (``--resume``) or replaced (``--overwrite``),
  never silently restarted from step 0;
- ``--resume`` needs a checkpoint that is a valid INFANiTE checkpoint of the same model: the settings that shape
  the parameters (:data:`SHAPE_KEYS`) must equal the run's own (``config.yaml``), every difference named;
- the device must exist on this machine.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from infanite.io.layout import (CHECKPOINT, CONFIG, DEFORMATIONS_DIR, DIAGNOSTICS, INTENSITY_CEILING, SLICE_MOTION,
                                TRAIN_LOG)

#: config keys (prefixes) that decide the shapes of a checkpoint's tensors
SHAPE_KEYS = ("model", "inr_decoder.", "template.encoding", "template.ga_latents", "template.grid_resolutions",
              "template.ga_nodes", "template.grid_channels", "template.hidden_size", "template.hidden_layers",
              "template.deformation_grid", "data.term", "data.intensity_model", "data.bias_order",
              "data.slice_motion", "data.stack_motion")


def _flat(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def shape_differences(saved: dict, wanted: dict) -> list[str]:
    """``key: run has A, the config asks B`` for every parameter-shaping key where two configs differ."""
    a, b = _flat(saved), _flat(wanted)
    keys = [k for k in sorted(set(a) | set(b)) if any(k == s or (s.endswith(".") and k.startswith(s))
                                                      for s in SHAPE_KEYS)]
    return [f"{k}: the run has {a.get(k)!r}, the config asks {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def check_device(device: str) -> None:
    """``ValueError`` when ``device`` does not exist here (CUDA/MPS absent, a CUDA index out of range)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: not a device (use cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: this PyTorch ({torch.__version__}) sees no CUDA GPU; use "
                             f"--device cpu, or install a CUDA build of PyTorch on a machine with an NVIDIA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here "
                             f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here; use --device cpu")


def check_run_folder(out, config, resume: bool, overwrite: bool, world_size: int = 1) -> dict | None:
    """Check ``out`` for this training call; returns the checkpoint state to resume from (None: start at 0).

    ``ValueError`` (nothing written): a model there without ``--resume``/``--overwrite``; ``--resume`` and
    ``--overwrite`` together; a checkpoint that is not valid, or of another model or size (the keys named), or
    trained by another number of processes than ``world_size`` (data-parallel training)."""
    from infanite.inr.checkpoint import read_checkpoint

    out = Path(out)
    checkpoint = out / CHECKPOINT
    if resume and overwrite:
        raise ValueError("--resume continues the model in the run folder, --overwrite replaces it: give one")
    if not checkpoint.exists():
        return None
    if not resume:
        if overwrite:
            return None
        raise ValueError(f"{out} already holds a model ({CHECKPOINT}); continue it with --resume, or replace it "
                         f"with --overwrite (its checkpoint, log and diagnostics are then discarded)")
    state = read_checkpoint(checkpoint, map_location="cpu")
    model_type = state.get("model_type", "infanite")
    if model_type != config.model:
        raise ValueError(f"{checkpoint} holds a '{model_type}' model, the config asks for '{config.model}'; use a "
                         f"new --out")
    saved = state.get("config")
    if not isinstance(saved, dict) and (out / CONFIG).is_file():
        from infanite.inr.config_loading import load_train_config

        saved = load_train_config(out / CONFIG).to_dict()
    if isinstance(saved, dict):
        differences = shape_differences(saved, config.to_dict())
        if differences:
            raise ValueError(f"cannot resume {checkpoint}: it holds another model than the config asks for ("
                             + "; ".join(differences) + f"); resume with the run's own settings (omit --config "
                             f"and --set, or --config {out / CONFIG}), or start a new run folder")
    trained_by = int(state.get("world_size", 1))
    if trained_by != int(world_size):
        raise ValueError(f"cannot resume {checkpoint}: it was trained by {trained_by} process(es), this run has "
                         f"{int(world_size)}; resume with the same number (--nproc {trained_by}, or torchrun "
                         f"--nproc-per-node {trained_by} on one node), or start a new run folder")
    return state


def clear_previous_model(out) -> None:
    """``--overwrite``: remove the previous model's checkpoint, log, diagnostics, intensity ceiling, deformations
    and slice motions."""
    out = Path(out)
    for name in (CHECKPOINT, TRAIN_LOG, DIAGNOSTICS, SLICE_MOTION, INTENSITY_CEILING):
        (out / name).unlink(missing_ok=True)
    if (out / DEFORMATIONS_DIR).is_dir():
        shutil.rmtree(out / DEFORMATIONS_DIR)
