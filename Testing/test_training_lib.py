"""INFANiTETrainingLib against real MRML (slicer-core) and a real ``python -m infanite train`` child process."""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import pytest
from slicer_harness import group_members

from INFANiTETrainingLib import (CANCELLED, CANCELLING, FAILED, FINISHED, IDLE, LOSS_COLUMNS, RUNNING,
                                 TrainingController, TrainingParameters, TrainingParametersError, can_resume,
                                 checkpoint_progress, cohort_table_node, device_detection_command,
                                 devices_from_event, read_cohort)


def tiny(**kw) -> TrainingParameters:
    """A model that trains a step in milliseconds on CPU."""
    values = dict(epochs=50, n_samples=200, hidden_size=16, num_hidden_layers=2, latent_channels=4,
                  psf_samples=[2], max_steps=40, checkpoint_every=10, lr_inr=1e-3, lr_latent=1e-2)
    values.update(kw)
    return TrainingParameters(**values)


def log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


class Events:
    def __init__(self):
        self.progress, self.log, self.states = [], [], []

    def kwargs(self) -> dict:
        return {"on_progress": self.progress.append, "on_log": self.log.append, "on_state": self.states.append}


@pytest.fixture(scope="module")
def registered(phantom_registered) -> Path:
    return phantom_registered["registered"]


def test_a_run_fills_the_parameter_node_and_the_loss_table_and_plot(mrml, registered, tmp_path):
    scene, events = mrml["scene"], Events()
    controller = TrainingController(scene, **events.kwargs())
    node = controller.parameter_node
    assert node.IsA("vtkMRMLScriptedModuleNode") and node.GetParameter("Status") == IDLE
    run = tmp_path / "run"
    controller.start(registered, run, tiny(), device="cpu")
    assert controller.state == RUNNING and controller.process.pid > 0
    cmd = controller.command
    assert cmd[:4] == [sys.executable, "-m", "infanite", "train"] and "--resume" not in cmd
    assert cmd[cmd.index("--progress-json") + 1] == "-" and cmd[cmd.index("--device") + 1] == "cpu"
    assert "inr_decoder.hidden_size=16" in cmd
    assert controller.wait(timeout=300) == FINISHED, controller.process.last_lines()
    assert events.states == [RUNNING, FINISHED]

    with_loss = [e for e in events.progress if "loss" in e]
    assert len(with_loss) == 40 and events.progress[0]["step"] == 0 and "loss" not in events.progress[0]
    assert node.GetParameter("Status") == FINISHED
    assert node.GetParameter("Step") == "40" == node.GetParameter("Total")
    assert float(node.GetParameter("Loss")) == with_loss[-1]["loss"]
    assert node.GetParameter("EtaSeconds") in ("0.0", "0") and node.GetParameter("LastError") == ""
    assert node.GetParameter("OutputDirectory") == str(run.resolve())
    assert any("trained 40/40 steps" in line for line in events.log)

    table, chart = controller.loss_table_node, controller.loss_chart_node
    rows = controller.plot.rows()
    logged = log_records(run)
    assert table.GetNumberOfRows() == len(with_loss) == len(logged) == 40
    for row, record in zip(rows, logged):
        assert row["step"] == record["step"]
        assert all(row[c] == record[c] for c in LOSS_COLUMNS)           # the same numbers, not rounded
    assert node.GetNodeReference("LossTable") is table and node.GetNodeReference("LossChart") is chart
    assert chart.GetNumberOfPlotSeriesNodes() == 3
    series = [chart.GetNthPlotSeriesNode(i) for i in range(3)]
    assert sorted(s.GetYColumnName() for s in series) == sorted(LOSS_COLUMNS)
    assert all(s.GetXColumnName() == "step" and s.GetTableNode() is table for s in series)
    assert not can_resume(run) and checkpoint_progress(run) == (40, 40)
    # the run's state node is not a second "parameter node" of the module (ScriptedLoadableModuleLogic finds the
    # module's own by its ModuleName attribute)
    assert node.GetAttribute("ModuleName") is None and node.GetHideFromEditors()


