"""Training configuration for the INFANiTE atlas model: defaults, YAML loading, overrides, validation.

Defaults are the paper / reference-code settings (``configs/config_atlas.yaml`` of the reference
implementation, see ``docs/method-reference.md`` sections 2.3 and 5), plus our own keys (``max_steps``,
``checkpoint_every``, ``psf``, ``halo``, ``class_weights``, ``compile``, ``device``, ``deterministic``).

Reading YAML and ``--set`` overrides is :mod:`infanite.inr.config_loading`'s (``load_train_config``)::

    cfg.psf_samples(epoch)            # P for the PSF Monte Carlo (4, 8, 16, 16, ...)
    cfg.save_yaml(run_dir / "train_config.yaml")

Without a config file, :func:`default_overrides` sizes the model for the device (:data:`CPU_DEFAULTS` on a CPU).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infanite.devices import CPU_MATMUL_MODES  # noqa: F401  (re-exported: the choices of cpu_matmul)

__all__ = [
    "TrainConfigError", "EpochsConfig", "InrDecoderConfig", "SchedulerConfig", "OptimizerConfig",
    "SpatialWeightingConfig", "PsfConfig", "HaloConfig", "DataConfig", "TemplateConfig", "TrainConfig",
    "IGNORED_REFERENCE_KEYS", "CPU_MATMUL_MODES", "RESOLVED_HEADER", "CPU_DEFAULTS", "CPU_TEMPLATE_STEPS",
    "DEMO_TRAINING", "GA_BALANCE_WEEKS",
    "default_overrides", "template_ga_nodes", "defaults_then",
]

#: The first line of a resolved configuration file (:meth:`TrainConfig.save_yaml`, a run's ``config.yaml``).
RESOLVED_HEADER = "# INFANiTE resolved training configuration\n"
MODEL_TYPES = ("infanite", "template")         # the paper's modulated SIREN; the deformation-aware template INR
DATA_TERMS = ("exact", "reference")             # acquired samples + unbiased PSF + intensity model; the reference's
HALO_INTENSITIES = ("zero", "measured", "none")   # a halo sample's intensity target (data.halo_intensity)
PSF_ESTIMATORS = ("split", "mean")              # unbiased split-sample product (MSE); Monte-Carlo mean (biased)
TEMPLATE_ENCODINGS = ("grid", "siren", "modulated")  # feature grids + MLP; a 4-D SIREN; the paper's decoder
LOSS_METRICS = ("l1", "mse")
PSF_MODES = ("slice", "isotropic", "none")       # none: PSF-free training (P = 1, no jitter; ablation)
SCHEDULER_TYPES = ("cosine", "none")
#: the Gaussian's sigma (weeks) over the fetuses' GAs of the data around a GA (``data.ga_balance``)
GA_BALANCE_WEEKS = 1.0
TF_DIMS = (0, 6)                                # 0 off, 6 rigid (rotation vector + mm)
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")

# Reference config_atlas.yaml keys we accept but do not use (dotted key -> note).
IGNORED_REFERENCE_KEYS: dict[str, str] = {
    "root_dir": "reference key, unused there too",
    "logging": "reference wandb logging; not used",
    "output_dir": "output directory is given on the command line",
    "wandb_entity": "reference wandb setting; not used",
    "project_name": "reference wandb setting; not used",
    "config_data": "data selection comes from our cohort tooling, not config_data.yaml",
    "device_dataset": "unused in the reference code",
    "generate_cond_atlas": "atlas generation is a separate step",
    "mask_reconstruction": "halo/masking is always on (see halo.*)",
    "save_certainty_maps": "atlas generation is a separate step",
    "compute_metrics": "unused in the reference code",
    "save_imgs": "unused in the reference code",
    "save_model": "checkpoints are always written (see checkpoint_every)",
    "load_model": "resuming is a command-line option",
    "data_augmentation": "crashes in the reference code when enabled; not supported",
    "n_subjects": "the cohort defines the subjects",
    "batch_size": "a step mixes all stacks; n_samples sets the step size",
    "num_workers": "data are held in memory",
    "validate_every": "unused in the reference code",
    "atlas_gen": "atlas generation is a separate step",
    "optimizer.re_init_latents": "not supported",
    "inr_decoder.cnn_kernel_size": "only 0 (no CNN) is implemented",
    "inr_decoder.out_dim": "derived from the label set (1 intensity + n labels)",
}


class TrainConfigError(ValueError):
    """Invalid training configuration; ``problems`` lists every message."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"invalid training configuration ({n} problem{'s' if n != 1 else ''}):\n"
                         + "\n".join(f"  - {p}" for p in self.problems))


