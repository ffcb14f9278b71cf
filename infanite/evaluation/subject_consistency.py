"""Subject consistency: the atlas against every registered stack of the cohort (``infanite evaluate --registered``).

For every stack of a ``registered.tsv`` (written by ``infanite register``: stacks already resampled into template
space), the atlas of the generated GA nearest to the stack's GA is registered rigidly to the stack (short
SimpleITK refinement from identity), resampled onto the stack's grid and compared with the stack and its label map
with the metrics of :func:`~infanite.evaluation.against_reference.compare`; the mean over stacks is reported too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from infanite.io.lock import folder_lock
from infanite.evaluation import metrics
from infanite.evaluation.against_reference import compare
from infanite.evaluation.inputs import ImageSet, plan_evaluation
from infanite.evaluation.report import (conventions_dict, conventions_text, intensity_error_table, markdown_table,
                                        mean_row, summary_row, write_outputs)
from infanite.io.images import Volume, load_labels, load_nifti
from infanite.io.resample import resample
from infanite.labels import LabelTable
from infanite.reference.templates import Template


def register_atlas_to_stack(atlas: ImageSet, ga_weeks: float, stack_t2: Volume, stack_mask: Volume) -> np.ndarray:
    """Rigid ``atlas_to_stack`` (RAS mm → RAS mm) of an atlas already roughly aligned with a stack.

    A short SimpleITK refinement from identity (:func:`~infanite.registration.stack.refine_sitk`: correlation
    metric over the stack's brain mask, multi-resolution 4/2/1).
    """
    from infanite.registration.stack import refine_sitk

    template = Template(ga_weeks, atlas.t2w, atlas.mask, atlas.seg, atlas.source)
    return refine_sitk(stack_t2, stack_mask, template, np.eye(4))


def evaluate_subject_consistency(atlas_dir, registered_manifest, out, ga_weeks=None, normative=None,
                                 table: LabelTable | None = None, progress=None,
                                 register: Callable | None = register_atlas_to_stack) -> dict:
    """Compare the atlas with every registered stack (``registered.tsv``); writes ``out/metrics.{json,md}``.

    Per stack: the atlas at the generated GA nearest to the stack's GA (ties: the lower GA) is registered rigidly
    to the stack (``register``; None skips it: identity) and resampled onto the stack's grid (linear T2, nearest
    labels), then compared with the stack, its label map and its brain mask (``Mask``, else ``Seg > 0``).  The
    atlas's normative volume errors are at its own GA, the stack's at its scan age.  Returns the document
    written to ``metrics.json``.
    """
    plan = plan_evaluation(atlas_dir, out, registered=registered_manifest, ga_weeks=ga_weeks,
                           normative=normative, table=table)
    with folder_lock(out, "evaluate"):
        if progress is not None:
            progress.start("evaluate", len(plan.pairs), f"{len(plan.pairs)} stacks to compare")
        per_subject, rows, keys = [], [], []
        loaded: dict[float, ImageSet] = {}
        for step, (week, record) in enumerate(plan.pairs, 1):
            if week not in loaded:
                loaded.clear()
                loaded[week] = plan.atlas.load(week)
            atlas = loaded[week]
            stack_t2 = load_nifti(record.t2w, np.float32)
            stack_seg = load_labels(record.seg)
            mask_array = load_nifti(record.mask, dtype=None).array if record.mask else stack_seg.array
            reference = ImageSet(stack_t2, stack_t2.with_array((mask_array > 0).astype(np.uint8)),
                                 stack_t2.with_array(stack_seg.array), str(record.t2w))
            atlas_to_stack = np.eye(4) if register is None else register(atlas, week, stack_t2, reference.mask)
            stack_to_atlas = np.linalg.inv(atlas_to_stack)
            test_t2 = resample(atlas.t2w, stack_t2.grid, stack_to_atlas, "linear")
            test_seg = resample(atlas.seg, stack_t2.grid, stack_to_atlas, "nearest")
            result = compare(test_t2, test_seg, reference, week, plan.normative, plan.table, (atlas.t2w, atlas.seg),
                             names=(atlas.source, reference.source), sides=("atlas", "stack"),
                             reference_ga_weeks=record.scan_age)
            per_subject.append({"subject_id": record.subject_id, "scan_age": record.scan_age,
                                "atlas_ga_weeks": week, "atlas": atlas.source, "stack": str(record.t2w),
                                "atlas_to_stack": atlas_to_stack.tolist(), **result})
            rows.append(summary_row(result, ("atlas", "stack")))
            keys.append([record.subject_id, f"{record.scan_age:.1f}", f"{week:.1f}"])
            if progress is not None:
                progress.update(step, record.subject_id)
        mean = mean_row(rows)
        document = {"mode": "subject_consistency", "atlas_dir": plan.atlas.folder,
                    "registered_manifest": str(Path(registered_manifest)), "normative": plan.normative.source,
                    "label_table": plan.table.source, "conventions": conventions_dict(), "per_subject": per_subject,
                    "summary": rows, "mean": mean}
        conventions = conventions_text(plan.table, plan.normative, metrics.DEFAULT_DILATION_MM, "atlas", "stack")
        markdown = markdown_table(f"Subject consistency: {plan.atlas.folder} vs {Path(registered_manifest)}",
                                  conventions, ["Stack", "GA (weeks)", "Atlas GA"], keys, rows, mean, "atlas", "stack")
        markdown += "\n" + intensity_error_table(["Stack", "GA (weeks)", "Atlas GA"], keys, per_subject, "stack")
        return write_outputs(plan.out, document, markdown)
