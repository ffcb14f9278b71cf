"""Reading and writing registration results: ``transforms.json`` and ITK/Slicer ``.tfm`` files.

A registration result is a 4x4 rigid matrix ``template_to_stack`` mapping **template RAS mm → stack RAS mm**.

``transforms.json`` holds::

    {"coordinates": "RAS", "direction": "template_to_stack",
     "transforms": {"<subject_id>": [[4x4]], ...}, "qc": {"<subject_id>": {...}, ...}}

The simulator's ``truth.json`` (``"stacks": {id: {"template_to_stack": [[4x4]], ...}}``, same ``coordinates`` and
``direction``) is read too, so ground truth can be given wherever transforms are expected.

An ITK transform file stores the *resampling* transform in LPS: the map from points of the fixed/parent space
(template) to points of the moving/child space (stack).  That is ``template_to_stack`` itself, flipped to LPS.
Loaded into 3D Slicer it becomes a linear transform node whose ToParent matrix is ``inv(template_to_stack)``
(stack RAS → template RAS), so placing the stack volume under it (and hardening) moves the stack onto the
template.  Checked with slicer-core's ``vtkMRMLTransformStorageNode`` in ``Testing/test_transforms_io.py``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from infanite.geometry import as_matrix, lps_matrix_to_ras, ras_matrix_to_lps
from infanite.io.atomic import atomic_output, atomic_write_text

COORDINATES = "RAS"
DIRECTION = "template_to_stack"
#: Tolerance of the rigidity check (orthonormality of the rotation block and its determinant).
RIGID_TOL = 1e-4


def matrix_problems(value) -> list[str]:
    """Why ``value`` is not a finite rigid 4x4 homogeneous matrix (empty list when it is one)."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return ["is not a 4x4 matrix of numbers"]
    if m.shape != (4, 4):
        return [f"is not 4x4 (shape {m.shape})"]
    if not np.all(np.isfinite(m)):
        return ["contains NaN or infinite values"]
    problems = []
    if not np.allclose(m[3], [0, 0, 0, 1], rtol=0, atol=1e-9):
        problems.append(f"last row is {m[3].tolist()}, not [0, 0, 0, 1]")
    r = m[:3, :3]
    orth_err = float(np.abs(r @ r.T - np.eye(3)).max())
    det = float(np.linalg.det(r))
    if orth_err > RIGID_TOL or abs(det - 1.0) > RIGID_TOL:
        problems.append(f"is not rigid (rotation block: |R Rᵀ - I| = {orth_err:.3g}, det = {det:.6g}; "
                        f"tolerance {RIGID_TOL:g})")
    return problems


