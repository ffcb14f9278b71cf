"""``infanite devices``: the compute devices this Python's PyTorch can train on."""
from __future__ import annotations


from infanite.cli.common import add_progress
from infanite.progress import ProgressReporter


def add_parser(sub) -> None:
    p = sub.add_parser("devices", help="list the compute devices this Python's PyTorch can train on",
                       description="Prints the devices (best first: cuda when a GPU is visible, then cpu) and each "
                                   "GPU's name and memory.  With --progress-json - one JSON line (stage 'devices').")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
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
