"""Command line: ``python -m infanite <command> [options]`` (``--help`` on every command).

Every long command accepts ``--progress-json FILE|-`` (one JSON object per line: stage, step, total, message,
elapsed_s, eta_s) and shows a progress bar when stderr is a terminal.  Exit codes: 0 success, 1 failure of the
work, 2 invalid input (reported before any work starts).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infanite.progress import ProgressReporter


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress-json", metavar="FILE|-", default=None,
                        help="write progress as JSON lines to FILE, or to stdout with '-'")


def _cmd_validate(args) -> int:
    from infanite.io.cohort import ManifestError, load_cohort
    from infanite.labels import default_label_table, load_label_table

    table = load_label_table(args.labels) if args.labels else default_label_table()
    try:
        cohort = load_cohort(args.manifest, label_table=table, ga_range=tuple(args.ga_range),
                             subject_ids_yaml=args.subject_ids, check_images=not args.no_images)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.write_resolved:
        cohort.write(args.write_resolved)
    print(f"{args.manifest}: OK — {len(cohort.stacks)} stacks of {len(cohort.subjects())} subjects, "
          f"GA {min(s.scan_age for s in cohort.stacks):.1f}–{max(s.scan_age for s in cohort.stacks):.1f} weeks")
    return 0


def _cmd_simulate(args) -> int:
    from infanite.simulation.stacks import SimulationConfig, simulate_cohort

    config = SimulationConfig(
        n_subjects=args.subjects, stacks_per_subject=args.stacks, ga_range=tuple(args.ga_range),
        slice_thickness_mm=args.thickness, slice_gap_mm=args.gap, inplane_spacing_mm=args.inplane,
        obliquity_deg=args.obliquity, random_poses=args.random_poses, motion_deg=args.motion_deg,
        motion_mm=args.motion_mm, deformation_mm=args.deformation_mm, noise=args.noise,
        bias=args.bias, seed=args.seed, phantom_spacing_mm=args.phantom_spacing)
    if (args.atlas_dir is None) == (not args.phantom):
        print("simulate: give exactly one of --atlas-dir DIR or --phantom", file=sys.stderr)
        return 2
    with ProgressReporter(args.progress_json) as progress:
        out = simulate_cohort(config, Path(args.out), atlas_dir=args.atlas_dir, progress=progress)
    print(f"cohort written: {out}")
    return 0


def _cmd_register(args) -> int:
    from infanite.io.cohort import ManifestError
    from infanite.registration.register import RegisterOptions, register_cohort
    from infanite.registration.stack import RegistrationSettings

    options = RegisterOptions(spacing_mm=args.spacing, jobs=args.jobs, n4=args.n4, w_obs=args.w_obs,
                              w_int=args.w_int, fix_headers=args.fix_headers, max_ga_gap_weeks=args.max_ga_gap,
                              settings=RegistrationSettings(fine_backend=args.backend, device=args.device))
    try:
        with ProgressReporter(args.progress_json) as progress:
            result = register_cohort(args.manifest, args.templates, args.out, options, args.init_transforms,
                                     args.fixed_transforms, progress)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    for sid, reason in result["failed"].items():
        print(f"FAILED {sid}: {reason.splitlines()[0]}", file=sys.stderr)
    print(f"registered {len(result['done'])} stacks ({len(result['skipped'])} already done), "
          f"{len(result['failed'])} failed: {Path(args.out) / 'registered.tsv'}")
    return 1 if result["failed"] else 0


def _cmd_train(args) -> int:
    from infanite.inr.train import train
    from infanite.inr.config import load_train_config

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    config = load_train_config(args.config, overrides)
    with ProgressReporter(args.progress_json) as progress:
        summary = train(args.manifest, config, Path(args.out), resume=args.resume, progress=progress)
    print(f"trained {summary['steps']}/{summary['total_steps']} steps in {summary['seconds']} s: {args.out}")
    return 0


def _cmd_devices(args) -> int:
    import json

    from infanite.devices import devices_record

    record = devices_record()
    if args.progress_json == "-":
        print(json.dumps(record), flush=True)
    else:
        if args.progress_json:
            with ProgressReporter(args.progress_json) as progress:
                progress.start("devices", 1)
                progress.update(1, record["message"], devices=record["devices"])
        print(f"devices: {', '.join(record['devices'])}\n{record['message']}")
    return 0


def _cmd_demo(args) -> int:
    from infanite.demo import run_demo

    with ProgressReporter(args.progress_json) as progress:
        report = run_demo(Path(args.out), atlas_dir=args.atlas_dir, progress=progress)
    print(f"demo finished — open the report: {report}")
    return 0


def _cmd_run(args) -> int:
    from infanite.io.cohort import ManifestError
    from infanite.pipeline import run_pipeline
    from infanite.registration.register import RegisterOptions

    try:
        with ProgressReporter(args.progress_json) as progress:
            result = run_pipeline(args.manifest, args.templates, Path(args.out), config_path=args.config,
                                  overrides=args.set or [], device=args.device, ga_weeks=args.ga,
                                  atlas_spacing_mm=args.spacing, reference=args.reference,
                                  register_options=RegisterOptions(jobs=args.jobs), progress=progress)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if result.get("stopped"):
        print(f"stopped at training step {result['steps']} of {result['total_steps']}; run the same command again "
              f"to resume", file=sys.stderr)
        return 0
    failed = result["registration"]["failed"]
    for sid, reason in failed.items():
        print(f"FAILED {sid}: {reason.splitlines()[0]}", file=sys.stderr)
    print(f"report: {result['report']}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infanite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True

    p = sub.add_parser("validate", help="check a cohort manifest and its images before any work",
                       description="Check a cohort TSV (or a reference configs/fetal.tsv with --subject-ids) and "
                                   "report every problem at once, each naming row, column and file.")
    p.add_argument("manifest", help="cohort TSV (paths relative to its folder)")
    p.add_argument("--subject-ids", default=None, metavar="YAML",
                   help="the reference's configs/subject_ids.yaml selecting rows of the TSV")
    p.add_argument("--labels", default=None, metavar="FILE", help="label table (.yaml or .tsv); default CRL 8-class")
    p.add_argument("--ga-range", nargs=2, type=float, default=[21.0, 39.0], metavar=("MIN", "MAX"),
                   help="accepted gestational ages in weeks (default 21 39)")
    p.add_argument("--no-images", action="store_true", help="check the table only, do not open the images")
    p.add_argument("--write-resolved", default=None, metavar="TSV",
                   help="when valid, write the manifest with every default filled in (paths relative to its folder when inside it)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("simulate", help="simulate a thick-slice cohort from an atlas folder or the phantom",
                       description="Simulate clinical thick-slice T2 stacks (Gaussian slice profile, per-slice "
                                   "motion, bias field, Rician noise) with exact ground-truth poses.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--atlas-dir", default=None, help="template folder (CRL, NiftyMIC or templates.tsv layout)")
    src.add_argument("--phantom", action="store_true", help="use the built-in procedural phantom")
    p.add_argument("--out", required=True, help="output folder (cohort.tsv, truth.json, stacks/)")
    p.add_argument("--subjects", type=int, default=4, help="number of fetuses (default 4)")
    p.add_argument("--stacks", type=int, default=3, help="stacks per fetus (default 3, orthogonal)")
    p.add_argument("--ga-range", nargs=2, type=float, default=[21.0, 38.0], metavar=("MIN", "MAX"),
                   help="GA range in weeks (default 21 38)")
    p.add_argument("--thickness", type=float, default=3.0, help="slice thickness mm (default 3)")
    p.add_argument("--gap", type=float, default=0.3, help="slice gap mm (default 0.3)")
    p.add_argument("--inplane", type=float, default=1.0, help="in-plane spacing mm (default 1.0)")
    p.add_argument("--obliquity", type=float, default=20.0, help="max stack obliquity in degrees (default 20)")
    p.add_argument("--random-poses", action="store_true", help="fully random stack orientations in the head frame")
    p.add_argument("--motion-deg", type=float, default=2.0, help="per-slice rotation SD, degrees (default 2)")
    p.add_argument("--motion-mm", type=float, default=1.0, help="per-slice translation SD, mm (default 1)")
    p.add_argument("--deformation-mm", type=float, default=2.0, help="max smooth deformation, mm (default 2)")
    p.add_argument("--noise", type=float, default=0.03, help="Rician noise σ relative to the 99th percentile")
    p.add_argument("--bias", type=float, default=0.2, help="bias field amplitude (fraction, default 0.2)")
    p.add_argument("--phantom-spacing", type=float, default=0.8, help="phantom grid spacing mm (default 0.8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed → same cohort)")
    _add_progress(p)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("register", help="align every stack to an age-matched template (orientation search + NMI)",
                       description="Slice-to-template registration: orientation search over 24 axis rotations and "
                                   "4 principal-axis candidates, rigid NMI refinement, resampling into template "
                                   "space with observed-voxel and weight maps.  Resumable; failed stacks are "
                                   "reported without stopping the others (exit code 1).")
    p.add_argument("--manifest", required=True, help="cohort TSV (scan_age may be empty: GA from brain volume; "
                                                      "Seg may be empty when Mask is given)")
    p.add_argument("--templates", required=True,
                   help="template folder (CRL, NiftyMIC or templates.tsv layout), or 'phantom'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--spacing", type=float, default=None,
                   help="isotropic output spacing in mm (default: the template grid, 0.8 mm for CRL)")
    p.add_argument("--jobs", type=int, default=1, help="stacks registered in parallel (processes)")
    p.add_argument("--n4", action="store_true", help="N4 bias-field correction of each stack first")
    p.add_argument("--backend", choices=["torch", "sitk"], default="torch",
                   help="fine registration back end: batched PyTorch NMI (default) or SimpleITK correlation")
    p.add_argument("--device", default="cpu", help="torch device for the NMI back end (cpu, cuda)")
    p.add_argument("--w-obs", type=float, default=1.6, help="weight of observed voxels (default 1.6)")
    p.add_argument("--w-int", type=float, default=0.8, help="weight of interpolated brain voxels (default 0.8)")
    p.add_argument("--max-ga-gap", type=float, default=2.0,
                   help="largest accepted distance (weeks) from a stack's GA to the nearest template week")
    p.add_argument("--init-transforms", default=None, metavar="JSON",
                   help="start these stacks from the given template_to_stack matrices (no search), then refine")
    p.add_argument("--fixed-transforms", default=None, metavar="JSON",
                   help="take these matrices as final: only resample")
    p.add_argument("--fix-headers", action="store_true",
                   help="use the T2w geometry for Seg/Mask whose headers differ from it only by float noise")
    _add_progress(p)
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("train", help="fit the modulated SIREN and per-stack latents to a registered cohort",
                       description="INR training (resumable).  Without --config the paper's settings apply.")
    p.add_argument("--manifest", required=True, help="registered.tsv written by 'infanite register'")
    p.add_argument("--config", default=None, help="YAML config (our keys or the reference's config_atlas.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, value parsed as YAML (e.g. inr_decoder.modulated_layers=[1,3])")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl, config.yaml)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt exactly")
    _add_progress(p)
    p.set_defaults(func=_cmd_train)

    from infanite.atlas.generate import add_arguments as atlas_arguments, command as atlas_command

    p = sub.add_parser("atlas", help="generate the spatio-temporal atlas (T2w, labels, volumes, growth) from a run",
                       description="GA-conditioned atlas: Gaussian kernel regression of the stack latents, the "
                                   "INR queried PSF-free on a grid in template space.  Resumable per GA.")
    atlas_arguments(p)
    p.set_defaults(func=atlas_command)

    from infanite.evaluation.against_reference import add_arguments as evaluate_arguments, command as evaluate_command

    p = sub.add_parser("evaluate", help="atlas quality metrics: PSNR, SSIM, Dice, HD95, ASD, TCT, volume L1",
                       description="Compare a generated atlas with a reference atlas (--reference) or with the "
                                   "registered stacks (--registered, subject consistency); writes "
                                   "OUT/metrics.json and OUT/metrics.md.")
    evaluate_arguments(p)
    p.set_defaults(func=evaluate_command)

    p = sub.add_parser("run", help="the whole method: register, train, atlas, (evaluate), report",
                       description="register -> weights -> train -> atlas -> report, resumable at every stage. "
                                   "OUT is also a valid --run for 'infanite atlas'.  Without --config the model "
                                   "is sized for the device (small on CPU, the paper's on a GPU).")
    p.add_argument("--manifest", required=True, help="cohort TSV")
    p.add_argument("--templates", required=True, help="template folder (CRL, NiftyMIC, templates.tsv) or 'phantom'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", default=None, help="training YAML config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a training config key")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--ga", type=float, nargs="+", default=None,
                   help="atlas GAs in weeks (default: every whole week of the cohort's range)")
    p.add_argument("--spacing", type=float, default=None,
                   help="atlas spacing in mm (default 0.8 on a GPU, 1.6 on CPU)")
    p.add_argument("--reference", default=None, help="reference atlas folder to evaluate against (optional)")
    p.add_argument("--jobs", type=int, default=1, help="stacks registered in parallel")
    _add_progress(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="run the whole method on a small simulated cohort (CPU, a few minutes)",
                       description="Simulate a small phantom cohort, then register, train, generate the atlas, "
                                   "evaluate it against the ground truth and write report.html.  Opens nothing; "
                                   "prints where the report is.")
    p.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    p.add_argument("--atlas-dir", default=None, help="use a real template folder instead of the phantom")
    _add_progress(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("devices", help="list the compute devices this Python's PyTorch can train on",
                       description="Prints the devices (best first: cuda when a GPU is visible, then cpu) and each "
                                   "GPU's name and memory.  With --progress-json - one JSON line (stage 'devices').")
    _add_progress(p)
    p.set_defaults(func=_cmd_devices)

    from infanite.reference.download import add_arguments as get_templates_arguments, command as get_templates_command

    p = sub.add_parser("get-templates", help="download the CRL 2017 fetal atlas templates (licence: "
                                             "non-commercial research/education only)",
                       description="Download the CRL 2017 fetal brain atlas templates (T2w, mask, parcellation per "
                                   "week) from NiftyMIC's copy, or --base-url, into a NiftyMIC-layout folder.  The "
                                   "images are never bundled with INFANiTE: you fetch them yourself after accepting "
                                   "the licence (printed; type 'yes', or pass --accept-licence).  Resumable.")
    get_templates_arguments(p)
    p.set_defaults(func=get_templates_command)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
