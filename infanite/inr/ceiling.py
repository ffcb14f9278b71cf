"""The brightest intensity the scanner measured around each GA: a ceiling for the atlas's intensity.

The thick slices average every brain voxel over several millimetres through-plane, so an overshoot deep inside a
bright region (the ventricles' and the midline's CSF) barely reaches them: the benchmark's atlases overshoot the
truth there by 9–16 % while the slices see +4 % (benchmarks/README.md, *The bright spot the thick slices cannot
see*), and that one spot sets the atlas's maximum, so every display window or min–max normalisation renders the
rest of the atlas too dark.  Nothing the network renders brighter than what the scanner recorded around that GA is
supported by the data.

At the end of training the brain samples' intensities (the acquired voxels; with ``data.term: reference`` the
registered stacks' resampled voxels, which have no intensity model) are corrected by each stack's fitted intensity
model (divided by its gain and bias field, where the data term has one) and, for every stack's GA, the
``quantile`` of the corrected intensities of the stacks within ``window_weeks`` of it is kept
(``intensity_ceiling.json`` in the run folder).  ``infanite atlas`` caps each GA's T2w at the ceiling
interpolated linearly in GA (the nearest end outside the stacks' range) and records it in the manifest.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from infanite.io.atomic import atomic_write_text
from infanite.io.layout import INTENSITY_CEILING

#: percentile of the corrected brain samples kept as the ceiling: 1 in 10,000 samples is brighter.  Measured on the
#: benchmark's 40-fetus cohort: the 99.9th percentile cut real bright tissue (34 and 38 weeks lost 0.5–1.3 dB), the
#: 99.99th never did (benchmarks/README.md, *A ceiling from the data*)
CEILING_QUANTILE = 99.99
#: stacks whose GA is within this many weeks of a stack's pool into its ceiling
CEILING_WINDOW_WEEKS = 1.5


def corrected_intensities(data, intensity_model=None, chunk: int = 1_000_000) -> np.ndarray:
    """The brain samples' (label not the halo) intensities of ``data`` (a packed cohort) divided by their stack's
    fitted gain and bias field (``intensity_model``, a :class:`~infanite.inr.intensity.StackIntensity`; None:
    as measured).  Returns a float64 array aligned with ``brain_samples(data)``."""
    brain = brain_samples(data)
    values = data.intensity[brain].double().cpu()
    if intensity_model is None:
        return values.numpy()
    coords, stack = data.coords_mm[brain], data.stack[brain]
    device = next(intensity_model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(values), chunk):
            part = slice(start, start + chunk)
            log_factor = intensity_model.log_factor(coords[part].to(device), stack[part].to(device))
            out.append(values[part] / torch.exp(log_factor.double().cpu()))
    return torch.cat(out).numpy() if out else values.numpy()


def brain_samples(data) -> torch.Tensor:
    """(V,) bool: the samples of ``data`` inside a stack's brain (every label but the halo's)."""
    return data.label != data.halo_label


def ceiling_table(values: np.ndarray, sample_stack: np.ndarray, stack_ga_weeks, quantile: float = CEILING_QUANTILE,
                  window_weeks: float = CEILING_WINDOW_WEEKS) -> dict:
    """For each distinct stack GA ``g`` (weeks): the ``quantile`` (percent) of ``values`` over the samples of the
    stacks whose GA is within ``window_weeks`` of ``g`` (``sample_stack``: each value's stack index).
    ``ValueError`` for a quantile outside (0, 100], a negative window or no samples."""
    if not 0 < float(quantile) <= 100:
        raise ValueError(f"ceiling quantile must be in (0, 100] percent, got {quantile!r}")
    if not float(window_weeks) >= 0:
        raise ValueError(f"ceiling window must be >= 0 weeks, got {window_weeks!r}")
    values = np.asarray(values, dtype=np.float64)
    sample_stack = np.asarray(sample_stack)
    if values.size == 0 or values.shape != sample_stack.shape:
        raise ValueError(f"need one stack index per intensity value and at least one value; got {values.shape} "
                         f"values and {sample_stack.shape} stack indices")
    ages = np.round(np.asarray(stack_ga_weeks, dtype=np.float64), 4)    # one GA, however precisely written
    sample_ga = ages[sample_stack]
    gas, ceilings = [], []
    for g in np.unique(ages[np.unique(sample_stack)]):
        pooled = values[np.abs(sample_ga - g) <= window_weeks + 1e-9]
        gas.append(float(g))
        ceilings.append(float(np.percentile(pooled, quantile)))
    return {"quantile": float(quantile), "window_weeks": float(window_weeks), "ga_weeks": gas, "ceiling": ceilings}


def write_intensity_ceiling(run_dir, data, intensity_model=None, quantile: float = CEILING_QUANTILE,
                            window_weeks: float = CEILING_WINDOW_WEEKS) -> Path:
    """Write ``intensity_ceiling.json`` (:func:`ceiling_table` of the corrected brain samples) into ``run_dir``
    (atomically); returns its path."""
    values = corrected_intensities(data, intensity_model)
    stack = data.stack[brain_samples(data)].cpu().numpy()
    table = ceiling_table(values, stack, data.ga_weeks, quantile, window_weeks)
    path = Path(run_dir) / INTENSITY_CEILING
    atomic_write_text(path, json.dumps(table, indent=1))
    return path


def read_intensity_ceiling(run_dir) -> dict | None:
    """The run's ceiling table, or None when it has none (a run trained before ceilings, or still training).
    ``ValueError`` naming the file when it is not a readable table."""
    path = Path(run_dir) / INTENSITY_CEILING
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
        gas = [float(g) for g in table["ga_weeks"]]
        ceilings = [float(c) for c in table["ceiling"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an intensity ceiling table ({exc})") from exc
    if not gas or len(gas) != len(ceilings) or np.any(np.diff(gas) <= 0) or not np.all(np.isfinite(ceilings)):
        raise ValueError(f"{path}: ga_weeks must be increasing with one finite ceiling each")
    return {**table, "ga_weeks": gas, "ceiling": ceilings}


def ceiling_identity(table: dict) -> dict:
    """What an atlas folder records of the ceiling it was capped with: its settings and a hash of its values, so a
    folder never mixes GAs capped by two different tables."""
    values = json.dumps([table["ga_weeks"], table["ceiling"]]).encode()
    return {"quantile": table.get("quantile"), "window_weeks": table.get("window_weeks"),
            "sha256": hashlib.sha256(values).hexdigest()[:16]}


def ceiling_at(table: dict, ga_weeks: float) -> float:
    """The ceiling at ``ga_weeks``: linear in GA between the table's GAs, the nearest end's value outside."""
    return float(np.interp(float(ga_weeks), table["ga_weeks"], table["ceiling"]))


def write_run_intensity_ceiling(run_dir, manifest) -> Path:
    """The ceiling of a finished run trained before ceilings were written: its training data packed again from
    ``manifest`` (the ``registered.tsv`` it was trained on) with its own ``config.yaml``, corrected by the
    intensity model of its checkpoint (loaded with ``weights_only``).  Returns the file's path."""
    from infanite.inr.build import build_intensity_model, pack_training_data
    from infanite.inr.config_loading import load_train_config
    from infanite.io.layout import CHECKPOINT, CONFIG
    from infanite.labels import default_label_table

    run_dir = Path(run_dir)
    config = load_train_config(run_dir / CONFIG)
    data = pack_training_data(config, manifest, default_label_table().values)
    state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    if list(state["stack_ids"]) != list(data.stack_ids):
        raise ValueError(f"{manifest}: its stacks are not the ones {run_dir} was trained on")
    intensity = build_intensity_model(config, data)
    if intensity is not None:
        intensity.load_state_dict(state["intensity"])
    return write_intensity_ceiling(run_dir, data, intensity)
