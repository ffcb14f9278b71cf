"""Reading a training configuration: YAML (ours or the reference's ``config_atlas.yaml``), ``--set`` overrides,
type conversion and validation, every problem reported at once.

``load_train_config("config_atlas.yaml", ["inr_decoder.modulated_layers=[1,3]", "max_steps=10"])`` returns a
validated :class:`~infanite.inr.config.TrainConfig`; reference keys we knowingly do not use are recorded in
``TrainConfig.ignored_keys`` (:data:`~infanite.inr.config.IGNORED_REFERENCE_KEYS`) instead of being rejected; all
problems (unknown keys, wrong types, out-of-range values) come together in one
:class:`~infanite.inr.config.TrainConfigError` naming the source (file or ``--set``) and the dotted key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from infanite.inr.config import (CPU_MATMUL_MODES, DATA_TERMS, DEVICE_PATTERN, HALO_INTENSITIES,
                                 IGNORED_REFERENCE_KEYS, LOSS_METRICS, MODEL_TYPES, PSF_ESTIMATORS, PSF_MODES,
                                 RESOLVED_HEADER, SCHEDULER_TYPES, TEMPLATE_ENCODINGS, TF_DIMS, TrainConfig,
                                 TrainConfigError)


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
#: the largest learning rate accepted (Adam moves each parameter by about the learning rate per step)
MAX_LEARNING_RATE = 1.0


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
        if x is None or not math.isfinite(x):
            return None, f"must be a finite number, got {v!r}"
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

        def learning_rate(key, v):
            if v < 0 or v > MAX_LEARNING_RATE:
                bad(key, f"must be in [0, {MAX_LEARNING_RATE:g}] (a larger Adam step than the parameters' own "
                         f"scale diverges), got {v!r}")

        positive("n_samples", c.n_samples)
        positive("epochs.train", c.epochs.train)
        if c.max_steps is not None:
            positive("max_steps", c.max_steps)
        positive("checkpoint_every", c.checkpoint_every)
        if not DEVICE_PATTERN.match(c.device):
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
        for k in ("lr_inr", "lr_latent", "lr_tf"):
            learning_rate(f"optimizer.{k}", getattr(o, k))
        for k in ("inr_weight_decay", "latent_weight_decay", "tf_weight_decay", "tf_weight", "seg_weight"):
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

        choice("model", c.model, MODEL_TYPES)
        choice("cpu_matmul", c.cpu_matmul, CPU_MATMUL_MODES)
        dt = c.data
        choice("data.term", dt.term, DATA_TERMS)
        choice("data.psf_estimator", dt.psf_estimator, PSF_ESTIMATORS)
        choice("data.halo_intensity", dt.halo_intensity, HALO_INTENSITIES)
        if dt.bias_order not in (0, 1, 2):
            bad("data.bias_order", f"must be 0, 1 or 2 (polynomial degree), got {dt.bias_order!r}")
        for k in ("gain_weight", "bias_weight", "halo_mm", "label_weight", "halo_weight", "slice_motion_lr",
                  "slice_motion_weight", "slice_motion_warmup"):
            nonneg(f"data.{k}", getattr(dt, k))
        if not 0.0 <= dt.fetus_balance <= 1.0:
            bad("data.fetus_balance", f"must be a number in [0, 1] (0: every sample alike, 1: every fetus the same "
                                      f"share), got {dt.fetus_balance!r}")
        if not 0.0 <= dt.ga_balance <= 1.0:
            bad("data.ga_balance", f"must be a number in [0, 1] (0: weights as they are, 1: every GA the same data), "
                                   f"got {dt.ga_balance!r}")
        if dt.halo_intensity != "zero" and dt.term != "exact":
            bad("data.halo_intensity", f"sets the target of the acquired halo samples: it needs data.term exact (the "
                                       f"reference term's halo is the resampled stacks' background at 0), got "
                                       f"{dt.halo_intensity!r}")
        if dt.slice_motion and dt.term != "exact":
            bad("data.slice_motion", "moves the acquired slices: it needs data.term exact (the reference term trains "
                                     "on stacks resampled onto the template grid, where slices no longer exist)")
        if dt.stack_motion and dt.term != "exact":
            bad("data.stack_motion", "moves the acquired stacks: it needs data.term exact (the reference term trains "
                                     "on stacks already resampled by their registration)")
        if dt.stack_motion and c.model != "template":
            bad("data.stack_motion", "refines each stack's pose relative to its fetus's other stacks: it needs model "
                                     "template (the paper's model refines each stack's pose with inr_decoder.tf_dim 6)")
        if dt.term == "exact" and o.seg_weight != 1.0:
            bad("optimizer.seg_weight", f"weighs the labels of the reference data term only, got {o.seg_weight}; "
                                        f"with data.term exact set data.label_weight (now {dt.label_weight})")

        t = c.template
        choice("template.encoding", t.encoding, TEMPLATE_ENCODINGS)
        if not t.grid_resolutions or any(r < 2 for r in t.grid_resolutions):
            bad("template.grid_resolutions", f"must be a non-empty list of integers >= 2, got {t.grid_resolutions}")
        if len(t.ga_nodes) != len(t.grid_resolutions) or any(n < 1 for n in t.ga_nodes):
            bad("template.ga_nodes", f"must give one count >= 1 per grid resolution "
                                     f"({len(t.grid_resolutions)}), got {t.ga_nodes}")
        for k in ("grid_channels", "hidden_size", "hidden_layers", "ga_latents"):
            positive(f"template.{k}", getattr(t, k))
        if t.deformation_grid == 1 or t.deformation_grid < 0:
            bad("template.deformation_grid", f"must be 0 (no deformation) or >= 2 control points per axis, got "
                                             f"{t.deformation_grid}")
        for k in ("deformation_warmup", "deformation_smoothness", "deformation_magnitude", "deformation_mean",
                  "ga_smoothness", "tv_weight", "appearance_weight"):
            nonneg(f"template.{k}", getattr(t, k))
        positive("template.tv_points", t.tv_points)
        if not (math.isfinite(t.tv_step_mm) and t.tv_step_mm > 0):
            bad("template.tv_step_mm", f"must be a finite step in mm > 0, got {t.tv_step_mm!r}")
        if not (math.isfinite(t.appearance_kernel_weeks) and t.appearance_kernel_weeks >= 0):
            bad("template.appearance_kernel_weeks", f"must be a finite width in weeks >= 0 (0: the template alone), "
                                                    f"got {t.appearance_kernel_weeks!r}")
        for k in ("mean_kernel_weeks", "position_kernel_weeks"):
            if not (math.isfinite(getattr(t, k)) and getattr(t, k) > 0):
                bad(f"template.{k}", f"must be a finite width in weeks > 0, got {getattr(t, k)!r}")
        for k in ("lr_template", "lr_deformation"):
            learning_rate(f"template.{k}", getattr(t, k))
        if t.appearance and (c.model != "template" or t.encoding != "modulated"):
            bad("template.appearance", f"offsets the latent grid of model: template with template.encoding "
                                       f"'modulated' (now model {c.model!r}, encoding {t.encoding!r}); remove it or "
                                       f"set both")
        if t.deformation_init and (c.model != "template" or t.deformation_grid < 2):
            bad("template.deformation_init", f"starts the per-fetus displacements of model: template with "
                                             f"template.deformation_grid >= 2 (now model {c.model!r}, grid "
                                             f"{t.deformation_grid}); remove it or set both")


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


def build_config(layers: Iterable[tuple[str, Any]], pre_errors: Iterable[str] = ()) -> TrainConfig:
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


def _upgrade_resolved(mapping):
    """A resolved configuration (a run's ``config.yaml``) written before ``data.label_weight`` existed: its
    ``data.term: exact`` run weighed the labels by ``optimizer.seg_weight``, so that value moves to
    ``data.label_weight`` (and ``optimizer.seg_weight`` back to 1.0); a ``reference`` run gets the default, which
    it does not use.  Every resolved file lists every key, so a missing key can only mean an older file."""
    if not isinstance(mapping, dict) or not isinstance(mapping.get("data"), dict) \
            or "label_weight" in mapping["data"] or not isinstance(mapping.get("optimizer"), dict):
        return mapping
    out = {**mapping, "data": dict(mapping["data"]), "optimizer": dict(mapping["optimizer"])}
    if out["data"].get("term", "exact") == "exact" and "seg_weight" in out["optimizer"]:
        out["data"]["label_weight"] = out["optimizer"]["seg_weight"]
        out["optimizer"]["seg_weight"] = 1.0
    return out


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
        if text.splitlines()[:1] == [RESOLVED_HEADER.strip()]:     # also with Windows line ends
            data = _upgrade_resolved(data)
        layers.append((str(p), data if data is not None else {}))
    if isinstance(overrides, str):
        overrides = [overrides]
    for item in overrides:
        nested, err = _parse_override(item)
        if err:
            pre.append(err)
        else:
            layers.append(("--set", nested))
    return build_config(layers, pre)


def config_from_dict(mapping: Mapping, source: str = "<dict>") -> TrainConfig:
    """A validated :class:`~infanite.inr.config.TrainConfig` from a mapping (as :meth:`TrainConfig.to_dict` gives)."""
    return build_config([(source, mapping)])
