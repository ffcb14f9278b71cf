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

import json
import logging
import math
from pathlib import Path

import numpy as np

from infanite.atlas.folder import entry_complete, read_atlas_manifest, remove_atlas
from infanite.atlas.kernel import check_sigma_top_k, gkr_weights
from infanite.atlas.labels import label_abbrevs
from infanite.atlas.outputs import plot_growth, support_flag, write_ga, write_montage, write_volumes
from infanite.atlas.predict import (POSITION_SIGMA_WEEKS, atlas_grid, atlas_position, atlas_query, chunk_size,
                                    load_run, model_width, predict_grid, resolve_device, GASupport)
from infanite.inr.ceiling import ceiling_at, ceiling_identity, read_intensity_ceiling
from infanite.io.layout import ATLAS_MANIFEST, ATLAS_MANIFEST_FORMAT, GROWTH, MONTAGE, VOLUMES, ga_text
from infanite.io.lock import folder_lock
from infanite.progress import ProgressReporter
from infanite.reference.normative import MEASURE_LABELS, open_normative

logger = logging.getLogger(__name__)

#: Accepted gestational ages (weeks) for atlas generation.
GA_LIMITS = (10.0, 50.0)


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


#: the largest atlas grid generated (voxels): about 0.25 mm over a 160 mm field of view
MAX_ATLAS_VOXELS = 2 ** 28


def check_grid_size(grid, n_classes: int, probabilities: bool, spacing_mm) -> None:
    """``ValueError`` when the atlas grid is too large to hold (:data:`MAX_ATLAS_VOXELS`, or the memory this
    machine has), naming the finest spacing that fits."""
    from infanite.devices import available_memory_bytes

    voxels = int(np.prod(grid.shape, dtype=np.float64))
    per_voxel = 4 + 4 + 2 + 1 + (4 * n_classes if probabilities else 0)       # intensity, logits' argmax, labels
    need = voxels * per_voxel
    available = available_memory_bytes()
    limit = min(MAX_ATLAS_VOXELS, available // per_voxel // 2) if available else MAX_ATLAS_VOXELS
    if voxels > limit:
        spacing = float(np.min(np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))))
        finest = spacing * (voxels / limit) ** (1 / 3)
        raise ValueError(f"--spacing {spacing_mm} mm gives a {'×'.join(map(str, grid.shape))} atlas grid "
                         f"({voxels:.3g} voxels, about {need / 2 ** 30:.3g} GiB); the finest spacing this machine "
                         f"can generate is about {math.ceil(finest * 100) / 100:g} mm")


def _check_weeks(value, option: str, zero: str) -> float:
    """``option``'s value (weeks) as a float; ``ValueError`` naming ``option`` unless it is a finite number >= 0
    (``zero``: what 0 means)."""
    try:
        weeks = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{option} must be a number of weeks >= 0, got {value!r}") from exc
    if not math.isfinite(weeks) or weeks < 0:
        raise ValueError(f"{option} must be a number of weeks >= 0 (0: {zero}), got {value!r}")
    return weeks


def check_position_sigma(value) -> float:
    """``--position-sigma`` (weeks) as a float; ``ValueError`` unless it is a finite number >= 0."""
    return _check_weeks(value, "--position-sigma", "no move")


def check_appearance_adaptive(value, config=None, where: str = "this run") -> bool:
    """Whether the appearance offsets' kernel adapts (``False``: ``--appearance-fixed``) as a bool; ``ValueError``
    unless it is a bool and (given the run's training ``config``) the run learnt appearance offsets."""
    if not isinstance(value, bool):
        raise ValueError(f"appearance_adaptive must be true or false, got {value!r}")
    if config is not None and not (config.model == "template" and config.template.appearance):
        raise ValueError(f"--appearance-fixed keeps the GA kernel of the fetuses' appearance offsets at one width, "
                         f"and {where} has none (model {config.model!r}, template.appearance "
                         f"{str(bool(config.template.appearance)).lower()}): leave it out")
    return value


def check_appearance_sigma(value, config=None, where: str = "this run") -> float:
    """``--appearance-sigma`` (weeks) as a float; ``ValueError`` unless it is a finite number >= 0 and (given the
    run's training ``config``) the run learnt per-fetus appearance offsets (``model: template`` with
    ``template.appearance``), the only runs it changes."""
    weeks = _check_weeks(value, "--appearance-sigma", "the template alone")
    if config is not None and not (config.model == "template" and config.template.appearance):
        raise ValueError(f"--appearance-sigma sets the GA kernel of the fetuses' appearance offsets, and {where} "
                         f"has none (model {config.model!r}, template.appearance "
                         f"{str(bool(config.template.appearance)).lower()}): leave it out")
    return weeks


