"""The admin listener on the bed: mutual TLS required, operators named by their client
certificate, Cedar deciding each admin call and the audit trail naming the operator;
`keyferry admin init` feeding `keyferry roles` through a context file; and the rate limits
on Issue, timed by a controlled clock (nothing here waits for time to pass)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import stat
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from typer.testing import CliRunner

from broker.api.v1 import roles_pb2, roles_pb2_grpc, rotation_pb2, rotation_pb2_grpc
from broker.audit import read_log
from broker.backends.transit import TransitSigner
from broker.cli.main import app as cli
from broker.identity.admin_pki import create_ca
from broker.server.status import reason_of
from tests.bed.kube import KubeCluster
from tests.bed.ports import free_port
from tests.bed.vault import VaultServer
from tests.scene.admin_helpers import PLATFORM, SECURITY
from tests.scene.broker import Broker, config, issue, start_broker
from tests.scene.clocks import ManualClock
from tests.scene.stores import sqlite_url
from tests.scene.workloads import error_info, mint

pytestmark = pytest.mark.bed
EXAMPLE_ROLES = Path(__file__).parents[2] / "docs" / "examples" / "roles.yaml"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def broker_config(broker_config: dict[str, Any]) -> dict[str, Any]:
    broker_config["limits"].update(pod_issue_burst=3, pod_issue_rate=0.5)
    return broker_config


def handshake(port: int, ca: Path, cert: tuple[Path, Path] | None) -> None:
    """A bare TLS 1.2 handshake with the admin listener (TLS 1.2, so a refused client
    certificate fails the handshake itself rather than the first read)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() == "TLSv1.2"


def operator_files(broker: Broker, operator: str) -> tuple[Path, Path]:
    ca = broker.settings.admin.client_ca
    assert ca is not None
    return ca.parent / "operators" / f"{operator}.crt", ca.parent / "operators" / f"{operator}.key"


async def list_roles(port: int, credentials: grpc.ChannelCredentials) -> Any:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub: Any = roles_pb2_grpc.RolesServiceStub(channel)
        return await stub.ListRoles(roles_pb2.ListRolesRequest(), timeout=10)


# --- mutual TLS ---------------------------------------------------------------------------------


async def test_a_client_without_a_certificate_cannot_complete_the_handshake(
    broker: Broker,
) -> None:
    port, ca = broker.server.admin_port, broker.settings.admin.client_ca
    assert port is not None
    assert ca is not None
    await asyncio.to_thread(handshake, port, ca, operator_files(broker, SECURITY))  # control
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.to_thread(handshake, port, ca, None)

    no_cert = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with pytest.raises(grpc.RpcError) as refused:
        await list_roles(port, no_cert)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(refused.value) is None  # no servicer ever ran


async def test_a_certificate_from_another_ca_is_refused(broker: Broker, tmp_path: Path) -> None:
    port, ca = broker.server.admin_port, broker.settings.admin.client_ca
    assert port is not None
    assert ca is not None
    other = create_ca(tmp_path / "other-ca").issue_operator(SECURITY, ["security"])
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.to_thread(handshake, port, ca, (other.cert_path, other.key_path))

    forged = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=other.key_path.read_bytes(),
        certificate_chain=other.cert_path.read_bytes(),
    )
    with pytest.raises(grpc.RpcError) as refused:
        await list_roles(port, forged)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(refused.value) is None


# --- Cedar per operator -------------------------------------------------------------------------


async def test_security_may_rotate_platform_may_not_and_both_are_audited_by_name(
    broker: Broker, kube_clusters: dict[str, KubeCluster]
) -> None:
    lease = (await issue(broker, mint(kube_clusters["a"]))).lease
    request = rotation_pb2.RotateLeasesRequest(lease_ids=[lease.id])

    async with broker.admin_channel(PLATFORM) as channel:
        stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            await stub.RotateLeases(request)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(denied.value).reason == "POLICY_DENIED"
    assert PLATFORM in (denied.value.details() or "")

    async with broker.admin_channel(SECURITY) as channel:
        stub = rotation_pb2_grpc.RotationServiceStub(channel)
        reply = await stub.RotateLeases(request)
    assert reply.rotations[0].lease.generation == 2

    records = [json.loads(line) for line in read_log(broker.settings.audit.log)]
    decided = [
        (r["who"], r["decision"], r["policy_ids"])
        for r in records
        if r["action"] == "rotate" and r.get("lease_id") == lease.id
    ]
    assert decided == [
        ({"kind": "operator", "name": PLATFORM}, "deny", []),
        ({"kind": "operator", "name": SECURITY}, "allow", ["security-operators"]),
    ]