def _f(default, kind: str):
    """A dataclass field with a value ``kind`` used by the loader's type checks."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: list(d) if isinstance(d, list) else dict(d),
                     metadata={"kind": kind})
    return field(default=default, metadata={"kind": kind})


def _section(cls):
    return field(default_factory=cls, metadata={"kind": "section"})


@dataclass
class EpochsConfig:
    train: int = _f(5, "int")


@dataclass
class InrDecoderConfig:
    hidden_size: int = _f(1024, "int")
    num_hidden_layers: int = _f(5, "int")
    modulated_layers: list = _f([1, 3, 5], "int_list")
    latent_dim: list = _f([256, 3, 3, 3], "int_list")
    omega: list = _f([30.0, 30.0], "float_list")
    tf_dim: int = _f(0, "int")          # reference: 6; off here, measured (benchmarks/rigid_refinement.py)
    in_dim: int = _f(3, "int")


@dataclass
class SchedulerConfig:
    type: str = _f("cosine", "str")
    eta_min: float = _f(2.5e-5, "float")


@dataclass
class OptimizerConfig:
    lr_inr: float = _f(1e-4, "float")
    lr_latent: float = _f(5e-4, "float")
    lr_tf: float = _f(7.5e-3, "float")
    inr_weight_decay: float = _f(0.0, "float")
    latent_weight_decay: float = _f(0.0, "float")
    tf_weight_decay: float = _f(0.0, "float")
    tf_weight: float = _f(0.0, "float")  # penalty on the refinement's displacement (per mm², see train.py)
    loss_metric: str = _f("l1", "str")
    seg_weight: float = _f(1.0, "float")
    scheduler: SchedulerConfig = _section(SchedulerConfig)


@dataclass
class SpatialWeightingConfig:
    w_obs: float = _f(1.6, "float")
    w_int: float = _f(0.8, "float")
    path: str = _f("", "str")
    uniform: bool = _f(False, "bool")   # ablation: every brain voxel weight 1 (halo w_int), W maps ignored


@dataclass
class PsfConfig:
    mode: str = _f("slice", "str")
    samples_per_epoch: list = _f([4, 8, 16], "int_list")
    isotropic_sigma_norm: float = _f(0.02, "float")
    inplane_fwhm_factor: float = _f(1.2, "float")


@dataclass
class HaloConfig:
    sigma_voxels: float = _f(1.5, "float")
    threshold: float = _f(0.01, "float")


@dataclass
class DataConfig:
    """The data term.  ``exact``: every acquired stack voxel is a sample at its registered position in template
    space (no resampling, no interpolated targets), its PSF rotated the same way; the intensity loss is the
    unbiased split-sample product over the PSF samples (``psf_estimator: split``; MSE) and each stack's intensity
    goes through a gain and a smooth bias field (``intensity_model``); the labels' cross-entropy is weighed by
    ``label_weight``.  ``reference``: the reference code's data term (stacks resampled onto the template grid,
    W-weighted, Monte-Carlo mean over the PSF samples, the ``optimizer.loss_metric``, the labels weighed by
    ``optimizer.seg_weight``)."""

    term: str = _f("exact", "str")
    psf_estimator: str = _f("split", "str")
    intensity_model: bool = _f(True, "bool")
    bias_order: int = _f(2, "int")          # degree of the per-stack polynomial bias field (0: a gain only)
    gain_weight: float = _f(1.0, "float")   # penalty on the stacks' mean log-gain (anchors the template's scale)
    bias_weight: float = _f(0.1, "float")   # L2 penalty on the bias coefficients
    halo_mm: float = _f(4.0, "float")       # acquired samples: halo (background class) this far outside the mask
    halo_weight: float = _f(0.5, "float")   # a halo sample's weight against a brain sample's (intensity and labels)
    # A halo sample's intensity target: 'zero' (the brain-only atlas is 0 outside the brain), 'measured' (what the
    # stack measured there: the slice profile reaches across the mask's edge) or 'none' (labels only).
    halo_intensity: str = _f("zero", "str")
    # Each fetus's samples weighed by (mean total weight of a fetus / its own total weight) ** fetus_balance:
    # 0 (default) weighs every sample alike, so a 38-week brain (~4x the volume of a 22-week one) carries ~4x the
    # loss; 1 gives every fetus the same share (stacks stand for fetuses when the cohort has no 'subject').
    fetus_balance: float = _f(0.0, "float")
    # Each fetus's samples weighed by (mean over fetuses of D / D(its GA)) ** ga_balance, D(g) the data around GA g:
    # the fetuses' total weights summed with Gaussian weights of sigma GA_BALANCE_WEEKS over their GAs.  0 (default)
    # leaves the weights; 1 gives every GA the same data, so the ends of the cohort's range and its small young
    # brains count as much as its crowded middle.  Applied after fetus_balance; a fetus without a GA keeps its own.
    ga_balance: float = _f(0.0, "float")
    # The intensity a sample sees is the network's intensity times its brain probability (1 − background − halo):
    # the brain's edge comes from the labels' logits, so the intensity need not fall to 0 across it.
    gate_intensity: bool = _f(False, "bool")
    # Weight of the labels' cross-entropy against the intensity MSE (the reference term weighs its L1 against the
    # labels by optimizer.seg_weight).  An MSE's gradient is ~5x smaller than an L1's at these errors, so 1.0 lets
    # the labels drive the shared decoder; 0.1 measured best (benchmarks/README.md, Atlas quality).
    label_weight: float = _f(0.1, "float")
    # Per-slice rigid motion (infanite.inr.slice_motion): each acquired slice moves off its stack's pose by a rigid
    # motion of its own, learnt with the model (relative to the stack's mean; held at zero for the warm-up).
    slice_motion: bool = _f(False, "bool")
    slice_motion_lr: float = _f(1e-2, "float")       # Adam learning rate of the motions (mm per step, roughly)
    slice_motion_weight: float = _f(1e-3, "float")   # penalty on the mean squared motion parameter (mm²)
    slice_motion_warmup: int = _f(500, "int")        # steps with the motions held at zero
    # Per-stack rigid motion (template model): each stack's registration refined relative to its fetus's other
    # stacks (the fetus's displacement carries the fetus as a whole); the slice motions' lr, warm-up and penalty.
    stack_motion: bool = _f(False, "bool")


@dataclass
class TemplateConfig:
    """The deformation-aware template INR (``model: template``): a template ``T(x, GA)`` shared by the cohort and a
    smooth displacement per fetus, ``I_f(x) = T(x + u_f(x), GA_f)``; the atlas is ``T`` with ``u = 0``.

    ``grid`` encoding: feature grids over the template box at ``grid_resolutions`` voxels per axis, each with
    ``ga_nodes`` nodes over the cohort's GA range (linear in GA between them), ``grid_channels`` features, decoded
    by an MLP (``hidden_size`` × ``hidden_layers``, ReLU).  ``siren`` encoding: a SIREN of (x, y, z, GA).
    ``modulated`` encoding (the default, measured best): the paper's modulated SIREN (``inr_decoder`` sizes and
    learning rates) whose latent grids sit at ``ga_latents`` GA nodes shared by the cohort.
    ``deformation_grid`` control points per axis (0: no deformation), frozen at zero for the first
    ``deformation_warmup`` steps; penalties: smoothness (squared differences of neighbouring control points,
    mm²), magnitude (mm²) and the GA-kernel-weighted mean displacement (mm², keeps the template unbiased;
    Gaussian σ ``mean_kernel_weeks``, and ``position_kernel_weeks`` for the fetuses' positions, each one's mean
    displacement over the observed brain).
    ``deformation_init``: a folder of ``<subject>.h5`` ITK transforms (a finished run's ``deformations/``, or a
    registration's) that the displacements start from (fitted onto the control grid by least squares; applied
    from the first step, held there during the warm-up); ``lr_deformation: 0`` keeps them fixed.  The per-stack
    intensity model learns at ``lr_template``.
    ``tv_weight``: a total-variation penalty on the template's intensity, ``mean |∇T|`` (per mm, forward
    differences of ``tv_step_mm`` along the template axes, at the first ``tv_points`` samples of each batch and
    their fetuses' GAs): it damps what the thick slices' PSF hides (a smooth overshoot inside a bright region)
    while costing an edge only its height.
    ``ga_scaling``: the template network's input is the box-normalised position divided by the brain's linear
    size at the sample's GA against the oldest (``log size`` fitted linear in GA to the cohort's brain samples
    before training, saved with the model): a young brain then spans the network's whole input range and latent
    grid, as the oldest does, instead of the middle of a box sized for the oldest.
    ``appearance`` (modulated encoding): per fetus an offset of the template's latent grid, held at zero for the
    deformation warm-up, learnt at ``optimizer.lr_latent``, penalised by ``appearance_weight`` × its mean square;
    ``appearance_centred``: each offset less the offsets' Gaussian-kernel mean (σ ``mean_kernel_weeks``) around its
    fetus's GA.  The atlas adds the offsets' Gaussian-kernel mean (σ ``appearance_kernel_weeks``; 0: the template
    alone) over the fetuses' GAs; ``appearance_adaptive`` widens that kernel where the fetuses are sparse (the
    cohort's ends, beyond them) until it averages as many fetuses (effective sample size) as it does at the median
    fetus's own GA, so that the atlas there is not one or two fetuses' appearance."""

    encoding: str = _f("modulated", "str")  # measured best (benchmarks/atlas_quality.py, README)
    ga_latents: int = _f(6, "int")          # modulated encoding: latent grids at this many GA nodes
    grid_resolutions: list = _f([16, 32, 64], "int_list")   # a 128 level fits noise (measured)
    ga_nodes: list = _f([4, 4, 3], "int_list")
    grid_channels: int = _f(4, "int")
    ga_smoothness: float = _f(1.0, "float")
    hidden_size: int = _f(64, "int")
    hidden_layers: int = _f(2, "int")
    deformation_grid: int = _f(8, "int")
    deformation_warmup: int = _f(500, "int")
    deformation_smoothness: float = _f(1e-2, "float")
    deformation_magnitude: float = _f(1e-3, "float")
    deformation_mean: float = _f(1e-1, "float")
    mean_kernel_weeks: float = _f(1.0, "float")       # σ (weeks) of the GA kernel of the mean displacement
    position_kernel_weeks: float = _f(1.0, "float")   # σ (weeks) of that kernel for the fetuses' positions
    lr_template: float = _f(1e-2, "float")
    lr_deformation: float = _f(1e-2, "float")
    deformation_init: str = _f("", "str")   # folder of <subject>.h5 transforms to start from ("": zero)
    tv_weight: float = _f(0.0, "float")     # total variation of T's intensity (per mm), 0: none
    tv_points: int = _f(500, "int")         # batch samples at which the TV is estimated each step
    tv_step_mm: float = _f(0.8, "float")    # finite-difference step (mm) of that estimate
    ga_scaling: bool = _f(False, "bool")    # the template's input scaled by the brain's size at each GA
    appearance: bool = _f(False, "bool")    # per-fetus offsets of the latent grid (modulated encoding)
    appearance_weight: float = _f(1.0, "float")          # mean square of those offsets
    appearance_kernel_weeks: float = _f(0.5, "float")    # σ (weeks) of the atlas's kernel over their GAs (0: none)
    appearance_centred: bool = _f(True, "bool")          # offsets less their GA-kernel mean (mean_kernel_weeks)
    appearance_adaptive: bool = _f(True, "bool")         # that kernel widened where fetuses are sparse (same ESS)


@dataclass
class TrainConfig:
    model: str = _f("infanite", "str")
    n_samples: int = _f(18000, "int")
    epochs: EpochsConfig = _section(EpochsConfig)
    seed: int = _f(42, "int")
    amp: bool = _f(True, "bool")             # bf16 autocast on CUDA
    cpu_matmul: str = _f("auto", "str")      # CPU_MATMUL_MODES: float32 matmuls computed in bf16 where native
    inr_decoder: InrDecoderConfig = _section(InrDecoderConfig)
    optimizer: OptimizerConfig = _section(OptimizerConfig)
    spatial_weighting: SpatialWeightingConfig = _section(SpatialWeightingConfig)
    max_steps: int | None = _f(None, "opt_int")
    checkpoint_every: int = _f(500, "int")
    psf: PsfConfig = _section(PsfConfig)
    halo: HaloConfig = _section(HaloConfig)
    data: DataConfig = _section(DataConfig)
    template: TemplateConfig = _section(TemplateConfig)
    class_weights: list | None = _f(None, "opt_float_list")
    compile: bool = _f(False, "bool")
    device: str = _f("cpu", "str")
    deterministic: bool = _f(True, "bool")
    # Not configuration: reference keys seen while loading and ignored (dotted key -> note).
    ignored_keys: dict = field(default_factory=dict, compare=False, metadata={"kind": "meta"})

    # -- helpers --------------------------------------------------------------------------
    def psf_samples(self, epoch: int) -> int:
        """PSF Monte Carlo sample count P for ``epoch`` (0-based); the last schedule value repeats."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        sched = self.psf.samples_per_epoch
        return int(sched[min(epoch, len(sched) - 1)])

    def to_dict(self) -> dict:
        """Plain nested dict of the configuration (without ``ignored_keys``)."""
        d = dataclasses.asdict(self)
        d.pop("ignored_keys", None)
        return d

    def to_yaml(self) -> str:
        head = RESOLVED_HEADER
        if self.ignored_keys:
            head += "# ignored reference keys:\n" + "".join(
                f"#   {k}: {v}\n" for k, v in sorted(self.ignored_keys.items()))
        return head + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save_yaml(self, path) -> Path:
        """Write the resolved configuration atomically; ``load_train_config(path)`` reads it back."""
        from infanite.io.atomic import atomic_write_text

        return atomic_write_text(path, self.to_yaml())


