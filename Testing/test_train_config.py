"""Training configuration: defaults, reference config_atlas.yaml, overrides, validation, round trip."""
from __future__ import annotations

import textwrap

import pytest

from infanite.inr.config import TrainConfig, TrainConfigError
from infanite.inr.config_loading import config_from_dict, load_train_config

# The reference configs/config_atlas.yaml (method-reference.md section 5), as shipped.
REFERENCE_CONFIG_ATLAS = textwrap.dedent("""\
    root_dir: ''
    logging: False
    output_dir: ./INFANiTE_result
    wandb_entity: someone
    project_name: INFANiTE
    config_data: fetal
    device: cuda
    device_dataset: cpu
    amp: True
    seed: 42
    generate_cond_atlas: True
    mask_reconstruction: True
    save_certainty_maps: False
    compute_metrics: True
    save_imgs:
      train: True
      val: True
    save_model: True
    load_model:
      path: ""
      epoch: 1
    data_augmentation:
      activate: False
      rotation: 10
    optimizer:
      re_init_latents: False
      lr_inr: 1e-4
      lr_latent: 5e-4
      lr_tf: 7.5e-3
      inr_weight_decay: 0
      latent_weight_decay: 0
      tf_weight_decay: 0
      tf_weight: 0.0
      loss_metric: 'l1'
      seg_weight: 1.0
      scheduler:
        type: cosine
        eta_min: 2.5e-5
    inr_decoder:
      tf_dim: 6
      cnn_kernel_size: 0
      latent_dim: [256, 3, 3, 3]
      in_dim: 3
      out_dim: [1, 10]
      hidden_size: 1024
      num_hidden_layers: 5
      modulated_layers: [1, 3, 5]
      omega: [30, 30]
    atlas_gen:
      spacing: [0.8, 0.8, 0.8]
      temporal_values: [21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39]
      conditions: {}
      gaussian_span: 1.0
      cond_scale: 0.05
    n_subjects:
      train: 600
    epochs:
      train: 5
    spatial_weighting:
      path: ./mask_samples_flat
      w_obs: 1.6
      w_int: 0.8
    validate_every: 1
    batch_size: 250
    n_samples: 18000
    num_workers: 16
    """)


def _write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def _errors(excinfo) -> str:
    return str(excinfo.value)


def test_defaults_are_paper_values():
    c = load_train_config()
    assert c == TrainConfig()
    assert c.n_samples == 18000 and c.epochs.train == 5 and c.seed == 42 and c.amp is True
    d = c.inr_decoder
    assert (d.hidden_size, d.num_hidden_layers, d.modulated_layers) == (1024, 5, [1, 3, 5])
    assert (d.latent_dim, d.omega, d.tf_dim, d.in_dim) == ([256, 3, 3, 3], [30, 30], 0, 3)   # tf_dim: measured off
    o = c.optimizer
    assert (o.lr_inr, o.lr_latent, o.lr_tf) == (1e-4, 5e-4, 7.5e-3)
    assert o.inr_weight_decay == o.latent_weight_decay == o.tf_weight_decay == o.tf_weight == 0
    assert (o.loss_metric, o.seg_weight) == ("l1", 1.0)
    assert (o.scheduler.type, o.scheduler.eta_min) == ("cosine", 2.5e-5)
    assert (c.spatial_weighting.w_obs, c.spatial_weighting.w_int, c.spatial_weighting.path) == (1.6, 0.8, "")
    assert c.max_steps is None and c.checkpoint_every == 500
    assert c.psf.mode == "slice" and c.psf.samples_per_epoch == [4, 8, 16]
    assert c.psf.isotropic_sigma_norm == 0.02 and c.psf.inplane_fwhm_factor == 1.2
    assert (c.halo.sigma_voxels, c.halo.threshold) == (1.5, 0.01)
    assert c.class_weights is None and c.compile is False and c.device == "cpu" and c.deterministic is True
    assert c.ignored_keys == {}
    # defaults are not shared between instances
    c.inr_decoder.modulated_layers.append(2)
    assert TrainConfig().inr_decoder.modulated_layers == [1, 3, 5]


