"""What a training run is made of, built from its config: the packed data, the model (the paper's modulated
SIREN or the deformation-aware template), the per-stack intensity model, the PSF factors and the optimizer; and
the checks a config must pass against the cohort before any work (a deformation or feature grid finer than the
data, a GA-conditioned model on one GA, fetuses without a ``subject`` grouping)."""
from __future__ import annotations

import numpy as np
import torch

from infanite.inr.config import GA_BALANCE_WEEKS, TrainConfig, TrainConfigError
from infanite.inr.data import PackedCohort, pack_cohort
from infanite.inr.intensity import StackIntensity
from infanite.inr.model import ModulatedSiren
from infanite.inr.template import TemplateINR


def pack_training_data(config: TrainConfig, manifest, label_values) -> PackedCohort:
    """The samples of ``data.term``: the acquired stack voxels (``exact``) or the resampled stacks
    (``reference``), their weights balanced across fetuses by ``data.fetus_balance`` and across GAs by
    ``data.ga_balance``."""
    if config.data.term == "exact":
        from infanite.inr.samples import pack_acquired

        data = pack_acquired(manifest, label_values, config.data.halo_mm, config.data.halo_weight,
                             config.data.halo_intensity)
    else:
        data = pack_cohort(manifest, label_values, config.spatial_weighting.w_int, config.halo.sigma_voxels,
                           config.halo.threshold, uniform_weights=config.spatial_weighting.uniform)
    balance_fetuses(data, config.data.fetus_balance)
    balance_gas(data, config.data.ga_balance)
    return data


