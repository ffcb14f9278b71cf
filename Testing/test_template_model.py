"""The exact data term (acquired samples, unbiased PSF estimator, intensity model) and the deformation-aware
template model: analytic checks, the phantom cohort, exact resume, diagnostics, refusals, atlas generation."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

from infanite.inr.config import TrainConfigError
from infanite.inr.config_loading import load_train_config
from infanite.inr.data import IGNORE_LABEL, split_psf_loss, weighted_loss
from infanite.inr.intensity import StackIntensity, monomials
from infanite.inr.train import train

SMALL = ["n_samples=1500", "epochs.train=50", "checkpoint_every=10", "psf.samples_per_epoch=[4]",
         "inr_decoder.hidden_size=32", "inr_decoder.num_hidden_layers=2", "inr_decoder.modulated_layers=[1]",
         "inr_decoder.latent_dim=[8,3,3,3]", "optimizer.lr_inr=1e-3", "optimizer.lr_latent=1e-2"]
TEMPLATE = SMALL + ["model=template", "template.encoding=grid", "template.grid_resolutions=[8,16,32]",
                    "template.ga_nodes=[2,2,2]", "template.deformation_warmup=10", "template.hidden_size=32"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------- the data term

def test_split_estimator_is_unbiased_where_the_mean_estimator_is_not():
    """1-D, a sharp edge seen through a Gaussian PSF: with the exact blurred value as the target, the split-sample
    product averages to 0 (its expectation is (Kf − y)² = 0), the squared error of the mean of P samples to
    Var_PSF(f)/P > 0, a bias that only a flatter (blurrier) f reduces."""
    generator = torch.Generator().manual_seed(0)
    n, p, sigma = 200_000, 4, 1.27
    x = torch.full((n,), 0.3)                                  # 0.3 mm from the edge
    target = torch.distributions.Normal(0.0, sigma).cdf(x)     # Kf: the blurred step, exactly
    jitter = x[:, None] + sigma * torch.randn(n, p, generator=generator)
    edge = (jitter > 0).float()[..., None]                     # f(x_p) for the sharp step
    samples = torch.cat([edge, torch.zeros_like(edge)], dim=-1)  # (N, P, 1 intensity + 1 class)
    weight, label, cw = torch.ones(n), torch.full((n,), IGNORE_LABEL), torch.ones(1)
    _, split, _ = split_psf_loss(samples, target, label, weight, cw)
    _, mean_mse, _ = weighted_loss(samples.mean(1), target, label, weight, cw, "mse")
    variance = float(target[0] * (1 - target[0]))              # Var of a Bernoulli(Kf) sample
    assert abs(split.item()) < 5e-3
    assert mean_mse.item() == pytest.approx(variance / p, rel=0.03)
    # P = 1 reduces to the plain squared error
    _, single, _ = split_psf_loss(samples[:, :1], target, label, weight, cw)
    assert single.item() == pytest.approx(((edge[:, 0, 0] - target) ** 2).mean().item(), rel=1e-6)


def test_samples_without_a_segmentation_teach_intensity_only():
    samples = torch.tensor([[[0.5, 2.0, 0.0]], [[0.5, 0.0, 2.0]]])        # (N=2, P=1, 1 + 2 classes)
    intensity, weight, cw = torch.tensor([0.5, 0.5]), torch.ones(2), torch.ones(2)
    _, _, seg_both = split_psf_loss(samples, intensity, torch.tensor([0, 1]), weight, cw)
    _, _, seg_first = split_psf_loss(samples, intensity, torch.tensor([0, IGNORE_LABEL]), weight, cw)
    ce_first = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    assert seg_first.item() == pytest.approx(ce_first.item(), rel=1e-6)
    assert seg_both.item() == pytest.approx(ce_first.item(), rel=1e-6)         # the second is symmetric


def test_intensity_model_applies_gain_and_a_smooth_bias():
    model = StackIntensity(2, [10.0, 0.0, 0.0], [20.0, 20.0, 20.0], bias_order=2)
    assert model.bias.shape == (2, 9) and monomials(torch.zeros(1, 3), 1).shape == (1, 3)
    coords = torch.tensor([[10.0, 0.0, 0.0], [30.0, 0.0, 0.0]])              # box centre and +x face
    intensity = torch.tensor([0.5, 0.5])
    assert torch.allclose(model.apply(intensity, coords, torch.tensor([0, 1])), intensity)   # identity at start
    with torch.no_grad():
        model.log_gain[1] = math.log(2.0)
        model.bias[1, 0] = 0.1                                                # the x term
    out = model.apply(intensity, coords, torch.tensor([1, 1]))
    assert out[0].item() == pytest.approx(1.0) and out[1].item() == pytest.approx(math.exp(0.1))
    assert model.penalty(1.0, 0.0).item() == pytest.approx((math.log(2.0) / 2) ** 2)


# --------------------------------------------------------------------------------------------- acquired samples

def test_acquired_samples_land_on_the_template_brain(registered, phantom_registered):
    """Every acquired brain voxel, mapped by its registration (here the true pose), lies in the template's brain:
    the samples are the stacks' own voxels in template space, not a resampled copy."""
    from infanite.inr.samples import pack_acquired
    from infanite.io.cohort_checks import load_cohort
    from infanite.io.images import load_nifti
    from infanite.io.resample import resample
    from infanite.reference.templates import TemplateLibrary

    data = pack_acquired(registered, list(range(1, 9)), halo_mm=4.0)
    assert data.source == "acquired" and data.fetus_ids and len(data.stack_fetus) == len(data.stack_ids)
    cohort = load_cohort(registered)
    acquired = sum(int((load_nifti(r.extra["source_Mask"], dtype=None).array > 0).sum()) for r in cohort.stacks)
    brain = data.label < data.halo_label
    assert int(brain.sum()) == acquired                           # one sample per acquired brain voxel
    library = TemplateLibrary.from_folder(phantom_registered["templates"])
    template = library.get(28.0)
    grid = template.mask.grid
    ijk = np.rint((np.c_[data.coords_mm.numpy(), np.ones(len(data.coords_mm))] @
                   np.linalg.inv(grid.voxel_to_ras).T)[:, :3]).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(grid.shape)), axis=1)
    dilated = resample(template.mask, grid, None, "nearest").array > 0
    from scipy import ndimage
    dilated = ndimage.binary_dilation(dilated, iterations=3)
    hits = np.zeros(len(ijk), bool)
    hits[inside] = dilated[tuple(ijk[inside].T)]
    assert hits[brain.numpy()].mean() > 0.95                     # ages 27-29 against the week-28 template
    assert data.weight[~brain].max().item() < 1.0 and data.weight[brain].min().item() == 1.0
    assert torch.all(data.weight[~brain] == 0.5)                                  # data.halo_weight's default
    heavier = pack_acquired(registered, list(range(1, 9)), halo_mm=4.0, halo_weight=1.0)
    assert torch.equal(heavier.label, data.label) and torch.all(heavier.weight == 1.0)
    assert torch.all(data.intensity[~brain] == 0)                      # data.halo_intensity's default: zero


