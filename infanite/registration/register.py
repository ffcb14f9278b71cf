"""``infanite register``: every stack of a cohort into template space, with observed-voxel and weight maps.

Per stack: brain mask (``Mask`` or ``Seg > 0``), optional N4, the template for its GA (when the GA is unknown: the weeks
from 2 below to 1 above the brain-volume guess are all tried and the highest NMI wins), orientation search + rigid NMI
registration (:mod:`infanite.registration.stack`), then resampling onto the template grid (or an isotropic grid of
``spacing_mm`` over the same field of view): T2 (linear), Seg and mask (nearest), the observed-voxel map and the weight
map W.

Outputs in ``OUT``: ``registered.tsv`` (manifest of the aligned stacks + ``Weight`` and ``Observed``),
``transforms.json`` (``template_to_stack`` RAS matrices and QC), ``transforms/<id>.tfm`` (loads in Slicer),
``qc/<id>.png``, ``stacks/<id>_{T2w,dseg,mask,observed,weight}.nii.gz``, the reference's
``spatial_weighting/<subject>_<orientation>_mask_sample.nii.gz``, and ``failures.json`` when a stack failed.
A stack is finished when ``stacks/<id>.json`` exists; a rerun skips finished stacks.
"""
from __future__ import annotations

import json
import logging
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from infanite.io.lock import folder_lock
from infanite.io.cohort import read_manifest, write_manifest, Cohort, ManifestError, Problem, StackRecord
from infanite.io.cohort_checks import load_cohort
from infanite.geometry import voxel_spacing
from infanite.io.atomic import atomic_write_text
from infanite.io.images import Grid, Volume, load_labels, load_nifti, read_header, save_nifti
from infanite.io.layout import FAILURES, QC_DIR, REGISTERED, STACKS_DIR, TFM_DIR, TRANSFORMS, WEIGHTS_DIR, stack_paths
from infanite.registration.observed import observed_map, weight_map
from infanite.progress import ProgressReporter
from infanite.registration.qc import save_registration_qc
from infanite.io.resample import resample
from infanite.registration.stack import RegistrationSettings, register_stack
from infanite.reference.templates import TemplateLibrary
from infanite.io.transforms import read_transforms_json, write_itk_tfm, write_transforms_json

LOG = logging.getLogger(__name__)


@dataclass
class RegisterOptions:
    """Options of ``infanite register`` (lengths mm, GA weeks)."""

    spacing_mm: float | None = None        # None: the template's own grid
    jobs: int = 1
    n4: bool = False
    w_obs: float = 1.6
    w_int: float = 0.8
    fix_headers: bool = False
    max_ga_gap_weeks: float = 2.0
    template_mode: str = "blend"
    settings: RegistrationSettings = field(default_factory=RegistrationSettings)


def open_library(templates) -> TemplateLibrary:
    """A template folder, or ``"phantom"`` for the built-in phantom library."""
    if str(templates) == "phantom":
        from infanite.reference.phantom import phantom_library

        return phantom_library()
    return TemplateLibrary.from_folder(templates)


def output_grid(template_grid: Grid, spacing_mm: float | None) -> Grid:
    """The template grid, or an isotropic grid of ``spacing_mm`` with the same axes and field of view."""
    current = voxel_spacing(template_grid.voxel_to_ras)
    if spacing_mm is None or np.allclose(current, spacing_mm, atol=1e-6):
        return template_grid
    extent = current * (np.asarray(template_grid.shape) - 1)
    shape = tuple(int(n) for n in np.floor(extent / spacing_mm + 1e-6).astype(int) + 1)
    affine = template_grid.voxel_to_ras.copy()
    affine[:3, :3] = affine[:3, :3] / current * spacing_mm
    centre_old = template_grid.voxel_to_ras @ np.r_[(np.asarray(template_grid.shape) - 1) / 2.0, 1.0]
    affine[:3, 3] = centre_old[:3] - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return Grid(shape, affine)


# ---------------------------------------------------------------------------------------------------------
# checks before any work


