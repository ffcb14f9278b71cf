"""Atomic file output: a file is either absent, its old version, or complete; never half-written.

:func:`atomic_output` yields a temporary sibling of the target (same folder, so the final rename is atomic on every
file system; a hidden name ``.<stem>.infanite-tmp-<random><suffixes>`` ending in the target's suffixes, so a writer
that picks its format from the suffix, as nibabel, SimpleITK and matplotlib do, writes the right one); after the
block the temporary file replaces the target, and on an exception it is removed.  A process killed inside the block
leaves the temporary file: the next command that locks the folder removes it (:mod:`infanite.io.lock`).  Every
file gets the mode the process' umask gives (0644 under the usual 022), checkpoints included.  Standard library
only: the Slicer modules use it.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


#: in the name of every temporary file: a killed writer's leftovers are found and removed by the next writer of the
#: folder (:func:`infanite.io.lock.folder_lock`)
TEMP_MARKER = ".infanite-tmp-"


def _permissions() -> int:
    """The mode of a new file under this process' umask (mkstemp makes 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_output(path) -> Iterator[Path]:
    """``with atomic_output(path) as tmp: write(tmp)`` writes ``path`` atomically; the parent folder is created.
    Returns (as the ``with`` target) the temporary path; ``path`` exists only after the block succeeded."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, name = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}{TEMP_MARKER}", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, _permissions())
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path, text: str) -> Path:
    """Write a UTF-8 text file atomically; returns its path."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
