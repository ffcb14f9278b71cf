"""Per-slice rigid motion (``data.slice_motion``): the rigid maps, the stack gauge, the slices of the acquired
samples, recovery of known motions through a known field, and a training run that holds, learns and resumes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from infanite.inr.config import TrainConfigError
from infanite.inr.config_loading import load_train_config
from infanite.inr.slice_motion import RADIUS_MM, SliceMotion, rotation_matrices
from infanite.inr.train import train

SMALL = ["n_samples=1500", "epochs.train=50", "checkpoint_every=10", "psf.samples_per_epoch=[4]",
         "inr_decoder.hidden_size=32", "inr_decoder.num_hidden_layers=2", "inr_decoder.modulated_layers=[1]",
         "inr_decoder.latent_dim=[8,3,3,3]", "optimizer.lr_inr=1e-3", "optimizer.lr_latent=1e-2"]
MOVING = SMALL + ["data.slice_motion=true", "data.slice_motion_warmup=10"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rotation_matrices_are_rodrigues_rotations():
    rotvec = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.5], [1e-6, 2e-6, -1e-6], [0.0, 0.0, np.pi / 2]],
                          dtype=torch.float64)
    expected = Rotation.from_rotvec(rotvec.numpy()).as_matrix()
    np.testing.assert_allclose(rotation_matrices(rotvec).numpy(), expected, atol=1e-12)


def test_a_slice_moves_rigidly_about_its_centre_relative_to_its_stack():
    """Slices 0-2 of stack 0, slice 3 alone in stack 1.  A slice's points turn about its centre and shift by its
    translation, relative to its stack's mean motion: a motion shared by every slice of a stack moves nothing."""
    centres = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 6.0], [10.0, 0.0, 0.0]])
    motion = SliceMotion([0, 0, 0, 1], centres)
    points = torch.tensor([[5.0, 1.0, 0.0], [5.0, 1.0, 3.0], [5.0, 1.0, 6.0], [12.0, 1.0, 0.0]])
    slices = torch.arange(4)
    with torch.no_grad():
        motion.params[:] = torch.tensor([0.0, 0.0, 20.0, 1.0, 2.0, 3.0])    # all alike: no relative motion
    np.testing.assert_allclose(motion(points, slices).detach().numpy(), points.numpy(), atol=1e-6)
    with torch.no_grad():
        motion.params.zero_()
        motion.params[1] = torch.tensor([0.0, 0.0, 30.0, 1.5, 0.0, -3.0])       # slice 1: 30 mm at 50 mm about z
    relative = motion.relative().detach()
    np.testing.assert_allclose(relative[[0, 2]].numpy(), -np.tile([0, 0, 10, 0.5, 0, -1], (2, 1)), atol=1e-6)
    np.testing.assert_allclose(relative[1].numpy(), [0, 0, 20, 1.0, 0, -2], atol=1e-6)
    np.testing.assert_allclose(relative[3].numpy(), 0, atol=1e-7)             # a one-slice stack cannot move
    moved = motion(points, slices).detach().numpy()
    turn = Rotation.from_rotvec([0, 0, 20 / RADIUS_MM]).as_matrix()
    np.testing.assert_allclose(moved[1], turn @ (points[1] - centres[1]).numpy() + centres[1].numpy()
                               + [1.0, 0, -2], atol=1e-5)
    # the PSF samples (N, P, 3) of a slice move like its centre point
    cloud = points[:, None, :] + torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))
    moved_cloud = motion(cloud, slices).detach().numpy()
    for n in range(4):
        rot = rotation_matrices(relative[n:n + 1, :3] / RADIUS_MM)[0].numpy()
        expected = (cloud[n].numpy() - centres[n].numpy()) @ rot.T + centres[n].numpy() + relative[n, 3:].numpy()
        np.testing.assert_allclose(moved_cloud[n], expected, atol=1e-5)
    summary = motion.summary()
    assert summary["slices"] == 4 and summary["translation_max_mm"] == pytest.approx(np.sqrt(5), rel=1e-5)
    assert summary["rotation_max_deg"] == pytest.approx(20 / RADIUS_MM * 180 / np.pi, rel=1e-5)


