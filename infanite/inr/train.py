"""``infanite train``: fit an INR to a registered cohort: the paper's modulated SIREN with per-stack latents
(``model: infanite``) or the deformation-aware template with per-fetus displacements (``model: template``).

One optimizer step takes ``n_samples`` samples of the shuffled packed cohort (an epoch visits every sample once,
as the reference), jitters each ``P`` times with its stack's slice-aware Gaussian PSF (or the reference's
isotropic σ), and minimises the data term (``data.term``; see :mod:`infanite.inr.data`: the unbiased split-sample
product on the acquired samples through each stack's intensity model, or the reference's weighted loss on the
mean over the ``P`` samples) + weighted cross-entropy + the model's penalties.  AdamW with one group per kind of
parameter, cosine learning-rate decay over all steps to ``eta_min``, bf16 autocast on CUDA, fp32 on CPU.  The
template model's displacements stay at zero (or at ``template.deformation_init``'s) for the first
``template.deformation_warmup`` steps.  With ``data.slice_motion`` each acquired sample and its PSF samples are
moved by their slice's rigid motion (:mod:`infanite.inr.slice_motion`), learnt after ``data.slice_motion_warmup``
steps; a finished run writes them to ``slice_motion.json``.

Exact resume: every random draw is derived from (seed, epoch, step) — the epoch's permutation and each step's
PSF jitter — so a run restarted from a checkpoint (model, intensity model, optimizer, scheduler, scaler,
position) repeats the uninterrupted run's losses.  Checkpoints are written atomically every ``checkpoint_every``
steps and at the end of each epoch; ``train_log.jsonl`` is rewritten up to the checkpoint on resume.  A finished
run writes ``diagnostics.json`` (:mod:`infanite.inr.diagnostics`).

Graceful stop: a file ``STOP`` in the run folder, or SIGTERM (handled while :func:`train` runs in the main thread),
ends the loop at the next step boundary: the checkpoint is saved, a ``stopped`` progress event says at which step,
the file is removed and :func:`train` returns normally (``"stopped": True``); ``--resume`` continues exactly.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from infanite.devices import cpu_matmul_in_bf16, float32_matmul_precision
from infanite.geometry import mask_points_mm
from infanite.io.atomic import atomic_output, atomic_write_text
from infanite.io.images import Volume, save_nifti, save_nifti_array
from infanite.io.layout import (CHECKPOINT, CONFIG, DIAGNOSTICS, FETUS_SUPPORT, STACKS, STOP_FILE, SUPPORT,
                                TRAIN_LOG)
from infanite.inr.build import (build_intensity_model, build_model, build_optimizer, build_slice_motion,
                                 check_against_cohort, check_model_fits, ga_span, pack_training_data, psf_factors)
from infanite.inr.data import loss_norms, psf_jitter, split_psf_loss, weighted_loss
from infanite.inr.distributed import Ranks, teardown
from infanite.inr.template import TemplateINR
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


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory so far (MiB): CUDA allocator peak on a GPU, the process's peak resident set on CPU (None where
    the platform does not tell)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    from infanite.devices import peak_resident_mb

    return peak_resident_mb()


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


def train(manifest, config: TrainConfig, out, resume: bool = False, progress: ProgressReporter | None = None,
          stop_after_steps: int | None = None, overwrite: bool = False) -> dict:
    """Train on ``manifest`` (a ``registered.tsv``) into ``out``; returns a summary.

    ``out`` is locked for the whole call (:func:`~infanite.io.lock.folder_lock`).  A folder holding a model is
    continued (``resume``) or replaced (``overwrite``), never restarted silently; every check (device, folder,
    checkpoint, cohort, memory for the model) runs before anything is written (``ValueError``).  A non-finite loss
    or parameter stops training with :class:`~infanite.errors.WorkFailed`, the last finite checkpoint kept.

    ``stop_after_steps`` ends this call early (as if killed) after that many steps of this session — used by the
    tests of exact resume.  A graceful stop (``STOP_FILE`` in ``out`` or SIGTERM, see :class:`StopRequest`) ends
    it at the next step boundary with the checkpoint saved and ``"stopped": True`` in the summary.
    """
    from infanite.io.lock import folder_lock
    from infanite.inr.distributed import setup
    from infanite.inr.run_folder import check_device

    check_device(config.device)
    ranks, device = setup(config.device)
    try:
        with (folder_lock(out, "train") if ranks.main else contextlib.nullcontext()), StopRequest(out) as stop:
            return _train(manifest, config, Path(out), resume, progress, stop_after_steps, stop, overwrite, ranks,
                          device)
    finally:
        teardown(ranks)


def _train(manifest, config: TrainConfig, out: Path, resume: bool, progress: ProgressReporter | None,
           stop_after_steps: int | None, stop: StopRequest, overwrite: bool, ranks: Ranks, device_name: str) -> dict:
    from infanite.errors import is_out_of_memory
    from infanite.inr.run_folder import check_run_folder

    state = check_run_folder(out, config, resume, overwrite, ranks.world_size)
    if ranks.main:
        stop.clear(stale=True)
    device = torch.device(device_name)
    torch.manual_seed(config.seed)
    if config.deterministic and device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    labels = default_label_table().values
    data = pack_training_data(config, manifest, labels)
    check_against_cohort(config, data, data.slice_thickness_mm or [])
    data = data.to(device)
    ga_range = ga_span(data.ga_weeks)
    check_model_fits(config, data, device, ga_range)
    try:
        model = build_model(config, len(data.stack_ids), data.halo_label, data.centre_mm, data.half_extent_mm,
                            stack_fetus=data.stack_fetus, stack_ga_weeks=data.ga_weeks,
                            ga_range_weeks=ga_range).to(device)
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise ValueError(f"the model does not fit in the memory of {device} (inr_decoder.hidden_size "
                         f"{config.inr_decoder.hidden_size}, num_hidden_layers {config.inr_decoder.num_hidden_layers}, "
                         f"latent_dim {config.inr_decoder.latent_dim}, {len(data.stack_ids)} stacks); use a smaller "
                         f"model") from None
    if isinstance(model, TemplateINR):                 # a fetus's position: its mean displacement over the support
        model.set_position_region(support_points_mm(data))
        if model.ga_growth is not None:                  # the brain's growth with GA (template.ga_scaling)
            from infanite.inr.ceiling import brain_samples

            brain = brain_samples(data)
            model.set_ga_scaling(data.coords_mm[brain], data.stack[brain])
    if state is None and isinstance(model, TemplateINR) and model.deformation is not None and \
            config.template.deformation_init:                  # a new run starts from the given displacements
        from infanite.inr.deformations import initial_deformations

        start = initial_deformations(config.template.deformation_init, data.fetus_ids,
                                     config.template.deformation_grid, data.centre_mm, data.half_extent_mm)
        with torch.no_grad():
            model.deformation.copy_(torch.as_tensor(start, dtype=model.deformation.dtype))
    intensity = build_intensity_model(config, data)
    if intensity is not None:
        intensity = intensity.to(device)
    motion = build_slice_motion(config, data)
    if motion is not None:
        motion = motion.to(device)
    optimizer = build_optimizer(config, model, intensity, motion)
    forward = torch.compile(model) if config.compile else model
    template = model if isinstance(model, TemplateINR) else None
    steps_per_epoch = math.ceil(data.n_voxels / config.n_samples)
    total_steps = steps_per_epoch * config.epochs.train
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    eta_ratio = config.optimizer.scheduler.eta_min
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [
        (lambda step, base=base: max(eta_ratio / base if base > 0 else 0.0,     # lr 0: a group held fixed
                                     0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))))
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
    chol = psf_factors(config, data).to(device)
    log_path = out / TRAIN_LOG
    global_step = 0
    if state is not None:
        if list(state["stack_ids"]) != list(data.stack_ids):
            raise ValueError(f"{out / CHECKPOINT} was trained on other stacks; use a new --out")
        try:
            model.load_state_dict(_to_device(state["model"], device))
            if intensity is not None:
                intensity.load_state_dict(_to_device(state["intensity"], device))
            if motion is not None:
                motion.load_state_dict(_to_device(state["slice_motion"], device))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{out / CHECKPOINT} does not fit this model ({str(exc).splitlines()[0][:160]}); "
                             f"resume with the run's own settings, or start a new run folder") from None
        global_step = int(state["global_step"])
        if global_step > total_steps:
            raise ValueError(f"{out / CHECKPOINT} is already at step {global_step}, past the {total_steps} steps this "
                             f"config asks for (max_steps / epochs.train); ask for more steps to continue it")
    if ranks.main:
        _write_run_files(out, config, data, manifest, ga_range, labels, log_path, global_step if state else None)
    ranks.barrier()                                      # the folder is ready before any rank looks at it
    progress = (progress or ProgressReporter(None)) if ranks.main else ProgressReporter(None, quiet=True)
    progress.start("train", total_steps, f"{data.n_voxels} voxels of {len(data.stack_ids)} stacks"
                   + (f", {ranks.world_size} processes" if ranks.distributed else ""), initial=global_step)
    session_steps, t_start, last = 0, time.perf_counter(), {}
    perm_epoch, perm = None, None
    saved_step, stopped = None, False
    parameters = [p for m in (model, intensity, motion) if m is not None for p in m.parameters()]
    # cpu_matmul: on a CPU that multiplies bf16 natively, the float32 matrix products of the steps run in bf16
    # (float32 in and out; the diagnostics after training stay float32)
    bf16_matmul = device.type == "cpu" and cpu_matmul_in_bf16(config.cpu_matmul)
    precision = float32_matmul_precision("medium") if bf16_matmul else contextlib.nullcontext()
    with (log_path.open("a") if ranks.main else open(os.devnull, "w")) as log, precision:
        while global_step < total_steps:
            if ranks.any(stop.requested(), device):      # a step boundary: save, report, return normally
                if session_steps > 0 and saved_step != global_step and ranks.main:
                    _save_checkpoint(out, model, intensity, optimizer, scheduler, scaler, global_step,
                                     total_steps, data.stack_ids, config, ranks.world_size, motion)
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
            norms, batch = None, len(idx)
            if ranks.distributed:                        # this rank's shard; the loss normalised by the global batch
                norms = loss_norms(data.weight[idx], data.label[idx], data.intensity[idx])
                part = ranks.shard(len(idx))
                idx, stack, jitter = idx[part], stack[part], jitter[part]
            warming_up = template is not None and global_step < config.template.deformation_warmup
            if template is not None:                     # displacements free after the warm-up (held at their
                template.use_deformation = not warming_up or bool(config.template.deformation_init)   # start)
                template.use_appearance = not warming_up     # appearance offsets unused (no gradient) likewise
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                moving = motion is not None and global_step >= config.data.slice_motion_warmup
                if moving:                                # each sample (and its PSF) moved with its slice
                    jitter = motion(jitter, data.slice_index[idx])
                loss, l_int, l_seg, penalty = _step_loss(config, forward, model, intensity, data, idx, stack, jitter,
                                                         samples, class_weights, norms, ranks.world_size)
                if moving:
                    penalty_motion = config.data.slice_motion_weight * motion.penalty() / ranks.world_size
                    loss, penalty = loss + penalty_motion, penalty + penalty_motion
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ranks.all_reduce_gradients(parameters)
            loss, l_int, l_seg, penalty = ranks.sum(torch.stack([loss.detach(), l_int.detach(), l_seg.detach(),
                                                                 penalty.detach()]).float()).unbind()
            if not torch.isfinite(loss):
                _diverged(out, global_step + 1, f"the loss is {loss.item()}", saved_step, state, config)
            if warming_up and template.deformation is not None:
                template.deformation.grad = None         # an initial displacement is held during the warm-up
            if motion is not None and not moving:
                for held in motion.parameters():          # the slices' (and stacks') motions held at zero
                    held.grad = None                      # (warm-up)
            optimizer.step()
            scheduler.step()
            global_step += 1
            session_steps += 1
            dt = time.perf_counter() - t0
            last = {"step": global_step, "epoch": epoch, "loss": loss.item(), "loss_intensity": l_int.item(),
                    "loss_seg": l_seg.item(), "loss_penalty": penalty.item(), "psf_samples": samples,
                    "lr_decoder": scheduler.get_last_lr()[0],
                    "samples_per_s": round(batch * samples / dt, 1),
                    "memory_mb": _rounded(peak_memory_mb(device))}
            log.write(json.dumps(last) + "\n")
            log.flush()
            progress.update(global_step, f"epoch {epoch} loss {last['loss']:.4f}",
                            **{k: v for k, v in last.items() if k != "step"})
            end_of_epoch = global_step % steps_per_epoch == 0
            if global_step % config.checkpoint_every == 0 or end_of_epoch or global_step == total_steps:
                if not _finite(model, intensity, motion):
                    _diverged(out, global_step, "a model parameter is NaN or inf", saved_step, state, config)
                if ranks.main:
                    _save_checkpoint(out, model, intensity, optimizer, scheduler, scaler, global_step, total_steps,
                                     data.stack_ids, config, ranks.world_size, motion)
                saved_step = global_step
            if stop_after_steps is not None and session_steps >= stop_after_steps:
                break
    summary = {"steps": global_step, "total_steps": total_steps, "last": last,
               "seconds": round(time.perf_counter() - t_start, 2), "stopped": stopped,
               "world_size": ranks.world_size}
    if device.type == "cpu":
        summary["cpu_matmul"] = "bf16" if bf16_matmul else "fp32"
    if motion is not None:
        summary["slice_motion"] = motion.summary()
    if ranks.distributed:        # the last collective: every rank leaves the group together, then rank 0 goes on
        ranks.barrier()          # alone (diagnostics can outlast the collectives' timeout)
        teardown(ranks)
    if not ranks.main:
        return summary
    stop.clear()
    if global_step >= total_steps and not stopped and (session_steps > 0 or not (out / DIAGNOSTICS).exists()):
        from infanite.inr.ceiling import write_intensity_ceiling
        from infanite.inr.diagnostics import write_diagnostics

        # first (seconds): a kill during the longer diagnostics must not leave a resumed run without its ceiling
        summary["intensity_ceiling_file"] = str(write_intensity_ceiling(out, data, intensity))
        summary["diagnostics"] = write_diagnostics(out, device)
        if motion is not None:
            from infanite.inr.slice_motion import write_slice_motion

            summary["slice_motion_file"] = str(write_slice_motion(out, motion, data.stack_ids,
                                                                  data.slice_number.tolist()))
        if template is not None:
            from infanite.inr.deformations import write_deformations

            summary["deformations"] = [str(p) for p in write_deformations(out, template, data.fetus_ids)]
    return summary


def support_points_mm(data, max_points: int = 100_000) -> torch.Tensor:
    """The centres (template RAS mm, (N, 3)) of the support mask's voxels (every stack's brain + halo), evenly
    thinned to at most ``max_points``."""
    return torch.as_tensor(mask_points_mm(data.support_mask, data.voxel_to_ras, max_points), dtype=torch.float32)


def _write_run_files(out: Path, config: TrainConfig, data, manifest, ga_range, labels, log_path: Path,
                     resumed_step: int | None) -> None:
    """Rank 0, before the first step: the log cut back to the checkpoint (resume) or the previous model removed,
    then ``config.yaml``, ``stacks.json``, the support masks."""
    from infanite.inr.run_folder import clear_previous_model

    if resumed_step is not None:
        lines = log_path.read_text().splitlines()[:resumed_step] if log_path.exists() else []
        atomic_write_text(log_path, "".join(line + "\n" for line in lines))
    else:
        clear_previous_model(out)
    config.save_yaml(out / CONFIG)
    atomic_write_text(out / STACKS, json.dumps(
        {"model": config.model, "data_source": data.source, "stack_fetus": list(data.stack_fetus),
         "fetus_ids": list(data.fetus_ids), "ga_range_weeks": list(ga_range),
         "stack_ids": data.stack_ids, "ga_weeks": data.ga_weeks, "halo_label": data.halo_label,
         "labelled_stacks": labelled_stacks(data), **registration_record(manifest),
         "label_values": [int(v) for v in labels], "grid_shape": [int(n) for n in data.shape],
         "grid_voxel_to_ras": np.asarray(data.voxel_to_ras).tolist(),
         "centre_mm": np.asarray(data.centre_mm).tolist(), "half_extent_mm": np.asarray(data.half_extent_mm).tolist()},
        indent=1))
    save_nifti(Volume(data.support_mask.astype(np.uint8), np.asarray(data.voxel_to_ras)), out / SUPPORT,
               dtype=np.uint8)
    if data.fetus_support is not None:                   # (X, Y, Z, F): the atlas's GA-local support
        save_nifti_array(np.moveaxis(data.fetus_support, 0, -1).astype(np.uint8), np.asarray(data.voxel_to_ras),
                         out / FETUS_SUPPORT)


def _step_loss(config: TrainConfig, forward, model, intensity, data, idx, stack, jitter, samples, class_weights,
               norms=None, world_size: int = 1):
    """The loss of one step: data term (``data.term``, see :mod:`infanite.inr.data`) + the penalties of the model
    and of the intensity model.  Returns (total, intensity term, segmentation term, penalties).

    Data-parallel (``world_size`` > 1): ``idx`` is this rank's shard, ``norms`` the global batch's normalisers,
    and the penalties are divided by ``world_size``: the ranks' losses (and gradients) add up to the full step's."""
    coords = jitter.reshape(-1, 3)
    stacks = stack.repeat_interleave(samples)
    raw = forward(coords, stacks).float()
    if config.data.gate_intensity:                       # the tissue intensity seen only where the brain is
        raw = gate_intensity(raw)
    if intensity is not None:                            # what each stack measures for the model's intensity
        raw = torch.cat([intensity.apply(raw[:, 0], coords, stacks)[:, None], raw[:, 1:]], dim=1)
    per_sample = raw.reshape(len(idx), samples, -1)
    target = (data.intensity[idx], data.label[idx], data.weight[idx], class_weights)
    exact = config.data.term == "exact"
    label_weight = config.data.label_weight if exact else config.optimizer.seg_weight
    if exact and config.data.psf_estimator == "split":
        loss, l_int, l_seg = split_psf_loss(per_sample, *target, label_weight, norms)
    else:
        metric = "mse" if exact else config.optimizer.loss_metric
        loss, l_int, l_seg = weighted_loss(per_sample.mean(1), *target, metric, label_weight, norms)
    penalty = loss.new_zeros(())
    if isinstance(model, TemplateINR):
        t, terms = config.template, model.penalties()
        penalty = penalty + t.ga_smoothness * terms["ga"]
        if t.tv_weight > 0:                              # the template's own intensity, at the batch's first points
            first = idx[:t.tv_points]
            penalty = penalty + t.tv_weight * model.intensity_tv(data.coords_mm[first],
                                                                 model.stack_ga[data.stack[first]], t.tv_step_mm)
        if model.use_deformation:
            penalty = penalty + t.deformation_smoothness * terms["smoothness"] + \
                t.deformation_magnitude * terms["magnitude"] + t.deformation_mean * terms["mean"]
        if model.appearance is not None and model.use_appearance:
            penalty = penalty + t.appearance_weight * terms["appearance"]
    elif config.optimizer.tf_weight > 0:
        penalty = penalty + config.optimizer.tf_weight * model.rigid_penalty()
    if intensity is not None:
        penalty = penalty + intensity.penalty(config.data.gain_weight, config.data.bias_weight)
    if world_size > 1:
        penalty = penalty / world_size
    return loss + penalty, l_int, l_seg, penalty


def gate_intensity(raw: torch.Tensor) -> torch.Tensor:
    """``data.gate_intensity``: the network's outputs (N, 1 intensity + logits of background, tissues, halo) with
    the intensity multiplied by the brain probability, 1 − p(background) − p(halo)."""
    brain = 1 - torch.softmax(raw[:, 1:], dim=1)[:, [0, -1]].sum(1)
    return torch.cat([(raw[:, 0] * brain)[:, None], raw[:, 1:]], dim=1)


def _to_device(state_dict: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()}


def _finite(*modules) -> bool:
    return all(torch.isfinite(p).all() for m in modules if m is not None for p in m.parameters())


def _diverged(out: Path, step: int, what: str, saved_step, state, config) -> None:
    """Stop: the loss (or a parameter) is not finite.  The last finite checkpoint stays as it is."""
    from infanite.errors import WorkFailed

    kept = saved_step if saved_step is not None else (int(state["global_step"]) if state is not None else None)
    rates = "optimizer.lr_inr, optimizer.lr_latent" + (", template.lr_template, template.lr_deformation"
                                                       if config.model == "template" else "")
    where = (f"the last finite checkpoint (step {kept}) is kept in {out / CHECKPOINT}" if kept is not None
             else "no checkpoint was written")
    raise WorkFailed(f"training diverged at step {step}: {what}; {where}; try lower learning rates ({rates}) and "
                     f"check the stacks ('infanite validate'), then train again with --overwrite")


def registration_record(manifest) -> dict:
    """What ``registered.tsv`` says beyond the training data, read once: ``templates``, the template folder the
    stacks were registered to (None unless exactly one), and ``ga_estimated``, the ids of the stacks whose GA
    ``register`` estimated (no ``scan_age`` was given)."""
    from infanite.io.cohort import read_manifest

    cohort, _ = read_manifest(manifest)
    found = {str(r.extra.get("templates", "")).strip() for r in cohort.stacks} - {""}
    return {"templates": found.pop() if len(found) == 1 else None,
            "ga_estimated": [r.subject_id for r in cohort.stacks
                             if str(r.extra.get("ga_estimated", "")).strip() in ("1", "true")]}


def labelled_stacks(data) -> list[str]:
    """The ids of the stacks whose samples carry tissue labels (a ``Seg``); a mask-only stack's brain samples carry
    :data:`~infanite.inr.data.BRAIN_LABEL` and its halo the halo class only."""
    tissue = (data.label >= 0) & (data.label != data.halo_label)
    return [data.stack_ids[int(i)] for i in torch.unique(data.stack[tissue]).tolist()]


def _save_checkpoint(out: Path, model, intensity, optimizer, scheduler, scaler, global_step, total_steps, stack_ids,
                     config, world_size: int = 1, motion=None) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "global_step": global_step, "total_steps": total_steps,
             "stack_ids": list(stack_ids), "model_type": config.model,
             "intensity": intensity.state_dict() if intensity is not None else {},
             "slice_motion": motion.state_dict() if motion is not None else {},
             "torch_rng": torch.get_rng_state(), "config": config.to_dict(), "world_size": int(world_size)}
    with atomic_output(out / CHECKPOINT) as tmp:
        torch.save(state, tmp)
