"""Benchmark of ``infanite register`` on simulated CRL cohorts and on the real MIAL stacks.

    python benchmarks/registration.py [--subjects 20] [--jobs 2] [--quick] [--device cpu]

Cohorts (3 stacks per simulated fetus, from ../shared/data/crl2017-fetal-atlas, simulator defaults unless said):
  clinical   stacks planned along the brain axes, ±20° obliquity, random head orientation, 3 mm slices,
             2°/1 mm per-slice motion, 2 mm deformation;
  random     fully random stack orientations;
  thick+motion  5 mm slices (0.5 mm gap), 5°/2 mm per-slice motion.
Success = rotation error < 5° and translation error < 3 mm at the brain centre, against the simulator's truth
(the best rigid fit under motion and deformation).  The fine back ends are compared on the clinical cohort:
batched PyTorch NMI (default) vs SimpleITK correlation, both after the same orientation search.  The six real
MIAL stacks (GA unknown: chosen by brain volume) are registered and the pairwise normalised cross-correlation of
the aligned stacks inside the template mask (where both have signal) is reported.  Peak memory = largest RSS of
one registration process.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infanite.io.images import load_nifti
from infanite.registration.orientation import pose_distance
from infanite.registration.register import RegisterOptions, register_cohort
from infanite.simulation.stacks import SimulationConfig, simulate_cohort
from infanite.registration.stack import RegistrationSettings
from infanite.reference.templates import TemplateLibrary

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def errors(out: Path, truth_path: Path) -> tuple[np.ndarray, np.ndarray, list[float], list[str]]:
    truth = json.loads(truth_path.read_text())["stacks"]
    found = json.loads((out / "transforms.json").read_text())
    rot, trans, secs, conf = [], [], [], []
    for sid, info in truth.items():
        if sid not in found["transforms"]:
            rot.append(180.0)
            trans.append(1e3)
            continue
        a, d = pose_distance(np.asarray(found["transforms"][sid]), np.asarray(info["template_to_stack"]),
                             info["brain_centre_template_ras_mm"])
        rot.append(a)
        trans.append(d)
        secs.append(found["qc"][sid]["seconds"])
        conf.append(found["qc"][sid]["confidence"])
    return np.asarray(rot), np.asarray(trans), secs, conf


def run_case(name, cfg, library, atlas, tmp: Path, jobs: int, backend: str, device: str, cohort_dir=None):
    cohort_dir = cohort_dir or tmp / f"sim-{name}"
    if not (cohort_dir / "cohort.tsv").exists():
        simulate_cohort(cfg, cohort_dir, library=library)
    out = tmp / f"reg-{name}-{backend}"
    options = RegisterOptions(jobs=jobs, settings=RegistrationSettings(fine_backend=backend, device=device))
    t0 = time.perf_counter()
    register_cohort(cohort_dir / "cohort.tsv", atlas, out, options)
    wall = time.perf_counter() - t0
    rot, trans, secs, conf = errors(out, cohort_dir / "truth.json")
    ok = (rot < 5) & (trans < 3)
    low = sum(c == "low" for c in conf)
    print(f"| {name} | {backend} | {len(rot)} | {100 * ok.mean():.1f} % | {np.median(rot):.2f} | "
          f"{np.percentile(rot, 90):.2f} | {np.median(trans):.2f} | {np.percentile(trans, 90):.2f} | "
          f"{np.median(secs):.1f} | {wall / len(rot):.1f} | {low} (of which failed: "
          f"{sum((c == 'low') and not o for c, o in zip(conf, ok))}) |", flush=True)
    return cohort_dir


def mial_case(atlas, tmp: Path, jobs: int, device: str) -> None:
    mial = SHARED / "mialsrtk-sample-stacks"
    if not mial.is_dir():
        print(f"(MIAL stacks not found at {mial})")
        return
    manifest = tmp / "mial.tsv"
    rows = ["subject_id\tscan_age\tT2w\tMask"]
    rows += [f"run-{i}\t\t{mial}/sub-01_run-{i}_T2w.nii.gz\t{mial}/sub-01_run-{i}_T2w_desc-brain_mask.nii.gz"
             for i in range(1, 7)]
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp / "reg-mial"
    register_cohort(manifest, atlas, out, RegisterOptions(jobs=jobs, settings=RegistrationSettings(device=device)))
    found = json.loads((out / "transforms.json").read_text())["qc"]
    library = TemplateLibrary.from_folder(atlas)
    week = next(iter(found.values()))["template_ga"]
    brain = library.for_ga(week).mask.array > 0
    images = {f"run-{i}": load_nifti(out / "stacks" / f"run-{i}_T2w.nii.gz").array for i in range(1, 7)}
    names = sorted(images)
    print(f"\nMIAL sub-01 (GA unknown → template week {week:g} by brain volume); NMI / margin / confidence:")
    for n in names:
        q = found[n]
        print(f"  {n}: NMI {q['nmi']:.3f}, margin {q['margin']:.3f}, {q['confidence']}, {q['seconds']:.1f} s, "
              f"QC {out / 'qc' / (n + '.png')}")
    print("pairwise NCC of the aligned stacks inside the template brain mask (voxels where both have signal):")
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    nccs = []
    for a in names:
        cells = []
        for b in names:
            both = brain & (images[a] > 0) & (images[b] > 0)
            x, y = images[a][both], images[b][both]
            ncc = float(np.corrcoef(x, y)[0, 1])
            cells.append(f"{ncc:.2f}")
            if a < b:
                nccs.append(ncc)
        print(f"| {a} | " + " | ".join(cells) + " |")
    print(f"min / median pairwise NCC: {min(nccs):.2f} / {np.median(nccs):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=20, help="simulated fetuses per cohort (3 stacks each)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="4 subjects per cohort, no back-end comparison")
    parser.add_argument("--keep", default=None, help="keep the simulated cohorts and outputs in this folder "
                                                     "(cohorts already there are reused; outputs are redone)")
    parser.add_argument("--cases", default="clinical,random,thick+motion,sitk,mial",
                        help="comma-separated subset of: clinical, random, thick+motion, sitk, mial")
    args = parser.parse_args()
    atlas = SHARED / "crl2017-fetal-atlas"
    if not atlas.is_dir():
        sys.exit(f"CRL atlas not found at {atlas}: this benchmark needs it")
    n = 4 if args.quick else args.subjects
    library = TemplateLibrary.from_folder(atlas)
    cases = {
        "clinical": SimulationConfig(n_subjects=n, seed=100),
        "random": SimulationConfig(n_subjects=n, random_poses=True, seed=200),
        "thick+motion": SimulationConfig(n_subjects=n, slice_thickness_mm=5.0, slice_gap_mm=0.5, motion_deg=5.0,
                                         motion_mm=2.0, seed=300),
    }
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        print(f"registration benchmark: {n} subjects × 3 stacks per cohort, jobs={args.jobs}, device={args.device}")
        print("| cohort | fine back end | stacks | success | median rot ° | p90 rot ° | median trans mm | "
              "p90 trans mm | median s/stack (one process) | wall s/stack | low-confidence |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        wanted = set(args.cases.split(","))
        for old in tmp.glob("reg-*"):
            shutil.rmtree(old)
        for name, cfg in cases.items():
            if name in wanted:
                run_case(name, cfg, library, atlas, tmp, args.jobs, "torch", args.device)
        if "sitk" in wanted and not args.quick:
            run_case("clinical", cases["clinical"], library, atlas, tmp, args.jobs, "sitk", args.device)
        if "mial" in wanted:
            mial_case(atlas, tmp, args.jobs, args.device)
        print(f"\npeak RSS of one registration process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
