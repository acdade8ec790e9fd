"""A plain login of the store's PostgreSQL speaks on the replicas' event channel (issue 18).

Any login may `NOTIFY keyferry_events`. Before issue 18 a replica delivered whatever such a
note said to its Watch streams: a login of its own could tell a pod its credential was
revoked (the agent deletes the file) or that it ends in 999 days. Now a note must carry a
MAC under a key the database does not hold, and what it says is checked against the store
(broker/service/events/relay.py, signed.py). The test creates a login with no grant on
keyferry's tables, sends forged notes as it, and sees them dropped, counted and logged,
while the real rotation that follows reaches the stream as usual.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from broker.store import LeaseState
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.broker import Broker, issue
from tests.scene.leases import Agent, rotate, state_of
from tests.scene.polling import until, until_true
from tests.scene.stores import postgres_database
from tests.scene.workloads import broker_stub, mint

from .attack_scene import Exposure, scene_broker

pytestmark = pytest.mark.bed
CHANNEL = "keyferry_events"


@pytest.fixture
def store_dsn(postgres: PostgresServer) -> Iterator[str]:
    with postgres_database(postgres) as dsn:
        yield dsn


@pytest.fixture
async def pg_broker(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    exposure: Exposure,
    store_dsn: str,
) -> AsyncIterator[Broker]:
    """The scene's broker on a PostgreSQL store: its event relay LISTENs."""
    store = {"url": store_dsn, "pool_size": 8}
    async with scene_broker(
        tmp_path, vault, approle, kube_clusters, exposure, store=store
    ) as running:
        yield running


@pytest.fixture
def intruder(postgres: PostgresServer, store_dsn: str) -> Iterator[str]:
    """A login of its own on the store's server: no grant on any of keyferry's tables."""
    name, password = f"intruder_{secrets.token_hex(4)}", secrets.token_hex(12)
    with postgres.connect() as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    dbname = store_dsn.rsplit("/", 1)[1]
    try:
        yield postgres.dsn(user=name, password=password, dbname=dbname)
    finally:
        with postgres.connect() as conn:
            conn.execute(f"DROP ROLE {name}")


def refused_notes(broker: Broker) -> dict[str, float]:
    """keyferry_event_notifications_refused by reason, from the broker's /metrics."""
    assert broker.server.metrics_port is not None
    url = f"http://127.0.0.1:{broker.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    pattern = r'^keyferry_event_notifications_refused_total\{reason="(\w+)"\} ([0-9.e+]+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}


async def test_a_notify_from_a_plain_database_login_changes_nothing(
    pg_broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    intruder: str,
    exposure: Exposure,
) -> None:
    broker = pg_broker
    relay = broker.server.runtime.flows.relay
    assert relay is not None  # a PostgreSQL store: the relay listens
    token = mint(kube_clusters["a"], pod_prefix="victim")
    first = await issue(broker, token)
    exposure.handed_out(*first.credential.values.values())
    where = {"cluster": token.cluster, "pod_uid": token.pod_uid, "lease_id": first.lease.id}
    forged = [
        # the note format before issue 18, naming the victim's live lease
        {"origin": "forger", **where, "kind": "revoked", "reason": "revoked"},
        {"origin": "forger", **where, "kind": "renewed", "expires_at": "2999-01-01T00:00:00+00:00"},
    ]
    macked = {"v": 1, "body": json.dumps(forged[0]), "mac": "00" * 32}  # a MAC it cannot make
    async with broker_stub(broker.port, broker.ca) as stub:
        agent = Agent(stub, token)
        try:
            snapshot = await agent.next()
            assert snapshot.rotated.lease.id == first.lease.id
            await until_true(relay.listening.is_set, "the broker's relay LISTENs")

            def send() -> None:
                with psycopg.connect(intruder, autocommit=True, connect_timeout=5) as conn:
                    for payload in [*map(json.dumps, forged), json.dumps(macked)]:
                        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

            await asyncio.to_thread(send)
            counted = await until(
                lambda: asyncio.to_thread(
                    lambda: refused_notes(broker).get("unauthenticated", 0) >= len(forged) + 1
                ),
                "the forged notes are counted as refused",
            )
            assert counted
            assert state_of(broker, first.lease.id) == LeaseState.ACTIVE

            # The next event the stream sees is the real rotation, not a forged one.
            rotation = await rotate(broker, first.lease.id, timedelta(hours=1))
            pushed = await agent.next()
            assert pushed.WhichOneof("event") == "rotated"
            assert pushed.rotated.lease.id == rotation.lease.id
            exposure.handed_out(*pushed.rotated.credential.values.values())
        finally:
            agent.close()
    logged = exposure.log_file.read_text()
    assert "event notification refused" in logged
    assert refused_notes(broker) == {"unauthenticated": len(forged) + 1}