# ---------------------------------------------------------------------------------------------
# device-sized defaults

#: Overrides of the paper's settings used on a CPU when no ``--config`` is given (a small model, ~1 h budget).
#: Hidden 256: on the 40-fetus benchmark at 4,000 steps it beat hidden 128 by ~0.7 dB for ~2.2x the training time,
#: and beat hidden 128 trained for 8,000 steps (benchmarks/README.md, Atlas quality).
CPU_DEFAULTS = ["inr_decoder.hidden_size=256", "inr_decoder.num_hidden_layers=3",
                "inr_decoder.modulated_layers=[1,3]", "inr_decoder.latent_dim=[32,3,3,3]", "n_samples=4000",
                "epochs.train=20", "max_steps=4000", "checkpoint_every=250", "optimizer.lr_inr=1e-3",
                "optimizer.lr_latent=1e-2", "inr_decoder.tf_dim=0", "psf.samples_per_epoch=[4]"]
#: The demo: a tiny model that trains in a couple of minutes on 2 CPU cores.
DEMO_TRAINING = ["inr_decoder.hidden_size=64", "inr_decoder.num_hidden_layers=3",
                 "inr_decoder.modulated_layers=[1,3]", "inr_decoder.latent_dim=[16,3,3,3]", "n_samples=3000",
                 "epochs.train=40", "max_steps=2000", "checkpoint_every=250", "optimizer.lr_inr=1e-3",
                 "optimizer.lr_latent=1e-2", "inr_decoder.tf_dim=0", "psf.samples_per_epoch=[4]"]