async def test_rotate_leases_answers_in_the_order_named_and_refuses_a_repeated_id(
    broker: Broker, kube_clusters: dict[str, KubeCluster]
) -> None:
    """RotateLeases rotates `rotation.concurrency` at a time, yet each rotation comes back
    at the place its lease was named; a lease named twice is refused before anything
    rotates."""
    leases = [(await issue(broker, mint(kube_clusters["a"]))).lease for _ in range(5)]
    named = [leases[i].id for i in (3, 0, 4, 1, 2)]
    async with broker.admin_channel(SECURITY) as channel:
        stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as repeated:
            await stub.RotateLeases(
                rotation_pb2.RotateLeasesRequest(lease_ids=[named[0], named[1], named[0]])
            )
        reply = await stub.RotateLeases(rotation_pb2.RotateLeasesRequest(lease_ids=named))
    assert repeated.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lease_ids[2]" in (repeated.value.details() or "")
    assert "lease_ids[0]" in (repeated.value.details() or "")
    assert [r.previous_lease_id for r in reply.rotations] == named
    assert all(r.lease.generation == 2 for r in reply.rotations)
    assert len({r.lease.id for r in reply.rotations}) == len(named)


async def test_admin_calls_are_counted_by_method_and_outcome_streams_included(
    broker: Broker, kube_clusters: dict[str, KubeCluster]
) -> None:
    """The call interceptor counts the admin listener's methods too: RotateLeases with its
    refusal and its success (also in the older keyferry_rotate_total), and the streaming
    RotateSelected, which no counter saw before the interceptor."""
    lease = (await issue(broker, mint(kube_clusters["a"]))).lease
    async with broker.admin_channel(PLATFORM) as channel:
        stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            await stub.RotateLeases(rotation_pb2.RotateLeasesRequest(lease_ids=[lease.id]))
    async with broker.admin_channel(SECURITY) as channel:
        stub = rotation_pb2_grpc.RotationServiceStub(channel)
        await stub.RotateLeases(rotation_pb2.RotateLeasesRequest(lease_ids=[lease.id]))
        selected = rotation_pb2.RotateSelectedRequest(
            selector=rotation_pb2.LeaseSelector(lease_ids=[lease.id]), dry_run=True
        )
        async for _ in stub.RotateSelected(selected):
            pass
    assert broker.server.metrics_port is not None
    url = f"http://127.0.0.1:{broker.server.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    for line in (
        'keyferry_calls_total{method="RotationService/RotateLeases",outcome="policy_denied"} 1.0',
        'keyferry_calls_total{method="RotationService/RotateLeases",outcome="rotated"} 1.0',
        'keyferry_calls_total{method="RotationService/RotateSelected",outcome="ok"} 1.0',
        'keyferry_call_duration_seconds_count{method="RotationService/RotateLeases",'
        'outcome="rotated"} 1.0',
        'keyferry_rotate_total{outcome="rotated"} 1.0',
        'keyferry_calls_total{method="BrokerService/Issue",outcome="issued"} 1.0',
    ):
        assert line in body, line


# --- keyferry admin init -> keyferry roles ------------------------------------------------------


