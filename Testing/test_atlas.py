"""Atlas generation: GA kernel regression, atlas grid geometry, label cleaning, end to end on a tiny trained run."""
from __future__ import annotations

import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from infanite.atlas.generate import ga_list, generate
from infanite.cli.atlas import run as command
from infanite.cli.main import build_parser
from infanite.atlas.kernel import gkr_weights, regress_latent
from infanite.atlas.labels import clean_labels
from infanite.atlas.predict import atlas_grid, atlas_query, load_run, predict_grid
from infanite.io.layout import atlas_filenames, ATLAS_MANIFEST
from infanite.geometry import apply_matrix, direction_cosines, rotation_matrix, voxel_spacing
from infanite.io.images import Grid, load_labels, load_nifti
from infanite.reference.normative import MEASURE_LABELS
from infanite.reference.phantom import make_phantom
from infanite.io.resample import resample
from infanite.inr.train import build_model, train
from infanite.inr.config_loading import load_train_config

TINY = ["inr_decoder.hidden_size=64", "inr_decoder.num_hidden_layers=3", "inr_decoder.modulated_layers=[1,3]",
        "inr_decoder.latent_dim=[16,3,3,3]", "n_samples=2000", "epochs.train=10", "checkpoint_every=10",
        "inr_decoder.tf_dim=0", "optimizer.lr_inr=1e-3", "optimizer.lr_latent=1e-2"]
LABELS = list(range(1, 9))


# ------------------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and far more predictably on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def oblique_affine(spacing=(1.2, 0.9, 1.5), origin=(-31.0, 12.5, -40.0), angles=(20.0, -35.0, 50.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(np.asarray(angles)) @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def corners(shape, affine) -> np.ndarray:
    """World (RAS) positions of the 8 corner voxel centres, in a fixed corner order."""
    ijk = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)],
                   dtype=np.float64)
    return apply_matrix(affine, ijk)


def fake_run(path, affine, shape, seed=0, ga_weeks=(26.0, 28.0, None), step=10, total=10):
    """A run folder with an untrained tiny model (fast; for geometry and command-line checks)."""
    path.mkdir(parents=True)
    config = load_train_config(None, TINY)
    c = corners(shape, affine)
    centre, half = (c.min(0) + c.max(0)) / 2, (c.max(0) - c.min(0)) / 2
    torch.manual_seed(seed)
    model = build_model(config, len(ga_weeks), 9, centre, half)
    ids = [f"s{i}" for i in range(len(ga_weeks))]
    torch.save({"model": model.state_dict(), "global_step": step, "total_steps": total, "stack_ids": ids,
                "config": config.to_dict()}, path / "checkpoint.pt")
    config.save_yaml(path / "config.yaml")
    (path / "stacks.json").write_text(json.dumps({
        "stack_ids": ids, "ga_weeks": list(ga_weeks), "halo_label": 9, "label_values": LABELS,
        "grid_shape": list(shape), "grid_voxel_to_ras": np.asarray(affine).tolist(), "centre_mm": centre.tolist(),
        "half_extent_mm": half.tolist()}))
    return path


def snapshot(folder) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}


def dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ------------------------------------------------------------------------------------------------ kernel regression

def test_equal_gas_give_equal_weights():
    kw = gkr_weights([28.0, 28.0, 28.0, 28.0], 28.0)
    np.testing.assert_allclose(kw.weights, 0.25)
    assert kw.ess == pytest.approx(4.0) and kw.warnings == ()


def test_ga_at_an_isolated_stack_takes_all_the_weight():
    kw = gkr_weights([20.0, 28.0, 28.3, 36.0], 20.0, sigma_weeks=0.5)
    assert kw.weights[0] == pytest.approx(1.0, abs=1e-12)
    assert kw.weights.sum() == pytest.approx(1.0)
    assert kw.ess == pytest.approx(1.0, abs=1e-9)
    assert any("effective sample size 1.00" in w for w in kw.warnings)      # ESS < 3 is flagged


