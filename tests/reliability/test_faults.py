"""Faults on the bed: Vault stopped and restarted, the audit sink unwritable, a member
cluster's API server unreachable. Each ends by counting keyferry's leases in Vault against
the store: nothing handed out is untracked, nothing queued is lost.

- Vault: the persistent server (leases survive its restart) is stopped for OUTAGE seconds
  (10 s; KEYFERRY_FAULT_SCALE=full: the issue's 60 s); what matters is that calls arrive
  while it is down. Callers get UNAVAILABLE with a RetryInfo hint; a Release and a pod
  deletion during the outage are queued, and complete once it is back; no lease is
  declared irrevocable. The agents' side (files kept, renewals due during the outage done
  after it) is tests/reliability/test_vault_outage_agents.py.
- Audit sink: the log's folder is replaced by a file before the broker's first record (a
  volume that is gone); every request is refused, none is served unaudited, and Vault
  holds no new lease. Service resumes when the folder is back.
- Member cluster: the broker reaches cluster a through a loopback TCP relay the test
  controls (the API server itself stays up for the rest of the session); the relay turns
  into a black hole that accepts connections and never answers. Cluster a's pods are
  refused with UNAVAILABLE within the call's deadline, b's are served, and a pod of a
  deleted during the outage has its lease revoked once a is reachable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import hvac
import psycopg
import pytest
import yaml
from pydantic import SecretStr

from broker.api.v1 import broker_pb2
from broker.backends import VaultClient, VaultSettings, list_keyferry_leases
from broker.server import create_server
from broker.settings import load_settings
from broker.store import LeaseState, Selector
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.reliability.scale import pick
from tests.scene.broker import (
    MOUNT,
    ROLE,
    Broker,
    config,
    issue,
    log_in,
    new_approle,
    new_transit,
    refused,
    start_broker,
)
from tests.scene.clocks import ManualClock
from tests.scene.engines import mount_postgres
from tests.scene.kube_helpers import core, eventually
from tests.scene.stores import sqlite_url
from tests.scene.workloads import bearer, broker_stub, error_info, mint, retry_delay

pytestmark = pytest.mark.bed
OUTAGE = pick(10.0, 60.0)  # seconds Vault stays down (full scale: the issue's 60 s)
UNTIL = 60.0  # bound of every poll; never asserted


def rows(broker: Broker) -> dict[str, Any]:
    store = broker.store()
    try:
        found = store.leases.list_by_selector(Selector(states=frozenset(LeaseState)))
    finally:
        store.close()
    return {row.id: row for row in found}


async def vault_leases(server: VaultServer) -> set[str]:
    client = VaultClient(VaultSettings(addr=server.addr, token=SecretStr(server.root_token)))
    try:
        return {lease for lease in await list_keyferry_leases(client) if lease.startswith(MOUNT)}
    finally:
        client.close()


async def until(probe: Any, what: str) -> Any:
    return await asyncio.to_thread(eventually, probe, what, UNTIL)


# --- Vault stopped, then restarted -----------------------------------------------------------


@pytest.fixture(scope="module")
def persistent_scene(
    vault_persistent: VaultServer, postgres: PostgresServer
) -> Iterator[tuple[str, str]]:
    root = vault_persistent.client()
    approle = new_approle(root)
    new_transit(root)
    mount_postgres(root, postgres, MOUNT, "ro")
    yield approle
    vault_persistent.client().sys.disable_secrets_engine(MOUNT)


async def test_vault_stopped_then_restarted(
    tmp_path: Path,
    vault_persistent: VaultServer,
    persistent_scene: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
) -> None:
    clock = ManualClock()
    data = config(tmp_path, vault_persistent, persistent_scene, kube_clusters, sqlite_url(tmp_path))
    (tmp_path / "broker.yaml").write_text(yaml.safe_dump(data))
    settings = load_settings(tmp_path / "broker.yaml")
    server, port = await create_server(settings, clock=clock)
    await server.start()
    broker = Broker(server, port, settings)
    try:
        released_pod, deleted_pod = mint(kube_clusters["a"]), mint(kube_clusters["b"])
        released = await issue(broker, released_pod)
        deleted = await issue(broker, deleted_pod)
        kept = await issue(broker, mint(kube_clusters["c"]))
        ours = {rows(broker)[r.lease.id].vault_lease_id for r in (released, deleted, kept)}
        assert ours <= await vault_leases(vault_persistent)

        await asyncio.to_thread(vault_persistent.stop)
        try:
            newcomer = mint(kube_clusters["a"], pod_prefix="newcomer")
            error = await refused(broker, newcomer)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(error).reason == "VAULT_UNAVAILABLE"
            delay = retry_delay(error)
            assert delay is not None
            assert delay > 0

            async with broker_stub(broker.port, broker.ca) as stub:
                with pytest.raises(grpc.RpcError) as queued:
                    await stub.Release(
                        broker_pb2.ReleaseRequest(lease_id=released.lease.id),
                        metadata=bearer(released_pod),
                    )
            assert queued.value.code() == grpc.StatusCode.UNAVAILABLE
            assert retry_delay(queued.value) is not None
            with kube_clusters["b"].api_client() as api:
                core(api).delete_namespaced_pod(deleted_pod.pod, deleted_pod.namespace)
            await until(
                lambda: rows(broker)[deleted.lease.id].state == LeaseState.REVOKING,
                "the deleted pod's lease is queued for revocation",
            )
            await asyncio.sleep(OUTAGE)  # the outage itself: calls keep arriving meanwhile
            assert rows(broker)[released.lease.id].state == LeaseState.REVOKING
        finally:
            await asyncio.to_thread(vault_persistent.restart)

        clock.freeze()
        clock.advance(120)  # past every queued retry time; the revoke job runs on its own
        for lease_id in (released.lease.id, deleted.lease.id):
            await until(
                lambda lease_id=lease_id: rows(broker)[lease_id].state == LeaseState.REVOKED,
                "a revocation queued during the outage completes",
            )
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            log_in(postgres, released.credential.values)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            log_in(postgres, deleted.credential.values)
        log_in(postgres, kept.credential.values)  # the lease nobody touched survived

        states = {row.state for row in rows(broker).values()}
        assert states <= {LeaseState.ACTIVE, LeaseState.REVOKED, LeaseState.FAILED}
        newcomer_rows = [r for r in rows(broker).values() if r.pod_name == newcomer.pod]
        assert [r.state for r in newcomer_rows] == [LeaseState.FAILED]
        active = {r.vault_lease_id for r in rows(broker).values() if r.state == LeaseState.ACTIVE}
        assert await vault_leases(vault_persistent) == active  # nothing untracked, nothing lost
        again = await issue(broker, mint(kube_clusters["a"]))  # service is back
        assert again.lease.role == ROLE
    finally:
        await server.stop(1)


# --- the audit sink unwritable -----------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_scene(vault: VaultServer, postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    root: hvac.Client = vault.client()
    approle = new_approle(root)
    new_transit(root)
    mount_postgres(root, postgres, MOUNT, "ro")
    yield approle
    vault.client().sys.disable_secrets_engine(MOUNT)


@pytest.fixture
def broker_config(
    tmp_path: Path,
    vault: VaultServer,
    dev_scene: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
) -> dict[str, Any]:
    """The scene's broker on this module's own Vault scene, its audit log in a folder of
    its own (a test takes that folder away)."""
    data = config(tmp_path, vault, dev_scene, kube_clusters, sqlite_url(tmp_path))
    data["audit"]["log"] = str(tmp_path / "audit" / "audit.jsonl")
    return data


async def test_an_unwritable_audit_sink_refuses_every_request(
    broker: Broker, kube_clusters: dict[str, KubeCluster], vault: VaultServer
) -> None:
    folder = broker.settings.audit.log.parent
    before = await vault_leases(vault)
    if folder.exists():
        shutil.rmtree(folder)
    folder.write_text("a file where the audit volume should be")
    try:
        for cluster in ("a", "b"):
            error = await refused(broker, mint(kube_clusters[cluster]))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(error).reason == "AUDIT_UNAVAILABLE"
            assert retry_delay(error) is not None
        assert await vault_leases(vault) == before  # nothing served unaudited
        assert all(row.state != LeaseState.ACTIVE for row in rows(broker).values())
    finally:
        folder.unlink()
        folder.mkdir()
    token = mint(kube_clusters["a"])
    issued = await issue(broker, token)  # the sink is back: service resumes, audited
    records = [json.loads(line) for line in broker.settings.audit.log.read_text().splitlines()]
    assert [r["action"] for r in records] == ["issue", "lease.active"]
    assert records[1]["lease_id"] == issued.lease.id


# --- a member cluster's API server unreachable ------------------------------------------------


class Relay:
    """A loopback TCP relay to an API server that can turn into a black hole: it then
    accepts connections and never answers, and drops the ones it was relaying."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.blackhole = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self.blackhole = True
        for writer in list(self._open):
            writer.transport.abort()

    def mend(self) -> None:
        self.blackhole = False

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blackhole:
            self._open.add(writer)
            return  # accepted, never answered
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open.difference_update({writer, up_writer})