async def test_admin_init_then_roles_apply_and_list_through_the_context_file(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    transit: TransitSigner,
) -> None:
    pki, context = tmp_path / "init-ca", tmp_path / "context.yaml"
    port = free_port()
    runner = CliRunner()
    init = [
        "admin",
        "init",
        "--operator",
        "olivia",
        "--group",
        "platform",
        "--dir",
        str(pki),
        "--context-file",
        str(context),
        "--address",
        f"127.0.0.1:{port}",
    ]
    made = await asyncio.to_thread(runner.invoke, cli, init)
    assert made.exit_code == 0, made.output
    broker_files = tmp_path / "broker-admin"  # apart from the CA's key (issue 18)
    for key in (
        pki / "ca.key",
        broker_files / "broker-admin.key",
        pki / "operators" / "olivia.key",
    ):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert not (broker_files / "ca.key").exists()
    again = await asyncio.to_thread(runner.invoke, cli, init)
    assert again.exit_code == 2
    assert "--force" in again.output

    section = yaml.safe_load(made.output.split("(broker.yaml):", 1)[1])
    assert all(
        Path(section["admin"][f]).parent == broker_files.resolve()
        for f in ("tls_cert", "tls_key", "client_ca")
    )
    data = config(tmp_path, vault, approle, kube_clusters, sqlite_url(tmp_path))
    data.pop("roles")  # an empty catalog: the CLI fills it
    data["admin"] = {**section["admin"], "host": "127.0.0.1"}
    broker = await start_broker(data, tmp_path)
    try:
        assert broker.server.admin_port == port
        options = ["--context", str(context)]
        empty = await asyncio.to_thread(runner.invoke, cli, ["roles", "list", *options])
        assert empty.exit_code == 0, empty.output
        assert "no roles yet" in empty.output
        applied = await asyncio.to_thread(
            runner.invoke,
            cli,
            ["roles", "apply", "-f", str(EXAMPLE_ROLES), *options, "--output", "json"],
        )
        assert applied.exit_code == 0, applied.output
        # The in-process broker's log lines share stdout: the JSON array is the end of it.
        rows = json.loads(applied.output[applied.output.index("[\n") :])
        kinds = {row["name"]: row["kind"] for row in rows}
        assert kinds["orders-aws"] == "aws"
        assert kinds["orders-db-ro"] == "database"
        listed = await asyncio.to_thread(
            runner.invoke, cli, ["roles", "list"], env={"KEYFERRY_CONTEXT": str(context)}
        )
        assert listed.exit_code == 0, listed.output
        names = [line.split()[0] for line in listed.output.splitlines()[1:]]
        assert names == ["app-config", "internal-tls", "orders-aws", "orders-db-ro", "s3-reader"]

        minted = await asyncio.to_thread(
            runner.invoke,
            cli,
            [
                *("admin", "issue-operator", "sid", "--group", "security", "--dir", str(pki)),
                *("--context-file", str(tmp_path / "sid.yaml"), "--address", f"127.0.0.1:{port}"),
            ],
        )
        assert minted.exit_code == 0, minted.output
        refused = await asyncio.to_thread(
            runner.invoke,
            cli,
            ["roles", "apply", "-f", str(EXAMPLE_ROLES), "--context", str(tmp_path / "sid.yaml")],
        )
        assert refused.exit_code == 1  # security may rotate, not define roles (no `grant`)
        assert "operator 'sid'" in refused.output
    finally:
        await broker.server.stop(1)
    records = [json.loads(line) for line in read_log(broker.settings.audit.log)]
    applies = {(r["who"]["name"], r["decision"]) for r in records if r["action"] == "roles.apply"}
    assert applies == {("olivia", "allow"), ("sid", "deny")}


# --- rate limits on Issue -----------------------------------------------------------------------


async def test_a_burst_beyond_the_pods_bucket_is_resource_exhausted_and_another_pod_is_not(
    broker: Broker, kube_clusters: dict[str, KubeCluster], clock: ManualClock
) -> None:
    busy, calm = mint(kube_clusters["a"]), mint(kube_clusters["a"])
    clock.freeze()  # the buckets refill only when the test moves the clock
    for _ in range(3):  # limits.pod_issue_burst
        await issue(broker, busy)
    with pytest.raises(grpc.RpcError) as limited:
        await issue(broker, busy)
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(limited.value).reason == "LIMIT_EXCEEDED"
    delay = retry_delay(limited.value)
    assert delay > timedelta(0)

    assert (await issue(broker, calm)).lease.id  # another pod has its own bucket

    clock.advance(delay.total_seconds())
    assert (await issue(broker, busy)).lease.id  # refilled, by the broker's clock


def retry_delay(error: grpc.RpcError) -> timedelta:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay: timedelta = info.retry_delay.ToTimedelta()
            return delay
    raise AssertionError("no RetryInfo in the status")
