"""``infanite evaluate``: quality of generated atlases against a reference atlas, or against the cohort's stacks.

Atlas mode (:func:`evaluate_atlas`): ``ATLAS`` holds ``atlas_ga-<GA>_T2w.nii.gz`` and ``atlas_ga-<GA>_dseg.nii.gz`` (GA
in weeks with one decimal, optional ``atlas_ga-<GA>_mask.nii.gz``); the reference is a folder of the same naming or a
template folder readable by :meth:`~infanite.reference.templates.TemplateLibrary.from_folder` (CRL
``HarvardSTA<week>_Study1/``, NiftyMIC, ``templates.tsv``).  Every GA present in both is compared: the atlas is
resampled onto the reference grid first when the grids differ (world coordinates, identity transform; linear for T2,
nearest for labels), then :mod:`infanite.evaluation.metrics` gives PSNR and SSIM in both region conventions, Dice, HD95
and ASD per label and their means, the tissue contrast (TCT) of atlas and reference, the volume L1 errors against
the reference and against a normative table, and where the PSNR's squared error lies: per tissue of the reference's
labels (and the dilation band outside them), its share, MSE and signed mean error (``intensity_error``).

Outputs in ``OUT`` (written atomically): ``metrics.json`` and ``metrics.md`` (:mod:`infanite.evaluation.report`).
Bad input raises :class:`~infanite.evaluation.inputs.EvaluationInputError` before any work.
"""
from __future__ import annotations

import math

from infanite.io.lock import folder_lock
from infanite.evaluation import metrics
from infanite.evaluation.inputs import ImageSet, plan_evaluation
from infanite.evaluation.report import (conventions_dict, conventions_text, intensity_error_table, markdown_table,
                                        mean_row, summary_row, write_outputs)
from infanite.io.images import Volume
from infanite.io.resample import resample
from infanite.labels import LabelTable
from infanite.reference.normative import NormativeTable


def _keyed(per_label: dict, table: LabelTable) -> dict:
    abbrev = {lab.value: lab.abbrev for lab in table.labels}
    return {abbrev.get(k, str(k)): v for k, v in per_label.items()}


def compare(test_t2: Volume, test_seg: Volume, reference: ImageSet, ga_weeks: float, normative: NormativeTable,
            table: LabelTable, test_native: tuple[Volume, Volume] | None = None,
            names: tuple[str, str] = ("atlas", "reference"), sides: tuple[str, str] = ("atlas", "reference"),
            dilation_mm: float = metrics.DEFAULT_DILATION_MM, reference_ga_weeks: float | None = None) -> dict:
    """Every metric of a test image and label map already on the reference grid (lengths mm, volumes mL).

    ``test_native`` (T2w, labels) on the test's own grid gives the test's TCT and normative volumes (default: the
    resampled ones).  Normative volumes are looked up at ``ga_weeks`` for the test and at ``reference_ga_weeks``
    (default the same) for the reference.  ``names`` name the two images in error messages, ``sides`` key the
    two-sided entries (TCT, normative volume errors).
    """
    native_t2, native_seg = test_native or (test_t2, test_seg)
    values = {lab.abbrev: lab.value for lab in table.labels}
    gm, wm = values.get("cGM"), values.get("WM")    # a table without them gets no TCT (NaN)

    def contrast(image, seg):
        return math.nan if gm is None or wm is None else metrics.tct(image, seg, gm, wm)

    regions = {"brain_mask": metrics.brain_mask_region(reference.mask, dilation_mm),
               "bounding_box": metrics.bounding_box_region(reference.mask)}
    labels = table.values
    surface = metrics.surface_distance_table(test_seg, reference.seg, labels, names=names)
    overlap = metrics.dice(test_seg, reference.seg, labels, names=names)
    vol_ref = metrics.volume_l1_vs_reference(test_seg, reference.seg, table=table, names=names)
    norm_test = metrics.volume_l1_vs_normative(native_seg, ga_weeks, normative, table=table)
    ref_ga = ga_weeks if reference_ga_weeks is None else reference_ga_weeks
    norm_ref = metrics.volume_l1_vs_normative(reference.seg, ref_ga, normative, table=table)
    by_label = metrics.intensity_error_by_label(test_t2, reference.t2w, regions["brain_mask"], reference.seg, labels,
                                                names)
    return {
        "psnr_db": {k: metrics.psnr(test_t2, reference.t2w, r, names) for k, r in regions.items()},
        "ssim": {k: metrics.ssim(test_t2, reference.t2w, r, names) for k, r in regions.items()},
        "dice": {"per_label": _keyed(overlap["per_label"], table), "mean": overlap["mean"]},
        "hd95_mm": {"per_label": _keyed(surface["hd95_mm"]["per_label"], table), "mean": surface["hd95_mm"]["mean"]},
        "asd_mm": {"per_label": _keyed(surface["asd_mm"]["per_label"], table), "mean": surface["asd_mm"]["mean"]},
        "surface_notes": _keyed(surface["notes"], table),
        "tct": {sides[0]: contrast(native_t2, native_seg), sides[1]: contrast(reference.t2w, reference.seg)},
        "volume_l1_reference": vol_ref,
        "volume_l1_normative": {sides[0]: norm_test, sides[1]: norm_ref},
        "intensity_error": {"mse": by_label["mse"], "per_label": _keyed(by_label["per_label"], table),
                            "outside": by_label["outside"]},
    }


