"""Coordinate frames and 4x4 matrices.

Conventions used throughout INFANiTE (all lengths in millimetres):

* **voxel** frame: continuous (i, j, k) array indices in nibabel order; voxel centres are integers.
* **RAS world** frame: scanner/atlas coordinates, x → Right, y → Anterior, z → Superior
  (NIfTI, nibabel and Slicer MRML).
* **LPS world** frame: x → Left, y → Posterior, z → Superior (ITK / SimpleITK, DICOM).

Matrix names say what they map *from* and *to*: ``voxel_to_ras`` maps voxel indices to RAS mm,
``template_to_stack`` maps template RAS mm to stack RAS mm, and so on.  Every matrix is a 4x4 homogeneous
matrix acting on column vectors.
"""
from __future__ import annotations

import numpy as np

#: Flip between RAS and LPS (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_TO_RAS = RAS_TO_LPS


def as_matrix(matrix, name: str = "matrix") -> np.ndarray:
    """Return ``matrix`` as a float64 4x4 homogeneous matrix or raise ``ValueError``."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"{name} must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or inf")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-9):
        raise ValueError(f"{name} last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    return m


def ras_matrix_to_lps(ras_to_ras: np.ndarray) -> np.ndarray:
    """Express a world→world matrix acting on RAS points as the same map acting on LPS points."""
    return RAS_TO_LPS @ as_matrix(ras_to_ras) @ LPS_TO_RAS


def lps_matrix_to_ras(lps_to_lps: np.ndarray) -> np.ndarray:
    """Express a world→world matrix acting on LPS points as the same map acting on RAS points."""
    return LPS_TO_RAS @ as_matrix(lps_to_lps) @ RAS_TO_LPS


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 matrix to points of shape (..., 3); returns the same shape."""
    points = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return points @ m[:3, :3].T + m[:3, 3]


def voxel_to_world(voxel_to_ras: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Map voxel indices (..., 3) to RAS world mm with the image's ``voxel_to_ras`` affine."""
    return apply_matrix(voxel_to_ras, ijk)


def world_to_voxel(voxel_to_ras: np.ndarray, ras: np.ndarray) -> np.ndarray:
    """Map RAS world mm (..., 3) to continuous voxel indices of the image with affine ``voxel_to_ras``."""
    return apply_matrix(np.linalg.inv(voxel_to_ras), ras)


def mask_points_mm(mask, voxel_to_ras: np.ndarray, max_points: int = 100_000) -> np.ndarray:
    """The world (RAS mm, (N, 3)) centres of the voxels of a boolean ``mask`` on the grid ``voxel_to_ras``,
    evenly thinned (every k-th in C order) to at most ``max_points``."""
    ijk = np.argwhere(np.asarray(mask))
    ijk = ijk[::max(1, -(-len(ijk) // int(max_points)))]
    return apply_matrix(np.asarray(voxel_to_ras, dtype=np.float64), ijk.astype(np.float64)).reshape(-1, 3)


def voxel_spacing(voxel_to_ras: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (column norms of the affine)."""
    return np.linalg.norm(np.asarray(voxel_to_ras, dtype=np.float64)[:3, :3], axis=0)


def direction_cosines(voxel_to_ras: np.ndarray) -> np.ndarray:
    """Unit column vectors (3x3) giving each array axis' direction in RAS world."""
    m = np.asarray(voxel_to_ras, dtype=np.float64)[:3, :3]
    return m / voxel_spacing(voxel_to_ras)


def rotation_matrix(axis_angle_deg: np.ndarray) -> np.ndarray:
    """3x3 rotation from a rotation vector (axis × angle, angle in degrees), Rodrigues' formula."""
    v = np.deg2rad(np.asarray(axis_angle_deg, dtype=np.float64))
    theta = np.linalg.norm(v)
    if theta < 1e-12:
        return np.eye(3)
    k = v / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def rotation_angle_deg(rotation: np.ndarray) -> float:
    """Angle (degrees) of a 3x3 rotation matrix."""
    c = (np.trace(np.asarray(rotation)[:3, :3]) - 1.0) / 2.0
    return float(np.rad2deg(np.arccos(np.clip(c, -1.0, 1.0))))


def rigid_matrix(rotation: np.ndarray | None = None, translation_mm=(0.0, 0.0, 0.0),
                 center_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid matrix ``x ↦ R (x - c) + c + t`` (rotation about ``center_mm``, then translation)."""
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    c = np.asarray(center_mm, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(translation_mm, dtype=np.float64)
    return m


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed 3x3 rotation (from a random unit quaternion)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def is_rigid(matrix: np.ndarray, atol: float = 1e-6) -> bool:
    """True when the 3x3 block is a proper rotation (orthonormal, determinant +1)."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    return bool(np.allclose(r @ r.T, np.eye(3), atol=atol) and np.linalg.det(r) > 0)


def same_grid(shape_a, affine_a, shape_b, affine_b, tol_mm: float = 1e-3) -> tuple[bool, str]:
    """Compare two voxel grids.

    Returns ``(True, "")`` when shapes are equal and the world positions of all 8 grid corners agree within
    ``tol_mm``; otherwise ``(False, reason)``.
    """
    if tuple(shape_a) != tuple(shape_b):
        return False, f"shape {tuple(shape_a)} vs {tuple(shape_b)}"
    corners = np.array([[i, j, k] for i in (0, shape_a[0] - 1) for j in (0, shape_a[1] - 1)
                        for k in (0, shape_a[2] - 1)], dtype=np.float64)
    diff = np.abs(apply_matrix(affine_a, corners) - apply_matrix(affine_b, corners)).max()
    if diff > tol_mm:
        return False, f"affines differ by up to {diff:.4g} mm at the grid corners (tolerance {tol_mm} mm)"
    return True, ""


def fit_rigid(source_mm: np.ndarray, target_mm: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares rigid matrix (4x4, det +1) mapping ``source_mm`` (N, 3) onto ``target_mm`` (Kabsch)."""
    src = np.asarray(source_mm, dtype=np.float64)
    dst = np.asarray(target_mm, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    c_src, c_dst = w @ src, w @ dst
    h = (src - c_src).T @ ((dst - c_dst) * w[:, None])
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c_dst - r @ c_src
    return m


def orthonormalize(matrix: np.ndarray) -> np.ndarray:
    """The nearest proper rotation (SVD) replaces the 3x3 block of a nearly rigid 4x4 matrix."""
    m = np.array(matrix, dtype=np.float64)
    u, _, vt = np.linalg.svd(m[:3, :3])
    m[:3, :3] = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    return m
