"""``infanite train``: fit the modulated SIREN and the per-stack latents to a registered cohort.

One optimizer step takes ``n_samples`` voxels of the shuffled packed cohort (an epoch visits every brain + halo
voxel once, as the reference), jitters each ``P`` times with its stack's slice-aware Gaussian PSF (or the
reference's isotropic σ), averages the raw outputs over ``P`` and minimises the weighted intensity loss + weighted
cross-entropy.  AdamW with three groups (decoder, latents, rigid), cosine learning-rate decay over all steps to
``eta_min``, bf16 autocast on CUDA, fp32 on CPU.

Exact resume: every random draw is derived from (seed, epoch, step) — the epoch's permutation and each step's
PSF jitter — so a run restarted from a checkpoint (model, latents, optimizer, scheduler, scaler, position) repeats
the uninterrupted run's losses.  Checkpoints are written atomically every ``checkpoint_every`` steps and at the end
of each epoch; ``train_log.jsonl`` is rewritten up to the checkpoint on resume.

Graceful stop: a file ``STOP`` in the run folder, or SIGTERM (handled while :func:`train` runs in the main thread),
ends the loop at the next step boundary: the checkpoint is saved, a ``stopped`` progress event says at which step,
the file is removed and :func:`train` returns normally (``"stopped": True``); ``--resume`` continues exactly.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from infanite.io.atomic import atomic_output, atomic_write_text
from infanite.io.images import Volume, save_nifti
from infanite.io.layout import CHECKPOINT, CONFIG, STACKS, STOP_FILE, SUPPORT, TRAIN_LOG
from infanite.inr.data import PackedCohort, pack_cohort, psf_jitter, weighted_loss
from infanite.inr.model import ModulatedSiren
from infanite.labels import default_label_table
from infanite.progress import ProgressReporter
from infanite.inr.config import TrainConfig

logger = logging.getLogger(__name__)


class StopRequest:
    """A graceful stop asked by SIGTERM or by ``STOP_FILE`` in the run folder.

    As a context manager it installs a SIGTERM handler when entered in the main thread (a signal handler can only
    be set there) and restores the previous handler on exit.
    """

    def __init__(self, run_dir: Path):
        self.stop_file = Path(run_dir) / STOP_FILE
        self.signalled = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        if hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        self.signalled = True

    def requested(self) -> bool:
        """True once SIGTERM arrived or the stop file exists (one ``stat`` per call)."""
        return self.signalled or self.stop_file.exists()

    def clear(self, stale: bool = False) -> None:
        """Remove the stop file; ``stale``: it was left from before this run (warned about)."""
        if self.stop_file.exists():
            if stale:
                logger.warning("removed %s left from before (a stop request of an earlier run)", self.stop_file)
            try:
                self.stop_file.unlink()
            except FileNotFoundError:
                pass


def _generator(seed: int, *parts: int, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) * 1_000_003 + sum(int(p) * 7919 ** (i + 1) for i, p in enumerate(parts)) % (2 ** 62))
    return g


def build_model(config: TrainConfig, n_stacks: int, halo_label: int, centre_mm, half_extent_mm,
                naive: bool = False) -> ModulatedSiren:
    """The decoder for ``n_stacks`` stacks; outputs intensity + logits for classes 0..halo_label."""
    dec = config.inr_decoder
    return ModulatedSiren(n_stacks, 1 + halo_label + 1, centre_mm, half_extent_mm,
                          dec.hidden_size, dec.num_hidden_layers, dec.modulated_layers, dec.latent_dim, dec.omega,
                          rigid=dec.tf_dim == 6, naive=naive)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory so far (MiB): CUDA allocator peak on a GPU, the process's peak resident set on CPU (None where
    the platform does not tell)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    from infanite.devices import peak_resident_mb

    return peak_resident_mb()


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


def _psf_factors(config: TrainConfig, data: PackedCohort) -> torch.Tensor:
    """(S, 3, 3) Cholesky factors (mm) of each stack's PSF covariance (slice mode) or the isotropic one."""
    if config.psf.mode == "none":
        return torch.zeros(len(data.stack_ids), 3, 3)
    if config.psf.mode == "isotropic":
        sigma = torch.as_tensor(config.psf.isotropic_sigma_norm * data.half_extent_mm, dtype=torch.float32)
        return torch.diag(sigma).expand(len(data.stack_ids), 3, 3).clone()
    return torch.linalg.cholesky(data.psf_cov_mm2.double() + 1e-9 * torch.eye(3, dtype=torch.float64)).float()