def test_halo_intensity_targets_are_zero_measured_or_none(registered):
    """``data.halo_intensity``: a halo sample's target is 0, the stack's own (normalised) value at that voxel, or
    none (NaN); the brain samples, labels and weights are the same in the three."""
    from infanite.inr.samples import halo_targets, pack_acquired
    from infanite.io.cohort_checks import load_cohort
    from infanite.io.images import load_nifti
    from infanite.inr.data import brain_normalised

    packs = {mode: pack_acquired(registered, list(range(1, 9)), halo_mm=4.0, halo_intensity=mode)
             for mode in ("zero", "measured", "none")}
    zero, measured, none = packs["zero"], packs["measured"], packs["none"]
    halo = zero.label == zero.halo_label
    for other in (measured, none):
        assert torch.equal(other.label, zero.label) and torch.equal(other.weight, zero.weight)
        assert torch.equal(other.intensity[~halo], zero.intensity[~halo])
    assert torch.isnan(none.intensity[halo]).all() and torch.isfinite(none.intensity[~halo]).all()
    # measured: the first stack's halo values are its own voxels, normalised over its brain, in the packing order
    from scipy import ndimage
    from infanite.geometry import voxel_spacing

    record = load_cohort(registered).stacks[0]
    t2 = load_nifti(record.extra["source_T2w"])
    brain = load_nifti(record.extra["source_Mask"], dtype=None).array > 0
    outside = ndimage.distance_transform_edt(~brain, sampling=voxel_spacing(t2.voxel_to_ras))
    expected = brain_normalised(t2.array, brain)[(~brain) & (outside <= 4.0)]
    values = measured.intensity[(zero.stack == 0) & halo].numpy()
    assert np.allclose(values, expected)
    assert values.max() > 0.05                       # the slice profile reaches the bright edge: not all zero
    with pytest.raises(ValueError, match="data.halo_intensity"):
        halo_targets(np.zeros(3, np.float32), "blurred")


def test_a_sample_without_an_intensity_target_teaches_its_label_only():
    """A NaN intensity (``data.halo_intensity: none``) removes the sample from the intensity term, in both the
    value and the normaliser, and keeps its label; ``loss_norms`` counts it the same way (data-parallel shards)."""
    from infanite.inr.data import loss_norms

    samples = torch.tensor([[[0.2, 2.0, 0.0], [0.4, 2.0, 0.0]],
                            [[0.9, 0.0, 2.0], [0.7, 0.0, 2.0]]])               # (N=2, P=2, 1 + 2 classes)
    label, weight, cw = torch.tensor([0, 1]), torch.tensor([1.0, 0.5]), torch.ones(2)
    _, l_int, l_seg = split_psf_loss(samples, torch.tensor([0.5, float("nan")]), label, weight, cw)
    _, ref_int, ref_seg = split_psf_loss(samples[:1], torch.tensor([0.5]), label[:1], weight[:1], cw)
    assert l_int.item() == pytest.approx((0.2 - 0.5) * (0.4 - 0.5), rel=1e-6) == ref_int.item()
    ce = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0].item()
    assert l_seg.item() == pytest.approx(ce, rel=1e-6) and ref_seg.item() == pytest.approx(ce, rel=1e-6)
    assert torch.isfinite(l_int) and torch.isfinite(l_seg)
    _, mean_int, _ = weighted_loss(samples.mean(1), torch.tensor([0.5, float("nan")]), label, weight, cw, "mse")
    assert mean_int.item() == pytest.approx((0.3 - 0.5) ** 2, rel=1e-6)
    norm_int, norm_seg = loss_norms(weight, label, torch.tensor([0.5, float("nan")]))
    assert norm_int.item() == 1.0 and norm_seg.item() == 1.5
    _, sharded, _ = split_psf_loss(samples, torch.tensor([0.5, float("nan")]), label, weight, cw,
                                   norms=(norm_int, norm_seg))
    assert sharded.item() == pytest.approx(l_int.item(), rel=1e-6)


def test_a_gated_intensity_is_the_tissue_intensity_times_the_brain_probability():
    """``data.gate_intensity``: columns are 1 intensity + logits of background, tissues and halo."""
    from infanite.inr.train import gate_intensity

    big = 30.0
    raw = torch.tensor([[0.7, -big, big, -big, -big],        # a tissue: the intensity as it is
                        [0.7, -big, -big, -big, big],        # halo: 0
                        [0.7, big, -big, -big, -big],        # background: 0
                        [0.8, 0.0, 0.0, 0.0, 0.0]])          # 2 tissue classes of 4 equally likely: half
    gated = gate_intensity(raw)
    np.testing.assert_allclose(gated[:, 0].numpy(), [0.7, 0.0, 0.0, 0.4], atol=1e-6)
    assert torch.equal(gated[:, 1:], raw[:, 1:])


