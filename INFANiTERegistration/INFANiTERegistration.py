"""INFANiTERegistration: thick-slice fetal stacks → template space, reviewed and corrected by eye.

The module wires a widget to :mod:`INFANiTERegistrationLib` (MRML-level, tested with slicer-core) and to the core
package ``infanite`` (run as ``python -m infanite register`` in a background process).
"""
import logging
import pathlib
from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from INFANiTECommonLib.logic import BackgroundProcessLogicMixin
from INFANiTECommonLib.widget import ParameterNodeWidgetMixin


class INFANiTERegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "INFANiTE Registration"
        self.parent.categories = ["INFANiTE"]
        self.parent.contributors = ["INFANiTE developers"]
        self.parent.helpText = ("Align thick-slice fetal T2 stacks to an age-matched template (24 orientations + "
                                "rigid NMI), review them worst first, correct by hand, refine and accept.")
        self.parent.acknowledgementText = ("Method: INFANiTE (implicit neural representation fetal atlases). "
                                           "Sample stacks: MIAL super-resolution toolkit (CC0).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    from INFANiTECommonLib.sampledata import register_sample_data

    folder = pathlib.Path(__file__).parent / "Resources" / "SampleData"
    if folder.is_dir():
        register_sample_data(folder)


@parameterNodeWrapper
class INFANiTERegistrationParameterNode:
    manifestPath: pathlib.Path
    t2Volume: vtkMRMLScalarVolumeNode
    maskVolume: vtkMRMLLabelMapVolumeNode
    segVolume: vtkMRMLLabelMapVolumeNode
    gaWeeks: Annotated[float, WithinRange(0.0, 45.0)] = 0.0
    inputStacks: list[str]
    templatesPath: pathlib.Path
    outputPath: pathlib.Path
    spacingMm: Annotated[float, WithinRange(0.0, 5.0)] = 0.8
    jobs: Annotated[int, WithinRange(1, 64)] = 1
    foregroundOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    currentStack: str = ""
    status: str = ""


class INFANiTERegistrationWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ParameterNodeWidgetMixin.__init__(self, parent)
        self._shortcuts = []

    def setup(self):
        self.setupModuleUi("INFANiTERegistration", INFANiTERegistrationLogic())
        for button, handler in ((self.ui.addStackButton, self.onAddStack), (self.ui.registerButton, self.onRegister),
                                (self.ui.cancelButton, self.logic.cancel), (self.ui.openReviewButton, self.onOpenReview),
                                (self.ui.getTemplatesButton, self.onGetTemplates),
                                (self.ui.refineButton, self.onRefine), (self.ui.acceptButton, self.onAccept),
                                (self.ui.acceptAllButton, self.onAcceptAll),
                                (self.ui.previousButton, lambda: self.onStep(-1)),
                                (self.ui.nextButton, lambda: self.onStep(1))):
            button.connect("clicked(bool)", lambda _=False, h=handler: self._run(h))
        self.ui.adjustButton.connect("toggled(bool)", lambda on: self._run(lambda: self.logic.setAdjust(on)))
        self.ui.reviewTableView.connect("selectionChanged()", self.onTableSelection)
        for keys, step in (("Ctrl+]", 1), ("Ctrl+[", -1)):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda s=step: self._run(lambda: self.onStep(s)))
            self._shortcuts.append(shortcut)
        self.initializeParameterNode()

    def cleanup(self):
        self._timer.stop()
        self.logic.cancel()
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self.removeObservers()

    def _run(self, handler):
        with slicer.util.tryWithErrorDisplay("INFANiTE registration failed.", waitCursor=True):
            handler()

    def _onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        running = self.logic.isRunning()
        haveInput = bool(p and (str(p.manifestPath) not in ("", ".") or p.inputStacks))
        self.ui.registerButton.enabled = bool(p and haveInput and not running)
        self.ui.cancelButton.enabled = running
        reviewing = self.logic.review is not None
        if reviewing and p is not None:
            from INFANiTERegistrationLib import set_foreground_opacity

            set_foreground_opacity(slicer.mrmlScene, p.foregroundOpacity)
        for button in (self.ui.refineButton, self.ui.acceptButton, self.ui.acceptAllButton, self.ui.adjustButton,
                       self.ui.previousButton, self.ui.nextButton):
            button.enabled = reviewing and not running

    def onAddStack(self):
        self.logic.addInputStack(self._parameterNode)

    def onRegister(self):
        self.logic.startRegistration(self._parameterNode, onProgress=self.onProgress,
                                     onFinished=lambda *a: self._run(self.onRegistrationFinished))
        self._timer.start()
        self._onParameterNodeModified()

    def onProgress(self, event):
        self.ui.progressBar.setMaximum(max(1, int(event.get("total") or 1)))
        self.ui.progressBar.setValue(int(event.get("step") or 0))
        eta = event.get("eta_s")
        self._parameterNode.status = f"{event.get('message', '')}" + (f" (about {eta:.0f} s left)" if eta else "")

    def onRegistrationFinished(self):
        self._timer.stop()
        self._onParameterNodeModified()
        if self.logic.process is not None and self.logic.process.returncode == 0:
            self.onOpenReview()

    def onOpenReview(self):
        review = self.logic.openReview(self._parameterNode)
        self.ui.reviewTableView.setMRMLTableNode(review.table)
        self.onStep(0)
        self._onParameterNodeModified()

    def onGetTemplates(self):
        from infanite.template_download import LICENCE_TEXT

        if slicer.util.confirmOkCancelDisplay(LICENCE_TEXT, "CRL fetal atlas: licence"):
            self.logic.downloadTemplates(self._parameterNode, onProgress=self.onProgress)
            self._timer.start()

    def onTableSelection(self):
        rows = self.ui.reviewTableView.selectedMRMLTableRows() if self.logic.review else []
        if rows:
            self._parameterNode.currentStack = self.logic.review.stack_ids[rows[0]]
            self._run(lambda: self.logic.showStack(self._parameterNode))

    def onStep(self, step):
        self.logic.step(self._parameterNode, step)
        self.ui.adjustButton.checked = False

    def onRefine(self):
        self.logic.refineCurrent(self._parameterNode)

    def onAccept(self):
        self.logic.accept(self._parameterNode, [self._parameterNode.currentStack])
        self.onStep(1)

    def onAcceptAll(self):
        self.logic.acceptAll(self._parameterNode, onProgress=self.onProgress,
                             onFinished=lambda *a: self._run(self.onAcceptAllFinished))
        self._timer.start()
        self._onParameterNodeModified()

    def onAcceptAllFinished(self):
        self._timer.stop()
        self.logic.finishAcceptAll(self._parameterNode)
        self._onParameterNodeModified()


