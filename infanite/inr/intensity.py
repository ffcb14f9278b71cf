"""Per-stack intensity model: what an acquisition does to intensities, kept out of the anatomy.

A stack sees ``y = f(x) · exp(g_s + Σ_k b_sk φ_k(x))``: ``f`` the model's intensity, ``g_s`` the stack's log-gain
and ``φ_k`` the non-constant monomials of degree ≤ ``bias_order`` (1: x, y, z; 2: also x², y², z², xy, yz, xz)
of the template coordinates normalised to [−1, 1] over the template box: a smooth multiplicative bias field.
Both start at zero (no change).  Penalties keep them apart from the anatomy: the mean log-gain over the stacks is
pushed to zero (it would otherwise trade with the template's own scale) and the bias coefficients toward zero
(L2).  Only intensities go through it; labels do not.
"""
from __future__ import annotations

import torch
from torch import nn


def monomials(x: torch.Tensor, order: int) -> torch.Tensor:
    """Non-constant monomials of degree ≤ ``order`` (0, 1 or 2) of normalised coordinates ``x`` (N, 3) → (N, K)."""
    if order <= 0:
        return x.new_zeros(x.shape[0], 0)
    terms = [x[:, 0], x[:, 1], x[:, 2]]
    if order >= 2:
        terms += [x[:, 0] ** 2, x[:, 1] ** 2, x[:, 2] ** 2, x[:, 0] * x[:, 1], x[:, 1] * x[:, 2], x[:, 0] * x[:, 2]]
    return torch.stack(terms, dim=1)


class StackIntensity(nn.Module):
    """Gains and bias fields of ``n_stacks`` stacks over the template box (``centre_mm``, ``half_extent_mm``)."""

    def __init__(self, n_stacks: int, centre_mm, half_extent_mm, bias_order: int = 2):
        super().__init__()
        self.bias_order = int(bias_order)
        n_terms = monomials(torch.zeros(1, 3), self.bias_order).shape[1]
        self.log_gain = nn.Parameter(torch.zeros(n_stacks))
        self.bias = nn.Parameter(torch.zeros(n_stacks, n_terms))
        self.register_buffer("centre", torch.as_tensor(centre_mm, dtype=torch.float32).reshape(3))
        self.register_buffer("half_extent", torch.as_tensor(half_extent_mm, dtype=torch.float32).reshape(3))

    def log_factor(self, coords_mm: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
        """``g_s + b_s·φ(x)`` of each sample (N,)."""
        x = (coords_mm - self.centre) / self.half_extent
        out = self.log_gain[stack]
        if self.bias.shape[1]:
            out = out + (monomials(x, self.bias_order) * self.bias[stack]).sum(1)
        return out

    def apply(self, intensity: torch.Tensor, coords_mm: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
        """The intensity the stack would measure for the model's ``intensity`` at ``coords_mm`` (N,)."""
        return intensity * torch.exp(self.log_factor(coords_mm, stack))

    def penalty(self, gain_weight: float, bias_weight: float) -> torch.Tensor:
        """``gain_weight · mean(g)² + bias_weight · mean(b²)``."""
        out = gain_weight * self.log_gain.mean() ** 2
        if self.bias.numel():
            out = out + bias_weight * (self.bias ** 2).mean()
        return out