def test_a_stack_moves_rigidly_about_its_fetus_centre_relative_to_its_fetus():
    """``data.stack_motion``: stacks 0 and 1 of fetus 0 (two slices each), stack 2 alone in fetus 1.  A stack's
    samples turn about its fetus's centre (the mean of its slices' centres) and shift, relative to the mean of its
    fetus's stacks, after their slice's own motion; a fetus with one stack gets none."""
    centres = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, 3.0], [0.0, -3.0, 0.0], [0.0, 3.0, 0.0],
                            [20.0, 0.0, 0.0]])
    motion = SliceMotion([0, 0, 1, 1, 2], centres, stack_fetus=[0, 0, 1], per_slice=False)
    assert motion.params.numel() == 0
    np.testing.assert_allclose(motion.stack_centre.numpy(), [[0, 0, 0], [0, 0, 0], [20, 0, 0]], atol=1e-6)
    points = torch.tensor([[5.0, 1.0, -3.0], [5.0, 1.0, 3.0], [5.0, -3.0, 2.0], [5.0, 3.0, 2.0], [22.0, 1.0, 0.0]])
    slices = torch.arange(5)
    with torch.no_grad():
        motion.stack_params[:] = torch.tensor([0.0, 0.0, 20.0, 1.0, 2.0, 3.0])    # all alike: nothing moves
    np.testing.assert_allclose(motion(points, slices).detach().numpy(), points.numpy(), atol=1e-6)
    with torch.no_grad():
        motion.stack_params.zero_()
        motion.stack_params[0] = torch.tensor([0.0, 0.0, 40.0, 2.0, 0.0, -4.0])
        motion.stack_params[2] = torch.tensor([0.0, 30.0, 0.0, 5.0, 5.0, 5.0])    # alone in its fetus
    relative = motion.stack_relative().detach()
    np.testing.assert_allclose(relative.numpy(), [[0, 0, 20, 1, 0, -2], [0, 0, -20, -1, 0, 2], [0] * 6], atol=1e-6)
    moved = motion(points, slices).detach().numpy()
    for n, stack in enumerate([0, 0, 1, 1]):
        turn = Rotation.from_rotvec(relative[stack, :3].numpy() / RADIUS_MM).as_matrix()
        np.testing.assert_allclose(moved[n], turn @ points[n].numpy() + relative[stack, 3:].numpy(), atol=1e-5)
    np.testing.assert_allclose(moved[4], points[4].numpy(), atol=1e-6)
    assert motion.penalty().item() == pytest.approx(float((relative ** 2).mean()), rel=1e-6)
    summary = motion.summary()
    assert "slices" not in summary and summary["stacks"] == 3
    assert summary["stack_translation_max_mm"] == pytest.approx(np.sqrt(5), rel=1e-5)
    # with slice motions too, a sample moves by its slice's motion, then by its stack's
    both = SliceMotion([0, 0, 1, 1, 2], centres, stack_fetus=[0, 0, 1])
    with torch.no_grad():
        both.stack_params.copy_(motion.stack_params)
        both.params[0] = torch.tensor([0.0, 10.0, 0.0, 0.5, 0.0, 0.0])
    first = SliceMotion([0, 0, 1, 1, 2], centres)
    with torch.no_grad():
        first.params.copy_(both.params)
    np.testing.assert_allclose(both(points, slices).detach().numpy(),
                               motion(first(points, slices), slices).detach().numpy(), atol=1e-5)


def test_known_slice_motions_are_recovered_through_a_known_field():
    """Samples of 12 slices of one stack read a smooth analytic field at positions each slice's motion moved;
    fitting the motions to those readings recovers them (less their mean, the stack's pose), within 0.05 mm and
    0.1°."""
    rng = np.random.default_rng(3)
    n_slices, per_slice = 12, 400
    centres = np.c_[np.zeros((n_slices, 2)), np.arange(n_slices) * 3.0 - 16.5]
    points = np.concatenate([np.c_[rng.uniform(-25, 25, (per_slice, 2)), np.full(per_slice, z)]
                             for z in centres[:, 2]]).astype(np.float32)
    slices = torch.as_tensor(np.repeat(np.arange(n_slices), per_slice))

    def field(x):                                  # smooth, with gradients in every direction
        return (torch.sin(x[..., 0] / 7) * torch.cos(x[..., 1] / 9) + torch.sin(x[..., 2] / 8 + x[..., 0] / 11)
                + 0.5 * torch.cos((x[..., 1] + x[..., 2]) / 6))

    true = np.c_[rng.normal(0, 1.5, (n_slices, 3)), rng.normal(0, 1.0, (n_slices, 3))]     # r (mm at 50), t
    truth = SliceMotion(torch.zeros(n_slices, dtype=torch.long), torch.as_tensor(centres, dtype=torch.float32))
    with torch.no_grad():
        truth.params.copy_(torch.as_tensor(true, dtype=torch.float32))
        readings = field(truth(torch.as_tensor(points), slices))
    fitted = SliceMotion(torch.zeros(n_slices, dtype=torch.long), torch.as_tensor(centres, dtype=torch.float32))
    optimizer = torch.optim.Adam(fitted.parameters(), lr=0.05)
    for _ in range(600):
        optimizer.zero_grad()
        loss = ((field(fitted(torch.as_tensor(points), slices)) - readings) ** 2).mean()
        loss.backward()
        optimizer.step()
    got, want = fitted.relative().detach().numpy(), truth.relative().detach().numpy()
    np.testing.assert_allclose(got[:, 3:], want[:, 3:], atol=0.05)                         # mm
    np.testing.assert_allclose(got[:, :3] / RADIUS_MM * 180 / np.pi, want[:, :3] / RADIUS_MM * 180 / np.pi,
                               atol=0.1)                                                   # degrees