#: Added to the CPU defaults when the cohort can train the template model (GAs that differ, stacks grouped into
#: fetuses): at the CPU budget it ties the paper's model on PSNR and beats it on Dice, HD95 and tissue volumes, and
#: gives each fetus's displacement (benchmarks/README.md, Atlas quality), with its GA nodes sized to the cohort
#: (:func:`template_ga_nodes`); each acquired slice's rigid motion learnt with it (``data.slice_motion``: +1.28 dB
#: on the 40-fetus benchmark, every GA better, for 1.6 % more time per step) and each acquired halo sample's target
#: the stack's own value there (``data.halo_intensity: measured``, what the PSF forward model predicts: +0.12 /
#: +0.14 dB on the mean PSNR over two seeds, +0.69 / +0.65 at 22 weeks and +0.49 / +0.40 at 38, where the bright
#: rim of extra-axial CSF is most of the brain; −0.2 to −0.5 at 26–30 weeks).  ``template.tv_weight`` (0.005 in
#: the defaults until the atlas was capped at the intensity ceiling, which damps the same bright spots) is 0: with
#: the ceiling the penalty lowers the mean PSNR by 0.08 / 0.09 dB over two seeds and costs 11 % more per step.
#: Each stack's pose refined against its fetus's other stacks (``data.stack_motion``): the stacks' disagreement
#: halved (0.40 → 0.21 mm), the slice motions found better (error 1.28 → 1.07 mm), the atlas as good or marginally
#: better on two seeds (mean PSNR +0.07 / +0.01 dB), for about the same time per step (−0.7 % samples/s).
#: Each fetus's own centred offset of the latent grid (``template.appearance``): mean PSNR +0.16 / +0.24 dB on two
#: seeds (22 weeks +0.26 / +0.46, 26 weeks +0.49 / +0.63, 38 weeks −0.05 / −0.14), the same Dice, +3–5 % per step.
#: The template model's step budget on a CPU: 6,000 steps.  Its steps got 1.28x cheaper (one latent interpolation
#: per step instead of three) and, on a CPU that multiplies bf16 natively (``cpu_matmul: auto``), 1.58x in all, so
#: 6,000 steps take about the time 4,000 took (the 40-fetus benchmark, seed 42: 20.9 min with loading and
#: diagnostics; mean PSNR 21.44 against 21.26 dB, every GA higher; benchmarks/README.md, Cheaper CPU
#: steps).
CPU_TEMPLATE_STEPS = 6000
CPU_TEMPLATE = ["model=template", "data.slice_motion=true", "data.halo_intensity=measured", "data.stack_motion=true",
                "template.appearance=true", f"max_steps={CPU_TEMPLATE_STEPS}"]

