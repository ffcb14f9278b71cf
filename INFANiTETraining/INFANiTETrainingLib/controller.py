"""Run ``python -m infanite train`` in the background and mirror it in MRML (no Qt).

:class:`TrainingController` validates the settings, starts the child through
:class:`INFANiTECommonLib.process.BackgroundProcess`, and on every :meth:`TrainingController.poll` (a GUI timer)
turns the child's JSON progress lines into:

- parameters of a ``vtkMRMLScriptedModuleNode``: ``Status`` (the state), ``Step``, ``Total``, ``EtaSeconds``,
  ``Loss``, ``Message``, ``LastError``, ``OutputDirectory``;
- rows of a loss ``vtkMRMLTableNode`` (``step``, ``loss``, ``loss_intensity``, ``loss_seg``), plotted by a
  ``vtkMRMLPlotChartNode`` with one ``vtkMRMLPlotSeriesNode`` per loss column (x = step).

States: ``idle`` → ``running`` → ``finished`` | ``failed`` | ``cancelled``; :meth:`~TrainingController.cancel`
passes through ``cancelling`` (the run saves its checkpoint and stops; ``--resume`` continues it exactly).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from infanite.io.layout import CHECKPOINT, CONFIG, STOP_FILE, TRAIN_LOG

from INFANiTECommonLib.process import BackgroundProcess, infanite_env, python_command, start_process

IDLE, RUNNING, CANCELLING, FINISHED, FAILED, CANCELLED = \
    "idle", "running", "cancelling", "finished", "failed", "cancelled"
STATES = (IDLE, RUNNING, CANCELLING, FINISHED, FAILED, CANCELLED)
LOSS_COLUMNS = ("loss", "loss_intensity", "loss_seg")
#: name and attribute of the node holding a run's state (``ModuleName`` is left to the module's own parameter
#: node: ScriptedLoadableModuleLogic.getParameterNode finds that one by it)
RUN_NODE_NAME = "INFANiTE training run"
RUN_NODE_ATTRIBUTE = "INFANiTE.TrainingRun"
#: lines of the child's output kept in ``LastError`` after a failure
ERROR_LINES = 15


def device_detection_command(python: str | None = None) -> list[str]:
    """``python -m infanite devices --progress-json -``: PyTorch (and CUDA) initialised in a child process, so that
    the GUI never waits for it; its one progress event (stage ``devices``) lists the devices, best first, and
    describes them (:func:`devices_from_event`)."""
    return python_command(["devices", "--progress-json", "-"], python=python)


def devices_from_event(event: dict) -> tuple[list[str], str] | None:
    """``(devices, description)`` from the progress event of :func:`device_detection_command`, else None."""
    if event.get("stage") != "devices" or not isinstance(event.get("devices"), list) or not event["devices"]:
        return None
    return [str(d) for d in event["devices"]], str(event.get("message", ""))


def checkpoint_progress(out_dir) -> tuple[int, int] | None:
    """``(global_step, total_steps)`` of ``out_dir/checkpoint.pt``; None without a checkpoint.  Needs torch in
    this Python; without it ``(-1, -1)`` (a checkpoint exists, its position unknown)."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        import torch
    except ImportError:
        return -1, -1
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:                                    # a truncated / foreign file: nothing to resume from
        return None
    return int(state.get("global_step", 0)), int(state.get("total_steps", 0))


def can_resume(out_dir) -> bool:
    """True when ``out_dir`` holds a training checkpoint that has not reached its last step."""
    position = checkpoint_progress(out_dir)
    return position is not None and (position[0] < 0 or position[0] < position[1])


