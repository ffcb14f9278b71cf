"""INFANiTETraining: train the INFANiTE implicit neural representation on a registered cohort, in the background.

The widget binds the hyper-parameters to a parameter node; the logic wraps :class:`INFANiTETrainingLib.
TrainingController`, which runs ``python -m infanite train`` as a separate process (Slicer's own Python or any
environment with CUDA PyTorch), turns its JSON-lines progress into MRML (a loss table and chart) and cancels it
cleanly (checkpoint first, then the whole process tree).
"""
import logging
import pathlib
from typing import Annotated

import slicer
from slicer import vtkMRMLPlotViewNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from INFANiTECommonLib.logic import BackgroundProcessLogicMixin, given_path
from INFANiTECommonLib.widget import ParameterNodeWidgetMixin
from INFANiTETrainingLib import (CANCELLED, CANCELLING, FAILED, FINISHED, IDLE, RUNNING, TrainingController,
                                 TrainingParameters, cohort_table_node, device_detection_command, devices_from_event,
                                 parse_int_list, progress_text)

#: parameter-node field -> :class:`INFANiTETrainingLib.TrainingParameters` field (same meaning and unit)
FORM_FIELDS = {"model": "model", "dataTerm": "data_term", "epochs": "epochs", "nSamples": "n_samples",
               "hiddenSize": "hidden_size", "hiddenLayers": "num_hidden_layers", "latentSize": "latent_channels",
               "wObs": "w_obs", "wInt": "w_int", "lrInr": "lr_inr", "lrLatent": "lr_latent", "seed": "seed",
               "checkpointEvery": "checkpoint_every", "advancedYaml": "advanced_yaml"}


class INFANiTETraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "INFANiTE Training"
        self.parent.categories = ["INFANiTE"]
        self.parent.contributors = ["INFANiTE developers"]
        self.parent.helpText = ("Train the INFANiTE implicit neural representation on a registered cohort "
                                "(registered.tsv) in a background process: progress, ETA, live loss chart, clean "
                                "cancel and resume from the last checkpoint; then open the run in INFANiTE Atlas.")
        self.parent.acknowledgementText = "Method: INFANiTE (implicit neural representation fetal atlases)."


@parameterNodeWrapper
class INFANiTETrainingParameterNode:
    manifestPath: pathlib.Path
    cohortTable: vtkMRMLTableNode
    model: Annotated[str, Choice(["infanite", "template"])] = "infanite"
    dataTerm: Annotated[str, Choice(["exact", "reference"])] = "exact"
    epochs: Annotated[int, WithinRange(1, 100000)] = 5
    nSamples: Annotated[int, WithinRange(1, 10000000)] = 18000
    hiddenSize: Annotated[int, WithinRange(1, 16384)] = 1024
    hiddenLayers: Annotated[int, WithinRange(1, 64)] = 5
    latentSize: Annotated[int, WithinRange(1, 4096)] = 256
    psfSchedule: str = "4, 8, 16"
    wObs: Annotated[float, WithinRange(0.0, 100.0)] = 1.6
    wInt: Annotated[float, WithinRange(0.0, 100.0)] = 0.8
    lrInr: Annotated[float, WithinRange(0.0, 1.0)] = 1e-4
    lrLatent: Annotated[float, WithinRange(0.0, 1.0)] = 5e-4
    seed: Annotated[int, WithinRange(0, 2147483647)] = 42
    maxSteps: Annotated[int, WithinRange(0, 100000000)] = 0
    checkpointEvery: Annotated[int, WithinRange(1, 1000000)] = 500
    advancedYaml: str = ""
    outputPath: pathlib.Path
    device: str = ""
    pythonExecutable: pathlib.Path
    lossPlotView: vtkMRMLPlotViewNode
    status: str = ""


class INFANiTETrainingWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    errorMessage = "INFANiTE training:"

    def setup(self):
        self.setupModuleUi("INFANiTETraining", INFANiTETrainingLogic(), poll=self.onPoll)
        for button, handler in ((self.ui.loadCohortButton, lambda: self.logic.loadCohort(self._parameterNode)),
                                (self.ui.startButton, lambda: self.onStart(resume=False)),
                                (self.ui.resumeButton, lambda: self.onStart(resume=True)),
                                (self.ui.cancelButton, self.logic.cancel),
                                (self.ui.defaultsButton, lambda: self.logic.applyDefaults(self._parameterNode)),
                                (self.ui.openInAtlasButton, lambda: self.logic.openInAtlas(self._parameterNode))):
            button.connect("clicked(bool)", lambda _=False, h=handler: self._run(h))
        self.ui.deviceComboBox.connect("currentTextChanged(QString)", lambda text: self._run(
            lambda: self._setParameter("device", text.strip()), waitCursor=False))
        self.ui.advancedYamlTextEdit.connect("textChanged()", lambda: self._run(lambda: self._setParameter(
            "advancedYaml", self.ui.advancedYamlTextEdit.toPlainText()), waitCursor=False))
        self.initializeParameterNode()

    def enter(self):
        ParameterNodeWidgetMixin.enter(self)
        if self.ui.deviceComboBox.count == 0 and not self.logic.isRunning():   # once, in the background
            self._run(lambda: self.startInBackground(self.logic.detectDevices, self.onDevices))

    def onSceneStartClose(self, caller, event):
        self.logic.cancel()
        ParameterNodeWidgetMixin.onSceneStartClose(self, caller, event)

    def _setParameter(self, name, value):
        if self._parameterNode is not None and getattr(self._parameterNode, name) != value:
            setattr(self._parameterNode, name, value)

    def onDevices(self, event):
        detected = devices_from_event(event)
        if detected is not None:
            self.fillDevices(*detected)

    def fillDevices(self, devices, description):
        p = self.logic.getParameterNode()
        wanted = p.device or devices[0]
        self.ui.deviceComboBox.addItems(devices)
        self.ui.deviceInfoLabel.text = description
        self._setParameter("device", wanted)
        self.ui.deviceComboBox.setCurrentText(wanted)

    def _onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        running = self.logic.isRunning()
        state = self.logic.state()
        haveCohort = bool(p and given_path(p.manifestPath))
        ready = bool(haveCohort and given_path(p.outputPath) and not running)
        self.ui.loadCohortButton.enabled = haveCohort and not running
        self.ui.startButton.enabled = ready
        self.ui.resumeButton.enabled = ready and self.logic.hasCheckpoint(p)
        self.ui.cancelButton.enabled = state == RUNNING
        self.ui.openInAtlasButton.enabled = state == FINISHED
        self.ui.defaultsButton.enabled = not running
        self.ui.settingsCollapsibleButton.enabled = not running
        if p is None:
            return
        if self.ui.cohortTableView.mrmlTableNode() != p.cohortTable:
            self.ui.cohortTableView.setMRMLTableNode(p.cohortTable)
        if self.ui.lossPlotWidget.mrmlPlotViewNode() != p.lossPlotView:
            self.ui.lossPlotWidget.setMRMLPlotViewNode(p.lossPlotView)
        if p.device and self.ui.deviceComboBox.currentText != p.device:
            self.ui.deviceComboBox.setCurrentText(p.device)
        if self.ui.advancedYamlTextEdit.toPlainText() != p.advancedYaml:
            self.ui.advancedYamlTextEdit.setPlainText(p.advancedYaml)

    def onStart(self, resume):
        callbacks = {"onLog": self.onLog, "onProgress": self.onProgress, "onState": self.onState}
        if resume:
            self.logic.resume(self._parameterNode, **callbacks)
        else:
            overwrite = self.logic.hasCheckpoint(self._parameterNode)
            if overwrite and not slicer.util.confirmOkCancelDisplay(
                    "The output folder already holds a trained model. Replace it (its checkpoint, log and "
                    "diagnostics are discarded)? Use Resume to continue it instead.", windowTitle="INFANiTE Training"):
                return
            self.logic.start(self._parameterNode, overwrite=overwrite, **callbacks)
        if not resume:
            self.ui.logTextEdit.clear()
        self.onLog("$ " + " ".join(self.logic.controller.command))
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.format = "starting…"
        self._timer.start()
        self._onParameterNodeModified()

    def onPoll(self):
        if not self.logic.poll():                        # the training run and the device detection
            self._timer.stop()
            self._onParameterNodeModified()

    def onLog(self, line):
        self.ui.logTextEdit.appendPlainText(line)        # the editor keeps the last 2,000 lines (.ui)

    def onProgress(self, event):
        if event.get("stage") != "train":
            return
        self.ui.progressBar.setMaximum(max(1, int(event.get("total") or 1)))
        self.ui.progressBar.setValue(int(event.get("step") or 0))
        self.ui.progressBar.format = progress_text(event)

    def onState(self, state):
        self._onParameterNodeModified()
        if state == FAILED:
            slicer.util.errorDisplay("INFANiTE training failed. Last lines of the training process:\n\n"
                                     + self.logic.lastError())
        elif state == CANCELLED:
            self.ui.progressBar.format = "cancelled"


