"""The test bed's error tree.

BedError
├── ServerUnavailable   a server could not be installed or built on this machine
└── ServerFailed        a server was built but did not start or answer its health check
"""

from __future__ import annotations


class BedError(Exception):
    """Base of every error the test bed raises."""


class ServerUnavailable(BedError):
    """A server cannot be installed or built here; `how_to_fix` says what to do."""

    def __init__(self, server: str, reason: str, how_to_fix: str) -> None:
        super().__init__(f"{server} is not available: {reason}. Fix: {how_to_fix}")
        self.server = server
        self.reason = reason
        self.how_to_fix = how_to_fix


class ServerFailed(BedError):
    """A server started but did not become healthy; the tail of its log is attached."""

    def __init__(self, server: str, reason: str, log_tail: str = "") -> None:
        detail = f"\n--- last lines of its log ---\n{log_tail}" if log_tail else ""
        super().__init__(f"{server} failed: {reason}{detail}")
        self.server = server
        self.reason = reason
