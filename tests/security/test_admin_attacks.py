"""The admin listener and the cluster registry under attack.

Without a client certificate, or with one from another CA, the TLS handshake fails: no
servicer runs, so nothing is decided and the audit trail gains nothing (asserted). An
operator the policy does not permit is refused with POLICY_DENIED and audited, and the
lease it aimed at is untouched. A cluster whose JWKS endpoint answers garbage (a rogue API
server: tests/scene/rogue_api.py), or whose issuer and keys
are already registered under another name, is refused with its reason and audited, and
joins nothing: its tokens stay unknown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from broker.api.v1 import (
    clusters_pb2,
    clusters_pb2_grpc,
    roles_pb2,
    roles_pb2_grpc,
    rotation_pb2,
    rotation_pb2_grpc,
)
from broker.backends import VaultClient
from broker.identity.admin_pki import create_ca
from broker.store import LeaseState
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.scene.admin_helpers import PLATFORM
from tests.scene.broker import Broker, issue, log_in, orders_leases, refused
from tests.scene.member_clusters import broker_kubeconfig, register_request
from tests.scene.rogue_api import ROGUE_ISSUER, RogueApiServer
from tests.scene.workloads import mint

from .attack_scene import Exposure, assert_no_lease, audit_records, reason, store_rows

pytestmark = pytest.mark.bed


async def list_roles(port: int, credentials: grpc.ChannelCredentials) -> None:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub: Any = roles_pb2_grpc.RolesServiceStub(channel)
        await stub.ListRoles(roles_pb2.ListRolesRequest(), timeout=10)


def foreign_operator(folder: Path) -> tuple[bytes, bytes]:
    """A `security` operator's certificate and key from a CA the broker does not trust."""
    other = create_ca(folder / "other-ca").issue_operator("sam-security", ["security"])
    return other.cert_path.read_bytes(), other.key_path.read_bytes()


@pytest.mark.parametrize("client", ["no certificate", "another CA"])
async def test_the_admin_api_refuses_a_caller_at_the_handshake(
    broker: Broker, leases: VaultClient, tmp_path: Path, exposure: Exposure, client: str
) -> None:
    port, ca = broker.server.admin_port, broker.settings.admin.client_ca
    assert port is not None
    assert ca is not None
    if client == "no certificate":
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    else:
        cert, key = foreign_operator(tmp_path)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(), private_key=key, certificate_chain=cert
        )
    before, records = await orders_leases(leases), len(audit_records(broker))
    with pytest.raises(grpc.RpcError) as caught:
        await list_roles(port, credentials)
    exposure.refusal(caught.value)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake failed
    assert len(audit_records(broker)) == records  # nothing reached a servicer
    await assert_no_lease(broker, None, leases, before)


@pytest.mark.parametrize("method", ["RotateLeases"])
async def test_an_operator_without_the_cedar_permission(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    leases: VaultClient,
    postgres: PostgresServer,
    exposure: Exposure,
    method: str,
) -> None:
    token = mint(kube_clusters["a"])
    issued = await issue(broker, token)
    exposure.handed_out(*issued.credential.values.values())
    before = await orders_leases(leases)
    request: Any = getattr(rotation_pb2, f"{method}Request")(lease_ids=[issued.lease.id])
    async with broker.admin_channel(PLATFORM) as channel:  # platform may not rotate or revoke
        stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            await getattr(stub, method)(request)
    exposure.refusal(caught.value)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "POLICY_DENIED"
    [record] = [
        r
        for r in audit_records(broker)
        if r["decision"] == "deny" and r.get("lease_id") == issued.lease.id
    ]
    assert record["who"] == {"kind": "operator", "name": PLATFORM}
    await assert_no_lease(broker, None, leases, before)
    [row] = store_rows(broker, token)
    assert (row.state, row.generation) == (LeaseState.ACTIVE, 1)
    log_in(postgres, issued.credential.values)


# --- the registry -------------------------------------------------------------------------------


GARBAGE: dict[str, bytes] = {
    "not JSON": b"\x00\xffthis is not a key set",
    "a JSON list": b"[1, 2, 3]",
    "keys as a string": b'{"keys": "garbage"}',
    "broken RSA key": b'{"keys": [{"kty": "RSA", "kid": "x", "n": "!!", "e": "AQAB"}]}',
    "no keys": b'{"keys": []}',
    "huge": b'{"keys": [' + b'{"kty": "oct"},' * 20000 + b'{"kty": "oct"}]}',
}


@pytest.fixture
def rogue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RogueApiServer]:
    with RogueApiServer(tmp_path, GARBAGE[request.param]) as server:
        yield server


async def register(broker: Broker, request: clusters_pb2.RegisterClusterRequest) -> grpc.RpcError:
    async with broker.admin_channel(PLATFORM) as channel:
        stub: Any = clusters_pb2_grpc.ClustersServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            await stub.RegisterCluster(request)
    return caught.value


def registration_denials(broker: Broker, name: str) -> list[dict[str, Any]]:
    return [
        r
        for r in audit_records(broker)
        if r["action"] == "clusters.register" and r["decision"] == "deny" and r["cluster"] == name
    ]


@pytest.mark.parametrize("rogue", list(GARBAGE), indirect=True)
async def test_a_cluster_whose_jwks_endpoint_answers_garbage(
    broker: Broker, rogue: RogueApiServer, leases: VaultClient, exposure: Exposure
) -> None:
    request = clusters_pb2.RegisterClusterRequest(
        name="rogue",
        server=rogue.server,
        ca_pem=rogue.ca_pem,
        credential=clusters_pb2.ClusterCredential(bearer_token="anything-goes"),
        issuer=ROGUE_ISSUER,
    )
    before = await orders_leases(leases)
    error = await register(broker, request)
    exposure.refusal(error)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(error) == "CLUSTER_REGISTRATION_FAILED"
    assert "discovery failed" in (error.details() or "")
    [record] = registration_denials(broker, "rogue")
    assert record["reason"] == "CLUSTER_REGISTRATION_FAILED"
    # Not joined: a token naming it (whatever its signature) is for an unknown cluster.
    claimed = jwt.encode({"aud": ["keyferry:rogue"], "iss": ROGUE_ISSUER}, "k" * 32, "HS256")
    denied = await refused(broker, claimed)
    exposure.refusal(denied)
    assert reason(denied) == "CLUSTER_UNKNOWN"
    await assert_no_lease(broker, None, leases, before)


async def test_a_cluster_with_an_already_registered_issuer_and_keys(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    leases: VaultClient,
    tmp_path: Path,
    exposure: Exposure,
) -> None:
    """Cluster a again, under another name: same issuer, same JWKS. Refused, so a's tokens
    can never be accepted as the impostor's (audience keyferry:a-again)."""
    a = kube_clusters["a"]
    before = await orders_leases(leases)
    error = await register(
        broker, register_request(a, broker_kubeconfig(a, tmp_path), name="a-again")
    )
    exposure.refusal(error)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason(error) == "CLUSTER_EXISTS"
    [record] = registration_denials(broker, "a-again")
    assert record["reason"] == "CLUSTER_EXISTS"
    impostor = mint(a, audience="keyferry:a-again")
    denied = await refused(broker, impostor)
    exposure.refusal(denied)
    assert reason(denied) == "CLUSTER_UNKNOWN"
    await assert_no_lease(broker, impostor, leases, before)
