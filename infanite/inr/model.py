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

Memory: by default (``lean=True``) the trunk and head run as one autograd function that saves only the inputs and
each layer's pre-activation ``W h + b`` and recomputes sines, cosines and modulations in the backward pass
(element-wise work and the small latent→modulation products; no large matmul is repeated).  Plain autograd keeps
about four N×H tensors per modulated layer; this keeps one.  ``lean=False`` runs the same maths through plain
autograd (the tests compare the two in float64).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from infanite.registration.rigid_nmi import rotation_from_vector


def interpolate_latents(latents: torch.Tensor, stack: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of per-stack latent grids from the 8 neighbouring vertices.

    ``latents`` (S, C, Gz, Gy, Gx), ``stack`` (N,) indices, ``coords`` (N, 3) normalised (x, y, z) with x → the
    last grid axis (``grid_sample`` order, ``align_corners=True``, border clamping).  Returns (N, C).
    The 8 vertices are gathered at once (``index_select``, whose backward is one scatter-add: an ``index_put``
    with accumulation per vertex is several times slower on a CPU) and weighed element-wise.
    """
    s, c, gz, gy, gx = latents.shape
    sizes = coords.new_tensor([gx, gy, gz])
    u = ((coords.clamp(-1, 1) + 1) * 0.5 * (sizes - 1))                       # continuous index (x, y, z)
    i0 = torch.minimum(u.floor(), sizes - 2).clamp_min(0)
    f = u - i0                                                                # (N, 3) in [0, 1]
    i0 = i0.long()
    flat = latents.permute(0, 2, 3, 4, 1).reshape(s * gz * gy * gx, c)        # vertex-major, channels last
    base = stack * (gz * gy * gx) + (i0[:, 2] * gy + i0[:, 1]) * gx + i0[:, 0]
    corner = torch.tensor([dz * gy * gx + dy * gx + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)],
                          device=base.device)
    ends = torch.stack([1 - f, f], dim=1)                                     # (N, 2 ends, 3 axes)
    weights = (ends[:, :, None, None, 2] * ends[:, None, :, None, 1] * ends[:, None, None, :, 0]).reshape(-1, 8, 1)
    vertices = flat.index_select(0, (base[:, None] + corner).reshape(-1)).reshape(-1, 8, c)
    return (weights * vertices).sum(1)


def interpolate_latents_naive(latents: torch.Tensor, stack: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """The reference's way: copy each sample's whole grid, then ``grid_sample`` (memory ∝ N·C·G³)."""
    per_sample = latents[stack]                                               # (N, C, G, G, G) copy
    grid = coords[:, None, None, None, :]
    return F.grid_sample(per_sample, grid, mode="bilinear", padding_mode="border", align_corners=True)[:, :, 0, 0, 0]


def _autocast_state(device_type: str):
    if torch.is_autocast_enabled(device_type):
        return device_type, torch.get_autocast_dtype(device_type)
    return device_type, None


def _modulated_argument(pre, z, modulation, omega):
    """``ω·pre`` (plain layer) or ``ω·pre·s + t`` with ``[s; t] = A z + c``; returns (argument, s or None)."""
    if modulation is None:
        return omega * pre, None
    scale, shift = F.linear(z.to(pre.dtype), *modulation).chunk(2, dim=-1)
    return torch.addcmul(shift, pre, scale, value=omega), scale


def _unpack(layout, params):
    """Flat parameter list → (first weight, first bias, [(W, b, (A, c) | None) per hidden layer], head W, head b)."""
    rest, layers, k = list(params[2:]), [], 0
    for modulated in layout:
        layers.append((rest[k], rest[k + 1], (rest[k + 2], rest[k + 3]) if modulated else None))
        k += 4 if modulated else 2
    return params[0], params[1], layers, rest[k], rest[k + 1]


class _LeanSirenFunction(torch.autograd.Function):
    """SIREN trunk + head; saves inputs and pre-activations only (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, z, spec, *params):
        omega0, omega, layout = spec                       # layout: per hidden layer, True when modulated
        w0, b0, layers, head_w, head_b = _unpack(layout, params)
        pre = F.linear(x, w0, b0)
        pres = [pre]
        h = torch.sin(omega0 * pre)
        for weight, bias, modulation in layers:
            pre = F.linear(h, weight, bias)
            pres.append(pre)
            h = _modulated_argument(pre, z, modulation, omega)[0].sin_()
        out = F.linear(torch.cat([h, z.to(h.dtype)], dim=-1), head_w, head_b)
        ctx.save_for_backward(x, z, *pres, *params)
        ctx.spec, ctx.n_pre = spec, len(pres)
        ctx.autocast = _autocast_state(x.device.type)
        return out

    @staticmethod
    def backward(ctx, g_out):
        device_type, amp_dtype = ctx.autocast
        with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            return _LeanSirenFunction._backward(ctx, g_out)

    @staticmethod
    def _backward(ctx, g_out):
        omega0, omega, layout = ctx.spec
        saved = ctx.saved_tensors
        x, z, pres, params = saved[0], saved[1], saved[2:2 + ctx.n_pre], saved[2 + ctx.n_pre:]
        w0, b0, layers, head_w, _ = _unpack(layout, params)
        grads = [None] * len(params)

        def sin_cos(i):
            """Layer i's output sin(arg) and cos(arg), plus its modulation scale (i = 0: the first layer)."""
            if i == 0:
                arg, scale = omega0 * pres[0], None
            else:
                arg, scale = _modulated_argument(pres[i], z, layers[i - 1][2], omega)
            return torch.sin(arg), arg.cos_(), scale

        n_hidden = len(layers)
        h, cos, scale = sin_cos(n_hidden)
        g_out = g_out.to(h.dtype)
        hidden_size = h.shape[-1]
        grads[-2] = torch.cat([g_out.t() @ h, g_out.t() @ z.to(h.dtype)], dim=1).to(head_w.dtype)
        grads[-1] = g_out.sum(0).to(head_w.dtype)
        g_h = g_out @ head_w[:, :hidden_size].to(g_out.dtype)
        acc = torch.promote_types(z.dtype, torch.float32)   # latent-gradient accumulation dtype
        g_z = (g_out @ head_w[:, hidden_size:].to(g_out.dtype)).to(acc)
        k_param = 2 + sum(4 if m else 2 for m in layout)   # index just past the last hidden layer's params
        for i in range(n_hidden, 0, -1):
            weight, bias, modulation = layers[i - 1]
            k_param -= 4 if modulation is not None else 2
            g_arg = g_h.mul_(cos)                          # g_h is ours: reuse its memory
            del h, cos
            if modulation is not None:
                g_mod = torch.empty(g_arg.shape[0], 2 * hidden_size, dtype=g_arg.dtype, device=g_arg.device)
                torch.mul(g_arg, pres[i], out=g_mod[:, :hidden_size]).mul_(omega)
                g_mod[:, hidden_size:] = g_arg
                grads[k_param + 2] = (g_mod.t() @ z.to(g_mod.dtype)).to(modulation[0].dtype)
                grads[k_param + 3] = g_mod.sum(0).to(modulation[1].dtype)
                g_z += (g_mod @ modulation[0].to(g_mod.dtype)).to(acc)
                del g_mod
                g_pre = g_arg.mul_(scale)
            else:
                g_pre = g_arg
            g_pre.mul_(omega)
            del scale
            h, cos, scale = sin_cos(i - 1)
            grads[k_param] = (g_pre.t() @ h.to(g_pre.dtype)).to(weight.dtype)
            grads[k_param + 1] = g_pre.sum(0).to(bias.dtype)
            g_h = g_pre @ weight.to(g_pre.dtype)
            del g_pre, g_arg
        g_pre0 = g_h.mul_(cos).mul_(omega0)
        grads[0] = (g_pre0.t() @ x.to(g_pre0.dtype)).to(w0.dtype)
        grads[1] = g_pre0.sum(0).to(b0.dtype)
        g_x = (g_pre0 @ w0.to(g_pre0.dtype)).to(x.dtype) if ctx.needs_input_grad[0] else None
        g_z = g_z.to(z.dtype) if ctx.needs_input_grad[1] else None
        return (g_x, g_z, None, *grads)


class ModulatedSiren(nn.Module):
    """SIREN decoder + per-stack latent grids (+ optional per-stack rigid refinement in mm)."""

    def __init__(self, n_stacks: int, n_outputs: int, centre_mm, half_extent_mm, hidden_size: int = 1024,
                 num_hidden_layers: int = 5, modulated_layers=(1, 3, 5), latent_dim=(256, 3, 3, 3),
                 omega=(30.0, 30.0), rigid: bool = False, naive: bool = False, lean: bool = True):
        super().__init__()
        self.lean = lean
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

    def rigid_penalty(self) -> torch.Tensor:
        """Mean over stacks of the squared displacement (mm²) the refinement causes at the field-of-view edge:
        ‖t‖² + (r·‖ω‖)², r = mean half extent (mm) — rotation and translation on one scale.  0 without refinement."""
        if self.rigid is None:
            return self.latents.new_zeros(())
        radius = self.half_extent_mm.mean()
        return (self.rigid[:, 3:].pow(2).sum(1) + (radius * self.rigid[:, :3].norm(dim=1)).pow(2)).mean()

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
        return self.decode(x, z)

    def decode(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The trunk and head at normalised coordinates ``x`` (N, 3) with latent features ``z`` (N, C)."""
        if self.lean and not self.naive and torch.is_grad_enabled():   # no_grad: plain path frees as it goes
            return _LeanSirenFunction.apply(x, z, self._spec(), *self._trunk_parameters())
        h = torch.sin(self.omega0 * self.first(x))
        for i, layer in enumerate(self.hidden, start=1):
            pre = layer(h)
            if str(i) in self.modulation:
                scale, shift = self.modulation[str(i)](z).chunk(2, dim=-1)
                h = torch.sin(self.omega * pre * scale + shift)
            else:
                h = torch.sin(self.omega * pre)
        return self.head(torch.cat([h, z], dim=-1))

    def _spec(self):
        layout = tuple(str(i) in self.modulation for i in range(1, len(self.hidden) + 1))
        return self.omega0, self.omega, layout

    def _trunk_parameters(self) -> list:
        params = [self.first.weight, self.first.bias]
        for i, layer in enumerate(self.hidden, start=1):
            params += [layer.weight, layer.bias]
            if str(i) in self.modulation:
                params += [self.modulation[str(i)].weight, self.modulation[str(i)].bias]
        return params + [self.head.weight, self.head.bias]