def test_reference_config_atlas_loads(tmp_path):
    c = load_train_config(_write(tmp_path, REFERENCE_CONFIG_ATLAS, "config_atlas.yaml"))
    # same as defaults except the reference device, weighting path and rigid refinement (our default: off)
    assert c.device == "cuda" and c.spatial_weighting.path == "./mask_samples_flat"
    expected = TrainConfig()
    expected.device, expected.spatial_weighting.path = "cuda", "./mask_samples_flat"
    expected.inr_decoder.tf_dim = 6
    assert c == expected
    # "1e-4" is a string for PyYAML; it is still read as a number
    assert isinstance(c.optimizer.lr_inr, float) and c.optimizer.lr_inr == 1e-4
    for k in ("root_dir", "logging", "output_dir", "wandb_entity", "project_name", "config_data",
              "device_dataset", "generate_cond_atlas", "mask_reconstruction", "save_certainty_maps",
              "compute_metrics", "save_imgs", "save_model", "load_model", "data_augmentation", "n_subjects",
              "batch_size", "num_workers", "validate_every", "atlas_gen", "optimizer.re_init_latents",
              "inr_decoder.cnn_kernel_size", "inr_decoder.out_dim"):
        assert k in c.ignored_keys and c.ignored_keys[k], k


def test_epochs_shorthand_and_partial_file(tmp_path):
    c = load_train_config(_write(tmp_path, """\
        epochs: 2
        inr_decoder:
          hidden_size: 64
        """))
    assert c.epochs.train == 2 and c.inr_decoder.hidden_size == 64
    assert c.inr_decoder.num_hidden_layers == 5  # untouched keys keep defaults


def test_overrides_parsed_as_yaml(tmp_path):
    path = _write(tmp_path, "max_steps: 3\nn_samples: 100\n")
    c = load_train_config(path, ["inr_decoder.modulated_layers=[1,3]", "max_steps=10",
                                 "psf.mode=isotropic", "amp=false", "optimizer.lr_inr=2e-4",
                                 "class_weights=[0, 1, 2]", "epochs.train=1"])
    assert c.inr_decoder.modulated_layers == [1, 3]
    assert c.max_steps == 10 and c.n_samples == 100  # --set wins over the file
    assert c.psf.mode == "isotropic" and c.amp is False and c.optimizer.lr_inr == 2e-4
    assert c.class_weights == [0.0, 1.0, 2.0] and c.epochs.train == 1
    assert load_train_config(None, ["max_steps=null"]).max_steps is None


def test_unknown_key_with_suggestion(tmp_path):
    path = _write(tmp_path, "inr_decoder:\n  hidden_sise: 64\n")
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(path)
    msg = _errors(ei)
    assert str(path) in msg and "inr_decoder.hidden_sise" in msg and "unknown key" in msg
    assert "did you mean 'inr_decoder.hidden_size'" in msg
    with pytest.raises(ValueError) as ei:
        load_train_config(None, ["optimiser.lr_inr=1"])
    assert "--set: optimiser.lr_inr: unknown key" in _errors(ei) and "'optimizer.lr_inr'" in _errors(ei)


def test_wrong_type(tmp_path):
    path = _write(tmp_path, 'inr_decoder:\n  hidden_size: "big"\namp: 1\noptimizer: 3\n')
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(path)
    msg = _errors(ei)
    assert f"{path}: inr_decoder.hidden_size: must be an integer" in msg
    assert f"{path}: amp: must be true or false" in msg
    assert f"{path}: optimizer: must be a mapping" in msg
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(None, ["inr_decoder.latent_dim=[256, x, 3, 3]", "optimizer.lr_tf=fast"])
    msg = _errors(ei)
    assert "--set: inr_decoder.latent_dim: item 1 must be an integer" in msg
    assert "--set: optimizer.lr_tf: must be a finite number" in msg


