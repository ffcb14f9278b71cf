"""The INR: a SIREN shared by all stacks, modulated per stack by a latent grid (the paper's decoder).

Coordinates are template RAS mm; the model maps them to [−1, 1] with the template's world bounding box
(``centre_mm``, ``half_extent_mm``).  Layer 0 is ``sin(ω₀(W x + b))``; hidden layer *i* is ``sin(ω(W h + b))``,
or, when *i* is in ``modulated_layers``, ``sin(ω (W h + b) ⊙ s + t)`` with ``[s; t] = A_i z + c_i`` (the
reference's FiLM form: purely multiplicative scale, shift outside ω).  ``z`` is the stack's latent grid
(``latent_dim`` = [C, G, G, G]) interpolated trilinearly at the coordinate; the output head sees ``[h_L; z]``
and gives intensity + label logits.  Initialisation follows the reference (method-reference §1.3).

Latent interpolation gathers only the 8 neighbouring vertices of each coordinate (``naive=True`` reproduces the
reference: a full copy of the grid per sample followed by ``grid_sample``; kept for benchmarks and tests).
Border padding: coordinates outside [−1, 1] clamp to the edge, as ``grid_sample(padding_mode="border")``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .rigid_nmi import rotation_from_vector


def interpolate_latents(latents: torch.Tensor, stack: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of per-stack latent grids from the 8 neighbouring vertices.

    ``latents`` (S, C, Gz, Gy, Gx), ``stack`` (N,) indices, ``coords`` (N, 3) normalised (x, y, z) with x → the
    last grid axis (``grid_sample`` order, ``align_corners=True``, border clamping).  Returns (N, C).
    """
    s, c, gz, gy, gx = latents.shape
    sizes = coords.new_tensor([gx, gy, gz])
    u = ((coords.clamp(-1, 1) + 1) * 0.5 * (sizes - 1))                       # continuous index (x, y, z)
    i0 = torch.minimum(u.floor(), sizes - 2).clamp_min(0)
    f = u - i0
    i0 = i0.long()
    flat = latents.permute(0, 2, 3, 4, 1).reshape(s * gz * gy * gx, c)        # vertex-major, channels last
    base = stack * (gz * gy * gx)
    out = 0
    for dz in (0, 1):
        wz = f[:, 2] if dz else 1 - f[:, 2]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1 - f[:, 1]
            for dx in (0, 1):
                wx = f[:, 0] if dx else 1 - f[:, 0]
                idx = base + ((i0[:, 2] + dz) * gy + i0[:, 1] + dy) * gx + i0[:, 0] + dx
                out = out + (wz * wy * wx)[:, None] * flat[idx]
    return out


def interpolate_latents_naive(latents: torch.Tensor, stack: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """The reference's way: copy each sample's whole grid, then ``grid_sample`` (memory ∝ N·C·G³)."""
    per_sample = latents[stack]                                               # (N, C, G, G, G) copy
    grid = coords[:, None, None, None, :]
    return F.grid_sample(per_sample, grid, mode="bilinear", padding_mode="border", align_corners=True)[:, :, 0, 0, 0]


class ModulatedSiren(nn.Module):
    """SIREN decoder + per-stack latent grids (+ optional per-stack rigid refinement in mm)."""

    def __init__(self, n_stacks: int, n_outputs: int, centre_mm, half_extent_mm, hidden_size: int = 1024,
                 num_hidden_layers: int = 5, modulated_layers=(1, 3, 5), latent_dim=(256, 3, 3, 3),
                 omega=(30.0, 30.0), rigid: bool = False, naive: bool = False):
        super().__init__()
        self.omega0, self.omega = float(omega[0]), float(omega[1])
        self.modulated_layers = tuple(int(i) for i in modulated_layers)
        self.naive = naive
        self.register_buffer("centre_mm", torch.as_tensor(centre_mm, dtype=torch.float32))
        self.register_buffer("half_extent_mm", torch.as_tensor(half_extent_mm, dtype=torch.float32))
        channels = int(latent_dim[0])
        self.latents = nn.Parameter(torch.randn(n_stacks, *[int(d) for d in latent_dim]) * 0.01)
        self.rigid = nn.Parameter(torch.zeros(n_stacks, 6)) if rigid else None   # rotation vector (rad), mm
        self.first = nn.Linear(3, hidden_size)
        self.hidden = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_hidden_layers))
        self.modulation = nn.ModuleDict({str(i): nn.Linear(channels, 2 * hidden_size) for i in self.modulated_layers})
        self.head = nn.Linear(hidden_size + channels, n_outputs)
        with torch.no_grad():
            self.first.weight.uniform_(-1 / 3, 1 / 3)
            bound = math.sqrt(6 / hidden_size) / self.omega
            for layer in self.hidden:
                layer.weight.uniform_(-bound, bound)
            self.head.weight.uniform_(-bound, bound)

    def normalise(self, coords_mm: torch.Tensor) -> torch.Tensor:
        return (coords_mm - self.centre_mm) / self.half_extent_mm

    def apply_rigid(self, coords_mm: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
        """Per-stack rigid refinement ``R(ω)(x − c) + c + t`` (c = bounding-box centre, mm)."""
        if self.rigid is None:
            return coords_mm
        params = self.rigid[stack]
        rot = rotation_from_vector(params[:, :3])
        return torch.einsum("nij,nj->ni", rot, coords_mm - self.centre_mm) + self.centre_mm + params[:, 3:]

    def forward(self, coords_mm: torch.Tensor, stack: torch.Tensor, latents: torch.Tensor | None = None):
        """(N, 3) template RAS mm and (N,) stack indices → (N, n_outputs) raw outputs.

        ``latents`` (optional, (S, C, G, G, G)) replaces the learned grids, e.g. a GA-regressed latent at
        atlas generation time (with ``stack`` indexing into it).
        """
        x = self.normalise(self.apply_rigid(coords_mm, stack) if latents is None else coords_mm)
        grids = self.latents if latents is None else latents
        z = (interpolate_latents_naive if self.naive else interpolate_latents)(grids, stack, x)
        h = torch.sin(self.omega0 * self.first(x))
        for i, layer in enumerate(self.hidden, start=1):
            pre = layer(h)
            if str(i) in self.modulation:
                scale, shift = self.modulation[str(i)](z).chunk(2, dim=-1)
                h = torch.sin(self.omega * pre * scale + shift)
            else:
                h = torch.sin(self.omega * pre)
        return self.head(torch.cat([h, z], dim=-1))
