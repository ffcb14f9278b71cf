"""Errors a command reports in one line (``python -m infanite``): what, where, what to do.

``ValueError`` (and ``FileNotFoundError``) is bad input: exit 2, raised before any work.  :class:`WorkFailed` is
work that could not finish for a reason the user can act on (training diverged, out of memory, disk full): exit 1,
with what was kept.  :func:`describe_os_error` turns a full disk or a denied write into such a line.
"""
from __future__ import annotations

import errno


class WorkFailed(RuntimeError):
    """The work stopped; the message says what was kept and what to try (exit 1)."""


#: errno values of a full disk or an exhausted quota
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def describe_os_error(exc: OSError, folder=None) -> str | None:
    """A one-line message for an ``OSError`` a user can act on (disk full, quota, permission), else None.

    ``folder`` is the command's output folder, named when the error does not carry a file name."""
    if getattr(exc, "filename", None):
        where = f" writing {exc.filename}"
    else:
        where = f" writing into {folder}" if folder is not None else ""
    if exc.errno in DISK_FULL:
        return (f"the disk is full{where} ({exc.strerror}); nothing was half-written: free space or choose "
                f"another output folder, then run the same command again (finished parts are reused)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where} ({exc.strerror}); choose an output folder you can write to"
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure (Python ``MemoryError``, PyTorch's CPU or CUDA out-of-memory)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()
                                           or "not enough memory" in text))