def generate(run_dir, ga_weeks, out_dir, *, spacing_mm=0.8, device="cpu", sigma_weeks: float = 0.5,
             top_k: int | None = None, probabilities: bool = False, overwrite: bool = False,
             progress: ProgressReporter | None = None, normative=None, templates=None,
             label_method: str = "demons", accept_estimated_ga: bool = False, jobs: int = 1,
             position_sigma_weeks: float = POSITION_SIGMA_WEEKS, intensity_ceiling: bool = True,
             appearance_sigma_weeks: float | None = None, appearance_adaptive: bool | None = None) -> dict:
    """Generate the atlas of a finished run at the GAs ``ga_weeks`` (weeks, rounded to 0.1) into ``out_dir``.

    ``spacing_mm``: atlas voxel size (mm; 1 or 3 values); ``sigma_weeks``: GKR kernel width (weeks); ``top_k``:
    keep only the k most weighted stacks; ``probabilities``: also write 4-D ``probseg`` maps; ``normative``: CSV
    path or :class:`NormativeTable` for ``growth.png`` (default Ren et al. 2022).  Every input is checked before
    any work; ``ValueError`` for a missing/unfinished run, bad arguments or an ``out_dir`` that already holds a
    different atlas (another checkpoint, spacing, σ or top_k) unless ``overwrite``.  GAs already complete in
    ``out_dir``'s manifest are skipped; the summary files cover every complete GA of the folder.

    Returns a summary dict: ``out_dir``, ``manifest``, ``ga`` (per-GA entries: files, ESS, warnings, volumes),
    ``generated`` and ``skipped`` GA keys, ``warnings``, and the summary file paths.

    A run none of whose stacks had a ``Seg`` (``stacks.json`` ``labelled_stacks`` empty: a mask-only cohort) learnt
    where the brain is but not its tissues: each GA's labels are then the template labels of ``templates`` (a
    template folder) propagated by deformable registration (:mod:`infanite.atlas.propagate`, ``label_method``), and
    each GA's manifest entry says so (``labels``).  ``templates`` defaults to the folder the stacks were registered
    to (``stacks.json`` ``templates``); a run that records none and no ``templates`` is refused before any work.

    Stacks whose GA ``register`` estimated (no ``scan_age``: the template week that matched best) take no part in
    the GA regression, which would otherwise be conditioned on its own guess, unless ``accept_estimated_ga``; the
    manifest lists them (``ga_estimated_stacks``, ``ga_estimated_used``).

    A template run's atlas (``model: template``) is ``T(x + p(t), t)``: the template moved to where the fetuses
    scanned around *t* sit, ``p(t)`` their mean displacement over the GA-local support, averaged with Gaussian
    weights of σ ``position_sigma_weeks`` over their GAs (0: the template where training left it, at the mean
    position of the fetuses within about ``template.position_kernel_weeks``).  The template's shape changes
    smoothly with GA; the fetuses' positions need not (stacks registered to templates of different weeks inherit
    those templates' positions).  Each GA's manifest entry records ``position_shift_mm``.  A template run with
    per-fetus appearance offsets (``template.appearance``) adds their Gaussian-kernel mean over the fetuses' GAs,
    σ ``appearance_sigma_weeks`` (default: the run's ``template.appearance_kernel_weeks``; 0: the template alone),
    recorded in the manifest's identity; refused for runs without offsets.  ``appearance_adaptive`` (default: the
    run's ``template.appearance_adaptive``) widens that kernel where the fetuses are sparse
    (:meth:`~infanite.inr.template.TemplateINR.appearance_width`; ``False``: ``--appearance-fixed``), also recorded
    in the identity, and each GA's entry records the width used (``appearance_sigma_used_weeks``).

    ``jobs`` > 1 makes the GAs in that many processes (each loads the model once; on CUDA process *i* uses GPU
    *i* mod the GPUs there, on CPU the cores are shared out); this process writes the manifest as each GA is done,
    so an interrupted run still resumes per GA.  The files are the same as with one process.

    ``intensity_ceiling``: cap each GA's T2w at the brightest intensity the scanner measured around that GA (the
    run's ``intensity_ceiling.json``, :mod:`infanite.inr.ceiling`; runs trained before it have none and are not
    capped); each GA's manifest entry records ``intensity_ceiling`` and how many voxels it capped.
    """
    from infanite.io.atomic import atomic_write_text

    gas = _parse_gas(ga_weeks)
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"atlas spacing must be > 0 mm, got {spacing_mm!r}")
    check_sigma_top_k(sigma_weeks, top_k)
    position_sigma_weeks = check_position_sigma(position_sigma_weeks)
    if appearance_sigma_weeks is not None:
        check_appearance_sigma(appearance_sigma_weeks)
    if int(jobs) != jobs or jobs < 1:
        raise ValueError(f"--jobs must be a whole number >= 1, got {jobs!r}")
    jobs = int(jobs)
    dev = resolve_device(device)
    run = load_run(run_dir)
    appearance = run.config.model == "template" and run.config.template.appearance
    if appearance_sigma_weeks is None:
        appearance_sigma_weeks = run.config.template.appearance_kernel_weeks if appearance else None
    else:
        appearance_sigma_weeks = check_appearance_sigma(appearance_sigma_weeks, run.config, str(run.run_dir))
    if appearance_adaptive is None:
        appearance_adaptive = bool(run.config.template.appearance_adaptive) if appearance else None
    else:
        appearance_adaptive = check_appearance_adaptive(appearance_adaptive, run.config, str(run.run_dir))
    ceiling = read_intensity_ceiling(run.run_dir) if intensity_ceiling else None
    table = open_normative(normative)
    stacks = run.stacks
    estimated = list(stacks.get("ga_estimated") or [])
    regression_ga = [None if sid in estimated and not accept_estimated_ga else g
                     for sid, g in zip(stacks["stack_ids"], stacks["ga_weeks"])]
    if all(g is None for g in regression_ga):
        raise ValueError(f"every stack of {run.run_dir} has an estimated GA (no scan_age was given): give the GAs "
                         f"in the manifest, or pass --accept-estimated-ga to regress on register's estimates")
    kernels = {ga_text(g): gkr_weights(regression_ga, g, sigma_weeks, top_k, stacks.get("stack_fetus"))
               for g in gas}
    grid = atlas_grid(stacks["grid_shape"], stacks["grid_voxel_to_ras"], spacing)
    check_grid_size(grid, len(stacks["label_values"]) + 2, probabilities, spacing_mm)
    support = GASupport(run.run_dir, grid, stacks.get("stack_fetus"))
    library = _label_templates(run, templates, label_method, probabilities)
    out_dir = Path(out_dir)
    with folder_lock(out_dir, "atlas"):
        identity = json.loads(json.dumps({"checkpoint_sha256": run.checkpoint_sha256,
                                          "spacing_mm": [round(float(s), 6) for s in spacing],
                                          "sigma_weeks": float(sigma_weeks),
                                          "top_k": None if top_k is None else int(top_k),
                                          "ga_estimated_used": bool(accept_estimated_ga and estimated),
                                          "labels": "stacks" if library is None else
                                          {"propagated_from": library.source, "method": label_method},
                                          **({"position_sigma_weeks": position_sigma_weeks}
                                             if run.config.model == "template" else {}),
                                          **({"appearance_sigma_weeks": appearance_sigma_weeks,
                                              "appearance_adaptive": appearance_adaptive}
                                             if appearance else {}),
                                          **({"intensity_ceiling": ceiling_identity(ceiling)}
                                             if ceiling is not None else {})}))
        try:
            previous = read_atlas_manifest(out_dir, "; use another output folder or --overwrite")
        except ValueError:
            if not overwrite:
                raise
            remove_atlas(out_dir, None)          # an unreadable manifest: nothing of it can be trusted
            previous = None
        if previous is not None and previous.get("identity") != identity:
            if not overwrite:
                old = previous.get("identity") or {}
                raise ValueError(
                    f"{out_dir} already holds a different atlas (from {previous.get('run_dir')}, checkpoint "
                    f"{str(old.get('checkpoint_sha256'))[:12]}, spacing {old.get('spacing_mm')} mm, sigma "
                    f"{old.get('sigma_weeks')} weeks, top_k {old.get('top_k')}, position sigma "
                    f"{old.get('position_sigma_weeks')} weeks, appearance sigma "
                    f"{old.get('appearance_sigma_weeks')} weeks"
                    f"{' (fixed)' if old.get('appearance_adaptive') is False else ''}, intensity ceiling "
                    f"{'on' if old.get('intensity_ceiling') else 'off'}); use another --out or --overwrite")
            remove_atlas(out_dir, previous)
            previous = None

        label_values = [int(v) for v in stacks["label_values"]]
        abbrevs = label_abbrevs(label_values)
        done_entries = {k: e for k, e in ((previous or {}).get("ga") or {}).items()
                        if entry_complete(out_dir, e, False)}
        todo = [g for g in gas if not entry_complete(out_dir, done_entries.get(ga_text(g)), probabilities)]
        keys_all = sorted(set(done_entries) | {ga_text(g) for g in gas}, key=float)
        summary_names = {"volumes": VOLUMES, "growth": GROWTH, "montage": MONTAGE}
        if (not todo and previous is not None and previous.get("status") == "complete"
                and set(keys_all) == set(previous.get("ga") or {})
                and previous.get("normative") == table.source
                and all((out_dir / n).is_file() for n in summary_names.values())):
            return _summary(out_dir, previous, generated=[], skipped=[ga_text(g) for g in gas])

        manifest = {"format": ATLAS_MANIFEST_FORMAT, "status": "in_progress", "identity": identity,
                    "run_dir": str(Path(run_dir).resolve()),
                    "checkpoint": {"global_step": int(run.state["global_step"]),
                                   "total_steps": int(run.state["total_steps"]), "sha256": run.checkpoint_sha256},
                    "spacing_mm": identity["spacing_mm"], "sigma_weeks": float(sigma_weeks),
                    "top_k": identity["top_k"],
                    "grid": {"shape": list(grid.shape), "voxel_to_ras": grid.voxel_to_ras.tolist()},
                    "label_values": label_values, "probseg_labels": label_values,
                    "stack_ga_range_weeks": list(next(iter(kernels.values())).support_weeks),
                    "normative": table.source, "ga_estimated_stacks": estimated,
                    "ga_estimated_used": bool(accept_estimated_ga and estimated), "ga": dict(done_entries)}
        out_dir.mkdir(parents=True, exist_ok=True)
        generated = []
        if todo:
            parallel = jobs > 1 and len(todo) > 1
            maker = None if parallel else GAMaker(run, grid, dev, probabilities, library, label_method, out_dir,
                                                  support, position_sigma_weeks, ceiling, appearance_sigma_weeks,
                                                  appearance_adaptive)
            n_chunks = 1 if parallel else maker.n_chunks         # in processes: progress per GA
            progress = progress or ProgressReporter(None)
            progress.start("atlas", len(todo) * n_chunks,
                           f"{len(todo)} GA(s) on a {'x'.join(map(str, grid.shape))} grid"
                           + (f", {min(jobs, len(todo))} processes" if parallel else ""))

            def record(key, entry):
                kw = kernels[key]
                for note in [*kw.warnings, *entry["warnings"]]:
                    logger.warning(note)
                entry.update({"ess": round(kw.ess, 4), "ess_stacks": round(kw.ess_stacks, 4),
                              "warnings": list(kw.warnings) + entry["warnings"],
                              "weights": {sid: round(float(w), 6) for sid, w in zip(stacks["stack_ids"], kw.weights)
                                          if w > 1e-6}})
                manifest["ga"][key] = entry
                atomic_write_text(out_dir / ATLAS_MANIFEST, json.dumps(manifest, indent=1))
                generated.append(key)

            if parallel:                                 # each process loads its own model
                for done, (key, entry) in enumerate(_make_in_processes(
                        run.run_dir, grid, dev, probabilities, templates, label_method, out_dir,
                        [(ga_text(g), kernels[ga_text(g)].weights) for g in todo], jobs, position_sigma_weeks,
                        ceiling, appearance_sigma_weeks, appearance_adaptive),
                        start=1):
                    record(key, entry)
                    progress.update(done * n_chunks, f"GA {key} written ({done}/{len(todo)})", ga_weeks=float(key))
            else:
                for i, g in enumerate(todo):
                    key = ga_text(g)

                    def on_chunk(done, total, base=i * n_chunks, key=key):
                        progress.update(base + done, f"GA {key}: chunk {done}/{total}", ga_weeks=float(key))

                    record(key, maker.make(float(key), kernels[key].weights, on_chunk))
        for key in keys_all:           # skipped GAs: refresh their support notes (same run, same σ → same values)
            if key in kernels and key not in generated:
                kw = kernels[key]
                degenerate = [w for w in manifest["ga"][key].get("warnings", []) if w not in kw.warnings
                              and "weeks: the" in w]
                manifest["ga"][key].update({"ess": round(kw.ess, 4), "ess_stacks": round(kw.ess_stacks, 4),
                                            "warnings": list(kw.warnings) + degenerate})
        manifest["ga"] = {k: manifest["ga"][k] for k in keys_all}

        columns = list(abbrevs.values())
        rows = []
        for key in keys_all:
            vols = manifest["ga"][key]["volumes_ml"]
            rows.append({"ga_weeks": float(key), **vols})
        columns += [m for m in MEASURE_LABELS if rows and m in rows[0]]
        write_volumes(out_dir, rows, columns)
        plot_growth([{**row, "weak": bool(support_flag(manifest["ga"][key]))} for row, key in zip(rows, keys_all)],
                    table, out_dir / GROWTH)
        write_montage(out_dir, manifest, keys_all)
        manifest.update({"status": "complete", **summary_names})
        atomic_write_text(out_dir / ATLAS_MANIFEST, json.dumps(manifest, indent=1))
        return _summary(out_dir, manifest, generated=generated,
                        skipped=[ga_text(g) for g in gas if ga_text(g) not in generated])


