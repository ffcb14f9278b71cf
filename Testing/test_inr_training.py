"""INR model, PSF jitter, weighted loss and training: analytic checks and exact resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from infanite.inr.data import pack_cohort, psf_jitter, weighted_loss
from infanite.inr.model import ModulatedSiren, interpolate_latents, interpolate_latents_naive
from infanite.inr.train import train
from infanite.inr.config_loading import load_train_config

TINY = ["inr_decoder.hidden_size=64", "inr_decoder.num_hidden_layers=3", "inr_decoder.modulated_layers=[1,3]",
        "inr_decoder.latent_dim=[16,3,3,3]", "n_samples=2000", "epochs.train=10", "checkpoint_every=10",
        "inr_decoder.tf_dim=0", "optimizer.lr_inr=1e-3", "optimizer.lr_latent=1e-2"]


def test_interpolation_is_trilinear_at_vertices_and_midpoints():
    torch.manual_seed(0)
    lat = torch.randn(2, 4, 3, 3, 3)
    vertices = torch.tensor([[-1.0, -1, -1], [0, 1, -1], [1, 0, 1], [0, 0, 0]])
    stack = torch.tensor([0, 1, 1, 0])
    got = interpolate_latents(lat, stack, vertices)
    for n, (x, y, z) in enumerate(vertices.long() + 1):       # x → last axis
        assert torch.allclose(got[n], lat[stack[n], :, z, y, x])
    mid = torch.tensor([[-0.5, 0.0, 0.5]])
    expected = 0.5 * (lat[0, :, 2, 1, 0] + lat[0, :, 2, 1, 1]) * 0.5 + 0.5 * (lat[0, :, 1, 1, 0] + lat[0, :, 1, 1, 1]) * 0.5
    assert torch.allclose(interpolate_latents(lat, torch.tensor([0]), mid)[0], expected, atol=1e-6)
    coords = torch.rand(500, 3) * 2.6 - 1.3                     # includes border clamping
    stacks = torch.randint(0, 2, (500,))
    assert torch.allclose(interpolate_latents(lat, stacks, coords), interpolate_latents_naive(lat, stacks, coords),
                          atol=1e-6)


@pytest.mark.parametrize("modulated", [(1, 3), (1, 2, 3), (), (2,)])
def test_lean_backward_equals_plain_autograd_in_float64(modulated):
    """The memory-lean trunk (recomputes sines/modulations) gives plain autograd's outputs and gradients."""
    torch.manual_seed(0)
    kw = dict(hidden_size=12, num_hidden_layers=3, modulated_layers=modulated, latent_dim=(5, 3, 3, 3), rigid=True)
    plain = ModulatedSiren(3, 4, [1, 2, 3], [20, 20, 20], lean=False, **kw).double()
    lean = ModulatedSiren(3, 4, [1, 2, 3], [20, 20, 20], lean=True, **kw).double()
    with torch.no_grad():
        plain.rigid.normal_(0, 0.1)
    lean.load_state_dict(plain.state_dict())
    coords = torch.randn(50, 3, dtype=torch.float64) * 15
    stack = torch.randint(0, 3, (50,))
    upstream = torch.randn(50, 4, dtype=torch.float64)
    out_plain, out_lean = plain(coords, stack), lean(coords, stack)
    (out_plain * upstream).sum().backward()
    (out_lean * upstream).sum().backward()
    assert torch.allclose(out_plain, out_lean, atol=1e-12)
    for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12), name


