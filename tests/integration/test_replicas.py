"""Two broker replicas (`keyferry broker serve` processes) on one PostgreSQL store and one Vault.

What several replicas promise (docs/architecture.md, "Several replicas"): a rotation made on
one replica reaches the Watch streams held by the other; one replica leads the periodic
jobs (a PostgreSQL advisory lock, never held twice), and when it is killed with -9 the
other takes the lead and does what came due (revocations after a grace period), nothing
done twice; the audit records of both form one chain that verifies.

Waits are bounded polls (`until`); the failover time is printed as an observation, never
asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker.api.v1 import broker_pb2
from broker.audit import StoreChainLog, verify
from broker.backends import VaultClient, list_keyferry_leases
from broker.backends.transit import TransitSigner
from broker.server import BrokerServer, create_server
from broker.settings import load_settings
from broker.store import LeaseState, Store
from tests.bed.bed import Bed
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer, start_postgres
from tests.bed.vault import VaultServer
from tests.scene.broker import config
from tests.scene.kube_helpers import BoundToken
from tests.scene.leases import Agent, works
from tests.scene.polling import until
from tests.scene.replicas import (
    LeaderWatch,
    Replica,
    chain_verifies,
    issue_on,
    leader_of,
    pod_leases,
    rotate_on,
    start_replica,
    store,
    store_dsn,
    vault_leases,
    watching,
    write_config,
)
from tests.scene.workloads import bearer, broker_stub, mint

__all__ = ["store", "store_dsn", "vault_leases"]  # fixtures of tests/scene/replicas.py
pytestmark = pytest.mark.bed
PODS = 6
GRACE = 5  # seconds an unacknowledged rotated-away credential lives


@pytest.fixture
def shared(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    transit: TransitSigner,
    store_dsn: str,
) -> dict[str, Any]:
    """The settings both replicas share (the store, Vault, keys, admin CA, roles)."""
    data = config(tmp_path, vault, approle, kube_clusters, store_dsn)
    data["rotation"] = {"grace": "1h", "resume_interval": "1s"}
    data["revocation"] = {"interval": "1s", "backoff": "1s"}
    data["renewal"] = {"interval": "1h"}  # renewals are not what this test is about
    data["scheduler"] = {"leadership": "1s"}
    return data


async def test_two_replicas_share_rotations_and_one_chain_and_the_survivor_of_a_kill_leads(
    tmp_path: Path,
    shared: dict[str, Any],
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    store_dsn: str,
    store: Store,
    vault_leases: VaultClient,
) -> None:
    replicas: list[Replica] = []
    try:
        a = await start_replica(tmp_path, "a", shared)
        replicas.append(a)
        await until(lambda: asyncio.to_thread(leader_of, replicas), "replica a leads")
        b = await start_replica(tmp_path, "b", shared)
        replicas.append(b)
        async with watching(LeaderWatch(store_dsn, replicas)) as watch:
            await _scenario(a, b, replicas, kube_clusters, postgres, store, vault_leases)
        assert watch.samples > 0
        assert watch.most_holders == 1  # the lock: one holder, never two
        assert watch.most_leaders == 1  # and one replica says it leads
        assert b.stop() == 0  # SIGTERM: signs a checkpoint of the shared chain
        chain_verifies(b, store)
    finally:
        for replica in replicas:
            replica.stop()


async def _scenario(
    a: Replica,
    b: Replica,
    replicas: list[Replica],
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    store: Store,
    vault_leases: VaultClient,
) -> None:
    assert b.leader() is False
    assert a.leader() is True
    tokens = [mint(kube_clusters["a"], pod_prefix="replica") for _ in range(PODS)]
    issued = [await issue_on(b, token) for token in tokens]
    async with broker_stub(b.port, b.ca) as stub:
        agents = [Agent(stub, token) for token in tokens]
        try:
            for agent, first in zip(agents, issued, strict=True):
                assert (await agent.next()).rotated.lease.id == first.lease.id

            # 1. A rotation made on replica a reaches the streams on replica b.
            rotations = await rotate_on(a, [x.lease.id for x in issued], grace=3600)
            second = []
            for agent, rotation in zip(agents, rotations, strict=True):
                pushed = (await agent.next()).rotated
                assert (pushed.lease.id, pushed.lease.generation) == (rotation.lease.id, 2)
                assert await asyncio.to_thread(works, postgres, pushed.credential.values)
                await agent.ack(pushed.lease)  # b revokes generation 1 at once
                second.append(pushed)
            for first in issued:
                await _until_revoked(store, postgres, first, "generation 1, after the Ack")

            # 2. kill -9 the leader while b rotates every lease again (short grace, no Ack).
            rotating = asyncio.create_task(rotate_on(b, [x.lease.id for x in second], grace=GRACE))
            await until(
                lambda: asyncio.to_thread(_third_generation_begun, store, tokens[0].pod_uid),
                "the second rotation has begun",
            )
            a.kill()
            killed = time.monotonic()
            third = await rotating
            # generation 2 waits out its grace: queued revocations, counted by the gauge
            assert (b.gauge("keyferry_pending_revocations") or 0) >= 1
            await until(lambda: asyncio.to_thread(leader_of, replicas), "replica b leads")
            print(f"\nobserved: replica b led {time.monotonic() - killed:.2f} s after kill -9 of a")
            assert all(not r.already_rotated and r.lease.generation == 3 for r in third)
            for agent, rotation, first in zip(agents, third, issued, strict=True):
                ended = await agent.next()  # generation 1's end, from the Ack before
                assert ended.revoked.lease_id == first.lease.id
                pushed = (await agent.next()).rotated
                assert (pushed.lease.id, pushed.lease.generation) == (rotation.lease.id, 3)
                assert await asyncio.to_thread(works, postgres, pushed.credential.values)

            # 3. Generation 2's revocations came due after a died: b, now leading, does them.
            for gone in second:
                await _until_revoked(store, postgres, gone, "generation 2, by the survivor")
        finally:
            for agent in agents:
                agent.close()

    # Nothing half-done: per pod one active lease (generation 3), the others revoked.
    for token in tokens:
        leases = await asyncio.to_thread(pod_leases, store, token.pod_uid)
        states = sorted((lease.generation, lease.state) for lease in leases)
        assert states == [(1, "revoked"), (2, "revoked"), (3, "active")]
    # Vault holds exactly the active generation of each pod, none of the revoked ones.
    at_vault = set(await list_keyferry_leases(vault_leases))
    for token in tokens:
        for lease in await asyncio.to_thread(pod_leases, store, token.pod_uid):
            alive = lease.state == LeaseState.ACTIVE
            assert (lease.vault_lease_id in at_vault) is alive, lease
    # Nothing done twice with effect: each old generation was revoked once, by one replica.
    records = [json.loads(line) for line in StoreChainLog(store.audit_chain).lines()]
    revocations = [r["lease_id"] for r in records if r["action"] == "lease.revoked"]
    old_ids = {x.lease.id for x in issued} | {x.lease.id for x in second}
    assert sorted(revocations) == sorted(old_ids)
    assert any(r["action"] == "rotate" for r in records)


def _third_generation_begun(store: Store, pod_uid: str) -> bool:
    return any(lease.generation == 3 for lease in pod_leases(store, pod_uid))


async def _until_revoked(store: Store, postgres: PostgresServer, event: Any, what: str) -> None:
    async def probe() -> bool:
        return await _revoked_and_dead(store, postgres, event)

    await until(probe, f"{what}: lease {event.lease.id} revoked and its login dead")


async def _revoked_and_dead(store: Store, postgres: PostgresServer, event: Any) -> bool:
    lease = await asyncio.to_thread(store.leases.get, event.lease.id)
    if lease.state != LeaseState.REVOKED:
        return False
    return not await asyncio.to_thread(works, postgres, event.credential.values)


# --- the store goes away ------------------------------------------------------------------


@pytest.fixture
def own_postgres(bed: Bed) -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, to stop and start (the bed's one serves Vault)."""
    server = start_postgres(bed.workspace, name=f"store-{secrets.token_hex(3)}")
    yield server
    server.stop()