def test_ess_counts_fetuses_not_stacks():
    """Three stacks of one fetus are one sample: the ESS sums each fetus's weights first."""
    one_fetus = gkr_weights([28.0, 28.0, 28.0], 28.0, stack_fetus=[0, 0, 0])
    assert one_fetus.ess == pytest.approx(1.0) and one_fetus.ess_stacks == pytest.approx(3.0)
    assert any("fetuses" in w and "widen --sigma" in w for w in one_fetus.warnings)
    three = gkr_weights([28.0, 28.0, 28.0], 28.0, stack_fetus=[0, 1, 2])
    assert three.ess == pytest.approx(3.0) and three.warnings == ()
    a = math.exp(-0.5 * (1.0 / 0.5) ** 2)
    mixed = gkr_weights([28.0, 28.0, 29.0], 28.0, stack_fetus=["f1", "f1", "f2"])
    assert mixed.ess == pytest.approx((2 + a) ** 2 / (4 + a * a))


def test_ess_matches_the_analytic_value():
    a = math.exp(-0.5)                                  # stacks at 28 and 29, target 28, σ = 1
    kw = gkr_weights([28.0, 29.0], 28.0, sigma_weeks=1.0)
    np.testing.assert_allclose(kw.weights, [1 / (1 + a), a / (1 + a)])
    assert kw.ess == pytest.approx((1 + a) ** 2 / (1 + a * a))
    assert gkr_weights([27.0, 28.0], 27.5).ess == pytest.approx(2.0)


