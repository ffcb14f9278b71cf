"""Per-slice rigid motion (``data.slice_motion``): what a fetus's movement between slices does to a stack.

A stack's slices are acquired one after another, and the fetus moves between them, so each slice of a stack lies
off the stack's registered pose by a small rigid motion of its own.  The acquired samples (``data.term: exact``)
of slice ``l`` sit at template RAS ``x`` (mm) by the stack's registration; with this model they are seen at

    ``x' = R_l (x − c_l) + c_l + t_l``

with ``c_l`` the centre of the slice's brain samples (template RAS mm), ``t_l`` a translation (mm) and ``R_l`` the
rotation of vector ``r_l / RADIUS_MM`` (radians; ``r_l`` is the rotation expressed as the displacement, in mm, of a
point ``RADIUS_MM`` from the centre, so one learning rate and one penalty suit both parts).  The PSF samples are
moved the same way, so the slice's PSF turns with it.

The stack's registration is the gauge: the motions of a stack's slices are taken relative to their mean (the mean
over the stack's slices of each of the six parameters is removed before use), so they cannot move the stack as a
whole.  The penalty is the mean squared parameter (mm²).  All start at zero; training holds them there for the
first ``data.slice_motion_warmup`` steps, while the template takes shape.

A finished run writes every slice's motion to ``slice_motion.json`` (:func:`write_slice_motion`): per stack, per
slice (its through-plane voxel index in the stack), the translation (mm) and rotation vector (degrees) in template
RAS and the slice's centre: which slices moved, and how far, is a check of the acquisition.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

#: the radius (mm) at which a rotation parameter is the displacement it causes (a fetal head's scale)
RADIUS_MM = 50.0


def rotation_matrices(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: (L, 3) rotation vectors (radians) → (L, 3, 3) rotation matrices (differentiable at 0)."""
    theta2 = (rotvec * rotvec).sum(1)
    theta = torch.sqrt(theta2 + 1e-24)
    small = theta2 < 1e-8
    # sin θ / θ and (1 − cos θ) / θ², by their Taylor series near 0
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-24))
    x, y, z = rotvec.unbind(1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + a[:, None, None] * k + b[:, None, None] * (k @ k)


class SliceMotion(nn.Module):
    """The rigid motions of ``n_slices`` slices; ``slice_stack`` (L,) ties each to its stack, ``slice_centre_mm``
    (L, 3) is the centre of its brain samples (template RAS mm)."""

    def __init__(self, slice_stack, slice_centre_mm):
        super().__init__()
        slice_stack = torch.as_tensor(slice_stack, dtype=torch.long)
        n_slices = int(slice_stack.shape[0])
        self.params = nn.Parameter(torch.zeros(n_slices, 6))            # r (mm at RADIUS_MM), t (mm)
        self.register_buffer("slice_stack", slice_stack)
        self.register_buffer("centre", torch.as_tensor(slice_centre_mm, dtype=torch.float32).reshape(n_slices, 3))
        n_stacks = int(slice_stack.max()) + 1 if n_slices else 0
        counts = torch.zeros(n_stacks).index_add_(0, slice_stack, torch.ones(n_slices))
        self.register_buffer("stack_slices", counts.clamp_min(1))

    def relative(self) -> torch.Tensor:
        """(L, 6) the parameters less their stack's mean: the motion of each slice relative to its stack's pose."""
        sums = torch.zeros(self.stack_slices.shape[0], 6, dtype=self.params.dtype, device=self.params.device)
        sums = sums.index_add(0, self.slice_stack, self.params)
        return self.params - (sums / self.stack_slices[:, None])[self.slice_stack]

    def forward(self, points_mm: torch.Tensor, slices: torch.Tensor) -> torch.Tensor:
        """Move ``points_mm`` (N, ..., 3, template RAS mm) of slices ``slices`` (N,) by their slices' motions."""
        p = self.relative()
        rotation = rotation_matrices(p[:, :3] / RADIUS_MM)
        r, c, t = rotation[slices], self.centre[slices], p[slices, 3:]
        shape = (points_mm.shape[0],) + (1,) * (points_mm.dim() - 2) + (3,)
        centred = points_mm - c.reshape(shape)
        moved = torch.einsum("nij,n...j->n...i", r, centred)
        return moved + (c + t).reshape(shape)

    def penalty(self) -> torch.Tensor:
        """The mean squared relative parameter (mm²)."""
        return (self.relative() ** 2).mean() if self.params.numel() else self.params.new_zeros(())

    def summary(self) -> dict:
        """RMS and largest translation (mm) and rotation (degrees) over the slices."""
        if not self.params.numel():
            return {}
        p = self.relative().detach()
        translation = p[:, 3:].norm(dim=1)
        degrees = p[:, :3].norm(dim=1) / RADIUS_MM * 180 / torch.pi
        return {"slices": int(p.shape[0]), "translation_rms_mm": float(translation.pow(2).mean().sqrt()),
                "translation_max_mm": float(translation.max()),
                "rotation_rms_deg": float(degrees.pow(2).mean().sqrt()), "rotation_max_deg": float(degrees.max())}


def write_slice_motion(run_dir, motion: SliceMotion, stack_ids, slice_number) -> Path:
    """``slice_motion.json`` in ``run_dir`` (atomically): ``{"frame", "summary", "stacks": {stack id: [{"slice",
    "translation_mm", "rotation_deg", "centre_mm"}, ...]}}`` with ``slice_number`` (L,) each slice's through-plane
    voxel index in its stack."""
    from infanite.io.atomic import atomic_write_text
    from infanite.io.layout import SLICE_MOTION

    p = motion.relative().detach().cpu().double()
    degrees = p[:, :3] / RADIUS_MM * 180 / torch.pi
    stacks: dict = {str(s): [] for s in stack_ids}
    for slice_id, (stack, number) in enumerate(zip(motion.slice_stack.tolist(), list(slice_number))):
        stacks[str(stack_ids[stack])].append({
            "slice": int(number), "translation_mm": [round(float(v), 4) for v in p[slice_id, 3:]],
            "rotation_deg": [round(float(v), 4) for v in degrees[slice_id]],
            "centre_mm": [round(float(v), 3) for v in motion.centre[slice_id].tolist()]})
    document = {"frame": "template RAS (mm); a slice's samples are seen at R (x - centre) + centre + translation, "
                         "R the rotation of rotation_deg (a rotation vector); relative to the stack's registered pose",
                "summary": motion.summary(), "stacks": stacks}
    path = Path(run_dir) / SLICE_MOTION
    atomic_write_text(path, json.dumps(document, indent=1))
    return path