@pytest.mark.parametrize("override, key, fragment", [
    ("inr_decoder.hidden_size=0", "inr_decoder.hidden_size", "must be > 0"),
    ("inr_decoder.modulated_layers=[1,6]", "inr_decoder.modulated_layers", "1..5"),
    ("inr_decoder.modulated_layers=[0]", "inr_decoder.modulated_layers", "1..5"),
    ("inr_decoder.latent_dim=[256,3,3]", "inr_decoder.latent_dim", "4 positive integers"),
    ("inr_decoder.latent_dim=[256,3,0,3]", "inr_decoder.latent_dim", "4 positive integers"),
    ("optimizer.lr_latent=-1e-4", "optimizer.lr_latent", "must be in [0, 1]"),
    ("optimizer.lr_latent=1e308", "optimizer.lr_latent", "must be in [0, 1]"),
    ("template.lr_deformation=2", "template.lr_deformation", "must be in [0, 1]"),
    ("epochs.train=0", "epochs.train", "must be > 0"),
    ("optimizer.loss_metric=huber", "optimizer.loss_metric", "l1, mse"),
    ("psf.mode=gaussian", "psf.mode", "slice, isotropic"),
    ("psf.samples_per_epoch=[]", "psf.samples_per_epoch", "non-empty"),
    ("psf.samples_per_epoch=[4,0]", "psf.samples_per_epoch", "positive"),
    ("spatial_weighting.w_obs=-1", "spatial_weighting.w_obs", "must be >= 0"),
    ("spatial_weighting.w_int=-0.5", "spatial_weighting.w_int", "must be >= 0"),
    ("max_steps=0", "max_steps", "must be > 0"),
    ("device=gpu", "device", "cuda"),
    ("data.fetus_balance=1.5", "data.fetus_balance", "in [0, 1]"),
    ("data.halo_intensity=blurred", "data.halo_intensity", "zero"),
    ("data.fetus_balance=-0.1", "data.fetus_balance", "in [0, 1]"),
    ("cpu_matmul=fast", "cpu_matmul", "auto, fp32, bf16"),
    ("data.ga_balance=2", "data.ga_balance", "in [0, 1]"),
])
def test_out_of_range(override, key, fragment):
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(None, [override])
    msg = _errors(ei)
    assert f"--set: {key}:" in msg and fragment in msg


def test_every_non_finite_value_is_refused_not_the_first_only():
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(None, ["optimizer.lr_latent=.inf", "optimizer.lr_inr=.nan", "spatial_weighting.w_obs=-.inf",
                                 "class_weights=[1, .nan]", "optimizer.seg_weight=1e400"])
    msg = _errors(ei)
    for key in ("optimizer.lr_latent", "optimizer.lr_inr", "spatial_weighting.w_obs", "class_weights",
                "optimizer.seg_weight"):
        assert f"--set: {key}: " in msg and "finite" in msg.split(f"--set: {key}: ")[1].splitlines()[0]


def test_range_error_names_file(tmp_path):
    path = _write(tmp_path, "inr_decoder:\n  num_hidden_layers: 3\n")
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(path)  # default modulated_layers [1,3,5] no longer fits
    assert "inr_decoder.modulated_layers" in _errors(ei) and "1..3" in _errors(ei)
    path = _write(tmp_path, "optimizer:\n  loss_metric: huber\n", "b.yaml")
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(path)
    assert f"{path}: optimizer.loss_metric:" in _errors(ei)


def test_all_problems_reported_at_once(tmp_path):
    path = _write(tmp_path, """\
        n_sample: 10
        inr_decoder:
          hidden_size: big
        optimizer:
          loss_metric: huber
        """)
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(path, ["psf.mode=gaussian", "halo.threshhold=0.1", "nokey"])
    e = ei.value
    assert len(e.problems) == 6, e.problems
    msg = str(e)
    for frag in ("n_sample: unknown key (did you mean 'n_samples'?)", "inr_decoder.hidden_size: must be an integer",
                 "optimizer.loss_metric:", "--set: psf.mode:", "--set: halo.threshhold: unknown key",
                 "'halo.threshold'", "expected key.sub=value"):
        assert frag in msg, frag


def test_save_load_round_trip(tmp_path):
    c = load_train_config(_write(tmp_path, REFERENCE_CONFIG_ATLAS, "config_atlas.yaml"),
                          ["max_steps=7", "class_weights=[0, 1, 1]", "inr_decoder.modulated_layers=[1, 3]",
                           "psf.samples_per_epoch=[2, 4]"])
    out = c.save_yaml(tmp_path / "run" / "train_config.yaml") if (tmp_path / "run").mkdir() is None else None
    assert out.exists()
    text = out.read_text()
    assert "ignored reference keys" in text and "root_dir" in text
    back = load_train_config(out)
    assert back == c and back.to_dict() == c.to_dict()
    assert back.ignored_keys == {}
    assert "ignored_keys" not in c.to_dict()
    assert config_from_dict(c.to_dict()) == c


def test_psf_samples_schedule():
    c = TrainConfig()
    assert [c.psf_samples(e) for e in range(5)] == [4, 8, 16, 16, 16]
    c = load_train_config(None, ["psf.samples_per_epoch=[3]"])
    assert [c.psf_samples(e) for e in range(3)] == [3, 3, 3]
    with pytest.raises(ValueError):
        c.psf_samples(-1)