def test_a_registration_without_source_columns_is_refused_with_a_way_on(registered, tmp_path):
    """A registered.tsv written before this version has no path back to the acquired stacks."""
    lines = registered.read_text().splitlines()
    header = lines[0].split("\t")
    drop = [i for i, c in enumerate(header) if c in ("source_T2w", "template_to_stack")]
    old = "\n".join("\t".join(c for i, c in enumerate(line.split("\t")) if i not in drop) for line in lines)
    manifest = registered.parent / "old_registered.tsv"
    manifest.write_text(old + "\n")
    with pytest.raises(ValueError, match="source_T2w, template_to_stack.*data.term=reference"):
        train(manifest, load_train_config(None, SMALL + ["max_steps=2"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()                        # nothing written
    summary = train(manifest, load_train_config(None, SMALL + ["max_steps=2", "data.term=reference"]),
                    tmp_path / "run")
    assert summary["steps"] == 2


# --------------------------------------------------------------------------------------------- the template model

@pytest.fixture(scope="module")
def template_run(registered, tmp_path_factory):
    run = tmp_path_factory.mktemp("template") / "run"
    summary = train(registered, load_train_config(None, TEMPLATE + ["max_steps=60"]), run)
    return run, summary


def test_template_model_trains_learns_displacements_and_writes_diagnostics(template_run):
    run, summary = template_run
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 60 and np.mean([r["loss"] for r in log[-10:]]) < 0.7 * np.mean([r["loss"] for r in log[:10]])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["model_type"] == "template"
    deformation = state["model"]["deformation"]
    assert deformation.shape[:2] == (2, 3) and deformation.abs().max() > 0     # released after the warm-up
    assert set(state["intensity"]) == {"log_gain", "bias", "centre", "half_extent"}
    diagnostics = json.loads((run / "diagnostics.json").read_text())
    assert diagnostics["model"] == "template" and diagnostics["displacement_mm"]["largest"] > 0
    assert math.isfinite(diagnostics["agreement_db"]) and diagnostics["sharpness"] > 0
    assert summary["diagnostics"]["agreement_db"] == diagnostics["agreement_db"]
    stacks = json.loads((run / "stacks.json").read_text())
    assert stacks["model"] == "template" and stacks["fetus_ids"] == ["0001", "0002"]


def test_fetus_reconstruction_is_scored_as_is_and_after_an_affine_intensity_map(template_run):
    """With a fetus's own reconstruction as its 'truth', both scores are perfect; with that reconstruction's
    negative (every contrast inverted), the min–max score drops and the affine score stays perfect."""
    from infanite.atlas.predict import load_run
    from infanite.inr.diagnostics import _decode_stack, compute_diagnostics
    from infanite.io.images import Volume

    run = load_run(template_run[0])
    model = run.model("cpu")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = np.asarray(run.stacks["centre_mm"]) - 2.0 * 7.5
    ijk = np.argwhere(np.ones((16, 16, 16), bool))
    points = torch.as_tensor(ijk @ affine[:3, :3].T + affine[:3, 3], dtype=torch.float32)
    labels = Volume(np.ones((16, 16, 16), np.int16), affine)
    truths = {}
    for f, name in enumerate(run.stacks["fetus_ids"]):
        own = _decode_stack(model, points, run.stacks["stack_fetus"].index(f)).reshape(16, 16, 16)
        truths[name] = own
    same = compute_diagnostics(run, "cpu", fetus_truth={n: (Volume(t, affine), labels) for n, t in truths.items()})
    inverted = compute_diagnostics(run, "cpu", fetus_truth={n: (Volume(-t, affine), labels)
                                                            for n, t in truths.items()})
    for name in truths:
        assert same["fetus_reconstruction_db"][name] > 100 and same["fetus_reconstruction_affine_db"][name] > 100
        assert inverted["fetus_reconstruction_db"][name] < 20 < 100 < inverted["fetus_reconstruction_affine_db"][name]


def test_each_fetus_deformation_is_kept_as_an_itk_transform_that_maps_like_the_model(template_run, tmp_path):
    """``deformations/<fetus>.h5`` (LPS, ITK) moves a point of the fetus's space exactly as the model's
    ``x + u_f(x)`` (RAS mm) does, anywhere in the template box; here with random control points so that every
    component, sign and axis order is exercised."""
    from infanite.atlas.predict import load_run
    from infanite.inr.deformations import fetus_to_template_ras, write_deformations

    run, _ = template_run
    assert sorted(p.name for p in (run / "deformations").iterdir()) == ["0001.h5", "0002.h5"]
    model = load_run(run).model("cpu")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.deformation.copy_(3 * torch.randn(model.deformation.shape, generator=generator))
    paths = write_deformations(tmp_path, model, ["0001", "0002"])
    rng = np.random.default_rng(0)
    centre, half = model.centre.numpy(), model.half_extent.numpy()
    points = (centre + rng.uniform(-0.95, 0.95, (200, 3)) * half).astype(np.float32)
    for f, path in enumerate(paths):
        with torch.no_grad():
            expected = points + model.displacement(torch.from_numpy(points), torch.full((200,), f)).numpy()
        np.testing.assert_allclose(fetus_to_template_ras(path, points), expected, atol=1e-3)


def test_control_points_fitted_by_least_squares_reproduce_what_the_grid_can_hold():
    """A linear field is held exactly by trilinear control points at any grid size; and a field sampled from
    control points on a lattice that contains them comes back as those control points."""
    from infanite.inr.deformations import _interpolation_matrix, fit_control_points

    axis = np.linspace(-1, 1, 11)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    linear = np.stack([2 * x + 1, 0.5 * z - y, 3 * z])
    for grid in (2, 4, 6):
        c = np.linspace(-1, 1, grid)
        zc, yc, xc = np.meshgrid(c, c, c, indexing="ij")
        np.testing.assert_allclose(fit_control_points(linear, grid), np.stack([2 * xc + 1, 0.5 * zc - yc, 3 * zc]),
                                   atol=1e-12)
    control = np.random.default_rng(1).normal(size=(3, 4, 4, 4))
    a = _interpolation_matrix(7, 4)
    np.testing.assert_allclose(a[::2], np.eye(4))                                 # every other point: a node
    sampled = np.einsum("ai,bj,ck,dijk->dabc", a, a, a, control)
    np.testing.assert_allclose(fit_control_points(sampled, 4), control, atol=1e-12)


def test_a_run_starts_from_given_displacements_and_can_hold_them(template_run, registered, tmp_path):
    """``template.deformation_init`` reads the ``deformations/`` a run wrote back onto the control grid exactly;
    with ``template.lr_deformation=0`` training keeps them (the displacements apply from the first step, the
    template and the intensity model still learn); a folder missing a fetus is refused before any work."""
    from infanite.atlas.predict import load_run
    from infanite.inr.deformations import initial_deformations, write_deformations

    run, _ = template_run
    model = load_run(run).model("cpu")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.deformation.copy_(2 * torch.randn(model.deformation.shape, generator=generator))
    folder = tmp_path / "start"
    write_deformations(folder, model, ["0001", "0002"])
    folder = folder / "deformations"
    start = initial_deformations(folder, ["0001", "0002"], 8, model.centre.numpy(), model.half_extent.numpy())
    np.testing.assert_allclose(start, model.deformation.detach().numpy(), atol=1e-4)

    held = TEMPLATE + ["max_steps=20", "template.deformation_grid=8", f"template.deformation_init={folder}",
                       "template.lr_deformation=0"]
    train(registered, load_train_config(None, held), tmp_path / "held")
    state = torch.load(tmp_path / "held" / "checkpoint.pt", weights_only=True)
    np.testing.assert_allclose(state["model"]["deformation"].numpy(), start, atol=1e-5)
    assert state["intensity"]["log_gain"].abs().max() > 0                         # the intensity model learns
    log = [json.loads(line) for line in (tmp_path / "held" / "train_log.jsonl").read_text().splitlines()]
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:5]])   # and the template

    (folder / "0002.h5").unlink()
    with pytest.raises(TrainConfigError, match=r"template.deformation_init: .* no transform for fetus\(es\) 0002"):
        train(registered, load_train_config(None, held), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(TrainConfigError, match="template.deformation_init: .* is not a folder"):
        train(registered, load_train_config(None, TEMPLATE + [f"template.deformation_init={tmp_path / 'none'}"]),
              tmp_path / "refused")
    with pytest.raises(TrainConfigError, match="template.deformation_init"):
        load_train_config(None, SMALL + [f"template.deformation_init={folder}"])        # model: infanite


def _gauge_model(ga_weeks, **widths):
    """A grid-encoded TemplateINR, one stack per fetus at ``ga_weeks``, 4³ control points over a ±40 mm box."""
    from types import SimpleNamespace

    from infanite.inr.config import TemplateConfig
    from infanite.inr.template import TemplateINR

    config = TemplateConfig(encoding="grid", grid_resolutions=[4], ga_nodes=[1], deformation_grid=4, **widths)
    n = len(ga_weeks)
    model = TemplateINR(3, list(range(n)), list(ga_weeks), (min(ga_weeks), max(ga_weeks)), [0, 0, 0], [40, 40, 40],
                        config)
    return model, SimpleNamespace(kernel=lambda width: _kernel(np.asarray(ga_weeks, float), width))


def _kernel(ga, width):
    k = np.exp(-0.5 * ((ga[:, None] - ga[None, :]) / width) ** 2)
    return k / k.sum(1, keepdims=True)


def test_a_fetus_position_is_its_mean_displacement_over_the_given_points():
    """Trilinear control points hold a linear field exactly, so the weighted control points give the field's mean
    over the points, which for a linear field is the field at their centroid."""
    model, _ = _gauge_model([28.0, 30.0])
    c = np.linspace(-1, 1, 4)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    field = torch.as_tensor(np.stack([2 * x + 1, 0.5 * z - y, 3 * z]), dtype=torch.float32)     # mm, normalised x
    with torch.no_grad():
        model.deformation.copy_(torch.stack([field, -field]))
    points = torch.tensor([[10.0, -4.0, 8.0], [-6.0, 12.0, 0.0], [20.0, 20.0, -30.0]])          # RAS mm
    model.set_position_region(points)
    assert model.position_weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    xn = points.mean(0).numpy() / 40
    expected = np.array([2 * xn[0] + 1, 0.5 * xn[2] - xn[1], 3 * xn[2]])
    position = (model.deformation * model.position_weights).sum(dim=(2, 3, 4)).detach().numpy()
    np.testing.assert_allclose(position, [expected, -expected], atol=1e-5)


def test_the_position_kernel_averages_only_the_fetuses_positions():
    """Equal widths give the single-kernel penalty (K u)²; pure translations are averaged over the position
    kernel alone; fields with no position over the region over the shape kernel alone."""
    ga = [27.0, 29.5, 30.0, 30.6, 33.0]
    rng = np.random.default_rng(3)
    u = torch.as_tensor(rng.normal(size=(5, 3, 4, 4, 4)), dtype=torch.float32)
    model, k = _gauge_model(ga, mean_kernel_weeks=1.0, position_kernel_weeks=1.0)
    with torch.no_grad():
        model.deformation.copy_(u)
    flat = u.reshape(5, -1).numpy()
    assert model.penalties()["mean"].item() == pytest.approx(np.mean((k.kernel(1.0) @ flat) ** 2), rel=1e-5)

    translations = rng.normal(size=(5, 3))
    shifts = torch.as_tensor(translations, dtype=torch.float32)[:, :, None, None, None].expand(5, 3, 4, 4, 4)
    for shape_width in (0.5, 1.0, 2.0):
        model, k = _gauge_model(ga, mean_kernel_weeks=shape_width, position_kernel_weeks=0.25)
        model.set_position_region(torch.tensor([[5.0, 0.0, -5.0], [-10.0, 3.0, 2.0]]))
        with torch.no_grad():
            model.deformation.copy_(shifts)
        assert model.penalties()["mean"].item() == pytest.approx(
            np.mean((k.kernel(0.25) @ translations) ** 2), rel=1e-5), shape_width

    shape_only = u - (u * model.position_weights).sum(dim=(2, 3, 4))[:, :, None, None, None]
    for position_width in (0.25, 1.0, 3.0):
        model, k = _gauge_model(ga, mean_kernel_weeks=1.0, position_kernel_weeks=position_width)
        model.set_position_region(torch.tensor([[5.0, 0.0, -5.0], [-10.0, 3.0, 2.0]]))
        with torch.no_grad():
            model.deformation.copy_(shape_only)
        assert model.penalties()["mean"].item() == pytest.approx(
            np.mean((k.kernel(1.0) @ shape_only.reshape(5, -1).numpy()) ** 2), rel=1e-4), position_width


def test_training_positions_are_measured_over_the_support_voxels():
    from types import SimpleNamespace

    from infanite.inr.train import support_points_mm

    support = np.zeros((4, 5, 6), bool)
    support[1, 2, 3] = support[3, 0, 5] = True
    voxel_to_ras = np.array([[-0.8, 0, 0, 10.0], [0, 0.8, 0, -5.0], [0, 0, 1.5, 2.0], [0, 0, 0, 1]])
    points = support_points_mm(SimpleNamespace(support_mask=support, voxel_to_ras=voxel_to_ras))
    np.testing.assert_allclose(points.numpy(), [[9.2, -3.4, 6.5], [7.6, -5.0, 9.5]], atol=1e-6)
    support[:] = True
    assert len(support_points_mm(SimpleNamespace(support_mask=support, voxel_to_ras=voxel_to_ras),
                                 max_points=7)) == 7


@pytest.mark.parametrize("encoding", ["grid", "modulated", "modulated-scaled", "modulated-appearance"])
def test_template_model_resumes_exactly(registered, tmp_path, encoding):
    scaled, appearance = encoding.endswith("-scaled"), encoding.endswith("-appearance")
    config = load_train_config(None, TEMPLATE + ["max_steps=30", f"template.encoding={encoding.split('-')[0]}",
                                                 f"template.ga_scaling={str(scaled).lower()}",
                                                 f"template.appearance={str(appearance).lower()}"])
    train(registered, config, tmp_path / "full")
    train(registered, config, tmp_path / "killed", stop_after_steps=15)      # last checkpoint at step 10
    train(registered, config, tmp_path / "killed", resume=True)
    full = [json.loads(x)["loss"] for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x)["loss"] for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert len(full) == len(resumed) == 30
    np.testing.assert_allclose(resumed, full, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="holds a 'template' model"):
        train(registered, load_train_config(None, SMALL + ["max_steps=30"]), tmp_path / "killed", resume=True)


def test_the_atlas_of_a_template_run_is_the_template_at_the_ga(template_run, tmp_path):
    """``infanite atlas`` on a template run: the same files and manifest as for the paper's model; with
    ``position_sigma_weeks`` 0 the T2w is ``T(x, GA)`` with no displacement, by default ``T(x + p, GA)`` with ``p``
    the fetuses' mean displacement over the GA-local support, Gaussian-weighted over their GAs (σ 0.25 weeks)."""
    from infanite.atlas.generate import generate
    from infanite.atlas.predict import GASupport, atlas_grid, atlas_query, load_run
    from infanite.atlas.kernel import gkr_weights
    from infanite.io.images import load_nifti

    run = tmp_path / "run"                    # the run, each fetus's displacement moved by a translation (mm)
    shutil.copytree(template_run[0], run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["model"]["deformation"] += torch.tensor([[1.5, 0.0, -0.5], [-1.0, 2.0, 0.0]])[:, :, None, None, None]
    torch.save(state, run / "checkpoint.pt")
    still = generate(run, [28.0], tmp_path / "still", spacing_mm=3.2, position_sigma_weeks=0)
    assert still["generated"] == ["28.0"] and (tmp_path / "still" / "atlas_manifest.json").is_file()
    assert "position_shift_mm" not in still["ga"]["28.0"]
    moved = generate(run, [28.0], tmp_path / "moved", spacing_mm=3.2)
    trained = load_run(run)
    model = trained.model("cpu")
    stacks = trained.stacks
    grid = atlas_grid(stacks["grid_shape"], stacks["grid_voxel_to_ras"], 3.2)
    support = GASupport(run, grid, stacks["stack_fetus"]).at(
        gkr_weights(stacks["ga_weeks"], 28.0, 0.5, None, stacks["stack_fetus"]).weights)
    ijk = np.argwhere(support)
    points = torch.as_tensor(ijk @ grid.voxel_to_ras[:3, :3].T + grid.voxel_to_ras[:3, 3], dtype=torch.float32)
    with torch.no_grad():
        positions = np.stack([model.displacement(points, torch.full((len(points),), f)).mean(0).numpy()
                              for f in range(2)])
    weights = np.exp(-0.5 * ((model.fetus_ga.numpy() - 28.0) / 0.25) ** 2)
    expected = weights @ positions / weights.sum()
    shift = np.asarray(moved["ga"]["28.0"]["position_shift_mm"])
    np.testing.assert_allclose(shift, expected, atol=2e-3)
    assert np.abs(shift).max() > 0.4

    for name, offset in (("still", None), ("moved", shift)):
        t2 = load_nifti(tmp_path / name / "atlas_ga-28.0_T2w.nii.gz")
        brain = np.argwhere(t2.array > 0)[:50]
        xyz = torch.as_tensor(brain @ t2.voxel_to_ras[:3, :3].T + t2.voxel_to_ras[:3, 3], dtype=torch.float32)
        moved_xyz = xyz if offset is None else xyz + torch.as_tensor(offset, dtype=torch.float32)
        with torch.no_grad():
            direct = model.atlas(moved_xyz, 28.0)[:, 0].numpy()
            through = atlas_query(model, 28.0, None, offset)(xyz)[:, 0].numpy()
        np.testing.assert_allclose(t2.array[tuple(brain.T)], np.clip(direct, 0, None), atol=2e-4)
        np.testing.assert_allclose(direct, through, atol=1e-6)
    assert moved["ga"]["28.0"]["support"] == "ga_local"
    with pytest.raises(ValueError, match="different atlas"):          # another σ is another atlas
        generate(run, [28.0], tmp_path / "moved", spacing_mm=3.2, position_sigma_weeks=1.0)
    for bad in (-0.5, float("nan"), "wide"):
        with pytest.raises(ValueError, match="--position-sigma must be a number of weeks >= 0"):
            generate(run, [28.0], tmp_path / "bad", spacing_mm=3.2, position_sigma_weeks=bad)
    with pytest.raises(ValueError, match="--appearance-sigma .* has none .*template.appearance false"):
        generate(run, [28.0], tmp_path / "bad", spacing_mm=3.2, appearance_sigma_weeks=0.5)   # no offsets here
    assert not (tmp_path / "bad").exists()


def test_the_cohort_position_is_the_kernel_mean_of_the_fetuses_positions():
    """Translations held by every control point are each fetus's position whatever the points; the cohort's
    position at a GA is their Gaussian-weighted mean over the fetuses' GAs, the nearest fetus far from all of
    them, and zero without displacements."""
    from infanite.inr.config import TemplateConfig
    from infanite.inr.template import TemplateINR

    ga = [27.0, 29.5, 30.0, 30.6, 33.0]
    model, _ = _gauge_model(ga)
    translations = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, -1.0], [0.5, 0.5, 0.5], [-3.0, 1.0, 0]])
    with torch.no_grad():
        model.deformation.copy_(torch.as_tensor(translations, dtype=torch.float32)[:, :, None, None, None]
                                .expand_as(model.deformation))
    points = np.array([[10.0, -4.0, 8.0], [-6.0, 12.0, 0.0]])
    for at, width in ((30.0, 0.25), (30.0, 1.0), (28.0, 0.5)):
        w = np.exp(-0.5 * ((np.asarray(ga) - at) / width) ** 2)
        np.testing.assert_allclose(model.cohort_position(at, points, width).numpy(), w @ translations / w.sum(),
                                   atol=1e-5)
    np.testing.assert_allclose(model.cohort_position(49.0, points, 0.1).numpy(), translations[-1], atol=1e-6)
    still = TemplateINR(3, [0, 1], [28.0, 30.0], (28.0, 30.0), [0, 0, 0], [40, 40, 40],
                        TemplateConfig(encoding="grid", grid_resolutions=[4], ga_nodes=[1], deformation_grid=0))
    assert still.cohort_position(29.0, points, 0.25).abs().max().item() == 0.0


