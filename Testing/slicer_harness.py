"""A headless Slicer for the ``<Module>Lib`` tests: real MRML and module logics from PyPI's ``slicer-core``.

``headless_scene()`` builds what desktop Slicer's application sets up and the Lib code relies on: a
``vtkMRMLScene`` with the Colors, Volumes, Segmentations, Sequences and Transforms logics attached (Sequences
before any browser node, segmentation converter rules before any segmentation), the three slice views (slice +
composite nodes named Red / Yellow / Green, as the layout manager creates them), ``slicer.mrmlScene`` set, and a
``slicer.modules`` namespace exposing those logics the way ``slicer.util`` looks them up.  Nothing is faked: every
node and logic is slicer-core's C++ code.
"""
from __future__ import annotations

import types

SLICE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))
_RULES_REGISTERED = False


def slicer_available() -> bool:
    try:
        import slicer  # noqa: F401
        return hasattr(slicer, "vtkMRMLScene")
    except ImportError:
        return False


def _register_converter_rules(slicer) -> None:
    global _RULES_REGISTERED
    if _RULES_REGISTERED:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    _RULES_REGISTERED = True


def headless_scene():
    """A fresh scene with logics and slice views; returns ``(scene, logics)`` (``logics`` keeps them alive)."""
    import slicer

    _register_converter_rules(slicer)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)

    def attach(cls, name):
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        return logic

    logics = {"app": app_logic,
              "colors": attach(slicer.vtkSlicerColorLogic, "Colors"),
              "sequences": attach(slicer.vtkSlicerSequencesLogic, "Sequences"),
              "volumes": attach(slicer.vtkSlicerVolumesLogic, "Volumes"),
              "segmentations": attach(slicer.vtkSlicerSegmentationsModuleLogic, "Segmentations"),
              "transforms": attach(slicer.vtkSlicerTransformLogic, "Transforms")}
    slicer.modules = types.SimpleNamespace(**{
        name: types.SimpleNamespace(logic=(lambda lg=lg: lg)) for name, lg in logics.items() if name != "app"})
    # the three slice views as the application builds them: the layout logic creates the slice nodes, one
    # slice logic per view creates its composite node; the application logic knows them by layout name
    import vtk

    layout = slicer.vtkMRMLLayoutLogic()
    layout.SetMRMLScene(scene)
    layout.GetLayoutNode().SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    slice_logics = vtk.vtkCollection()
    for name, _ in SLICE_VIEWS:
        slice_logic = slicer.vtkMRMLSliceLogic()
        slice_logic.SetMRMLScene(scene)
        slice_logic.SetMRMLApplicationLogic(app_logic)
        slice_logic.AddSliceNode(name)
        slice_logics.AddItem(slice_logic)
    app_logic.SetSliceLogics(slice_logics)
    logics.update(layout=layout, slice_logics=slice_logics)
    return scene, logics


def group_members(pgid: int) -> list:
    """Live (non-zombie) processes of process group ``pgid``, read from ``/proc`` (Linux)."""
    from pathlib import Path

    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members
