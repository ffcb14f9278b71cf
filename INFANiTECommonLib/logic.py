"""The part of the module logics that owns one background process (no Qt): running?, poll, cancel."""
from __future__ import annotations


class BackgroundProcessLogicMixin:
    """For logics with a ``process`` attribute holding a :class:`INFANiTECommonLib.process.BackgroundProcess`
    (or ``None``); ``cancel`` asks politely, then the process runner escalates to killing the whole tree."""

    process = None
    #: seconds a cancelled process may take to stop by itself before its process tree is killed
    cancel_grace_s = 5.0

    def isRunning(self) -> bool:
        return self.process is not None and self.process.running

    def poll(self) -> bool:
        """Drain the process' output into its callbacks (call from the GUI thread); True while it runs."""
        return self.process.poll() if self.process is not None else False

    def cancel(self) -> None:
        if self.isRunning():
            self.process.cancel(grace_s=self.cancel_grace_s, wait=False)
