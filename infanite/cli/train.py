"""``infanite train``: fit the INR to a registered cohort (resumable)."""
from __future__ import annotations

from pathlib import Path

from infanite.cli.common import add_progress
from infanite.progress import ProgressReporter


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fit the modulated SIREN and per-stack latents to a registered cohort",
                       description="INR training (resumable).  Without --config the paper's settings apply.")
    p.add_argument("--manifest", required=True, help="registered.tsv written by 'infanite register'")
    p.add_argument("--config", default=None, help="YAML config (our keys or the reference's config_atlas.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, value parsed as YAML (e.g. inr_decoder.modulated_layers=[1,3])")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl, config.yaml)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt exactly")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from infanite.inr.train import train
    from infanite.inr.config_loading import load_train_config

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    config = load_train_config(args.config, overrides)
    with ProgressReporter(args.progress_json) as progress:
        summary = train(args.manifest, config, Path(args.out), resume=args.resume, progress=progress)
    print(f"trained {summary['steps']}/{summary['total_steps']} steps in {summary['seconds']} s: {args.out}")
    return 0
