"""Parameter-node plumbing shared by the three module widgets (desktop Slicer only; no state of its own).

A widget class lists this mixin first, then ``ScriptedLoadableModuleWidget`` and ``VTKObservationMixin``, and
implements ``_onParameterNodeModified`` (enable/disable buttons).  The GUI is bound once with ``connectGui``.

Lifecycle, as Slicer's scripted-module template (``Utilities/Templates/Modules/Scripted/TemplateKey.py``):
``exit()`` only stops reacting to the parameter node (the node is kept, so a background run that reports progress
while another module is shown keeps writing into it); ``enter()`` first makes sure the core's Python packages are
installed (asking the user), so no button can reach the core without them.
"""
from __future__ import annotations

import vtk


class ParameterNodeWidgetMixin:
    """Construction, UI loading, ``initializeParameterNode`` / ``setParameterNode`` / ``enter`` / ``exit`` and
    scene-close handling; a 100 ms timer polls the logic's background process."""

    #: the first line of the error dialog of a failed action
    errorMessage = "INFANiTE:"

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
        self._timer.connect("timeout()", poll or self.pollProcess)

    def observeSceneClose(self, scene) -> None:
        self.addObserver(scene, scene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(scene, scene.EndCloseEvent, self.onSceneEndClose)

    # -- dependencies and errors ------------------------------------------------------------------------------
    def ensureDependencies(self, needTorch: bool = False) -> None:
        """Install the core's Python packages if missing (the user is asked first); ``RuntimeError`` if declined."""
        from INFANiTECommonLib.dependencies import ensure_dependencies

        ensure_dependencies(need_torch=needTorch)

    def _run(self, handler, message: str | None = None, waitCursor: bool = True) -> None:
        """Every GUI action goes through here (a static check makes every signal connection of a widget call it):
        the core's packages are checked (installed after confirmation), then ``handler()`` runs (with a wait
        cursor unless ``waitCursor`` is False, e.g. for a slider), and an exception is shown to the user (not
        raised) after ``message`` (default :attr:`errorMessage`)."""
        import slicer

        with slicer.util.tryWithErrorDisplay(message or self.errorMessage, waitCursor=waitCursor):
            self.ensureDependencies()
            handler()

    # -- lifecycle --------------------------------------------------------------------------------------------
    def enter(self) -> None:
        """The module is shown: its packages first (asked once; declined, every action asks again), then the
        parameter node."""
        self._run(lambda: None, "INFANiTE needs its Python packages:")
        self.initializeParameterNode()

    def exit(self) -> None:
        """Stop reacting to the parameter node; keep it (a running process still reports into it)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def cleanup(self) -> None:
        """Slicer exits or the module is reloaded: stop the background process (its whole tree) and observers."""
        self._timer.stop()
        self.logic.shutdown()
        self.removeObservers()

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

    # -- background processes ---------------------------------------------------------------------------------
    def startInBackground(self, start, onProgress=None, onFinished=None) -> None:
        """Run ``start(parameterNode, onProgress=…, onFinished=…)`` (a logic method that starts a background
        process), poll it with the timer, and update the buttons at once (Cancel is enabled from the start).
        When the process ends, the timer stops, the buttons are updated and ``onFinished(returncode, cancelled,
        lastLines)`` runs (its exception shown to the user)."""
        def finished(returncode, cancelled, lastLines):
            self._timer.stop()
            try:
                if onFinished is not None:
                    self._run(lambda: onFinished(returncode, cancelled, lastLines))
            finally:
                self._onParameterNodeModified()

        start(self.logic.getParameterNode(), onProgress=onProgress, onFinished=finished)
        self._timer.start()
        self._onParameterNodeModified()

    def pollProcess(self) -> None:
        """The timer's default slot: deliver the process' output; stop polling once it has ended."""
        if not self.logic.poll():
            self._timer.stop()
            self._onParameterNodeModified()
