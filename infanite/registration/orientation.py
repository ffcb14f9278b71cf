"""Orientation candidates for stack→template registration (no pretrained network needed).

Clinical stacks are planned along the fetal brain axes, so in the stack's own voxel frame the unknown is mostly
which anatomical axis each array axis is (one of the 24 proper axis rotations), plus a modest obliquity.  The
principal axes of the brain masks (4 sign choices with determinant +1, as NiftyMIC's ``--init-pca``) add
candidates that also cover arbitrary orientations.  Every candidate is a ``stack_to_template`` matrix (stack RAS mm
→ template RAS mm) that maps the stack's brain centroid onto the template's.
"""
from __future__ import annotations

import itertools

import numpy as np

from infanite.geometry import direction_cosines


def proper_axis_rotations() -> list[np.ndarray]:
    """The 24 signed permutation matrices with determinant +1."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[list(perm), range(3)] = signs
            if np.linalg.det(m) > 0:
                mats.append(m)
    return mats


def _with_centroids(rotation_stack_to_template: np.ndarray, centroid_stack, centroid_template) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation_stack_to_template
    m[:3, 3] = np.asarray(centroid_template) - rotation_stack_to_template @ np.asarray(centroid_stack)
    return m


def axis_candidates(stack_voxel_to_ras: np.ndarray, centroid_stack, centroid_template) -> list[np.ndarray]:
    """24 ``stack_to_template`` matrices: each stack array axis along ± a template axis (det +1)."""
    d_stack = direction_cosines(stack_voxel_to_ras)           # stack array axes in stack world
    handed = np.sign(np.linalg.det(d_stack))
    out = []
    for p in proper_axis_rotations():
        p = p if handed > 0 else p @ np.diag([1.0, 1.0, -1.0])  # keep det(stack_to_template) = +1
        rotation = p @ d_stack.T                                  # stack world → template world
        out.append(_with_centroids(rotation, centroid_stack, centroid_template))
    return out


def principal_axes(points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid and principal axes (columns, by decreasing variance) of a point cloud (N, 3) in mm."""
    centroid = points_mm.mean(0)
    cov = np.cov((points_mm - centroid).T)
    values, vectors = np.linalg.eigh(cov)
    return centroid, vectors[:, np.argsort(values)[::-1]]


def pca_candidates(points_stack_mm: np.ndarray, points_template_mm: np.ndarray) -> list[np.ndarray]:
    """4 ``stack_to_template`` matrices aligning the masks' principal axes (sign choices with det +1)."""
    c_s, e_s = principal_axes(points_stack_mm)
    c_t, e_t = principal_axes(points_template_mm)
    out = []
    for s1, s2 in itertools.product((1.0, -1.0), repeat=2):
        signs = np.diag([s1, s2, 1.0])
        rotation = e_t @ signs @ e_s.T
        if np.linalg.det(rotation) < 0:
            rotation = e_t @ np.diag([s1, s2, -1.0]) @ e_s.T
        out.append(_with_centroids(rotation, c_s, c_t))
    return out


def pose_distance(a: np.ndarray, b: np.ndarray, centre_mm) -> tuple[float, float]:
    """Rotation angle (degrees) between two rigid matrices and the distance (mm) between their images of ``centre``."""
    r = a[:3, :3] @ b[:3, :3].T
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    c = np.r_[np.asarray(centre_mm, dtype=np.float64), 1.0]
    return angle, float(np.linalg.norm((a @ c - b @ c)[:3]))
