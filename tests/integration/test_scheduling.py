"""The broker's scheduled work on the bed: a lease Vault will not extend any further is
re-issued before it ends, and pushed to the pod's Watch stream like a rotation.

The scene of test_watch_rotate.py: an in-process broker whose now is a ShiftedClock, so the
test moves a lease into its renewal window instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from pathlib import Path

import pytest
import yaml

from broker.backends.transit import TransitSigner
from broker.server import create_server
from broker.settings import load_settings
from broker.store import LeaseState
from broker.store.clock import utcnow
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer

from .stores import sqlite_url
from .test_issue import Broker, approle, config, issue, orders_db, root, transit
from .test_watch_rotate import Agent, ShiftedClock, state_of, until, works
from .workloads import broker_stub, mint

__all__ = ["approle", "orders_db", "root", "transit"]  # fixtures, used by name
pytestmark = pytest.mark.bed


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
async def broker(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    transit: TransitSigner,
    clock: ShiftedClock,
) -> AsyncIterator[Broker]:
    data = config(tmp_path, vault, approle, kube_clusters, sqlite_url(tmp_path))
    # The role's max TTL is 1h (tests/integration/engines.py): asking for 2h is always capped.
    data["renewal"] = {"interval": "1h", "window": "2m", "increment": "2h"}
    data["rotation"] = {"grace": "1h", "revoke_interval": "1h"}
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(data))
    settings = load_settings(path)
    server, port = await create_server(settings, clock=clock)
    await server.start()
    yield Broker(server, port, settings)
    await server.stop(1)


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
