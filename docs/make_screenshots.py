"""Render the extension's two screenshots (Resources/Screenshots) from a finished ``python -m infanite demo``.

    python -m infanite demo --out /tmp/demo && python docs/make_screenshots.py /tmp/demo

Desktop Slicer cannot run on the build machines, so these are renderings of the same data the modules show (phantom
cohort only; never CRL-derived): the registration review (a stack under its transform, red at 50 %, over the
template, three planes) and the atlas browser (T2 + tissue overlay at three GAs, tissue volumes against GA).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _planes(array: np.ndarray, centre) -> list[np.ndarray]:
    i, j, k = (int(round(c)) for c in centre)
    return [np.rot90(array[:, :, k]), np.rot90(array[:, j, :]), np.rot90(array[i, :, :])]


def registration_review(demo: Path, out: Path) -> None:
    from infanite.io.images import load_labels, load_nifti

    reg = demo / "run" / "registration"
    qc = json.loads((reg / "transforms.json").read_text())["qc"]
    sid = sorted(qc, key=lambda s: qc[s]["nmi"])[0]
    stack = load_nifti(reg / "stacks" / f"{sid}_T2w.nii.gz")
    mask = load_labels(reg / "stacks" / f"{sid}_mask.nii.gz")
    week = int(round(qc[sid]["template_ga"]))
    template = load_nifti(demo / "templates" / f"phantom_ga-{week}_T2w.nii.gz")
    from infanite.io.resample import resample

    template = resample(template, stack.grid, None, "linear")
    centre = np.argwhere(mask.array > 0).mean(0)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor="black")
    for ax, t_plane, s_plane, name in zip(axes, _planes(template.array, centre), _planes(stack.array, centre),
                                          ("axial", "coronal", "sagittal")):
        ax.imshow(t_plane, cmap="gray")
        red = np.zeros(s_plane.shape + (4,))
        red[..., 0] = s_plane / max(float(s_plane.max()), 1e-6)
        red[..., 3] = 0.5 * (s_plane > 0)
        ax.imshow(red)
        ax.set_title(name, color="white")
        ax.axis("off")
    fig.suptitle(f"INFANiTERegistration review: stack {sid} (red, 50 %) over the GA {week} template — "
                 f"NMI {qc[sid]['nmi']:.3f}, confidence {qc[sid]['confidence']}", color="white")
    fig.savefig(out, dpi=90, facecolor="black", bbox_inches="tight")
    plt.close(fig)


def atlas_browser(demo: Path, out: Path) -> None:
    from infanite.io.layout import atlas_filenames
    from infanite.io.images import load_labels, load_nifti
    from infanite.labels import default_label_table

    atlas = demo / "run" / "atlas"
    manifest = json.loads((atlas / "atlas_manifest.json").read_text())
    gas = [float(g) for g in manifest.get("ga_weeks", [])] or sorted(
        float(p.name.split("_ga-")[1].split("_")[0]) for p in atlas.glob("atlas_ga-*_T2w.nii.gz"))
    chosen = [gas[0], gas[len(gas) // 2], gas[-1]]
    table = default_label_table()
    lut = np.zeros((max(table.values) + 1, 4))
    for label in table.labels:
        lut[label.value] = [*(c / 255 for c in label.color), 0.45]
    fig = plt.figure(figsize=(13, 4.6), facecolor="black")
    for n, ga in enumerate(chosen):
        names = atlas_filenames(ga)
        t2 = load_nifti(atlas / names["T2w"]).array
        seg = load_labels(atlas / names["dseg"]).array
        k = int(np.argwhere(seg > 0)[:, 2].mean())
        ax = fig.add_subplot(1, 4, n + 1)
        ax.imshow(np.rot90(t2[:, :, k]), cmap="gray")
        ax.imshow(lut[np.rot90(seg[:, :, k])])
        ax.set_title(f"GA {ga:g} weeks", color="white")
        ax.axis("off")
    ax = fig.add_subplot(1, 4, 4)
    import csv

    rows = list(csv.DictReader(open(atlas / "volumes.tsv"), delimiter="\t"))
    ga_col = next(c for c in rows[0] if c.lower().startswith("ga"))
    for label in table.labels:
        column = next((c for c in rows[0] if c.startswith(label.abbrev)), None)
        if column:
            ax.plot([float(r[ga_col]) for r in rows], [float(r[column]) for r in rows], "o-",
                    color=[c / 255 for c in label.color], label=label.abbrev)
    ax.set_xlabel("GA (weeks)")
    ax.set_ylabel("mL")
    ax.set_title("tissue volumes", color="white")
    ax.legend(fontsize=7)
    ax.tick_params(colors="white")
    ax.xaxis.label.set_color("white")
    ax.yaxis.label.set_color("white")
    fig.suptitle("INFANiTEAtlas: T2 atlas with tissue overlay by gestational age (phantom demo)", color="white")
    fig.savefig(out, dpi=90, facecolor="black", bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    demo = Path((argv or sys.argv[1:] or ["/tmp/demo"])[0])
    folder = REPO / "Resources" / "Screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    registration_review(demo, folder / "INFANiTE-registration-review.png")
    atlas_browser(demo, folder / "INFANiTE-atlas.png")
    print(f"written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