#: Defaults that only the exact data term supports, and what each becomes when the user picks another
#: ``data.term`` without setting it (:func:`defaults_then`).
EXACT_ONLY_DEFAULTS = {"data.slice_motion=true": "data.slice_motion=false",
                       "data.halo_intensity=measured": "data.halo_intensity=zero",
                       "data.stack_motion=true": "data.stack_motion=false"}
#: Defaults that only the template model supports, and what each becomes when the user picks another ``model``
#: without setting it (:func:`defaults_then`).
TEMPLATE_ONLY_DEFAULTS = {"data.stack_motion=true": "data.stack_motion=false",
                          "template.appearance=true": "template.appearance=false",
                          f"max_steps={CPU_TEMPLATE_STEPS}": next(o for o in CPU_DEFAULTS
                                                                  if o.startswith("max_steps="))}
#: Defaults that only the template's ``modulated`` encoding supports, and what each becomes when the user picks
#: another ``template.encoding`` without setting it (:func:`defaults_then`).
MODULATED_ONLY_DEFAULTS = {"template.appearance=true": "template.appearance=false"}

#: Fetuses per GA node of the template's latent grids in the CPU defaults: about 3 measured best (12 fetuses:
#: 3 / 4 / 6 / 12 nodes gave 16.34 / 16.63 / 16.40 / 15.91 dB; 40 fetuses: 6 / 12 nodes 17.63 / 17.75 dB;
#: benchmarks/README.md, Atlas quality).
FETUSES_PER_GA_NODE = 3.3


