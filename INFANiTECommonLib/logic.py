"""The part of the module logics that owns one background process (no Qt): start, running?, poll, cancel, shutdown."""
from __future__ import annotations

from pathlib import Path


def given_path(value) -> Path | None:
    """A path parameter as a ``Path``, or None when unset (an empty ``pathlib.Path`` parameter reads back ``.``)."""
    if value is None or str(value).strip() in ("", "."):
        return None
    return Path(value)


class BackgroundProcessLogicMixin:
    """For logics with a ``process`` attribute holding a :class:`INFANiTECommonLib.process.BackgroundProcess`
    (or ``None``) and a ``processFactory`` building one; ``cancel`` asks politely, then the process runner escalates
    to killing the whole tree."""

    process = None
    processFactory = None
    #: seconds a cancelled process may take to stop by itself before its process tree is killed
    cancel_grace_s = 5.0
    #: seconds a process may take to stop when Slicer exits (``cleanup``) before its tree is killed
    shutdown_grace_s = 2.0

    def isRunning(self) -> bool:
        return self.process is not None and self.process.running

    def startProcess(self, command, onProgress=None, onFinished=None, stopFile=None, env=None, cwd=None, onLog=None):
        """Start ``command`` (a list: ``python -m infanite …``) as the logic's background process (every module
        starts its children here; the Training module's controller through it too).

        ``onProgress(event)`` gets each JSON progress line and ``onFinished(returncode, cancelled, lastLines)``
        the end, both from :meth:`poll` (the GUI timer); other output lines go to ``onLog`` (default: the
        application log).  ``stopFile``: the file that asks the command to stop gracefully (created by
        :meth:`cancel`).  ``env``: the child's environment (default
        :func:`~INFANiTECommonLib.process.infanite_env`).  ``RuntimeError`` while another process of this logic
        runs."""
        from INFANiTECommonLib.process import start_process

        if self.isRunning():
            raise RuntimeError("another INFANiTE process of this module is running; cancel it or wait for its end")
        self.process = start_process(command, onProgress, onFinished, stopFile, env, cwd, onLog,
                                     factory=self.processFactory)
        return self.process

    def poll(self) -> bool:
        """Drain the process' output into its callbacks (call from the GUI thread); True while it runs."""
        return self.process.poll() if self.process is not None else False

    def cancel(self) -> None:
        if self.isRunning():
            self.process.cancel(grace_s=self.cancel_grace_s, wait=False)

    def shutdown(self) -> None:
        """Stop the process and its descendants before Slicer exits (the widget's ``cleanup``): ask politely (stop
        file; SIGTERM on POSIX), wait up to :attr:`shutdown_grace_s`, then kill the tree.  Blocks at most a few
        seconds; nothing is left running after Slicer has gone."""
        if self.isRunning():
            self.process.cancel(grace_s=self.shutdown_grace_s, wait=True)