class GAMaker:
    """What making one GA needs, loaded once per process: the model on its device, the atlas grid, its chunking,
    the GA-local support, (mask-only runs) the template labels, (template runs) the width of the GA kernel of
    the fetuses' positions (:func:`~infanite.atlas.predict.atlas_position`), the run's intensity ceiling
    table (None: no cap) and (runs with appearance offsets) the width of their GA kernel and whether it adapts
    (None: the run's)."""

    def __init__(self, run, grid, device: str, probabilities: bool, library, label_method: str, out_dir: Path,
                 support: GASupport | None = None, position_sigma_weeks: float = POSITION_SIGMA_WEEKS,
                 ceiling: dict | None = None, appearance_sigma_weeks: float | None = None,
                 appearance_adaptive: bool | None = None):
        stacks = run.stacks
        self.grid, self.device, self.probabilities = grid, device, probabilities
        self.library, self.label_method, self.out_dir = library, label_method, Path(out_dir)
        self.model = run.model(device)
        if appearance_sigma_weeks is not None:
            self.model.appearance_kernel_weeks = float(appearance_sigma_weeks)
        if appearance_adaptive is not None:
            self.model.appearance_adaptive = bool(appearance_adaptive)
        self.chunk = chunk_size(device, model_width(self.model))
        self.n_chunks = max(1, math.ceil(int(np.prod(grid.shape)) / self.chunk))
        self.support = support or GASupport(run.run_dir, grid, stacks.get("stack_fetus"))
        self.position_sigma_weeks = float(position_sigma_weeks)
        self.ceiling = ceiling
        self.label_values = [int(v) for v in stacks["label_values"]]
        self.halo = int(stacks["halo_label"])
        self.abbrevs = label_abbrevs(self.label_values)
        self.voxel_ml = abs(float(np.linalg.det(grid.voxel_to_ras[:3, :3]))) / 1000.0

    def make(self, ga: float, weights, on_chunk=None) -> dict:
        """Predict and write one GA (``weights``: its GKR weight per stack); returns its manifest entry."""
        support = self.support.at(weights)
        shift = atlas_position(self.model, ga, support, self.grid, self.position_sigma_weeks)
        pred = predict_grid(atlas_query(self.model, ga, weights, shift), self.grid, self.device, self.label_values,
                            self.probabilities, self.chunk, on_chunk)
        cap = None if self.ceiling is None else ceiling_at(self.ceiling, ga)
        relabel = None if self.library is None else _propagation(self.library, ga, self.grid, self.label_method)
        entry = write_ga(self.out_dir, self.grid, ga, pred, self.label_values, self.halo, self.abbrevs,
                         self.voxel_ml, support, relabel, cap)
        entry["support"] = "ga_local" if self.support.ga_local else "union"
        if shift is not None:
            entry["position_shift_mm"] = [round(float(v), 4) for v in shift]
        if getattr(self.model, "appearance", None) is not None:   # the width the offsets' kernel took at this GA
            entry["appearance_sigma_used_weeks"] = round(self.model.appearance_width(ga), 4)
        return entry


