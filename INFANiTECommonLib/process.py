"""Background child processes for the Slicer modules: the GUI never blocks, and a cancel leaves nothing behind.

:class:`BackgroundProcess` runs ``python -m infanite …`` (or any argument list, never through a shell) in its own
process group / session.  A reader thread puts every output line (stdout and stderr merged) in a queue;
:meth:`BackgroundProcess.poll`, called periodically from the GUI thread (a ``QTimer`` every 100 ms), drains it and
calls the callbacks *on the caller's thread*, so they may touch MRML and Qt:

- ``on_progress(dict)`` for a line that is a JSON object with a ``"stage"`` key (``--progress-json -``);
- ``on_log(str)`` for any other line (without its line ending);
- ``on_finished(returncode, cancelled, last_lines)`` once, after the child exited and all its output was read.

:meth:`BackgroundProcess.cancel` asks politely first (creates ``stop_file``; on POSIX sends SIGTERM to the whole
process group), waits up to ``grace_s`` seconds, then kills the whole process tree (POSIX ``killpg(SIGKILL)``,
Windows ``taskkill /T /F``).  Slicer's ``PythonSlicer`` is a launcher that starts the real interpreter as its
child, so killing the direct child alone would leave an orphan; the group kill does not.

Usage::

    proc = BackgroundProcess(python_command(["train", "--manifest", m, "--out", run, "--progress-json", "-"]),
                             env=infanite_env(), on_progress=show, on_log=print, stop_file=run / STOP_FILE)
    proc.start()
    timer.timeout.connect(proc.poll)          # Qt; a script calls proc.wait() instead
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

logger = logging.getLogger(__name__)

#: lines of output kept for :meth:`BackgroundProcess.last_lines`
KEEP_LINES = 200
#: seconds to wait for the output pipe to close after the direct child exited (a descendant may still hold it)
DRAIN_TIMEOUT_S = 5.0
_EOF = object()


def python_command(module_args: Sequence[str], python: str | None = None) -> list[str]:
    """``[python or sys.executable, "-m", "infanite", *module_args]`` (all items as strings)."""
    return [str(python or sys.executable), "-m", "infanite", *[str(a) for a in module_args]]


def infanite_root() -> Path:
    """The folder that contains the ``infanite`` package (put first on the child's ``PYTHONPATH``)."""
    import infanite

    return Path(infanite.__file__).resolve().parent.parent


#: variables with which Slicer's launcher points Python at Slicer's own interpreter: an external Python (a conda or
#: venv interpreter chosen to train on its GPU) must not inherit them, or it loads Slicer's standard library
SLICER_PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONSTARTUP", "PYTHONEXECUTABLE")
#: Windows process-creation flags (the constants of ``subprocess`` exist only on Windows' Python)
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def is_external_python(python: str | None) -> bool:
    """True when ``python`` is another interpreter than the one running this code (Slicer's own)."""
    if not python:
        return False
    try:
        return Path(python).resolve() != Path(sys.executable).resolve()
    except OSError:
        return True


def infanite_env(extra: dict | None = None, python: str | None = None, startup_environment=None) -> dict:
    """The environment of a ``python -m infanite`` child.

    For Slicer's own interpreter (``python`` None or ``sys.executable``): a copy of this process' environment.  For
    an external interpreter: the environment Slicer was started from (``startup_environment``, a dict or a
    callable returning one, e.g. ``slicer.util.startupEnvironment``; without it, this environment minus
    :data:`SLICER_PYTHON_VARIABLES`), so that it does not load Slicer's ``PYTHONHOME``/``PYTHONPATH``.  Either way
    ``PYTHONPATH`` starts with :func:`infanite_root` (the core package where the extension ships it, e.g. inside
    Slicer's ``qt-scripted-modules``), ``PYTHONUNBUFFERED=1``, then ``extra`` (str values) on top."""
    if is_external_python(python):
        startup = startup_environment() if callable(startup_environment) else startup_environment
        if startup is None:
            env = {k: v for k, v in os.environ.items() if k not in SLICER_PYTHON_VARIABLES}
        else:
            env = {str(k): str(v) for k, v in dict(startup).items()}
    else:
        env = dict(os.environ)
    root = str(infanite_root())
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    env["PYTHONUNBUFFERED"] = "1"
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


def popen_platform_kwargs(windows: bool) -> dict:
    """``subprocess.Popen`` keywords that put the child in its own process group / session.  On Windows the child
    also gets no console window (as ``slicer.util.launchConsoleProcess`` hides it): closing such a window would
    kill the job."""
    if windows:
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def windows_kill_tree_call(pid: int) -> tuple[list, dict]:
    """The ``subprocess.run`` arguments and keywords that kill process ``pid`` and its descendants on Windows,
    without a console window."""
    return (["taskkill", "/T", "/F", "/PID", str(int(pid))],
            {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": False,
             "creationflags": CREATE_NO_WINDOW})


def parse_progress(line: str) -> dict | None:
    """The progress event of an output line (a JSON object with a ``"stage"`` key), else None."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "stage" in record else None


def start_process(command, onProgress=None, onFinished=None, stopFile=None, env=None, cwd=None, onLog=None,
                  factory=None) -> "BackgroundProcess":
    """Start ``command`` as a :class:`BackgroundProcess` (``factory``, default that class) and return it: the one
    way the modules start a child.  ``onProgress(event)``, ``onLog(line)`` (default: the application log) and
    ``onFinished(returncode, cancelled, lastLines)`` are called from its ``poll``; ``stopFile`` asks it to stop
    gracefully; ``env`` defaults to :func:`infanite_env`."""
    factory = factory or BackgroundProcess
    return factory(command, cwd=cwd, env=infanite_env() if env is None else env, on_progress=onProgress,
                   on_log=onLog or logging.info, on_finished=onFinished, stop_file=stopFile).start()


class BackgroundProcess:
    """One child process whose output is read on a thread and delivered by :meth:`poll` on the caller's thread.

    ``args`` is the command (a list, no shell), ``cwd`` its folder, ``env`` its environment (default: this
    process' environment; ``PYTHONUNBUFFERED=1`` is always added), ``stop_file`` the file that asks the child to
    stop gracefully (created by :meth:`cancel`, removed at start and after the end), ``popen`` the
    ``subprocess.Popen``-compatible factory.  Times are in seconds.
    """

    def __init__(self, args: Sequence[str], cwd=None, env: dict | None = None,
                 on_progress: Callable[[dict], None] | None = None, on_log: Callable[[str], None] | None = None,
                 on_finished: Callable[[int, bool, list], None] | None = None, stop_file=None,
                 popen=subprocess.Popen, windows: bool | None = None, run=subprocess.run):
        if isinstance(args, (str, bytes)):
            raise TypeError("args must be a list of arguments (no shell command line)")
        self.args = [str(a) for a in args]
        self.cwd = None if cwd is None else str(cwd)
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.on_progress, self.on_log, self.on_finished = on_progress, on_log, on_finished
        self.stop_file = None if stop_file is None else Path(stop_file)
        self._popen = popen
        self._run_command = run
        #: Windows behaviour (no console window, ``taskkill``); set explicitly by tests that simulate Windows
        self.windows = (os.name == "nt") if windows is None else bool(windows)
        self._proc = None
        self._queue: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._eof = False
        self._lines: collections.deque = collections.deque(maxlen=KEEP_LINES)
        self._log_lines: collections.deque = collections.deque(maxlen=KEEP_LINES)
        self._cancelled = False
        self._kill_at: float | None = None         # monotonic time of the hard kill after a polite request
        self._killed = False
        self._exited_at: float | None = None
        self._returncode: int | None = None
        self._finished = False
        self._created_stop_file = False

    # -- state ------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The direct child's process id (also its process group id on POSIX); None before :meth:`start`."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """True from :meth:`start` until ``on_finished`` was called."""
        return self._proc is not None and not self._finished

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def returncode(self) -> int | None:
        """The child's exit status once finished (negative signal number on POSIX when killed), else None."""
        return self._returncode if self._finished else None

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled

    @property
    def killed(self) -> bool:
        """True when the process tree had to be killed (the polite request was not honoured in time)."""
        return self._killed

    def last_lines(self, n: int = 20, progress: bool = False) -> list[str]:
        """The last ``n`` output lines: log lines only, or every line (progress JSON too) with ``progress``."""
        lines = self._lines if progress else self._log_lines
        return list(lines)[-n:] if n > 0 else []

    # -- control ----------------------------------------------------------------------------------
    def start(self) -> "BackgroundProcess":
        """Start the child and its reader thread; returns self."""
        if self._proc is not None:
            raise RuntimeError("this process was already started; create a new BackgroundProcess")
        self._remove_stop_file(stale=True)
        kwargs = dict(cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1)
        kwargs.update(popen_platform_kwargs(self.windows))
        self._proc = self._popen(self.args, **kwargs)
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,),
                                        name=f"BackgroundProcess-{self._proc.pid}", daemon=True)
        self._reader.start()
        return self

    def _read(self, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put(line.rstrip("\r\n"))
        except (OSError, ValueError) as exc:            # closed under us
            self._queue.put(f"[output reader stopped: {exc}]")
        finally:
            self._queue.put(_EOF)

    def poll(self) -> bool:
        """Deliver the pending output to the callbacks (on this thread), escalate a pending cancel, and report
        the end once.  Returns True while the process is running."""
        if self._proc is None or self._finished:
            return False
        self._drain()
        if self._returncode is None:
            code = self._proc.poll()
            if code is not None:
                self._returncode, self._exited_at = code, time.monotonic()
        now = time.monotonic()
        if self._kill_at is not None and not self._killed and now >= self._kill_at and not (
                self._returncode is not None and self._eof):
            self._kill_tree()                            # the polite request was not honoured in time
        if not self._done(now):
            return True
        if self._cancelled and not self.windows:
            self._signal_group(signal.SIGKILL)           # stragglers of a stopped tree; no-op when empty
        self._drain()
        self._finished = True
        if self._eof and self._proc.stdout is not None:
            self._proc.stdout.close()                    # the reader is done with it
        self._remove_stop_file()
        if self.on_finished is not None:
            self._call(self.on_finished, self._returncode, self._cancelled, self.last_lines())
        return False

    def _done(self, now: float) -> bool:
        """True when the end can be reported: the child exited and its output was read to the end (or, as the
        pipe may be held by a descendant, waited for long enough; during a cancel, until the tree was killed)."""
        if self._returncode is None:
            return False
        if self._eof:
            return True
        if self._killed:
            return now - self._exited_at > 1.0
        if self._cancelled:
            return False                                 # a descendant still runs: its grace time, then the kill
        return now - self._exited_at > DRAIN_TIMEOUT_S

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _EOF:
                self._eof = True
                continue
            self._lines.append(item)
            record = parse_progress(item)
            if record is not None:
                if self.on_progress is not None:
                    self._call(self.on_progress, record)
            else:
                self._log_lines.append(item)
                if self.on_log is not None:
                    self._call(self.on_log, item)

    @staticmethod
    def _call(callback, *args) -> None:
        try:
            callback(*args)
        except Exception:                                # a GUI callback's bug must not stop the delivery
            logger.exception("BackgroundProcess callback %r failed", callback)

    def wait(self, timeout: float | None = None, interval: float = 0.05, on_idle: Callable[[], None] | None = None
             ) -> int:
        """Loop :meth:`poll` until the end (scripts, self-tests); returns the exit status.  ``on_idle`` is called
        between polls (in Slicer: ``slicer.app.processEvents``, so that the application stays responsive).  Raises
        ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the process keeps running)."""
        if self._proc is None:
            raise RuntimeError("the process was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            if on_idle is not None:
                on_idle()
            time.sleep(interval)
        return self._returncode

    def cancel(self, grace_s: float = 10.0, wait: bool = True) -> None:
        """Stop the child and all its descendants.

        Asks politely (creates ``stop_file``; POSIX: SIGTERM to the process group), then, after ``grace_s``
        seconds without the tree ending, kills the whole tree.  With ``wait`` (default) this call loops
        :meth:`poll` until the end; with ``wait=False`` it returns at once and the GUI's :meth:`poll` escalates
        and reports the end.  A second call only shortens the grace time.
        """
        if self._proc is None or self._finished:
            return
        deadline = time.monotonic() + max(0.0, float(grace_s))
        if not self._cancelled:
            self._cancelled = True
            if self.stop_file is not None:
                try:
                    self.stop_file.parent.mkdir(parents=True, exist_ok=True)
                    self.stop_file.touch()
                    self._created_stop_file = True
                except OSError as exc:
                    logger.warning("cannot create the stop file %s: %s", self.stop_file, exc)
            if not self.windows:
                self._signal_group(signal.SIGTERM)
            self._kill_at = deadline
        else:
            self._kill_at = min(self._kill_at, deadline)
        if wait:
            self.wait()

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self._proc.pid, sig)               # the child leads its own session: pgid == pid
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_tree(self) -> None:
        self._killed = True
        if self.windows:
            args, kwargs = windows_kill_tree_call(self._proc.pid)
            self._run_command(args, **kwargs)
            if self._proc.poll() is None:
                self._proc.kill()
        else:
            self._signal_group(signal.SIGKILL)
        try:
            self._returncode = self._proc.wait(timeout=5.0)   # reap: no zombie of the direct child
        except subprocess.TimeoutExpired:
            return
        if self._exited_at is None:
            self._exited_at = time.monotonic()

    def _remove_stop_file(self, stale: bool = False) -> None:
        if self.stop_file is None or not (stale or self._created_stop_file):
            return
        try:
            self.stop_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot remove the stop file %s: %s", self.stop_file, exc)
