"""Registration of one thick-slice stack to an age-matched template (orientation search + rigid NMI).

Input: the stack (native grid), its brain mask, and a :class:`~infanite.reference.templates.Template`.  Output: a
:class:`StackRegistration` whose ``template_to_stack`` maps template RAS mm → stack RAS mm.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from infanite.geometry import apply_matrix
from infanite.io.images import Volume
from infanite.registration.orientation import axis_candidates, pca_candidates, pose_distance
from infanite.registration.rigid_nmi import (COARSE_LEVELS, FINE_LEVELS, NMILevel, TemplateSampler, optimise_poses,
                                             studholme_nmi)
from infanite.reference.templates import Template


@dataclass
class RegistrationSettings:
    """How stacks are registered (lengths mm, angles degrees)."""

    bins: int = 32                         # joint-histogram bins of the reported (hard) NMI
    coarse_levels: tuple = COARSE_LEVELS
    fine_levels: tuple = FINE_LEVELS
    distinct_pose_deg: float = 10.0        # runner-up must differ from the best by this rotation …
    distinct_pose_mm: float = 5.0          # … or this translation at the brain centre
    high_confidence_margin: float = 0.01   # NMI margin to the runner-up above which confidence is "high"
    finalists: int = 4                     # distinct coarse poses refined at the fine levels
    fine_backend: str = "torch"            # "torch" (NMI, this module) or "sitk" (SimpleITK, Correlation)
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self):
        if self.fine_backend not in ("torch", "sitk"):
            raise ValueError(f"fine_backend must be 'torch' or 'sitk', got {self.fine_backend!r}")


@dataclass
class StackRegistration:
    template_to_stack: np.ndarray
    nmi: float
    margin: float | None
    confidence: str
    candidates: list = field(default_factory=list)
    seconds: float = 0.0


def unit_intensity(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Scale ``values`` to [0, 1] by the 0.5th–99.5th percentiles of ``reference`` (clipped)."""
    lo, hi = np.percentile(reference, [0.5, 99.5])
    return np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def _mask_points(mask: Volume) -> tuple[np.ndarray, np.ndarray]:
    ijk = np.argwhere(mask.array > 0)
    return ijk, apply_matrix(mask.voxel_to_ras, ijk)


def _stack_samples(t2: Volume, mask_ijk: np.ndarray, smoothing_mm: float) -> np.ndarray:
    """Stack intensities at its mask voxels after in-plane smoothing to ``smoothing_mm`` (σ, mm)."""
    spacing = t2.spacing_mm
    sigma = np.where(spacing < spacing.max() - 1e-6, smoothing_mm / spacing, 0.0)   # in-plane only
    array = ndimage.gaussian_filter(t2.array.astype(np.float32), sigma) if np.any(sigma > 0) else t2.array
    return array[tuple(mask_ijk.T)]


class _TemplateLevels:
    """The template T2 smoothed per level, intensities scaled to [0, 1] over its brain."""

    def __init__(self, template: Template, device: str):
        self.template = template
        self.device = device
        self._cache: dict[float, TemplateSampler] = {}
        brain = template.mask.array > 0
        self.brain_values = template.t2w.array[brain]

    def sampler(self, smoothing_mm: float) -> TemplateSampler:
        if smoothing_mm not in self._cache:
            t2 = self.template.t2w
            sigma = smoothing_mm / t2.spacing_mm
            smoothed = ndimage.gaussian_filter(t2.array.astype(np.float32), sigma)
            self._cache[smoothing_mm] = TemplateSampler(unit_intensity(smoothed, self.brain_values),
                                                        t2.voxel_to_ras, device=self.device)
        return self._cache[smoothing_mm]


def _run_levels(levels: tuple[NMILevel, ...], t2: Volume, mask_ijk, mask_ras, template_levels: _TemplateLevels,
                start: np.ndarray, centre: np.ndarray, settings: RegistrationSettings):
    poses, nmi = start, None
    for i, level in enumerate(levels):
        values = _stack_samples(t2, mask_ijk, level.smoothing_mm)
        values = unit_intensity(values, values)
        poses, nmi = optimise_poses(mask_ras, values, template_levels.sampler(level.smoothing_mm), poses, centre,
                                    level, seed=settings.seed + i, device=settings.device)
    return poses, nmi


def _is_distinct(a: np.ndarray, b: np.ndarray, centre, settings) -> bool:
    angle, dist = pose_distance(a, b, centre)
    return angle > settings.distinct_pose_deg or dist > settings.distinct_pose_mm


def _distinct_best(poses: np.ndarray, nmi: np.ndarray, centre, settings) -> list[int]:
    """Indices of the ``settings.finalists`` best poses that differ pairwise (see ``distinct_pose_*``)."""
    chosen: list[int] = []
    for idx in np.argsort(-nmi):
        if all(_is_distinct(poses[idx], poses[j], centre, settings) for j in chosen):
            chosen.append(int(idx))
        if len(chosen) == settings.finalists:
            break
    return chosen