def test_the_exact_term_weighs_its_labels_by_data_label_weight_not_the_reference_key():
    assert TrainConfig().data.label_weight == 0.1 and TrainConfig().optimizer.seg_weight == 1.0
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(None, ["optimizer.seg_weight=0.5"])       # the default term is the exact one
    msg = _errors(ei)
    assert "--set: optimizer.seg_weight:" in msg and "data.label_weight" in msg and "reference" in msg
    assert load_train_config(None, ["optimizer.seg_weight=0.5", "data.term=reference"]).optimizer.seg_weight == 0.5
    assert load_train_config(None, ["data.label_weight=0.25"]).data.label_weight == 0.25
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(None, ["data.label_weight=-1"])
    assert "--set: data.label_weight: must be >= 0" in _errors(ei)


def test_the_halo_target_is_a_setting_of_the_exact_term_only():
    assert TrainConfig().data.halo_intensity == "zero"
    assert load_train_config(None, ["data.halo_intensity=none"]).data.halo_intensity == "none"
    assert load_train_config(None, ["data.term=reference"]).data.halo_intensity == "zero"
    with pytest.raises(TrainConfigError) as ei:
        load_train_config(None, ["data.halo_intensity=measured", "data.term=reference"])
    msg = _errors(ei)
    assert "--set: data.halo_intensity:" in msg and "data.term exact" in msg


@pytest.mark.parametrize("term, seg_weight, expected_label_weight", [("exact", 0.3, 0.3), ("exact", 1.0, 1.0),
                                                                      ("reference", 0.5, 0.1)])
def test_a_run_config_written_before_label_weight_existed_reads_as_it_was_trained(tmp_path, term, seg_weight,
                                                                                  expected_label_weight):
    """A run's resolved ``config.yaml`` lists every key; one without ``data.label_weight`` was written when the exact
    term weighed its labels by ``optimizer.seg_weight``: that weight moves to ``data.label_weight``."""
    import yaml

    resolved = load_train_config(None, [f"data.term={term}"] + (
        [f"optimizer.seg_weight={seg_weight}"] if term == "reference" else []))
    mapping = resolved.to_dict()
    del mapping["data"]["label_weight"]
    mapping["optimizer"]["seg_weight"] = seg_weight
    old = tmp_path / "config.yaml"
    old.write_text(resolved.to_yaml().splitlines()[0] + "\n" + yaml.safe_dump(mapping, sort_keys=False))
    old_crlf = tmp_path / "config_crlf.yaml"
    old_crlf.write_bytes(old.read_bytes().replace(b"\n", b"\r\n"))
    for path in (old, old_crlf):
        back = load_train_config(path)
        assert back.data.label_weight == expected_label_weight
        assert back.optimizer.seg_weight == (seg_weight if term == "reference" else 1.0)
    # a user's partial file without the key is not an old run's: it gets the default
    user = _write(tmp_path, "data:\n  term: exact\n", "user.yaml")
    assert load_train_config(user).data.label_weight == 0.1
    # a resolved file written now reads back unchanged
    assert load_train_config(resolved.save_yaml(tmp_path / "new.yaml")) == resolved


def _weights_cohort(weights, stack, stack_fetus, ga_weeks=(22.0, 22.0, 38.0)):
    """A PackedCohort carrying only what :func:`balance_fetuses` and :func:`balance_gas` read (weights, stacks,
    fetuses, the stacks' GAs)."""
    import numpy as np
    import torch

    from infanite.inr.data import PackedCohort

    n = len(weights)
    return PackedCohort(torch.zeros(n, 3), torch.zeros(n), torch.zeros(n, dtype=torch.int64),
                        torch.tensor(weights, dtype=torch.float32), torch.tensor(stack), torch.zeros(3, 3, 3),
                        [f"s{k}" for k in range(len(ga_weeks))], list(ga_weeks), 9, np.zeros((1, 1, 1), bool),
                        np.zeros(3),
                        np.ones(3), np.eye(4), (1, 1, 1), stack_fetus=stack_fetus)