class INFANiTERegistrationLogic(BackgroundProcessLogicMixin, ScriptedLoadableModuleLogic):
    """GUI-free logic: every method takes the parameter node and values; MRML work is delegated to the Lib."""

    def __init__(self, processFactory=None):
        ScriptedLoadableModuleLogic.__init__(self)
        from INFANiTECommonLib.process import BackgroundProcess

        self.processFactory = processFactory or BackgroundProcess
        self.process = None
        self.review = None

    def getParameterNode(self):
        return INFANiTERegistrationParameterNode(super().getParameterNode())

    def addInputStack(self, p):
        if p.t2Volume is None or (p.maskVolume is None and p.segVolume is None):
            raise ValueError("select a T2 stack and its brain mask or tissue segmentation first")
        ids = [p.t2Volume.GetID(), p.maskVolume.GetID() if p.maskVolume else "",
               p.segVolume.GetID() if p.segVolume else "", f"{p.gaWeeks:g}" if p.gaWeeks > 0 else ""]
        p.inputStacks = list(p.inputStacks) + ["|".join(ids)]

    def manifest(self, p):
        """The cohort TSV to register: the given one, or one written from the stacks added as nodes."""
        from INFANiTERegistrationLib import StackInput, manifest_from_nodes

        if str(p.manifestPath) not in ("", "."):
            return p.manifestPath
        node = slicer.mrmlScene.GetNodeByID
        stacks = []
        for spec in p.inputStacks:
            t2, mask, seg, ga = (spec.split("|") + ["", "", "", ""])[:4]
            stacks.append(StackInput(node(t2), node(mask) if mask else None, node(seg) if seg else None,
                                     float(ga) if ga else None))
        return manifest_from_nodes(stacks, self._output(p))

    @staticmethod
    def _output(p):
        if str(p.outputPath) in ("", "."):
            raise ValueError("choose an output folder")
        return pathlib.Path(p.outputPath)

    def startRegistration(self, p, onProgress=None, onFinished=None):
        from INFANiTECommonLib.dependencies import ensure_dependencies
        from INFANiTECommonLib.process import infanite_env
        from INFANiTERegistrationLib import registration_command

        ensure_dependencies()
        if str(p.templatesPath) in ("", "."):
            raise ValueError("choose the template folder (the CRL atlas: 'Get CRL templates' downloads it)")
        command = registration_command(self.manifest(p), p.templatesPath, self._output(p) / "search",
                                       spacing_mm=p.spacingMm or None, jobs=p.jobs)
        self.process = self.processFactory(command, env=infanite_env(), on_progress=onProgress,
                                           on_log=logging.info, on_finished=onFinished).start()
        p.status = "registering…"
        return self.process

    def downloadTemplates(self, p, onProgress=None, onFinished=None):
        from INFANiTECommonLib.process import infanite_env, python_command

        folder = pathlib.Path(p.templatesPath) if str(p.templatesPath) not in ("", ".") else \
            pathlib.Path(slicer.app.cachePath) / "INFANiTE" / "crl-templates"
        p.templatesPath = folder
        command = python_command(["get-templates", "--out", str(folder), "--accept-licence", "--progress-json", "-"])
        self.process = self.processFactory(command, env=infanite_env(), on_progress=onProgress,
                                           on_log=logging.info, on_finished=onFinished).start()
        return self.process

    def openReview(self, p):
        from infanite.register import RegisterOptions
        from INFANiTERegistrationLib import RegistrationReview

        if self.review is not None:
            self.review.remove_nodes()
        options = RegisterOptions(spacing_mm=p.spacingMm or None, jobs=p.jobs)
        self.review = RegistrationReview(slicer.mrmlScene, self.manifest(p), p.templatesPath,
                                         self._output(p) / "search", options)
        self.review.build_transform_nodes()
        self.review.update_table()
        return self.review

    def showStack(self, p):
        from INFANiTERegistrationLib import centre_slice_views

        nodes = self.review.show(p.currentStack, p.foregroundOpacity)
        slicer.util.resetSliceViews()                    # fit the field of view to the template …
        centre_slice_views(slicer.mrmlScene, self.review.brain_centre(p.currentStack))   # … through the brain
        return nodes

    def step(self, p, step):
        p.currentStack = self.review.neighbour(p.currentStack or None, step) if step else \
            (p.currentStack if p.currentStack in self.review.stack_ids else self.review.stack_ids[0])
        return self.showStack(p)

    def setAdjust(self, on):
        p = self.getParameterNode()
        if self.review is not None and p.currentStack:
            self.review.set_adjust(p.currentStack, on)

    def refineCurrent(self, p):
        result = self.review.refine(p.currentStack)
        p.status = f"{p.currentStack}: refined, NMI {result.nmi:.4f}"
        return result

    def accept(self, p, stackIds):
        """Accept a few stacks in this process (resampling only: about a second each)."""
        result = self.review.accept(stackIds, self._output(p))
        p.status = f"accepted {len(self.review.accepted)} stack(s) → {self._output(p) / 'registered.tsv'}" + (
            f"; failed: {', '.join(result['failed'])}" if result["failed"] else "")
        return result

    def acceptAll(self, p, onProgress=None, onFinished=None):
        """Accept every stack in a background process (``infanite register --fixed-transforms``)."""
        from INFANiTECommonLib.process import infanite_env

        command = self.review.accept_command(self.review.stack_ids, self._output(p))
        self.process = self.processFactory(command, env=infanite_env(), on_progress=onProgress,
                                           on_log=logging.info, on_finished=onFinished).start()
        p.status = "writing the accepted stacks…"
        return self.process

    def finishAcceptAll(self, p):
        missing = self.review.finish_accept(self._output(p))
        p.status = f"accepted {len(self.review.accepted)} stack(s) → {self._output(p) / 'registered.tsv'}" + (
            f"; not written: {', '.join(missing)}" if missing else "")
        return missing


