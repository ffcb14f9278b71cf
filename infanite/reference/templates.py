"""Age-specific T2w brain templates (e.g. the CRL 2017 atlas), looked up by gestational age (GA, weeks).

A :class:`TemplateLibrary` maps each covered GA week to a zero-argument loader returning a :class:`Template`, so
a library over a folder reads its files only on first use (existence is checked when the library is built).
All images are :class:`~infanite.io.images.Volume` objects in RAS world mm.  Folder layouts understood by
:meth:`TemplateLibrary.from_folder`:

* ``templates.tsv`` (explicit, so it wins when present): columns ``ga``, ``T2w`` and optional ``Mask``, ``Seg``
  (paths relative to the TSV's folder; empty Mask/Seg cells allowed; errors give the file line number);
* CRL: subfolders ``HarvardSTA<GA>[_Study<n>]/`` holding ``srr.nii.gz``, ``mask.nii.gz``, ``parcellation.nii.gz``;
* NiftyMIC: ``STA<GA>.nii.gz`` with ``STA<GA>_mask.nii.gz`` and optionally ``STA<GA>_parc.nii.gz`` or
  ``STA<GA>_dseg.nii.gz``.

Where no mask is given, the mask is ``T2w > 0``.
"""
from __future__ import annotations

import csv
import functools
import logging
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from infanite.io.images import Grid, Volume, load_labels, load_nifti
from infanite.io.resample import resample

log = logging.getLogger(__name__)

LAYOUTS = ("templates.tsv", "CRL (HarvardSTA<GA>_Study1/{srr,mask,parcellation}.nii.gz)",
           "NiftyMIC (STA<GA>.nii.gz + STA<GA>_mask.nii.gz)")
_CRL_DIR = re.compile(r"HarvardSTA(\d+)(_Study\d+)?")
_STA_FILE = re.compile(r"STA(\d+)\.nii\.gz")


def same_grid(a: Grid, b: Grid, atol_mm: float = 1e-4) -> bool:
    """True when two grids have the same shape and (within ``atol_mm``) the same ``voxel_to_ras``."""
    return tuple(a.shape) == tuple(b.shape) and np.allclose(a.voxel_to_ras, b.voxel_to_ras, atol=atol_mm)


@dataclass
class Template:
    """A brain template for one GA: ``ga_weeks`` (weeks), T2w image (float32), brain mask (uint8 0/1) and an
    optional tissue label map, all on one grid (voxel indices → RAS mm). ``source`` says where it came from."""

    ga_weeks: float
    t2w: Volume
    mask: Volume
    seg: Volume | None
    source: str

    def __post_init__(self):
        for name, vol in (("mask", self.mask), ("seg", self.seg)):
            if vol is not None and not same_grid(vol.grid, self.t2w.grid):
                raise ValueError(f"{name} grid {vol.shape} differs from the T2w grid {self.t2w.shape} "
                                 f"(shape or voxel_to_ras)")

    @property
    def grid(self) -> Grid:
        """The shared grid (shape, voxel_to_ras in RAS mm)."""
        return self.t2w.grid


def _load_template(ga: float, t2w: Path, mask: Path | None, seg: Path | None, source: str) -> Template:
    image = load_nifti(t2w, np.float32)
    mask_arr = load_nifti(mask, dtype=None).array if mask is not None else image.array
    try:
        return Template(ga, image, image.with_array((mask_arr > 0).astype(np.uint8)),
                        load_labels(seg) if seg is not None else None, source)
    except ValueError as exc:
        raise ValueError(f"template GA {ga:g} ({t2w}): {exc}") from None


def _check_finite(ga) -> float:
    ga = float(ga)
    if not math.isfinite(ga):
        raise ValueError(f"gestational age must be a finite number of weeks, got {ga}")
    return ga


