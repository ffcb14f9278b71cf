"""Batched rigid registration maximising Studholme's normalised mutual information, in PyTorch.

Fixed image = the stack on its native grid (its brain-mask voxel centres are the sample points, in stack RAS
mm), moving image = the template.  A batch of B candidate poses is optimised at once (the orientation search runs
all candidates together; on a GPU the whole batch costs about as much as one pose).

Pose parametrisation (no gimbal lock, millimetres): ``stack_to_template(p) = R(ω)·(S₀·p − c) + c + t`` where
``S₀`` is the candidate's initial stack→template matrix, ``c`` the template brain centre (mm), ``ω`` a rotation
vector (radians, exponential map) and ``t`` a translation (mm).  NMI = (H(A) + H(B)) / H(A, B) from a joint
histogram with Gaussian Parzen windows, so it is differentiable in the pose.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from infanite.geometry import orthonormalize


@dataclass(frozen=True)
class NMILevel:
    """One resolution level: image smoothing (mm), number of sample points, iterations and step sizes."""

    smoothing_mm: float
    points: int
    iterations: int
    lr_rotation_rad: float
    lr_translation_mm: float
    bins: int = 32


COARSE_LEVELS = (NMILevel(3.0, 2500, 50, 0.04, 2.0, bins=16),)
FINE_LEVELS = (NMILevel(1.5, 8000, 50, 0.01, 0.5, bins=24), NMILevel(0.6, 20000, 60, 0.004, 0.2, bins=32))


def rotation_from_vector(omega: torch.Tensor) -> torch.Tensor:
    """(B, 3) rotation vectors (radians) → (B, 3, 3) rotation matrices (Rodrigues, safe at 0)."""
    theta = omega.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = omega / theta
    kx = torch.zeros(omega.shape[0], 3, 3, dtype=omega.dtype, device=omega.device)
    kx[:, 0, 1], kx[:, 0, 2] = -k[:, 2], k[:, 1]
    kx[:, 1, 0], kx[:, 1, 2] = k[:, 2], -k[:, 0]
    kx[:, 2, 0], kx[:, 2, 1] = -k[:, 1], k[:, 0]
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(kx)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    return eye + s * kx + (1 - c) * kx @ kx


def parzen_weights(values: torch.Tensor, bins: int) -> torch.Tensor:
    """(..., N) intensities in [0, 1] → (..., N, bins) Gaussian Parzen window weights summing to 1."""
    centres = (torch.arange(bins, dtype=values.dtype, device=values.device) + 0.5) / bins
    sigma = 0.75 / bins
    w = torch.exp(-0.5 * ((values[..., None] - centres) / sigma) ** 2)
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


def nmi_from_weights(w_fixed: torch.Tensor, w_moving: torch.Tensor) -> torch.Tensor:
    """Studholme NMI (H(A)+H(B))/H(A,B) per batch item from Parzen weights (N, bins) and (B, N, bins)."""
    joint = torch.matmul(w_fixed.T, w_moving) / w_fixed.shape[0]                # (B, bins, bins)
    eps = 1e-10
    pa, pb = joint.sum(2), joint.sum(1)
    h_a = -(pa * torch.log(pa + eps)).sum(-1)
    h_b = -(pb * torch.log(pb + eps)).sum(-1)
    h_ab = -(joint * torch.log(joint + eps)).sum((-1, -2))
    return (h_a + h_b) / h_ab


def studholme_nmi(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """NMI of two intensity samples with a plain (hard) joint histogram over their ranges."""
    hist, _, _ = np.histogram2d(a, b, bins=bins)
    p = hist / hist.sum()
    pa, pb = p.sum(1), p.sum(0)

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(pa) + entropy(pb)) / entropy(p.ravel())


class TemplateSampler:
    """A template volume as a torch tensor for trilinear sampling at RAS points (zero outside)."""

    def __init__(self, array: np.ndarray, voxel_to_ras: np.ndarray, device="cpu", dtype=torch.float32):
        self.volume = torch.as_tensor(np.ascontiguousarray(array.transpose(2, 1, 0)), dtype=dtype,
                                      device=device)[None, None]          # (1, 1, K, J, I)
        shape = np.asarray(array.shape, dtype=np.float64)
        # RAS → normalised grid coordinates in (i, j, k) order, align_corners=True
        ras_to_voxel = np.linalg.inv(voxel_to_ras)
        scale = np.diag(np.r_[2.0 / (shape - 1), 1.0])
        scale[:3, 3] = -1.0
        self.ras_to_grid = torch.as_tensor((scale @ ras_to_voxel)[:3], dtype=dtype, device=device)

    def sample(self, points_ras: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) RAS mm → (B, N) values."""
        grid = points_ras @ self.ras_to_grid[:, :3].T + self.ras_to_grid[:, 3]
        batch = grid.shape[0]
        vol = self.volume.expand(batch, -1, -1, -1, -1)
        out = F.grid_sample(vol, grid[:, :, None, None, :], mode="bilinear", padding_mode="zeros",
                            align_corners=True)
        return out[:, 0, :, 0, 0]