def test_the_loss_chart_is_not_replaced_by_another_modules_chart(mrml):
    """Opening the Atlas module shows its volume chart with ShowChartInLayout, which propagates the active chart to
    every plot view whose DoPropagatePlotChartSelection is on (vtkMRMLApplicationLogic): the loss view opts out."""
    scene, app = mrml["scene"], mrml["logics"]["app"]
    controller = TrainingController(scene)
    loss_view = controller.plot.view_node()
    assert not loss_view.GetDoPropagatePlotChartSelection()
    assert loss_view.GetPlotChartNodeID() == controller.loss_chart_node.GetID()
    assert controller.plot.view_node(loss_view) is loss_view                    # reused, not duplicated
    layout_view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode", "the layout's plot view")
    other = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "tissue volumes")
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton") or app.GetSelectionNode()
    selection.SetActivePlotChartID(other.GetID())
    app.PropagatePlotChartSelection()
    assert layout_view.GetPlotChartNodeID() == other.GetID()                    # what happens to a plain view
    assert loss_view.GetPlotChartNodeID() == controller.loss_chart_node.GetID()


def test_shutdown_stops_the_run_and_its_tree_within_seconds(mrml, registered, tmp_path):
    """Slicer exits (module cleanup): the run gets a few seconds to checkpoint, then its tree is killed."""
    controller = TrainingController(mrml["scene"])
    run = tmp_path / "run"
    process = controller.start(registered, run, tiny(max_steps=100000), device="cpu")
    while controller.poll() and int(controller.parameter_node.GetParameter("Step") or 0) < 3:
        time.sleep(0.02)
    start = time.monotonic()
    controller.shutdown(grace_s=5.0)
    assert time.monotonic() - start < 15 and not controller.running
    assert controller.state == CANCELLED and group_members(process.pid) == []
    assert can_resume(run)


def test_cancel_stops_with_a_checkpoint_leaves_no_process_and_resume_continues(mrml, registered, tmp_path):
    events = Events()
    controller = TrainingController(mrml["scene"], **events.kwargs())
    run = tmp_path / "run"
    process = controller.start(registered, run, tiny(max_steps=100000), device="cpu")
    pid = process.pid
    assert os.getpgid(pid) == pid                                           # its own process group
    while controller.poll() and int(controller.parameter_node.GetParameter("Step") or 0) < 5:
        time.sleep(0.02)                                                    # the GUI timer
    assert controller.state == RUNNING, process.last_lines()
    controller.cancel(grace_s=120.0)
    assert controller.state == CANCELLING and controller.running
    assert controller.wait(timeout=300) == CANCELLED, process.last_lines()
    assert events.states == [RUNNING, CANCELLING, CANCELLED]
    assert not process.killed and process.returncode == 0                  # stopped gracefully, not killed

    assert not Path(f"/proc/{pid}").exists() and group_members(pid) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    stopped = [e for e in events.progress if e.get("stopped")]
    step, total = checkpoint_progress(run)
    assert len(stopped) == 1 and stopped[0]["step"] == step >= 5 and step < total
    assert can_resume(run) and not (run / "STOP").exists()
    assert f"checkpoint at step {step}" in controller.parameter_node.GetParameter("Message")
    assert controller.plot.rows()[-1]["step"] == step == len(log_records(run))

    events.progress.clear()
    controller.start(registered, run, tiny(max_steps=step + 10), device="cpu", resume=True)
    assert "--resume" in controller.command
    assert controller.loss_table_node.GetNumberOfRows() == step             # the curve so far
    assert controller.wait(timeout=300) == FINISHED, controller.process.last_lines()
    assert events.progress[0]["step"] == step and events.progress[-1]["step"] == step + 10
    assert [e["step"] for e in events.progress if "loss" in e] == list(range(step + 1, step + 11))
    logged = log_records(run)
    assert [r["step"] for r in logged] == list(range(1, step + 11))
    assert [r["step"] for r in controller.plot.rows()] == [float(r["step"]) for r in logged]
    assert [r["loss"] for r in controller.plot.rows()] == [r["loss"] for r in logged]
    assert checkpoint_progress(run) == (step + 10, step + 10) and not can_resume(run)


def test_a_child_failure_is_reported_with_its_error_line(mrml, registered, tmp_path):
    controller = TrainingController(mrml["scene"])
    # accepted by the config loader, rejected by the training once it knows the label table (2 != 10 classes)
    controller.start(registered, tmp_path / "run", tiny(advanced_yaml="class_weights: [1, 1]"), device="cpu")
    assert controller.wait(timeout=300) == FAILED
    error = controller.parameter_node.GetParameter("LastError")
    assert "error: class_weights has 2 values" in error
    assert controller.parameter_node.GetParameter("Status") == FAILED
    assert controller.process.returncode == 2
    assert "exit code 2" in controller.parameter_node.GetParameter("Message")