_WORKER: dict = {}


def _init_worker(run_dir, grid_shape, grid_affine, devices, probabilities, templates, label_method, out_dir,
                 threads, position_sigma_weeks, ceiling, appearance_sigma_weeks, appearance_adaptive=None):
    """A ``--jobs`` process: take a device from ``devices`` (a queue) and load the model there once."""
    import torch

    from infanite.io.images import Grid

    if threads:
        torch.set_num_threads(int(threads))
    run = load_run(run_dir)
    library = _label_templates(run, templates, label_method, probabilities)
    grid = Grid(tuple(grid_shape), np.asarray(grid_affine))
    _WORKER["maker"] = GAMaker(run, grid, devices.get(), probabilities, library, label_method, Path(out_dir),
                               position_sigma_weeks=position_sigma_weeks, ceiling=ceiling,
                               appearance_sigma_weeks=appearance_sigma_weeks, appearance_adaptive=appearance_adaptive)


def _make_one(key: str, weights) -> tuple[str, dict]:
    return key, _WORKER["maker"].make(float(key), weights)


def _make_in_processes(run_dir, grid, device: str, probabilities, templates, label_method, out_dir, tasks, jobs,
                       position_sigma_weeks: float = POSITION_SIGMA_WEEKS, ceiling: dict | None = None,
                       appearance_sigma_weeks: float | None = None, appearance_adaptive: bool | None = None):
    """Yield ``(GA key, entry)`` as ``jobs`` processes finish the ``tasks`` ((key, weights) pairs)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    jobs = min(int(jobs), len(tasks))
    context = multiprocessing.get_context("spawn")      # never fork a process that holds torch threads / CUDA
    devices = context.Queue()
    if torch.device(device).type == "cuda":
        count = torch.cuda.device_count()
        for i in range(jobs):
            devices.put(f"cuda:{i % count}")
        threads = None
    else:
        for _ in range(jobs):
            devices.put(device)
        threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(str(run_dir), list(grid.shape), grid.voxel_to_ras.tolist(), devices,
                                       probabilities, templates, label_method, str(out_dir), threads,
                                       position_sigma_weeks, ceiling, appearance_sigma_weeks,
                                       appearance_adaptive)) as pool:
        futures = [pool.submit(_make_one, key, np.asarray(weights)) for key, weights in tasks]
        for future in as_completed(futures):
            yield future.result()


def _label_templates(run, templates, label_method: str, probabilities: bool):
    """The template library whose labels a mask-only run's atlas takes (None when the run learnt labels)."""
    from infanite.atlas.propagate import METHODS

    labelled = run.stacks.get("labelled_stacks")
    if labelled is None or len(labelled) > 0:
        return None
    if templates is None and run.stacks.get("templates"):
        templates = run.stacks["templates"]           # the folder the stacks were registered to
    if label_method not in METHODS:
        raise ValueError(f"--label-method must be one of {', '.join(METHODS)}, got {label_method!r}")
    if templates is None:
        raise ValueError(f"no stack of {run.run_dir} had a Seg (a mask-only cohort), so the atlas's tissue labels "
                         f"come from templates registered to it, and the run does not record its templates: give "
                         f"--templates DIR (the folder 'infanite register' used)")
    if probabilities:
        raise ValueError("--probabilities needs a run trained on stacks with a Seg; this run learnt no tissue "
                         "classes (its labels are propagated from the templates)")
    from infanite.registration.register import open_library

    library = open_library(templates)
    if library.nearest(float(np.median(run.stacks["ga_weeks"]))).seg is None:
        raise ValueError(f"the templates in {templates} have no label maps to propagate")
    return library


def _propagation(library, ga: float, grid, method: str):
    """``relabel(intensity, brain) -> (labels, note)`` for one GA: the nearest week's template labels."""
    from infanite.atlas.propagate import propagate_template_labels

    def relabel(intensity, brain):
        done = propagate_template_labels(intensity, brain, grid.voxel_to_ras, library.nearest(ga), method=method)
        return done.labels, done.note

    return relabel


def _summary(out_dir: Path, manifest: dict, generated: list[str], skipped: list[str]) -> dict:
    warnings = [w for entry in manifest["ga"].values() for w in entry.get("warnings", [])]
    return {"out_dir": out_dir, "manifest": out_dir / ATLAS_MANIFEST, "ga": manifest["ga"], "generated": generated,
            "skipped": skipped, "warnings": warnings, "volumes": out_dir / VOLUMES, "growth": out_dir / GROWTH,
            "montage": out_dir / MONTAGE}


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