def _header_noise_mm(record: StackRecord, column: str) -> float | None:
    """How far (mm) a Seg/Mask grid is from the T2w grid when the shapes match, else None."""
    path = record.seg if column == "Seg" else record.mask
    try:
        shape_a, affine_a = read_header(record.t2w)
        shape_b, affine_b = read_header(path)
    except ValueError:
        return None
    if shape_a != shape_b:
        return None
    corners = np.array([[i, j, k, 1.0] for i in (0, shape_a[0] - 1) for j in (0, shape_a[1] - 1)
                        for k in (0, shape_a[2] - 1)])
    diff = float(np.abs(corners @ affine_a.T - corners @ affine_b.T).max())
    return diff if diff <= 0.1 * voxel_spacing(affine_a).min() else None


def preflight(manifest, library: TemplateLibrary, options: RegisterOptions, init_transforms=None,
              fixed_transforms=None) -> tuple[Cohort, dict, dict]:
    """Read and check everything before any work; raises :class:`ManifestError` listing every problem."""
    problems: list[Problem] = []
    try:
        cohort = load_cohort(manifest, registration_input=True, ga_range=(0.0, 100.0))
    except ManifestError as exc:
        manifest_path = exc.manifest_path
        cohort, _ = read_manifest(manifest, registration_input=True)
        for p in exc.problems:
            if p.kind == "grid_mismatch" and p.row is not None:
                record = next(r for r in cohort.stacks if r.row == p.row)
                noise = _header_noise_mm(record, p.column)
                if noise is not None:
                    if options.fix_headers:
                        continue
                    p = Problem(p.row, p.column, p.file, p.kind,
                                f"{p.message}; the grids differ only by {noise:.3g} mm (header float noise): "
                                f"rerun with --fix-headers to use the T2w geometry", p.manifest)
            problems.append(p)
        if problems:
            raise ManifestError(manifest_path, problems) from None
    weeks = library.weeks
    for record in cohort.stacks:
        if record.scan_age is not None:
            gap = abs(library.nearest_week(record.scan_age) - record.scan_age) if weeks[0] <= record.scan_age \
                <= weeks[-1] else min(abs(record.scan_age - weeks[0]), abs(record.scan_age - weeks[-1]))
            if gap > options.max_ga_gap_weeks:
                problems.append(Problem(record.row, "scan_age", None, "no_template",
                                        f"no template within {options.max_ga_gap_weeks:g} weeks of GA "
                                        f"{record.scan_age:g} (templates cover {weeks[0]:g}–{weeks[-1]:g} "
                                        f"weeks in {library.source})", cohort.manifest_path.name))
        mask_path = record.mask or record.seg
        t2 = load_nifti(record.t2w)
        brain = load_nifti(mask_path, dtype=None).array > 0
        inside = np.count_nonzero(t2.array[brain] > 0) / max(np.count_nonzero(brain), 1)
        if inside < 0.5:
            problems.append(Problem(record.row, "Mask" if record.mask else "Seg", str(mask_path), "mask_off_image",
                                    f"the brain mask does not overlap the image: only {inside:.0%} of its voxels "
                                    f"have T2 signal", cohort.manifest_path.name))
    ids = {r.subject_id for r in cohort.stacks}
    transforms = {}
    for kind, path in (("init", init_transforms), ("fixed", fixed_transforms)):
        if path is None:
            transforms[kind] = {}
            continue
        try:
            transforms[kind] = read_transforms_json(path)
        except ValueError as exc:
            problems.append(Problem(None, None, str(path), "bad_transforms", str(exc), cohort.manifest_path.name))
            transforms[kind] = {}
            continue
        unknown = sorted(set(transforms[kind]) - ids)
        if unknown:   # e.g. a transforms file of a larger run: harmless, but say so
            LOG.warning("--%s-transforms %s: %d ids are not in the manifest and are ignored: %s", kind, path,
                        len(unknown), ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else ""))
    if problems:
        raise ManifestError(cohort.manifest_path, problems)
    return cohort, transforms["init"], transforms["fixed"]


