"""``infanite train``: fit the INR to a registered cohort (resumable)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from infanite.cli.common import add_progress
from infanite.progress import ProgressReporter


#: set by ``--nproc`` for the processes it starts (what they would print, it has printed)
LAUNCHED_ENV = "INFANITE_LAUNCHED"


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
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel training in N processes on this machine (torchrun --standalone: one GPU each "
                        "on CUDA with NCCL, gloo on CPU); the same as 'torchrun --nproc-per-node N -m infanite "
                        "train ...', which also runs across nodes; default 1")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from infanite.inr.distributed import launched_by_torchrun

    # said once: by the launcher (--nproc), or by rank 0 of a job torchrun started directly
    quiet = launched_by_torchrun() and (int(os.environ["RANK"]) > 0 or os.environ.get(LAUNCHED_ENV) == "1")
    from infanite.devices import choose_device
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
        from infanite.inr.config import defaults_then
        from infanite.pipeline.run import sized_defaults

        overrides = defaults_then(sized_defaults(args.manifest, device, say=not quiet), overrides) + [
            f"device={device}"]
    elif args.device:
        overrides.append(f"device={choose_device(args.device)}")
    config = load_train_config(config_path, overrides)
    if not quiet:
        print(f"train: model {config.model} (hidden {config.inr_decoder.hidden_size} × "
              f"{config.inr_decoder.num_hidden_layers} layers, data term {config.data.term}) on {config.device}"
              f"{' (no --config: sized for the device)' if sized else ''}{_cpu_matmul_note(config)}", file=sys.stderr)
    if config.device == "cpu" and config.inr_decoder.hidden_size >= 512 and config.model == "infanite" and not quiet:
        print(f"train: warning: a {config.inr_decoder.hidden_size}-wide model on a CPU takes minutes per step; the "
              f"CPU defaults ('infanite run', no --config) train in about an hour", file=sys.stderr)
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not launched_by_torchrun():
        return launch(args, config)
    worker = launched_by_torchrun() and int(os.environ["RANK"]) > 0     # rank 0 alone reports
    with ProgressReporter(None if worker else args.progress_json) as progress:
        summary = train(args.manifest, config, Path(args.out), resume=args.resume, progress=progress,
                        overwrite=args.overwrite)
    if worker:
        return 0
    print(f"trained {summary['steps']}/{summary['total_steps']} steps in {summary['seconds']} s: {args.out}")
    return 0


def _cpu_matmul_note(config) -> str:
    """What ``cpu_matmul`` does on this machine, for the first line a CPU run prints."""
    if config.device != "cpu":
        return ""
    from infanite.devices import cpu_matmul_in_bf16

    if cpu_matmul_in_bf16(config.cpu_matmul):
        why = "native on this CPU" if config.cpu_matmul == "auto" else "cpu_matmul: bf16"
        return f"; float32 matrix products computed in bf16 ({why}; cpu_matmul=fp32 to keep float32)"
    return "; float32 matrix products" + (" (no native bf16 on this CPU)" if config.cpu_matmul == "auto" else "")


def launch(args, config) -> int:
    """``--nproc N``: check what can be checked here (device, run folder, lock), then run this command in N
    processes through ``torchrun --standalone``; returns its exit status.  SIGTERM/SIGINT are passed on, so a
    graceful stop reaches every rank."""
    import signal
    import subprocess

    import torch

    from infanite.inr.distributed import torchrun_command
    from infanite.inr.run_folder import check_device, check_run_folder
    from infanite.io.lock import folder_lock

    check_device(config.device)
    if torch.device(config.device).type == "cuda" and args.nproc > torch.cuda.device_count():
        raise ValueError(f"--nproc {args.nproc}: this machine has {torch.cuda.device_count()} CUDA device(s); one "
                         f"process per GPU")
    with folder_lock(args.out, "train"):                # refused now, not in a worker, when another run holds it
        check_run_folder(args.out, config, args.resume, args.overwrite, args.nproc)
    argv = ["train", "--manifest", str(args.manifest), "--out", str(args.out), "--device", config.device]
    if args.config:
        argv += ["--config", str(args.config)]
    for item in args.set or []:
        argv += ["--set", item]
    argv += ["--resume"] * bool(args.resume) + ["--overwrite"] * bool(args.overwrite)
    if args.progress_json:
        argv += ["--progress-json", args.progress_json]
    child = subprocess.Popen(torchrun_command(args.nproc, argv), env={**os.environ, LAUNCHED_ENV: "1"})
    previous = {}

    def forward(signum, frame):
        child.send_signal(signum)

    for name in ("SIGTERM", "SIGINT"):
        if hasattr(signal, name):
            previous[name] = signal.signal(getattr(signal, name), forward)
    try:
        status = child.wait()
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
    if status != 0:
        print(f"train: error: a training process failed (torchrun exit status {status}; its report is above); "
              f"{_kept(Path(args.out))}", file=sys.stderr)
    return status


def _kept(out: Path) -> str:
    """What a failed distributed run left: the last checkpoint's step and how to continue."""
    from infanite.inr.checkpoint import read_checkpoint
    from infanite.io.layout import CHECKPOINT

    try:
        state = read_checkpoint(out / CHECKPOINT)
    except (FileNotFoundError, ValueError):
        return f"no checkpoint was written in {out}"
    return (f"the last checkpoint (step {int(state['global_step'])} of {int(state['total_steps'])}) is kept in "
            f"{out / CHECKPOINT}; continue with --resume --nproc {int(state.get('world_size', 1))}")