async def test_with_the_store_down_issue_fails_closed_nobody_leads_and_service_resumes(
    tmp_path: Path,
    shared: dict[str, Any],
    own_postgres: PostgresServer,
    kube_clusters: dict[str, KubeCluster],
    vault_leases: VaultClient,
    transit: TransitSigner,
) -> None:
    data = {**shared, "store": {"url": own_postgres.dsn(), "pool_size": 4, "timeout": 3}}
    servers = []
    try:
        for name in ("a", "b"):
            path = write_config(tmp_path, name, data)
            server, _port = await create_server(load_settings(path))
            await server.start()
            servers.append(server)
        runtimes = [server.runtime for server in servers]

        async def one_leader() -> bool:
            return [r.is_leader for r in runtimes].count(True) == 1

        async def nobody_leads() -> bool:
            return not any(r.is_leader for r in runtimes)

        leaders = LeaderCount(runtimes)
        async with leaders.sampling():
            await until(one_leader, "one replica leads")
            for server in servers:
                await issue_in(server, mint(kube_clusters["a"], pod_prefix="before"))

            before = set(await list_keyferry_leases(vault_leases))
            own_postgres.stop()
            for server in servers:
                with pytest.raises(grpc.RpcError) as refused:
                    await issue_in(server, mint(kube_clusters["a"], pod_prefix="down"))
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert set(await list_keyferry_leases(vault_leases)) == before  # nothing handed out
            await until(nobody_leads, "no replica leads without the store")

            own_postgres.process.start()
            await asyncio.to_thread(
                own_postgres.process.wait_until,
                own_postgres.healthy,
                "accepting connections again",
            )
            for server in servers:
                token = mint(kube_clusters["a"], pod_prefix="after")

                async def served(server: BrokerServer = server, token: BoundToken = token) -> bool:
                    try:
                        await issue_in(server, token)
                    except grpc.RpcError:
                        return False
                    return True

                await until(served, "Issue served again once the store is back")
            await until(one_leader, "one replica leads again")
        assert leaders.most == 1  # never two leaders, before, during or after the outage
        chain = StoreChainLog(runtimes[0].store.audit_chain).lines()
        assert verify(chain, [], transit).ok
    finally:
        for server in servers:
            await server.stop(1)


class LeaderCount:
    """The most in-process replicas that said they lead at one moment, sampled."""

    def __init__(self, runtimes: list[Any]) -> None:
        self.runtimes = runtimes
        self.most = 0

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[None]:
        async def sample() -> None:
            while True:
                self.most = max(self.most, sum(1 for r in self.runtimes if r.is_leader))
                await asyncio.sleep(0.05)

        task = asyncio.create_task(sample())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def issue_in(server: BrokerServer, token: BoundToken) -> broker_pb2.IssueResponse:
    async with broker_stub(server.port, server.tls.cert_path) as stub:
        response: broker_pb2.IssueResponse = await stub.Issue(
            broker_pb2.IssueRequest(credential_name="orders-db", role="orders-db-ro"),
            metadata=bearer(token),
        )
        return response
