"""One writer per output folder: an exclusive lock held for the whole command.

``with folder_lock(out, "train"):`` takes an operating-system lock on ``out/.infanite.lock`` (``fcntl.flock`` on
POSIX, ``msvcrt.locking`` on Windows; the system releases it when the process dies, however it dies) and records
the holder (pid, host, command, start time) in ``out/.infanite.lock.json``.  A second writer gets
:class:`FolderLocked` (``ValueError``: exit 2) naming the holder.  A holder file left by a process that died
without releasing (``kill -9``, power loss) is a *stale* lock: it is reported (``stale``) and taken over.

The same process may take the lock of a folder it already holds (``infanite run`` holds its folder while its
steps take theirs): the lock is re-entrant per process.  On release the lock files are removed, and so is the
folder when the lock created it and nothing else was written there (a refused command leaves no trace).  While
the lock is held, temporary files that an earlier, killed writer left (``.<name>.infanite-tmp…``, see
:mod:`infanite.io.atomic`) are removed: nobody else can be writing them.

Standard library only.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".infanite.lock"
HOLDER_FILE = ".infanite.lock.json"

_held: dict[str, list] = {}          # resolved folder -> [open lock file, depth]


class FolderLocked(ValueError):
    """Another process holds the folder; ``holder`` is its record (pid, host, command, started)."""

    def __init__(self, folder, holder: dict):
        self.folder, self.holder = Path(folder), dict(holder)
        who = f"process {holder.get('pid', '?')}"
        if holder.get("host") and holder.get("host") != socket.gethostname():
            who += f" on {holder['host']}"
        what = f"'infanite {holder['command']}'" if holder.get("command") else "another INFANiTE command"
        since = f" since {holder['started']}" if holder.get("started") else ""
        super().__init__(f"{folder} is in use by {what} ({who}{since}); wait for it to finish or stop it, "
                         f"or choose another output folder")


def _try_lock(handle) -> bool:
    if sys.platform == "win32":
        import msvcrt

        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(handle) -> None:
    if sys.platform == "win32":
        import msvcrt

        handle.seek(0)
        with contextlib.suppress(OSError):
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _acquire(path: Path):
    """The open, locked lock file at ``path``, or None when another process holds it.  On POSIX the lock must be
    on the file that ``path`` names when it is taken (a releasing holder unlinks it: then try again)."""
    for _ in range(20):
        handle = open(path, "a+")             # noqa: SIM115 (held open while the lock is held)
        if not _try_lock(handle):
            handle.close()
            return None
        if sys.platform == "win32":
            return handle
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass
        _unlock(handle)
        handle.close()
    return None


def read_holder(folder) -> dict:
    """The holder record of ``folder`` (``{}`` when none or unreadable)."""
    try:
        return json.loads((Path(folder) / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the temporary files of interrupted atomic writes under ``folder``; returns them."""
    from infanite.io.atomic import TEMP_MARKER

    removed = []
    for path in Path(folder).rglob(f".*{TEMP_MARKER}*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def folder_lock(folder, command: str, on_stale=None) -> Iterator[dict]:
    """Hold ``folder`` exclusively (created if needed) for the block; yields ``{"stale": holder record or None,
    "removed_temporaries": [...]}``.  ``on_stale(message)`` is called with a one-line note when a stale lock is
    taken over (default: printed to stderr).  Raises :class:`FolderLocked` when another process holds it."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _held:
        _held[key][1] += 1
        try:
            yield {"stale": None, "removed_temporaries": []}
        finally:
            _held[key][1] -= 1
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    handle = _acquire(folder / LOCK_FILE)
    if handle is None:
        holder = read_holder(folder)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise FolderLocked(folder, holder)
    try:
        stale = read_holder(folder) or None
        if stale:
            note = (f"{folder}: a stale lock of 'infanite {stale.get('command', '?')}' (process "
                    f"{stale.get('pid', '?')}, started {stale.get('started', '?')}) was left by a process that "
                    f"ended without releasing it; taking over")
            (on_stale or (lambda m: print(f"warning: {m}", file=sys.stderr)))(note)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (folder / HOLDER_FILE).write_text(json.dumps(holder), encoding="utf-8")
        removed = remove_stale_temporaries(folder)
        _held[key] = [handle, 1]
        yield {"stale": stale, "removed_temporaries": removed}
    finally:
        _held.pop(key, None)
        with contextlib.suppress(OSError):
            (folder / HOLDER_FILE).unlink()
        if sys.platform != "win32":            # unlinked while locked: a waiter sees another file and retries
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()
        _unlock(handle)
        handle.close()
        if sys.platform == "win32":
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()                 # only when empty: a refused command leaves no folder behind
