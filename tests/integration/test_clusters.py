"""The cluster registry on the bed: clusters registered at run time (through the CLI and the
gRPC API) with a ServiceAccount token bound by docs/examples/broker-rbac.yaml as-is, their
pods served without a restart, refusals that name what failed, and deregistration that
revokes the cluster's leases first."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from broker.api.v1 import clusters_pb2, clusters_pb2_grpc
from broker.backends.transit import TransitSigner
from broker.cli.main import app as cli
from broker.store import LeaseState
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.admin_helpers import PLATFORM
from tests.scene.broker import Broker, config, issue, log_in, refused, start_broker
from tests.scene.kube_helpers import core, eventually
from tests.scene.member_clusters import broker_kubeconfig, register_request
from tests.scene.stores import sqlite_url
from tests.scene.workloads import error_info, mint

pytestmark = pytest.mark.bed
UNBOUND = "keyferry-unbound"  # a ServiceAccount the RBAC does not bind
TEST_NAMESPACE = "kf-pods"


@pytest.fixture
async def bare_broker(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    orders_db: None,
    transit: TransitSigner,
) -> AsyncIterator[Broker]:
    """A broker with no cluster in its config file: every cluster is registered at run time."""
    data = config(tmp_path, vault, approle, {}, sqlite_url(tmp_path))
    extra = tmp_path / "test-namespaces.cedar"  # pods of throw-away namespaces may issue too
    extra.write_text(
        '@id("test-namespaces-issue")\n'
        'permit (principal is Workload, action == Action::"issue", resource is Role)\n'
        f'when {{ principal.namespace like "{TEST_NAMESPACE}-*" }};\n'
    )
    data["policies"].append(str(extra))
    running = await start_broker(data, tmp_path)
    yield running
    await running.server.stop(1)


async def register(broker: Broker, request: clusters_pb2.RegisterClusterRequest) -> Any:
    async with broker.admin_channel(PLATFORM) as channel:
        stub = clusters_pb2_grpc.ClustersServiceStub(channel)
        return await stub.RegisterCluster(request)


async def refused_registration(
    broker: Broker, request: clusters_pb2.RegisterClusterRequest
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        await register(broker, request)
    return caught.value


async def test_registered_clusters_serve_their_pods_and_deregistration_revokes_their_leases(
    bare_broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    broker = bare_broker
    a, b, c = kube_clusters["a"], kube_clusters["b"], kube_clusters["c"]
    context = broker.context_file(tmp_path, PLATFORM)
    runner = CliRunner()

    # a through the CLI (issuer discovered), b and c (one issuer, two clusters) through the API.
    kubeconfig_a = broker_kubeconfig(a, tmp_path)
    result = await asyncio.to_thread(
        runner.invoke,
        cli,
        [
            "clusters",
            "register",
            "--kubeconfig",
            str(kubeconfig_a),
            "--context",
            "a",
            "--keyferry-context",
            str(context),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "cluster a registered" in result.output
    for cluster in (b, c):
        reply = await register(
            broker, register_request(cluster, broker_kubeconfig(cluster, tmp_path))
        )
        assert reply.cluster.source == clusters_pb2.CLUSTER_SOURCE_REGISTERED
        assert reply.cluster.key_ids

    # Refusals, each naming what failed.
    duplicate = await refused_registration(
        broker, register_request(b, broker_kubeconfig(b, tmp_path))
    )
    assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS
    same_keys = await refused_registration(
        broker, register_request(a, kubeconfig_a, name="a-again")
    )
    assert same_keys.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(same_keys).reason == "CLUSTER_EXISTS"
    assert "already registered for cluster 'a'" in (same_keys.details() or "")
    bad_token = await refused_registration(
        broker, register_request(a, kubeconfig_a, name="a-bad", token="not-a-token")
    )
    assert error_info(bad_token).reason == "CLUSTER_REGISTRATION_FAILED"
    assert "auth failed" in (bad_token.details() or "")
    no_rbac = await refused_registration(
        broker, register_request(a, broker_kubeconfig(a, tmp_path, UNBOUND), name="a-norbac")
    )
    assert error_info(no_rbac).reason == "CLUSTER_REGISTRATION_FAILED"
    assert "RBAC failed" in (no_rbac.details() or "")

    # Pods of registered clusters get credentials at once (no restart).
    issued_a = await issue(broker, mint(a))
    log_in(postgres, issued_a.credential.values)
    issued_b = await issue(broker, mint(b))
    log_in(postgres, issued_b.credential.values)

    listed = await asyncio.to_thread(
        runner.invoke, cli, ["clusters", "list", "--context", str(context), "-o", "json"]
    )
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert set(rows) == {"a", "b", "c"}
    assert rows["a"]["source"] == "registered"
    assert rows["a"]["leases"] == 1
    table = await asyncio.to_thread(
        runner.invoke, cli, ["clusters", "list", "--context", str(context)]
    )
    assert table.output.split()[:6] == ["NAME", "SOURCE", "CONTACT", "JWKS", "LEASES", "ISSUER"]

    # Deregistering a revokes its lease first, and its pods are refused afterwards.
    gone = await asyncio.to_thread(
        runner.invoke, cli, ["clusters", "deregister", "a", "--context", str(context), "-o", "json"]
    )
    assert gone.exit_code == 0, gone.output
    # The in-process broker's log lines share stdout: the JSON object is the end of it.
    record = json.loads(gone.output[gone.output.rindex("{\n") :])
    assert record == {"name": "a", "revoked": 1, "queued": 0}
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        log_in(postgres, issued_a.credential.values)
    assert error_info(await refused(broker, mint(a))).reason == "CLUSTER_UNKNOWN"
    log_in(postgres, issued_b.credential.values)  # b's lease is untouched
    shown = await asyncio.to_thread(
        runner.invoke, cli, ["clusters", "get", "b", "--context", str(context), "-o", "yaml"]
    )
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output)["leases"] == 1


def lease_state(broker: Broker, lease_id: str) -> LeaseState:
    store = broker.store()
    try:
        return store.leases.get(lease_id).state
    finally:
        store.close()


async def revoked(broker: Broker, lease_id: str, what: str) -> None:
    def probe() -> bool:
        return lease_state(broker, lease_id) == LeaseState.REVOKED

    await asyncio.to_thread(eventually, probe, what)


async def test_leases_end_with_their_pod_namespace_or_phase_and_the_sweep_catches_the_rest(
    bare_broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    broker, a = bare_broker, kube_clusters["a"]
    await register(broker, register_request(a, broker_kubeconfig(a, tmp_path)))
    namespace = f"{TEST_NAMESPACE}-{secrets.token_hex(3)}"

    # A deleted pod: the watch revokes its lease, and the login stops working.
    deleted_pod = mint(a, namespace)
    first = await issue(broker, deleted_pod)
    log_in(postgres, first.credential.values)
    with a.api_client() as api:
        core(api).delete_namespaced_pod(deleted_pod.pod, namespace)
    await revoked(broker, first.lease.id, "the deleted pod's lease is revoked")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        log_in(postgres, first.credential.values)

    # A finished pod (Succeeded; the bed has no kubelet, so the test sets the phase).
    finished_pod = mint(a, namespace)
    finished = await issue(broker, finished_pod)
    with a.api_client() as api:
        core(api).patch_namespaced_pod_status(
            finished_pod.pod, namespace, {"status": {"phase": "Succeeded"}}
        )
    await revoked(broker, finished.lease.id, "the finished pod's lease is revoked")

    # A deleted namespace: every pod's lease in it is revoked.
    in_namespace = [await issue(broker, mint(a, namespace)) for _ in range(2)]
    with a.api_client() as api:
        core(api).delete_namespace(namespace)
    for held in in_namespace:
        await revoked(broker, held.lease.id, "the deleted namespace's leases are revoked")

    # With the watch stopped, a vanished pod's lease stays live until the sweep runs.
    pods = broker.server.runtime.pods
    await pods.unwatch("a")
    unwatched_pod = mint(a)
    unwatched = await issue(broker, unwatched_pod)
    with a.api_client() as api:
        core(api).delete_namespaced_pod(unwatched_pod.pod, unwatched_pod.namespace)
    assert lease_state(broker, unwatched.lease.id) == LeaseState.ACTIVE
    assert await pods.sweep() == 1
    assert lease_state(broker, unwatched.lease.id) == LeaseState.REVOKED
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        log_in(postgres, unwatched.credential.values)
