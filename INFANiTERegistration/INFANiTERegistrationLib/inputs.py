"""What the user gives the Registration module, turned into what ``python -m infanite register`` reads.

Stacks loaded as volume nodes are written (with their exact world geometry) to NIfTI files in a work folder and
listed in a cohort manifest; a cohort TSV is used as it is.  Either way the registration itself is the core's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class StackInput:
    """One stack given as nodes: T2 volume, brain mask (a label map, or a segmentation node drawn in the Segment
    Editor: every segment is brain) and/or tissue labels (a label map), GA in weeks (``None``: estimated from the
    brain volume by the registration)."""

    t2w: object
    mask: object = None
    seg: object = None
    ga_weeks: float | None = None
    stack_id: str = ""


@dataclass(frozen=True)
class StackEntry:
    """One stack added in the module, as the parameter node keeps it (``inputStacks``: a list of strings): the
    node IDs of its T2 volume, brain mask and tissue labels (empty when absent) and its GA (weeks, None =
    unknown).  :meth:`to_parameter` / :meth:`from_parameter` are the only place that string format lives."""

    t2_id: str
    mask_id: str = ""
    seg_id: str = ""
    ga_weeks: float | None = None

    SEPARATOR = "|"

    def to_parameter(self) -> str:
        ga = "" if self.ga_weeks is None else f"{self.ga_weeks:g}"
        return self.SEPARATOR.join([self.t2_id, self.mask_id, self.seg_id, ga])

    @classmethod
    def from_parameter(cls, text: str) -> "StackEntry":
        """The entry of one ``inputStacks`` string; ``ValueError`` naming it when it is not one."""
        parts = str(text).split(cls.SEPARATOR)
        if len(parts) != 4 or not parts[0]:
            raise ValueError(f"input stack entry {text!r} is not 'T2 node|mask node|labels node|GA weeks'")
        try:
            ga = float(parts[3]) if parts[3] else None
        except ValueError:
            raise ValueError(f"input stack entry {text!r}: GA {parts[3]!r} is not a number of weeks") from None
        return cls(parts[0], parts[1], parts[2], ga)

    @classmethod
    def from_nodes(cls, t2w, mask=None, seg=None, ga_weeks: float | None = None) -> "StackEntry":
        """The entry of nodes chosen in the module (GA ≤ 0 means unknown); ``ValueError`` without a T2 volume or
        without both a mask and a segmentation."""
        if t2w is None or (mask is None and seg is None):
            raise ValueError("select a T2 stack and its brain mask or tissue segmentation first")
        return cls(t2w.GetID(), mask.GetID() if mask else "", seg.GetID() if seg else "",
                   float(ga_weeks) if ga_weeks and ga_weeks > 0 else None)

    def stack_input(self, scene) -> StackInput:
        """The nodes of the entry in ``scene`` (a node removed since gives None, which
        :func:`manifest_from_nodes` reports)."""
        node = scene.GetNodeByID
        return StackInput(node(self.t2_id), node(self.mask_id) if self.mask_id else None,
                          node(self.seg_id) if self.seg_id else None, self.ga_weeks)


def _stack_id(stack: StackInput, index: int) -> str:
    from infanite.io.paths import safe_name

    name = stack.stack_id or (stack.t2w.GetName() if stack.t2w is not None else "")
    return safe_name(name or "", f"stack{index + 1}")


def new_mask_segmentation(scene, t2w):
    """An empty segmentation (one segment, "brain") on the grid of the volume node ``t2w``, in which to draw the
    stack's brain mask in the Segment Editor; it is then the stack's mask (:func:`manifest_from_nodes`)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{t2w.GetName()} brain mask")
    node.SetReferenceImageGeometryParameterFromVolumeNode(t2w)
    node.GetSegmentation().AddEmptySegment("brain", "brain")
    node.CreateDefaultDisplayNodes()
    return node