# ---------------------------------------------------------------------------------------------------------
# one stack


def register_one(record: StackRecord, templates, out: Path, options: RegisterOptions,
                 init_matrix=None, fixed_matrix=None) -> dict:
    """Register and resample one stack; writes its files and, last, ``stacks/<id>.json`` (returned)."""
    library = open_library(templates)
    paths = stack_paths(out, record.subject_id)
    t2 = load_nifti(record.t2w)
    mask = load_labels(record.mask) if record.mask else None
    seg = load_labels(record.seg) if record.seg else None
    if options.fix_headers:
        mask = None if mask is None else t2.with_array(mask.array)
        seg = None if seg is None else t2.with_array(seg.array)
    mask = mask.with_array((mask.array > 0).astype(np.uint8)) if mask is not None else \
        seg.with_array((seg.array > 0).astype(np.uint8))
    ga_estimated = record.scan_age is None
    moving = t2
    if options.n4:
        from infanite.registration.bias import n4_correct

        moving = n4_correct(t2, mask)
    week_nmi = None
    if fixed_matrix is not None:
        ga = record.scan_age if not ga_estimated else _volume_week(library, mask)
        template = library.for_ga(ga, options.template_mode)
        template_to_stack, nmi, margin, confidence, seconds = np.asarray(fixed_matrix), None, None, "fixed", 0.0
    else:
        if ga_estimated:
            # GA unknown: the brain volume of a thick-slice mask is only a rough guide (it overestimates), so
            # the neighbouring template weeks are all tried and the best-matching one (highest NMI) is kept
            guess = _volume_week(library, mask)
            weeks = [w for w in library.weeks if guess - 2 <= w <= guess + 1]
            results = {w: register_stack(moving, mask, library.get(w), options.settings, init_matrix)
                       for w in weeks}
            ga = max(results, key=lambda w: results[w].nmi)
            week_nmi = {str(w): round(r.nmi, 4) for w, r in results.items()}
            result = results[ga]
            result.seconds = sum(r.seconds for r in results.values())
        else:
            ga = record.scan_age
            result = register_stack(moving, mask, library.for_ga(ga, options.template_mode), options.settings,
                                    initial_template_to_stack=init_matrix)
        template = library.for_ga(ga, options.template_mode)
        template_to_stack, nmi, margin = result.template_to_stack, result.nmi, result.margin
        confidence, seconds = result.confidence, result.seconds
    grid = output_grid(template.grid, options.spacing_mm)
    aligned = resample(moving, grid, template_to_stack, "linear")
    mask_t = resample(mask, grid, template_to_stack, "nearest")
    observed = observed_map(grid, t2.grid, template_to_stack)
    weights = weight_map(observed, mask_t.array > 0, options.w_obs, options.w_int)
    save_nifti(aligned, paths["T2w"], dtype=np.float32)
    save_nifti(mask_t, paths["Mask"], dtype=np.uint8)
    if seg is not None:
        save_nifti(resample(seg, grid, template_to_stack, "nearest"), paths["Seg"], dtype=np.int16)
    save_nifti(Volume(observed, grid.voxel_to_ras), paths["Observed"], dtype=np.uint8)
    save_nifti(Volume(weights, grid.voxel_to_ras), paths["Weight"], dtype=np.float32)
    save_nifti(Volume(weights, grid.voxel_to_ras), paths["reference"], dtype=np.float32)
    write_itk_tfm(paths["tfm"], template_to_stack)
    qc_template = template if grid is template.grid else _template_on(template, grid)
    save_registration_qc(aligned, qc_template, paths["qc"],
                         title=f"{record.subject_id}: NMI {nmi if nmi is None else round(nmi, 3)}, "
                               f"confidence {confidence}")
    summary = {"subject_id": record.subject_id, "row": record.row, "template_to_stack": template_to_stack.tolist(),
               "psf_cov_mm2": slice_psf_covariance(t2, record.slice_thickness_mm, template_to_stack).tolist(),
               "qc": {"nmi": nmi, "margin": margin, "confidence": confidence, "template_ga": float(ga),
                      "ga_estimated": ga_estimated, "week_nmi": week_nmi, "seconds": round(seconds, 2),
                      "observed_fraction": float(observed[mask_t.array > 0].mean()) if mask_t.array.any() else 0.0}}
    atomic_write_text(paths["result"], json.dumps(summary))
    return summary


