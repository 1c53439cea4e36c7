"""Writing result files so that nothing is ever left half-written, and the output folder's lock
(public: the demo, ``extract``, ``measure`` and user scripts use them)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

LOCK_NAME = ".lock"
_TMP_SUFFIX = ".tmp"


class OutputFolderLocked(RuntimeError):
    """Another run holds the output folder's lock (``<out>/.lock``)."""


class OutputWriteError(OSError):
    """Writing a result file failed (a full disk, a read-only folder, a quota): the message names
    the path; nothing half-written is left and an existing file is untouched."""


def write_atomic(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)``, flush it to disk, then move it onto ``path`` in one step.

    The temporary lives in a private folder beside the destination (``os.replace`` is atomic only
    within a file system), ``.<name>.<pid>.<random>.tmp/``, so whatever ``write`` makes there
    (safetensors' own temporaries too) goes with it. On any error it is removed and an existing
    ``path`` is left untouched; temporaries left by a killed process (its PID no longer runs) are
    removed by the next ``write_atomic`` into the same folder. The file gets the permissions of
    any newly created file, ``0o666`` less the process umask.

    Raises
    ------
    OutputWriteError
        An ``OSError`` while writing (``ENOSPC``, ``EROFS``, ``EDQUOT``, ...), naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(path.parent)
        workdir = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX)
    except OSError as e:
        raise _write_error(e, path) from e
    tmp = os.path.join(workdir, path.name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OutputWriteError:
        raise
    except OSError as e:
        raise _write_error(e, path) from e
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return path


def _write_error(e: OSError, path: Path) -> OutputWriteError:
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}.get(e.errno)
    # an OSError raised with a message only (errno None) still says what went wrong
    what = what or e.strerror or str(e) or type(e).__name__
    code = f" [Errno {e.errno}]" if e.errno is not None else ""
    return OutputWriteError(e.errno, f"cannot write {path}: {what}{code}; nothing was half-written "
                            f"(free space or choose another output folder, then run again)")


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of :func:`write_atomic` in ``folder`` whose process has exited
    (a kill mid-write); those of running processes stay. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(_TMP_SUFFIX)):
            continue
        parts = name[: -len(_TMP_SUFFIX)].rsplit(".", 2)  # ".<target>", "<pid>", "<random>"
        if len(parts) != 3 or not parts[1].isdigit() or _running(int(parts[1])):
            continue
        p = Path(entry.path)
        try:
            shutil.rmtree(p) if entry.is_dir(follow_symlinks=False) else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or an absurd number): leave it
    return True


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


# --- checksummed JSON -------------------------------------------------------------------------

CHECKSUM_FIELD = "checksum"


def json_checksum(value: dict) -> str:
    """``"sha256:<hex>"`` of a JSON object's canonical form, its own ``checksum`` field left out."""
    body = {k: v for k, v in value.items() if k != CHECKSUM_FIELD}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                                 allow_nan=False).encode()).hexdigest()


def with_checksum(value: dict) -> dict:
    """``value`` with its ``checksum`` field set (:func:`json_checksum`)."""
    return {**{k: v for k, v in value.items() if k != CHECKSUM_FIELD}, CHECKSUM_FIELD: json_checksum(value)}


def checksum_ok(value) -> bool:
    """Whether a JSON object carries a checksum and it matches its content."""
    return isinstance(value, dict) and value.get(CHECKSUM_FIELD) == json_checksum(value)


# --- the output folder's lock -----------------------------------------------------------------

def check_out_dir(out) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} exists and is not a folder (give a folder path)")
    return out


@contextlib.contextmanager
def lock_folder(out: str | os.PathLike, wait: float = 0, what: str = "measure"):
    """Hold the exclusive lock of an output folder (``<out>/.lock``) for a ``with`` block.

    ``fcntl.flock`` (POSIX advisory locking; on network file systems only as good as their lock
    support): the kernel releases it when the holder exits in any way, so a lock left by a killed
    run is taken over. The holder's PID is written into the file for the message others get.
    Without ``fcntl`` (Windows) the folder is not locked and a warning says so.

    Parameters
    ----------
    out : path
        The output folder; created if missing.
    wait : float, default 0
        Seconds to wait for another holder to finish (``math.inf``: no limit); 0 fails at once.
    what : str
        The command holding it, for the message (``measure``, ``extract``).

    Raises
    ------
    OutputFolderLocked
        Another process holds the lock (still, after ``wait`` seconds).
    ValueError
        ``wait`` is negative or not a number; ``out`` exists and is not a folder.
    OSError
        The lock file cannot be opened or the file system does not support ``flock``.
    """
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or math.isnan(wait) or wait < 0:
        raise ValueError(f"wait must be a number of seconds >= 0, got {wait!r}")
    out = check_out_dir(out)
    try:
        import fcntl
    except ImportError:
        warnings.warn(f"no fcntl on this platform: {out} is not locked against a concurrent run",
                      RuntimeWarning, stacklevel=3)
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OutputFolderLocked(_locked_message(out, lock, wait, what)) from None
                time.sleep(min(0.1, left))
            except OSError as e:  # ENOLCK, EOPNOTSUPP: a file system without flock (some NFS setups)
                raise OSError(e.errno, f"cannot lock {lock} ({e.strerror}); the file system may not "
                              f"support flock: choose an output folder on a local disk") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race a new holder)


def _locked_message(out: Path, lock: Path, wait: float, what: str) -> str:
    try:
        pid = lock.read_text().strip() or "unknown"
    except OSError:
        pid = "unknown"
    waited = f", still after waiting {wait:g} s" if wait else ""
    return (f"output folder {out} is in use by another {what} run (PID {pid}, lock {lock}){waited}; "
            f"let it finish, wait for it (wait=SECONDS, --wait SECONDS), or choose another output folder")