class LossPlot:
    """The loss table node and its chart (one series per loss column, x = step), created in ``scene``."""

    def __init__(self, scene, name: str = "INFANiTE training loss"):
        self.scene, self.name = scene, name
        self.table = self.chart = None
        self.series: dict = {}
        self.ensure()

    def ensure(self) -> None:
        """(Re)create the nodes that are not in the scene (a closed scene removes them)."""
        import vtk

        if self.table is None or not self.scene.IsNodePresent(self.table):
            self.table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.name)
            for column in ("step",) + LOSS_COLUMNS:
                array = vtk.vtkDoubleArray()
                array.SetName(column)
                self.table.AddColumn(array)
            self.table.SetUseColumnTitleAsColumnHeader(True)
            self.series = {}
        if self.chart is None or not self.scene.IsNodePresent(self.chart):
            self.chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", self.name)
            self.chart.SetTitle("Training loss")
            self.chart.SetXAxisTitle("step")
            self.chart.SetYAxisTitle("loss")
            self.series = {}
        for column in LOSS_COLUMNS:
            series = self.series.get(column)
            if series is None or not self.scene.IsNodePresent(series):
                series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{self.name} {column}")
                series.SetAndObserveTableNodeID(self.table.GetID())
                series.SetXColumnName("step")
                series.SetYColumnName(column)
                series.SetPlotType(series.PlotTypeScatter)
                series.SetMarkerStyle(series.MarkerStyleNone)
                self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
                self.series[column] = series

    def view_node(self, view=None):
        """A plot view node showing the loss chart (``view`` reused when it is in the scene).  Its chart is never
        replaced by another module's: ``DoPropagatePlotChartSelection`` is off, so ``ShowChartInLayout`` (e.g. the
        Atlas module's volume chart) does not reach it (``vtkMRMLApplicationLogic::PropagatePlotChartSelection``)."""
        self.ensure()
        if view is None or not self.scene.IsNodePresent(view):
            view = self.scene.AddNewNodeByClass("vtkMRMLPlotViewNode", f"{self.name} view")
        view.SetDoPropagatePlotChartSelection(False)
        view.SetPlotChartNodeID(self.chart.GetID())
        return view

    def clear(self) -> None:
        self.ensure()
        was = self.table.StartModify()
        for column in ("step",) + LOSS_COLUMNS:
            self.table.GetTable().GetColumnByName(column).SetNumberOfTuples(0)
        self.table.GetTable().Modified()
        self.table.Modified()
        self.table.EndModify(was)

    def append(self, record: dict) -> None:
        """Add the row of one progress event / log record (``step`` and the loss terms; missing terms NaN)."""
        table = self.table.GetTable()
        for column in ("step",) + LOSS_COLUMNS:
            value = record.get(column)
            table.GetColumnByName(column).InsertNextValue(float("nan") if value is None else float(value))
        table.Modified()
        self.table.Modified()

    def rows(self) -> list[dict]:
        """The table's rows as dicts (for tests and export)."""
        table = self.table.GetTable()
        columns = [table.GetColumnByName(c) for c in ("step",) + LOSS_COLUMNS]
        return [{c.GetName(): c.GetValue(i) for c in columns} for i in range(table.GetNumberOfRows())]


