"""INFANiTERegistration: thick-slice fetal stacks → template space, reviewed and corrected by eye.

The module wires a widget to :mod:`INFANiTERegistrationLib` (MRML-level, tested with slicer-core) and to the core
package ``infanite`` (run as ``python -m infanite register`` in a background process).
"""
import pathlib
from typing import Annotated, Union

import qt
import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from INFANiTECommonLib.logic import BackgroundProcessLogicMixin, given_path
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
    maskVolume: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]   # a segmentation: drawn
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
    errorMessage = "INFANiTE registration failed."

    def __init__(self, parent=None):
        ParameterNodeWidgetMixin.__init__(self, parent)
        self._shortcuts = []

    def setup(self):
        self.setupModuleUi("INFANiTERegistration", INFANiTERegistrationLogic())
        logic, background = self.logic, self.startInBackground
        for button, handler in (
                (self.ui.addStackButton, self.onAddStack),
                (self.ui.registerButton, lambda: background(logic.startRegistration, self.onProgress,
                                                            self.onRegistrationFinished)),
                (self.ui.cancelButton, logic.cancel),
                (self.ui.openReviewButton, self.onOpenReview),
                (self.ui.getTemplatesButton, self.onGetTemplates),
                (self.ui.refineButton, lambda: background(logic.startRefine, self.onProgress, self._finish(
                    logic.finishRefine))),
                (self.ui.acceptButton, lambda: background(logic.startAccept, self.onProgress, self._finish(
                    logic.finishAccept, then=lambda: self.onStep(1)))),
                (self.ui.acceptAllButton, lambda: background(logic.startAcceptAll, self.onProgress, self._finish(
                    logic.finishAccept))),
                (self.ui.previousButton, lambda: self.onStep(-1)),
                (self.ui.nextButton, lambda: self.onStep(1))):
            button.connect("clicked(bool)", lambda _=False, h=handler: self._run(h))
        self.ui.adjustButton.connect("toggled(bool)", lambda on: self._run(
            lambda: logic.setAdjust(logic.getParameterNode(), on)))
        self.ui.reviewTableView.connect("selectionChanged()", lambda: self._run(self.onTableSelection))
        for keys, step in (("Ctrl+]", 1), ("Ctrl+[", -1)):          # active only while this module is shown
            shortcut = qt.QShortcut(qt.QKeySequence(keys), slicer.util.mainWindow())
            shortcut.setEnabled(False)
            shortcut.connect("activated()", lambda s=step: self._run(lambda: self.onStep(s)))
            self._shortcuts.append(shortcut)
        self.initializeParameterNode()

    def enter(self):
        ParameterNodeWidgetMixin.enter(self)
        for shortcut in self._shortcuts:
            shortcut.setEnabled(True)

    def exit(self):
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
        ParameterNodeWidgetMixin.exit(self)

    def cleanup(self):
        ParameterNodeWidgetMixin.cleanup(self)
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []

    def _finish(self, finish, then=None):
        """An ``onFinished`` callback: ``finish(parameterNode, returncode, cancelled, lastLines)``, then ``then()``
        after a success."""
        def finished(returncode, cancelled, lines):
            finish(self.logic.getParameterNode(), returncode, cancelled, lines)
            if then is not None and returncode == 0 and not cancelled:
                then()
        return finished

    def _onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        running = self.logic.isRunning()
        haveInput = bool(p and (given_path(p.manifestPath) or p.inputStacks))
        self.ui.registerButton.enabled = bool(haveInput and not running)
        self.ui.getTemplatesButton.enabled = not running
        self.ui.cancelButton.enabled = running
        reviewing = self.logic.review is not None
        if reviewing and p is not None:
            from INFANiTERegistrationLib import set_foreground_opacity

            set_foreground_opacity(slicer.mrmlScene, p.foregroundOpacity)
        for button in (self.ui.refineButton, self.ui.acceptButton, self.ui.acceptAllButton, self.ui.adjustButton,
                       self.ui.previousButton, self.ui.nextButton):
            button.enabled = reviewing and not running

    def onProgress(self, event):
        self.ui.progressBar.setMaximum(max(1, int(event.get("total") or 1)))
        self.ui.progressBar.setValue(int(event.get("step") or 0))
        eta = event.get("eta_s")
        self.logic.getParameterNode().status = f"{event.get('message', '')}" + (
            f" (about {eta:.0f} s left)" if eta else "")

    def onRegistrationFinished(self, returncode, cancelled, lines):
        self.logic.finishRegistration(self.logic.getParameterNode(), returncode, cancelled, lines)
        self.onOpenReview()

    def onOpenReview(self):
        review = self.logic.openReview(self.logic.getParameterNode())
        self.ui.reviewTableView.setMRMLTableNode(review.table)
        self.onStep(0)
        self._onParameterNodeModified()

    def onAddStack(self):
        """Add the selected stack; a stack with no brain mask (and no labels) gets the offer to draw one first."""
        p = self.logic.getParameterNode()
        if p.t2Volume is not None and p.maskVolume is None and p.segVolume is None:
            if slicer.util.confirmOkCancelDisplay(
                    f"{p.t2Volume.GetName()} has no brain mask. Draw one now in the Segment Editor (a segmentation "
                    f"on this stack's grid is created and selected as its mask), then come back here and add the "
                    f"stack?", "INFANiTE: brain mask needed"):
                p.maskVolume = self.logic.newMaskSegmentation(p.t2Volume)
                slicer.util.selectModule("SegmentEditor")
            return
        self.logic.addInputStack(p)

    def onGetTemplates(self):
        from infanite.reference.download import LICENCE_TEXT

        if slicer.util.confirmOkCancelDisplay(LICENCE_TEXT, "CRL fetal atlas: licence"):
            self.startInBackground(self.logic.downloadTemplates, self.onProgress,
                                   self._finish(self.logic.finishDownload))

    def onTableSelection(self):
        view = self.ui.reviewTableView               # whole rows, one at a time (.ui: selectionBehavior, -Mode)
        rows = view.selectionModel().selectedRows() if self.logic.review is not None else []
        if rows:                                      # view row -> table row (the header is the column names)
            row = view.sortFilterProxyModel().mapToSource(rows[0]).row()
            self.logic.selectStack(self.logic.getParameterNode(), self.logic.review.stack_at_row(row))

    def onStep(self, step):
        if self.logic.review is None:
            return
        self.ui.adjustButton.checked = False          # handles off on the stack being left, before moving
        self.logic.step(self.logic.getParameterNode(), step)


