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

With ``data.stack_motion`` each stack also gets a rigid motion of its own (the registration's residual error
between a fetus's stacks): ``x' = R_s (x − c_f) + c_f + t_s`` applied after the slice's, with ``c_f`` the centre of
its fetus's brain samples.  Its gauge is the fetus: the mean over a fetus's stacks of each parameter is removed
(the fetus's displacement field carries the fetus as a whole), so a fetus with one stack gets none.  It shares the
slices' learning rate, warm-up and penalty, and gets ~30× more samples per step than a slice.

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


def _group_mean_removed(values: torch.Tensor, group: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(N, 6) ``values`` less the mean of their ``group`` (N,) (``counts``: members per group, at least 1)."""
    sums = torch.zeros(counts.shape[0], values.shape[1], dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, group, values)
    return values - (sums / counts[:, None])[group]


def _rigid(points_mm: torch.Tensor, params: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``points_mm`` (N, ..., 3) moved by the rigid motions ``params`` (N, 6: r at RADIUS_MM, t; mm) about
    ``centre`` (N, 3)."""
    rotation = rotation_matrices(params[:, :3] / RADIUS_MM)
    shape = (points_mm.shape[0],) + (1,) * (points_mm.dim() - 2) + (3,)
    centred = points_mm - centre.reshape(shape)
    moved = torch.einsum("nij,n...j->n...i", rotation, centred)
    return moved + (centre + params[:, 3:]).reshape(shape)


class SliceMotion(nn.Module):
    """The rigid motions of ``n_slices`` slices; ``slice_stack`` (L,) ties each to its stack, ``slice_centre_mm``
    (L, 3) is the centre of its brain samples (template RAS mm).  ``per_slice`` False: no slice motions.
    ``stack_fetus`` (S,): also a rigid motion per stack relative to its fetus (``data.stack_motion``)."""

    def __init__(self, slice_stack, slice_centre_mm, stack_fetus=None, per_slice: bool = True):
        super().__init__()
        slice_stack = torch.as_tensor(slice_stack, dtype=torch.long)
        n_slices = int(slice_stack.shape[0])
        self.per_slice = bool(per_slice)
        self.params = nn.Parameter(torch.zeros(n_slices if self.per_slice else 0, 6))   # r (mm at RADIUS_MM), t
        self.register_buffer("slice_stack", slice_stack)
        centre = torch.as_tensor(slice_centre_mm, dtype=torch.float32).reshape(n_slices, 3)
        self.register_buffer("centre", centre)
        n_stacks = int(slice_stack.max()) + 1 if n_slices else 0
        counts = torch.zeros(n_stacks).index_add_(0, slice_stack, torch.ones(n_slices))
        self.register_buffer("stack_slices", counts.clamp_min(1))
        self.stack_params = None
        if stack_fetus is not None:
            fetus = torch.as_tensor(list(stack_fetus), dtype=torch.long)
            if fetus.shape[0] != n_stacks:
                raise ValueError(f"stack_fetus has {fetus.shape[0]} stacks, the slices {n_stacks}")
            n_fetuses = int(fetus.max()) + 1 if n_stacks else 0
            slice_fetus = fetus[slice_stack]
            fetus_slices = torch.zeros(n_fetuses).index_add_(0, slice_fetus, torch.ones(n_slices)).clamp_min(1)
            fetus_centre = torch.zeros(n_fetuses, 3).index_add_(0, slice_fetus, centre) / fetus_slices[:, None]
            self.stack_params = nn.Parameter(torch.zeros(n_stacks, 6))
            self.register_buffer("stack_fetus", fetus)
            self.register_buffer("fetus_stacks", torch.zeros(n_fetuses).index_add_(0, fetus, torch.ones(n_stacks))
                                 .clamp_min(1))
            self.register_buffer("stack_centre", fetus_centre[fetus])

    def relative(self) -> torch.Tensor:
        """(L, 6) the parameters less their stack's mean: the motion of each slice relative to its stack's pose."""
        return _group_mean_removed(self.params, self.slice_stack, self.stack_slices)

    def stack_relative(self) -> torch.Tensor | None:
        """(S, 6) each stack's motion less its fetus's mean, or None without stack motions."""
        if self.stack_params is None:
            return None
        return _group_mean_removed(self.stack_params, self.stack_fetus, self.fetus_stacks)

    def forward(self, points_mm: torch.Tensor, slices: torch.Tensor) -> torch.Tensor:
        """Move ``points_mm`` (N, ..., 3, template RAS mm) of slices ``slices`` (N,) by their slices' motions, then
        by their stacks'."""
        if self.per_slice:
            points_mm = _rigid(points_mm, self.relative()[slices], self.centre[slices])
        if self.stack_params is not None:
            stacks = self.slice_stack[slices]
            points_mm = _rigid(points_mm, self.stack_relative()[stacks], self.stack_centre[stacks])
        return points_mm

    def penalty(self) -> torch.Tensor:
        """The mean squared relative parameter (mm²) of the slices, plus that of the stacks."""
        total = (self.relative() ** 2).mean() if self.params.numel() else self.params.new_zeros(())
        if self.stack_params is not None and self.stack_params.numel():
            total = total + (self.stack_relative() ** 2).mean()
        return total

    def summary(self) -> dict:
        """RMS and largest translation (mm) and rotation (degrees) over the slices (and over the stacks)."""
        out = {}
        for prefix, count, p in (("", "slices", self.relative() if self.params.numel() else None),
                                 ("stack_", "stacks", self.stack_relative())):
            if p is None or not p.numel():
                continue
            p = p.detach()
            translation = p[:, 3:].norm(dim=1)
            degrees = p[:, :3].norm(dim=1) / RADIUS_MM * 180 / torch.pi
            out.update({count: int(p.shape[0]),
                        f"{prefix}translation_rms_mm": float(translation.pow(2).mean().sqrt()),
                        f"{prefix}translation_max_mm": float(translation.max()),
                        f"{prefix}rotation_rms_deg": float(degrees.pow(2).mean().sqrt()),
                        f"{prefix}rotation_max_deg": float(degrees.max())})
        return out


def write_slice_motion(run_dir, motion: SliceMotion, stack_ids, slice_number) -> Path:
    """``slice_motion.json`` in ``run_dir`` (atomically): ``{"frame", "summary", "stacks": {stack id: [{"slice",
    "translation_mm", "rotation_deg", "centre_mm"}, ...]}}`` with ``slice_number`` (L,) each slice's through-plane
    voxel index in its stack."""
    from infanite.io.atomic import atomic_write_text
    from infanite.io.layout import SLICE_MOTION

    def rows(p: torch.Tensor, centres: torch.Tensor):
        p = p.detach().cpu().double()
        degrees = p[:, :3] / RADIUS_MM * 180 / torch.pi
        return [{"translation_mm": [round(float(v), 4) for v in p[i, 3:]],
                 "rotation_deg": [round(float(v), 4) for v in degrees[i]],
                 "centre_mm": [round(float(v), 3) for v in centres[i].tolist()]} for i in range(p.shape[0])]

    stacks: dict = {str(s): [] for s in stack_ids}
    if motion.per_slice:
        per_slice = rows(motion.relative(), motion.centre)
        for slice_id, (stack, number) in enumerate(zip(motion.slice_stack.tolist(), list(slice_number))):
            stacks[str(stack_ids[stack])].append({"slice": int(number), **per_slice[slice_id]})
    document = {"frame": "template RAS (mm); a slice's samples are seen at R (x - centre) + centre + translation, "
                         "R the rotation of rotation_deg (a rotation vector); relative to the stack's registered pose",
                "summary": motion.summary(), "stacks": stacks}
    if motion.stack_params is not None:
        document["stack_frame"] = ("template RAS (mm); after its slice's motion, each sample of the stack is moved "
                                   "the same way about its fetus's centre; relative to the mean of its fetus's stacks")
        document["stack_motion"] = dict(zip((str(s) for s in stack_ids),
                                            rows(motion.stack_relative(), motion.stack_centre)))
    path = Path(run_dir) / SLICE_MOTION
    atomic_write_text(path, json.dumps(document, indent=1))
    return path