def _fetus_totals(data: PackedCohort) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Each stack's fetus (the ``data.stack_fetus`` groups, or the stacks themselves when the cohort has none),
    each sample's fetus (CPU tensor) and each fetus's total sample weight (float64)."""
    group = np.arange(len(data.stack_ids)) if data.stack_fetus is None else np.asarray(data.stack_fetus)
    sample_group = torch.from_numpy(group.astype(np.int64))[data.stack.cpu()]
    totals = torch.bincount(sample_group, weights=data.weight.double().cpu(), minlength=int(group.max()) + 1)
    return group, sample_group, totals.numpy()


def _scale_fetuses(data: PackedCohort, sample_group: torch.Tensor, factor: np.ndarray) -> None:
    data.weight = data.weight * torch.from_numpy(factor)[sample_group].to(data.weight)


def balance_fetuses(data: PackedCohort, exponent: float) -> None:
    """Multiply (in place) the weights of each fetus's samples by ``(mean over fetuses of Σw / its Σw) **
    exponent``: 0 leaves them, 1 gives every fetus the same total weight (a small brain as much say as a large
    one).  Fetuses are ``data.stack_fetus`` groups, or the stacks themselves when the cohort has none."""
    if exponent <= 0:
        return
    _, sample_group, totals = _fetus_totals(data)
    present = totals > 0
    factor = np.ones_like(totals)
    factor[present] = (totals[present].mean() / totals[present]) ** float(exponent)
    _scale_fetuses(data, sample_group, factor)


def balance_gas(data: PackedCohort, exponent: float, width_weeks: float = GA_BALANCE_WEEKS) -> None:
    """Multiply (in place) the weights of each fetus's samples by ``(mean over fetuses of D / D(its GA)) **
    exponent``, ``D(g) = Σ_j exp(−(g − g_j)² / 2σ²) · W_j`` the data around GA ``g`` (``W_j`` fetus ``j``'s total
    weight, ``σ = width_weeks``): 0 leaves them, 1 gives every fetus's GA the same data around it.  Fetuses as in
    :func:`balance_fetuses`, a fetus's GA the mean of its stacks'; a fetus without a known GA keeps its weights
    and adds nothing to D."""
    if exponent <= 0:
        return
    group, sample_group, totals = _fetus_totals(data)
    stack_ga = np.array([np.nan if g is None else float(g) for g in data.ga_weeks], dtype=np.float64)
    ga = np.array([np.nanmean(stack_ga[group == f]) if np.isfinite(stack_ga[group == f]).any() else np.nan
                   for f in range(len(totals))])
    known = np.isfinite(ga) & (totals > 0)
    if known.sum() < 2:
        return
    kernel = np.exp(-0.5 * ((ga[known, None] - ga[None, known]) / float(width_weeks)) ** 2)
    around = kernel @ totals[known]                      # D at each known fetus's GA
    factor = np.ones(len(totals))
    factor[known] = (around.mean() / around) ** float(exponent)
    _scale_fetuses(data, sample_group, factor)


def ga_span(ga_weeks) -> tuple[float, float]:
    """(min, max) of the known GAs (weeks)."""
    known = [float(g) for g in ga_weeks if g is not None and np.isfinite(float(g))]
    return (min(known), max(known)) if known else (0.0, 0.0)


def check_against_cohort(config: TrainConfig, data: PackedCohort, slice_thickness_mm) -> None:
    """Refuse a configuration the cohort cannot support, naming the key (``TrainConfigError``), before any output
    is written: for ``model: template``, a cohort with one GA (GA-conditioned), stacks not grouped into fetuses by
    a ``subject`` (per-fetus deformation), a deformation grid whose control points are closer than the thickest
    slice, a ``template.deformation_init`` folder without a readable transform for every fetus, or a feature grid
    finer than half the finest acquired voxel."""
    if config.model != "template":
        return
    problems = []
    lo, hi = ga_span(data.ga_weeks)
    if hi - lo < MIN_GA_SPAN_WEEKS:
        problems.append(f"model: 'template' conditions the template on GA, but every stack of the cohort has GA "
                        f"{lo:g} weeks; give a cohort spanning GAs, or use model: infanite")
    t = config.template
    extent = 2 * np.asarray(data.half_extent_mm, dtype=np.float64)
    if t.deformation_grid >= 2:
        if ungrouped(data.stack_ids, [data.fetus_ids[f] for f in data.stack_fetus]):
            problems.append("template.deformation_grid: a displacement per fetus needs the stacks grouped into "
                            "fetuses: add a 'subject' column to the manifest (or use reference-style ids "
                            "GA_SUBJECT_STACK), or set template.deformation_grid=0")
        spacing = float((extent / (t.deformation_grid - 1)).min())
        thickest = max(float(s) for s in slice_thickness_mm) if slice_thickness_mm else 0.0
        if spacing < thickest:
            problems.append(f"template.deformation_grid: {t.deformation_grid} control points per axis are "
                            f"{spacing:.2f} mm apart, finer than the thickest slice ({thickest:g} mm): the "
                            f"displacements would fit noise; use at most "
                            f"{int(float(extent.min()) // max(thickest, 1e-6)) + 1}")
        if t.deformation_init:
            from infanite.inr.deformations import missing_initial_deformations

            problems += missing_initial_deformations(t.deformation_init, data.fetus_ids)
    if t.encoding == "grid":
        finest = float((extent / (max(t.grid_resolutions) - 1)).min())
        voxel = float(data.finest_spacing_mm) if getattr(data, "finest_spacing_mm", None) else 0.0
        if voxel and finest < voxel / 2:
            problems.append(f"template.grid_resolutions: the finest grid ({max(t.grid_resolutions)} per axis) has "
                            f"{finest:.2f} mm cells, finer than half the finest acquired voxel ({voxel:g} mm)")
    if problems:
        raise TrainConfigError(problems)


#: the template model is GA-conditioned: its cohort's known GAs must span at least this (weeks)
MIN_GA_SPAN_WEEKS = 0.5


def ungrouped(stack_ids, subjects) -> bool:
    """True when the stacks are not grouped into fetuses: more than one stack, each its own ``subject``, named as
    the stack itself (no ``subject`` column and ids that are not the reference's ``GA_SUBJECT_STACK``)."""
    return len(stack_ids) > 1 and len(set(subjects)) == len(stack_ids) and all(
        s == i for s, i in zip(subjects, stack_ids))


def template_unsupported(records) -> str | None:
    """Why the cohort ``records`` (manifest rows) cannot train the template model, or None when it can (the same
    conditions :func:`check_against_cohort` refuses): its known GAs span less than half a week, or its stacks are
    not grouped into fetuses (one displacement per fetus)."""
    lo, hi = ga_span([r.scan_age for r in records])
    if hi - lo < MIN_GA_SPAN_WEEKS:
        return "the stacks' known GAs span less than half a week"
    if ungrouped([r.subject_id for r in records], [r.subject for r in records]):
        return "the stacks are not grouped into fetuses (no 'subject' column)"
    return None


def build_model(config: TrainConfig, n_stacks: int, halo_label: int, centre_mm, half_extent_mm,
                naive: bool = False, stack_fetus=None, stack_ga_weeks=None, ga_range_weeks=None) -> torch.nn.Module:
    """The network of ``config.model`` for ``n_stacks`` stacks; outputs intensity + logits for classes
    0..halo_label.  The template model also needs each stack's fetus and GA, and the GA range (weeks)."""
    n_out = 1 + halo_label + 1
    if config.model == "template":
        return TemplateINR(n_out, stack_fetus, stack_ga_weeks, ga_range_weeks, centre_mm, half_extent_mm,
                           config.template, config.inr_decoder.omega, seed=config.seed,
                           decoder_config=config.inr_decoder)
    dec = config.inr_decoder
    return ModulatedSiren(n_stacks, n_out, centre_mm, half_extent_mm, dec.hidden_size, dec.num_hidden_layers,
                          dec.modulated_layers, dec.latent_dim, dec.omega, rigid=dec.tf_dim == 6, naive=naive)


def check_model_fits(config: TrainConfig, data: PackedCohort, device, ga_range) -> int:
    """``ValueError`` (before anything is allocated) when the model's parameters with their gradients and Adam
    moments (4 × 4 bytes each) exceed 80 % of the device's memory; returns the parameter count.  The model is
    built on PyTorch's ``meta`` device, which allocates nothing."""
    from infanite.devices import available_memory_bytes

    with torch.device("meta"):
        model = build_model(config, len(data.stack_ids), data.halo_label, data.centre_mm, data.half_extent_mm,
                            stack_fetus=data.stack_fetus, stack_ga_weeks=data.ga_weeks, ga_range_weeks=ga_range)
    n_params = sum(p.numel() for p in model.parameters())
    device = torch.device(device)
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
    else:
        memory = available_memory_bytes()
    need = 16 * n_params
    if memory and need > 0.8 * memory:
        d = config.inr_decoder
        raise ValueError(f"the model has {n_params:.3g} parameters and needs about {need / 2 ** 30:.3g} GiB for "
                         f"training (parameters, gradients, Adam moments), more than the {memory / 2 ** 30:.3g} GiB "
                         f"of {device}: use a smaller model (inr_decoder.hidden_size {d.hidden_size}, "
                         f"num_hidden_layers {d.num_hidden_layers}, latent_dim {d.latent_dim})")
    return n_params


def build_intensity_model(config: TrainConfig, data: PackedCohort) -> StackIntensity | None:
    """The per-stack gain and bias (``data.term: exact`` with ``data.intensity_model``), else None."""
    if config.data.term != "exact" or not config.data.intensity_model:
        return None
    return StackIntensity(len(data.stack_ids), data.centre_mm, data.half_extent_mm, config.data.bias_order)


def build_slice_motion(config: TrainConfig, data: PackedCohort):
    """The per-slice rigid motions (``data.slice_motion``) and per-stack ones relative to their fetus
    (``data.stack_motion``; acquired samples only), else None."""
    if not (config.data.slice_motion or config.data.stack_motion):
        return None
    if data.slice_index is None:
        key = "data.slice_motion" if config.data.slice_motion else "data.stack_motion"
        raise TrainConfigError([f"{key}: the training samples are not the acquired slices (data.term exact is "
                                "needed)"])
    from infanite.inr.slice_motion import SliceMotion

    stack_fetus = None
    if config.data.stack_motion:
        stack_fetus = list(range(len(data.stack_ids))) if data.stack_fetus is None else list(data.stack_fetus)
    return SliceMotion(data.slice_stack, data.slice_centre_mm, stack_fetus=stack_fetus,
                       per_slice=config.data.slice_motion)


def psf_factors(config: TrainConfig, data: PackedCohort) -> torch.Tensor:
    """(S, 3, 3) Cholesky factors (mm) of each stack's PSF covariance (slice mode) or the isotropic one."""
    if config.psf.mode == "none":
        return torch.zeros(len(data.stack_ids), 3, 3)
    if config.psf.mode == "isotropic":
        sigma = torch.as_tensor(config.psf.isotropic_sigma_norm * data.half_extent_mm, dtype=torch.float32)
        return torch.diag(sigma).expand(len(data.stack_ids), 3, 3).clone()
    cov = data.psf_cov_mm2.double()
    return torch.linalg.cholesky(cov + 1e-9 * torch.eye(3, dtype=torch.float64, device=cov.device)).float()


def build_optimizer(config: TrainConfig, model: torch.nn.Module, intensity: StackIntensity | None,
                    slice_motion=None):
    """AdamW with one group per kind of parameter: shared network, per-stack latents (infanite) or per-fetus
    displacements (template), rigid refinement, intensity model (at the per-stack learning rate), per-slice
    motions (``data.slice_motion_lr``)."""
    opt = config.optimizer
    groups = []
    if isinstance(model, TemplateINR):
        if config.template.encoding == "modulated":           # the paper's decoder: its own learning rates
            decoder = model.template.decoder
            groups += [{"params": [q for n, q in decoder.named_parameters() if n != "latents"], "lr": opt.lr_inr,
                        "weight_decay": opt.inr_weight_decay},
                       {"params": [decoder.latents], "lr": opt.lr_latent, "weight_decay": opt.latent_weight_decay}]
        else:
            groups.append({"params": list(model.template.parameters()), "lr": config.template.lr_template,
                           "weight_decay": 0.0})
        if model.deformation is not None:
            groups.append({"params": [model.deformation], "lr": config.template.lr_deformation, "weight_decay": 0.0})
        if model.appearance is not None:                      # offsets of the latent grid: the latents' rate
            groups.append({"params": [model.appearance], "lr": opt.lr_latent, "weight_decay": 0.0})
        per_stack_lr = config.template.lr_template
    else:
        decoder = [p for n, p in model.named_parameters() if n not in ("latents", "rigid")]
        groups += [{"params": decoder, "lr": opt.lr_inr, "weight_decay": opt.inr_weight_decay},
                   {"params": [model.latents], "lr": opt.lr_latent, "weight_decay": opt.latent_weight_decay}]
        if model.rigid is not None:
            groups.append({"params": [model.rigid], "lr": opt.lr_tf, "weight_decay": opt.tf_weight_decay})
        per_stack_lr = opt.lr_latent
    if intensity is not None:
        groups.append({"params": list(intensity.parameters()), "lr": per_stack_lr, "weight_decay": 0.0})
    if slice_motion is not None:
        groups.append({"params": list(slice_motion.parameters()), "lr": config.data.slice_motion_lr,
                       "weight_decay": 0.0})
    return torch.optim.AdamW(groups)
