"""``python -m infanite demo``: the built-in end-to-end example on a small phantom cohort.

Current scope: simulate a small cohort, validate its manifest, and write ``montage.png`` showing one
simulated stack (native grid, with its labels), the same stack mapped back into template space with its true
pose, and the ground-truth template with labels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .cohort import load_cohort
from .imageio import load_labels, load_nifti
from .montage import save_montage
from .progress import ProgressReporter
from .resample import resample
from .simulate import SimulationConfig, simulate_cohort
from .templates import TemplateLibrary

DEMO_CONFIG = SimulationConfig(n_subjects=3, stacks_per_subject=3, ga_range=(24.0, 34.0), seed=0)


def run_demo(out: Path, atlas_dir=None, progress: ProgressReporter | None = None) -> Path:
    """Run the demo into ``out``; returns the montage path."""
    from .phantom import phantom_library

    out = Path(out)
    library = TemplateLibrary.from_folder(atlas_dir) if atlas_dir else phantom_library(DEMO_CONFIG.phantom_spacing_mm)
    manifest = simulate_cohort(DEMO_CONFIG, out / "cohort", library=library, progress=progress)
    cohort = load_cohort(manifest)
    truth = json.loads((out / "cohort" / "truth.json").read_text())
    stack = cohort.stacks[0]
    info = truth["stacks"][stack.subject_id]
    template = library.for_ga(stack.scan_age, DEMO_CONFIG.template_mode)
    t2 = load_nifti(stack.t2w)
    labels = load_labels(stack.seg)
    template_to_stack = np.asarray(info["template_to_stack"])
    aligned = resample(t2, template.grid, template_to_stack, "linear")
    aligned_labels = resample(labels, template.grid, template_to_stack, "nearest")
    return save_montage(
        [(f"{stack.subject_id} (native)", t2, labels),
         ("stack in template space (true pose)", aligned, aligned_labels),
         (f"ground truth GA {stack.scan_age:.1f}", template.t2w, template.seg)],
        out / "montage.png", title=f"INFANiTE demo — {len(cohort.stacks)} simulated stacks ({library.source})")
