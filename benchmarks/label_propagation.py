"""Labels of a mask-only cohort's atlas: template labels propagated by registration, against labels learnt from
stacks with a Seg, on the simulator (the truth is the CRL week each fetus was simulated from).

    python benchmarks/label_propagation.py --atlas ATLAS_DIR [--atlas-dir CRL] [--json out.json]
                                           [--mask-only-atlas DIR]

``ATLAS_DIR`` is an atlas of a run trained on stacks **with** a Seg (e.g. ``atlas_quality.py``'s row a' or a,
under ``--work``).  For each of its GAs, against the CRL week of that GA resampled onto the atlas grid:

* ``learnt``: the atlas's own labels (the label head trained on the stacks' Segs);
* ``none (±1 w)`` / ``demons (±1 w)`` / ``bspline (±1 w)``: the labels of the CRL template **one week away** (the
  younger neighbour; the older one at the first week), propagated into the atlas's own brain mask with no
  registration / demons / B-spline registration (:mod:`infanite.atlas.propagate`).  The neighbouring week is used
  so that the template is not the truth itself (in the simulator the templates *are* the truth);
* ``demons (same w)``: propagated from the CRL week itself: the upper bound (registration error only).

``--mask-only-atlas DIR`` adds the atlas of a run trained on the same stacks **without** their Segs and
generated with ``--templates`` (so its brain mask is what mask-only stacks teach).  Mean Dice over the 8 CRL
labels and seconds per GA are printed as a table.  Everything stays outside the repository (the CRL licence).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_ATLAS = REPO.parent / "shared" / "data" / "crl2017-fetal-atlas"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atlas", type=Path, required=True, help="atlas of a run trained with Seg")
    parser.add_argument("--atlas-dir", type=Path, default=DEFAULT_ATLAS, help="CRL 2017 atlas folder")
    parser.add_argument("--mask-only-atlas", type=Path, default=None, help="atlas of the same stacks without Seg")
    parser.add_argument("--json", type=Path, default=None, help="also write the values here")
    args = parser.parse_args(argv)
    if not args.atlas_dir.is_dir():
        print(f"skipped: the CRL atlas is not at {args.atlas_dir}", file=sys.stderr)
        return 0
    import numpy as np

    from infanite.atlas.folder import read_atlas_manifest
    from infanite.atlas.propagate import propagate_template_labels
    from infanite.evaluation.metrics import dice
    from infanite.io.images import Volume, load_labels, load_nifti
    from infanite.io.resample import resample
    from infanite.reference.templates import TemplateLibrary

    library = TemplateLibrary.from_folder(args.atlas_dir)
    manifest = read_atlas_manifest(args.atlas, "")
    labels = [v for v in manifest["label_values"] if v > 0]
    rows = {}
    for key, entry in manifest["ga"].items():
        ga = float(key)
        t2 = load_nifti(args.atlas / entry["files"]["T2w"])
        learnt = load_labels(args.atlas / entry["files"]["dseg"])
        truth_template = library.nearest(ga)
        truth = resample(truth_template.seg, t2.grid, None, "nearest")
        brain = learnt.array > 0
        neighbour = library.nearest(ga - 1 if ga - 1 >= library.weeks[0] else ga + 1)
        row = {"learnt": dice(learnt.array, truth.array, labels)["mean"]}
        for name, template, method in (("none (±1 w)", neighbour, "none"), ("demons (±1 w)", neighbour, "demons"),
                                       ("bspline (±1 w)", neighbour, "bspline"),
                                       ("demons (same w)", truth_template, "demons")):
            t0 = time.perf_counter()
            done = propagate_template_labels(t2.array, brain, t2.voxel_to_ras, template, method=method)
            row[name] = dice(Volume(done.labels, t2.voxel_to_ras).array, truth.array, labels)["mean"]
            row[name + " s"] = time.perf_counter() - t0
        if args.mask_only_atlas is not None:
            other = read_atlas_manifest(args.mask_only_atlas, "")["ga"].get(key)
            if other:
                seg = load_labels(args.mask_only_atlas / other["files"]["dseg"])
                row["mask-only run"] = dice(seg.array, resample(truth_template.seg, seg.grid, None,
                                                                "nearest").array, labels)["mean"]
        rows[key] = row
        print(f"GA {key}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    names = [k for k in next(iter(rows.values())) if not k.endswith(" s")]
    print("\n| GA (weeks) | " + " | ".join(names) + " | demons s/GA |")
    print("|---|" + "---|" * (len(names) + 1))
    for key, row in rows.items():
        print(f"| {key} | " + " | ".join(f"{row[n]:.3f}" for n in names) + f" | {row['demons (±1 w) s']:.0f} |")
    means = {n: float(np.mean([r[n] for r in rows.values()])) for n in names}
    print("| mean | " + " | ".join(f"{means[n]:.3f}" for n in names) + " | |")
    if args.json:
        args.json.write_text(json.dumps({"atlas": str(args.atlas), "rows": rows, "means": means}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