def register_stack(t2: Volume, mask: Volume, template: Template, settings: RegistrationSettings | None = None,
                   initial_template_to_stack: np.ndarray | None = None) -> StackRegistration:
    """Find ``template_to_stack`` for one stack.

    Without ``initial_template_to_stack`` the orientation search runs: 24 axis candidates in the stack's voxel frame ∪ 4
    principal-axis candidates, each refined by a short coarse registration and ranked by NMI; the ``settings.finalists``
    best distinct poses are refined together at the first fine level, the best NMI wins (``margin`` = its lead over the
    best distinct runner-up) and alone goes through the finer levels.  With it, the search is skipped and the given pose
    is refined.
    """
    settings = settings or RegistrationSettings()
    t0 = time.perf_counter()
    mask_ijk, mask_ras = _mask_points(mask)
    if mask_ijk.shape[0] < 100:
        raise ValueError(f"brain mask has only {mask_ijk.shape[0]} voxels")
    template_levels = _TemplateLevels(template, settings.device)
    template_brain = apply_matrix(template.mask.voxel_to_ras, np.argwhere(template.mask.array > 0))
    centre = template_brain.mean(0)
    candidates_info = []
    margin = None
    if initial_template_to_stack is None:
        candidates = np.stack(axis_candidates(t2.voxel_to_ras, mask_ras.mean(0), centre)
                              + pca_candidates(mask_ras, template_brain))
        names = [f"axis{i:02d}" for i in range(24)] + [f"pca{i}" for i in range(4)]
        coarse, coarse_nmi = _run_levels(settings.coarse_levels, t2, mask_ijk, mask_ras, template_levels,
                                         candidates, centre, settings)
        candidates_info = [{"name": names[i], "coarse_nmi": float(coarse_nmi[i])} for i in np.argsort(-coarse_nmi)]
        # the best few distinct coarse poses all go through the fine levels (one batch); the fine NMI decides
        finalists = _distinct_best(coarse, coarse_nmi, mask_ras.mean(0), settings)
        start = coarse[finalists]
    else:
        start = np.linalg.inv(np.asarray(initial_template_to_stack, dtype=np.float64))[None]
        finalists = [0]
    if settings.fine_backend == "sitk":
        stack_to_template = np.linalg.inv(refine_sitk(t2, mask, template, np.linalg.inv(start[0])))
        if len(finalists) > 1:
            margin = float(coarse_nmi[finalists[0]] - coarse_nmi[finalists[1]])
    else:
        # the finalists share the first fine level; the winner alone goes on to the finer ones
        first, rest = settings.fine_levels[:1], settings.fine_levels[1:]
        refined, fine_nmi = _run_levels(first, t2, mask_ijk, mask_ras, template_levels, start, centre, settings)
        order = np.argsort(-fine_nmi)
        for idx in order[1:]:
            if _is_distinct(refined[idx], refined[order[0]], mask_ras.mean(0), settings):
                margin = float(fine_nmi[order[0]] - fine_nmi[idx])
                break
        if initial_template_to_stack is None:
            for finalist, nmi_value in zip(finalists, fine_nmi):
                candidates_info.append({"name": names[finalist], "fine_nmi": float(nmi_value)})
        best = refined[order[0]:order[0] + 1]
        stack_to_template = (_run_levels(rest, t2, mask_ijk, mask_ras, template_levels, best, centre, settings)[0]
                             if rest else best)[0]
    # report a plain (hard-histogram) Studholme NMI over every mask voxel at the final pose
    template_values = ndimage.map_coordinates(
        template.t2w.array.astype(np.float32),
        apply_matrix(np.linalg.inv(template.t2w.voxel_to_ras) @ stack_to_template, mask_ras).T, order=1)
    stack_values = t2.array[tuple(mask_ijk.T)]
    nmi = studholme_nmi(stack_values, template_values, settings.bins)
    confidence = "high" if margin is None or margin >= settings.high_confidence_margin else "low"
    return StackRegistration(np.linalg.inv(stack_to_template), nmi, margin, confidence, candidates_info,
                             time.perf_counter() - t0)


def refine_sitk(t2: Volume, mask: Volume, template: Template, initial_template_to_stack: np.ndarray) -> np.ndarray:
    """Alternative fine back end: SimpleITK rigid registration (Correlation metric, fixed = stack with its mask).

    Returns ``template_to_stack``.  Multi-resolution 4/2/1 with 2/1/0 mm smoothing, regular-step gradient descent.
    """
    import SimpleITK as sitk

    from infanite.geometry import lps_matrix_to_ras, ras_matrix_to_lps
    from infanite.io.images import volume_to_sitk

    fixed = volume_to_sitk(t2.with_array(t2.array.astype(np.float32)))
    fixed_mask = volume_to_sitk(mask.with_array((mask.array > 0).astype(np.uint8)))
    moving = volume_to_sitk(template.t2w.with_array(template.t2w.array.astype(np.float32)))
    stack_to_template_lps = ras_matrix_to_lps(np.linalg.inv(initial_template_to_stack))
    tx = sitk.Euler3DTransform()
    tx.SetMatrix([float(v) for v in stack_to_template_lps[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in stack_to_template_lps[:3, 3]])
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricFixedMask(fixed_mask)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.3, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                 relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(fixed, moving)
    m = np.eye(4)
    m[:3, :3] = np.asarray(tx.GetMatrix()).reshape(3, 3)
    center = np.asarray(tx.GetCenter())
    m[:3, 3] = np.asarray(tx.GetTranslation()) + center - m[:3, :3] @ center
    return np.linalg.inv(lps_matrix_to_ras(m))
