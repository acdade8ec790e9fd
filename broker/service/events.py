"""The events a pod's Watch streams receive, and the in-process hub that routes them.

One broker replica for now: the hub is a dictionary from pod UID to the queues of that
pod's open streams, and every change that concerns a pod (a rotation, a revocation, a
lease that cannot be renewed further) is published to it by the flow that made the change,
after the store has recorded it.

Several replicas will fan out through the store, not through this hub: each replica keeps
its own hub for the streams it serves, and the change is written first to an event table
(pod UID, sequence number, event) in the same transaction as the lease change. Every
replica follows that table (PostgreSQL LISTEN/NOTIFY as the wake-up, the sequence number
as the cursor) and publishes what concerns its own streams to its own hub. Nothing is
lost when the replica that made the change holds no stream of the pod, and the snapshot a
stream receives on (re)connect covers anything missed in between.

A stream that does not keep up is closed (its queue overflowed) rather than allowed to
grow the broker's memory: the agent reconnects and the snapshot brings it up to date.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from broker.errors import TemporaryError
from broker.models import Credential, VaultLease
from broker.store import LeaseRecord

QUEUE_SIZE = 256


@dataclass(frozen=True)
class LeaseRotated:
    """A new generation of a pod's credential (also the snapshot of a current one)."""

    lease: LeaseRecord
    credential: Credential
    vault_lease: VaultLease


@dataclass(frozen=True)
class LeaseRevoked:
    lease_id: str
    reason: str


@dataclass(frozen=True)
class LeaseExpiring:
    lease_id: str
    expires_at: datetime


WatchEvent = LeaseRotated | LeaseRevoked | LeaseExpiring


class StreamOverflowed(TemporaryError):
    """The agent did not read its events fast enough; it reconnects and gets a snapshot."""

    def __init__(self, pod_uid: str) -> None:
        super().__init__(
            f"the Watch stream of pod {pod_uid} fell {QUEUE_SIZE} events behind and was "
            "closed; reconnect to receive the current state",
            retry_after=1.0,
        )


class Subscription:
    """One open stream's queue; `overflowed` is set when the hub had to drop an event."""

    def __init__(self, pod_uid: str) -> None:
        self.pod_uid = pod_uid
        self.queue: asyncio.Queue[WatchEvent] = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = asyncio.Event()

    def offer(self, event: WatchEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()


class EventHub:
    """Routes events to the open Watch streams of a pod, by pod UID (one event loop)."""

    def __init__(self) -> None:
        self._streams: defaultdict[str, set[Subscription]] = defaultdict(set)

    @contextmanager
    def subscribe(self, pod_uid: str) -> Iterator[Subscription]:
        subscription = Subscription(pod_uid)
        self._streams[pod_uid].add(subscription)
        try:
            yield subscription
        finally:
            streams = self._streams[pod_uid]
            streams.discard(subscription)
            if not streams:
                del self._streams[pod_uid]

    def publish(self, pod_uid: str, event: WatchEvent) -> int:
        """Hand the event to every open stream of the pod; how many there were."""
        streams = self._streams.get(pod_uid, set())
        for subscription in streams:
            subscription.offer(event)
        return len(streams)

    def watched(self) -> frozenset[str]:
        """UIDs of the pods that hold at least one open stream: the heartbeat set."""
        return frozenset(self._streams)

    def stream_count(self) -> int:
        return sum(len(streams) for streams in self._streams.values())
