"""Writing result files so that nothing is ever left half-written (public: the demo and user
scripts use it too)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)``, flush it to disk, then move it onto ``path`` in one step.

    The temporary file lives in the destination folder (``os.replace`` is atomic only within a
    file system); on any error it is removed and an existing ``path`` is left untouched. The file
    gets the permissions of any newly created file, ``0o666`` less the process umask (``mkstemp``
    alone would leave it ``0o600``, unreadable for collaborators).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def current_umask() -> int:
    """The process umask, read without changing it where the system shows it (Linux /proc);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
