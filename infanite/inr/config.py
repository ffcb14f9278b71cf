"""Training configuration for the INFANiTE atlas model: defaults, YAML loading, overrides, validation.

Defaults are the paper / reference-code settings (``configs/config_atlas.yaml`` of the reference
implementation, see ``docs/method-reference.md`` sections 2.3 and 5), plus our own keys (``max_steps``,
``checkpoint_every``, ``psf``, ``halo``, ``class_weights``, ``compile``, ``device``, ``deterministic``).

Usage::

    cfg = load_train_config("config_atlas.yaml", ["inr_decoder.modulated_layers=[1,3]", "max_steps=10"])
    cfg.psf_samples(epoch)            # P for the PSF Monte Carlo (4, 8, 16, 16, ...)
    cfg.save_yaml(run_dir / "train_config.yaml")

``load_train_config`` accepts a reference ``config_atlas.yaml`` directly: reference keys that we knowingly
do not use are recorded in ``TrainConfig.ignored_keys`` (dotted key -> note) instead of being rejected.
All problems (unknown keys, wrong types, out-of-range values) are reported together in one
:class:`TrainConfigError` (a ``ValueError``) naming the source (file or ``--set``) and the dotted key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

__all__ = [
    "TrainConfigError", "EpochsConfig", "InrDecoderConfig", "SchedulerConfig", "OptimizerConfig",
    "SpatialWeightingConfig", "PsfConfig", "HaloConfig", "TrainConfig", "load_train_config",
    "IGNORED_REFERENCE_KEYS",
]

LOSS_METRICS = ("l1", "mse")
PSF_MODES = ("slice", "isotropic", "none")       # none: PSF-free training (P = 1, no jitter; ablation)
SCHEDULER_TYPES = ("cosine", "none")
TF_DIMS = (0, 6)                                # 0 off, 6 rigid (rotation vector + mm)
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")

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
class TrainConfig:
    n_samples: int = _f(18000, "int")
    epochs: EpochsConfig = _section(EpochsConfig)
    seed: int = _f(42, "int")
    amp: bool = _f(True, "bool")
    inr_decoder: InrDecoderConfig = _section(InrDecoderConfig)
    optimizer: OptimizerConfig = _section(OptimizerConfig)
    spatial_weighting: SpatialWeightingConfig = _section(SpatialWeightingConfig)
    max_steps: int | None = _f(None, "opt_int")
    checkpoint_every: int = _f(500, "int")
    psf: PsfConfig = _section(PsfConfig)
    halo: HaloConfig = _section(HaloConfig)
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
        head = "# INFANiTE resolved training configuration\n"
        if self.ignored_keys:
            head += "# ignored reference keys:\n" + "".join(
                f"#   {k}: {v}\n" for k, v in sorted(self.ignored_keys.items()))
        return head + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save_yaml(self, path) -> Path:
        """Write the resolved configuration atomically; ``load_train_config(path)`` reads it back."""
        from infanite.io.images import atomic_write_text
        return atomic_write_text(path, self.to_yaml())

    @classmethod
    def from_dict(cls, mapping: Mapping, source: str = "<dict>") -> "TrainConfig":
        return _build([(source, mapping)])


# ---------------------------------------------------------------------------------------------
# loading

def _all_keys(cls, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        kind = f.metadata.get("kind")
        if kind == "meta":
            continue
        full = prefix + f.name
        out.append(full)
        if kind == "section":
            out.extend(_all_keys(f.default_factory, full + "."))
    return out


_KNOWN_KEYS = _all_keys(TrainConfig)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _to_float(v):
    """Number -> float; numeric strings accepted (PyYAML reads ``1e-4`` as a string). None on failure."""
    if _is_num(v):
        return float(v)
    if isinstance(v, str):
        try:
            x = float(v.strip())
        except ValueError:
            return None
        return x
    return None


def _convert(kind: str, v) -> tuple[Any, str | None]:
    """Return (converted value, error message or None)."""
    if kind == "int":
        if isinstance(v, int) and not isinstance(v, bool):
            return v, None
        if isinstance(v, float) and v.is_integer():
            return int(v), None
        return None, f"must be an integer, got {v!r}"
    if kind == "opt_int":
        if v is None:
            return None, None
        val, err = _convert("int", v)
        return val, (f"must be an integer or null, got {v!r}" if err else None)
    if kind == "float":
        x = _to_float(v)
        if x is None or math.isnan(x):
            return None, f"must be a number, got {v!r}"
        return x, None
    if kind == "bool":
        if isinstance(v, bool):
            return v, None
        return None, f"must be true or false, got {v!r}"
    if kind == "str":
        if isinstance(v, str):
            return v, None
        if v is None:
            return "", None
        return None, f"must be a string, got {v!r}"
    if kind in ("int_list", "float_list", "opt_float_list"):
        if kind == "opt_float_list" and v is None:
            return None, None
        if not isinstance(v, (list, tuple)):
            what = "a list of integers" if kind == "int_list" else "a list of numbers"
            return None, f"must be {what}, got {v!r}"
        out = []
        for i, item in enumerate(v):
            val, err = _convert("int" if kind == "int_list" else "float", item)
            if err:
                return None, f"item {i} {err}"
            out.append(val)
        return out, None
    raise AssertionError(kind)


class _Loader:
    def __init__(self):
        self.cfg = TrainConfig()
        self.errors: list[str] = []
        self.sources: dict[str, str] = {}

    def unknown(self, source: str, full: str, value=None, siblings=()):
        # a misspelled section holding a single key (typical of --set a.b=v) is reported by its full key
        rest = ""
        while isinstance(value, Mapping) and len(value) == 1:
            (k, value), = value.items()
            rest += f".{k}"
        head, _, leaf = full.rpartition(".")
        sib = [str(x) for x in siblings]
        m = difflib.get_close_matches(str(leaf), sib, n=1, cutoff=0.6) or \
            [x for x in sib if str(leaf) and str(leaf) in x][:1]
        close = []
        if m:  # correct the misspelled component, keep the rest if that yields a known key
            cand = (head + "." if head else "") + m[0]
            close = [cand + rest] if cand + rest in _KNOWN_KEYS else [cand]
        if not close:
            close = difflib.get_close_matches(full + rest, _KNOWN_KEYS, n=1, cutoff=0.6)
        if not close:  # last resort: the leaf name against all leaf names
            leaf = (full + rest).rsplit(".", 1)[-1]
            by_leaf = {k.rsplit(".", 1)[-1]: k for k in _KNOWN_KEYS}
            m = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
            close = [by_leaf[m[0]]] if m else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        self.errors.append(f"{source}: {full + rest}: unknown key{hint}")

    def apply(self, obj, mapping: Mapping, prefix: str, source: str):
        fields = {f.name: f for f in dataclasses.fields(obj) if f.metadata.get("kind") != "meta"}
        for key, value in mapping.items():
            full = f"{prefix}{key}"
            if full in IGNORED_REFERENCE_KEYS:
                self.cfg.ignored_keys[full] = IGNORED_REFERENCE_KEYS[full]
                continue
            if not isinstance(key, str) or key not in fields:
                self.unknown(source, full, value, fields)
                continue
            f = fields[key]
            kind = f.metadata["kind"]
            if kind == "section":
                if full == "epochs" and not isinstance(value, Mapping):
                    value = {"train": value}  # shorthand ``epochs: 5``
                if not isinstance(value, Mapping):
                    self.errors.append(f"{source}: {full}: must be a mapping (section), got {value!r}")
                    continue
                self.apply(getattr(obj, key), value, full + ".", source)
                continue
            val, err = _convert(kind, value)
            if err:
                self.errors.append(f"{source}: {full}: {err}")
                continue
            setattr(obj, key, val)
            self.sources[full] = source

    # -- range checks on the merged configuration ----------------------------------------
    def check(self):
        c = self.cfg
        errs = self.errors

        def bad(key: str, msg: str):
            errs.append(f"{self.sources.get(key, 'defaults')}: {key}: {msg}")

        def positive(key, v):
            if v <= 0:
                bad(key, f"must be > 0, got {v!r}")

        def nonneg(key, v):
            if v < 0:
                bad(key, f"must be >= 0, got {v!r}")

        def choice(key, v, allowed):
            if v not in allowed:
                bad(key, f"must be one of {', '.join(map(str, allowed))}; got {v!r}")

        positive("n_samples", c.n_samples)
        nonneg("epochs.train", c.epochs.train)
        if c.max_steps is not None:
            positive("max_steps", c.max_steps)
        positive("checkpoint_every", c.checkpoint_every)
        if not _DEVICE_RE.match(c.device):
            bad("device", f"must be 'cpu', 'cuda', 'cuda:N' or 'mps'; got {c.device!r}")

        d = c.inr_decoder
        positive("inr_decoder.hidden_size", d.hidden_size)
        positive("inr_decoder.num_hidden_layers", d.num_hidden_layers)
        positive("inr_decoder.in_dim", d.in_dim)
        choice("inr_decoder.tf_dim", d.tf_dim, TF_DIMS)
        out = [m for m in d.modulated_layers if not 1 <= m <= d.num_hidden_layers]
        if out:
            bad("inr_decoder.modulated_layers",
                f"layer indices must lie in 1..{d.num_hidden_layers} (inr_decoder.num_hidden_layers); "
                f"out of range: {out}")
        if len(set(d.modulated_layers)) != len(d.modulated_layers):
            bad("inr_decoder.modulated_layers", f"must not repeat a layer, got {d.modulated_layers}")
        if len(d.latent_dim) != 4 or any(x <= 0 for x in d.latent_dim):
            bad("inr_decoder.latent_dim",
                f"must be 4 positive integers [channels, nx, ny, nz], got {d.latent_dim}")
        if len(d.omega) != 2 or any(x <= 0 for x in d.omega):
            bad("inr_decoder.omega", f"must be 2 positive numbers [omega_0, omega_hidden], got {d.omega}")

        o = c.optimizer
        for k in ("lr_inr", "lr_latent", "lr_tf", "inr_weight_decay", "latent_weight_decay",
                  "tf_weight_decay", "tf_weight", "seg_weight"):
            nonneg(f"optimizer.{k}", getattr(o, k))
        choice("optimizer.loss_metric", o.loss_metric, LOSS_METRICS)
        choice("optimizer.scheduler.type", o.scheduler.type, SCHEDULER_TYPES)
        nonneg("optimizer.scheduler.eta_min", o.scheduler.eta_min)

        nonneg("spatial_weighting.w_obs", c.spatial_weighting.w_obs)
        nonneg("spatial_weighting.w_int", c.spatial_weighting.w_int)
        if c.spatial_weighting.w_obs == 0 and c.spatial_weighting.w_int == 0:
            bad("spatial_weighting.w_obs", "w_obs and w_int must not both be 0")

        p = c.psf
        choice("psf.mode", p.mode, PSF_MODES)
        if not p.samples_per_epoch or any(x <= 0 for x in p.samples_per_epoch):
            bad("psf.samples_per_epoch", f"must be a non-empty list of positive integers, got {p.samples_per_epoch}")
        positive("psf.isotropic_sigma_norm", p.isotropic_sigma_norm)
        positive("psf.inplane_fwhm_factor", p.inplane_fwhm_factor)

        nonneg("halo.sigma_voxels", c.halo.sigma_voxels)
        if not 0 <= c.halo.threshold < 1:
            bad("halo.threshold", f"must be in [0, 1), got {c.halo.threshold!r}")

        if c.class_weights is not None:
            if not c.class_weights or any(w < 0 for w in c.class_weights):
                bad("class_weights", f"must be null or a non-empty list of numbers >= 0, got {c.class_weights}")


def _parse_override(item: str) -> tuple[dict | None, str | None]:
    s = item.strip()
    for pre in ("--set=", "--set "):
        if s.startswith(pre):
            s = s[len(pre):].strip()
    if "=" not in s:
        return None, f"--set: {s!r}: expected key.sub=value"
    key, raw = s.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        return None, f"--set: {s!r}: empty key"
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        return None, f"--set: {key}: value {raw!r} is not valid YAML ({e.__class__.__name__})"
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested, None


def _build(layers: Iterable[tuple[str, Any]], pre_errors: Iterable[str] = ()) -> TrainConfig:
    ld = _Loader()
    ld.errors.extend(pre_errors)
    for source, mapping in layers:
        if mapping is None:
            continue
        if not isinstance(mapping, Mapping):
            ld.errors.append(f"{source}: top level must be a mapping, got {type(mapping).__name__}")
            continue
        ld.apply(ld.cfg, mapping, "", source)
    ld.check()
    if ld.errors:
        raise TrainConfigError(ld.errors)
    return ld.cfg


def load_train_config(path=None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file ``path`` (ours or a reference ``config_atlas.yaml``), then ``overrides``
    (``"key.sub=value"``, value parsed as YAML).  Raises :class:`TrainConfigError` listing every problem."""
    layers: list[tuple[str, Any]] = []
    pre: list[str] = []
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise TrainConfigError([f"{p}: cannot read ({e.strerror or e})"]) from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise TrainConfigError([f"{p}: not valid YAML: {e}"]) from e
        layers.append((str(p), data if data is not None else {}))
    if isinstance(overrides, str):
        overrides = [overrides]
    for item in overrides:
        nested, err = _parse_override(item)
        if err:
            pre.append(err)
        else:
            layers.append(("--set", nested))
    return _build(layers, pre)
