"""What the broker knows of a member cluster's health while it runs: when its API server last
answered, when its JWKS was last fetched, and how its pod watch is doing.

`HealthRecorder` is written by the cluster's client (every call that answered, every JWKS
fetch) and by its pod watch (pods.py, on the watch's thread); `ClusterHealth` is what the
rest of the broker reads: a frozen copy, taken under the recorder's lock. Nothing here is
kept across a restart: a registered cluster's pinned JWKS and last contact are also in the
store, and the admin flow shows the later of the two.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from broker.clock import Clock, utcnow

MAX_ERROR = 300  # characters of the watch's last error kept (it names the cluster and cause)


class WatchState(StrEnum):
    """Where a cluster's pod watch is."""

    NOT_STARTED = "not started"  # no watch runs (not started yet, or stopped)
    WATCHING = "watching"  # the last list or watch call answered
    RECONNECTING = "reconnecting"  # the last list or watch call failed; it retries


@dataclass(frozen=True)
class ClusterHealth:
    """One cluster's health as last recorded (a copy; it does not change)."""

    last_contact: datetime | None = None
    jwks_fetched_at: datetime | None = None
    watch: WatchState = WatchState.NOT_STARTED
    watch_error: str = ""  # why the watch is reconnecting; empty otherwise
    watch_since: datetime | None = None  # when the watch entered its state
    last_event: datetime | None = None  # the watch's last event or bookmark


class HealthRecorder:
    """One cluster's health, written from the event loop and the watch thread."""

    def __init__(self, clock: Clock = utcnow) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._health = ClusterHealth()

    def read(self) -> ClusterHealth:
        with self._lock:
            return self._health

    def contact(self) -> None:
        """The API server answered a call."""
        self._set(last_contact=self._clock())

    def jwks_fetched(self) -> None:
        now = self._clock()
        self._set(last_contact=now, jwks_fetched_at=now)

    def watching(self) -> None:
        """A list or watch call answered: contact, and the watch is whole."""
        now = self._clock()
        with self._lock:
            since = self._health.watch_since
            if self._health.watch is not WatchState.WATCHING:
                since = now
            self._health = replace(
                self._health,
                last_contact=now,
                watch=WatchState.WATCHING,
                watch_error="",
                watch_since=since,
            )

    def event(self) -> None:
        """The watch delivered an event or a bookmark."""
        now = self._clock()
        self._set(last_contact=now, last_event=now)

    def failed(self, error: str) -> None:
        """A list or watch call failed; the watch retries."""
        now = self._clock()
        with self._lock:
            since = self._health.watch_since
            if self._health.watch is not WatchState.RECONNECTING:
                since = now
            self._health = replace(
                self._health,
                watch=WatchState.RECONNECTING,
                watch_error=error[:MAX_ERROR],
                watch_since=since,
            )

    def stopped(self) -> None:
        self._set(watch=WatchState.NOT_STARTED, watch_error="", watch_since=self._clock())

    def _set(self, **changes: Any) -> None:
        with self._lock:
            self._health = replace(self._health, **changes)