def _optimizer(config: TrainConfig, model: ModulatedSiren):
    opt = config.optimizer
    decoder = [p for n, p in model.named_parameters() if n not in ("latents", "rigid")]
    groups = [{"params": decoder, "lr": opt.lr_inr, "weight_decay": opt.inr_weight_decay},
              {"params": [model.latents], "lr": opt.lr_latent, "weight_decay": opt.latent_weight_decay}]
    if model.rigid is not None:
        groups.append({"params": [model.rigid], "lr": opt.lr_tf, "weight_decay": opt.tf_weight_decay})
    return torch.optim.AdamW(groups)


def train(manifest, config: TrainConfig, out, resume: bool = False, progress: ProgressReporter | None = None,
          stop_after_steps: int | None = None) -> dict:
    """Train on ``manifest`` (a ``registered.tsv``) into ``out``; returns a summary.

    ``stop_after_steps`` ends this call early (as if killed) after that many steps of this session — used by the
    tests of exact resume.  A graceful stop (``STOP_FILE`` in ``out`` or SIGTERM, see :class:`StopRequest`) ends
    it at the next step boundary with the checkpoint saved and ``"stopped": True`` in the summary.
    """
    with StopRequest(out) as stop:
        return _train(manifest, config, Path(out), resume, progress, stop_after_steps, stop)


