"""The scheduler's pieces without servers: when a renewal is due, the revocation backoff,
the leader gate of periodic jobs, and the hub's fan-out (what leaves a replica)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from broker.models import PodKey
from broker.service.engine.revoker import Backoff
from broker.service.events.hub import EventHub, LeaseExpiring, LeaseRevoked
from broker.service.events.relay import describe_event
from broker.service.jobs.renewal import renewal_due
from broker.service.jobs.scheduler import JobScheduler, Periodic
from broker.settings import RenewalSettings
from broker.store import LeaseRecord

from .samples import lease_record, rotated_event

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def lease_for(start: datetime, lifetime: timedelta, lease_id: str = "lease-1") -> LeaseRecord:
    return lease_record().model_copy(
        update={"id": lease_id, "updated_at": start, "expires_at": start + lifetime}
    )


# -- renewals at a fraction of the lifetime -------------------------------------------------


def test_a_lease_is_due_at_two_thirds_of_its_lifetime_without_jitter() -> None:
    settings = RenewalSettings(jitter=0, window=timedelta(seconds=1))
    lease = lease_for(NOW, HOUR)
    assert not renewal_due(lease, NOW + timedelta(minutes=39), settings)
    assert renewal_due(lease, NOW + timedelta(minutes=40), settings)


def test_jitter_only_brings_renewals_earlier_and_spreads_them() -> None:
    settings = RenewalSettings(jitter=0.2, window=timedelta(seconds=1))
    leases = [lease_for(NOW, HOUR, f"lease-{i}") for i in range(200)]
    at_28 = NOW + timedelta(minutes=28)  # before 2/3 - 0.2 of the hour: never due
    at_40 = NOW + timedelta(minutes=40)  # 2/3 of the hour: always due
    at_34 = NOW + timedelta(minutes=34)  # inside the jitter: some are due, some are not
    assert not any(renewal_due(x, at_28, settings) for x in leases)
    assert all(renewal_due(x, at_40, settings) for x in leases)
    due = [renewal_due(x, at_34, settings) for x in leases]
    assert any(due)
    assert not all(due)
    assert due == [renewal_due(x, at_34, settings) for x in leases]  # fixed per lease


def test_the_window_renews_a_short_lease_at_the_latest() -> None:
    settings = RenewalSettings(fraction=0.9, jitter=0, window=timedelta(minutes=2))
    lease = lease_for(NOW, timedelta(minutes=10))
    assert renewal_due(lease, NOW + timedelta(minutes=8, seconds=1), settings)


def test_a_lease_without_an_end_is_never_due() -> None:
    lease = lease_record().model_copy(update={"expires_at": None})
    assert not renewal_due(lease, NOW + 100 * HOUR, RenewalSettings())


# -- revocation retries -----------------------------------------------------------------------


def test_the_revocation_backoff_doubles_up_to_its_cap_and_never_stops() -> None:
    backoff = Backoff(timedelta(seconds=5), timedelta(minutes=10))
    assert timedelta(seconds=4.5) <= backoff.after(1) <= timedelta(seconds=5)
    assert timedelta(seconds=9) <= backoff.after(2) <= timedelta(seconds=10)
    assert timedelta(minutes=9) <= backoff.after(1000) <= timedelta(minutes=10)


# -- the leader gate ----------------------------------------------------------------------------


class FakeLeadership:
    """A lock the test hands over: `check` takes it when `free` is set."""

    def __init__(self) -> None:
        self.is_leader = False
        self.free = False
        self.checks = 0
        self.closed = False

    async def check(self) -> None:
        self.checks += 1
        self.is_leader = self.is_leader or self.free

    async def close(self) -> None:
        self.closed = True
        self.is_leader = False


async def wait_for(condition: object, what: str) -> None:
    for _ in range(500):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_leader_jobs_wait_for_the_lead_and_run_at_once_when_it_is_taken() -> None:
    ran: list[str] = []

    async def renew() -> None:
        ran.append("renew")

    async def revoke() -> None:
        ran.append("revoke")

    leadership = FakeLeadership()
    scheduler = JobScheduler(
        [
            Periodic("renew", HOUR, renew, leader_only=False),
            Periodic("revoke", HOUR, revoke),
        ],
        leadership,
        jitter=0.1,
        leadership_interval=timedelta(milliseconds=20),
    )
    changes: list[bool] = []
    scheduler.on_leadership(changes.append)
    scheduler.start()
    try:
        await wait_for(lambda: "renew" in ran and leadership.checks >= 3, "a follower's passes")
        assert "revoke" not in ran  # a follower leaves the leader's jobs alone
        leadership.free = True
        await wait_for(lambda: "revoke" in ran, "the new leader's first pass")
        assert changes == [False, True]
    finally:
        await scheduler.stop()
    assert leadership.closed
    assert changes[-1] is False


async def test_a_failing_job_is_logged_and_runs_again() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    scheduler = JobScheduler(
        [Periodic("flaky", timedelta(milliseconds=20), flaky, leader_only=False)],
        FakeLeadership(),
        jitter=0,
        leadership_interval=HOUR,
    )
    scheduler.start()
    try:
        await wait_for(lambda: calls >= 3, "three passes of a failing job")
    finally:
        await scheduler.stop()


# -- the hub's fan-out ----------------------------------------------------------------------


def test_the_hub_hands_published_events_to_the_fan_out_and_delivers_the_others_locally() -> None:
    hub = EventHub()
    sent: list[tuple[PodKey, object]] = []
    hub.fan_out(lambda pod, event: sent.append((pod, event)))
    pod = PodKey("a", "uid-1")
    with hub.subscribe(pod) as mine:
        revoked = LeaseRevoked("lease-1", "revoked")
        assert hub.publish(pod, revoked) == 1
        assert hub.deliver(pod, LeaseRevoked("lease-2", "rotated")) == 1
        assert sent == [(pod, revoked)]  # delivered events are not sent on again
        assert mine.queue.qsize() == 2
        assert hub.resync() == 1
        assert mine.overflowed.is_set()  # the agent reconnects and gets a snapshot


def test_what_leaves_a_replica_names_the_change_and_carries_no_secret() -> None:
    rotated = rotated_event()
    payload = json.dumps(describe_event(rotated))
    for value in rotated.credential.values.values():
        assert value.get_secret_value() not in json.loads(payload).values()
    assert json.loads(payload) == {"kind": "rotated", "lease_id": rotated.lease.id}
    expiring = describe_event(LeaseExpiring("lease-1", NOW))
    assert datetime.fromisoformat(expiring["expires_at"]) == NOW


@pytest.mark.parametrize("reason", ["rotated", "revoked"])
def test_a_revocation_leaves_with_its_reason(reason: str) -> None:
    assert describe_event(LeaseRevoked("lease-1", reason)) == {
        "kind": "revoked",
        "lease_id": "lease-1",
        "reason": reason,
    }
