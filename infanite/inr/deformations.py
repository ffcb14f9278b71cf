"""Each fetus's fitted displacement of a finished template run, as an ITK displacement-field transform.

The template model (:mod:`infanite.inr.template`) sees fetus ``f`` as ``T(x + u_f(x), GA_f)``: the point ``x`` of
the fetus's registered space (template RAS mm, after its rigid registration) shows the template at ``x + u_f(x)``.
``u_f`` lives on ``deformation_grid``³ control points spanning the template box, trilinear between them.  Written
as ``deformations/<fetus>.h5``: a SimpleITK ``DisplacementFieldTransform`` on exactly those control points (origin
at the box corner, spacing = box / (grid − 1); ITK interpolates it trilinearly, so it is the model's field inside the
box, zero outside) in ITK's LPS convention: it maps a point of the fetus's space to the template point it shows,
i.e. it is the resampling transform that brings the atlas onto the fetus's shape.  3D Slicer loads it as a grid
transform; later steps (fitting a new fetus, anomaly maps) start from it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from infanite.geometry import RAS_TO_LPS


def displacement_image(control_points_mm: np.ndarray, centre_mm, half_extent_mm):
    """A SimpleITK vector image (LPS) of one fetus's control points ``(3, G, G, G)`` (RAS mm, grid axes z, y, x)."""
    import SimpleITK as sitk

    field = np.asarray(control_points_mm, dtype=np.float64)
    if field.ndim != 4 or field.shape[0] != 3:
        raise ValueError(f"control points must be (3, Gz, Gy, Gx), got {field.shape}")
    sizes = np.array(field.shape[:0:-1])                          # (Gx, Gy, Gz)
    centre, half = np.asarray(centre_mm, float).reshape(3), np.asarray(half_extent_mm, float).reshape(3)
    spacing = 2 * half / np.maximum(sizes - 1, 1)
    flip = RAS_TO_LPS[:3, :3]
    vectors = np.moveaxis(field, 0, -1) @ flip                   # (Gz, Gy, Gx, 3), LPS components
    image = sitk.GetImageFromArray(vectors, isVector=True)
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in flip @ (centre - half)])  # control point (0, 0, 0): the box's RAS corner
    image.SetDirection([float(v) for v in flip.ravel()])         # index axes along RAS +x, +y, +z
    return image


def write_deformations(run_dir, model, fetus_ids) -> list[Path]:
    """``deformations/<fetus>.h5`` for every fetus of a :class:`~infanite.inr.template.TemplateINR` with a
    deformation (nothing otherwise); each written atomically.  Returns the paths."""
    import SimpleITK as sitk

    from infanite.io.atomic import atomic_output
    from infanite.io.layout import DEFORMATIONS_DIR
    from infanite.io.paths import inside, require_name

    if getattr(model, "deformation", None) is None:
        return []
    folder = Path(run_dir) / DEFORMATIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    centre = model.centre.detach().cpu().numpy()
    half = model.half_extent.detach().cpu().numpy()
    control = model.deformation.detach().cpu().double().numpy()
    written = []
    for f, name in enumerate(fetus_ids):
        transform = sitk.DisplacementFieldTransform(displacement_image(control[f], centre, half))
        path = inside(folder, require_name(name, "subject") + ".h5")
        with atomic_output(path) as tmp:
            sitk.WriteTransform(transform, str(tmp))
        written.append(path)
    return written


def fetus_to_template_ras(path, points_ras: np.ndarray) -> np.ndarray:
    """Map points (N, 3) of a fetus's space (RAS mm) to the template with its ``deformations/<fetus>.h5``."""
    import SimpleITK as sitk

    transform = sitk.ReadTransform(str(path))
    flip = RAS_TO_LPS[:3, :3]
    lps = np.asarray(points_ras, dtype=np.float64) @ flip
    return np.array([transform.TransformPoint([float(v) for v in p]) for p in lps]) @ flip