def template_ga_nodes(n_fetuses: int, ga_span_weeks: float) -> int:
    """``template.ga_latents`` for a cohort of ``n_fetuses`` fetuses whose GAs span ``ga_span_weeks`` weeks: one
    GA node per :data:`FETUSES_PER_GA_NODE` fetuses (fewer nodes average anatomy over more weeks, more leave
    each node to too few fetuses), at most one per week of the span plus one, at least 2."""
    by_fetuses = round(max(int(n_fetuses), 0) / FETUSES_PER_GA_NODE)
    by_span = math.floor(max(float(ga_span_weeks), 0.0)) + 1
    return int(max(2, min(by_fetuses, by_span)))


def default_overrides(device: str, template: bool = False, n_fetuses: int | None = None,
                      ga_span_weeks: float | None = None) -> list[str]:
    """Config overrides applied when the user gives no ``--config``: CPU-sized on a CPU (with the template model
    when ``template``: the cohort supports it, :func:`~infanite.inr.build.template_unsupported`; its GA nodes
    sized by :func:`template_ga_nodes` when the cohort's ``n_fetuses`` and ``ga_span_weeks`` are given), none on
    a GPU (the paper's settings: one short GPU run measured so far, benchmarks/README.md, GPU check)."""
    if str(device).startswith("cuda"):
        return []
    if not template:
        return list(CPU_DEFAULTS)
    sized = [] if n_fetuses is None or ga_span_weeks is None else [
        f"template.ga_latents={template_ga_nodes(n_fetuses, ga_span_weeks)}"]
    return list(CPU_DEFAULTS) + list(CPU_TEMPLATE) + sized