class INFANiTERegistrationLogic(BackgroundProcessLogicMixin, ScriptedLoadableModuleLogic):
    """GUI-free logic: every method takes the parameter node and values; MRML work is delegated to the Lib; long
    work (registration, refine, accept, template download) runs in a background process (``startProcess``)."""

    def __init__(self, processFactory=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.processFactory = processFactory
        self.process = None
        self.review = None

    def getParameterNode(self):
        return INFANiTERegistrationParameterNode(super().getParameterNode())

    def newMaskSegmentation(self, t2Volume):
        from INFANiTERegistrationLib import new_mask_segmentation

        return new_mask_segmentation(slicer.mrmlScene, t2Volume)

    def addInputStack(self, p):
        from INFANiTERegistrationLib import StackEntry

        entry = StackEntry.from_nodes(p.t2Volume, p.maskVolume, p.segVolume, p.gaWeeks)
        p.inputStacks = list(p.inputStacks) + [entry.to_parameter()]

    def manifest(self, p):
        """The cohort TSV to register: the given one, or one written from the stacks added as nodes."""
        from INFANiTERegistrationLib import StackEntry, manifest_from_nodes

        if given_path(p.manifestPath):
            return p.manifestPath
        stacks = [StackEntry.from_parameter(text).stack_input(slicer.mrmlScene) for text in p.inputStacks]
        return manifest_from_nodes(stacks, self._output(p))

    @staticmethod
    def _output(p):
        if not given_path(p.outputPath):
            raise ValueError("choose an output folder")
        return pathlib.Path(p.outputPath)

    @staticmethod
    def _failed(what, returncode, lines):
        return RuntimeError(f"{what} failed (exit status {returncode}):\n" + "\n".join(list(lines)[-10:]))

    def startRegistration(self, p, onProgress=None, onFinished=None):
        from INFANiTECommonLib.dependencies import ensure_dependencies
        from INFANiTERegistrationLib import registration_command

        ensure_dependencies(need_torch=True)
        if not given_path(p.templatesPath):
            raise ValueError("choose the template folder (the CRL atlas: 'Get CRL templates' downloads it)")
        command = registration_command(self.manifest(p), p.templatesPath, self._output(p) / "search",
                                       spacing_mm=p.spacingMm or None, jobs=p.jobs)
        p.status = "registering…"
        return self.startProcess(command, onProgress, onFinished)

    def finishRegistration(self, p, returncode, cancelled, lines=()):
        if cancelled:
            p.status = "registration cancelled; Register again resumes it"
            raise RuntimeError(p.status)
        if returncode != 0:
            p.status = "registration failed"
            raise self._failed("'infanite register'", returncode, lines)
        p.status = "registered: review the stacks"

    def downloadTemplates(self, p, onProgress=None, onFinished=None):
        from INFANiTECommonLib.process import python_command

        folder = pathlib.Path(p.templatesPath) if given_path(p.templatesPath) else \
            pathlib.Path(slicer.app.cachePath) / "INFANiTE" / "crl-templates"
        p.templatesPath = folder
        p.status = f"downloading the CRL templates into {folder}…"
        command = python_command(["get-templates", "--out", str(folder), "--accept-licence", "--progress-json", "-"])
        return self.startProcess(command, onProgress, onFinished)

    def finishDownload(self, p, returncode, cancelled, lines=()):
        if cancelled:
            p.status = "template download cancelled; Get CRL templates again resumes it"
        elif returncode != 0:
            p.status = "template download failed"
            raise self._failed("'infanite get-templates'", returncode, lines)
        else:
            p.status = f"CRL templates ready in {p.templatesPath}"

    def openReview(self, p):
        from infanite.registration.register import RegisterOptions
        from INFANiTERegistrationLib import RegistrationReview

        if self.review is not None:
            self.review.remove_nodes()
        options = RegisterOptions(spacing_mm=p.spacingMm or None, jobs=p.jobs)
        self.review = RegistrationReview(slicer.mrmlScene, self.manifest(p), p.templatesPath,
                                         self._output(p) / "search", options)
        self.review.build_transform_nodes()
        self.review.update_table()
        return self.review

    def selectStack(self, p, stackId):
        p.currentStack = stackId
        return self.showStack(p)

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

    def setAdjust(self, p, on):
        if self.review is not None and p.currentStack:
            self.review.set_adjust(p.currentStack, on)

    def startRefine(self, p, onProgress=None, onFinished=None):
        """"Refine from here": the fine registration of the current stack from its current pose, in the
        background; :meth:`finishRefine` applies it."""
        command = self.review.refine_command(p.currentStack, self._output(p) / "refine")
        p.status = f"{p.currentStack}: refining from the current pose…"
        return self.startProcess(command, onProgress, onFinished)

    def finishRefine(self, p, returncode, cancelled, lines=()):
        if cancelled:
            p.status = f"{p.currentStack}: refinement cancelled (pose unchanged)"
            return None
        if returncode != 0:
            raise self._failed("the refinement", returncode, lines)
        qc = self.review.finish_refine(p.currentStack, self._output(p) / "refine")
        p.status = f"{p.currentStack}: refined, NMI {qc['nmi']:.4f}"
        return qc

    def startAccept(self, p, onProgress=None, onFinished=None):
        """Accept the current stack: write it aligned, as ``infanite register --fixed-transforms``, in the
        background; :meth:`finishAccept` records it."""
        return self.startAcceptAll(p, onProgress, onFinished, stackIds=[p.currentStack])

    def startAcceptAll(self, p, onProgress=None, onFinished=None, stackIds=None):
        """Accept ``stackIds`` (default: every stack) in a background process (``infanite register
        --fixed-transforms``: the same files as the command line)."""
        command = self.review.accept_command(stackIds or self.review.stack_ids, self._output(p))
        p.status = "writing the accepted stacks…"
        return self.startProcess(command, onProgress, onFinished)

    def finishAccept(self, p, returncode=0, cancelled=False, lines=()):
        missing = self.review.finish_accept(self._output(p))
        p.status = f"accepted {len(self.review.accepted)} stack(s) → {self._output(p) / 'registered.tsv'}" + (
            f"; not written: {', '.join(missing)}" if missing else "")
        if returncode != 0 and not cancelled:
            raise self._failed("writing the accepted stacks", returncode, lines)
        return missing


class INFANiTERegistrationTest(ScriptedLoadableModuleTest):
    """End to end on a tiny phantom cohort (no download): register, refine and accept in background processes."""

    def setUp(self):
        from INFANiTECommonLib.dependencies import ensure_dependencies

        ensure_dependencies()
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_register_review_accept()

    def _wait(self, process):
        self.assertEqual(process.wait(timeout=600, on_idle=slicer.app.processEvents), 0,
                         "\n".join(process.last_lines()))

    def test_register_review_accept(self):
        import numpy as np
        from infanite.simulation.stacks import tiny_phantom_cohort

        work = pathlib.Path(slicer.util.tempDirectory())
        cohort = tiny_phantom_cohort(work, weeks=(27, 28), n_subjects=1, seed=3)
        logic = INFANiTERegistrationLogic()
        p = logic.getParameterNode()
        p.manifestPath = cohort["manifest"]
        p.templatesPath = cohort["templates"]
        p.outputPath = work / "out"
        p.spacingMm = 1.6
        self._wait(logic.startRegistration(p))
        logic.finishRegistration(p, logic.process.returncode, False)
        review = logic.openReview(p)
        self.assertEqual(review.table.GetNumberOfRows(), 2)
        logic.step(p, 0)
        nodes = review.nodes(p.currentStack)
        self.assertEqual(nodes.volume.GetParentTransformNode().GetID(), nodes.transform.GetID())
        self._wait(logic.startRefine(p))
        self.assertTrue(np.isfinite(logic.finishRefine(p, 0, False)["nmi"]))
        self._wait(logic.startAccept(p))
        self.assertEqual(logic.finishAccept(p), [])
        self._wait(logic.startAcceptAll(p))
        self.assertEqual(logic.finishAccept(p), [])
        from infanite.io.layout import REGISTERED

        self.assertTrue((work / "out" / REGISTERED).is_file())
        self.assertTrue(np.isfinite(review.rows()[0].nmi))
        self.delayDisplay("INFANiTERegistration test passed")
