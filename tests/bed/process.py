"""Start, health-check and stop one server process that the bed owns.

Each process runs in its own session (process group), so stopping it ends the
server and any children it forked, and nothing the bed did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ServerFailed
from .readiness import DEFAULT_START_TIMEOUT, DEFAULT_STOP_TIMEOUT, poll_until


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, or an empty string when it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """One server the bed started: its command, log file and pid."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                user=self.user,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_until(
        self,
        healthy: Callable[[], bool],
        what: str,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        """Poll `healthy` until true; fail with the log tail if the process dies or time is up."""
        poll_until(
            self.name,
            healthy,
            what,
            timeout,
            ended=self._ended,
            log_tail=lambda: tail(self.log_path),
        )

    def _ended(self) -> str | None:
        if self.running():
            return None
        return f"exited with {self.popen.returncode if self.popen else None}"

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT, sig: int = signal.SIGTERM) -> None:
        """Signal the process group this process leads, then SIGKILL it if it lingers."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        _signal_group(self.popen.pid, signal.SIGKILL)  # children left behind by the leader

    def kill(self) -> None:
        """kill -9, for crash tests."""
        self.stop(sig=signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    timeout: float = 120.0,
) -> str:
    """Run a set-up command to completion; raise ServerFailed with its output when it fails."""
    result = subprocess.run(
        list(argv),
        env=None if env is None else dict(env),
        cwd=cwd,
        user=user,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ServerFailed(
            Path(argv[0]).name,
            f"`{' '.join(argv)}` exited with {result.returncode}",
            (result.stdout + result.stderr)[-4000:],
        )
    return result.stdout
