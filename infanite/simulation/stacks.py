"""Thick-slice stack simulator: a cohort of clinical-like T2 stacks with exact ground truth.

For each fetus (subject): a continuous GA, the age-matched template (T2 blended between weeks, labels of the
nearest week), a random smooth deformation (≤ ``deformation_mm``), a global intensity scale and a smooth
multiplicative bias field (defined in scanner coordinates).  For each stack: a head pose (template RAS →
scanner RAS, uniformly random), a slice plan in the head frame (axial / coronal / sagittal in turn, in-plane
axes permuted/flipped at random, obliquity ≤ ``obliquity_deg``; or fully random), per-slice rigid motion in
interleaved acquisition order, a Gaussian slice profile (through-plane FWHM = slice thickness, in-plane FWHM =
1.2 × in-plane spacing), Rician noise, and a field of view covering the head.

Outputs (in ``OUT``): ``stacks/<id>_T2w.nii.gz``, ``_mask.nii.gz`` and ``_dseg.nii.gz`` with the true scanner
affine, ``cohort.tsv`` (the manifest format of :mod:`infanite.io.cohort`), and ``truth.json`` giving per stack the
4×4 matrix mapping **template RAS mm → stack (scanner) RAS mm** (``template_to_stack``), the GA and every
parameter drawn.  The same seed gives the same cohort; a killed run resumes, skipping finished subjects.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from infanite.io.lock import folder_lock
from infanite.geometry import (apply_matrix, fit_rigid, random_rotation, rigid_matrix, rotation_angle_deg,
                               rotation_matrix)
from infanite.io.atomic import atomic_write_text
from infanite.io.images import Volume, save_nifti
from infanite.io.layout import COHORT, REGISTERED, SIMULATION, TRUTH
from infanite.progress import ProgressReporter
from infanite.io.resample import FWHM_TO_SIGMA
from infanite.reference.templates import TemplateLibrary
from infanite.simulation.anatomy import crop_to_brain, deform, displacement, random_deformation, remove_affine_part

#: In-plane FWHM of the slice profile relative to the in-plane spacing (SVRTK, NiftyMIC, NeSVoR).
INPLANE_FWHM_FACTOR = 1.2
#: Stack plane names and the head-frame (RAS) axis of their slice normal.
PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}
PLANE_CODES = {"axial": 1, "coronal": 2, "sagittal": 3}


@dataclass
class SimulationConfig:
    """Simulation settings (lengths in mm, angles in degrees, GA in weeks)."""

    n_subjects: int = 4
    stacks_per_subject: int = 3
    ga_range: tuple = (21.0, 38.0)
    slice_thickness_mm: float = 3.0
    slice_gap_mm: float = 0.3
    inplane_spacing_mm: float = 1.0
    obliquity_deg: float = 20.0
    random_poses: bool = False
    motion_deg: float = 2.0
    motion_mm: float = 1.0
    deformation_mm: float = 2.0
    noise: float = 0.03
    bias: float = 0.2
    intensity_scale_range: tuple = (0.7, 1.3)
    fov_margin_mm: float = 12.0
    psf_quadrature_points: int = 7
    template_mode: str = "blend"
    seed: int = 0
    phantom_spacing_mm: float = 0.8

    def __post_init__(self):
        self.ga_range = tuple(float(g) for g in self.ga_range)
        self.intensity_scale_range = tuple(float(v) for v in self.intensity_scale_range)
        checks = [
            (self.n_subjects >= 1, "n_subjects must be ≥ 1"),
            (self.stacks_per_subject >= 1, "stacks_per_subject must be ≥ 1"),
            (self.ga_range[0] <= self.ga_range[1], f"ga_range {self.ga_range} is empty"),
            (self.slice_thickness_mm > 0, "slice thickness must be > 0 mm"),
            (self.slice_gap_mm > -self.slice_thickness_mm, "slice gap must be > −thickness"),
            (self.inplane_spacing_mm > 0, "in-plane spacing must be > 0 mm"),
            (0 <= self.obliquity_deg <= 180, "obliquity must be within 0–180°"),
            (self.motion_deg >= 0 and self.motion_mm >= 0, "motion must be ≥ 0"),
            (self.deformation_mm >= 0, "deformation must be ≥ 0 mm"),
            (0 <= self.noise < 1, "noise must be within [0, 1)"),
            (0 <= self.bias < 1, "bias must be within [0, 1)"),
            (self.psf_quadrature_points >= 1, "psf_quadrature_points must be ≥ 1"),
            (self.template_mode in ("nearest", "blend"), "template_mode must be 'nearest' or 'blend'"),
        ]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise ValueError("invalid simulation settings: " + "; ".join(problems))

    @property
    def slice_spacing_mm(self) -> float:
        return self.slice_thickness_mm + self.slice_gap_mm

    @property
    def psf_sigma_mm(self) -> tuple[float, float, float]:
        """Gaussian slice-profile σ (mm) along the stack's (i, j, k) axes."""
        s_xy = INPLANE_FWHM_FACTOR * self.inplane_spacing_mm * FWHM_TO_SIGMA
        return (s_xy, s_xy, self.slice_thickness_mm * FWHM_TO_SIGMA)


