"""The agent session against a scripted broker: retries while the broker is away, the
snapshot is Acked without a rewrite, a newer generation is written, signalled and Acked, a
revoked current lease removes its file, and SIGTERM-time release covers every lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from injector.agent.backoff import Backoff
from injector.agent.client import Ack, Issued, Revoked, Rotated, WatchEvent
from injector.agent.errors import BrokerUnavailable, WatchUnsupported
from injector.agent.session import AgentSession

from .samples import issued
from .samples import signal_spec as spec


class ScriptedBroker:
    def __init__(self, events: list[WatchEvent]) -> None:
        self.failures = 2
        self.events = events
        self.acks: list[Ack] = []
        self.released: list[str] = []
        self.watches = 0

    async def issue(self, credential_name: str, role: str) -> Issued:
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailable("away", "UNAVAILABLE")
        return issued(1, "one")

    async def release(self, lease_id: str) -> None:
        self.released.append(lease_id)

    async def watch(self, acks: asyncio.Queue[Ack]) -> AsyncIterator[WatchEvent]:
        self.watches += 1
        if self.watches > 1:
            raise WatchUnsupported("no", "UNIMPLEMENTED")
        for event in self.events:
            yield event
            while not acks.empty():
                self.acks.append(acks.get_nowait())


async def test_the_session_follows_the_watch_protocol(tmp_path: Path) -> None:
    events: list[WatchEvent] = [
        Rotated(issued=issued(1, "one")),  # the snapshot: Acked, not rewritten
        Rotated(issued=issued(2, "two")),
        Revoked(lease_id="lease-1", reason="rotated"),  # superseded: nothing to do
        Rotated(issued=issued(2, "two")),  # a repeat
        Revoked(lease_id="lease-2", reason="expired"),  # the current one: file removed
    ]
    broker = ScriptedBroker(events)
    signals: list[int] = []

    def signal_app(signum: int) -> list[int]:
        signals.append(signum)
        return [42]

    session = AgentSession(
        spec(tmp_path), broker, backoff=Backoff(base=0.001, cap=0.002), signal_app=signal_app
    )
    await session.start()
    assert (tmp_path / "db").read_text() == "user='u' password='one'\n"
    holding = asyncio.ensure_future(session.hold())
    for _ in range(1000):  # until it has reconnected once (a loaded machine is slow)
        if broker.watches >= 2:
            break
        await asyncio.sleep(0.01)
    holding.cancel()
    assert broker.acks == [Ack("lease-1", 1), Ack("lease-2", 2), Ack("lease-2", 2)]
    assert signals == [1]  # SIGHUP, once: for the new generation only
    assert not (tmp_path / "db").exists()
    assert broker.watches >= 2  # reconnected after the stream, then Watch unsupported
    await session.release()
    assert broker.released == []  # the only lease was revoked by the broker


async def test_release_covers_every_lease_held(tmp_path: Path) -> None:
    broker = ScriptedBroker([])
    session = AgentSession(spec(tmp_path), broker, backoff=Backoff(base=0.001, cap=0.002))
    await session.start()
    await session.release()
    assert broker.released == ["lease-1"]
