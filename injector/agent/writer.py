"""Atomic credential files: a reader sees the old file or the new one, never part of one.

Each write goes to a temp file in the same directory (a leading dot: credential names never
start with one, so a temp file cannot be a credential), is fsynced, renamed over the target
(atomic within one filesystem), and the directory is fsynced so the rename itself survives.
A process killed mid-write (SIGKILL, SIGTERM, OOM) leaves at most a stray temp file, which
`remove_stale_temps` deletes at the next start; the credential file itself is never torn.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TEMP_PREFIX = ".keyferry-"


def write_atomic(directory: Path, name: str, data: bytes, mode: int) -> Path:
    """Replace `directory/name` with `data`, mode `mode`, atomically; the file's path."""
    target = directory / name
    temp = directory / f"{TEMP_PREFIX}{name}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow the contract's mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    os.replace(temp, target)
    _fsync_directory(directory)
    return target


def remove_stale_temps(directory: Path) -> None:
    """Delete temp files a killed agent left behind."""
    for path in directory.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            path.unlink()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