@dataclass
class SubjectTruth:
    subject: str
    ga_weeks: float
    template: str
    intensity_scale: float
    deformation: dict
    bias_coefficients: list
    stacks: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# stack level


def _plane_rotation(plane: str, rng: np.random.Generator) -> np.ndarray:
    """Stack voxel axes (columns i, j, k) in the head frame for a plane, with random in-plane permutation/flips."""
    k_axis = PLANES[plane]
    in_plane = [a for a in range(3) if a != k_axis]
    if rng.random() < 0.5:
        in_plane = in_plane[::-1]
    r = np.zeros((3, 3))
    for col, axis in enumerate(in_plane + [k_axis]):
        r[axis, col] = rng.choice([-1.0, 1.0])
    if np.linalg.det(r) < 0:      # keep a proper rotation by flipping the slice direction
        r[:, 2] *= -1
    return r


def _obliquity(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return rotation_matrix(axis * rng.uniform(0, max_deg))


def _slice_motion(rng: np.random.Generator, n_slices: int, sd_deg: float, sd_mm: float) -> tuple:
    """Per-slice rotation vectors (deg) and translations (mm): AR(1) walk in interleaved acquisition order,
    centred on zero over the stack."""
    order = np.concatenate([np.arange(0, n_slices, 2), np.arange(1, n_slices, 2)])
    rho = 0.8
    innovations = rng.normal(size=(n_slices, 6)) * np.sqrt(1 - rho ** 2)
    walk = np.zeros((n_slices, 6))
    walk[0] = rng.normal(size=6)
    for t in range(1, n_slices):
        walk[t] = rho * walk[t - 1] + innovations[t]
    walk -= walk.mean(0)          # zero-mean motion: the stack's true pose is its average head pose
    rot = np.zeros((n_slices, 3))
    trans = np.zeros((n_slices, 3))
    rot[order] = walk[:, :3] * sd_deg
    trans[order] = walk[:, 3:] * sd_mm
    acquisition_index = np.empty(n_slices, int)
    acquisition_index[order] = np.arange(n_slices)
    return rot, trans, acquisition_index


def _gauss_hermite(n: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes (mm) and normalised weights for averaging over a 1-D Gaussian of σ mm."""
    if n == 1 or sigma <= 0:
        return np.zeros(1), np.ones(1)
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x * sigma, w / w.sum()


def _bias_field(coefficients: np.ndarray, points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """exp of a quadratic polynomial in scanner coordinates normalised by ``radius``."""
    u = (points - centre) / radius
    linear = u @ coefficients[:3]
    quad = np.einsum("...i,ij,...j->...", u, coefficients[3:12].reshape(3, 3), u)
    return np.exp(linear + quad)


class _SubjectSampler:
    """Samples thick-slice stacks from one deformed subject volume."""

    def __init__(self, t2: Volume, labels: Volume, config: SimulationConfig):
        self.config = config
        sigma_xy, _, sigma_z = config.psf_sigma_mm
        # isotropic in-plane blur first; the through-plane quadrature adds the rest: σ_z² = σ_xy² + σ_q²
        voxel_sigma = sigma_xy / t2.spacing_mm
        self.t2 = t2.with_array(ndimage.gaussian_filter(t2.array, voxel_sigma, mode="constant").astype(np.float32))
        self.labels = labels
        self.nodes_mm, self.weights = _gauss_hermite(config.psf_quadrature_points,
                                                     float(np.sqrt(max(sigma_z ** 2 - sigma_xy ** 2, 0.0))))
        brain = np.argwhere(labels.array > 0)
        brain_ras = apply_matrix(labels.voxel_to_ras, brain)
        self.centre_ras = brain_ras.mean(0)
        self.radius_mm = float(np.linalg.norm(brain_ras - self.centre_ras, axis=1).max())

    def stack_grid(self, axes_head: np.ndarray, shift_mm: np.ndarray) -> tuple[tuple, np.ndarray]:
        """Shape and voxel → head-RAS affine of a stack centred on the brain (+ shift)."""
        cfg = self.config
        spacing = np.array([cfg.inplane_spacing_mm, cfg.inplane_spacing_mm, cfg.slice_spacing_mm])
        n_in = int(np.ceil((2 * self.radius_mm + 2 * cfg.fov_margin_mm) / cfg.inplane_spacing_mm))
        n_sl = int(np.ceil((2 * self.radius_mm + cfg.fov_margin_mm) / cfg.slice_spacing_mm))
        shape = (n_in, n_in, n_sl)
        affine = np.eye(4)
        affine[:3, :3] = axes_head @ np.diag(spacing)
        affine[:3, 3] = self.centre_ras + shift_mm - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
        return shape, affine

    def sample(self, shape, voxel_to_head: np.ndarray, slice_to_head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """T2 (PSF-averaged) and labels (nearest, slice centre) of a stack.

        ``slice_to_head[k]`` (4x4) maps the planned head frame of slice ``k`` to where the head really was
        (per-slice motion) — points are pulled back with its inverse.
        """
        ii, jj = np.meshgrid(np.arange(shape[0], dtype=np.float32), np.arange(shape[1], dtype=np.float32),
                             indexing="ij")
        plane = np.stack([ii, jj, np.zeros_like(ii), np.ones_like(ii)], -1)           # (ni, nj, 4)
        t2_out = np.zeros(shape, np.float32)
        lab_out = np.zeros(shape, self.labels.array.dtype)
        head_to_t2_voxel = self.t2.ras_to_voxel
        normal_head = voxel_to_head[:3, 2] / np.linalg.norm(voxel_to_head[:3, 2])
        for k in range(shape[2]):
            plane[..., 2] = k
            # planned head-frame point → true template point: inverse of that slice's motion
            to_template = np.linalg.inv(slice_to_head[k]) @ voxel_to_head
            m = head_to_t2_voxel @ to_template
            centre_vox = plane @ m.T[:, :3]                                            # (ni, nj, 3)
            step_vox = (head_to_t2_voxel[:3, :3] @ np.linalg.inv(slice_to_head[k])[:3, :3] @ normal_head)
            acc = np.zeros(shape[:2], np.float32)
            for node, weight in zip(self.nodes_mm, self.weights):
                coords = np.moveaxis(centre_vox + (node * step_vox).astype(np.float32), -1, 0)
                acc += weight * ndimage.map_coordinates(self.t2.array, coords, order=1, mode="constant")
            t2_out[:, :, k] = acc
            lab_out[:, :, k] = ndimage.map_coordinates(self.labels.array, np.moveaxis(centre_vox, -1, 0),
                                                       order=0, mode="constant")
        return t2_out, lab_out


# ---------------------------------------------------------------------------------------------------------
# cohort


def stack_id(ga_weeks: float, subject_index: int, plane: str, repeat: int) -> str:
    """Reference-style id ``GA_SUBJECT_STACK``, e.g. ``24_0001_201`` (plane code 1 axial, 2 coronal, 3 sagittal)."""
    return f"{int(np.floor(ga_weeks))}_{subject_index:04d}_{PLANE_CODES[plane]}{repeat:02d}"


def _fetus_anatomy(index: int, ga: float, library: TemplateLibrary, config: SimulationConfig):
    """The random generator of fetus ``index`` (after its anatomy's draws), its template, deformation and
    deformed T2 and labels (template RAS, cropped to the brain)."""
    rng = np.random.default_rng([config.seed, index])
    template = library.for_ga(ga, config.template_mode)
    t2, labels = crop_to_brain(template, margin_mm=config.fov_margin_mm)
    deformation = random_deformation(rng, config.deformation_mm)
    brain_ras = apply_matrix(labels.voxel_to_ras, np.argwhere(labels.array > 0)[::7])
    deformation = remove_affine_part(deformation, brain_ras)
    t2, labels = deform(t2, labels, deformation)
    return rng, template, deformation, t2, labels


def fetus_truth(index: int, ga: float, library: TemplateLibrary, config: SimulationConfig) -> tuple:
    """The true anatomy of fetus ``index`` (1-based, as simulated with ``config`` and the same template
    ``library``): ``(deformed T2, deformed labels, undeformed template)`` in template RAS, noise-free, before the
    stacks' bias and scale.  What the benchmark's oracles and per-fetus diagnostics compare with."""
    _, template, _, t2, labels = _fetus_anatomy(index, ga, library, config)
    return t2, labels, template


def _simulate_subject(index: int, ga: float, library: TemplateLibrary, config: SimulationConfig, out: Path):
    rng, template, deformation, t2, labels = _fetus_anatomy(index, ga, library, config)
    scale = float(rng.uniform(*config.intensity_scale_range))
    bias_coefficients = rng.normal(size=12) * np.r_[np.full(3, 1.0), np.full(9, 0.5)]
    sampler = _SubjectSampler(t2, labels, config)
    subject = f"{index:04d}"
    truth = SubjectTruth(subject, ga, template.source, scale, deformation, bias_coefficients.tolist())
    records = []
    plane_names = list(PLANES)
    for s in range(config.stacks_per_subject):
        plane = plane_names[s % 3]
        if config.random_poses:
            axes_head = random_rotation(rng)
            plane = "random"
        else:
            axes_head = _obliquity(rng, config.obliquity_deg) @ _plane_rotation(plane, rng)
        head_to_scanner = rigid_matrix(random_rotation(rng), rng.uniform(-30, 30, 3))
        shape, voxel_to_head = sampler.stack_grid(axes_head, rng.uniform(-5, 5, 3))
        rot, trans, acq = _slice_motion(rng, shape[2], config.motion_deg, config.motion_mm)
        slice_to_head = np.stack([rigid_matrix(rotation_matrix(r), t, sampler.centre_ras) for r, t in zip(rot, trans)])
        t2_stack, lab_stack = sampler.sample(shape, voxel_to_head, slice_to_head)
        voxel_to_scanner = head_to_scanner @ voxel_to_head
        template_to_stack = _best_rigid_pose(lab_stack > 0, voxel_to_head, slice_to_head, voxel_to_scanner,
                                             deformation)
        # bias field (scanner frame), global scale, Rician noise
        ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
        scanner_xyz = apply_matrix(voxel_to_scanner, ijk)
        centre_scanner = apply_matrix(head_to_scanner, sampler.centre_ras)
        bias = _bias_field(bias_coefficients, scanner_xyz, centre_scanner, 4 * sampler.radius_mm)
        bias = np.exp(np.log(bias) / max(np.abs(np.log(bias)).max(), 1e-9) * np.log1p(config.bias))
        signal = t2_stack * scale * bias.astype(np.float32)
        brain_values = signal[lab_stack > 0]
        sigma_noise = config.noise * float(np.percentile(brain_values, 99)) if brain_values.size else 0.0
        noisy = np.sqrt((signal + rng.normal(0, sigma_noise, shape)) ** 2 + rng.normal(0, sigma_noise, shape) ** 2)
        sid = stack_id(ga, index, plane if plane != "random" else plane_names[s % 3], s // 3 + 1)
        paths = {name: out / "stacks" / f"{sid}_{name}.nii.gz" for name in ("T2w", "mask", "dseg")}
        save_nifti(Volume(np.clip(np.rint(noisy), 0, 32767).astype(np.int16), voxel_to_scanner), paths["T2w"])
        save_nifti(Volume((lab_stack > 0).astype(np.uint8), voxel_to_scanner), paths["mask"])
        save_nifti(Volume(lab_stack.astype(np.int16), voxel_to_scanner), paths["dseg"])
        obliquity = rotation_angle_deg(axes_head @ _nearest_cube_rotation(axes_head).T)
        truth.stacks[sid] = {
            "template_to_stack": template_to_stack.tolist(), "head_pose": head_to_scanner.tolist(),
            "voxel_to_ras": voxel_to_scanner.tolist(),
            "plane": plane, "obliquity_deg": obliquity, "shape": list(shape),
            "slice_thickness_mm": config.slice_thickness_mm, "slice_gap_mm": config.slice_gap_mm,
            "inplane_spacing_mm": config.inplane_spacing_mm, "psf_sigma_mm": list(config.psf_sigma_mm),
            "noise_sigma": sigma_noise, "brain_centre_template_ras_mm": sampler.centre_ras.tolist(),
            "slice_motion": [{"slice": int(k), "acquisition_index": int(acq[k]), "rotation_deg": rot[k].tolist(),
                              "translation_mm": trans[k].tolist()} for k in range(shape[2])],
        }
        records.append({"subject_id": sid, "scan_age": round(ga, 3), "T2w": f"stacks/{sid}_T2w.nii.gz",
                        "Seg": f"stacks/{sid}_dseg.nii.gz", "Mask": f"stacks/{sid}_mask.nii.gz",
                        "subject": subject, "slice_thickness_mm": config.slice_thickness_mm})
    return truth, records


def _best_rigid_pose(brain: np.ndarray, voxel_to_head, slice_to_head, voxel_to_scanner, deformation) -> np.ndarray:
    """The true ``template_to_stack``: least-squares rigid fit from where each brain voxel of the stack really
    came from in the template (through its slice's motion and the subject's deformation) to its scanner position.
    Without motion or deformation it equals the head pose exactly."""
    ijk = np.argwhere(brain).astype(np.float64)
    if len(ijk) > 20000:
        ijk = ijk[:: len(ijk) // 20000 + 1]
    k = ijk[:, 2].astype(int)
    head = apply_matrix(voxel_to_head, ijk)
    inv_motion = np.linalg.inv(slice_to_head)[k]                          # (N, 4, 4)
    template = np.einsum("nij,nj->ni", inv_motion[:, :3, :3], head) + inv_motion[:, :3, 3]
    template += displacement(deformation, template.astype(np.float32))
    return fit_rigid(template, apply_matrix(voxel_to_scanner, ijk))


def _nearest_cube_rotation(r: np.ndarray) -> np.ndarray:
    """The signed permutation matrix closest to rotation ``r``."""
    out = np.zeros((3, 3))
    used_rows: set[int] = set()
    for col in np.argsort(-np.abs(r).max(0)):
        row = max((i for i in range(3) if i not in used_rows), key=lambda i: abs(r[i, col]))
        out[row, col] = np.sign(r[row, col])
        used_rows.add(row)
    return out


def subject_ages(config: SimulationConfig) -> np.ndarray:
    """Stratified continuous GAs (weeks): one per equal-width bin of the range, jittered within it."""
    rng = np.random.default_rng([config.seed, 10 ** 6])
    lo, hi = config.ga_range
    edges = np.linspace(lo, hi, config.n_subjects + 1)
    return edges[:-1] + rng.uniform(0, 1, config.n_subjects) * np.diff(edges)


MANIFEST_COLUMNS = ["subject_id", "scan_age", "T2w", "Seg", "Mask", "subject", "slice_thickness_mm"]


def simulate_cohort(config: SimulationConfig, out: Path, atlas_dir=None, progress: ProgressReporter | None = None,
                    library: TemplateLibrary | None = None) -> Path:
    """Simulate a cohort into ``out`` and return the path of its ``cohort.tsv``.

    The template source is ``library`` if given, else ``atlas_dir`` (a template folder), else the built-in
    phantom.  Finished subjects (``out/stacks/<subject>.truth.json``) are skipped, so a killed run resumes; a
    folder simulated with different settings is refused.
    """
    from infanite.reference.phantom import phantom_library

    out = Path(out)
    if library is None:
        library = TemplateLibrary.from_folder(atlas_dir) if atlas_dir else phantom_library(config.phantom_spacing_mm)
    with folder_lock(out, "simulate"):
        settings = {"config": asdict(config), "source": library.source}
        settings_path = out / SIMULATION
        if settings_path.exists():
            previous = json.loads(settings_path.read_text())
            if previous != json.loads(json.dumps(settings)):
                raise ValueError(f"{out} holds a simulation with other settings ({settings_path}); "
                                 f"use an empty folder")
        (out / "stacks").mkdir(parents=True, exist_ok=True)
        atomic_write_text(settings_path, json.dumps(settings, indent=1))
        progress = progress or ProgressReporter(None)
        ages = subject_ages(config)
        progress.start("simulate", config.n_subjects, f"{config.n_subjects} subjects from {library.source}")
        all_truth, all_records = {}, []
        for i, ga in enumerate(ages, start=1):
            part = out / "stacks" / f"{i:04d}.truth.json"
            if part.exists():
                saved = json.loads(part.read_text())
            else:
                truth, records = _simulate_subject(i, float(ga), library, config, out)
                saved = {"truth": asdict(truth), "records": records}
                atomic_write_text(part, json.dumps(saved))
            all_truth[saved["truth"]["subject"]] = saved["truth"]
            all_records.extend(saved["records"])
            progress.update(i, f"subject {i:04d} GA {ga:.1f}")
        stacks = {sid: {**st, "subject": subj["subject"], "ga_weeks": subj["ga_weeks"]}
                  for subj in all_truth.values() for sid, st in subj["stacks"].items()}
        subjects = {k: {key: v for key, v in subj.items() if key != "stacks"} for k, subj in all_truth.items()}
        truth_doc = {"coordinates": "RAS", "direction": "template_to_stack", "units": "mm",
                     "template_source": library.source, "config": asdict(config),
                     "stacks": stacks, "subjects": subjects}
        atomic_write_text(out / TRUTH, json.dumps(truth_doc, indent=1))
        lines = ["\t".join(MANIFEST_COLUMNS)]
        lines += ["\t".join(str(r[c]) for c in MANIFEST_COLUMNS) for r in all_records]
        return atomic_write_text(out / COHORT, "\n".join(lines) + "\n")


def tiny_phantom_cohort(out, weeks=(27, 28, 29), n_subjects: int = 2, stacks_per_subject: int = 2,
                        seed: int = 1, register: bool = False) -> dict:
    """A small simulated cohort with phantom templates, for self-tests and examples (seconds on a CPU).

    ``n_subjects`` fetuses × ``stacks_per_subject`` stacks (2 mm in-plane) over the GA range of ``weeks``, simulated
    from the 1.6 mm phantom, and phantom templates of ``weeks`` (1.6 mm) in ``out/tpl``.  With ``register`` the
    stacks are also resampled into template space with their true poses (``out/reg``, no search).  Returns
    ``{"manifest", "templates", "truth"}`` (+ ``"registered"``: the registered.tsv).
    """
    from infanite.reference.phantom import phantom_library, write_phantom_templates

    out = Path(out)
    weeks = tuple(weeks)
    simulate_cohort(SimulationConfig(n_subjects=n_subjects, stacks_per_subject=stacks_per_subject,
                                     ga_range=(float(min(weeks)), float(max(weeks))), inplane_spacing_mm=2.0,
                                     seed=seed),
                    out / "sim", library=phantom_library(1.6))
    result = {"manifest": out / "sim" / COHORT, "templates": write_phantom_templates(out / "tpl", weeks, 1.6),
              "truth": out / "sim" / TRUTH}
    if register:
        from infanite.registration.register import register_cohort

        register_cohort(result["manifest"], result["templates"], out / "reg", fixed_transforms=result["truth"])
        result["registered"] = out / "reg" / REGISTERED
    return result