def test_lean_backward_under_bf16_autocast_matches_plain_autograd():
    torch.manual_seed(0)
    kw = dict(hidden_size=64, num_hidden_layers=3, modulated_layers=(1, 3), latent_dim=(8, 3, 3, 3))
    plain = ModulatedSiren(3, 4, [0, 0, 0], [20, 20, 20], lean=False, **kw)
    lean = ModulatedSiren(3, 4, [0, 0, 0], [20, 20, 20], **kw)
    lean.load_state_dict(plain.state_dict())
    coords, stack = torch.randn(500, 3) * 15, torch.randint(0, 3, (500,))
    for model in (plain, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(coords, stack)
        out.float().pow(2).mean().backward()
    for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
        assert b.grad.dtype == torch.float32
        assert ((a.grad - b.grad).norm() / a.grad.norm()).item() < 0.03, name     # bf16 rounding only


def test_psf_jitter_has_the_requested_covariance_and_keeps_constants():
    cov = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 2.0]])
    chol = torch.linalg.cholesky(cov)
    pts = psf_jitter(torch.zeros(1, 3), chol[None], 200_000, torch.Generator().manual_seed(0))[0]
    assert torch.allclose(torch.cov(pts.T), cov, atol=0.03)
    model = ModulatedSiren(1, 3, [0, 0, 0], [50, 50, 50], hidden_size=16, num_hidden_layers=2,
                           modulated_layers=(1,), latent_dim=(4, 3, 3, 3))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([0.7, -1.0, 2.0]))
    jittered = psf_jitter(torch.randn(10, 3) * 10, chol.expand(10, 3, 3), 16)
    averaged = model(jittered.reshape(-1, 3), torch.zeros(160, dtype=torch.long)).reshape(10, 16, 3).mean(1)
    assert torch.allclose(averaged, torch.tensor([0.7, -1.0, 2.0]).expand(10, 3), atol=1e-6)


def test_weighted_loss_matches_a_hand_computation():
    pred = torch.tensor([[0.5, 0.0, 2.0, 0.0, 0.0], [0.1, 0.0, 0.0, 1.0, 0.0], [0.9, 0.0, 0.0, 0.0, 3.0]])
    intensity = torch.tensor([0.4, 0.3, 0.9])
    label = torch.tensor([1, 2, 3])
    weight = torch.tensor([1.6, 0.8, 0.8])
    cw = torch.tensor([0.0, 1.0, 1.0, 2.0])
    total, l_int, l_seg = weighted_loss(pred, intensity, label, weight, cw, "l1", seg_weight=0.5)
    w = weight.numpy()
    expect_int = (1.6 * 0.1 + 0.8 * 0.2 + 0.8 * 0.0) / w.sum()
    logits = pred[:, 1:].numpy()
    ce = [-(logits[i, label[i]] - np.log(np.exp(logits[i]).sum())) * cw[label[i]].item() for i in range(3)]
    expect_seg = float((w * np.array(ce)).sum() / w.sum())
    assert l_int.item() == pytest.approx(expect_int, rel=1e-5)
    assert l_seg.item() == pytest.approx(expect_seg, rel=1e-5)
    assert total.item() == pytest.approx(expect_int + 0.5 * expect_seg, rel=1e-5)
    _, l_mse, _ = weighted_loss(pred, intensity, label, weight, cw, "mse")
    assert l_mse.item() == pytest.approx((1.6 * 0.01 + 0.8 * 0.04) / w.sum(), rel=1e-4)


def test_cpu_matmul_modes_and_the_precision_restored_after():
    from infanite.devices import cpu_matmul_in_bf16, cpu_multiplies_bf16, float32_matmul_precision

    assert cpu_matmul_in_bf16("fp32") is False and cpu_matmul_in_bf16("bf16") is True
    assert cpu_matmul_in_bf16("auto") is cpu_multiplies_bf16()
    with pytest.raises(ValueError, match="cpu_matmul"):
        cpu_matmul_in_bf16("fast")
    before = torch.get_float32_matmul_precision()
    with pytest.raises(RuntimeError, match="inside"):
        with float32_matmul_precision("medium"):
            assert torch.get_float32_matmul_precision() == "medium"
            raise RuntimeError("inside")
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_a_cpu_run_says_how_it_multiplied_and_leaves_the_process_precision_alone(registered, tmp_path, mode):
    before = torch.get_float32_matmul_precision()
    seen = []
    from infanite.inr import train as train_module

    step_loss = train_module._step_loss

    def spy(*args, **kwargs):                    # the precision the steps run under
        seen.append(torch.get_float32_matmul_precision())
        return step_loss(*args, **kwargs)

    train_module._step_loss = spy
    try:
        summary = train(registered, load_train_config(None, TINY + ["max_steps=3", f"cpu_matmul={mode}"]),
                        tmp_path / "run")
    finally:
        train_module._step_loss = step_loss
    assert summary["cpu_matmul"] == mode
    assert seen == ["medium" if mode == "bf16" else before] * 3
    assert torch.get_float32_matmul_precision() == before


