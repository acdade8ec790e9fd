"""The agent while the broker is away or refuses, on virtual time (no sleeping): files are
kept until their credential's end and removed after it (`check` then fails: not ready),
a Renewed event moves the end, an expired credential is issued again once the broker is
back; a refused Watch leads to a fresh Issue, and to a clear stop when that is refused too
or when Watch keeps being refused; a limit's RetryInfo is waited out."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from injector.agent.backoff import Backoff
from injector.agent.client import Ack, Issued, Renewed, Rotated, WatchEvent
from injector.agent.errors import BrokerLimited, BrokerRefused, BrokerUnavailable, WatchDenied
from injector.agent.session import WATCH_REFUSALS, AgentSession
from injector.agent.spec import AgentSpec, CredentialRequest
from injector.probe import EXIT_MISSING, EXIT_OK, check
from injector.terms import AGENT_SPEC_ENV, Mode

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TTL = timedelta(seconds=60)


class VirtualTime:
    """An event-loop-friendly clock: `sleep` parks a coroutine until `advance` passes its
    wake-up time; nothing waits in real time."""

    def __init__(self) -> None:
        self.now = T0
        self.slept: list[float] = []
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        future = asyncio.get_running_loop().create_future()
        wake = self.now + timedelta(seconds=seconds)
        heapq.heappush(self._sleepers, (wake, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        target = self.now + timedelta(seconds=seconds)
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            if not future.done():
                future.set_result(None)
            await _settle()
        self.now = target
        await _settle()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def lease(generation: int = 1, ends: datetime | None = T0 + TTL, lease_id: str = "") -> Issued:
    return Issued(
        lease_id=lease_id or f"lease-{generation}",
        credential_name="db",
        generation=generation,
        expires_at=ends,
        values={"username": "u", "password": f"p{generation}"},
    )


class Broker:
    """A broker that is away for Watch until `back`, and whose Issue can be scripted."""

    def __init__(self, time: VirtualTime) -> None:
        self.time = time
        self.back = False
        self.issues = 0
        self.watches = 0
        self.issue_errors: list[Exception] = []
        self.watch_error: Exception | None = None
        self.stream: list[WatchEvent] = []
        self.next_issue = lease()

    async def issue(self, credential_name: str, role: str) -> Issued:
        self.issues += 1
        if self.issue_errors:
            raise self.issue_errors.pop(0)
        return self.next_issue

    async def release(self, lease_id: str) -> None:
        pass

    async def watch(self, acks: asyncio.Queue[Ack]) -> AsyncIterator[WatchEvent]:
        self.watches += 1
        if self.watch_error is not None:
            raise self.watch_error
        if not self.back:
            raise BrokerUnavailable("Broker.Watch (stream): UNAVAILABLE: away", "UNAVAILABLE")
        for event in self.stream:
            yield event
        await asyncio.Event().wait()  # an open stream


def spec(tmp_path: Path) -> AgentSpec:
    return AgentSpec(
        mode=Mode.SIDECAR,
        cluster="a",
        broker_address="127.0.0.1:1",
        directory=str(tmp_path),
        token_path=str(tmp_path / "token"),
        credentials=(CredentialRequest(name="db", role="orders-db-ro"),),
    )


def session(tmp_path: Path, broker: Broker, time: VirtualTime) -> AgentSession:
    return AgentSession(
        spec(tmp_path),
        broker,
        backoff=Backoff(base=1.0, cap=30.0),
        clock=time.clock,
        sleep=time.sleep,
    )


def ready(tmp_path: Path) -> int:
    return check({AGENT_SPEC_ENV: json.dumps(asdict(spec(tmp_path)))})


async def test_files_are_kept_until_their_end_then_removed_and_issued_again_when_back(
    tmp_path: Path,
) -> None:
    time = VirtualTime()
    broker = Broker(time)
    agent = session(tmp_path, broker, time)
    await agent.start()
    holding = asyncio.ensure_future(agent.hold())
    try:
        await time.advance(59)  # the broker is away all along: the file stays
        assert (tmp_path / "db").read_text() == "user='u' password='p1'\n"
        assert ready(tmp_path) == EXIT_OK
        attempts = broker.watches
        assert attempts > 1  # it kept trying

        await time.advance(2)  # past the credential's end
        assert not (tmp_path / "db").exists()
        assert ready(tmp_path) == EXIT_MISSING  # reported not ready
        assert agent.expired == {"db"}

        broker.next_issue = lease(2, T0 + timedelta(minutes=10), "lease-new")
        broker.back = True
        await time.advance(31)  # one backoff (at most the 30 s cap) later it is back
        assert (tmp_path / "db").read_text() == "user='u' password='p2'\n"
        assert ready(tmp_path) == EXIT_OK
        assert agent.held["db"].issued.lease_id == "lease-new"
        assert not agent.expired
    finally:
        holding.cancel()


async def test_a_renewed_event_moves_the_end_the_agent_keeps_the_file_to(tmp_path: Path) -> None:
    time = VirtualTime()
    broker = Broker(time)
    broker.back = True
    broker.stream = [
        Rotated(issued=lease()),  # the snapshot
        Renewed(lease_id="lease-1", expires_at=(T0 + timedelta(minutes=5)).replace(tzinfo=None)),
    ]
    agent = session(tmp_path, broker, time)
    await agent.start()
    holding = asyncio.ensure_future(agent.hold())
    try:
        await time.advance(1)
        broker.back = False  # the stream stays open; the next one would fail
        await time.advance(120)  # far past the first end, before the renewed one
        assert (tmp_path / "db").exists()
        await time.advance(181)
        assert not (tmp_path / "db").exists()
    finally:
        holding.cancel()


async def test_a_refused_watch_issues_again_and_stops_when_issue_is_refused(
    tmp_path: Path,
) -> None:
    time = VirtualTime()
    broker = Broker(time)
    agent = session(tmp_path, broker, time)
    await agent.start()
    denied = BrokerRefused("Broker.Watch: PERMISSION_DENIED", "PERMISSION_DENIED", "POLICY_DENIED")
    broker.watch_error = denied
    broker.issue_errors = [
        BrokerRefused("Broker.Issue (db): PERMISSION_DENIED", "PERMISSION_DENIED", "POLICY_DENIED")
    ]
    holding = asyncio.ensure_future(agent.hold())
    await time.advance(1)
    assert holding.done()
    with pytest.raises(BrokerRefused) as stopped:
        holding.result()
    assert (stopped.value.code, stopped.value.reason) == ("PERMISSION_DENIED", "POLICY_DENIED")
    assert "Broker.Issue" in str(stopped.value)
    assert (broker.watches, broker.issues) == (1, 2)  # no retry loop at the backoff cap
    assert agent.backoff.attempt == 0  # it never waited at all


async def test_watch_refused_again_and_again_ends_with_watch_denied(tmp_path: Path) -> None:
    time = VirtualTime()
    broker = Broker(time)
    agent = session(tmp_path, broker, time)
    await agent.start()
    broker.watch_error = BrokerRefused("Broker.Watch: UNAUTHENTICATED", "UNAUTHENTICATED", "")
    broker.next_issue = lease(2, lease_id="lease-2")  # Issue works, and says what is current
    holding = asyncio.ensure_future(agent.hold())
    await time.advance(10)
    assert holding.done()
    with pytest.raises(WatchDenied, match="policy must permit action watch"):
        holding.result()
    assert broker.watches == WATCH_REFUSALS
    assert broker.issues == 1 + WATCH_REFUSALS  # the start, then one Issue per refusal
    assert (tmp_path / "db").read_text() == "user='u' password='p2'\n"  # rewritten on change
    # ordinary backoff from its base in between, never forced to the cap
    assert agent.backoff.attempt == WATCH_REFUSALS - 1


async def test_a_limit_is_waited_out_for_at_least_its_retry_info(tmp_path: Path) -> None:
    time = VirtualTime()
    broker = Broker(time)
    broker.issue_errors = [
        BrokerLimited("Broker.Issue (db): RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", retry_after=7)
    ]
    agent = session(tmp_path, broker, time)
    starting = asyncio.ensure_future(agent.start())
    await time.advance(6.9)
    assert not starting.done()
    await time.advance(0.2)
    assert starting.done()
    assert time.slept == [7]
    assert (tmp_path / "db").exists()


async def test_vault_down_is_waited_out_for_at_least_its_retry_info_keeping_the_files(
    tmp_path: Path,
) -> None:
    """The broker answers UNAVAILABLE (VAULT_UNAVAILABLE) with a RetryInfo longer than the
    agent's own backoff: Issue and Watch are retried no sooner than the hint, the file and
    readiness stay, and the agent does not stop."""
    time = VirtualTime()
    broker = Broker(time)

    def vault_down(method: str) -> BrokerUnavailable:
        message = f"Broker.{method}: UNAVAILABLE: Vault did not answer"
        return BrokerUnavailable(message, "UNAVAILABLE", "VAULT_UNAVAILABLE", retry_after=7)

    broker.issue_errors = [vault_down("Issue")]
    agent = session(tmp_path, broker, time)
    starting = asyncio.ensure_future(agent.start())
    await time.advance(6.9)  # the backoff alone (base 1 s) would have tried again by now
    assert not starting.done()
    assert broker.issues == 1
    await time.advance(0.2)
    assert starting.done()
    assert time.slept == [7]
    written = (tmp_path / "db").read_bytes()

    broker.watch_error = vault_down("Watch")
    holding = asyncio.ensure_future(agent.hold())
    try:
        await time.advance(6.9)
        assert broker.watches == 1  # not again before the hint
        await time.advance(0.2)
        assert broker.watches == 2
        await time.advance(40)  # well within the credential's end
        assert not holding.done()  # still running, not stopped
        assert broker.watches <= 1 + 47 // 7
        assert (tmp_path / "db").read_bytes() == written
        assert ready(tmp_path) == EXIT_OK
    finally:
        holding.cancel()
