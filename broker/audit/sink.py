"""The audit log file: append-only JSON lines, fsync'd before the append returns.

One write may carry several lines (AuditLog.append_all's group commit): they reach the
disk together, and a failure cuts all of them back off.

Every failure raises AuditUnavailable. A failed write is cut back off the file (ftruncate
to the size before it), so a retry continues a clean chain; if even that fails, the sink
refuses every later append, because the file may end in half a record.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from broker.errors import AuditUnavailable

FILE_MODE = 0o600
TAIL_CHUNK = 64 * 1024


class JsonLinesSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._damaged = False
        self._lock = threading.Lock()

    def write(self, line: bytes) -> None:
        """Append whole lines and fsync them; AuditUnavailable if they are not on disk."""
        with self._lock:
            if self._damaged:
                raise AuditUnavailable(
                    f"audit log {self.path} may end in a partial record after a failed "
                    "write; inspect it, then restart the broker"
                )
            fd = self._open()
            size = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except OSError as exc:
                self._undo(fd, size)
                raise AuditUnavailable(f"audit log {self.path}: write failed: {exc}") from exc

    def last_line(self) -> bytes | None:
        """The last record's line (without its newline), None for an empty or new log."""
        try:
            with self.path.open("rb") as handle:
                return _last_line(handle.fileno(), self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditUnavailable(f"audit log {self.path}: cannot read it: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        created = not self.path.exists()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            if created:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            raise AuditUnavailable(f"audit log {self.path}: cannot open it: {exc}") from exc
        return self._fd

    def _undo(self, fd: int, size: int) -> None:
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            self._damaged = True
        finally:
            self._fd = None
            try:
                os.close(fd)
            except OSError:
                self._damaged = True


def read_log(path: Path) -> list[str]:
    """Every line of a log file, without newlines; a torn last line is kept as it is."""
    data = path.read_bytes().decode("utf-8", errors="replace")
    lines = data.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _last_line(fd: int, path: Path) -> bytes | None:
    end = os.fstat(fd).st_size
    if end == 0:
        return None
    if os.pread(fd, 1, end - 1) != b"\n":
        raise AuditUnavailable(
            f"audit log {path} ends in a partial record; run `keyferry audit verify` on it"
        )
    tail = b""
    position = end - 1  # before the final newline
    while position > 0:
        start = max(0, position - TAIL_CHUNK)
        tail = os.pread(fd, position - start, start) + tail
        position = start
        newline = tail.rfind(b"\n")
        if newline >= 0:
            return tail[newline + 1 :]
    return tail
