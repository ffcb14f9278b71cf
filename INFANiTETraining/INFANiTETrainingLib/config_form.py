"""The Training module's hyper-parameter form ↔ ``python -m infanite train --set key=value`` overrides.

:class:`TrainingParameters` mirrors the main widgets; everything else goes in ``advanced_yaml`` (YAML with the
core's keys, applied after the form, so it wins).  :meth:`TrainingParameters.validate` runs the core loader
(:func:`infanite.inr.config_loading.load_train_config`) on exactly the overrides the child will get, so a bad value is
reported before anything starts, as a :class:`TrainingParametersError` naming the form field and the core key.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

#: form field -> (core config key, label shown in the widget)
FIELDS = {
    "model": ("model", "Model"),
    "data_term": ("data.term", "Data term"),
    "epochs": ("epochs.train", "Epochs"),
    "n_samples": ("n_samples", "Coordinates per step"),
    "hidden_size": ("inr_decoder.hidden_size", "Hidden size"),
    "num_hidden_layers": ("inr_decoder.num_hidden_layers", "Hidden layers"),
    "modulated_layers": ("inr_decoder.modulated_layers", "Modulated layers"),
    "latent_channels": ("inr_decoder.latent_dim", "Latent size"),
    "psf_samples": ("psf.samples_per_epoch", "P schedule (PSF samples per epoch)"),
    "w_obs": ("spatial_weighting.w_obs", "Weight of observed voxels"),
    "w_int": ("spatial_weighting.w_int", "Weight of interpolated voxels"),
    "lr_inr": ("optimizer.lr_inr", "Learning rate (network)"),
    "lr_latent": ("optimizer.lr_latent", "Learning rate (latents)"),
    "seed": ("seed", "Seed"),
    "max_steps": ("max_steps", "Maximum steps"),
    "checkpoint_every": ("checkpoint_every", "Checkpoint every (steps)"),
    "advanced_yaml": ("", "Advanced settings (YAML)"),
    "device": ("device", "Device"),                  # a separate selector; passed to validate()/start()
}


class TrainingParametersError(ValueError):
    """Invalid hyper-parameters; ``fields`` lists the form fields concerned, ``problems`` the messages."""

    def __init__(self, problems: list[str], fields_: list[str]):
        self.problems = list(problems)
        self.fields = list(dict.fromkeys(fields_))
        super().__init__("invalid training settings:\n" + "\n".join(f"  - {p}" for p in self.problems))


def _yaml_value(value) -> str:
    """``value`` as a one-line YAML flow value (what ``--set key=VALUE`` parses back to the same value)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def parse_int_list(text) -> list:
    """``"4, 8 16"`` or ``"[4, 8, 16]"`` or a list -> a list (items kept as given when not integers, so that
    the core loader reports them)."""
    if isinstance(text, (list, tuple)):
        return list(text)
    items = [t for t in re.split(r"[\s,;]+", str(text).strip().strip("[]")) if t]
    out = []
    for item in items:
        try:
            out.append(int(item))
        except ValueError:
            out.append(item)
    return out


