"""INFANiTECommonLib.process: real child processes — progress/log parsing, crashes, cancel of a process tree."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from slicer_harness import group_members

from INFANiTECommonLib.process import (BackgroundProcess, infanite_env, infanite_root, parse_progress, python_command,
                                       start_process)

posix_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks processes through /proc")

# a child that starts a grandchild (same process group), reports its pid, then sleeps
TREE = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("GRANDCHILD", grandchild.pid, flush=True)
time.sleep(600)
"""


def script(source: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(source)]


def proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (R, S, Z, …) or None when no such process exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def wait_until(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Recorder:
    """Collects the callbacks and the thread each ran on."""

    def __init__(self):
        self.progress, self.log, self.finished, self.threads = [], [], [], set()

    def kwargs(self) -> dict:
        return {"on_progress": self._progress, "on_log": self._log, "on_finished": self._finished}

    def _progress(self, record):
        self.threads.add(threading.get_ident())
        self.progress.append(record)

    def _log(self, line):
        self.threads.add(threading.get_ident())
        self.log.append(line)

    def _finished(self, code, cancelled, lines):
        self.threads.add(threading.get_ident())
        self.finished.append((code, cancelled, lines))


def start_tree(rec: Recorder, source: str = TREE, **kwargs) -> tuple[BackgroundProcess, int]:
    proc = BackgroundProcess(script(source), **rec.kwargs(), **kwargs).start()
    assert wait_until(lambda: proc.poll() and any(line.startswith("GRANDCHILD") for line in rec.log))
    grandchild = int(next(line for line in rec.log if line.startswith("GRANDCHILD")).split()[1])
    assert proc_state(proc.pid) not in (None, "Z") and proc_state(grandchild) not in (None, "Z")
    assert os.getpgid(grandchild) == proc.pid != os.getpgid(0)       # own group, shared with the grandchild
    return proc, grandchild


def assert_tree_gone(proc: BackgroundProcess, grandchild: int) -> None:
    # the direct child is reaped (no zombie left); the grandchild, re-parented to init, is dead (gone or a zombie
    # that init has not reaped yet) — and nothing alive is left in the child's process group
    assert proc_state(proc.pid) is None
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    assert wait_until(lambda: proc_state(grandchild) in (None, "Z"))
    assert wait_until(lambda: group_members(proc.pid) == [])


def test_progress_lines_and_log_lines_reach_the_callbacks_on_the_polling_thread():
    rec = Recorder()
    proc = BackgroundProcess(script("""
        import json, sys
        print(json.dumps({"stage": "train", "step": 1, "total": 3, "loss": 0.5}))
        print("plain text line")
        print(json.dumps({"no_stage": 1}))
        print("to stderr", file=sys.stderr)
        print(json.dumps({"stage": "train", "step": 3, "total": 3}))
        """), **rec.kwargs())
    assert not proc.running and proc.pid is None
    proc.start()
    assert proc.running and proc.pid > 0
    assert proc.wait(timeout=60) == 0
    assert [r["step"] for r in rec.progress] == [1, 3] and rec.progress[0]["loss"] == 0.5
    assert rec.log == ["plain text line", '{"no_stage": 1}', "to stderr"]
    assert rec.threads == {threading.get_ident()}
    assert rec.finished == [(0, False, rec.log)]
    assert not proc.running and proc.returncode == 0 and not proc.cancelled
    assert proc.last_lines(2) == ['{"no_stage": 1}', "to stderr"]
    assert len(proc.last_lines(10, progress=True)) == 5
    assert proc.poll() is False and len(rec.finished) == 1                  # reported once


def test_environment_carries_unbuffered_output_and_the_core_package_path(tmp_path):
    env = infanite_env({"INFANITE_TEST": 7})
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(infanite_root())
    assert (infanite_root() / "infanite" / "__init__.py").exists()
    assert python_command(["train", "--out", tmp_path]) == [sys.executable, "-m", "infanite", "train", "--out",
                                                            str(tmp_path)]
    assert python_command(["x"], python="/opt/py")[0] == "/opt/py"
    out = []
    proc = BackgroundProcess(script("""
        import os, sys, infanite
        print(os.environ["PYTHONUNBUFFERED"], os.environ["INFANITE_TEST"], sys.path.index(sys.argv[1]) < 3)
        print(infanite.__file__)
        """) + [str(infanite_root())], cwd=tmp_path, env=env, on_log=out.append).start()
    assert proc.wait(timeout=60) == 0
    assert out[0] == "1 7 True" and Path(out[1]).resolve().parent.parent == infanite_root()
    with pytest.raises(TypeError):
        BackgroundProcess("python -c 1")


def test_parse_progress():
    assert parse_progress('{"stage": "atlas", "step": 2}') == {"stage": "atlas", "step": 2}
    assert parse_progress("  {\"stage\": 1}\r") == {"stage": 1}
    for line in ("", "{", "[1, 2]", '{"step": 2}', "{not json}", "stage"):
        assert parse_progress(line) is None


def test_a_crash_reports_its_exit_code_and_the_error_line():
    rec = Recorder()
    proc = BackgroundProcess(script("""
        import json
        print(json.dumps({"stage": "train", "step": 1, "total": 9}))
        print("working")
        def deep():
            raise RuntimeError("boom: the stack at row 3 is empty")
        deep()
        """), **rec.kwargs()).start()
    assert proc.wait(timeout=60) == 1
    (code, cancelled, lines), = rec.finished
    assert code == 1 and not cancelled
    assert lines[-1] == "RuntimeError: boom: the stack at row 3 is empty"
    assert lines[0] == "working" and any(line.startswith("Traceback") for line in lines)
    assert proc.last_lines(1) == [lines[-1]]


def test_a_missing_executable_raises_at_start(tmp_path):
    with pytest.raises(OSError):
        BackgroundProcess([str(tmp_path / "no-such-python"), "-c", "1"]).start()


@posix_only
def test_cancel_kills_the_child_and_its_grandchild():
    rec = Recorder()
    proc, grandchild = start_tree(rec)
    proc.cancel(grace_s=10.0)                    # SIGTERM to the group ends both (default SIGTERM action)
    assert not proc.running and proc.cancelled and not proc.killed
    assert proc.returncode == -signal.SIGTERM
    assert rec.finished == [(-signal.SIGTERM, True, proc.last_lines())]
    assert_tree_gone(proc, grandchild)


@posix_only
def test_cancel_kills_a_tree_that_ignores_sigterm_after_the_grace_time():
    rec = Recorder()
    source = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + TREE   # inherited by the grandchild
    proc, grandchild = start_tree(rec, source)
    proc.cancel(grace_s=0.5)
    assert proc.killed and proc.returncode == -signal.SIGKILL
    assert rec.finished and rec.finished[0][:2] == (-signal.SIGKILL, True)
    assert_tree_gone(proc, grandchild)


@posix_only
def test_non_blocking_cancel_is_escalated_by_poll():
    rec = Recorder()
    source = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + TREE
    proc, grandchild = start_tree(rec, source)
    proc.cancel(grace_s=0.3, wait=False)
    assert proc.running and proc.cancelled and not rec.finished
    assert wait_until(lambda: not proc.poll(), 30)                          # the GUI timer's calls
    assert proc.killed and rec.finished[0][:2] == (-signal.SIGKILL, True)
    assert_tree_gone(proc, grandchild)


@posix_only
def test_a_launcher_that_exits_first_does_not_cut_its_childs_graceful_stop_short():
    """As Slicer's PythonSlicer launcher: SIGTERM ends the launcher at once while the real interpreter (its
    child, same group) still saves; the save is waited for (within the grace time), then the tree is gone."""
    child = ("import signal, sys, time\n"
             "stop = []\n"
             "signal.signal(signal.SIGTERM, lambda *a: stop.append(1))\n"
             "print('CHILD READY', flush=True)\n"
             "while not stop: time.sleep(0.01)\n"
             "time.sleep(1.0)\n"
             "print('saved checkpoint', flush=True)\n")
    launcher = f"""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", {child!r}])
        print("GRANDCHILD", grandchild.pid, flush=True)
        time.sleep(600)
        """
    rec = Recorder()
    proc, grandchild = start_tree(rec, launcher)
    assert wait_until(lambda: proc.poll() and "CHILD READY" in rec.log)
    proc.cancel(grace_s=30.0)
    assert proc.returncode == -signal.SIGTERM and not proc.killed
    assert rec.log[-1] == "saved checkpoint"
    assert_tree_gone(proc, grandchild)


def test_graceful_stop_file_is_honoured(tmp_path):
    stop = tmp_path / "run" / "STOP"
    stop.parent.mkdir()
    stop.write_text("left from before")                                     # removed at start
    rec = Recorder()
    proc = BackgroundProcess(script(f"""
        import os, signal, time
        if hasattr(signal, "SIGTERM"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)                  # only the stop file ends this loop
        print("started", flush=True)
        while not os.path.exists({str(stop)!r}):
            time.sleep(0.01)
        print("stopped", flush=True)
        """), stop_file=stop, **rec.kwargs()).start()
    assert not stop.exists()
    assert wait_until(lambda: proc.poll() and "started" in rec.log)
    proc.cancel(grace_s=60.0)
    assert rec.log == ["started", "stopped"]
    assert rec.finished == [(0, True, ["started", "stopped"])]
    assert proc.cancelled and not proc.killed and proc.returncode == 0
    assert not stop.exists()                                                # cleaned up after the end


def test_cancel_after_the_end_changes_nothing():
    rec = Recorder()
    proc = BackgroundProcess(script("print('done')"), **rec.kwargs()).start()
    assert proc.wait(timeout=60) == 0
    proc.cancel(grace_s=0.1)
    assert not proc.cancelled and rec.finished == [(0, False, ["done"])]
    sleeper = BackgroundProcess(script("import time; time.sleep(600)")).start()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            sleeper.wait(timeout=0.2)
        assert sleeper.running
    finally:
        sleeper.cancel(grace_s=5.0)
    assert not sleeper.running and sleeper.cancelled


def test_module_logic_mixin_runs_polls_and_cancels_without_blocking():
    from INFANiTECommonLib.logic import BackgroundProcessLogicMixin

    class Logic(BackgroundProcessLogicMixin):
        cancel_grace_s = 2.0

    logic = Logic()
    assert not logic.isRunning() and logic.poll() is False and logic.cancel() is None   # nothing started yet
    ended = []
    logic.process = BackgroundProcess([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"],
                                      on_finished=lambda code, cancelled, lines: ended.append((code, cancelled)))
    logic.process.start()
    assert logic.isRunning()
    logic.cancel()                                # returns at once; the GUI's timer polls the end
    deadline = time.monotonic() + 60
    while logic.poll() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not logic.isRunning() and ended and ended[0][1] is True
    pid = logic.process.pid
    assert not Path(f"/proc/{pid}").exists() or "zombie" not in Path(f"/proc/{pid}/status").read_text()


# --------------------------------------------------------------------------------------------------------------------
# An external Python (Training's "Python" field) and Windows, simulated where a real test is impossible here
# --------------------------------------------------------------------------------------------------------------------
SLICER_LAUNCHER_ENV = {"PYTHONHOME": "/opt/Slicer/lib/Python", "PYTHONNOUSERSITE": "1",
                       "PYTHONPATH": "/opt/Slicer/lib/Python/lib/python3.12", "PATH": "/opt/Slicer/bin:/usr/bin",
                       "HOME": "/home/user"}


def test_an_external_python_gets_the_environment_slicer_was_started_from(monkeypatch):
    """Slicer's launcher sets PYTHONHOME/PYTHONPATH/PYTHONNOUSERSITE for its own interpreter; a conda or venv Python
    that inherits them loads Slicer's standard library.  An external interpreter gets the startup environment
    (``slicer.util.startupEnvironment()`` in Slicer), plus the core package path."""
    for key, value in SLICER_LAUNCHER_ENV.items():
        monkeypatch.setenv(key, value)
    startup = {"PATH": "/usr/bin", "HOME": "/home/user", "PYTHONPATH": "/home/user/lib"}
    external = "/opt/conda/envs/gpu/bin/python"
    env = infanite_env({"X": 1}, python=external, startup_environment=lambda: dict(startup))
    assert "PYTHONHOME" not in env and "PYTHONNOUSERSITE" not in env
    assert env["PYTHONPATH"].split(os.pathsep) == [str(infanite_root()), "/home/user/lib"]
    assert env["PATH"] == "/usr/bin" and env["X"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    # without a startup environment (outside Slicer): this environment without the launcher's Python variables
    env = infanite_env(python=external)
    assert not {"PYTHONHOME", "PYTHONNOUSERSITE"} & set(env)
    assert env["PYTHONPATH"] == str(infanite_root()) and env["PATH"] == SLICER_LAUNCHER_ENV["PATH"]
    # Slicer's own interpreter keeps Slicer's environment
    for own in (None, sys.executable):
        env = infanite_env(python=own, startup_environment=lambda: dict(startup))
        assert env["PYTHONHOME"] == SLICER_LAUNCHER_ENV["PYTHONHOME"]
        assert env["PYTHONPATH"].split(os.pathsep)[1:] == [SLICER_LAUNCHER_ENV["PYTHONPATH"]]


def test_the_training_controller_hands_an_external_python_the_startup_environment(mrml, tmp_path, monkeypatch):
    from INFANiTETrainingLib import TrainingController, TrainingParameters

    for key, value in SLICER_LAUNCHER_ENV.items():
        monkeypatch.setenv(key, value)
    seen = []

    def factory(command, **kwargs):                # what start_process builds: the env it was handed is recorded
        seen.append((command, kwargs["env"]))
        return BackgroundProcess(script("pass"), **{k: v for k, v in kwargs.items() if k != "env"})

    def start(command, **kwargs):
        return start_process(command, factory=factory, **kwargs)

    manifest = tmp_path / "registered.tsv"
    manifest.write_text("subject_id\n")
    controller = TrainingController(mrml["scene"], start_process=start,
                                    startup_environment=lambda: {"PATH": "/usr/bin"})
    params = TrainingParameters(epochs=1, n_samples=10, hidden_size=8, num_hidden_layers=1, latent_channels=2,
                                psf_samples=[1], max_steps=1)
    controller.start(manifest, tmp_path / "run", params, device="cpu", python="/opt/conda/bin/python")
    controller.wait(timeout=60)
    command, env = seen[0]
    assert command[0] == "/opt/conda/bin/python" and "PYTHONHOME" not in env and env["PATH"] == "/usr/bin"
    controller.start(manifest, tmp_path / "run2", params, device="cpu")              # Slicer's own Python
    controller.wait(timeout=60)
    assert seen[1][1]["PYTHONHOME"] == SLICER_LAUNCHER_ENV["PYTHONHOME"]


def test_windows_children_get_no_console_window_and_a_hidden_tree_kill(tmp_path):
    """Windows, simulated: the child is created in its own process group WITHOUT a console window (closing such a
    window would kill the job), and the tree kill (taskkill /T /F) opens no console either."""
    from INFANiTECommonLib.process import (CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, popen_platform_kwargs,
                                           windows_kill_tree_call)

    assert popen_platform_kwargs(True) == {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    assert popen_platform_kwargs(False) == {"start_new_session": True}
    args, kwargs = windows_kill_tree_call(1234)
    assert args == ["taskkill", "/T", "/F", "/PID", "1234"] and kwargs["creationflags"] & CREATE_NO_WINDOW
    created, ran = [], []

    def popen(args, **kwargs):                     # records what Windows would get, runs it the POSIX way here
        created.append(dict(kwargs))
        kwargs.pop("creationflags")
        return subprocess.Popen(args, start_new_session=True, **kwargs)

    def run(args, **kwargs):
        ran.append((args, kwargs))
        return subprocess.CompletedProcess(args, 0)

    rec = Recorder()
    stop = tmp_path / "STOP"
    proc = BackgroundProcess(script("import time; print('up', flush=True); time.sleep(600)"), popen=popen,
                             windows=True, run=run, stop_file=stop, **rec.kwargs()).start()
    assert created[0]["creationflags"] == CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
    assert "start_new_session" not in created[0]
    assert wait_until(lambda: (proc.poll(), rec.log == ["up"])[1])
    proc.cancel(grace_s=0.3)                       # Windows: the stop file, no signal; then the tree kill
    assert ran == [windows_kill_tree_call(proc.pid)]
    assert proc.killed and proc.finished and rec.finished[0][1] is True
    assert not stop.exists()


def test_shutdown_stops_a_process_tree_that_ignores_the_stop_request(tmp_path):
    """Slicer exits (module ``cleanup``): the logic's process and its descendants are gone within the grace time
    on every platform, even when the command does not honour the stop file (register, atlas)."""
    from INFANiTECommonLib.logic import BackgroundProcessLogicMixin

    class Logic(BackgroundProcessLogicMixin):
        shutdown_grace_s = 0.5

    logic = Logic()
    grandchild = []
    logic.startProcess(script(TREE), stopFile=tmp_path / "STOP",
                       onProgress=None, onFinished=lambda *a: grandchild.append("finished"))
    assert wait_until(lambda: (logic.poll(), logic.process.last_lines(1))[1] != [])
    pid = int(logic.process.last_lines(1)[0].split()[1])
    start = time.monotonic()
    logic.shutdown()
    assert time.monotonic() - start < 10 and not logic.isRunning() and grandchild == ["finished"]
    if sys.platform.startswith("linux"):
        assert wait_until(lambda: proc_state(pid) in (None, "Z"), 10)
    with pytest.raises(RuntimeError, match="cancel it"):
        logic.startProcess(script("import time; time.sleep(5)"))
        logic.startProcess(script("pass"))
    logic.shutdown()
