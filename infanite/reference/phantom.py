"""Built-in procedural fetal-brain phantom for any GA 21–39 weeks (no licensed data needed).

The phantom lives in a template-like RAS space centred on (0, 0, 0) mm on one fixed grid for every GA (0.8 mm by
default, 112 × 128 × 112 mm).  It has the 8 labels of the default table: extra-axial CSF around a cerebrum whose cortex
(a nested shell) folds with GA — sulci appear at staggered onsets from 21 to 34 weeks and deepen with age — over white
matter, lateral ventricles, deep grey matter and corpus callosum, with the cerebellum and brainstem below.  Every tissue
is a sub-level set of a smooth field whose threshold is chosen so that the tissue's voxel count matches the normative
volume of Ren et al. 2022 (:mod:`infanite.reference.normative`) at the requested GA; the split of SBV into white matter,
deep grey matter and corpus callosum uses fixed fractions. The T2-like image has CSF brightest and cortex darkest,
partial-volume blur and a faint smooth texture.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy import ndimage

from infanite.io.images import Grid, Volume, save_nifti
from infanite.labels import default_label_table
from infanite.reference.normative import ren2022

#: Phantom field of view (mm, half-extents along x, y, z); holds a 39-week brain.
HALF_EXTENT_MM = (56.0, 64.0, 56.0)
#: Fractions of the supratentorial brain volume (SBV) given to deep grey matter and corpus callosum.
DGM_FRACTION_OF_SBV = 0.09
CC_FRACTION_OF_SBV = 0.012
#: T2-like intensity per label abbreviation (arbitrary units; CSF brightest, cortex darkest).
T2_CONTRAST = {"eCSF": 2500.0, "vent": 2650.0, "WM": 2000.0, "CC": 1720.0, "dGM": 1780.0, "cereb": 1850.0,
               "BS": 1640.0, "cGM": 1520.0}
#: Intracranial ellipsoid semi-axes relative to the size scale (x: left-right, y: AP, z: IS).
ICV_AXES = np.array([0.86, 1.0, 0.87])
GA_RANGE = (21.0, 39.0)


def phantom_grid(spacing_mm: float = 0.8) -> Grid:
    """The fixed phantom grid (RAS, axis-aligned, centred on the origin)."""
    half = np.asarray(HALF_EXTENT_MM)
    shape = tuple(int(np.ceil(2 * h / spacing_mm)) for h in half)
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) * spacing_mm / 2.0
    return Grid(shape, affine)


def target_volumes_ml(ga_weeks: float) -> dict[str, float]:
    """Target tissue volumes (mL, label abbreviations as keys) at ``ga_weeks`` from the normative table."""
    table = ren2022()
    sbv = table.mean("SBV", ga_weeks)
    return {
        "cereb": table.mean("CBV", ga_weeks),
        "BS": table.mean("BM", ga_weeks),
        "vent": table.mean("VV", ga_weeks),
        "cGM": table.mean("GMV", ga_weeks),
        "dGM": DGM_FRACTION_OF_SBV * sbv,
        "CC": CC_FRACTION_OF_SBV * sbv,
        "WM": (1.0 - DGM_FRACTION_OF_SBV - CC_FRACTION_OF_SBV) * sbv,
        "eCSF": table.mean("e-CSFV", ga_weeks),
    }


def _sulci(n: int = 56, seed: int = 2024):
    """A fixed set of sulci: plane normals, arc centres and half-lengths, onsets (weeks), widths."""
    rng = np.random.default_rng(seed)
    normals, centres = [], []
    for _ in range(n):
        c = rng.normal(size=3)
        c[2] = abs(c[2]) * 0.8 + 0.1            # mostly on the upper/lateral convexity
        c /= np.linalg.norm(c)
        t = np.cross(c, rng.normal(size=3))
        normals.append(t / np.linalg.norm(t))
        centres.append(c)
    half_len = rng.uniform(0.35, 0.8, n)        # radians along the great circle
    # the first few are primary sulci (early), later ones secondary/tertiary
    onsets = np.sort(rng.uniform(21.0, 34.0, n))
    onsets[:3] = [20.0, 22.0, 23.0]
    widths = rng.uniform(0.03, 0.045, n)
    return np.array(normals), np.array(centres), half_len, onsets, widths


SULCAL_DEPTH = 0.2       # max fractional radial indentation of a mature sulcus
FISSURE_DEPTH = 0.35     # interhemispheric fissure indentation (present at every GA)


def folding(direction: np.ndarray, ga_weeks: float) -> np.ndarray:
    """Fractional radial indentation (0 … <1) of the cerebral surface along unit ``direction`` (…, 3)."""
    normals, centres, half_len, onsets, widths = _sulci()
    g = np.zeros(direction.shape[:-1], dtype=np.float32)
    maturity = np.clip((ga_weeks - onsets) / 6.0, 0.0, 1.0)
    for normal, centre, length, mature, width in zip(normals, centres, half_len, maturity, widths):
        if mature <= 0:
            continue
        off_plane = direction @ normal
        along = np.arccos(np.clip(direction @ centre, -1.0, 1.0))
        taper = np.clip((length - along) / 0.15, 0.0, 1.0)
        g = np.maximum(g, SULCAL_DEPTH * mature * taper * np.exp(-(off_plane / width) ** 2))
    fissure = FISSURE_DEPTH * np.exp(-(direction[..., 0] / 0.06) ** 2) * np.clip(direction[..., 2] * 3 + 0.8, 0, 1)
    return np.maximum(g, fissure.astype(np.float32))


def _select_smallest(field: np.ndarray, allowed: np.ndarray, n_voxels: int) -> np.ndarray:
    """The ``n_voxels`` voxels of ``allowed`` with the smallest ``field`` values (a sub-level set)."""
    values = field[allowed]
    if n_voxels >= values.size:
        return allowed.copy()
    if n_voxels <= 0:
        return np.zeros_like(allowed)
    threshold = np.partition(values, n_voxels - 1)[n_voxels - 1]
    return allowed & (field <= threshold)


def _ellipsoid_norm(xyz, centre, axes) -> np.ndarray:
    """Normalised ellipsoidal radius on an open (broadcast) grid ``xyz = (x, y, z)`` of float32 mm."""
    x, y, z = xyz
    cx, cy, cz = (np.float32(c) for c in centre)
    ax, ay, az = (np.float32(a) for a in axes)
    return np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)


@functools.lru_cache(maxsize=8)
def _phantom_arrays(ga_weeks: float, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    grid = phantom_grid(spacing_mm)
    # open grid of RAS coordinates (the phantom grid is axis-aligned): x (n,1,1), y (1,n,1), z (1,1,n)
    xyz = tuple((grid.voxel_to_ras[a, a] * np.arange(n, dtype=np.float32) + grid.voxel_to_ras[a, 3]).astype(
        np.float32).reshape([-1 if b == a else 1 for b in range(3)]) for a, n in enumerate(grid.shape))
    voxel_ml = spacing_mm ** 3 / 1000.0
    targets = target_volumes_ml(ga_weeks)
    n = {k: int(round(v / voxel_ml)) for k, v in targets.items()}
    icv_ml = sum(targets.values())
    scale = (icv_ml * 1000.0 * 3.0 / (4.0 * np.pi * np.prod(ICV_AXES))) ** (1.0 / 3.0)  # mm
    s = scale
    table = default_label_table()
    value = {lab.abbrev: lab.value for lab in table.labels}

    icv = _select_smallest(_ellipsoid_norm(xyz, (0, 0, 0), s * ICV_AXES), np.ones(grid.shape, bool),
                           sum(n.values()))
    seg = np.zeros(grid.shape, np.int16)
    seg[icv] = value["eCSF"]

    x, y, z = xyz
    hemisphere_axes = s * np.array([0.26, 0.24, 0.2])
    lobes = np.minimum.reduce([
        _ellipsoid_norm(xyz, (0.2 * s, -0.56 * s, -0.5 * s), hemisphere_axes),
        _ellipsoid_norm(xyz, (-0.2 * s, -0.56 * s, -0.5 * s), hemisphere_axes),
        _ellipsoid_norm(xyz, (0.0, -0.58 * s, -0.45 * s), s * np.array([0.12, 0.2, 0.2])),  # vermis
    ])
    cereb = _select_smallest(lobes, icv, n["cereb"])
    seg[cereb] = value["cereb"]
    free = icv & ~cereb
    stem = _select_smallest(_ellipsoid_norm(xyz, (0, -0.16 * s, -0.6 * s), s * np.array([0.14, 0.15, 0.42])),
                            free, n["BS"])
    seg[stem] = value["BS"]
    free &= ~stem

    centre, axes = (0.0, 0.02 * s, 0.1 * s), s * np.array([0.8, 0.95, 0.78])
    rho = _ellipsoid_norm(xyz, centre, axes)
    band = free & (rho > 0.55) & (rho < 1.4)           # folding only matters near the surface
    band_idx = np.nonzero(band)
    rel = np.stack([(xyz[a].ravel()[band_idx[a]] - np.float32(centre[a])) / np.float32(axes[a]) for a in range(3)], -1)
    rho_folded = rho.copy()
    rho_folded[band] = rho[band] / (1.0 - folding(rel / rho[band][:, None], ga_weeks))
    cerebrum = _select_smallest(rho_folded, free, n["cGM"] + n["WM"] + n["dGM"] + n["CC"] + n["vent"])
    # cortex: the outermost layer of the cerebrum by distance (mm) to the CSF/exterior, so that it keeps an
    # even thickness along the walls of sulci and of the interhemispheric fissure
    exterior = ~(cerebrum | cereb | stem)
    depth = ndimage.distance_transform_edt(~exterior, sampling=spacing_mm).astype(np.float32)
    cortex = _select_smallest(depth - 1e-3 * rho_folded, cerebrum, n["cGM"])
    seg[cerebrum] = value["WM"]
    seg[cortex] = value["cGM"]
    inner = cerebrum & ~cortex

    # lateral ventricles: curved tubes, bent down posteriorly and anteriorly
    vent_field = np.full(grid.shape, np.inf, np.float32)
    for side in (-1.0, 1.0):
        yy = y / s
        bend_z = 0.12 * s - 0.35 * s * yy ** 2
        d = np.sqrt(((x - side * (0.12 * s + 0.05 * s * yy)) / (0.07 * s)) ** 2 + (y / (0.42 * s)) ** 2
                    + ((z - bend_z) / (0.09 * s)) ** 2)
        vent_field = np.minimum(vent_field, d)
    vent = _select_smallest(vent_field, inner, n["vent"])
    seg[vent] = value["vent"]
    inner &= ~vent
    dgm_field = np.minimum(_ellipsoid_norm(xyz, (0.17 * s, -0.04 * s, -0.08 * s), s * np.array([0.12, 0.2, 0.13])),
                           _ellipsoid_norm(xyz, (-0.17 * s, -0.04 * s, -0.08 * s), s * np.array([0.12, 0.2, 0.13])))
    dgm = _select_smallest(dgm_field, inner, n["dGM"])
    seg[dgm] = value["dGM"]
    inner &= ~dgm
    cc_arc_z = 0.26 * s - 0.45 * s * (y / s) ** 2
    cc_field = np.sqrt((x / (0.3 * s)) ** 2 + ((z - cc_arc_z) / (0.035 * s)) ** 2
                       + ((y - 0.02 * s) / (0.36 * s)) ** 2)
    seg[_select_smallest(cc_field, inner, n["CC"])] = value["CC"]

    lut = np.zeros(max(value.values()) + 1, np.float32)
    for abbrev, intensity in T2_CONTRAST.items():
        lut[value[abbrev]] = intensity
    t2 = lut[seg]
    texture = ndimage.gaussian_filter(np.random.default_rng(7).normal(size=grid.shape).astype(np.float32),
                                      3.0 / spacing_mm)
    texture /= texture.std() + 1e-6
    t2 *= 1.0 + 0.03 * texture
    t2 = ndimage.gaussian_filter(t2, 0.6 / spacing_mm)
    t2[~ndimage.binary_dilation(icv, iterations=1)] = 0.0
    return t2.astype(np.float32), seg


def make_phantom(ga_weeks: float, spacing_mm: float = 0.8) -> tuple[Volume, Volume, Volume]:
    """T2 image, brain mask and label map of the phantom at ``ga_weeks`` (21–39) on :func:`phantom_grid`."""
    ga = float(ga_weeks)
    if not GA_RANGE[0] <= ga <= GA_RANGE[1]:
        raise ValueError(f"phantom GA must be within {GA_RANGE[0]}–{GA_RANGE[1]} weeks, got {ga}")
    t2, seg = _phantom_arrays(round(ga, 3), float(spacing_mm))
    affine = phantom_grid(spacing_mm).voxel_to_ras
    return (Volume(t2.copy(), affine), Volume((seg > 0).astype(np.uint8), affine.copy()),
            Volume(seg.copy(), affine.copy()))


def make_phantom_template(ga_weeks: float, spacing_mm: float = 0.8):
    """The phantom at ``ga_weeks`` as a :class:`~infanite.reference.templates.Template`."""
    from infanite.reference.templates import Template

    t2, mask, seg = make_phantom(ga_weeks, spacing_mm)
    return Template(float(ga_weeks), t2, mask, seg, source=f"phantom GA {ga_weeks:g} at {spacing_mm:g} mm")


def phantom_library(spacing_mm: float = 0.8, weeks=range(21, 40)):
    """A lazy :class:`~infanite.reference.templates.TemplateLibrary` of phantom templates at whole weeks 21–39."""
    from infanite.reference.templates import TemplateLibrary

    loaders = {float(w): functools.partial(make_phantom_template, float(w), spacing_mm) for w in weeks}
    return TemplateLibrary(loaders, source=f"phantom ({spacing_mm:g} mm)")


def write_phantom_templates(folder, weeks, spacing_mm: float = 1.6) -> Path:
    """Write the phantom's ``weeks`` (spacing mm) as a ``templates.tsv`` template folder; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["ga\tT2w\tMask\tSeg"]
    for week in weeks:
        names = [f"phantom_ga-{week}_{kind}.nii.gz" for kind in ("T2w", "mask", "dseg")]
        for name, volume in zip(names, make_phantom(week, spacing_mm)):
            if not (folder / name).exists():
                save_nifti(volume, folder / name)
        rows.append(f"{week}\t" + "\t".join(names))
    (folder / "templates.tsv").write_text("\n".join(rows) + "\n")
    return folder