def slice_psf_covariance(t2: Volume, thickness_mm: float | None, template_to_stack: np.ndarray,
                         inplane_fwhm_factor: float = 1.2) -> np.ndarray:
    """The stack's Gaussian slice profile as a 3×3 covariance (mm²) in template RAS axes.

    Through-plane FWHM = slice thickness (default: the through-plane spacing), in-plane FWHM = 1.2 × spacing,
    along the stack's axes, rotated by the registration into template space (Σ_t = Rᵀ Σ_s R).
    """
    from infanite.geometry import direction_cosines
    from infanite.registration.observed import slice_axis
    from infanite.io.resample import FWHM_TO_SIGMA

    spacing = t2.spacing_mm.copy()
    through = slice_axis(t2.grid)
    fwhm = inplane_fwhm_factor * spacing
    fwhm[through] = thickness_mm if thickness_mm else spacing[through]
    axes = direction_cosines(t2.voxel_to_ras)
    cov_stack = axes @ np.diag((fwhm * FWHM_TO_SIGMA) ** 2) @ axes.T
    rotation = np.asarray(template_to_stack)[:3, :3]
    return rotation.T @ cov_stack @ rotation


def _volume_week(library: TemplateLibrary, mask: Volume) -> float:
    """Template week whose brain volume is closest to the mask's (mL), as NiftyMIC chooses its template."""
    brain_ml = np.count_nonzero(mask.array) * abs(np.linalg.det(mask.voxel_to_ras[:3, :3])) / 1000.0
    return library.week_for_brain_volume(brain_ml)


def _template_on(template, grid: Grid):
    from infanite.reference.templates import Template

    return Template(template.ga_weeks, resample(template.t2w, grid), resample(template.mask, grid, None, "nearest"),
                    None if template.seg is None else resample(template.seg, grid, None, "nearest"),
                    template.source)


def _worker(args) -> tuple[str, dict | None, str | None]:
    record, templates, out, options, init_matrix, fixed_matrix = args
    try:
        import torch

        torch.set_num_threads(1 if options.jobs > 1 else max(1, torch.get_num_threads()))
        return record.subject_id, register_one(record, templates, out, options, init_matrix, fixed_matrix), None
    except OSError as exc:    # a full disk or a denied write is no stack's fault: it stops the command
        from infanite.errors import describe_os_error

        if describe_os_error(exc) is not None:
            raise
        return record.subject_id, None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    except Exception as exc:  # a failed stack must not stop the others
        return record.subject_id, None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"


# ---------------------------------------------------------------------------------------------------------
# cohort


def register_cohort(manifest, templates, out, options: RegisterOptions | None = None, init_transforms=None,
                    fixed_transforms=None, progress: ProgressReporter | None = None) -> dict:
    """Register every stack; returns ``{"done": [...ids], "failed": {id: reason}, "skipped": [...]}``."""
    options = options or RegisterOptions()
    out = Path(out)
    library = open_library(templates)
    cohort, init, fixed = preflight(manifest, library, options, init_transforms, fixed_transforms)
    with folder_lock(out, "register"):
        for sub in (STACKS_DIR, TFM_DIR, QC_DIR, WEIGHTS_DIR):
            (out / sub).mkdir(parents=True, exist_ok=True)
        progress = progress or ProgressReporter(None)
        todo, skipped = [], []
        for record in cohort.stacks:
            if stack_paths(out, record.subject_id)["result"].exists():
                skipped.append(record.subject_id)
            else:
                todo.append(record)
        progress.start("register", len(cohort.stacks), f"{len(todo)} to register, {len(skipped)} already done")
        step = len(skipped)
        failed: dict[str, str] = {}
        jobs = [(r, str(templates), out, options, init.get(r.subject_id), fixed.get(r.subject_id)) for r in todo]
        if options.jobs > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(options.jobs, mp_context=get_context("spawn")) as pool:
                for future in as_completed([pool.submit(_worker, j) for j in jobs]):
                    sid, _, error = future.result()
                    step += 1
                    if error:
                        failed[sid] = error
                    progress.update(step, f"{sid}{' FAILED' if error else ''}")
        else:
            for job in jobs:
                sid, _, error = _worker(job)
                step += 1
                if error:
                    failed[sid] = error
                progress.update(step, f"{sid}{' FAILED' if error else ''}")
        _write_cohort_outputs(cohort, out, failed, templates)
        return {"done": [r.subject_id for r in cohort.stacks if r.subject_id not in failed],
                "failed": failed, "skipped": skipped}