@pytest.fixture(scope="module")
def registered(phantom_registered):
    return phantom_registered["registered"]


def test_training_lowers_the_loss_and_learns_labels(registered, tmp_path):
    config = load_train_config(None, TINY + ["max_steps=150"])
    summary = train(registered, config, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 150 == summary["steps"]
    assert np.mean([r["loss"] for r in log[-10:]]) < 0.6 * np.mean([r["loss"] for r in log[:10]])
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    data = pack_cohort(registered, list(range(1, 9)))
    from infanite.inr.train import build_model

    model = build_model(config, len(data.stack_ids), data.halo_label, data.centre_mm, data.half_extent_mm)
    model.load_state_dict(state["model"])
    brain = data.label < data.halo_label
    with torch.no_grad():
        pred = model(data.coords_mm[brain], data.stack[brain])[:, 1:].argmax(1)
    truth = data.label[brain]
    accuracy = (pred == truth).float().mean().item()
    wm = truth == 1
    assert accuracy > 0.5 and (pred[wm] == 1).float().mean().item() > 0.7


@pytest.mark.parametrize("term, weight", [("exact", ["data.label_weight=0.25"]),
                                          ("reference", ["optimizer.seg_weight=0.5"])])
def test_each_data_term_weighs_its_labels_by_its_own_key(registered, tmp_path, term, weight):
    """The logged loss of every step is intensity + w·labels + penalties, with w from ``data.label_weight`` for the
    exact term and ``optimizer.seg_weight`` for the reference term."""
    config = load_train_config(None, TINY + ["max_steps=4", f"data.term={term}"] + weight)
    train(registered, config, tmp_path / "run")
    w = float(weight[0].split("=")[1])
    for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["loss_seg"] > 0.1 and r["loss"] == pytest.approx(
            r["loss_intensity"] + w * r["loss_seg"] + r["loss_penalty"], rel=1e-5, abs=1e-7)


def test_resume_after_kill_reproduces_the_loss_curve(registered, tmp_path):
    config = load_train_config(None, TINY + ["max_steps=40"])
    train(registered, config, tmp_path / "full")
    train(registered, config, tmp_path / "killed", stop_after_steps=25)   # last checkpoint at step 20
    train(registered, config, tmp_path / "killed", resume=True)
    full = [json.loads(x)["loss"] for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x)["loss"] for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert len(full) == len(resumed) == 40
    np.testing.assert_allclose(resumed, full, rtol=1e-6, atol=1e-7)


def _complete_lines(path) -> list[str]:
    """The lines of a file another process is appending to, without a last line still being written."""
    text = path.read_text() if path.exists() else ""
    return text[:text.rfind("\n") + 1].splitlines()


def test_kill_9_mid_epoch_then_resume_reproduces_the_loss_curve(registered, tmp_path):
    """A real SIGKILL of ``python -m infanite train``, then ``--resume``: the losses equal an uninterrupted run."""
    from infanite.pipeline.run import sized_defaults

    overrides = TINY + ["max_steps=400", "epochs.train=50"]
    # what the command line trains without --config on a CPU: the CPU defaults (the template model: this cohort
    # spans GAs and groups its stacks into fetuses; its GA nodes sized to it), then the --set values
    config = load_train_config(None, sized_defaults(registered, "cpu") + overrides + ["device=cpu"])
    train(registered, config, tmp_path / "full", stop_after_steps=60)
    run, events = tmp_path / "killed", tmp_path / "progress.jsonl"
    cmd = [sys.executable, "-m", "infanite", "train", "--manifest", str(registered), "--out", str(run),
           "--device", "cpu", "--progress-json", str(events)] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        lines = _complete_lines(events)
        if lines and json.loads(lines[-1])["step"] >= 15:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()
    record = json.loads(_complete_lines(events)[-1])
    assert {"loss", "loss_intensity", "loss_seg", "samples_per_s", "memory_mb", "eta_s", "epoch"} <= set(record)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint_step = state["global_step"]
    assert state["model_type"] == "template"
    assert 10 <= checkpoint_step < 60 and checkpoint_step % 10 == 0
    train(registered, load_train_config(run / "config.yaml"), run, resume=True,
          stop_after_steps=60 - checkpoint_step)
    full = [json.loads(x)["loss"] for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    resumed = [json.loads(x)["loss"] for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(full) == len(resumed) == 60
    np.testing.assert_allclose(resumed, full, rtol=1e-6, atol=1e-7)


def test_torch_compile_switch_trains_like_eager(registered, tmp_path):
    eager = train(registered, load_train_config(None, TINY + ["max_steps=5"]), tmp_path / "eager")
    compiled = train(registered, load_train_config(None, TINY + ["max_steps=5", "compile=true"]), tmp_path / "comp")
    assert compiled["steps"] == eager["steps"] == 5
    losses = [[json.loads(x)["loss"] for x in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
              for run in ("eager", "comp")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-3)
    state = torch.load(tmp_path / "comp" / "checkpoint.pt", weights_only=True)["model"]
    assert not any(key.startswith("_orig_mod") for key in state)     # loadable into a plain model


def test_rigid_refinement_penalty_and_mapping_in_mm():
    model = ModulatedSiren(2, 3, [10.0, 0.0, 0.0], [30.0, 40.0, 50.0], hidden_size=8, num_hidden_layers=1,
                           modulated_layers=(1,), latent_dim=(2, 3, 3, 3), rigid=True)
    assert model.rigid_penalty().item() == 0.0
    with torch.no_grad():
        model.rigid[1] = torch.tensor([0.0, 0.0, np.pi / 2, 1.0, 2.0, 2.0])       # 90° about z, t = (1, 2, 2) mm
    # (1·π/2·40)² + 9 for stack 1, 0 for stack 0, averaged
    assert model.rigid_penalty().item() == pytest.approx(((40 * np.pi / 2) ** 2 + 9) / 2, rel=1e-5)
    moved = model.apply_rigid(torch.tensor([[11.0, 0.0, 0.0]]), torch.tensor([1]))    # 1 mm from the centre on x
    assert torch.allclose(moved, torch.tensor([[10.0 + 1.0, 1.0 + 2.0, 2.0]]), atol=1e-5)


def test_ablation_switches_psf_free_and_uniform_weights(registered, tmp_path):
    packed = pack_cohort(registered, list(range(1, 9)))
    uniform = pack_cohort(registered, list(range(1, 9)), w_int=0.8, uniform_weights=True)
    brain = uniform.label < uniform.halo_label
    assert torch.all(uniform.weight[brain] == 1.0) and torch.all(uniform.weight[~brain] == 0.8)
    assert len(torch.unique(packed.weight[brain])) > 1                   # the W maps: observed vs interpolated
    train(registered, load_train_config(None, TINY + ["max_steps=3", "psf.mode=none"]), tmp_path / "nopsf")
    log = [json.loads(x) for x in (tmp_path / "nopsf" / "train_log.jsonl").read_text().splitlines()]
    assert [r["psf_samples"] for r in log] == [1, 1, 1]
    with pytest.raises(ValueError, match="tf_dim"):
        load_train_config(None, ["inr_decoder.tf_dim=9"])
