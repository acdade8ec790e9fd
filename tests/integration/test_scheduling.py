"""The broker's scheduled work on the bed: a lease Vault will not extend any further is
re-issued before it ends, and pushed to the pod's Watch stream like a rotation.

The scene of test_watch_rotate.py: an in-process broker whose now is a ShiftedClock, so the
test moves a lease into its renewal window instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, timedelta
from typing import Any

import pytest

from broker.clock import utcnow
from broker.models.roles import RotationSchedule
from broker.store import LeaseState
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.scene.broker import ROLE, Broker, issue
from tests.scene.clocks import ShiftedClock
from tests.scene.leases import Agent, state_of, works
from tests.scene.polling import until
from tests.scene.workloads import broker_stub, mint

pytestmark = pytest.mark.bed


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
def broker_config(broker_config: dict[str, Any]) -> dict[str, Any]:
    # The role's max TTL is 1h (tests/scene/engines.py): asking for 2h is always capped.
    broker_config["renewal"] = {"interval": "1h", "window": "2m", "increment": "2h"}
    broker_config["rotation"] = {"grace": "1h", "resume_interval": "1h"}
    broker_config["revocation"] = {"interval": "1h"}
    return broker_config


async def test_a_lease_capped_at_its_max_ttl_is_reissued_and_pushed_before_it_ends(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    clock: ShiftedClock,
    postgres: PostgresServer,
) -> None:
    token = mint(kube_clusters["a"], pod_prefix="capped")
    first = await issue(broker, token)
    async with broker_stub(broker.port, broker.ca) as stub:
        agent = Agent(stub, token)
        try:
            assert (await agent.next()).rotated.lease.generation == 1
            ends = first.lease.expires_at.ToDatetime(tzinfo=UTC)
            clock.offset = ends - utcnow() - timedelta(minutes=1)  # inside the 2m window
            renewed = await broker.server.runtime.flows.renewer.renew_due()
            assert renewed == 1
            pushed = (await agent.next()).rotated
            assert pushed.lease.generation == 2
            assert pushed.lease.credential_name == first.lease.credential_name
            assert await asyncio.to_thread(works, postgres, pushed.credential.values)
            assert state_of(broker, first.lease.id) == LeaseState.REVOKING
            await agent.ack(pushed.lease)

            async def gone() -> bool:
                if state_of(broker, first.lease.id) != LeaseState.REVOKED:
                    return False
                return not await asyncio.to_thread(works, postgres, first.credential.values)

            await until(gone, "the capped generation revoked after the Ack")
        finally:
            agent.close()
    records = [json.loads(line) for line in broker.settings.audit.log.read_text().splitlines()]
    reissued = [r for r in records if r["who"]["name"] == "broker.reissue"]
    assert [r["action"] for r in reissued] == ["lease.active", "lease.revoking"]
    assert reissued[0]["generation"] == 2


async def test_a_role_with_a_rotation_schedule_has_its_due_leases_rotated_and_pushed(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    clock: ShiftedClock,
    postgres: PostgresServer,
) -> None:
    runtime = broker.server.runtime
    scheduled = await runtime.catalog.get(ROLE)
    every_minute = scheduled.spec.model_copy(
        update={"rotation": RotationSchedule(every=timedelta(minutes=1))}
    )
    await runtime.catalog.apply([every_minute])
    token = mint(kube_clusters["a"], pod_prefix="scheduled")
    first = await issue(broker, token)
    # Not due yet: nothing is rotated.
    assert await runtime.flows.scheduled.run_once() == 0
    async with broker_stub(broker.port, broker.ca) as stub:
        agent = Agent(stub, token)
        try:
            assert (await agent.next()).rotated.lease.generation == 1
            # (A small step: the pod's token must still be valid in the broker's time.)
            clock.offset += timedelta(minutes=2)
            assert await runtime.flows.scheduled.run_once() == 1
            pushed = (await agent.next()).rotated
            assert pushed.lease.generation == 2
            assert await asyncio.to_thread(works, postgres, pushed.credential.values)
            # The new generation is not due until it has aged a minute itself.
            assert await runtime.flows.scheduled.run_once() == 0
            await agent.ack(pushed.lease)

            async def gone() -> bool:
                if state_of(broker, first.lease.id) != LeaseState.REVOKED:
                    return False
                return not await asyncio.to_thread(works, postgres, first.credential.values)

            await until(gone, "the scheduled-away generation revoked after the Ack")
        finally:
            agent.close()
    records = [json.loads(line) for line in broker.settings.audit.log.read_text().splitlines()]
    scheduled_records = [r for r in records if r["who"]["name"] == "broker.schedule"]
    assert [r["action"] for r in scheduled_records][:2] == ["lease.active", "lease.revoking"]


async def test_a_role_without_a_schedule_is_left_alone(
    broker: Broker, kube_clusters: dict[str, KubeCluster], clock: ShiftedClock
) -> None:
    first = await issue(broker, mint(kube_clusters["a"], pod_prefix="unscheduled"))
    clock.offset += timedelta(days=30)
    assert await broker.server.runtime.flows.scheduled.run_once() == 0
    assert state_of(broker, first.lease.id) == LeaseState.ACTIVE