def _flatten(mapping, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(_flatten(value, full + "."))
        else:
            out.append((full, value))
    return out


def advanced_overrides(text: str) -> list[str]:
    """The ``key=value`` overrides of the advanced YAML text (nested sections flattened to dotted keys)."""
    if not text or not text.strip():
        return []
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TrainingParametersError([f"{FIELDS['advanced_yaml'][1]}: not valid YAML ({exc})"],
                                      ["advanced_yaml"]) from exc
    if data is None:
        return []
    if not isinstance(data, dict):
        raise TrainingParametersError([f"{FIELDS['advanced_yaml'][1]}: must be a mapping of settings "
                                       f"(key: value), got {type(data).__name__}"], ["advanced_yaml"])
    return [f"{key}={_yaml_value(value)}" for key, value in _flatten(data)]


@dataclass
class TrainingParameters:
    """The main training settings (defaults: the paper's, as the core's).

    ``model`` is ``infanite`` (the paper's modulated SIREN, one latent per stack) or ``template`` (a GA-conditioned
    template with a deformation per fetus; ``inr_decoder`` sizes apply to its modulated encoding), ``data_term``
    ``exact`` (acquired voxels, unbiased PSF loss, per-stack intensity model) or ``reference`` (the paper code's).

    ``n_samples`` is the number of coordinates per optimizer step, ``latent_channels`` the channels of the latent
    grid (``inr_decoder.latent_dim = [latent_channels, *latent_grid]``), ``psf_samples`` the P schedule (PSF
    samples per epoch, the last repeats), ``w_obs``/``w_int`` the loss weights of observed/interpolated voxels,
    ``lr_*`` learning rates, ``max_steps`` a cap on optimizer steps (None: epochs decide), ``modulated_layers``
    None means every other layer from 1 up to ``num_hidden_layers`` (1, 3, 5 for 5 layers, as the paper).
    """

    model: str = "infanite"
    data_term: str = "exact"
    epochs: int = 5
    n_samples: int = 18000
    hidden_size: int = 1024
    num_hidden_layers: int = 5
    modulated_layers: list | None = None
    latent_channels: int = 256
    latent_grid: list = field(default_factory=lambda: [3, 3, 3])
    psf_samples: list = field(default_factory=lambda: [4, 8, 16])
    w_obs: float = 1.6
    w_int: float = 0.8
    lr_inr: float = 1e-4
    lr_latent: float = 5e-4
    seed: int = 42
    max_steps: int | None = None
    checkpoint_every: int = 500
    advanced_yaml: str = ""

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config, advanced_yaml: str | None = None) -> "TrainingParameters":
        """The form filled from a core ``TrainConfig``; its other settings that differ from the defaults go in
        ``advanced_yaml`` (unless given), so that :meth:`validate` gives ``config`` back (the device aside)."""
        if advanced_yaml is None:
            advanced_yaml = _non_default_yaml(config)
        d = config.inr_decoder
        return cls(model=config.model, data_term=config.data.term, epochs=config.epochs.train,
                   n_samples=config.n_samples, hidden_size=d.hidden_size,
                   num_hidden_layers=d.num_hidden_layers, modulated_layers=list(d.modulated_layers),
                   latent_channels=d.latent_dim[0], latent_grid=list(d.latent_dim[1:]),
                   psf_samples=list(config.psf.samples_per_epoch), w_obs=config.spatial_weighting.w_obs,
                   w_int=config.spatial_weighting.w_int, lr_inr=config.optimizer.lr_inr,
                   lr_latent=config.optimizer.lr_latent, seed=config.seed, max_steps=config.max_steps,
                   checkpoint_every=config.checkpoint_every, advanced_yaml=advanced_yaml)

    @classmethod
    def for_device(cls, device: str, manifest=None) -> "TrainingParameters":
        """The defaults of ``infanite run`` for ``device``: a small CPU-sized model on a CPU, the paper's on a GPU;
        with a registered cohort ``manifest`` (a file), exactly what ``infanite run`` chooses for it (on a CPU the
        template model where the cohort can train it, its GA nodes sized to the cohort, in the advanced YAML)."""
        from infanite.inr.config import default_overrides
        from infanite.inr.config_loading import load_train_config

        if manifest is not None and Path(manifest).is_file():
            from infanite.pipeline.run import sized_defaults

            return cls.from_config(load_train_config(None, sized_defaults(manifest, device, say=False)))
        return cls.from_config(load_train_config(None, default_overrides(device)))

    @classmethod
    def from_run(cls, run_dir) -> "TrainingParameters":
        """The form of an existing run folder (its ``config.yaml``)."""
        from infanite.inr.config_loading import load_train_config
        from infanite.io.layout import CONFIG

        return cls.from_config(load_train_config(Path(run_dir) / CONFIG))

    # -- overrides ------------------------------------------------------------------------------
    def effective_modulated_layers(self) -> list:
        if self.modulated_layers is not None:
            return parse_int_list(self.modulated_layers)
        n = self.num_hidden_layers if isinstance(self.num_hidden_layers, int) else 1
        return list(range(1, max(n, 1) + 1, 2))

    def to_overrides(self) -> list[str]:
        """``key=value`` overrides for ``--set`` (form first, then the advanced YAML, which wins)."""
        values = {
            "model": self.model, "data_term": self.data_term, "epochs": self.epochs, "n_samples": self.n_samples,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers, "modulated_layers": self.effective_modulated_layers(),
            "latent_channels": [self.latent_channels, *parse_int_list(self.latent_grid)],
            "psf_samples": parse_int_list(self.psf_samples), "w_obs": self.w_obs, "w_int": self.w_int,
            "lr_inr": self.lr_inr, "lr_latent": self.lr_latent, "seed": self.seed, "max_steps": self.max_steps,
            "checkpoint_every": self.checkpoint_every}
        return [f"{FIELDS[name][0]}={_yaml_value(value)}" for name, value in values.items()] \
            + advanced_overrides(self.advanced_yaml)

    def to_cli_args(self) -> list[str]:
        """``["--set", "key=value", …]`` for ``python -m infanite train``."""
        return [arg for item in self.to_overrides() for arg in ("--set", item)]

    def validate(self, device: str | None = None):
        """The core ``TrainConfig`` these settings give (with ``device``); raises :class:`TrainingParametersError`
        naming the form fields (and core keys) of every problem."""
        from infanite.inr.config import TrainConfigError
        from infanite.inr.config_loading import load_train_config

        overrides = self.to_overrides() + ([f"device={device}"] if device else [])
        try:
            return load_train_config(None, overrides)
        except TrainConfigError as exc:
            problems, names = [], []
            for problem in exc.problems:
                text = problem[len("--set: "):] if problem.startswith("--set: ") else problem
                name = _field_of(text)
                names.append(name)
                problems.append(f"{FIELDS[name][1]}: {text}")
            raise TrainingParametersError(problems, names) from exc


def _non_default_yaml(config) -> str:
    """YAML of ``config``'s settings outside the form (device excluded) that differ from the defaults."""
    import yaml

    from infanite.inr.config import TrainConfig

    form_keys = {key for key, _ in FIELDS.values() if key}
    default = dict(_flatten(TrainConfig().to_dict()))
    nested: dict = {}
    for key, value in _flatten(config.to_dict()):
        if key in form_keys or key in default and default[key] == value:
            continue
        *sections, leaf = key.split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    return yaml.safe_dump(nested, sort_keys=False, default_flow_style=None) if nested else ""


def _field_of(problem: str) -> str:
    """The form field a core problem message (``key: message``) is about; ``advanced_yaml`` for other keys."""
    key = problem.split(":", 1)[0].strip()
    for name, (core_key, _) in FIELDS.items():
        if core_key and key == core_key:
            return name
    if key == "epochs":                                  # the ``epochs: N`` shorthand of the advanced text
        return "epochs"
    return "advanced_yaml"


__all__ = ["FIELDS", "TrainingParameters", "TrainingParametersError", "advanced_overrides", "parse_int_list"]
