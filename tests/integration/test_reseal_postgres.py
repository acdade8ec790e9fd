"""`keyferry admin reseal`'s store work on PostgreSQL (issue 18): every row moves to the
current key, and a row a broker holds meanwhile is waited for, not overwritten.

The bed test of the whole rotation (brokers, Issue, Watch, the CLI) is
tests/security/test_key_rotation.py, on SQLite; this one runs the row transactions on
PostgreSQL, where `FOR UPDATE` is what keeps a re-seal and a broker's change apart.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from pydantic import SecretStr

from broker.models import Credential
from broker.service.common.sealing import CredentialSealer, StoreReseal, check_ring
from broker.store import KeyRing, LeaseRequest, PendingLease, RowSigner, Store, StoreSettings
from tests.bed.postgres import PostgresServer
from tests.scene.polling import until_true
from tests.scene.stores import postgres_database

pytestmark = pytest.mark.bed

K1, K2 = os.urandom(32), os.urandom(32)
OLD, ROTATING, NEW = KeyRing.of([K1]), KeyRing.of([K2, K1]), KeyRing.of([K2])
CREDENTIAL = Credential(values={"username": SecretStr("u"), "password": SecretStr("p")})
SPEC = {"backend": "database", "mount": "db", "role": "ro", "ttl": 300}
JWKS = {"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}


@pytest.fixture
def url(postgres: PostgresServer) -> Iterator[str]:
    with postgres_database(postgres) as database:
        yield database


def open_store(url: str, ring: KeyRing) -> Store:
    settings = StoreSettings(url=SecretStr(url), pool_size=4)
    return Store.open(settings, rows=RowSigner(ring.derive("rows")))


def fill(url: str, pods: int) -> list[str]:
    """Leases (one per pod), a cluster and a role, all under K1; the lease ids."""
    store, sealer = open_store(url, OLD), CredentialSealer(OLD)
    ids = []
    try:
        for n in range(pods):
            request = LeaseRequest(
                cluster="a",
                namespace="ns",
                service_account="sa",
                pod_name=f"p{n}",
                pod_uid=f"00000000-0000-0000-0000-{n:012d}",
                credential="db",
                role="ro",
            )
            pending = store.leases.begin_issue(request)
            assert isinstance(pending, PendingLease)
            blob = sealer.seal_lease(pending.lease, CREDENTIAL)
            end = datetime.now(UTC) + timedelta(hours=1)
            store.leases.complete_issue(pending.lease.id, f"v-{n}", end, sealed_credential=blob)
            ids.append(pending.lease.id)
        store.clusters.add(
            name="east",
            server="https://east.example:6443",
            ca_pem="CA",
            issuer="https://east.example",
            sealed_credential=sealer.seal("cluster:east", CREDENTIAL),
            jwks=JWKS,
        )
        store.roles.put("ro", SPEC)
    finally:
        store.close()
    return ids


def waiting_on_a_lock(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ).fetchone()
    return row is not None and row[0] > 0


async def test_reseal_on_postgresql_waits_for_a_row_a_broker_holds(url: str) -> None:
    ids = fill(url, pods=3)
    store = open_store(url, ROTATING)
    try:
        with psycopg.connect(url) as broker:  # a broker releasing the first lease
            broker.execute(
                "SELECT 1 FROM leases WHERE id = %s FOR UPDATE", (ids[0],)
            )  # its transaction holds the row
            rekey = store.rekey(StoreReseal(CredentialSealer(ROTATING)))
            running = asyncio.create_task(asyncio.to_thread(rekey.run))
            await until_true(lambda: waiting_on_a_lock(url), "the re-seal waits for the row")
            assert not running.done()
            broker.execute("UPDATE leases SET sealed_credential = NULL WHERE id = %s", (ids[0],))
            broker.commit()
            reports = {r.table: r for r in await running}
    finally:
        store.close()
    assert (reports["leases"].changed, reports["leases"].resealed) == (1, 2)
    assert (reports["clusters"].resealed, reports["roles"].resealed) == (1, 1)
    assert all(r.refused == 0 for r in reports.values())

    store = open_store(url, NEW)
    try:
        check_ring(store, CredentialSealer(NEW), NEW)  # nothing left under K1
        for lease_id in ids[1:]:
            lease = store.leases.get(lease_id)
            blob = store.leases.handle(lease_id).sealed_credential
            assert blob is not None
            assert CredentialSealer(NEW).unseal_lease(lease, blob).reveal() == CREDENTIAL.reveal()
        assert store.roles.get("ro").spec == SPEC
        assert store.clusters.get("east").name == "east"
    finally:
        store.close()