def test_each_acquired_sample_carries_its_slice(registered):
    """The slices of the acquired samples: one per (stack, through-plane index) that holds samples, each sample's
    slice the through-plane voxel index of its stack voxel, and a slice's centre the mean of its samples."""
    from infanite.inr.samples import pack_acquired
    from infanite.io.cohort_checks import load_cohort
    from infanite.io.images import load_nifti

    data = pack_acquired(registered, list(range(1, 9)), halo_mm=4.0)
    cohort = load_cohort(registered)
    assert data.slice_index.shape == data.stack.shape
    assert torch.equal(data.slice_stack[data.slice_index], data.stack)
    total = 0
    for s, record in enumerate(cohort.stacks):
        image = load_nifti(record.extra["source_T2w"])
        spacing = np.linalg.norm(image.voxel_to_ras[:3, :3], axis=0)
        # the slices hold samples of this stack only, at most one per through-plane index
        n = int((data.slice_stack == s).sum())
        assert 0 < n <= image.array.shape[int(np.argmax(spacing))]
        total += n
        # a slice's samples, mapped back into the stack, share one through-plane index
        pose = np.array([float(v) for v in record.extra["template_to_stack"].split(",")]).reshape(4, 4)
        mine = (data.stack == s).numpy()
        coords = data.coords_mm.numpy()[mine].astype(np.float64)
        ijk = (np.c_[coords, np.ones(len(coords))] @ (np.linalg.inv(image.voxel_to_ras) @ pose).T)[:, :3]
        k = np.rint(ijk[:, int(np.argmax(spacing))]).astype(int)
        for slice_id in np.unique(data.slice_index.numpy()[mine]):
            assert len(np.unique(k[data.slice_index.numpy()[mine] == slice_id])) == 1
    assert total == len(data.slice_stack) == int(data.slice_index.max()) + 1
    for slice_id in range(len(data.slice_stack)):          # slice_number: the index found above, per slice
        s = int(data.slice_stack[slice_id])
        record = cohort.stacks[s]
        image = load_nifti(record.extra["source_T2w"])
        pose = np.array([float(v) for v in record.extra["template_to_stack"].split(",")]).reshape(4, 4)
        point = np.r_[data.coords_mm[data.slice_index == slice_id][0].double().numpy(), 1.0]
        ijk = (np.linalg.inv(image.voxel_to_ras) @ pose @ point)[:3]
        axis = int(np.argmax(np.linalg.norm(image.voxel_to_ras[:3, :3], axis=0)))
        assert int(np.rint(ijk[axis])) == int(data.slice_number[slice_id])
    for slice_id in (0, len(data.slice_stack) // 2, len(data.slice_stack) - 1):
        np.testing.assert_allclose(data.slice_centre_mm[slice_id].numpy(),
                                   data.coords_mm[data.slice_index == slice_id].double().mean(0).numpy(), atol=1e-3)


def test_a_run_holds_the_slices_for_the_warm_up_then_moves_them_and_resumes_exactly(registered, tmp_path):
    config = load_train_config(None, MOVING + ["max_steps=30"])
    summary = train(registered, config, tmp_path / "full")
    assert summary["slice_motion"]["slices"] > 0 and summary["slice_motion"]["translation_rms_mm"] > 0
    written = json.loads((tmp_path / "full" / "slice_motion.json").read_text())     # every slice, per stack
    rows = [r for stack in written["stacks"].values() for r in stack]
    assert len(rows) == summary["slice_motion"]["slices"] and set(written["stacks"]) == set(summary_stacks(registered))
    largest = max(np.linalg.norm(r["translation_mm"]) for r in rows)
    assert largest == pytest.approx(summary["slice_motion"]["translation_max_mm"], abs=1e-3)
    assert all(len({r["slice"] for r in stack}) == len(stack) for stack in written["stacks"].values())
    train(registered, config, tmp_path / "killed", stop_after_steps=10)          # checkpoint at step 10
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert state["global_step"] == 10 and torch.count_nonzero(state["slice_motion"]["params"]) == 0   # held
    train(registered, config, tmp_path / "killed", resume=True)
    full = [json.loads(x)["loss"] for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x)["loss"] for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert len(full) == len(resumed) == 30
    np.testing.assert_allclose(resumed, full, rtol=1e-6, atol=1e-7)
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert torch.count_nonzero(state["slice_motion"]["params"]) > 0                 # moved after the warm-up
    with pytest.raises(ValueError, match="data.slice_motion"):                      # a run without the motions
        train(registered, load_train_config(None, SMALL + ["max_steps=30"]), tmp_path / "killed", resume=True)


STACK_MOVING = SMALL + ["model=template", "template.encoding=grid", "template.grid_resolutions=[8,16,32]",
                        "template.ga_nodes=[2,2,2]", "template.deformation_warmup=6", "template.hidden_size=32",
                        "data.stack_motion=true", "data.slice_motion_warmup=10", "max_steps=30"]


def test_a_run_refines_each_stack_relative_to_its_fetus_after_the_warm_up_and_resumes_exactly(registered, tmp_path):
    """``data.stack_motion`` without slice motions: the stacks held for the warm-up, then moved, each fetus's
    stacks summing to no motion; ``slice_motion.json`` has every stack's; a killed run resumes exactly."""
    config = load_train_config(None, STACK_MOVING)
    summary = train(registered, config, tmp_path / "full")
    assert "slices" not in summary["slice_motion"] and summary["slice_motion"]["stack_translation_rms_mm"] > 0
    written = json.loads((tmp_path / "full" / "slice_motion.json").read_text())
    assert set(written["stack_motion"]) == set(summary_stacks(registered))
    assert all(rows == [] for rows in written["stacks"].values())
    from infanite.io.cohort_checks import load_cohort

    fetus_of = {r.subject_id: r.subject for r in load_cohort(registered).stacks}
    for fetus in set(fetus_of.values()):
        moves = np.array([written["stack_motion"][s]["translation_mm"] for s, f in fetus_of.items() if f == fetus])
        np.testing.assert_allclose(moves.sum(0), 0, atol=1e-3)
    train(registered, config, tmp_path / "killed", stop_after_steps=10)
    state = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert torch.count_nonzero(state["slice_motion"]["stack_params"]) == 0                 # held
    train(registered, config, tmp_path / "killed", resume=True)
    full = [json.loads(x)["loss"] for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x)["loss"] for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert len(full) == len(resumed) == 30
    np.testing.assert_allclose(resumed, full, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="data.stack_motion"):                         # a run without them
        train(registered, load_train_config(None, [o for o in STACK_MOVING if "stack_motion" not in o]),
              tmp_path / "killed", resume=True)


def summary_stacks(registered) -> list:
    from infanite.io.cohort_checks import load_cohort

    return [r.subject_id for r in load_cohort(registered).stacks]


def test_slice_motion_is_refused_where_there_are_no_slices_or_the_keys_are_bad():
    with pytest.raises(TrainConfigError, match="data.stack_motion: .*data.term exact"):
        load_train_config(None, SMALL + ["model=template", "data.stack_motion=true", "data.term=reference"])
    with pytest.raises(TrainConfigError, match="data.stack_motion: .*model template"):
        load_train_config(None, SMALL + ["data.stack_motion=true"])
    with pytest.raises(TrainConfigError, match="data.slice_motion: .*data.term exact"):
        load_train_config(None, SMALL + ["data.slice_motion=true", "data.term=reference"])
    with pytest.raises(TrainConfigError, match="data.slice_motion_lr"):
        load_train_config(None, MOVING + ["data.slice_motion_lr=-1"])
    with pytest.raises(TrainConfigError, match="data.slice_motion_warmup"):
        load_train_config(None, MOVING + ["data.slice_motion_warmup=-5"])