def test_top_k_keeps_the_k_nearest_and_unknown_gas_get_zero():
    kw = gkr_weights([26.0, 27.0, 28.0, 29.0, 30.0], 28.2, sigma_weeks=1.0, top_k=2)
    assert np.count_nonzero(kw.weights) == 2 and kw.weights[2] > kw.weights[3] > 0
    r = math.exp(-0.5 * (0.8 ** 2 - 0.2 ** 2))
    assert kw.weights[3] / kw.weights[2] == pytest.approx(r)
    unknown = gkr_weights([None, 28.0, float("nan"), 28.0], 28.0)
    np.testing.assert_allclose(unknown.weights, [0.0, 0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="known gestational age"):
        gkr_weights([None, None], 28.0)
    with pytest.raises(ValueError, match="top_k"):
        gkr_weights([28.0], 28.0, top_k=0)


def test_ga_outside_the_trained_range_is_generated_with_a_warning():
    kw = gkr_weights([27.0, 27.5, 28.0, 28.0, 28.5], 31.0)
    assert np.isfinite(kw.weights).all() and kw.weights.sum() == pytest.approx(1.0)   # far away: no 0/0
    assert any("outside the trained range 27.0-28.5" in w for w in kw.warnings)
    assert kw.support_weeks == (27.0, 28.5)


def test_regress_latent_is_the_weighted_sum():
    torch.manual_seed(0)
    latents = torch.randn(3, 4, 3, 3, 3)
    w = np.array([0.2, 0.5, 0.3])
    out = regress_latent(latents, w)
    assert out.shape == (1, 4, 3, 3, 3)
    torch.testing.assert_close(out[0], 0.2 * latents[0] + 0.5 * latents[1] + 0.3 * latents[2])
    with pytest.raises(ValueError, match="one weight per stack"):
        regress_latent(latents, [0.5, 0.5])


# ------------------------------------------------------------------------------------------------ geometry

@pytest.mark.parametrize("spacing", [2.0, (2.5, 1.0, 3.0), 0.7])
def test_atlas_grid_keeps_the_oblique_training_field_of_view(spacing):
    shape, affine = (50, 61, 43), oblique_affine()
    grid = atlas_grid(shape, affine, spacing)
    new = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    np.testing.assert_allclose(voxel_spacing(grid.voxel_to_ras), new, atol=1e-9)
    np.testing.assert_allclose(direction_cosines(grid.voxel_to_ras), direction_cosines(affine), atol=1e-9)
    # corner voxel centres within half a new voxel of the training corners (measured along each grid axis)
    offsets = (corners(grid.shape, grid.voxel_to_ras) - corners(shape, affine)) @ direction_cosines(affine)
    assert np.all(np.abs(offsets) < new / 2 + 1e-9)
    centre = lambda s, a: apply_matrix(a, (np.asarray(s) - 1) / 2.0)   # noqa: E731
    np.testing.assert_allclose(centre(grid.shape, grid.voxel_to_ras), centre(shape, affine), atol=1e-9)
    assert not np.allclose(grid.voxel_to_ras[:3, 3], 0)            # a real origin, not a bare diagonal


def test_generated_nifti_has_the_atlas_grid_in_nibabel_and_simpleitk(tmp_path):
    shape, affine = (30, 36, 28), oblique_affine(spacing=(2.0, 2.0, 2.5))
    run = fake_run(tmp_path / "run", affine, shape)
    result = generate(run, [27.0], tmp_path / "atlas", spacing_mm=4.0)
    expected = atlas_grid(shape, affine, 4.0)
    for kind in ("T2w", "dseg"):
        path = tmp_path / "atlas" / result["ga"]["27.0"]["files"][kind]
        img = nib.load(str(path))
        assert img.shape == expected.shape
        np.testing.assert_allclose(img.affine, expected.voxel_to_ras, atol=1e-4)
        itk = sitk.ReadImage(str(path))
        for ijk in ((0, 0, 0), (3, 1, 2)):
            lps = np.asarray(itk.TransformIndexToPhysicalPoint(ijk))
            ras = np.diag([-1.0, -1.0, 1.0]) @ lps
            np.testing.assert_allclose(ras, apply_matrix(img.affine, np.asarray(ijk, float)), atol=1e-3)
    assert nib.load(str(tmp_path / "atlas" / "atlas_ga-27.0_dseg.nii.gz")).get_data_dtype() == np.uint8


def test_chunked_prediction_matches_direct_queries(tmp_path):
    shape, affine = (20, 22, 18), oblique_affine(spacing=(2.0, 2.0, 2.0))
    run = load_run(fake_run(tmp_path / "run", affine, shape))
    model = run.model("cpu")
    grid = Grid((7, 5, 6), atlas_grid(shape, affine, 5.0).voxel_to_ras)
    latent = regress_latent(model.latents.detach(), [0.5, 0.5, 0.0])
    query = atlas_query(model, 27.0, [0.5, 0.5, 0.0])          # the decoder at that latent
    a = predict_grid(query, grid, "cpu", LABELS, probabilities=True, chunk=17)
    b = predict_grid(query, grid, "cpu", LABELS, probabilities=True)
    np.testing.assert_allclose(a.intensity, b.intensity, atol=1e-5)
    assert np.array_equal(a.classes, b.classes) and a.probabilities.shape == (7, 5, 6, 8)
    ijk = np.array([[0, 0, 0], [6, 4, 5], [3, 1, 2]])
    xyz = torch.as_tensor(apply_matrix(grid.voxel_to_ras, ijk), dtype=torch.float32)
    with torch.no_grad():
        direct = model(xyz, torch.zeros(3, dtype=torch.long), latents=latent)
    for n, (i, j, k) in enumerate(ijk):
        assert a.intensity[i, j, k] == pytest.approx(direct[n, 0].item(), abs=1e-5)
        assert a.classes[i, j, k] == direct[n, 1:].argmax().item()


# ------------------------------------------------------------------------------------------------ cleaning

def test_small_island_is_reassigned_to_the_surrounding_label():
    seg = np.zeros((24, 24, 24), np.int16)
    seg[2:20, 2:20, 2:20] = 1
    seg[2:20, 2:20, 14:20] = 2                    # label 2's main body
    seg[6:8, 6:8, 5:7] = 2                        # an 8-voxel island of 2 inside 1
    seg[22, 22, 22] = 1                           # a detached speck of brain
    clean, report = clean_labels(seg)
    assert np.all(clean[6:8, 6:8, 5:7] == 1)
    assert np.all(clean[2:20, 2:20, 14:20] == 2)
    assert clean[22, 22, 22] == 0
    assert report.reassigned_voxels == 8 and report.removed_voxels == 1 and not report.kept_raw


def test_a_volume_of_one_small_component_is_not_blanked():
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[4:6, 4:6, 4:6] = 3                        # 8 voxels: below the 10-voxel island size
    clean, _ = clean_labels(seg)
    assert np.array_equal(clean, seg)
    two = np.zeros((10, 10, 10), np.uint8)
    two[1, 1, 1], two[8, 8, 8] = 5, 5             # two equal specks: one is kept, never none
    assert clean_labels(two)[0].sum() == 5


# ------------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def trained(phantom_registered, tmp_path_factory):
    """A tiny run trained 150 steps on the 2-subject phantom cohort (GA 27.4 and 28.8 weeks)."""
    root = tmp_path_factory.mktemp("atlas")
    registered = phantom_registered["registered"]
    train(registered, load_train_config(None, TINY + ["max_steps=150"]), root / "run")
    return {"root": root, "run": root / "run", "registered": registered, "templates": phantom_registered["templates"]}


@pytest.fixture(scope="module")
def atlas(trained):
    out = trained["root"] / "atlas"
    result = generate(trained["run"], [28.5, 27.5], out, spacing_mm=3.0)
    return out, result


def test_atlas_files_labels_and_overlap_with_the_template(trained, atlas):
    out, result = atlas
    assert result["generated"] == ["27.5", "28.5"]
    for ga in (27.5, 28.5):
        names = atlas_filenames(ga)
        assert (out / f"atlas_ga-{ga:.1f}_T2w.nii.gz").is_file() and (out / names["dseg"]).is_file()
        assert not (out / names["probseg"]).exists()
    t2 = load_nifti(out / "atlas_ga-28.5_T2w.nii.gz")
    dseg = load_labels(out / "atlas_ga-28.5_dseg.nii.gz")
    assert t2.shape == dseg.shape == atlas_grid((70, 80, 70), np.diag([1.6, 1.6, 1.6, 1]), 3.0).shape
    assert set(np.unique(dseg.array)) <= {0, *LABELS}
    brain = dseg.array > 0
    assert brain.sum() > 1000
    assert t2.array.min() >= 0 and np.all(t2.array[~brain] == 0) and t2.array[brain].max() > 0
    template_seg = make_phantom(28.5, 1.6)[2]
    on_template = resample(dseg, template_seg.grid, None, "nearest").array > 0
    assert dice(on_template, template_seg.array > 0) > 0.8           # 0.96 when written
    support = resample(load_nifti(trained["run"] / "support_mask.nii.gz"), dseg.grid, None, "nearest").array > 0
    assert support.sum() > brain.sum() and not np.any(brain & ~support)   # nothing outside the trained region
    # volumes.tsv: one row per GA, tissue columns + the normative measures (consistent sums)
    lines = (out / "volumes.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert len(lines) == 3 and header[0] == "ga_weeks" and set(MEASURE_LABELS) <= set(header)
    row = dict(zip(header, map(float, lines[2].split("\t"))))
    assert row["ga_weeks"] == 28.5
    assert row["ICV"] == pytest.approx(brain.sum() * 27.0 / 1000, rel=1e-3)
    assert row["TBV"] == pytest.approx(sum(row[a] for a in MEASURE_LABELS["TBV"]), abs=0.01)
    for png in ("growth.png", "montage.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / ATLAS_MANIFEST).read_text())
    assert manifest["status"] == "complete" and list(manifest["ga"]) == ["27.5", "28.5"]
    assert manifest["checkpoint"]["global_step"] == 150 and manifest["spacing_mm"] == [3.0, 3.0, 3.0]
    entry = manifest["ga"]["28.5"]
    # 2 stacks of one fetus at 27.4 w, 2 of another at 28.8 w, σ 0.5: ESS 2.42 stacks, half that in fetuses
    assert entry["ess_stacks"] == pytest.approx(2.42, abs=0.01)
    assert entry["ess"] == pytest.approx(1.21, abs=0.01)
    assert any("effective sample size" in w for w in entry["warnings"])
    assert entry["files"] == {"T2w": "atlas_ga-28.5_T2w.nii.gz", "dseg": "atlas_ga-28.5_dseg.nii.gz"}


def test_rerun_is_a_no_op_and_a_lost_file_is_regenerated_alone(trained, atlas, tmp_path):
    out = tmp_path / "atlas"
    shutil.copytree(atlas[0], out)
    before = snapshot(out)
    again = generate(trained["run"], [27.5, 28.5], out, spacing_mm=3.0)
    assert again["generated"] == [] and snapshot(out) == before
    (out / "atlas_ga-28.5_T2w.nii.gz").unlink()
    resumed = generate(trained["run"], [27.5, 28.5], out, spacing_mm=3.0)
    assert resumed["generated"] == ["28.5"] and resumed["skipped"] == ["27.5"]
    after = snapshot(out)
    for name in ("atlas_ga-27.5_T2w.nii.gz", "atlas_ga-27.5_dseg.nii.gz"):
        assert after[name] == before[name]
    assert after["atlas_ga-28.5_dseg.nii.gz"][1] == before["atlas_ga-28.5_dseg.nii.gz"][1]   # deterministic


def test_gas_made_in_two_processes_equal_those_made_in_one(trained, atlas, tmp_path):
    """``jobs=2`` (``--jobs 2``): every GA made in its own process; the files and the manifest's entries are those
    of the one-process atlas (voxel values to float tolerance; the prediction is the same computation)."""
    out = tmp_path / "atlas"
    result = generate(trained["run"], [27.5, 28.5], out, spacing_mm=3.0, jobs=2)
    assert sorted(result["generated"]) == ["27.5", "28.5"]
    for ga in ("27.5", "28.5"):
        for kind in ("T2w", "dseg"):
            ours = load_nifti(out / f"atlas_ga-{ga}_{kind}.nii.gz", dtype=np.float64)
            one = load_nifti(atlas[0] / f"atlas_ga-{ga}_{kind}.nii.gz", dtype=np.float64)
            np.testing.assert_array_equal(ours.voxel_to_ras, one.voxel_to_ras)
            np.testing.assert_allclose(ours.array, one.array, atol=1e-5)
        ours, one = result["ga"][ga], atlas[1]["ga"][ga]
        assert ours["volumes_ml"] == one["volumes_ml"] and ours["weights"] == one["weights"]
    manifest = json.loads((out / ATLAS_MANIFEST).read_text())
    assert manifest["status"] == "complete" and list(manifest["ga"]) == ["27.5", "28.5"]
    with pytest.raises(ValueError, match="--jobs must be a whole number >= 1"):
        generate(trained["run"], [27.5], tmp_path / "other", spacing_mm=3.0, jobs=0)


def test_atlas_is_capped_at_the_runs_intensity_ceiling(trained, atlas, tmp_path):
    """Training wrote the ceiling (one per stack GA), and a run finished without one gets the same back-filled
    from its data and checkpoint; the atlas records it per GA and stays below it.  With the ceiling lowered to the
    median of the measured samples (in one process and in two), the capped T2w is exactly the uncapped one
    (``intensity_ceiling=False``, ``--no-intensity-ceiling``) clipped there, the manifest counts the clipped brain
    voxels, and an uncapped atlas is another atlas for an output folder."""
    from infanite.inr.ceiling import (ceiling_at, read_intensity_ceiling, write_intensity_ceiling,
                                      write_run_intensity_ceiling)
    from infanite.inr.samples import pack_acquired

    table = read_intensity_ceiling(trained["run"])
    stacks = json.loads((trained["run"] / "stacks.json").read_text())
    assert table["ga_weeks"] == sorted(set(round(g, 4) for g in stacks["ga_weeks"]))
    assert all(0.3 < c < 2.0 for c in table["ceiling"])
    out, result = atlas
    for ga in ("27.5", "28.5"):
        entry = result["ga"][ga]
        assert entry["intensity_ceiling"] == pytest.approx(ceiling_at(table, float(ga)), abs=1e-6)
        assert load_nifti(out / f"atlas_ga-{ga}_T2w.nii.gz").array.max() <= entry["intensity_ceiling"] + 1e-6

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "intensity_ceiling.json").unlink()            # a run finished before ceilings: back-filled the same
    write_run_intensity_ceiling(run, trained["registered"])
    assert read_intensity_ceiling(run) == table
    data = pack_acquired(trained["registered"], LABELS)
    write_intensity_ceiling(run, data, None, quantile=50.0)
    low = read_intensity_ceiling(run)
    capped = generate(run, [28.5], tmp_path / "capped", spacing_mm=3.0)["ga"]["28.5"]
    free = generate(run, [28.5], tmp_path / "free", spacing_mm=3.0, intensity_ceiling=False)["ga"]["28.5"]
    assert "intensity_ceiling" not in free
    cap = ceiling_at(low, 28.5)
    assert capped["intensity_ceiling"] == pytest.approx(cap, abs=1e-6)
    a = load_nifti(tmp_path / "capped" / "atlas_ga-28.5_T2w.nii.gz").array
    b = load_nifti(tmp_path / "free" / "atlas_ga-28.5_T2w.nii.gz").array
    np.testing.assert_allclose(a, np.minimum(b, np.float32(cap)), atol=1e-6)
    assert capped["intensity_capped_voxels"] == int(np.count_nonzero(b > np.float32(cap))) > 0
    two = generate(run, [27.5, 28.5], tmp_path / "two", spacing_mm=3.0, jobs=2)["ga"]    # --jobs: capped the same
    assert two["28.5"]["intensity_capped_voxels"] == capped["intensity_capped_voxels"]
    np.testing.assert_allclose(load_nifti(tmp_path / "two" / "atlas_ga-28.5_T2w.nii.gz").array, a, atol=1e-5)
    assert load_nifti(tmp_path / "two" / "atlas_ga-27.5_T2w.nii.gz").array.max() <= ceiling_at(low, 27.5) + 1e-6
    with pytest.raises(ValueError, match="intensity ceiling on"):
        generate(run, [28.5], tmp_path / "capped", spacing_mm=3.0, intensity_ceiling=False)


def test_a_different_atlas_in_the_output_folder_is_refused(trained, atlas, tmp_path):
    out = tmp_path / "atlas"
    shutil.copytree(atlas[0], out)
    other = tmp_path / "other_run"
    shutil.copytree(trained["run"], other)
    state = torch.load(other / "checkpoint.pt", weights_only=True)
    state["model"]["latents"] += 0.01
    torch.save(state, other / "checkpoint.pt")
    before = snapshot(out)
    with pytest.raises(ValueError, match="different atlas"):
        generate(other, [28.5], out, spacing_mm=3.0)
    with pytest.raises(ValueError, match="different atlas"):
        generate(trained["run"], [28.5], out, spacing_mm=3.0, sigma_weeks=1.0)
    assert snapshot(out) == before
    result = generate(other, [28.0], out, spacing_mm=3.0, overwrite=True)
    assert result["generated"] == ["28.0"]
    assert sorted(p.name for p in out.glob("atlas_ga-*")) == ["atlas_ga-28.0_T2w.nii.gz",
                                                              "atlas_ga-28.0_dseg.nii.gz"]
    assert json.loads((out / ATLAS_MANIFEST).read_text())["run_dir"] == str(other.resolve())


def test_unfinished_or_incomplete_runs_are_refused(trained, tmp_path):
    config = load_train_config(None, TINY + ["max_steps=20"])
    train(trained["registered"], config, tmp_path / "half", stop_after_steps=10)
    with pytest.raises(ValueError, match=r"step 10 of 20.*--resume"):
        generate(tmp_path / "half", [28.0], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    partial = tmp_path / "partial"
    shutil.copytree(trained["run"], partial)
    (partial / "stacks.json").unlink()
    with pytest.raises(ValueError, match="lacks stacks.json"):
        generate(partial, [28.0], tmp_path / "out")


# ------------------------------------------------------------------------------------------------ command line

def parse(argv):
    return build_parser().parse_args(["atlas", *argv])


def test_ga_range_is_inclusive():
    assert ga_list(None, (24.0, 26.0), 0.5) == [24.0, 24.5, 25.0, 25.5, 26.0]
    assert ga_list([30.0, 22.5]) == [30.0, 22.5]
    with pytest.raises(ValueError, match="exactly one"):
        ga_list(None, None)


def test_command_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    assert command(parse(["--run", str(tmp_path / "missing"), "--ga", "28", "--out", str(tmp_path / "o")])) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1
    assert command(parse(["--run", str(tmp_path), "--out", str(tmp_path / "o")])) == 2
    assert "exactly one of --ga" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--run", "r", "--out", "o", "--ga", "28", "--ga-range", "24", "26"])
    assert command(parse(["--run", str(tmp_path), "--ga", "28", "--out", str(tmp_path / "o"),
                          "--position-sigma", "-1"])) == 2
    assert "--position-sigma must be a number of weeks >= 0" in capsys.readouterr().err
    assert command(parse(["--run", str(tmp_path), "--ga", "28", "--out", str(tmp_path / "o"),
                          "--appearance-sigma", "nan"])) == 2
    assert "--appearance-sigma must be a number of weeks >= 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_command_writes_an_atlas_with_probabilities_and_progress(tmp_path, capsys):
    run = fake_run(tmp_path / "run", oblique_affine(spacing=(2.0, 2.0, 2.0)), (24, 26, 22))
    events = tmp_path / "progress.jsonl"
    args = parse(["--run", str(run), "--ga-range", "26", "28", "--ga-step", "2", "--spacing", "4", "--out",
                  str(tmp_path / "atlas"), "--probabilities", "--progress-json", str(events)])
    assert command(args) == 0
    captured = capsys.readouterr()
    assert "atlas written" in captured.out and str(tmp_path / "atlas") in captured.out
    assert "outside the trained range" not in captured.err           # 26 and 28 lie within the stacks' GAs
    probseg = nib.load(str(tmp_path / "atlas" / "atlas_ga-26.0_probseg.nii.gz"))
    p = np.asarray(probseg.dataobj)
    assert p.shape == atlas_grid((24, 26, 22), oblique_affine(spacing=(2.0, 2.0, 2.0)), 4.0).shape + (8,)
    assert p.min() >= 0 and p.sum(-1).max() <= 1 + 1e-5
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert records[0]["stage"] == "atlas" and records[-1]["step"] == records[-1]["total"]
    manifest = json.loads((tmp_path / "atlas" / ATLAS_MANIFEST).read_text())
    assert list(manifest["ga"]) == ["26.0", "28.0"]
    assert manifest["ga"]["28.0"]["weights"] == {"s1": 1.0} or manifest["ga"]["28.0"]["weights"]["s1"] > 0.99


def test_stacks_of_estimated_ga_take_no_part_in_the_regression_unless_accepted(trained, tmp_path):
    """A GA that register estimated (no scan_age) would condition the atlas on its own guess: left out by default."""
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    stacks = json.loads((run / "stacks.json").read_text())
    estimated = [sid for sid, g in zip(stacks["stack_ids"], stacks["ga_weeks"]) if g > 28.0]   # the 28.8 w fetus
    assert len(estimated) == 2
    stacks["ga_estimated"] = estimated
    (run / "stacks.json").write_text(json.dumps(stacks))
    result = generate(run, [28.5], tmp_path / "atlas", spacing_mm=4.0)
    entry = result["ga"]["28.5"]
    assert set(entry["weights"]) == set(stacks["stack_ids"]) - set(estimated)
    manifest = json.loads((tmp_path / "atlas" / ATLAS_MANIFEST).read_text())
    assert manifest["ga_estimated_stacks"] == estimated and manifest["ga_estimated_used"] is False
    accepted = generate(run, [28.5], tmp_path / "accepted", spacing_mm=4.0, accept_estimated_ga=True)
    assert set(accepted["ga"]["28.5"]["weights"]) == set(stacks["stack_ids"])
    stacks["ga_estimated"] = list(stacks["stack_ids"])
    (run / "stacks.json").write_text(json.dumps(stacks))
    with pytest.raises(ValueError, match="--accept-estimated-ga"):
        generate(run, [28.5], tmp_path / "none", spacing_mm=4.0)
    assert not (tmp_path / "none").exists()


def test_ga_local_support_is_where_the_fetuses_near_the_ga_were_seen(tmp_path):
    """Two fetuses, a young one seen in a small cube and an old one in a large cube: with the kernel on the young
    fetus the support is its cube, not the union; with equal weights (share 0.5 ≥ 0.5) it is the union; a run
    without the per-fetus file falls back to the union."""
    from infanite.atlas.predict import GASupport
    from infanite.io.images import Volume, save_nifti, save_nifti_array

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -30.0, -10.0]
    small = np.zeros((20, 20, 20), bool)
    small[8:12, 8:12, 8:12] = True
    large = np.zeros_like(small)
    large[4:16, 4:16, 4:16] = True
    save_nifti_array(np.stack([small, large], -1).astype(np.uint8), affine, tmp_path / "support_fetuses.nii.gz")
    save_nifti(Volume((small | large).astype(np.uint8), affine), tmp_path / "support_mask.nii.gz", dtype=np.uint8)
    grid = Grid((20, 20, 20), affine)
    support = GASupport(tmp_path, grid, stack_fetus=[0, 0, 1])     # 3 stacks: two of the young fetus
    assert support.ga_local
    assert np.array_equal(support.at([0.5, 0.5, 0.0]), small)
    assert np.array_equal(support.at([0.25, 0.25, 0.5]), large)
    assert np.array_equal(support.at([0.05, 0.05, 0.9]), large)
    fine = atlas_grid((20, 20, 20), affine, 1.0)                  # on a finer atlas grid: the same region in mm
    at_fine = support.__class__(tmp_path, fine, stack_fetus=[0, 0, 1]).at([0.5, 0.5, 0.0])
    centres = apply_matrix(fine.voxel_to_ras, np.argwhere(at_fine))
    inside = apply_matrix(affine, np.argwhere(small))
    assert len(centres) > 0
    assert np.all(centres.min(0) >= inside.min(0) - 1.0) and np.all(centres.max(0) <= inside.max(0) + 1.0)
    assert np.all(centres.min(0) <= inside.min(0)) and np.all(centres.max(0) >= inside.max(0))
    (tmp_path / "support_fetuses.nii.gz").unlink()
    fallback = GASupport(tmp_path, grid, stack_fetus=[0, 0, 1])
    assert not fallback.ga_local and np.array_equal(fallback.at([1.0, 0.0, 0.0]), small | large)