def _train(manifest, config: TrainConfig, out: Path, resume: bool, progress: ProgressReporter | None,
           stop_after_steps: int | None, stop: StopRequest) -> dict:
    stop.clear(stale=True)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    if config.deterministic and device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    labels = default_label_table().values
    data = pack_cohort(manifest, labels, config.spatial_weighting.w_int, config.halo.sigma_voxels,
                       config.halo.threshold, uniform_weights=config.spatial_weighting.uniform).to(device)
    model = build_model(config, len(data.stack_ids), data.halo_label, data.centre_mm, data.half_extent_mm).to(device)
    optimizer = _optimizer(config, model)
    forward = torch.compile(model) if config.compile else model
    steps_per_epoch = math.ceil(data.n_voxels / config.n_samples)
    total_steps = steps_per_epoch * config.epochs.train
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    eta_ratio = config.optimizer.scheduler.eta_min
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [
        (lambda step, base=base: max(eta_ratio / base, 0.5 * (1 + math.cos(math.pi * min(step, total_steps)
                                                                             / max(total_steps, 1)))))
        for base in base_lrs])
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(enabled=False)           # bf16 needs no loss scaling; kept for the checkpoint
    n_classes = data.halo_label + 1
    class_weights = torch.ones(n_classes, device=device)
    class_weights[0] = 0.0
    if config.class_weights is not None:
        class_weights = torch.as_tensor(config.class_weights, dtype=torch.float32, device=device)
        if class_weights.numel() != n_classes:
            raise ValueError(f"class_weights has {class_weights.numel()} values; the label table + halo needs "
                             f"{n_classes} (background, labels {labels}, halo)")
    chol = _psf_factors(config, data).to(device)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / TRAIN_LOG
    global_step = 0
    if resume and (out / CHECKPOINT).exists():
        state = torch.load(out / CHECKPOINT, map_location=device, weights_only=True)
        if state["stack_ids"] != data.stack_ids:
            raise ValueError(f"{out / CHECKPOINT} was trained on other stacks; use a new --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        global_step = int(state["global_step"])
        lines = log_path.read_text().splitlines()[:global_step] if log_path.exists() else []
        atomic_write_text(log_path, "".join(line + "\n" for line in lines))
    elif log_path.exists():
        log_path.unlink()
    config.save_yaml(out / CONFIG)
    atomic_write_text(out / STACKS, json.dumps(
        {"stack_ids": data.stack_ids, "ga_weeks": data.ga_weeks, "halo_label": data.halo_label,
         "label_values": [int(v) for v in labels], "grid_shape": [int(n) for n in data.shape],
         "grid_voxel_to_ras": np.asarray(data.voxel_to_ras).tolist(),
         "centre_mm": np.asarray(data.centre_mm).tolist(), "half_extent_mm": np.asarray(data.half_extent_mm).tolist()},
        indent=1))
    save_nifti(Volume(data.support_mask.astype(np.uint8), np.asarray(data.voxel_to_ras)), out / SUPPORT,
               dtype=np.uint8)
    progress = progress or ProgressReporter(None)
    progress.start("train", total_steps, f"{data.n_voxels} voxels of {len(data.stack_ids)} stacks",
                   initial=global_step)
    session_steps, t_start, last = 0, time.perf_counter(), {}
    perm_epoch, perm = None, None
    saved_step, stopped = None, False
    with log_path.open("a") as log:
        while global_step < total_steps:
            if stop.requested():                          # a step boundary: save, report, return normally
                if session_steps > 0 and saved_step != global_step:
                    _save_checkpoint(out, model, optimizer, scheduler, scaler, global_step, total_steps,
                                     data.stack_ids, config)
                stopped = True
                progress.update(global_step, f"stopped at step {global_step} of {total_steps}; continue with "
                                             f"--resume", stopped=True)
                break
            epoch, step_in_epoch = divmod(global_step, steps_per_epoch)
            if epoch != perm_epoch:                       # one shuffle per epoch, derived from (seed, epoch)
                perm = torch.randperm(data.n_voxels, generator=_generator(config.seed, epoch)).to(device)
                perm_epoch = epoch
            idx = perm[step_in_epoch * config.n_samples:(step_in_epoch + 1) * config.n_samples]
            samples = 1 if config.psf.mode == "none" else config.psf_samples(epoch)
            t0 = time.perf_counter()
            stack = data.stack[idx]
            jitter = psf_jitter(data.coords_mm[idx], chol[stack], samples,
                                generator=_generator(config.seed, epoch, step_in_epoch + 1, device=device))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                raw = forward(jitter.reshape(-1, 3), stack.repeat_interleave(samples))
                pred = raw.float().reshape(len(idx), samples, -1).mean(1)
                loss, l_int, l_seg = weighted_loss(pred, data.intensity[idx], data.label[idx], data.weight[idx],
                                                   class_weights, config.optimizer.loss_metric,
                                                   config.optimizer.seg_weight)
                if config.optimizer.tf_weight > 0:
                    loss = loss + config.optimizer.tf_weight * model.rigid_penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss, l_int, l_seg = loss.detach(), l_int.detach(), l_seg.detach()
            optimizer.step()
            scheduler.step()
            global_step += 1
            session_steps += 1
            dt = time.perf_counter() - t0
            last = {"step": global_step, "epoch": epoch, "loss": loss.item(), "loss_intensity": l_int.item(),
                    "loss_seg": l_seg.item(), "psf_samples": samples, "lr_decoder": scheduler.get_last_lr()[0],
                    "samples_per_s": round(len(idx) * samples / dt, 1),
                    "memory_mb": _rounded(peak_memory_mb(device))}
            log.write(json.dumps(last) + "\n")
            log.flush()
            progress.update(global_step, f"epoch {epoch} loss {last['loss']:.4f}",
                            **{k: v for k, v in last.items() if k != "step"})
            end_of_epoch = global_step % steps_per_epoch == 0
            if global_step % config.checkpoint_every == 0 or end_of_epoch or global_step == total_steps:
                _save_checkpoint(out, model, optimizer, scheduler, scaler, global_step, total_steps, data.stack_ids,
                                 config)
                saved_step = global_step
            if stop_after_steps is not None and session_steps >= stop_after_steps:
                break
    stop.clear()
    return {"steps": global_step, "total_steps": total_steps, "last": last,
            "seconds": round(time.perf_counter() - t_start, 2), "stopped": stopped}


def _save_checkpoint(out: Path, model, optimizer, scheduler, scaler, global_step, total_steps, stack_ids,
                     config) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "global_step": global_step, "total_steps": total_steps,
             "stack_ids": list(stack_ids),
             "torch_rng": torch.get_rng_state(), "config": config.to_dict()}
    with atomic_output(out / CHECKPOINT) as tmp:
        torch.save(state, tmp)
