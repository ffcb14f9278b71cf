"""``infanite train``: fit the INR to a registered cohort (resumable)."""
from __future__ import annotations

from pathlib import Path

from infanite.cli.common import add_progress
from infanite.progress import ProgressReporter


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fit the modulated SIREN and per-stack latents to a registered cohort",
                       description="INR training (resumable).  Without --config the model is sized for the device "
                                   "as 'infanite run' does (a small model on a CPU, the paper's on a GPU); with "
                                   "--resume and no --config/--set, the run's own settings.")
    p.add_argument("--manifest", required=True, help="registered.tsv written by 'infanite register'")
    p.add_argument("--config", default=None, help="YAML config (our keys or the reference's config_atlas.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, value parsed as YAML (e.g. inr_decoder.modulated_layers=[1,3])")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl, config.yaml)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the config's device when "
                                                 "--config names one, else auto: the GPU when PyTorch sees one)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt exactly")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out (refused otherwise)")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from infanite.devices import choose_device
    from infanite.inr.config import default_overrides
    from infanite.inr.config_loading import load_train_config
    from infanite.inr.train import train
    from infanite.io.layout import CONFIG

    overrides = list(args.set or [])
    config_path = args.config
    own = Path(args.out) / CONFIG
    if args.resume and config_path is None and own.is_file():
        config_path = own                  # the run's own settings (what it was trained with), --set on top
    elif config_path is not None and Path(config_path).is_file() and not Path(config_path).read_text().strip():
        print(f"train: warning: {config_path} is empty; the model is sized for the device as without --config",
              file=sys.stderr)
        config_path = None
    sized = config_path is None
    if sized:
        device = choose_device(args.device)
        overrides = default_overrides(device) + overrides + [f"device={device}"]
    elif args.device:
        overrides.append(f"device={choose_device(args.device)}")
    config = load_train_config(config_path, overrides)
    print(f"train: model {config.model} (hidden {config.inr_decoder.hidden_size} × "
          f"{config.inr_decoder.num_hidden_layers} layers, data term {config.data.term}) on {config.device}"
          f"{' (no --config: sized for the device)' if sized else ''}", file=sys.stderr)
    if config.device == "cpu" and config.inr_decoder.hidden_size >= 512 and config.model == "infanite":
        print(f"train: warning: a {config.inr_decoder.hidden_size}-wide model on a CPU takes minutes per step; the "
              f"CPU defaults ('infanite run', no --config) train in about an hour", file=sys.stderr)
    with ProgressReporter(args.progress_json) as progress:
        summary = train(args.manifest, config, Path(args.out), resume=args.resume, progress=progress,
                        overwrite=args.overwrite)
    print(f"trained {summary['steps']}/{summary['total_steps']} steps in {summary['seconds']} s: {args.out}")
    return 0