def test_fetus_balance_gives_every_fetus_the_same_share_at_1_and_leaves_weights_at_0():
    """A small fetus (two stacks, total weight 1 + 1 + 0.5 = 2.5) and a large one (one stack, total 7.5): at
    exponent 1 both end with the mean total, 5 (factors 2 and 2/3); at 0.5 the factors are their square roots."""
    import numpy as np

    from infanite.inr.build import balance_fetuses

    weights, stack = [1.0, 1.0, 0.5, 2.5, 2.5, 2.5], [0, 1, 1, 2, 2, 2]
    data = _weights_cohort(weights, stack, [0, 0, 1])
    balance_fetuses(data, 0.0)
    np.testing.assert_array_equal(data.weight.numpy(), weights)
    balance_fetuses(data, 1.0)
    np.testing.assert_allclose(data.weight.numpy(), [2.0, 2.0, 1.0, 2.5 * 2 / 3, 2.5 * 2 / 3, 2.5 * 2 / 3], rtol=1e-6)
    assert abs(data.weight[:3].sum().item() - data.weight[3:].sum().item()) < 1e-5
    half = _weights_cohort(weights, stack, [0, 0, 1])
    balance_fetuses(half, 0.5)
    np.testing.assert_allclose(half.weight.numpy()[[0, 3]], [2.0 ** 0.5, 2.5 * (2 / 3) ** 0.5], rtol=1e-6)
    by_stack = _weights_cohort(weights, stack, None)         # no 'subject': each stack is its own group
    balance_fetuses(by_stack, 1.0)
    np.testing.assert_allclose([by_stack.weight[[i for i, s in enumerate(stack) if s == k]].sum().item()
                                for k in range(3)], [10 / 3] * 3, rtol=1e-6)


def test_ga_balance_gives_every_ga_the_same_data_around_it():
    """Fetuses A and B at 22 weeks, C at 40 (far beyond the 1-week kernel), D without a GA, every total 1: the data
    around A and B is 2, around C 1 (mean 5/3), so at exponent 1 A and B are weighed 5/6 and C 5/3 (D untouched);
    at 0.5 their square roots; fetuses 1 week apart see each other with weight exp(−1/2)."""
    import math

    import numpy as np

    from infanite.inr.build import balance_gas

    weights, stack = [1.0, 1.0, 0.5, 0.5, 1.0], [0, 1, 2, 2, 3]
    ga = (22.0, 22.0, 40.0, None)
    data = _weights_cohort(weights, stack, [0, 1, 2, 3], ga)
    balance_gas(data, 0.0)
    np.testing.assert_array_equal(data.weight.numpy(), weights)
    balance_gas(data, 1.0)
    np.testing.assert_allclose(data.weight.numpy(), [5 / 6, 5 / 6, 5 / 6, 5 / 6, 1.0], rtol=1e-6)
    half = _weights_cohort(weights, stack, [0, 1, 2, 3], ga)
    balance_gas(half, 0.5)
    np.testing.assert_allclose(half.weight.numpy(), [(5 / 6) ** 0.5, (5 / 6) ** 0.5, 0.5 * (5 / 3) ** 0.5,
                                                     0.5 * (5 / 3) ** 0.5, 1.0], rtol=1e-6)
    near = _weights_cohort([1.0, 1.0, 2.0], [0, 1, 2], [0, 1, 2], (22.0, 23.0, 60.0))
    balance_gas(near, 1.0)
    around = np.array([1 + math.exp(-0.5), 1 + math.exp(-0.5), 2.0])
    np.testing.assert_allclose(near.weight.numpy(), np.array([1, 1, 2]) * around.mean() / around, rtol=1e-6)


def test_psf_factors_stay_on_the_data_device():
    """The slice PSF's Cholesky factors are made on the device the packed data is on (a CUDA run once failed
    here: the regulariser was made on the CPU).  PyTorch's ``meta`` device stands in for a GPU: shapes and
    devices are checked without one."""
    import torch

    from infanite.inr.build import psf_factors

    data = _weights_cohort([1.0, 1.0, 1.0], [0, 1, 2], None)
    data.psf_cov_mm2 = torch.diag(torch.tensor([0.2, 0.2, 1.6])).expand(3, 3, 3).clone()
    on_cpu = psf_factors(TrainConfig(), data)
    torch.testing.assert_close(on_cpu[0] @ on_cpu[0].T, data.psf_cov_mm2[0], atol=1e-6, rtol=0)
    data.psf_cov_mm2 = data.psf_cov_mm2.to("meta")
    factors = psf_factors(TrainConfig(), data)
    assert factors.device.type == "meta" and factors.shape == (3, 3, 3)
