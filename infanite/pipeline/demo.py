"""``python -m infanite demo``: the whole method on a small simulated cohort, on CPU, in a few minutes.

1. simulate thick-slice stacks (3 mm slices, motion, deformation, random head poses) of a few fetuses from the
   built-in phantom (or from a real template folder with ``atlas_dir``);
2. ``infanite run``: register every stack to its age-matched template (orientation search + NMI), train a tiny
   INR, generate the atlas at every whole week of the cohort's GA range, evaluate it against the ground truth
   (the templates the stacks were simulated from) and write ``report.html``.

Opens nothing; returns the report's path.  Re-running with the same ``out`` resumes / skips finished stages.
"""
from __future__ import annotations

from pathlib import Path

from infanite.reference.phantom import write_phantom_templates
from infanite.inr.config import DEMO_TRAINING
from infanite.pipeline.run import run_pipeline
from infanite.progress import ProgressReporter
from infanite.registration.register import RegisterOptions
from infanite.simulation.stacks import SimulationConfig, simulate_cohort
from infanite.reference.templates import TemplateLibrary

DEMO_CONFIG = SimulationConfig(n_subjects=4, stacks_per_subject=2, ga_range=(26.0, 32.0), inplane_spacing_mm=1.5,
                               seed=0)
DEMO_SPACING_MM = 1.6          # template grid, training grid and atlas grid of the demo


def run_demo(out: Path, atlas_dir=None, progress: ProgressReporter | None = None) -> Path:
    """Run the demo into ``out``; returns the path of ``report.html``."""
    out = Path(out)
    if atlas_dir:
        templates = Path(atlas_dir)
        library = TemplateLibrary.from_folder(templates)
    else:
        lo, hi = int(DEMO_CONFIG.ga_range[0]) - 1, int(DEMO_CONFIG.ga_range[1]) + 1
        templates = write_phantom_templates(out / "templates", range(lo, hi + 1))
        library = TemplateLibrary.from_folder(templates)
    manifest = simulate_cohort(DEMO_CONFIG, out / "cohort", library=library, progress=progress)
    result = run_pipeline(manifest, templates, out / "run", overrides=DEMO_TRAINING, device="cpu",
                          atlas_spacing_mm=DEMO_SPACING_MM, reference=templates,
                          register_options=RegisterOptions(spacing_mm=DEMO_SPACING_MM), progress=progress,
                          command="python -m infanite demo")
    if result.get("stopped"):
        raise RuntimeError(f"the demo's training was stopped at step {result['steps']}; run it again to resume")
    return result["report"]
