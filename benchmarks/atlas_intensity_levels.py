"""Where the min–max PSNR's normalisation bites: the intensity levels of atlases against the CRL weeks.

    python benchmarks/atlas_intensity_levels.py ATLAS_DIR [ATLAS_DIR ...] [--atlas-dir CRL] [--ga 22 26 30 34 38]
                                               [--clip PERCENTILE]

The PSNR of ``benchmarks/atlas_quality.py`` min–max normalises the atlas and the truth over the brain region (the
CRL mask dilated by 2 mm) before comparing them, so one voxel, the brightest, sets the scale of the whole atlas.
For each atlas folder (an ``infanite atlas`` output, or one of the benchmark's ``<work>/full_40x3/atlases/<row>``)
and GA this prints, for the atlas resampled onto the CRL week's grid and for the truth: the 99.9th percentile of the
region over its maximum (1.0 for a saturated image), and the median of the atlas's ventricles, extra-axial CSF and
white matter (by the atlas's own labels) over each image's maximum; then the PSNR as measured and after the best
affine intensity map.  ``--clip P`` adds the PSNR of the atlas clipped at its P-th brain percentile before the
resampling (a check of whether clipping is a fix; it changes what the metric sees, not the anatomy).  It reads the
CRL atlas from ``--atlas-dir`` (default ``../shared/data/crl2017-fetal-atlas``) and writes nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: the atlas's labels whose median intensity is reported (CRL / FeTA 8-class table: value, short name)
LEVEL_LABELS = ((2, "ventricles"), (4, "eCSF"), (3, "WM"))


def levels(atlas_dir: Path, crl: Path, ga: float, clip: float | None) -> dict:
    """The intensity levels and PSNRs of one atlas GA against its CRL week (see the module's docstring)."""
    from infanite.evaluation.metrics import DEFAULT_DILATION_MM, brain_mask_region, psnr, psnr_affine
    from infanite.io.images import Volume, load_nifti
    from infanite.io.layout import atlas_filenames
    from infanite.io.resample import resample

    week = crl / f"HarvardSTA{int(round(ga))}_Study1"
    mask = load_nifti(week / "mask.nii.gz", dtype=None)
    region = brain_mask_region(mask, DEFAULT_DILATION_MM)
    truth = load_nifti(week / "srr.nii.gz")
    native = load_nifti(atlas_dir / atlas_filenames(ga)["T2w"])
    image = resample(native, mask.grid, None, "linear")
    seg = resample(load_nifti(atlas_dir / atlas_filenames(ga)["dseg"], dtype=None), mask.grid, None, "nearest").array
    a, t = image.array[region], truth.array[region]
    out = {"atlas_p999": float(np.percentile(a, 99.9) / a.max()), "truth_p999": float(np.percentile(t, 99.9) / t.max()),
           "psnr": psnr(image, truth, region), "psnr_affine": psnr_affine(image, truth, region)}
    for value, name in LEVEL_LABELS:
        where = (seg == value) & region
        if where.any():
            out[name] = (float(np.median(image.array[where]) / a.max()), float(np.median(truth.array[where]) / t.max()))
    if clip is not None:
        brain = native.array > 0
        clipped = np.minimum(native.array, np.percentile(native.array[brain], clip)).astype(np.float32)
        out["psnr_clipped"] = psnr(resample(Volume(clipped, native.voxel_to_ras), mask.grid, None, "linear"), truth,
                                   region)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("atlases", nargs="+", type=Path, help="atlas folders (infanite atlas outputs)")
    parser.add_argument("--atlas-dir", type=Path, default=REPO.parent / "shared" / "data" / "crl2017-fetal-atlas")
    parser.add_argument("--ga", type=float, nargs="+", default=[22.0, 26.0, 30.0, 34.0, 38.0])
    parser.add_argument("--clip", type=float, default=None, metavar="PERCENTILE")
    args = parser.parse_args(argv)
    if not args.atlas_dir.is_dir():
        print(f"skipped: the CRL atlas is not at {args.atlas_dir} (give --atlas-dir)", file=sys.stderr)
        return 0
    if args.clip is not None and not 50 <= args.clip <= 100:
        parser.error(f"--clip must be a percentile in [50, 100], got {args.clip}")
    for folder in args.atlases:
        if not folder.is_dir():
            parser.error(f"{folder}: no such atlas folder")
    names = [name for _, name in LEVEL_LABELS]
    print("| atlas | GA | p99.9 / max: atlas, truth | " + " | ".join(f"{n} / max: atlas, truth" for n in names)
          + " | PSNR | after affine map |" + (f" clipped at p{args.clip:g} |" if args.clip is not None else ""))
    print("|---" * (5 + len(names) + (args.clip is not None)) + "|")
    for folder in args.atlases:
        for ga in args.ga:
            r = levels(folder, args.atlas_dir, ga, args.clip)
            cells = [f"{r[n][0]:.3f}, {r[n][1]:.3f}" if n in r else "—" for n in names]
            print(f"| {folder.name} | {ga:g} | {r['atlas_p999']:.3f}, {r['truth_p999']:.3f} | " + " | ".join(cells)
                  + f" | {r['psnr']:.2f} | {r['psnr_affine']:.2f} |"
                  + (f" {r['psnr_clipped']:.2f} |" if args.clip is not None else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