class INFANiTETrainingLogic(BackgroundProcessLogicMixin, ScriptedLoadableModuleLogic):
    """GUI-free logic: every method takes the parameter node and values; the run is a TrainingController's, whose
    child (like the device detection's) starts through this logic's ``startProcess``."""

    def __init__(self, processFactory=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.processFactory = processFactory
        self.process = None
        self.controller = None
        self.devices = []

    def getParameterNode(self):
        return INFANiTETrainingParameterNode(super().getParameterNode())

    def isRunning(self):
        """True while the training or the device detection runs."""
        return BackgroundProcessLogicMixin.isRunning(self)

    def state(self):
        return self.controller.state if self.controller is not None else IDLE

    def training(self):
        """True while a training run is the logic's process."""
        return self.controller is not None and self.controller.running and self.process is self.controller.process

    def poll(self):
        if self.training():
            return self.controller.poll()             # batches the MRML updates of one poll
        return BackgroundProcessLogicMixin.poll(self)

    def cancel(self):
        if self.training():
            self.controller.cancel()                  # checkpoint first, then the tree
        else:
            BackgroundProcessLogicMixin.cancel(self)

    def shutdown(self):
        """Slicer exits: the training saves a checkpoint if it can within a few seconds, then its tree is killed."""
        if self.training():
            self.controller.shutdown()
        else:
            BackgroundProcessLogicMixin.shutdown(self)

    def detectDevices(self, p, onProgress=None, onFinished=None):
        """``python -m infanite devices`` (with ``p.pythonExecutable`` when set) in a background process: PyTorch
        and CUDA start there, not in Slicer.  Its event reaches ``onProgress`` (see ``devices_from_event``) and
        :attr:`devices` keeps what it found."""
        from INFANiTECommonLib.process import infanite_env

        def found(event):
            detected = devices_from_event(event)
            if detected is not None:
                self.devices = detected[0]
            if onProgress is not None:
                onProgress(event)

        python = given_path(p.pythonExecutable)
        command = device_detection_command(str(python) if python else None)
        env = infanite_env(python=command[0], startup_environment=slicer.util.startupEnvironment)
        return self.startProcess(command, onProgress=found, onFinished=onFinished or (lambda *args: None), env=env)

    def lastError(self):
        return self.controller.parameter_node.GetParameter("LastError") if self.controller is not None else ""

    def hasCheckpoint(self, p):
        output = given_path(p.outputPath) if p is not None else None
        from infanite.io.layout import CHECKPOINT

        return output is not None and (output / CHECKPOINT).is_file()

    @staticmethod
    def _required(value, what):
        if given_path(value) is None:
            raise ValueError(f"choose {what}")
        return given_path(value)

    def _manifest(self, p):
        return self._required(p.manifestPath, "the registered cohort (registered.tsv of INFANiTE Registration)")

    def _output(self, p):
        return self._required(p.outputPath, "a run folder")

    def device(self, p):
        """The chosen device; before the detection has answered, the best one it found, else the CPU."""
        return p.device.strip() or (self.devices[0] if self.devices else "cpu")

    def loadCohort(self, p):
        """Fill ``p.cohortTable`` from ``registered.tsv``, one row per stack with its problems; returns the summary."""
        node, summary = cohort_table_node(slicer.mrmlScene, self._manifest(p), node=p.cohortTable)
        p.cohortTable = node
        p.status = f"cohort: {summary.message()}"
        return summary

    def trainingParameters(self, p):
        values = {name: getattr(p, field) for field, name in FORM_FIELDS.items()}
        return TrainingParameters(psf_samples=parse_int_list(p.psfSchedule), max_steps=p.maxSteps or None, **values)

    def applyDefaults(self, p):
        """The settings of ``infanite run`` for the selected device and, once chosen, the cohort (CPU-sized on a
        CPU, with the template model where the cohort can train it; the paper's on a GPU)."""
        defaults = TrainingParameters.for_device(self.device(p), given_path(p.manifestPath))
        with slicer.util.NodeModify(p):
            for field, name in FORM_FIELDS.items():
                setattr(p, field, getattr(defaults, name))
            p.psfSchedule = ", ".join(str(v) for v in defaults.psf_samples)
            p.maxSteps = defaults.max_steps or 0
            p.status = f"defaults for {self.device(p)}"

    def _controllerForRun(self):
        """The controller (one run at a time); a new one after a scene close removed its nodes."""
        stale = self.controller is not None and not self.controller.running and \
            not slicer.mrmlScene.IsNodePresent(self.controller.parameter_node)
        if self.controller is None or stale:
            self.controller = TrainingController(slicer.mrmlScene, start_process=self.startProcess,
                                                 startup_environment=slicer.util.startupEnvironment)
        return self.controller

    def start(self, p, overwrite=False, **callbacks):
        """Launch ``python -m infanite train`` with the form's settings; returns the background process.  A folder
        that holds a model is refused (``ValueError``) unless ``overwrite``."""
        return self._launch(p, False, overwrite=overwrite, **callbacks)

    def resume(self, p, **callbacks):
        """Continue the run in ``p.outputPath`` from its last checkpoint, with the run's own settings."""
        return self._launch(p, True, **callbacks)

    def _launch(self, p, resume, overwrite=False, onLog=None, onProgress=None, onState=None):
        """``onLog(line)``, ``onProgress(event)``, ``onState(state)`` are called from :meth:`poll`."""
        from INFANiTECommonLib.dependencies import ensure_dependencies

        python = given_path(p.pythonExecutable)
        ensure_dependencies(need_torch=python is None)   # another environment brings its own PyTorch
        controller = self._controllerForRun()
        if controller.running:
            raise RuntimeError("a training run is already going; cancel it first")
        controller.on_log = onLog or logging.info
        controller.on_progress = onProgress
        controller.on_state = lambda state: self._onState(p, state, onState)
        device = self.device(p)
        process = controller.start(self._manifest(p), self._output(p), None if resume else self.trainingParameters(p),
                                   device=device, python=str(python) if python else None, resume=resume,
                                   overwrite=overwrite)
        p.lossPlotView = controller.plot.view_node(p.lossPlotView)      # not replaced by other modules' charts
        p.status = f"{'resumed' if resume else 'training'} on {device} → {controller.out_dir}"
        return process

    def _onState(self, p, state, callback):
        node = self.controller.parameter_node
        message = node.GetParameter("Message")
        if state == FINISHED:
            loss = node.GetParameter("Loss")
            message = f"finished: {node.GetParameter('Step')} steps, loss {float(loss or 'nan'):.4g}; " \
                      f"'Open in Atlas' to build the atlas from {self.controller.out_dir}"
        elif state == FAILED:
            lines = [line for line in self.lastError().splitlines() if line.strip()]
            message += f": {lines[-1]}" if lines else ""
        if state in (CANCELLING, FINISHED, FAILED, CANCELLED):
            p.status = message
        if callback is not None:
            callback(state)

    def openInAtlas(self, p):
        """Switch to INFANiTE Atlas with this run folder as its ``runPath`` (through the Atlas logic's parameter
        node, never its widget's internals); returns the folder."""
        run = self.controller.out_dir if self.controller is not None and self.controller.out_dir else self._output(p)
        if getattr(slicer.modules, "infaniteatlas", None) is None:
            raise RuntimeError(f"the INFANiTE Atlas module is not available in this Slicer; the run is in {run}")
        slicer.util.getModuleLogic("INFANiTEAtlas").getParameterNode().runPath = pathlib.Path(run)
        slicer.util.selectModule("INFANiTEAtlas")
        return run


class INFANiTETrainingTest(ScriptedLoadableModuleTest):
    """End to end on a tiny phantom cohort (no download): check the cohort, train a tiny CPU model in a background
    process, follow it to the end, check the loss table, the chart and the checkpoint."""

    def setUp(self):
        from INFANiTECommonLib.dependencies import ensure_dependencies

        ensure_dependencies()
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_train_tiny_model()

    def test_train_tiny_model(self):
        from infanite.simulation.stacks import tiny_phantom_cohort

        work = pathlib.Path(slicer.util.tempDirectory())
        cohort = tiny_phantom_cohort(work, weeks=(27, 28, 29), register=True)
        logic = INFANiTETrainingLogic()
        p = logic.getParameterNode()
        p.manifestPath = cohort["registered"]
        summary = logic.loadCohort(p)
        self.assertTrue(summary.ok, summary.message())
        self.assertEqual(p.cohortTable.GetNumberOfRows(), 4)
        p.outputPath = work / "run"
        p.device = "cpu"
        p.epochs, p.nSamples, p.hiddenSize, p.hiddenLayers, p.latentSize = 1, 200, 16, 2, 4
        p.psfSchedule, p.maxSteps, p.checkpointEvery = "2", 30, 10
        p.lrInr, p.lrLatent = 1e-3, 1e-2
        logic.start(p)
        self.assertTrue(logic.isRunning())
        self.assertEqual(logic.controller.wait(timeout=900, on_idle=slicer.app.processEvents), FINISHED,
                         logic.lastError())
        self.assertFalse(logic.isRunning())
        self.assertGreater(logic.controller.loss_table_node.GetNumberOfRows(), 0)
        self.assertEqual(p.lossPlotView.GetPlotChartNodeID(), logic.controller.loss_chart_node.GetID())
        self.assertTrue(logic.hasCheckpoint(p))
        self.assertTrue(p.status.startswith("finished"), p.status)
        with self.assertRaises(ValueError):                # a finished run has nothing to resume
            logic.resume(p)
        self.delayDisplay("INFANiTETraining test passed")