class INFANiTERegistrationTest(ScriptedLoadableModuleTest):
    """End to end on a tiny phantom cohort (no download): register in a background process, review, refine, accept."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_register_review_accept()

    def test_register_review_accept(self):
        import numpy as np
        from infanite.simulate import tiny_phantom_cohort

        work = pathlib.Path(slicer.util.tempDirectory())
        cohort = tiny_phantom_cohort(work, weeks=(27, 28), n_subjects=1, seed=3)
        logic = INFANiTERegistrationLogic()
        p = logic.getParameterNode()
        p.manifestPath = cohort["manifest"]
        p.templatesPath = cohort["templates"]
        p.outputPath = work / "out"
        p.spacingMm = 1.6
        logic.startRegistration(p).wait(timeout=600)
        self.assertEqual(logic.process.returncode, 0, "\n".join(logic.process.last_lines()))
        review = logic.openReview(p)
        self.assertEqual(review.table.GetNumberOfRows(), 2)
        logic.step(p, 0)
        nodes = review.nodes(p.currentStack)
        self.assertEqual(nodes.volume.GetParentTransformNode().GetID(), nodes.transform.GetID())
        logic.refineCurrent(p)
        logic.accept(p, [p.currentStack])
        logic.acceptAll(p).wait(timeout=600)
        self.assertEqual(logic.finishAcceptAll(p), [])
        self.assertTrue((work / "out" / "registered.tsv").is_file())
        self.assertTrue(np.isfinite(review.rows()[0].nmi))
        self.delayDisplay("INFANiTERegistration test passed")
