"""What both providers share about running a server: the `Runner` interface and the wait loop.

A server's dataclass (VaultServer, PostgresServer, ...) holds a `Runner`: a local process
(`ManagedProcess`, the process provider) or a container (`ContainerRunner`, the
testcontainers provider). Both wait for a server with the same loop and the same health
probes, so a server counts as ready by the same test whichever provider started it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Protocol

from .errors import ServerFailed

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.1


class Runner(Protocol):
    """A server the bed started and can stop, start again, kill and wait for."""

    def start(self) -> None: ...

    def running(self) -> bool: ...

    def wait_until(
        self, healthy: Callable[[], bool], what: str, timeout: float = DEFAULT_START_TIMEOUT
    ) -> None: ...

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT, sig: int = signal.SIGTERM) -> None: ...

    def kill(self) -> None: ...


def poll_until(
    name: str,
    healthy: Callable[[], bool],
    what: str,
    timeout: float,
    *,
    ended: Callable[[], str | None],
    log_tail: Callable[[], str],
) -> None:
    """Poll `healthy` until true; fail with the log tail if the server ends or time is up.

    `ended` returns None while the server runs, else how it ended (e.g. "exited with 3").
    """
    deadline = time.monotonic() + timeout
    last_probe = "never answered"
    while time.monotonic() < deadline:
        how = ended()
        if how is not None:
            raise ServerFailed(name, f"{how} before {what}", log_tail())
        try:
            if healthy():
                return
        except Exception as exc:
            last_probe = f"{type(exc).__name__}: {exc}"
        time.sleep(POLL_INTERVAL)
    raise ServerFailed(
        name, f"not {what} after {timeout:.0f}s (last probe: {last_probe})", log_tail()
    )