async def test_an_unreachable_member_cluster(
    tmp_path: Path,
    vault: VaultServer,
    dev_scene: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
) -> None:
    a = kube_clusters["a"]
    relay = Relay(a.host, a.port)
    await relay.start()
    through_relay = json.loads(a.kubeconfig.read_text())
    through_relay["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{relay.port}"
    kubeconfig = tmp_path / "a-relayed.kubeconfig"
    kubeconfig.write_text(json.dumps(through_relay))
    data = config(tmp_path, vault, dev_scene, kube_clusters, sqlite_url(tmp_path))
    data["clusters"][[c["name"] for c in data["clusters"]].index("a")]["kubeconfig"] = str(
        kubeconfig
    )
    broker = await start_broker(data, tmp_path)
    try:
        held_pod = mint(a)
        held = await issue(broker, held_pod)
        relay.cut()

        stranded = mint(a, pod_prefix="stranded")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            async with broker_stub(broker.port, broker.ca) as stub:
                await stub.Issue(
                    broker_pb2.IssueRequest(credential_name="orders-db", role=ROLE),
                    metadata=bearer(stranded),
                    timeout=60,
                )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # not DEADLINE_EXCEEDED
        assert retry_delay(caught.value) is not None
        print(f"\ncluster a unreachable: refused after {time.monotonic() - started:.1f} s")

        served = await issue(broker, mint(kube_clusters["b"]))  # b is unaffected
        log_in(postgres, served.credential.values)

        with a.api_client() as api:  # the bed reaches a directly; the broker does not
            core(api).delete_namespaced_pod(held_pod.pod, held_pod.namespace)
        assert rows(broker)[held.lease.id].state == LeaseState.ACTIVE

        relay.mend()
        await broker.server.runtime.pods.sweep()  # the watch may have caught up already
        assert rows(broker)[held.lease.id].state == LeaseState.REVOKED
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            log_in(postgres, held.credential.values)
        again = await issue(broker, mint(a))  # a's pods are served again
        assert again.lease.role == ROLE
    finally:
        await broker.server.stop(1)
        await relay.stop()