def test_bad_settings_are_rejected_before_anything_starts(mrml, registered, tmp_path):
    controller = TrainingController(mrml["scene"])
    with pytest.raises(TrainingParametersError, match=r"Hidden size: inr_decoder.hidden_size: must be > 0") as info:
        controller.start(registered, tmp_path / "a", tiny(hidden_size=0))
    assert info.value.fields == ["hidden_size"]
    with pytest.raises(ValueError, match="P schedule"):
        controller.start(registered, tmp_path / "a", tiny(psf_samples="4, x"))
    with pytest.raises(ValueError, match="Advanced settings.*lr_inrr.*did you mean 'optimizer.lr_inr'"):
        controller.start(registered, tmp_path / "a", tiny(advanced_yaml="optimizer:\n  lr_inrr: 1"))
    with pytest.raises(ValueError, match="Advanced settings.*not valid YAML"):
        controller.start(registered, tmp_path / "a", tiny(advanced_yaml="a: [1"))
    with pytest.raises(ValueError, match="manifest"):
        controller.start(tmp_path / "none.tsv", tmp_path / "a", tiny())
    with pytest.raises(ValueError, match="resume"):
        controller.start(registered, tmp_path / "a", tiny(), resume=True)
    with pytest.raises(ValueError, match="device"):
        controller.start(registered, tmp_path / "a", tiny(), device="tpu")
    assert controller.process is None and controller.state == IDLE and not (tmp_path / "a").exists()


def test_the_form_round_trips_through_the_core_loader():
    params = tiny(max_steps=None, w_obs=2.5, advanced_yaml="psf:\n  mode: isotropic\nmax_steps: 7\n")
    config = params.validate("cpu")
    assert config.inr_decoder.latent_dim == [4, 3, 3, 3] and config.inr_decoder.modulated_layers == [1]
    assert config.spatial_weighting.w_obs == 2.5 and config.psf.mode == "isotropic"
    assert config.max_steps == 7                                          # the advanced text wins
    again = TrainingParameters.from_config(config)
    assert again.validate("cpu") == config
    assert TrainingParameters(num_hidden_layers=4).validate().inr_decoder.modulated_layers == [1, 3]
    cpu = TrainingParameters.for_device("cpu")
    assert cpu.hidden_size < TrainingParameters.for_device("cuda").hidden_size == 1024
    assert params.to_cli_args()[:6] == ["--set", 'model="infanite"', "--set", 'data.term="exact"', "--set",
                                        "epochs.train=50"]
    template = tiny(model="template", data_term="reference").validate("cpu")
    assert (template.model, template.data.term) == ("template", "reference")
    assert TrainingParameters.from_config(template).model == "template"
    with pytest.raises(TrainingParametersError, match=r"Model: model: .*infanite.*template") as info:
        tiny(model="deformable").validate("cpu")
    assert info.value.fields == ["model"]


def test_the_defaults_for_a_cohort_are_what_infanite_run_chooses_for_it(registered):
    from infanite.pipeline.run import sized_defaults

    form = TrainingParameters.for_device("cpu", registered)           # 2 fetuses, GA 27-29: the template model
    config = form.validate("cpu")
    assert form.model == "template" and "ga_latents: 2" in form.advanced_yaml
    assert config.model == "template" and config.template.ga_latents == 2 and config.inr_decoder.hidden_size == 256
    from infanite.inr.config_loading import load_train_config

    assert config == load_train_config(None, sized_defaults(registered, "cpu") + ["device=cpu"])
    assert TrainingParameters.for_device("cpu", registered.parent / "missing.tsv").model == "infanite"


