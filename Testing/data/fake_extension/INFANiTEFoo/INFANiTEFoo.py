"""Fake module."""
import logging
from typing import Annotated, Optional

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

from INFANiTECommonLib.widget import ParameterNodeWidgetMixin
from INFANiTEFooLib import helper


class INFANiTEFoo(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Foo"
        self.parent.categories = ["INFANiTE"]
        self.parent.contributors = ["Someone"]
        self.parent.helpText = "Help."


@parameterNodeWrapper
class INFANiTEFooParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    threshold: Annotated[float, WithinRange(0.0, 10.0)] = 5.0
    outputFolder: str = ""
    label: Optional[str] = None


class INFANiTEFooWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = qt.QTimer()

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/INFANiTEFoo.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = INFANiTEFooLogic()
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.inputSelector.currentNodeChanged.connect(self.onApply)
        self.ui.progressBar.setFormat("%p%")
        self.ui.logText.appendPlainText("ready")
        self.ui.thresholdSlider.value = 3.0
        self.ui.verticalLayout.addStretch(1)
        self.initializeParameterNode()

    def onApply(self, *args):
        self.logic.run(self._parameterNode.label, self.ui.outputPath.currentPath)


class INFANiTEFooLogic(ScriptedLoadableModuleLogic):
    def getParameterNode(self):
        return INFANiTEFooParameterNode(super().getParameterNode())

    def run(self, label, folder):
        helper.run(label, folder)


class INFANiTEFooTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_foo()

    def test_foo(self):
        self.assertEqual(1, 1)