def test_the_run_keeps_each_fetus_support_and_their_union(template_run):
    """``support_fetuses.nii.gz``: one frame per fetus of ``stacks.json``, on the training grid, whose union is
    ``support_mask.nii.gz``; every fetus is observed somewhere and no fetus covers the whole union."""
    import nibabel as nib

    run, _ = template_run
    stacks = json.loads((run / "stacks.json").read_text())
    frames = nib.load(str(run / "support_fetuses.nii.gz"))
    union = nib.load(str(run / "support_mask.nii.gz"))
    masks = np.asanyarray(frames.dataobj) > 0
    assert masks.shape == tuple(stacks["grid_shape"]) + (len(stacks["fetus_ids"]),)
    np.testing.assert_allclose(frames.affine, np.asarray(stacks["grid_voxel_to_ras"]), atol=1e-5)
    assert np.array_equal(masks.any(-1), np.asanyarray(union.dataobj) > 0)
    counts = masks.reshape(-1, masks.shape[-1]).sum(0)
    assert (counts > 0).all() and (counts < masks.any(-1).sum()).all()


# --------------------------------------------------------------------------------------------- refusals

def _rewrite(registered, path, edit) -> object:
    lines = registered.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    rows = edit(rows)
    columns = [c for c in header if c in rows[0]]
    path.write_text("\n".join(["\t".join(columns)] + ["\t".join(r[c] for c in columns) for r in rows]) + "\n")
    return path