#: registered.tsv columns that point back at the acquired stack (absolute paths) and hold its pose: training on
#: the acquired samples themselves reads the stacks through them (``infanite.inr.samples``)
SOURCE_COLUMNS = ("source_T2w", "source_Mask", "source_Seg", "template_to_stack")


def source_columns(record: StackRecord, template_to_stack) -> dict:
    """The :data:`SOURCE_COLUMNS` of a registered stack: its acquired images (absolute paths, empty when absent)
    and ``template_to_stack`` (16 numbers, row-major, template RAS mm → stack RAS mm)."""
    def path(value):
        return "" if value is None else str(Path(value).resolve())

    matrix = np.asarray(template_to_stack, dtype=np.float64).reshape(4, 4)
    return {"source_T2w": path(record.t2w), "source_Mask": path(record.mask), "source_Seg": path(record.seg),
            "template_to_stack": ",".join(f"{v:.10g}" for v in matrix.ravel())}


def _write_cohort_outputs(cohort: Cohort, out: Path, failed: dict[str, str], templates=None) -> None:
    """``registered.tsv`` (with each stack's ``source_*`` columns, ``template_to_stack`` and ``templates``, the
    template folder it was registered to: what a mask-only run's atlas takes its labels from), transforms.json and
    the failures file."""
    source = "" if templates is None else ("phantom" if str(templates) == "phantom" else
                                            str(Path(templates).resolve()))
    records, transforms, qc = [], {}, {}
    for record in cohort.stacks:
        paths = stack_paths(out, record.subject_id)
        if record.subject_id in failed or not paths["result"].exists():
            continue
        summary = json.loads(paths["result"].read_text())
        transforms[record.subject_id] = np.asarray(summary["template_to_stack"])
        qc[record.subject_id] = summary["qc"]
        extra = dict(record.extra)
        extra.update(Weight=paths["Weight"].relative_to(out).as_posix(),
                     Observed=paths["Observed"].relative_to(out).as_posix(),
                     psf_cov_mm2=",".join(f"{v:.6g}" for v in np.ravel(summary["psf_cov_mm2"])),
                     **source_columns(record, summary["template_to_stack"]))
        if summary["qc"]["ga_estimated"]:
            extra["ga_estimated"] = "1"
        if source:
            extra["templates"] = source
        records.append(StackRecord(record.row, record.subject_id, summary["qc"]["template_ga"]
                                   if record.scan_age is None else record.scan_age, paths["T2w"],
                                   paths["Seg"] if record.seg else None, paths["Mask"], record.subject,
                                   record.slice_thickness_mm, extra))
    write_manifest(records, out / REGISTERED)
    write_transforms_json(out / TRANSFORMS, transforms, qc)
    failures_path = out / FAILURES
    if failed:
        rows = {r.subject_id: r.row for r in cohort.stacks}
        atomic_write_text(failures_path, json.dumps(
            {sid: {"row": rows[sid], "reason": reason} for sid, reason in failed.items()}, indent=1))
    elif failures_path.exists():
        os.unlink(failures_path)
