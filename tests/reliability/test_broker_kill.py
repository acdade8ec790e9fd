"""A broker killed with SIGKILL loses nothing and leaves nothing orphaned, on the bed.

The broker runs as its own process (`keyferry broker serve`) on a SQLite store file, with
short timings so that what a restart must settle happens within seconds: requested
rotations are resumed after 2 s, reconcile runs every 2 s and treats a Vault lease unknown
for 2 s as an orphan. Each test kills it mid-way (SIGKILL: no graceful stop), starts it
again on the same config, and polls (bounded) until store and Vault agree.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from broker.api.v1 import broker_pb2, rotation_pb2, rotation_pb2_grpc
from broker.backends import VaultClient, VaultSettings, list_keyferry_leases
from broker.store import LIVE_STATES, LeaseQuery, LeaseRecord, LeaseState, Store
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.admin_helpers import admin_channel
from tests.scene.broker import MOUNT, ROLE, config, log_in
from tests.scene.leases import works
from tests.scene.polling import until
from tests.scene.stores import sqlite_url
from tests.scene.workloads import bearer, broker_stub, mint

from .broker_process import BrokerProcess

pytestmark = pytest.mark.bed
UNTIL = 120.0
FLEET_POLICY = """
@id("fleet-workloads-issue")
permit (principal is Workload, action == Action::"issue", resource is Role)
when { principal.namespace like "fleet-*" && resource.backend == "database" };
"""


@pytest.fixture
def broker(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    transit: Any,
) -> Iterator[BrokerProcess]:
    data = config(tmp_path, vault, approle, kube_clusters, sqlite_url(tmp_path))
    policy = tmp_path / "fleet.cedar"
    policy.write_text(FLEET_POLICY)
    data["policies"].append(str(policy))
    data["rotation"] = {
        "grace": "2s",
        "resume_interval": "1s",
        "concurrency": 2,
        "resume_after": "2s",
    }
    data["revocation"] = {"interval": "1s"}
    data["reconcile"] = {"interval": "2s", "orphan_age": "2s"}
    data["limits"] = {"per_pod": 4, "per_cluster": 1000, "pod_issue_burst": 1000}
    process = BrokerProcess(data, tmp_path)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def vault_view(vault: VaultServer) -> Iterator[VaultClient]:
    """Vault as an outside observer (root token)."""
    client = VaultClient(VaultSettings(addr=vault.addr, token=SecretStr(vault.root_token)))
    yield client
    client.close()


# --- helpers ----------------------------------------------------------------------------------


async def issue(broker: BrokerProcess, token: Any) -> broker_pb2.IssueResponse:
    async with broker_stub(broker.port, broker.ca) as stub:
        return await stub.Issue(
            broker_pb2.IssueRequest(credential_name="orders-db", role=ROLE),
            metadata=bearer(token),
        )


def leases(broker: BrokerProcess, namespace: str) -> list[LeaseRecord]:
    """Every row of the namespace, whatever its state."""
    store = Store.open(broker.settings.store)
    try:
        query = LeaseQuery(namespaces=frozenset({namespace}), states=frozenset(LeaseState))
        return store.leases.select_page(query, None, 10_000)
    finally:
        store.close()


def held_vault_ids(broker: BrokerProcess) -> set[str]:
    store = Store.open(broker.settings.store)
    try:
        held = {LeaseState.ACTIVE, LeaseState.REVOKING}
        return set(store.leases.vault_lease_ids(held, f"{MOUNT}/"))
    finally:
        store.close()


async def vault_ids(vault_view: VaultClient) -> set[str]:
    return {lease for lease in await list_keyferry_leases(vault_view) if lease.startswith(MOUNT)}


async def mint_many(cluster: KubeCluster, namespace: str, count: int) -> list[Any]:
    return list(
        await asyncio.gather(
            *(asyncio.to_thread(mint, cluster, namespace, "kill") for _ in range(count))
        )
    )


# --- the tests ----------------------------------------------------------------------------------


async def test_a_broker_killed_mid_rotation_resumes_after_restart_and_orphans_nothing(
    broker: BrokerProcess,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    vault_view: VaultClient,
) -> None:
    namespace = f"fleet-{secrets.token_hex(3)}"
    tokens = await mint_many(kube_clusters["a"], namespace, 6)
    tokens += await mint_many(kube_clusters["b"], namespace, 6)
    first = await asyncio.gather(*(issue(broker, token) for token in tokens))
    old = {answer.lease.id: dict(answer.credential.values) for answer in first}

    request = rotation_pb2.RotateSelectedRequest(
        selector=rotation_pb2.LeaseSelector(namespaces=[namespace]), concurrency=2
    )
    seen = 0

    async def rotate_until_killed() -> None:
        nonlocal seen
        async with admin_channel(broker.settings, broker.admin_port) as channel:
            stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
            async for event in stub.RotateSelected(request):
                if event.WhichOneof("event") == "lease":
                    seen += 1
                    if seen == 3:
                        broker.kill()

    with pytest.raises(grpc.RpcError):  # the stream dies with the broker
        await rotate_until_killed()
    assert 3 <= seen < len(tokens)  # killed part-way
    broker.start()

    async def settled() -> bool:
        rows = leases(broker, namespace)
        old_done = all(r.state is LeaseState.REVOKED for r in rows if r.id in old)
        live = [r for r in rows if r.live]
        each_pod_rotated = len(live) == len(tokens) and all(
            r.state is LeaseState.ACTIVE and r.generation >= 2 for r in live
        )
        in_vault = await vault_ids(vault_view)
        return old_done and each_pod_rotated and in_vault == held_vault_ids(broker)

    await until(
        settled,
        "every selected lease rotated, old ones revoked, Vault == store",
        within=UNTIL,
        every=0.5,
    )
    rows = leases(broker, namespace)
    assert not [r for r in rows if r.state in (LeaseState.PENDING, LeaseState.REVOKING)]
    for values in old.values():
        assert not works(postgres, values)
    for token in tokens:
        now = await issue(broker, token)  # the pod's current credential
        assert now.lease.generation >= 2
        assert now.lease.id not in old
        log_in(postgres, now.credential.values)


async def test_kill_during_200_concurrent_issues_then_every_vault_lease_is_known_or_revoked(
    broker: BrokerProcess,
    kube_clusters: dict[str, KubeCluster],
    vault_view: VaultClient,
) -> None:
    namespace = f"fleet-{secrets.token_hex(3)}"
    tokens = await mint_many(kube_clusters["a"], namespace, 100)
    tokens += await mint_many(kube_clusters["b"], namespace, 100)
    answered = 0

    async def one(token: Any) -> None:
        nonlocal answered
        await issue(broker, token)
        answered += 1
        if answered == 20:
            broker.kill()

    results = await asyncio.gather(*(one(token) for token in tokens), return_exceptions=True)
    cut = [r for r in results if isinstance(r, grpc.RpcError)]
    assert cut, "the kill came after every Issue had finished"
    assert all(not isinstance(r, BaseException) or isinstance(r, grpc.RpcError) for r in results)
    broker.start()

    async def agreed() -> bool:
        rows = leases(broker, namespace)
        if any(r.state is LeaseState.PENDING for r in rows):
            return False
        return await vault_ids(vault_view) <= held_vault_ids(broker)

    await until(
        agreed,
        "every Vault lease under the mount known to the store, or revoked",
        within=UNTIL,
        every=0.5,
    )
    rows = leases(broker, namespace)
    in_vault = await vault_ids(vault_view)
    held = held_vault_ids(broker)
    assert in_vault <= held
    for row in rows:  # what the store holds, Vault holds: nothing closed wrongly either
        if row.state in LIVE_STATES and row.vault_lease_id:
            assert row.vault_lease_id in in_vault
