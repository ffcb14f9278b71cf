"""Parameter-node plumbing shared by the three module widgets (desktop Slicer only; no state of its own).

A widget class lists this mixin first, then ``ScriptedLoadableModuleWidget`` and ``VTKObservationMixin``, and
implements ``_onParameterNodeModified`` (enable/disable buttons).  The GUI is bound once with ``connectGui``.
"""
from __future__ import annotations

import vtk


class ParameterNodeWidgetMixin:
    """Construction, UI loading, ``initializeParameterNode`` / ``setParameterNode`` / ``enter`` / ``exit`` and
    scene-close handling; a 100 ms timer polls the logic's background process."""

    def __init__(self, parent=None):
        import qt
        from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
        from slicer.util import VTKObservationMixin

        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = qt.QTimer()

    def setupModuleUi(self, name: str, logic, poll=None) -> None:
        """Load ``Resources/UI/<name>.ui`` into the panel as ``self.ui``, set the logic, observe scene close and
        make the timer call ``poll`` (default ``logic.poll``) every 100 ms while it runs."""
        import slicer
        from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{name}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic
        self.observeSceneClose(slicer.mrmlScene)
        self._timer.setInterval(100)
        self._timer.connect("timeout()", poll or logic.poll)

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
