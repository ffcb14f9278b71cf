"""Parameter-node plumbing shared by the three module widgets (desktop Slicer only; no state of its own).

A widget class mixes this in after ``ScriptedLoadableModuleWidget`` and ``VTKObservationMixin`` and implements
``_onParameterNodeModified`` (enable/disable buttons).  The GUI is bound once with ``connectGui``.
"""
from __future__ import annotations

import vtk


class ParameterNodeWidgetMixin:
    """``initializeParameterNode`` / ``setParameterNode`` / ``enter`` / ``exit`` and scene-close handling."""

    def observeSceneClose(self, scene) -> None:
        self.addObserver(scene, scene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(scene, scene.EndCloseEvent, self.onSceneEndClose)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()