class TrainingController:
    """Start, follow and cancel one training run at a time.

    ``scene`` is the MRML scene; ``parameter_node`` a ``vtkMRMLScriptedModuleNode`` (created when None);
    ``start_process`` starts the child (the module logic's ``startProcess``; default
    :func:`INFANiTECommonLib.process.start_process`); ``on_log(line)`` receives the child's non-progress
    output lines, ``on_state(state)`` every state change, ``on_progress(event)`` every progress event — all on the
    thread that calls :meth:`poll`.
    """

    def __init__(self, scene, parameter_node=None, start_process: Callable = start_process,
                 on_log: Callable[[str], None] | None = None, on_state: Callable[[str], None] | None = None,
                 on_progress: Callable[[dict], None] | None = None, startup_environment=None):
        self.scene = scene
        self.start_process = start_process
        #: the environment Slicer was started from (a dict, or a callable returning one: in Slicer
        #: ``slicer.util.startupEnvironment``), given to an external Python instead of Slicer's own
        self.startup_environment = startup_environment
        self.on_log, self.on_state, self.on_progress = on_log, on_state, on_progress
        if parameter_node is None:                   # the run's state, NOT tagged as the module's parameter node
            parameter_node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", RUN_NODE_NAME)
            parameter_node.SetAttribute(RUN_NODE_ATTRIBUTE, "1")
            parameter_node.SetHideFromEditors(True)
        self.parameter_node = parameter_node
        self.plot = LossPlot(scene)
        self.process: BackgroundProcess | None = None
        self.out_dir: Path | None = None
        self.command: list[str] = []
        self._state = IDLE
        self._stopped_event = False
        self._set(Status=IDLE, Step=0, Total=0, EtaSeconds="", Loss="", Message="", LastError="")
        self._link_nodes()

    # -- state ----------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def running(self) -> bool:
        return self._state in (RUNNING, CANCELLING)

    @property
    def loss_table_node(self):
        return self.plot.table

    @property
    def loss_chart_node(self):
        return self.plot.chart

    def _set_state(self, state: str) -> None:
        self._state = state
        self._set(Status=state)
        if self.on_state is not None:
            self.on_state(state)

    def _set(self, **values) -> None:
        node = self.parameter_node
        was = node.StartModify()
        for key, value in values.items():
            node.SetParameter(key, "" if value is None else str(value))
        node.EndModify(was)

    def _link_nodes(self) -> None:
        self.parameter_node.SetNodeReferenceID("LossTable", self.plot.table.GetID())
        self.parameter_node.SetNodeReferenceID("LossChart", self.plot.chart.GetID())

    # -- control --------------------------------------------------------------------------------
    def build_command(self, manifest, out_dir, params=None, device: str = "cpu", python: str | None = None,
                      resume: bool = False, overwrite: bool = False) -> list[str]:
        """The child's command; checks everything that can be checked before a start (``ValueError``).  A new run
        into a folder that holds a model needs ``overwrite`` (the model is then replaced)."""
        manifest, out_dir = Path(manifest), Path(out_dir)
        if not manifest.is_file():
            raise ValueError(f"manifest: {manifest} does not exist (give the registered.tsv of a registration)")
        if device not in ("cpu", "mps") and not str(device).startswith("cuda"):
            raise ValueError(f"device: must be cpu, cuda or cuda:N, got {device!r}")
        args = ["train", "--manifest", str(manifest.resolve()), "--out", str(out_dir.resolve()),
                "--progress-json", "-", "--device", str(device)]
        if resume:
            if not can_resume(out_dir):
                raise ValueError(f"resume: {out_dir} holds no unfinished training checkpoint ({CHECKPOINT})")
            args.append("--resume")
            if params is None:                       # the run's own settings
                args += ["--config", str((out_dir / CONFIG).resolve())]
        if params is not None:
            params.validate(device)                  # TrainingParametersError (a ValueError) naming the field
            args += params.to_cli_args()
        elif not resume:
            raise ValueError("params: training settings are required for a new run")
        if not resume and (out_dir / CHECKPOINT).exists():
            if not overwrite:
                raise ValueError(f"output: {out_dir} already holds a model ({CHECKPOINT}); resume it, or start "
                                 f"again replacing it")
            args.append("--overwrite")
        return python_command(args, python=python)

    def start(self, manifest, out_dir, params=None, device: str = "cpu", python: str | None = None,
              resume: bool = False, overwrite: bool = False) -> BackgroundProcess:
        """Validate and launch ``python -m infanite train`` (``params`` None with ``resume``: the run's
        ``config.yaml``).  Raises ``ValueError`` before anything starts, ``RuntimeError`` while a run is going."""
        if self.running:
            raise RuntimeError("a training run is already going; cancel it first")
        command = self.build_command(manifest, out_dir, params, device, python, resume, overwrite)
        self.out_dir = Path(out_dir).resolve()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.command = command
        self._stopped_event = False
        self.plot.ensure()
        self._link_nodes()
        self.plot.clear()
        if resume:
            self._load_previous_losses()
        self._set(Step=0, Total=0, EtaSeconds="", Loss="", Message="starting", LastError="",
                  OutputDirectory=self.out_dir)
        env = infanite_env(python=python, startup_environment=self.startup_environment)
        self.process = self.start_process(command, onProgress=self._on_progress, onFinished=self._on_finished,
                                          stopFile=self.out_dir / STOP_FILE, env=env, cwd=self.out_dir,
                                          onLog=self._on_log)
        self._set_state(RUNNING)
        return self.process

    def _load_previous_losses(self) -> None:
        """The losses of the steps up to the checkpoint (a resumed run continues its curve)."""
        position = checkpoint_progress(self.out_dir)
        log = self.out_dir / TRAIN_LOG
        if position is None or position[0] < 0 or not log.is_file():
            return
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("step", 0) <= position[0]:
                self.plot.append(record)

    def poll(self) -> bool:
        """Deliver the child's output to MRML and the callbacks (call from the GUI thread, e.g. every 100 ms);
        returns True while the run is going."""
        if self.process is None:
            return False
        table = self.plot.table
        was_table, was_params = table.StartModify(), self.parameter_node.StartModify()
        try:
            self.process.poll()
        finally:
            self.parameter_node.EndModify(was_params)
            table.EndModify(was_table)
        return self.running

    def cancel(self, grace_s: float = 60.0) -> None:
        """Ask the run to stop (it saves its checkpoint), without blocking; :meth:`poll` reports the end and kills
        the process tree after ``grace_s`` seconds if it has not ended."""
        if self._state != RUNNING or self.process is None:
            return
        self._set_state(CANCELLING)
        self._set(Message="stopping: saving the checkpoint")
        self.process.cancel(grace_s=grace_s, wait=False)

    def wait(self, timeout: float | None = None, interval: float = 0.05, on_idle: Callable[[], None] | None = None
             ) -> str:
        """Loop :meth:`poll` until the run ends (scripts, self-tests); returns the final state.  ``on_idle`` is
        called between polls (in Slicer ``slicer.app.processEvents``).  ``TimeoutError`` after ``timeout`` s."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"training still {self._state} after {timeout} s")
            if on_idle is not None:
                on_idle()
            time.sleep(interval)
        return self._state

    def shutdown(self, grace_s: float = 5.0, on_idle: Callable[[], None] | None = None) -> None:
        """Slicer exits: ask the run to stop (it saves a checkpoint at the next step), wait up to ``grace_s``
        seconds, then kill its process tree; ``--resume`` continues from the last checkpoint."""
        if self._state == RUNNING and self.process is not None:
            self._set_state(CANCELLING)
            self.process.cancel(grace_s=grace_s, wait=False)
        if self.running:
            self.wait(on_idle=on_idle)

    # -- child output ---------------------------------------------------------------------------
    def _on_progress(self, event: dict) -> None:
        if event.get("stage") == "train":
            values = {"Step": event.get("step", 0), "Total": event.get("total", 0),
                      "EtaSeconds": "" if event.get("eta_s") is None else event["eta_s"],
                      "Message": event.get("message", "")}
            if event.get("loss") is not None:
                values["Loss"] = event["loss"]
                self.plot.append(event)
            if event.get("stopped"):
                self._stopped_event = True
            self._set(**values)
        if self.on_progress is not None:
            self.on_progress(event)

    def _on_log(self, line: str) -> None:
        if self.on_log is not None:
            self.on_log(line)

    def _on_finished(self, returncode: int, cancelled: bool, last_lines: list) -> None:
        if cancelled or self._stopped_event:
            position = checkpoint_progress(self.out_dir)
            where = f"; checkpoint at step {position[0]}, resume to continue" if position and position[0] >= 0 \
                else ""
            self._set(Message=f"cancelled{where}")
            self._set_state(CANCELLED)
        elif returncode == 0:
            self._set(Message="finished")
            self._set_state(FINISHED)
        else:
            self._set(LastError="\n".join(last_lines[-ERROR_LINES:]) or f"exit code {returncode}",
                      Message=f"failed (exit code {returncode})")
            self._set_state(FAILED)


__all__ = ["TrainingController", "LossPlot", "device_detection_command", "devices_from_event", "can_resume",
           "checkpoint_progress", "STATES", "IDLE", "RUNNING", "CANCELLING", "FINISHED", "FAILED", "CANCELLED",
           "LOSS_COLUMNS"]
