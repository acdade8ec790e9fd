"""Broker.Issue and Release end to end on the bed: a broker started in-process with
create_server, the bed's Vault (AppRole with docs/vault-policy.hcl), PostgreSQL behind a
keyferry database mount, clusters a, b and c minting pod-bound tokens, the example policy
set and role catalog from docs/examples as they are, and a SQLite (or PostgreSQL) store:
the scene's `broker` (tests/scene)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import hvac
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from broker.api.v1 import broker_pb2, roles_pb2, roles_pb2_grpc
from broker.audit import StoreCheckpointSink, read_log, verify
from broker.backends import VaultClient
from broker.backends.transit import TransitSigner
from broker.cli.main import app as cli
from broker.server.app import BROKER_SERVICE
from broker.store import LeaseState, Selector
from tests.bed.kube import KubeCluster
from tests.bed.ports import free_port
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.admin_helpers import PLATFORM
from tests.scene.broker import (
    MOUNT,
    ROLE,
    Broker,
    config,
    issue,
    log_in,
    orders_leases,
    refused,
    start_broker,
)
from tests.scene.kube_helpers import core, eventually
from tests.scene.stores import postgres_database, sqlite_url
from tests.scene.workloads import bearer, broker_stub, error_info, mint

pytestmark = pytest.mark.bed


# --- the flow ---------------------------------------------------------------------------------


async def test_issue_gives_a_working_login_release_ends_it_and_the_audit_trail_verifies(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    transit: TransitSigner,
) -> None:
    token = mint(kube_clusters["a"])
    issued = await issue(broker, token)
    values = issued.credential.values
    log_in(postgres, values)
    assert issued.lease.role == ROLE
    assert issued.lease.credential_name == "orders-db"
    assert issued.lease.renewable
    assert issued.lease.generation == 1

    async with broker_stub(broker.port, broker.ca) as stub:
        await stub.Release(
            broker_pb2.ReleaseRequest(lease_id=issued.lease.id), metadata=bearer(token)
        )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        log_in(postgres, values)
    store = broker.store()
    try:
        assert store.leases.get(issued.lease.id).state == LeaseState.REVOKED
        assert store.leases.handle(issued.lease.id).sealed_credential is None
    finally:
        store.close()

    await broker.server.stop(1)  # signs a checkpoint of the chain with Vault transit
    log_text = broker.settings.audit.log.read_text()
    assert values["password"] not in log_text
    records = [json.loads(line) for line in log_text.splitlines()]
    assert [r["action"] for r in records] == [
        "issue",
        "lease.active",
        "release",
        "lease.revoking",
        "lease.revoked",
    ]
    assert records[0]["decision"] == "allow"
    assert records[0]["policy_ids"] == ["orders-workloads-issue"]
    assert set(records[1]["fingerprints"]) == {"password", "username"}
    store = broker.store()
    try:
        sink = StoreCheckpointSink(store.checkpoints)
        report = verify(read_log(broker.settings.audit.log), sink.list("broker"), transit)
    finally:
        store.close()
    assert report.ok, report.damage
    assert (report.records, report.checkpoints_verified) == (5, 1)

    # The same verification from the command line, with the broker's own config file.
    config_file = broker.settings.audit.log.parent / "broker.yaml"
    clean = _audit_verify(config_file)
    assert clean.returncode == 0, clean.stderr
    assert "OK, the chain and its checkpoints verify" in clean.stdout
    lines = log_text.splitlines()
    truncated = broker.settings.audit.log.parent / "truncated.jsonl"
    truncated.write_text("\n".join(lines[:-1]) + "\n")
    cut = _audit_verify(config_file, "--log", str(truncated), "--output", "json")
    assert cut.returncode == 1
    assert json.loads(cut.stdout)["damage"]["kind"] == "truncated"
    lines[2] = lines[2].replace('"release"', '"renew"')
    broker.settings.audit.log.write_text("\n".join(lines) + "\n")
    edited = _audit_verify(config_file)
    assert edited.returncode == 1
    assert "DAMAGED" in edited.stdout
    assert "record 2" in edited.stdout


def _audit_verify(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    keyferry = Path(sys.executable).parent / "keyferry"
    return subprocess.run(
        [str(keyferry), "audit", "verify", "--config", str(config_file), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_hundred_issues_for_one_pod_credential_make_one_vault_lease(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    leases: VaultClient,
    postgres: PostgresServer,
) -> None:
    token = mint(kube_clusters["a"], pod_prefix="crashloop")
    before = await orders_leases(leases)
    answers = await asyncio.gather(*(issue(broker, token) for _ in range(100)))

    assert len({a.lease.id for a in answers}) == 1
    assert len({a.credential.values["password"] for a in answers}) == 1
    assert len(await orders_leases(leases) - before) == 1
    log_in(postgres, answers[-1].credential.values)
    store = broker.store()
    try:
        live = store.leases.list_by_selector(Selector(namespace="orders", pod_name=token.pod))
    finally:
        store.close()
    assert [lease.id for lease in live] == [answers[0].lease.id]


async def test_a_forbidding_policy_is_permission_denied_and_audited_with_its_id(
    broker: Broker, kube_clusters: dict[str, KubeCluster]
) -> None:
    token = mint(kube_clusters["a"], pod_prefix="debug")  # forbid "no-debug-pods"
    error = await refused(broker, token)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(error).reason == "POLICY_DENIED"
    assert ROLE in (error.details() or "")
    last = json.loads(broker.settings.audit.log.read_text().splitlines()[-1])
    assert (last["action"], last["decision"], last["pod"]) == ("issue", "deny", token.pod)
    assert last["policy_ids"] == ["no-debug-pods"]


@pytest.mark.parametrize("name", ["../etc/passwd", "..", "a/b", "x" * 129])
async def test_a_bad_credential_name_is_invalid_argument_naming_the_field(
    broker: Broker, kube_clusters: dict[str, KubeCluster], name: str
) -> None:
    error = await refused(broker, mint(kube_clusters["a"]), credential=name)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert (info.reason, info.metadata["field"]) == ("INVALID_FIELD", "credential_name")


async def test_a_token_of_cluster_b_with_the_audience_of_c_is_unauthenticated(
    broker: Broker, kube_clusters: dict[str, KubeCluster]
) -> None:
    assert kube_clusters["b"].issuer == kube_clusters["c"].issuer
    forged = mint(kube_clusters["b"], audience="keyferry:c")
    error = await refused(broker, forged)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).reason == "TOKEN_INVALID"


async def test_a_deleted_pods_token_is_unauthenticated(
    broker: Broker, kube_clusters: dict[str, KubeCluster]
) -> None:
    cluster = kube_clusters["c"]
    token = mint(cluster)
    with cluster.api_client() as api:
        core(api).delete_namespaced_pod(token.pod, token.namespace, grace_period_seconds=0)
        eventually(lambda: _gone(api, token.namespace, token.pod), "pod deleted")
    error = await refused(broker, token)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no longer exists" in (error.details() or "")


async def test_a_store_failure_after_vault_issued_revokes_the_vault_lease(
    broker: Broker, kube_clusters: dict[str, KubeCluster], leases: VaultClient
) -> None:
    # A real store failure: the database itself refuses to activate any lease row.
    engine = create_engine(broker.settings.store.url.get_secret_value())
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse_activation BEFORE UPDATE OF state ON leases "
                "WHEN NEW.state = 'active' BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
            )
        )
    engine.dispose()
    token = mint(kube_clusters["a"], pod_prefix="unlucky")
    before = await orders_leases(leases)

    error = await refused(broker, token)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "STORE_UNAVAILABLE"
    assert await orders_leases(leases) == before  # issued, then revoked: nothing untracked
    store = broker.store()
    try:
        rows = store.leases.list_by_selector(
            Selector(pod_name=token.pod, states=frozenset(LeaseState))
        )
    finally:
        store.close()
    assert [row.state for row in rows] == [LeaseState.FAILED]


async def test_the_postgresql_store_serves_issue_replay_and_release(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    transit: TransitSigner,
    postgres: PostgresServer,
    leases: VaultClient,
) -> None:
    with postgres_database(postgres) as url:
        data = config(tmp_path, vault, approle, kube_clusters, url)
        running = await start_broker(data, tmp_path)
        try:
            token = mint(kube_clusters["b"])
            before = await orders_leases(leases)
            first = await issue(running, token)
            again = await issue(running, token)
            assert again.lease.id == first.lease.id
            assert again.credential.values == first.credential.values
            assert len(await orders_leases(leases) - before) == 1
            async with broker_stub(running.port, running.ca) as stub:
                await stub.Release(
                    broker_pb2.ReleaseRequest(lease_id=first.lease.id), metadata=bearer(token)
                )
            assert await orders_leases(leases) == before
        finally:
            await running.server.stop(1)


async def test_issue_round_trip_next_to_hvac_informational(
    broker: Broker, kube_clusters: dict[str, KubeCluster], root: hvac.Client
) -> None:
    """Prints one Issue round trip and the same credential read directly with hvac; the
    numbers are for the notes, not asserted."""
    token = mint(kube_clusters["a"], pod_prefix="timed")
    started = time.perf_counter()
    await issue(broker, token)
    through_broker = time.perf_counter() - started
    started = time.perf_counter()
    await issue(broker, token)
    replay = time.perf_counter() - started
    started = time.perf_counter()
    direct = root.read(f"{MOUNT}/creds/ro")
    with_hvac = time.perf_counter() - started
    root.sys.revoke_lease(direct["lease_id"])
    print(
        f"\nkeyferry round trip: Issue {through_broker * 1000:.1f} ms (new Vault lease), "
        f"replay {replay * 1000:.1f} ms, hvac read of {MOUNT}/creds/ro {with_hvac * 1000:.1f} ms"
    )


def _gone(api: object, namespace: str, name: str) -> bool:
    from kubernetes import client as k8s  # noqa: PLC0415

    try:
        core(api).read_namespaced_pod(name, namespace)
    except k8s.ApiException as exc:
        return bool(exc.status == 404)
    return False


# --- the admin listener and health ----------------------------------------------------------


async def test_roles_are_applied_listed_and_deleted_over_the_admin_listener(
    broker: Broker, tmp_path: Path
) -> None:
    context = str(broker.context_file(tmp_path, PLATFORM))
    extra = tmp_path / "roles.yaml"
    extra.write_text("- {name: orders-db-rw, kind: database, mount: db-orders, vault_role: rw}\n")
    runner = CliRunner()
    applied = await asyncio.to_thread(
        runner.invoke, cli, ["roles", "apply", "-f", str(extra), "--context", context]
    )
    assert applied.exit_code == 0, applied.output
    assert "role orders-db-rw applied (database)" in applied.output

    listed = await asyncio.to_thread(runner.invoke, cli, ["roles", "list", "--context", context])
    assert listed.exit_code == 0, listed.output
    names = [line.split()[0] for line in listed.output.splitlines()[1:]]
    assert names == [
        "app-config",
        "internal-tls",
        "orders-aws",
        "orders-db-ro",
        "orders-db-rw",
        "s3-reader",
    ]

    async with broker.admin_channel(PLATFORM) as channel:
        roles: Any = roles_pb2_grpc.RolesServiceStub(channel)
        await roles.DeleteRole(roles_pb2.DeleteRoleRequest(name="orders-db-rw"))
        with pytest.raises(grpc.RpcError) as missing:
            await roles.GetRole(roles_pb2.GetRoleRequest(name="orders-db-rw"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(missing.value).reason == "ROLE_UNKNOWN"
        with pytest.raises(grpc.RpcError) as bad:
            await roles.ApplyRoles(
                roles_pb2.ApplyRolesRequest(
                    roles=[roles_pb2.Role(name="Bad Name", kv=roles_pb2.KvBackend(mount="kv"))]
                )
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(bad.value).metadata["field"] == "roles[0].name"

    nowhere = tmp_path / "nowhere.yaml"
    nowhere.write_text(
        Path(context).read_text().replace(f":{broker.server.admin_port}", f":{free_port()}")
    )
    unreachable = await asyncio.to_thread(
        runner.invoke, cli, ["roles", "list", "--context", str(nowhere)]
    )
    assert unreachable.exit_code == 3
    assert "did not answer" in unreachable.output
    missing_context = await asyncio.to_thread(
        runner.invoke, cli, ["roles", "list", "--context", str(tmp_path / "none.yaml")]
    )
    assert missing_context.exit_code == 2
    assert "keyferry admin init" in missing_context.output


async def test_health_reflection_and_metrics_are_served(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    transit: TransitSigner,
) -> None:
    """Reflection with `workload.reflection` on (off by default: tests/security)."""
    data = config(tmp_path, vault, approle, kube_clusters, sqlite_url(tmp_path))
    data["workload"]["reflection"] = True
    broker = await start_broker(data, tmp_path)
    try:
        await _health_reflection_and_metrics(broker, kube_clusters)
    finally:
        await broker.server.stop(1)


async def _health_reflection_and_metrics(
    broker: Broker, kube_clusters: dict[str, KubeCluster]
) -> None:
    await issue(broker, mint(kube_clusters["a"]))
    credentials = grpc.ssl_channel_credentials(root_certificates=broker.ca.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{broker.port}", credentials) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=BROKER_SERVICE))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in reflection.ServerReflectionInfo(iter([request])):
            listed = {s.name for s in reply.list_services_response.service}
            assert BROKER_SERVICE in listed
            break
    assert broker.server.metrics_port is not None
    url = f"http://127.0.0.1:{broker.server.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'keyferry_issue_total{outcome="issued"} 1.0' in body
    assert "keyferry_active_leases 1.0" in body
    assert "keyferry_issue_duration_seconds_bucket" in body