def test_device_detection_runs_in_a_child_process():
    """The GUI never initialises PyTorch/CUDA itself: ``infanite devices`` runs as a background process and its
    one progress event lists the devices, best first."""
    import torch

    from INFANiTECommonLib.process import BackgroundProcess, infanite_env

    events = []
    process = BackgroundProcess(device_detection_command(), env=infanite_env(), on_progress=events.append).start()
    assert process.wait(timeout=120) == 0, process.last_lines()
    found = [devices_from_event(e) for e in events if devices_from_event(e) is not None]
    assert len(found) == 1
    devices, description = found[0]
    assert devices == (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
    assert description and (torch.__version__ in description or "cuda:0" in description)
    assert devices_from_event({"stage": "train", "devices": ["cpu"]}) is None
    assert devices_from_event({"stage": "devices", "devices": []}) is None


def _write_tsv(path: Path, header: list[str], rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, header, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_cohort_table_has_one_row_per_stack_and_the_row_errors(mrml, registered, tmp_path):
    scene = mrml["scene"]
    node, summary = cohort_table_node(scene, registered)
    assert node.IsA("vtkMRMLTableNode") and summary.ok and summary.n_subjects == 2
    columns = [node.GetColumnName(i) for i in range(node.GetNumberOfColumns())]
    assert columns == ["Row", "Subject", "Stack", "GA", "T2w", "Seg", "Weight", "Status"]
    with registered.open() as handle:
        source = list(csv.DictReader(handle, delimiter="\t"))
    assert node.GetNumberOfRows() == len(source) == 4
    for i, row in enumerate(source):
        assert node.GetCellText(i, columns.index("Stack")) == row["subject_id"]
        assert float(node.GetCellText(i, columns.index("GA"))) == pytest.approx(float(row["scan_age"]))
        assert node.GetCellText(i, columns.index("Weight")) == row["Weight"]
        assert node.GetCellText(i, columns.index("Status")) == "ok"

    # a broken copy (absolute paths): bad GA on line 2, missing T2w on line 3, missing Weight map on line 4
    base = registered.parent
    rows = []
    for row in source:
        row = dict(row)
        for key in ("T2w", "Seg", "Mask", "Weight", "Observed"):
            if row.get(key):
                row[key] = str(base / row[key])
        rows.append(row)
    rows[0]["scan_age"] = "abc"
    rows[1]["T2w"] = str(tmp_path / "missing_T2w.nii.gz")
    rows[2]["Weight"] = str(tmp_path / "missing_weight.nii.gz")
    broken = _write_tsv(tmp_path / "broken.tsv", list(source[0]), rows)
    node, summary = cohort_table_node(scene, broken, node=node)
    status = [node.GetCellText(i, columns.index("Status")) for i in range(node.GetNumberOfRows())]
    assert node.GetNumberOfRows() == 4 and not summary.ok and summary.errors == []
    assert status[0].startswith("scan_age:") and "abc" in status[0]
    assert status[1].startswith("T2w:"), status[1]
    assert status[2].startswith("Weight:") and "does not exist" in status[2]
    assert status[3] == "ok"
    assert [node.GetCellText(i, 0) for i in range(4)] == ["2", "3", "4", "5"]
    assert "3 with problems" in summary.message()

    missing = read_cohort(tmp_path / "nothing.tsv")
    assert missing.rows == [] and not missing.ok and "does not exist" in missing.errors[0]


def test_progress_text_and_durations():
    from INFANiTETrainingLib import format_duration, progress_text

    assert [format_duration(s) for s in (None, -1, 0, 42.4, 65, 4079)] == \
        ["", "", "0 s", "42 s", "1 min 05 s", "1 h 07 min"]
    assert progress_text({"stage": "train", "step": 0, "total": 40, "eta_s": None}) == "step 0/40 · ETA …"
    assert progress_text({"step": 12, "total": 40, "loss": 0.123456, "eta_s": 65.2}) == \
        "step 12/40 · loss 0.1235 · ETA 1 min 05 s"
    assert progress_text({"step": 40, "total": 40, "loss": 0.1, "eta_s": 0.0}) == "step 40/40 · loss 0.1"
    assert "%" not in progress_text({"step": 1, "total": 2, "message": "100%"})


def test_describe_devices(monkeypatch):
    import torch

    from infanite.devices import describe_devices, detect_devices

    text = describe_devices()
    if torch.cuda.is_available():
        assert text.startswith("cuda:0 ") and "GiB" in text
    else:
        assert "no CUDA GPU" in text and torch.__version__ in text
    monkeypatch.setitem(sys.modules, "torch", None)                  # import torch -> ImportError
    assert describe_devices().startswith("PyTorch is not installed")
    assert detect_devices() == ["cpu"]


def test_the_cohort_check_says_where_the_atlas_labels_come_from(registered, tmp_path):
    """A mask-only cohort is accepted; the message says its labels will come from the templates."""
    labelled = read_cohort(registered, check_images=False)
    assert labelled.ok and "learnt from the 4 of 4 stacks with a Seg" in labelled.message()
    lines = registered.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:]]
    for row in rows:
        for column in ("Seg", "source_Seg"):
            row[header.index(column)] = ""
        for i, name in enumerate(header):
            if name in ("T2w", "Mask", "Weight", "Observed") and row[i]:
                row[i] = str((registered.parent / row[i]).resolve())
    mask_only = tmp_path / "registered.tsv"
    mask_only.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    summary = read_cohort(mask_only)
    assert summary.ok, [r.status for r in summary.rows]
    assert "no stack has tissue labels" in summary.message() and "templates'" in summary.message()