@pytest.mark.parametrize("case, edit, overrides, message", [
    ("one GA", lambda rows: [dict(r, scan_age="28.0") for r in rows], [],
     "model: 'template' conditions the template on GA"),
    ("no subject grouping", lambda rows: [{k: v for k, v in dict(r, subject_id=f"stack{i}").items()
                                           if k != "subject"} for i, r in enumerate(rows)], [],
     "template.deformation_grid: a displacement per fetus needs the stacks grouped"),
    ("deformation grid finer than the slices", lambda rows: rows, ["template.deformation_grid=40"],
     "template.deformation_grid: 40 control points per axis"),
    ("feature grid finer than the data", lambda rows: rows, ["template.grid_resolutions=[8,16,256]"],
     "template.grid_resolutions: the finest grid (256 per axis)"),
])
def test_a_template_config_the_cohort_cannot_support_is_refused_before_any_work(registered, tmp_path, case, edit,
                                                                               overrides, message):
    manifest = _rewrite(registered, registered.parent / f"refused_{case.replace(' ', '_')}.tsv", edit)
    with pytest.raises(TrainConfigError, match=re.escape(message)):
        train(manifest, load_train_config(None, TEMPLATE + ["max_steps=2"] + overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_template_keys_are_refused_with_the_key_named():
    with pytest.raises(TrainConfigError) as info:
        load_train_config(None, ["model=tmpl", "template.encoding=hash", "template.ga_nodes=[1]",
                                 "template.deformation_grid=1", "data.term=exact-ish", "data.bias_order=3",
                                 "template.position_kernel_weeks=0", "template.mean_kernel_weeks=nan"])
    text = str(info.value)
    for key in ("model:", "template.encoding", "template.ga_nodes", "template.deformation_grid", "data.term",
                "data.bias_order", "template.position_kernel_weeks", "template.mean_kernel_weeks"):
        assert key in text, key


class _Ramp(torch.nn.Module):
    """A template whose intensity is ``a · xn`` (normalised coordinates) and whose labels are constant."""

    def __init__(self, slope):
        super().__init__()
        self.slope = torch.as_tensor(slope, dtype=torch.float32)

    def forward(self, xn, t):
        return torch.cat([(xn * self.slope).sum(1, keepdim=True) + 0 * t[:, None], torch.zeros(len(xn), 2)], 1)


def test_the_template_tv_is_the_intensity_gradient_norm_per_mm():
    model, _ = _gauge_model([28.0, 30.0])             # box ±40 mm: T = a·x/40 has gradient a/40 per mm
    model.template = _Ramp([3.0, -4.0, 0.0])
    points = torch.rand(50, 3) * 40 - 20
    tv = model.intensity_tv(points, torch.full((50,), 29.0), 0.8, eps=0.0)
    assert tv.item() == pytest.approx(5.0 / 40, rel=1e-5)
    # a step edge 0 → 1 across x = 0: the difference is seen only at points within h of the edge, (1/h) each
    model.template = _Step()
    h = 0.8
    points = torch.tensor([[-0.3, 0.0, 0.0], [-5.0, 1.0, 2.0], [5.0, 0.0, 0.0], [-0.7, 3.0, 0.0]])
    tv = model.intensity_tv(points, torch.full((4,), 29.0), h, eps=0.0)
    assert tv.item() == pytest.approx((1 / h + 0 + 0 + 1 / h) / 4, rel=1e-5)


class _Step(torch.nn.Module):
    def forward(self, xn, t):
        return torch.cat([(xn[:, :1] > 0).float(), torch.zeros(len(xn), 2)], 1)


def test_the_tv_penalty_enters_a_template_step_with_its_weight(template_run, registered):
    from infanite.atlas.predict import load_run
    from infanite.inr.build import build_intensity_model
    from infanite.inr.data import psf_jitter
    from infanite.inr.samples import pack_acquired
    from infanite.inr.train import _step_loss

    run = load_run(template_run[0])
    model = run.model("cpu")
    data = pack_acquired(registered, run.stacks["label_values"])
    idx = torch.arange(0, data.n_voxels, 97)[:300]
    stack = data.stack[idx]
    jitter = psf_jitter(data.coords_mm[idx], torch.zeros(len(idx), 3, 3), 2)
    losses = {}
    for weight in (0.0, 0.5):
        config = load_train_config(None, TEMPLATE + [f"template.tv_weight={weight}", "template.tv_points=40"])
        intensity = build_intensity_model(config, data)
        with torch.no_grad():
            losses[weight] = _step_loss(config, model, model, intensity, data, idx, stack, jitter, 2, None)
    tv = model.intensity_tv(data.coords_mm[idx[:40]], model.stack_ga[data.stack[idx[:40]]], 0.8)
    assert tv.item() > 0
    assert (losses[0.5][3] - losses[0.0][3]).item() == pytest.approx(0.5 * tv.item(), rel=1e-4)
    assert (losses[0.5][0] - losses[0.0][0]).item() == pytest.approx(0.5 * tv.item(), rel=1e-4)


def test_bad_tv_keys_are_refused_with_the_key_named():
    with pytest.raises(TrainConfigError) as info:
        load_train_config(None, TEMPLATE + ["template.tv_weight=-1", "template.tv_points=0",
                                            "template.tv_step_mm=nan"])
    for key in ("template.tv_weight", "template.tv_points", "template.tv_step_mm"):
        assert key in str(info.value), key
    # like every template.* key it acts on model: template only: the CPU defaults set it, and a user who picks the
    # paper's model on top of them is not refused
    assert load_train_config(None, ["model=template", "template.tv_weight=0.1", "model=infanite"]).model == "infanite"


def _scaled_model(ga_weeks):
    from infanite.inr.config import TemplateConfig
    from infanite.inr.template import TemplateINR

    config = TemplateConfig(encoding="grid", grid_resolutions=[4], ga_nodes=[1], deformation_grid=4, ga_scaling=True)
    return TemplateINR(3, list(range(len(ga_weeks))), list(ga_weeks), (min(ga_weeks), max(ga_weeks)), [0, 0, 0],
                       [40, 40, 40], config)


def test_ga_scaling_fits_the_brains_growth_and_divides_the_template_input_by_it():
    """Brains whose size grows as exp(0.03·GA): the fitted growth is that rate, the template's input at GA g is the
    normalised position divided by exp(0.03·(g − 38)), so a point of a 22-week brain reads the template where the
    point scaled to a 38-week brain does (a template that ignores GA, a ramp in the input)."""
    ga = [22.0, 26.0, 30.0, 34.0, 38.0]
    model = _scaled_model(ga)
    generator = torch.Generator().manual_seed(0)
    points, stacks = [], []
    for f, g in enumerate(ga):
        sd = 12.0 * math.exp(0.03 * (g - 38.0)) * torch.tensor([1.0, 1.4, 1.2])
        points.append(torch.randn(20000, 3, generator=generator) * sd + torch.tensor([2.0, -1.0, 3.0]))
        stacks.append(torch.full((20000,), f))
    model.set_ga_scaling(torch.cat(points), torch.cat(stacks))
    assert model.ga_growth[1].item() == pytest.approx(0.03, abs=1e-3)
    scale = model.brain_scale(torch.tensor([22.0, 38.0, 45.0]))
    np.testing.assert_allclose(scale.numpy(), [math.exp(-0.03 * 16), 1.0, 1.0], rtol=0.02)
    x = torch.rand(30, 3) * 30 - 15
    np.testing.assert_allclose(model.template_coordinates(x, torch.full((30,), 22.0)).numpy(),
                               (x / 40 / scale[0]).numpy(), rtol=1e-5)
    model.template = _Ramp([3.0, -4.0, 1.0])
    with torch.no_grad():
        np.testing.assert_allclose(model.atlas(x, 22.0)[:, 0].numpy(), model.atlas(x / scale[0], 38.0)[:, 0].numpy(),
                                   rtol=1e-4, atol=1e-6)
        # a fetus sees the same template, scaled at its own GA
        np.testing.assert_allclose(model(x, torch.zeros(30, dtype=torch.long))[:, 0].numpy(),
                                   model.atlas(x, 22.0)[:, 0].numpy(), rtol=1e-6)
    assert "ga_growth" in model.state_dict()


def test_without_ga_scaling_the_template_input_is_the_box_position_and_nothing_more_is_saved():
    model, _ = _gauge_model([22.0, 38.0])
    x = torch.rand(20, 3) * 30 - 15
    assert torch.equal(model.template_coordinates(x, torch.full((20,), 22.0)), model.normalise(x))
    assert "ga_growth" not in model.state_dict()             # checkpoints written before the key still load
    shrinking = _scaled_model([22.0, 38.0])                   # no growth to follow: no scaling
    points = torch.cat([torch.randn(5000, 3) * 10, torch.randn(5000, 3) * 5])
    shrinking.set_ga_scaling(points, torch.cat([torch.zeros(5000), torch.ones(5000)]).long())
    assert shrinking.ga_growth[1].item() == 0.0
    assert torch.equal(shrinking.brain_scale(torch.tensor([22.0, 30.0])), torch.ones(2))


def test_a_ga_scaled_run_saves_its_growth_and_its_atlas_reads_it(registered, tmp_path):
    from infanite.atlas.predict import load_run

    train(registered, load_train_config(None, TEMPLATE + ["max_steps=12", "template.ga_scaling=true"]),
          tmp_path / "run")
    from infanite.inr.samples import pack_acquired

    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    growth = state["model"]["ga_growth"]
    run = load_run(tmp_path / "run")
    model = run.model("cpu")
    assert torch.equal(model.ga_growth, growth)                  # the atlas is queried with the fitted scaling
    data = pack_acquired(registered, run.stacks["label_values"])  # the growth is the fit to the run's brain samples
    brain = data.label != data.halo_label
    model.ga_growth.zero_()
    model.set_ga_scaling(data.coords_mm[brain], data.stack[brain])
    np.testing.assert_allclose(model.ga_growth.numpy(), growth.numpy(), rtol=1e-5, atol=1e-7)
    assert growth[0].item() != 0.0                               # fitted, not the unscaled (0, 0)


# --------------------------------------------------------------------------------------------- appearance offsets

def _appearance_model(ga_weeks, ga_latents=1, appearance=True, width=0.5, centred=False):
    """A modulated-encoding TemplateINR (8 latent channels on a 3³ grid), one stack per fetus at ``ga_weeks``."""
    from infanite.inr.config import InrDecoderConfig, TemplateConfig
    from infanite.inr.template import TemplateINR

    decoder = InrDecoderConfig(hidden_size=32, num_hidden_layers=2, modulated_layers=[1], latent_dim=[8, 3, 3, 3])
    config = TemplateConfig(encoding="modulated", ga_latents=ga_latents, deformation_grid=4, appearance=appearance,
                            appearance_kernel_weeks=width, appearance_centred=centred)
    n = len(ga_weeks)
    return TemplateINR(3, list(range(n)), list(ga_weeks), (min(ga_weeks), max(ga_weeks)), [0, 0, 0], [40, 40, 40],
                       config, seed=3, decoder_config=decoder)


def _with_latent_shift(model, shift):
    """A copy of ``model`` without appearance whose (single) latent grid is moved by ``shift`` (C, G, G, G)."""
    import copy

    plain = copy.deepcopy(model)
    plain.appearance = None
    with torch.no_grad():
        plain.template.decoder.latents += shift
    return plain


def test_a_fetus_sees_the_template_latent_plus_its_appearance_and_the_atlas_their_kernel_mean():
    """One GA node, so the template's latent is the same at every GA: a fetus decodes latent + its offset; the atlas
    at GA g decodes latent + the offsets averaged with Gaussian weights (σ 0.5 weeks) of the fetuses' GAs (offsets
    not centred here: see the next test)."""
    ga = [22.0, 22.5, 30.0]
    model = _appearance_model(ga)
    x = torch.rand(50, 3) * 60 - 30
    with torch.no_grad():
        zero_atlas = model.atlas(x, 22.2)
        assert torch.equal(zero_atlas, _with_latent_shift(model, 0).atlas(x, 22.2))   # starts as the template
        model.appearance.copy_(torch.randn(model.appearance.shape, generator=torch.Generator().manual_seed(1)))
        for f in range(3):
            np.testing.assert_allclose(model(x, torch.full((50,), f))[:, 0].numpy(),
                                       _with_latent_shift(model, model.appearance[f])(x, torch.full((50,), f))[:, 0]
                                       .numpy(), rtol=1e-5, atol=1e-6)
        weights = np.exp(-0.5 * ((np.array(ga) - 22.2) / 0.5) ** 2)
        weights /= weights.sum()
        assert weights[2] < 1e-30 and 0.4 < weights[0] < 0.6
        np.testing.assert_allclose(model.appearance_weights(22.2).numpy(), weights, rtol=1e-6)
        mean = torch.einsum("f,f...->...", torch.as_tensor(weights, dtype=torch.float32), model.appearance)
        atlas = model.atlas(x, 22.2)
        np.testing.assert_allclose(atlas.numpy(), _with_latent_shift(model, mean).atlas(x, 22.2).numpy(),
                                   rtol=1e-5, atol=1e-6)
        assert not torch.allclose(atlas, zero_atlas, atol=1e-3)
        # points at several GAs (as the TV penalty asks) get each GA's own mean
        both = model.atlas(torch.cat([x, x]), torch.cat([torch.full((50,), 22.2), torch.full((50,), 30.0)]))
        np.testing.assert_allclose(both[:50].numpy(), atlas.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(both[50:].numpy(), model.atlas(x, 30.0).numpy(), rtol=1e-6, atol=1e-7)
        # far from every fetus, a fixed kernel: the nearest one's offset alone
        model.appearance_adaptive = False
        np.testing.assert_allclose(model.appearance_weights(80.0).numpy(), [0, 0, 1])
        model.appearance_adaptive = True
        model.appearance_kernel_weeks = 0.0                # asked for the template alone
        assert torch.equal(model.atlas(x, 22.2), zero_atlas)
        model.appearance_kernel_weeks = 0.5
        model.use_appearance = False                      # held off (the warm-up): the template alone
        assert torch.equal(model.atlas(x, 22.2), zero_atlas)
    assert model.penalties()["appearance"].item() == pytest.approx(float((model.appearance.detach() ** 2).mean()))
    assert _appearance_model(ga, appearance=False).penalties()["appearance"].item() == 0.0
    assert "appearance" not in _appearance_model(ga, appearance=False).state_dict()   # older runs still load


def test_the_appearance_kernel_widens_where_fetuses_are_sparse_to_average_as_many_as_inside_the_cohort():
    """Fetuses every week from 20 to 30, σ 0.5 weeks: at a fetus's own GA inside the cohort the kernel weighs it
    1 and its neighbours exp(−2) each, an effective 1.559 fetuses; at the youngest or oldest only 1.266.  The
    kernel keeps σ where it reaches the median (1.559) and widens to the smallest σ that reaches it elsewhere: at
    the ends and beyond them (an atlas past the oldest fetus averages as many fetuses as one inside)."""
    from infanite.inr.template import effective_fetuses

    ga = np.arange(20.0, 31.0)
    model = _appearance_model(list(ga))
    inner = np.exp(-2.0 * np.arange(-2, 3) ** 2)
    target = inner.sum() ** 2 / (inner ** 2).sum()
    assert target == pytest.approx(1.559, abs=1e-3)
    assert effective_fetuses(torch.ones(4)) == pytest.approx(4.0)
    for g in (25.0, 25.5):                                   # as many as the median or more: σ as set
        assert model.appearance_width(g) == 0.5
        np.testing.assert_allclose(model.appearance_weights(g).numpy(), model.fetus_weights(g, 0.5).numpy())
    assert model.appearance_width(21.0) == pytest.approx(0.5, rel=2e-3)   # lacks only a 2-weeks neighbour (e^-8)
    assert effective_fetuses(model.fetus_weights(30.0, 0.5)) == pytest.approx(1.266, abs=1e-3)
    previous = 0.5
    for g in (30.0, 31.0, 34.0):                             # the oldest fetus, and beyond: widened, more so further
        width = model.appearance_width(g)
        assert width > previous
        assert target <= effective_fetuses(model.appearance_weights(g)) <= target * 1.001
        assert effective_fetuses(model.fetus_weights(g, width * 0.99)) < target           # the smallest such σ
        weights = model.appearance_weights(g).numpy()
        assert np.all(np.diff(weights) >= 0) and weights.sum() == pytest.approx(1.0)     # the oldest weigh most
        previous = width
    assert model.appearance_width(20.0) == pytest.approx(model.appearance_width(30.0), rel=1e-3)   # symmetric
    oldest = model.appearance_width(30.0)
    with torch.no_grad():
        model.fetus_ga += 10.0                               # another cohort (a loaded state): nothing cached reused
    assert model.appearance_width(35.0) == 0.5 and model.appearance_width(40.0) == pytest.approx(oldest, rel=1e-6)
    model.appearance_adaptive = False                        # a fixed kernel (template.appearance_adaptive=false)
    assert model.appearance_width(34.0) == 0.5
    model.appearance_adaptive, model.appearance_kernel_weeks = True, 0.0
    assert model.appearance_width(34.0) == 0.0               # the template alone stays alone


def test_centred_offsets_leave_what_the_fetuses_of_a_ga_share_to_the_template():
    """Centred, a fetus's offset is its parameter less the Gaussian mean (σ mean_kernel_weeks, 1 week) of the
    parameters around its GA: an offset every fetus shares changes nothing, and one fetus's own offset is kept
    less its share of its neighbours' mean."""
    ga = [22.0, 22.5, 30.0]
    model = _appearance_model(ga, centred=True)
    x = torch.rand(50, 3) * 60 - 30
    with torch.no_grad():
        before = [model(x, torch.full((50,), f)) for f in range(3)], model.atlas(x, 22.2)
        model.appearance += torch.randn(model.appearance.shape[1:], generator=torch.Generator().manual_seed(2))
        assert model.fetus_appearance().abs().max() < 1e-6
        for f in range(3):
            np.testing.assert_allclose(model(x, torch.full((50,), f)).numpy(), before[0][f].numpy(), atol=1e-5)
        np.testing.assert_allclose(model.atlas(x, 22.2).numpy(), before[1].numpy(), atol=1e-5)
        model.appearance.zero_()
        model.appearance[0] = 1.0
        kernel = _kernel(np.array(ga), 1.0)
        np.testing.assert_allclose(model.fetus_appearance()[:, 0, 0, 0, 0].numpy(), [1, 0, 0] - kernel[:, 0],
                                   rtol=1e-6, atol=1e-7)


def test_appearance_offsets_are_held_for_the_warm_up_then_learnt_and_the_atlas_uses_them(registered, tmp_path):
    from infanite.atlas.predict import load_run

    base = TEMPLATE + ["template.encoding=modulated", "template.appearance=true"]
    train(registered, load_train_config(None, base + ["max_steps=10"]), tmp_path / "held")        # warm-up 10
    held = torch.load(tmp_path / "held" / "checkpoint.pt", weights_only=True)["model"]["appearance"]
    assert held.shape == (2, 8, 3, 3, 3) and torch.count_nonzero(held) == 0
    train(registered, load_train_config(None, base + ["max_steps=25"]), tmp_path / "run")
    learnt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]["appearance"]
    assert learnt.abs().max() > 0
    model = load_run(tmp_path / "run").model("cpu")
    assert torch.equal(model.appearance.detach(), learnt)
    x = torch.rand(40, 3) * 40 - 20
    with torch.no_grad():
        with_offsets = model.atlas(x, float(model.fetus_ga[0]))
        model.use_appearance = False
        assert not torch.equal(with_offsets, model.atlas(x, float(model.fetus_ga[0])))
    # infanite atlas writes the template with the offsets' kernel mean, and records the kernel's width
    from infanite.atlas.generate import generate
    from infanite.io.images import load_nifti

    run = tmp_path / "bold"                   # the run with offsets large enough to see in the image
    shutil.copytree(tmp_path / "run", run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["model"]["appearance"] = 0.3 * torch.randn(learnt.shape, generator=torch.Generator().manual_seed(4))
    torch.save(state, run / "checkpoint.pt")
    model = load_run(run).model("cpu")
    made = generate(run, [28.0], tmp_path / "atlas", spacing_mm=3.2, position_sigma_weeks=0,
                    intensity_ceiling=False)
    assert made["generated"] == ["28.0"]
    manifest = json.loads((tmp_path / "atlas" / "atlas_manifest.json").read_text())
    assert manifest["identity"]["appearance_sigma_weeks"] == 0.5 and manifest["identity"]["appearance_adaptive"]
    assert manifest["ga"]["28.0"]["appearance_sigma_used_weeks"] == round(model.appearance_width(28.0), 4)
    t2 = load_nifti(tmp_path / "atlas" / "atlas_ga-28.0_T2w.nii.gz")
    brain = np.argwhere(t2.array > 0)[:50]
    xyz = torch.as_tensor(brain @ t2.voxel_to_ras[:3, :3].T + t2.voxel_to_ras[:3, 3], dtype=torch.float32)
    with torch.no_grad():
        model.use_appearance = True
        expected = np.clip(model.atlas(xyz, 28.0)[:, 0].numpy(), 0, None)
        model.use_appearance = False
        plain = np.clip(model.atlas(xyz, 28.0)[:, 0].numpy(), 0, None)
    np.testing.assert_allclose(t2.array[tuple(brain.T)], expected, atol=2e-4)
    assert np.abs(plain - expected).max() > 1e-3           # the offsets are in it (5× the tolerance)
    # --appearance-sigma 0: the template alone, recorded; another width is another atlas; bad widths refused
    alone = generate(run, [28.0], tmp_path / "alone", spacing_mm=3.2, position_sigma_weeks=0,
                     intensity_ceiling=False, appearance_sigma_weeks=0)
    assert alone["generated"] == ["28.0"]
    manifest = json.loads((tmp_path / "alone" / "atlas_manifest.json").read_text())
    assert manifest["identity"]["appearance_sigma_weeks"] == 0.0
    t2 = load_nifti(tmp_path / "alone" / "atlas_ga-28.0_T2w.nii.gz")
    np.testing.assert_allclose(t2.array[tuple(brain.T)], plain, atol=2e-4)
    # a fixed kernel (--appearance-fixed): recorded, so it is another atlas; refused for a run without offsets
    fixed = generate(run, [28.0], tmp_path / "fixed", spacing_mm=3.2, position_sigma_weeks=0,
                     intensity_ceiling=False, appearance_adaptive=False)
    assert fixed["generated"] == ["28.0"]
    manifest = json.loads((tmp_path / "fixed" / "atlas_manifest.json").read_text())
    assert manifest["identity"]["appearance_adaptive"] is False
    assert manifest["ga"]["28.0"]["appearance_sigma_used_weeks"] == 0.5
    with pytest.raises(ValueError, match="appearance sigma 0.5 weeks"):
        generate(run, [28.0], tmp_path / "atlas", spacing_mm=3.2, position_sigma_weeks=0, intensity_ceiling=False,
                 appearance_sigma_weeks=2.0)
    for bad in (-1.0, float("inf"), "wide"):
        with pytest.raises(ValueError, match="--appearance-sigma must be a number of weeks >= 0"):
            generate(run, [28.0], tmp_path / "bad", spacing_mm=3.2, appearance_sigma_weeks=bad)
    assert not (tmp_path / "bad").exists()
    # the width reaches the --jobs processes too: two GAs in two processes, the same files as in one
    two = generate(run, [28.0, 29.0], tmp_path / "two", spacing_mm=3.2, position_sigma_weeks=0,
                   intensity_ceiling=False, appearance_sigma_weeks=0, jobs=2)
    assert sorted(two["generated"]) == ["28.0", "29.0"]
    np.testing.assert_allclose(load_nifti(tmp_path / "two" / "atlas_ga-28.0_T2w.nii.gz").array[tuple(brain.T)],
                               plain, atol=2e-4)


def test_bad_appearance_keys_are_refused_with_the_key_named():
    with pytest.raises(TrainConfigError) as info:
        load_train_config(None, TEMPLATE + ["template.appearance=true", "template.appearance_weight=-1",
                                            "template.appearance_kernel_weeks=-1"])      # TEMPLATE is grid-encoded
    for key in ("template.appearance:", "template.appearance_weight", "template.appearance_kernel_weeks"):
        assert key in str(info.value), key
    with pytest.raises(TrainConfigError, match="template.appearance"):
        load_train_config(None, SMALL + ["template.appearance=true"])                   # model: infanite


def test_a_stack_decodes_its_ga_nodes_blended_plus_its_offset_as_the_per_sample_formula_says():
    """Several GA nodes: a stack's samples decode, at their displaced positions, the latent interpolated at the two
    GA nodes around the stack's GA, blended linearly in GA, plus its fetus's offset interpolated.  The model
    blends and adds on the grids and interpolates once (one grid per stack); outputs and gradients equal the
    per-sample formula's.  The atlas likewise, with the offsets' kernel mean."""
    from infanite.inr.model import interpolate_latents

    ga = [22.0, 24.3, 27.9, 31.0]
    model = _appearance_model(ga, ga_latents=4)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.template.decoder.latents.copy_(torch.randn(model.template.decoder.latents.shape, generator=generator))
        model.appearance.copy_(0.3 * torch.randn(model.appearance.shape, generator=generator))
        model.deformation.copy_(2.0 * torch.randn(model.deformation.shape, generator=generator))
    x = torch.rand(200, 3, generator=generator) * 60 - 30
    stack = torch.arange(200) % 4
    latents, offsets = model.template.decoder.latents, model.appearance

    def per_sample(points, ga_weeks, offset):
        xn = model.template_coordinates(points, ga_weeks)
        pos = model.normalised_ga(ga_weeks) * 3
        i0 = pos.floor().clamp(max=2).long()
        w = (pos - i0)[:, None]
        z = interpolate_latents(latents, i0, xn) * (1 - w) + interpolate_latents(latents, i0 + 1, xn) * w + offset(xn)
        return model.template.decoder.decode(xn, z)

    got = model(x, stack)
    expected = per_sample(x + model.displacement(x, model.stack_fetus[stack]), model.stack_ga[stack],
                          lambda xn: interpolate_latents(offsets, model.stack_fetus[stack], xn))
    np.testing.assert_allclose(got.detach().numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    g = torch.randn(got.shape, generator=generator)
    wanted = [latents, offsets, model.deformation]
    for a, b in zip(torch.autograd.grad(got, wanted, g), torch.autograd.grad(expected, wanted, g)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        mean = torch.einsum("f,f...->...", model.appearance_weights(25.0).to(offsets), offsets)[None]
        np.testing.assert_allclose(
            model.atlas(x, 25.0).numpy(),
            per_sample(x, torch.full((200,), 25.0), lambda xn: interpolate_latents(
                mean, torch.zeros(200, dtype=torch.long), xn)).numpy(), rtol=1e-5, atol=1e-5)