def optimise_poses(points_stack: np.ndarray, values_stack: np.ndarray, template: TemplateSampler,
                   initial_stack_to_template: np.ndarray, centre_template: np.ndarray, level: NMILevel,
                   seed: int = 0, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Optimise B poses from ``initial_stack_to_template`` (B, 4, 4); returns final matrices and their NMI.

    ``points_stack`` (N, 3) are stack RAS mm sample points with fixed-image intensities ``values_stack`` in
    [0, 1]; template intensities must also be scaled to [0, 1].
    """
    rng = np.random.default_rng(seed)
    bins = level.bins
    n = points_stack.shape[0]
    pick = rng.choice(n, size=min(level.points, n), replace=False) if n > level.points else np.arange(n)
    dtype = torch.float32
    p = torch.as_tensor(points_stack[pick], dtype=dtype, device=device)
    w_fixed = parzen_weights(torch.as_tensor(values_stack[pick], dtype=dtype, device=device), bins)
    init = torch.as_tensor(np.asarray(initial_stack_to_template), dtype=dtype, device=device)
    c = torch.as_tensor(np.asarray(centre_template), dtype=dtype, device=device)
    q0 = torch.einsum("bij,nj->bni", init[:, :3, :3], p) + init[:, None, :3, 3] - c   # (B, N, 3) about c
    batch = init.shape[0]
    omega = torch.zeros(batch, 3, dtype=dtype, device=device, requires_grad=True)
    trans = torch.zeros(batch, 3, dtype=dtype, device=device, requires_grad=True)
    opt = torch.optim.Adam([{"params": [omega], "lr": level.lr_rotation_rad},
                            {"params": [trans], "lr": level.lr_translation_mm}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(level.iterations, 1), eta_min=0.0)
    best_nmi = torch.full((batch,), -np.inf, dtype=dtype, device=device)
    best_omega, best_trans = omega.detach().clone(), trans.detach().clone()

    def evaluate():
        q = q0 @ rotation_from_vector(omega).transpose(1, 2) + c + trans[:, None, :]
        return nmi_from_weights(w_fixed, parzen_weights(template.sample(q).clamp(0, 1), bins))

    for _ in range(level.iterations):
        opt.zero_grad()
        nmi = evaluate()
        with torch.no_grad():
            improved = nmi > best_nmi
            best_nmi = torch.where(improved, nmi, best_nmi)
            best_omega[improved], best_trans[improved] = omega[improved], trans[improved]
        (-nmi.sum()).backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        nmi = evaluate()
        improved = nmi > best_nmi
        best_nmi = torch.where(improved, nmi, best_nmi)
        best_omega[improved], best_trans[improved] = omega[improved], trans[improved]
        rot = rotation_from_vector(best_omega).cpu().numpy().astype(np.float64)
    out = np.repeat(np.eye(4)[None], batch, axis=0)
    cc = np.asarray(centre_template, dtype=np.float64)
    init64 = np.asarray(initial_stack_to_template, dtype=np.float64)
    for b in range(batch):
        delta = np.eye(4)
        delta[:3, :3] = rot[b]
        delta[:3, 3] = cc - rot[b] @ cc + best_trans[b].cpu().numpy()
        out[b] = orthonormalize(delta @ init64[b])        # float32 optimisation → exact rotation
    return out, best_nmi.cpu().numpy().astype(np.float64)
