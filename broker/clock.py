"""The broker's notion of now, passed in so tests control time: the store's timestamps, the
audit chain's, token ends, renewal windows, grace periods and rate limits all read one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)