def _json_clean(value):
    """``value`` with numpy types made JSON-native and non-finite floats replaced by ``None``."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_clean(value.tolist())
    if isinstance(value, np.generic):
        return _json_clean(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_transforms_json(path, transforms: dict[str, np.ndarray], qc: dict[str, dict] | None = None) -> Path:
    """Atomically write ``transforms.json`` (ids sorted; matrices as nested float lists).

    Every matrix must pass the checks of :func:`read_transforms_json` (``ValueError`` listing all failures), so
    what is written can always be read back.  ``qc`` holds per-id JSON-able dicts (numpy values converted,
    NaN/inf written as ``null``); it may name ids without a transform (e.g. failed registrations).
    """
    problems = [f"transform {sid!r} {p}" for sid in sorted(transforms) for p in matrix_problems(transforms[sid])]
    bad_qc = [sid for sid, v in (qc or {}).items() if not isinstance(v, dict)]
    problems += [f"qc of {sid!r} is {type((qc or {})[sid]).__name__}, not a dict" for sid in sorted(bad_qc)]
    if problems:
        raise ValueError(f"{path}: cannot write transforms:\n  - " + "\n  - ".join(problems))
    doc = {
        "coordinates": COORDINATES,
        "direction": DIRECTION,
        "transforms": {str(sid): np.asarray(transforms[sid], dtype=np.float64).tolist()
                       for sid in sorted(transforms, key=str)},
        "qc": {str(sid): _json_clean((qc or {})[sid]) for sid in sorted(qc or {}, key=str)},
    }
    return atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def read_transforms_json(path) -> dict[str, np.ndarray]:
    """``{subject_id: template_to_stack}`` (4x4 float64, RAS) from ``transforms.json`` or a simulator ``truth.json``.

    Raises one ``ValueError`` naming the file and listing every problem found (with the id concerned): not JSON,
    wrong or missing ``coordinates`` / ``direction``, no ``transforms`` (or ``stacks``) mapping, and matrices that
    are not 4x4, hold NaN/inf, have a last row other than [0, 0, 0, 1] or are not rigid (|R Rᵀ - I| and
    |det R - 1| within 1e-4).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read transforms file ({exc})") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object with 'coordinates', 'direction' and 'transforms', "
                         f"got {type(doc).__name__}")
    problems = []
    for key, expected in (("coordinates", COORDINATES), ("direction", DIRECTION)):
        if key not in doc:
            problems.append(f"missing {key!r} (expected {expected!r})")
        elif doc[key] != expected:
            problems.append(f"{key!r} is {doc[key]!r}, expected {expected!r}")
    entries: dict = {}
    if "transforms" in doc:
        if isinstance(doc["transforms"], dict):
            entries = {sid: (f"transform {sid!r}", m) for sid, m in doc["transforms"].items()}
        else:
            problems.append(f"'transforms' must map ids to 4x4 matrices, got {type(doc['transforms']).__name__}")
    elif "stacks" in doc:   # simulator truth.json
        if isinstance(doc["stacks"], dict):
            for sid, stack in doc["stacks"].items():
                if isinstance(stack, dict) and DIRECTION in stack:
                    entries[sid] = (f"stack {sid!r} {DIRECTION}", stack[DIRECTION])
                else:
                    problems.append(f"stack {sid!r} has no {DIRECTION!r} matrix")
        else:
            problems.append(f"'stacks' must map ids to objects, got {type(doc['stacks']).__name__}")
    else:
        problems.append("missing 'transforms' (id → 4x4 template_to_stack matrix)")
    if "qc" in doc and not isinstance(doc["qc"], dict):
        problems.append(f"'qc' must map ids to objects, got {type(doc['qc']).__name__}")
    out = {}
    for sid, (where, value) in entries.items():
        bad = matrix_problems(value)
        problems += [f"{where} {p}" for p in bad]
        if not bad:
            out[sid] = np.asarray(value, dtype=np.float64)
    if problems:
        raise ValueError(f"{path}: {len(problems)} problem(s) in transforms file:\n  - " + "\n  - ".join(problems))
    return out


def read_transforms_qc(path) -> dict[str, dict]:
    """The ``qc`` mapping of a ``transforms.json`` (empty when absent; the file is validated first)."""
    read_transforms_json(path)
    return json.loads(Path(path).read_text(encoding="utf-8")).get("qc", {})


def write_itk_tfm(path, template_to_stack: np.ndarray) -> Path:
    """Atomically write an ITK transform file (``.tfm``/``.txt``, also ``.h5``) for ``template_to_stack`` (RAS).

    The file holds the resampling transform in LPS (template LPS point → stack LPS point).  3D Slicer loads it as
    a linear transform with ToParent = inv(template_to_stack): applied to the stack volume, it moves the stack
    onto the template.
    """
    m = as_matrix(template_to_stack, "template_to_stack")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise ValueError("template_to_stack is singular")
    lps = ras_matrix_to_lps(m)
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in lps[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in lps[:3, 3]])
    with atomic_output(path) as tmp:
        sitk.WriteTransform(tx, str(tmp))
    return Path(path)


def read_itk_tfm(path) -> np.ndarray:
    """``template_to_stack`` (4x4, RAS) from an ITK transform file written by :func:`write_itk_tfm` or by Slicer.

    Any linear 3-D ITK transform (affine, Euler, versor, a composite of linear ones, …) is accepted; the file's
    resampling transform is sampled at a few points and must be affine.  Raises ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: transform file does not exist")
    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a readable ITK transform file ({str(exc).strip().splitlines()[-1]})") from None
    if tx.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3-D transform, got {tx.GetDimension()}-D")
    basis = np.vstack([np.zeros(3), np.eye(3)])
    probe = np.array([[53.0, -71.0, 29.0], [-97.0, 41.0, -63.0], [11.0, 89.0, 103.0]])
    mapped = np.array([tx.TransformPoint([float(v) for v in p]) for p in np.vstack([basis, probe])])
    lps = np.eye(4)
    lps[:3, 3] = mapped[0]
    lps[:3, :3] = (mapped[1:4] - mapped[0]).T
    predicted = probe @ lps[:3, :3].T + lps[:3, 3]
    if not np.allclose(predicted, mapped[4:], rtol=0, atol=1e-6 * (1.0 + np.abs(mapped[4:]).max())):
        raise ValueError(f"{path}: {tx.GetName()} is not a linear (affine) transform")
    return lps_matrix_to_ras(lps)
