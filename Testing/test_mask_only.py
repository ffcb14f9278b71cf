"""Stacks with a brain mask and no tissue segmentation (what clinical pipelines have): valid input, trained on, and
an atlas whose labels are the templates' propagated by registration.  The phantom's stacks with their Seg column
emptied are the mask-only cohort; the phantom templates are its labels' truth."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["inr_decoder.hidden_size=32", "inr_decoder.num_hidden_layers=2", "inr_decoder.modulated_layers=[1]",
        "inr_decoder.latent_dim=[8,3,3,3]", "n_samples=1000", "max_steps=300", "checkpoint_every=100",
        "psf.samples_per_epoch=[2]", "optimizer.lr_inr=1e-3", "optimizer.lr_latent=1e-2"]


def cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "infanite", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def without_seg(manifest: Path, out: Path, edit=None) -> Path:
    """``manifest`` with every Seg cell emptied (paths made absolute), then ``edit(header, rows)``."""
    lines = manifest.read_text().splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    for row in rows:
        for i, name in enumerate(header):
            if name in ("T2w", "Mask") and row[i]:
                row[i] = str((manifest.parent / row[i]).resolve())
        row[header.index("Seg")] = ""
    if edit:
        edit(header, rows)
    out.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    """The phantom cohort (2 fetuses × 2 stacks, GA 27–29) and its mask-only manifest."""
    from infanite.simulation.stacks import tiny_phantom_cohort

    root = tmp_path_factory.mktemp("mask-only")
    made = tiny_phantom_cohort(root, weeks=(27, 28, 29), register=False)
    return {**made, "root": root, "mask_only": without_seg(made["manifest"], root / "mask_only.tsv")}


def test_a_mask_only_manifest_is_valid(cohort):
    from infanite.io.cohort_checks import load_cohort

    loaded = load_cohort(cohort["mask_only"])
    assert len(loaded.stacks) == 4 and all(s.seg is None and s.mask is not None for s in loaded.stacks)


def _replace_mask(cohort, tmp_path, row: int, change) -> Path:
    def edit(header, rows):
        source = Path(rows[row - 2][header.index("Mask")])
        img = nib.load(str(source))
        target = tmp_path / "bad_mask.nii.gz"
        nib.save(change(img), str(target))
        rows[row - 2][header.index("Mask")] = str(target)

    return without_seg(cohort["manifest"], tmp_path / "cohort.tsv", edit)


def _small(img):
    data = np.zeros(img.shape, np.uint8)
    centre = tuple(n // 2 for n in img.shape)
    data[tuple(slice(c - 3, c + 3) for c in centre)] = 1               # a 6-voxel cube: a few mL at most
    return nib.Nifti1Image(data, img.affine)


def _empty(img):
    return nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine)


def _shifted(img):
    affine = img.affine.copy()
    affine[0, 3] += 5.0
    return nib.Nifti1Image(np.asanyarray(img.dataobj), affine)


@pytest.mark.parametrize("change, expected", [
    (_small, ("row 3", "column Mask", "smaller than any plausible fetal brain", "Jarvis")),
    (_empty, ("row 3", "column Mask", "mask is all zero")),
    (_shifted, ("row 3", "column Mask", "voxel grid differs")),
])
def test_a_bad_mask_of_a_mask_only_stack_is_refused_with_its_row(cohort, tmp_path, change, expected):
    result = cli("validate", _replace_mask(cohort, tmp_path, 3, change))
    assert result.returncode == 2
    assert any(all(part in line for part in expected) for line in result.stderr.splitlines()), result.stderr


def test_a_row_with_neither_seg_nor_mask_is_refused_with_its_row(cohort, tmp_path):
    def edit(header, rows):
        rows[1][header.index("Mask")] = ""

    result = cli("validate", without_seg(cohort["manifest"], tmp_path / "cohort.tsv", edit))
    assert result.returncode == 2
    line = next(line for line in result.stderr.splitlines() if "row 3" in line)
    assert "no Seg and no Mask" in line


def test_the_plausible_brain_bound_follows_the_normative_curve():
    from infanite.reference.volumes import mean_total_brain_volume_ml, minimum_brain_mask_ml

    assert mean_total_brain_volume_ml(30) == pytest.approx(89.69 - 13.33 * 30 + 0.53 * 900)
    assert minimum_brain_mask_ml(30) == pytest.approx(0.5 * mean_total_brain_volume_ml(30))
    assert minimum_brain_mask_ml(None) == pytest.approx(minimum_brain_mask_ml(18))
    assert minimum_brain_mask_ml(21) < minimum_brain_mask_ml(30) < minimum_brain_mask_ml(38)


def test_a_brain_sample_of_a_mask_only_stack_is_taught_any_tissue():
    """−log P(any tissue) for BRAIN_LABEL; the usual CE for a label; nothing for IGNORE_LABEL."""
    from infanite.inr.data import BRAIN_LABEL, IGNORE_LABEL, _segmentation_loss

    logits = torch.tensor([[0.5, 1.0, -0.3, 2.0, 0.1], [0.2, 0.4, 1.5, -1.0, 0.3], [3.0, 0.0, 0.0, 0.0, 0.0]])
    p = torch.softmax(logits, 1)
    ones = torch.ones(3)
    weights = torch.ones(5)
    brain = _segmentation_loss(logits[:1], torch.tensor([BRAIN_LABEL]), ones[:1], weights)
    assert float(brain) == pytest.approx(-math.log(float(p[0, 1:-1].sum())), rel=1e-5)
    mixed = _segmentation_loss(logits, torch.tensor([BRAIN_LABEL, 2, IGNORE_LABEL]), ones, weights)
    expected = (-math.log(float(p[0, 1:-1].sum())) - math.log(float(p[1, 2]))) / 2
    assert float(mixed) == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def mask_only_run(cohort) -> dict:
    root = cohort["root"]
    reg = cli("register", "--manifest", cohort["mask_only"], "--templates", cohort["templates"], "--out",
              root / "reg", "--fixed-transforms", cohort["truth"])
    assert reg.returncode == 0, reg.stderr
    sets = [a for item in TINY for a in ("--set", item)]
    train = cli("train", "--manifest", root / "reg" / "registered.tsv", "--out", root / "run", *sets)
    assert train.returncode == 0, train.stderr
    return {"run": root / "run", "templates": cohort["templates"]}


def test_a_mask_only_run_records_that_no_stack_taught_labels(mask_only_run):
    stacks = json.loads((mask_only_run["run"] / "stacks.json").read_text())
    assert stacks["labelled_stacks"] == [] and len(stacks["stack_ids"]) == 4


def test_its_atlas_needs_templates_and_takes_their_labels_by_registration(mask_only_run, tmp_path):
    from infanite.evaluation.metrics import dice
    from infanite.io.images import load_labels
    from infanite.io.resample import resample
    from infanite.reference.templates import TemplateLibrary

    import shutil

    stacks = json.loads((mask_only_run["run"] / "stacks.json").read_text())
    assert stacks["templates"] == str(Path(mask_only_run["templates"]).resolve())    # recorded from registration
    unrecorded = tmp_path / "run"
    shutil.copytree(mask_only_run["run"], unrecorded)
    (unrecorded / "stacks.json").write_text(json.dumps({**stacks, "templates": None}))
    refused = cli("atlas", "--run", unrecorded, "--ga", "28", "--spacing", "1.5", "--out", tmp_path / "r")
    assert refused.returncode == 2 and "--templates" in refused.stderr and "no stack" in refused.stderr
    assert not (tmp_path / "r").exists()
    done = cli("atlas", "--run", mask_only_run["run"], "--ga", "28", "--spacing", "1.5", "--out", tmp_path / "a")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "a" / "atlas_manifest.json").read_text())
    entry = manifest["ga"]["28.0"]
    assert entry["labels"]["labels_from"] == "template" and entry["labels"]["method"] == "demons"
    assert entry["labels"]["template_ga_weeks"] == 28.0
    assert manifest["identity"]["labels"]["method"] == "demons"
    seg = load_labels(tmp_path / "a" / entry["files"]["dseg"])
    truth = TemplateLibrary.from_folder(mask_only_run["templates"]).get(28.0).seg
    scores = dice(seg.array, resample(truth, seg.grid, None, "nearest").array, range(1, 9))
    # measured 0.83 with demons (0.55 with B-spline) on this tiny 300-step model, whose brain mask is coarse; a label
    # map shuffled over the same brain scores below 0.2
    assert scores["mean"] > 0.6, scores
    assert len(set(np.unique(seg.array)) - {0}) >= 6