class TemplateLibrary:
    """Templates by GA week. ``loaders`` maps week → zero-argument callable returning a :class:`Template`.

    Loaded templates are kept in a small least-recently-used cache (``cache_size`` templates; a lock guards it).
    Returned templates are shared with the cache: copy before modifying them.
    """

    def __init__(self, loaders: Mapping[float, Callable[[], Template]], source: str = "", cache_size: int = 4):
        if not loaders:
            raise ValueError(f"template library {source!r} has no templates")
        self._loaders = {_check_finite(week): loader for week, loader in loaders.items()}
        self.source = source
        self._cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[float, Template] = OrderedDict()
        self._volumes_ml: dict[float, float] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Pickled (e.g. for worker processes) without its lock and its cache: a copy loads its own templates."""
        state = self.__dict__.copy()
        del state["_lock"]
        state["_cache"] = OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._loaders)

    def __repr__(self) -> str:
        return f"TemplateLibrary({self.source!r}, weeks {self.weeks[0]:g}–{self.weeks[-1]:g}, n={len(self)})"

    @property
    def weeks(self) -> list[float]:
        """Covered GA weeks, ascending."""
        return sorted(self._loaders)

    def get(self, week: float) -> Template:
        """The template of exactly ``week`` (KeyError if the library has no such week)."""
        key = next((w for w in self._loaders if abs(w - float(week)) < 1e-6), None)
        if key is None:
            raise KeyError(f"no template for GA {week} weeks in {self.source!r}; weeks: {self.weeks}")
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            template = self._loaders[key]()
            if not isinstance(template, Template):
                raise TypeError(f"loader for GA {key:g} returned {type(template).__name__}, not Template")
            self._cache[key] = template
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return template

    def _clamped(self, ga: float) -> float:
        ga = _check_finite(ga)
        lo, hi = self.weeks[0], self.weeks[-1]
        if not lo <= ga <= hi:
            log.warning("GA %.2f weeks is outside the template range %g–%g weeks of %s; using %g",
                        ga, lo, hi, self.source or "the library", min(max(ga, lo), hi))
        return min(max(ga, lo), hi)

    def nearest_week(self, ga: float) -> float:
        """Nearest covered week (ties go to the lower week; GA outside the range clamps, with a warning)."""
        ga = self._clamped(ga)
        return min(self.weeks, key=lambda w: (abs(w - ga), w))

    def nearest(self, ga: float) -> Template:
        """Template of the nearest covered week (see :meth:`nearest_week`)."""
        return self.get(self.nearest_week(ga))

    def blend(self, ga: float) -> Template:
        """T2w linearly interpolated in GA between the two covered weeks bracketing ``ga``.

        Weights are by distance in weeks; the result lies on the grid of the nearer week (ties: the lower week),
        the other week's T2w being resampled onto it first (linear, identity world transform, 0 outside) if
        its grid differs.  Mask and label map are those of the nearer week, unchanged (labels cannot be blended
        linearly).  ``ga_weeks`` of the result is the requested GA; an exact week (or a GA clamped to an end
        week) returns that week's template itself.
        """
        ga_req = _check_finite(ga)
        ga = self._clamped(ga_req)
        weeks = self.weeks
        if any(abs(w - ga) < 1e-6 for w in weeks):
            return self.get(ga)
        lo = max(w for w in weeks if w < ga)
        hi = min(w for w in weeks if w > ga)
        w_lo = (hi - ga) / (hi - lo)
        near, far = (self.get(lo), self.get(hi)) if w_lo >= 0.5 else (self.get(hi), self.get(lo))
        w_near = max(w_lo, 1.0 - w_lo)
        far_t2w = far.t2w if same_grid(far.grid, near.grid) else resample(far.t2w, near.grid, None, "linear")
        t2w = w_near * near.t2w.array.astype(np.float64) + (1.0 - w_near) * far_t2w.array.astype(np.float64)
        return Template(ga_req, near.t2w.with_array(t2w.astype(np.float32)), near.mask, near.seg,
                        f"blend {w_lo:.3f}·GA{lo:g} + {1 - w_lo:.3f}·GA{hi:g} of {self.source or 'library'}")

    def for_ga(self, ga: float, mode: str = "nearest") -> Template:
        """``nearest(ga)`` or ``blend(ga)`` according to ``mode``."""
        if mode == "nearest":
            return self.nearest(ga)
        if mode == "blend":
            return self.blend(ga)
        raise ValueError(f"template mode must be 'nearest' or 'blend', got {mode!r}")

    def brain_volumes_ml(self) -> dict[float, float]:
        """Brain-mask volume (mL) of every week; loads each template once (the volumes are remembered)."""
        for week in self.weeks:
            if week not in self._volumes_ml:
                mask = self.get(week).mask
                voxel_ml = abs(np.linalg.det(mask.voxel_to_ras[:3, :3])) / 1000.0
                self._volumes_ml[week] = float(np.count_nonzero(mask.array)) * voxel_ml
        return {week: self._volumes_ml[week] for week in self.weeks}

    def week_for_brain_volume(self, volume_ml: float) -> float:
        """The week whose brain-mask volume is closest to ``volume_ml`` (mL; ties go to the lower week)."""
        volume_ml = float(volume_ml)
        if not (math.isfinite(volume_ml) and volume_ml > 0):
            raise ValueError(f"brain volume must be a positive number of mL, got {volume_ml}")
        volumes = self.brain_volumes_ml()
        return min(volumes, key=lambda w: (abs(volumes[w] - volume_ml), w))

    @classmethod
    def from_folder(cls, path, cache_size: int = 4) -> "TemplateLibrary":
        """Library over a folder in one of the layouts of this module (files checked now, loaded on use)."""
        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"template folder {folder} does not exist or is not a folder")
        if (folder / "templates.tsv").is_file():
            layout, entries = "tsv", _tsv_entries(folder / "templates.tsv")
        elif any(_CRL_DIR.fullmatch(p.name) and p.is_dir() for p in folder.iterdir()):
            layout, entries = "crl", _crl_entries(folder)
        elif any(_STA_FILE.fullmatch(p.name) for p in folder.iterdir()):
            layout, entries = "niftymic", _niftymic_entries(folder)
        else:
            raise ValueError(f"no template layout found in {folder}; looked for: {'; '.join(LAYOUTS)}")
        loaders = {}
        for ga, t2w, mask, seg in entries:
            for file in (t2w, mask, seg):
                if file is not None and not file.is_file():
                    raise ValueError(f"template file missing for GA {ga:g} ({layout} layout): {file}")
            if ga in loaders:
                raise ValueError(f"GA {ga:g} appears twice in {folder} ({layout} layout)")
            loaders[ga] = functools.partial(_load_template, ga, t2w, mask, seg, str(t2w))
        return cls(loaders, source=f"{layout}:{folder}", cache_size=cache_size)


def _crl_entries(folder: Path):
    for sub in sorted(folder.iterdir()):
        match = _CRL_DIR.fullmatch(sub.name)
        if match and sub.is_dir():
            yield (float(match.group(1)), sub / "srr.nii.gz", sub / "mask.nii.gz", sub / "parcellation.nii.gz")


def _niftymic_entries(folder: Path):
    for file in sorted(folder.iterdir()):
        match = _STA_FILE.fullmatch(file.name)
        if match:
            stem = f"STA{match.group(1)}"
            mask = folder / f"{stem}_mask.nii.gz"
            seg = next((p for p in (folder / f"{stem}_parc.nii.gz", folder / f"{stem}_dseg.nii.gz") if p.is_file()),
                       None)
            yield float(match.group(1)), file, mask if mask.is_file() else None, seg


def _tsv_entries(tsv: Path):
    with open(tsv, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("ga", "T2w") if c not in columns]
        if missing:
            raise ValueError(f"{tsv}: missing column(s) {missing}; found {columns}; "
                             f"expected ga, T2w and optional Mask, Seg")
        entries = []
        for row in reader:
            line = reader.line_num
            if None in row or None in row.values():
                raise ValueError(f"{tsv} line {line}: wrong number of cells (expected {len(columns)})")
            row = {k.strip(): v.strip() for k, v in row.items()}
            try:
                ga = _check_finite(row["ga"])
            except ValueError:
                raise ValueError(f"{tsv} line {line}: ga must be a number of weeks, got {row['ga']!r}") from None
            if not row["T2w"]:
                raise ValueError(f"{tsv} line {line}: empty T2w cell")
            if any(e[0] == ga for e in entries):
                raise ValueError(f"{tsv} line {line}: GA {ga:g} listed twice")
            files = [tsv.parent / row[c] if row.get(c) else None for c in ("T2w", "Mask", "Seg")]
            for file in files:
                if file is not None and not file.is_file():
                    raise ValueError(f"{tsv} line {line}: template file missing: {file}")
            entries.append((ga, *files))
    if not entries:
        raise ValueError(f"{tsv}: no template rows")
    return entries