def missing_initial_deformations(folder, fetus_ids) -> list[str]:
    """What keeps ``template.deformation_init`` = ``folder`` from starting every fetus's displacement: the folder
    is missing, or a fetus has no readable ``<fetus>.h5`` transform there (one line per problem; none: empty)."""
    import SimpleITK as sitk

    root = Path(folder).expanduser()
    if not root.is_dir():
        return [f"template.deformation_init: {root} is not a folder (it should hold one <subject>.h5 transform per "
                f"fetus, e.g. a finished run's deformations/)"]
    missing, unreadable = [], []
    for name in fetus_ids:
        path = root / f"{name}.h5"
        if not path.is_file():
            missing.append(name)
            continue
        try:
            sitk.ReadTransform(str(path))
        except RuntimeError as exc:
            unreadable.append(f"{path.name} ({str(exc).strip().splitlines()[-1][:120]})")
    problems = []
    if missing:
        problems.append(f"template.deformation_init: {root} has no transform for fetus(es) "
                        f"{', '.join(missing[:8])}{' …' if len(missing) > 8 else ''} (expected <subject>.h5)")
    if unreadable:
        problems.append(f"template.deformation_init: SimpleITK cannot read {'; '.join(unreadable[:4])}")
    return problems


def _interpolation_matrix(n_points: int, n_control: int) -> np.ndarray:
    """(n_points, n_control) weights of linear interpolation between ``n_control`` evenly spaced control points
    at ``n_points`` evenly spaced positions over the same span (both ends included)."""
    where = np.linspace(0, n_control - 1, n_points)
    eye = np.eye(n_control)
    return np.stack([np.interp(where, np.arange(n_control), eye[k]) for k in range(n_control)], axis=1)


def fit_control_points(displacement_ras: np.ndarray, grid: int) -> np.ndarray:
    """Least-squares trilinear control points ``(3, G, G, G)`` of a displacement sampled on an evenly spaced
    lattice ``(3, Lz, Ly, Lx)`` (RAS mm, both spanning the template box corner to corner).  The trilinear map is
    separable, so the least-squares solution is the pseudo-inverse of the 1-D interpolation applied along each
    axis."""
    field = np.asarray(displacement_ras, dtype=np.float64)
    inverses = [np.linalg.pinv(_interpolation_matrix(n, grid)) for n in field.shape[1:]]
    return np.einsum("ai,bj,ck,dijk->dabc", *inverses, field)


def initial_deformations(folder, fetus_ids, grid: int, centre_mm, half_extent_mm) -> np.ndarray:
    """``(F, 3, G, G, G)`` control points (RAS mm; grid axes z, y, x over the template box) that start the
    template model's displacements from ``<folder>/<fetus>.h5``: each transform (ITK, LPS; fetus space → the
    template point it shows, as :func:`write_deformations` writes it) is sampled as a displacement on a lattice
    twice as fine as the control grid and fitted onto it by least squares (exact for a field written on the same
    grid).  Check the folder first with :func:`missing_initial_deformations`."""
    import SimpleITK as sitk

    centre, half = np.asarray(centre_mm, float).reshape(3), np.asarray(half_extent_mm, float).reshape(3)
    n = 2 * int(grid) - 1
    flip = RAS_TO_LPS[:3, :3]
    spacing = 2 * half / (n - 1)
    out = np.zeros((len(fetus_ids), 3, grid, grid, grid))
    for f, name in enumerate(fetus_ids):
        transform = sitk.ReadTransform(str(Path(folder).expanduser() / f"{name}.h5"))
        field = sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, [n, n, n], [float(v) for v in flip @ (centre - half)],
            [float(v) for v in spacing], [float(v) for v in flip.ravel()])
        vectors = sitk.GetArrayFromImage(field) @ flip                  # (Lz, Ly, Lx, 3), RAS components
        out[f] = fit_control_points(np.moveaxis(vectors, -1, 0), grid)
    return out