def _compare_pair(plan, ga_atlas: float, ga_ref: float) -> tuple[dict, dict]:
    """One GA of the atlas against its reference GA: (its ``per_ga`` entry, its summary row)."""
    atlas = plan.atlas.load(ga_atlas)
    ref = plan.reference.load(ga_ref)
    resampled = not _same_grid(atlas.t2w, ref.t2w)
    test_t2 = resample(atlas.t2w, ref.t2w, None, "linear") if resampled else atlas.t2w
    test_seg = resample(atlas.seg, ref.t2w, None, "nearest") if resampled else atlas.seg
    result = compare(test_t2, test_seg, ref, ga_atlas, plan.normative, plan.table, (atlas.t2w, atlas.seg),
                     names=(atlas.source, ref.source))
    entry = {"ga_weeks": ga_atlas, "reference_ga_weeks": ga_ref, "atlas": atlas.source, "reference": ref.source,
             "resampled_to_reference_grid": resampled, **result}
    return entry, summary_row(result)


def _compared_in_processes(plan, jobs: int):
    """Yield ``(index, (entry, row))`` as ``jobs`` processes finish the plan's pairs."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(plan.pairs)), mp_context=context) as pool:
        futures = {pool.submit(_compare_pair, plan, a, r): i for i, (a, r) in enumerate(plan.pairs)}
        for future in as_completed(futures):
            yield futures[future], future.result()


def evaluate_atlas(atlas_dir, reference, out, ga_weeks=None, normative=None, table: LabelTable | None = None,
                   progress=None, jobs: int = 1) -> dict:
    """Compare every GA of a generated atlas with a reference atlas; writes ``out/metrics.{json,md}``.

    ``ga_weeks`` restricts the GAs (each must be in both folders); ``normative`` is a CSV path or a
    :class:`~infanite.reference.normative.NormativeTable` (default: the built-in Ren et al. 2022 table); ``table`` the
    label table (default CRL 8-class); ``jobs`` > 1 compares the GAs in that many processes (the same results, in
    GA order).  Returns the document written to ``metrics.json`` (before JSON conversion).
    """
    if int(jobs) != jobs or jobs < 1:
        raise ValueError(f"--jobs must be a whole number >= 1, got {jobs!r}")
    plan = plan_evaluation(atlas_dir, out, reference=reference, ga_weeks=ga_weeks, normative=normative,
                           table=table)
    with folder_lock(out, "evaluate"):
        if progress is not None:
            progress.start("evaluate", len(plan.pairs), f"{len(plan.pairs)} GA to compare")
        done = [None] * len(plan.pairs)
        if int(jobs) > 1 and len(plan.pairs) > 1:
            results = _compared_in_processes(plan, int(jobs))
        else:
            results = ((i, _compare_pair(plan, a, r)) for i, (a, r) in enumerate(plan.pairs))
        for step, (i, result) in enumerate(results, 1):
            done[i] = result
            if progress is not None:
                progress.update(step, f"GA {plan.pairs[i][0]:.1f}")
        per_ga, rows = [d[0] for d in done], [d[1] for d in done]
        mean = mean_row(rows)
        document = {"mode": "atlas", "atlas_dir": plan.atlas.folder, "reference": plan.reference.source,
                    "normative": plan.normative.source, "label_table": plan.table.source,
                    "conventions": conventions_dict(), "per_ga": per_ga, "summary": rows, "mean": mean}
        conventions = conventions_text(plan.table, plan.normative, metrics.DEFAULT_DILATION_MM, "atlas", "reference")
        markdown = markdown_table(f"Atlas evaluation: {plan.atlas.folder} vs {plan.reference.source}", conventions,
                             ["GA (weeks)"], [[f"{ga:.1f}"] for ga, _ in plan.pairs], rows, mean, "atlas", "reference")
        markdown += "\n" + intensity_error_table(["GA (weeks)"], [[f"{ga:.1f}"] for ga, _ in plan.pairs], per_ga,
                                                 "reference")
        return write_outputs(plan.out, document, markdown)


def _same_grid(a: Volume, b: Volume) -> bool:
    try:
        metrics.check_same_grid(a, b)
        return True
    except ValueError:
        return False