def manifest_from_nodes(stacks: list[StackInput], work_dir) -> Path:
    """Write every stack's images to ``work_dir/inputs/`` and a manifest ``work_dir/cohort.tsv``; returns it.

    Checked before anything is written: at least one stack, a T2 volume with image data for each, a mask or a
    segmentation for each, GA (weeks) positive when given, and unique stack ids.  ``ValueError`` names the stack.
    """
    from infanite.io.cohort import StackRecord, write_manifest
    from infanite.io.layout import COHORT

    import numpy as np
    from infanite.io.images import save_nifti

    from INFANiTECommonLib.mrml import mask_volume, save_volume

    if not stacks:
        raise ValueError("no stacks given: add at least one T2 stack with its brain mask or segmentation")
    ids, problems, masks = [], [], {}
    for index, stack in enumerate(stacks):
        sid = _stack_id(stack, index)
        where = f"stack {index + 1} ({sid})"
        if stack.t2w is None or stack.t2w.GetImageData() is None:
            problems.append(f"{where}: no T2 volume")
        if stack.mask is None and stack.seg is None:
            problems.append(f"{where}: needs a brain mask or a tissue segmentation")
        for role, node in (("mask", stack.mask), ("segmentation", stack.seg)):
            if node is None:
                continue
            if node.IsA("vtkMRMLSegmentationNode"):
                if role != "mask" or node.GetSegmentation().GetNumberOfSegments() == 0:
                    problems.append(f"{where}: the {role} node {node.GetName()!r} " + (
                        "has no segment: draw the brain in the Segment Editor first" if role == "mask" else
                        "is a segmentation; give the tissue labels as a label map"))
            elif node.GetImageData() is None:
                problems.append(f"{where}: the {role} node {node.GetName()!r} holds no image")
        if stack.mask is not None and stack.t2w is not None and not any(where in p for p in problems):
            try:
                masks[index] = mask_volume(stack.mask, stack.t2w)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
            else:
                if not masks[index].array.any():
                    problems.append(f"{where}: the brain mask {stack.mask.GetName()!r} is empty: draw the brain "
                                    f"(Segment Editor) or choose another mask")
        if stack.ga_weeks is not None and not (stack.ga_weeks > 0):
            problems.append(f"{where}: GA must be a positive number of weeks, got {stack.ga_weeks}")
        if sid in ids:
            problems.append(f"{where}: stack id {sid!r} is used twice")
        ids.append(sid)
    if problems:
        raise ValueError("cannot register these stacks:\n  - " + "\n  - ".join(problems))
    folder = Path(work_dir) / "inputs"
    records = []
    for index, (sid, stack) in enumerate(zip(ids, stacks)):
        row = index + 2
        t2 = save_volume(stack.t2w, folder / f"{sid}_T2w.nii.gz")
        mask = None
        if stack.mask is not None:        # a labelmap, or a segmentation drawn in the Segment Editor
            mask = save_nifti(masks[index], folder / f"{sid}_mask.nii.gz", dtype=np.uint8)
        seg = save_volume(stack.seg, folder / f"{sid}_dseg.nii.gz", "int16") if stack.seg is not None else None
        records.append(StackRecord(row, sid, stack.ga_weeks, t2, seg, mask))
    return write_manifest(records, Path(work_dir) / COHORT)


def registration_command(manifest, templates, out_dir, spacing_mm: float | None = None, jobs: int = 1,
                         n4: bool = False, init_transforms=None, fixed_transforms=None, device: str = "cpu",
                         python: str | None = None) -> list[str]:
    """The ``python -m infanite register …`` command line (progress as JSON lines on stdout)."""
    from INFANiTECommonLib.process import python_command

    args = ["register", "--manifest", str(manifest), "--templates", str(templates), "--out", str(out_dir),
            "--jobs", str(int(jobs)), "--device", device, "--progress-json", "-"]
    if spacing_mm:
        args += ["--spacing", f"{float(spacing_mm):g}"]
    if n4:
        args.append("--n4")
    if init_transforms:
        args += ["--init-transforms", str(init_transforms)]
    if fixed_transforms:
        args += ["--fixed-transforms", str(fixed_transforms)]
    return python_command(args, python)
