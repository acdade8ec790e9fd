"""The events a pod's Watch streams receive, and the in-process hub that routes them.

Each replica has its own hub for the Watch streams it serves. Every change that concerns
a pod (a rotation, a revocation, a renewal, a lease that cannot be renewed further) is
published to it by the flow that made the change, after the store has recorded it. With
several replicas the hub also hands each event to a fan-out (relay.py: PostgreSQL NOTIFY,
no secret in the payload), and the other replicas deliver it to their own streams of that
pod. The snapshot a stream receives on (re)connect covers anything missed in between.

A stream that does not keep up is closed (its queue overflowed) rather than allowed to
grow the broker's memory: the agent reconnects and the snapshot brings it up to date.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime

from broker import tracing
from broker.errors import TemporaryError
from broker.models import Credential, PodKey, VaultLease
from broker.store import LeaseRecord

QUEUE_SIZE = 256


@dataclass(frozen=True)
class LeaseRotated:
    """A new generation of a pod's credential (also the snapshot of a current one)."""

    lease: LeaseRecord
    credential: Credential
    vault_lease: VaultLease
    trace: str = ""
    """The W3C traceparent of the span that published it or pushes it ("": untraced)."""


@dataclass(frozen=True)
class LeaseRevoked:
    lease_id: str
    reason: str
    trace: str = ""


@dataclass(frozen=True)
class LeaseExpiring:
    lease_id: str
    expires_at: datetime
    trace: str = ""


@dataclass(frozen=True)
class LeaseRenewed:
    """The broker extended the lease: the agent learns its new end, so it keeps the file
    exactly as long as the credential lives even when the broker is away later."""

    lease_id: str
    expires_at: datetime
    trace: str = ""


WatchEvent = LeaseRotated | LeaseRevoked | LeaseExpiring | LeaseRenewed
FanOut = Callable[[PodKey, WatchEvent], None]


class StreamOverflowed(TemporaryError):
    """The agent did not read its events fast enough; it reconnects and gets a snapshot."""

    def __init__(self, pod: PodKey) -> None:
        super().__init__(
            f"the Watch stream of pod {pod} fell {QUEUE_SIZE} events behind and was "
            "closed; reconnect to receive the current state",
            retry_after=1.0,
        )


class Subscription:
    """One open stream's queue; `overflowed` is set when the hub had to drop an event."""

    def __init__(self, pod: PodKey) -> None:
        self.pod = pod
        self.queue: asyncio.Queue[WatchEvent] = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = asyncio.Event()

    def offer(self, event: WatchEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()


class EventHub:
    """Routes events to the open Watch streams of a pod, by cluster and pod UID (one event
    loop)."""

    def __init__(self) -> None:
        self._streams: defaultdict[PodKey, set[Subscription]] = defaultdict(set)
        self._fanout: FanOut | None = None

    def fan_out(self, fanout: FanOut | None) -> None:
        """Also hand every published event to `fanout` (the other replicas)."""
        self._fanout = fanout

    @contextmanager
    def subscribe(self, pod: PodKey) -> Iterator[Subscription]:
        subscription = Subscription(pod)
        self._streams[pod].add(subscription)
        try:
            yield subscription
        finally:
            streams = self._streams[pod]
            streams.discard(subscription)
            if not streams:
                del self._streams[pod]

    def publish(self, pod: PodKey, event: WatchEvent) -> int:
        """Hand the event to every open stream of the pod here, and to the other replicas;
        how many streams here there were. A traced change's event carries its span, so its
        pushes join the change's trace."""
        if not event.trace:
            stamped = tracing.traceparent()
            if stamped:
                event = replace(event, trace=stamped)
        if self._fanout is not None:
            self._fanout(pod, event)
        return self.deliver(pod, event)

    def deliver(self, pod: PodKey, event: WatchEvent) -> int:
        """Hand the event to this replica's open streams of the pod only."""
        streams = self._streams.get(pod, set())
        for subscription in streams:
            subscription.offer(event)
        return len(streams)

    def watched(self) -> frozenset[PodKey]:
        """The pods that hold at least one open stream: the heartbeat set."""
        return frozenset(self._streams)

    def resync(self) -> int:
        """Close every stream (as overflowed): events may have been missed, so each agent
        reconnects and its snapshot brings it up to date; how many streams."""
        count = 0
        for streams in self._streams.values():
            for subscription in streams:
                subscription.overflowed.set()
                count += 1
        return count

    def stream_count(self) -> int:
        return sum(len(streams) for streams in self._streams.values())