def defaults_then(defaults: list[str], overrides: list[str]) -> list[str]:
    """The device-sized ``defaults`` followed by the user's ``overrides`` (which win).  A default that only the
    exact data term supports (:data:`EXACT_ONLY_DEFAULTS`: ``data.slice_motion``, ``data.halo_intensity``,
    ``data.stack_motion``) is turned off when the user asks for another ``data.term`` without asking for it, and
    one that only the template model supports (:data:`TEMPLATE_ONLY_DEFAULTS`) when the user asks for another
    ``model``, or only its modulated encoding (:data:`MODULATED_ONLY_DEFAULTS`) another ``template.encoding``:
    choosing the reference's term, the paper's model or another encoding on top of the defaults is not an error
    of theirs."""
    def key(item: str) -> str:
        return item.split("=", 1)[0].strip()

    def last(name: str) -> str | None:
        values = [item.split("=", 1)[1].strip().strip("'\"") for item in overrides
                  if "=" in item and key(item) == name]
        return values[-1] if values else None

    out = list(defaults) + list(overrides)
    asked = {key(item) for item in overrides}
    off = []
    if last("data.term") not in (None, "exact"):
        off += [o for on, o in EXACT_ONLY_DEFAULTS.items() if on in defaults and key(on) not in asked]
    if last("model") not in (None, "template"):
        off += [o for on, o in TEMPLATE_ONLY_DEFAULTS.items() if on in defaults and key(on) not in asked]
    if last("template.encoding") not in (None, "modulated"):
        off += [o for on, o in MODULATED_ONLY_DEFAULTS.items() if on in defaults and key(on) not in asked]
    return out + list(dict.fromkeys(off))
