"""One operator cannot change the cluster registry alone (issue 18).

A registered cluster's API server speaks for every pod of it that a policy permits, so with
`cluster_registration.approval: required` (the default) RegisterCluster and
DeregisterCluster are requests: the cluster is checked and an access grant
`cluster:<kind>:<name>` waits for another operator (`keyferry access approve`). The
requester approving their own request is refused (SELF_APPROVAL); every step is on the
audit trail. The registering cluster is a stub API server of the test's own
(tests/scene/rogue_api.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.api.v1 import access_pb2, access_pb2_grpc, clusters_pb2, clusters_pb2_grpc
from broker.backends.transit import TransitSigner
from tests.bed.kube import KubeCluster
from tests.bed.vault import VaultServer
from tests.scene.admin_helpers import PLATFORM, SECURITY
from tests.scene.broker import Broker
from tests.scene.rogue_api import ROGUE_ISSUER, RogueApiServer
from tests.scene.workloads import error_info

from .attack_scene import Exposure, audit_records, scene_broker

pytestmark = pytest.mark.bed
NAME = "member"


@pytest.fixture
async def broker(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    transit: TransitSigner,
    exposure: Exposure,
) -> AsyncIterator[Broker]:
    """The scene's broker with the production default: a second operator approves."""
    async with scene_broker(
        tmp_path,
        vault,
        approle,
        kube_clusters,
        exposure,
        cluster_registration={"approval": "required"},
    ) as running:
        yield running


def member_jwks() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="member-1", use="sig", alg="RS256")
    return json.dumps({"keys": [jwk]}).encode()


async def clusters_call(broker: Broker, operator: str, method: str, request: Any) -> Any:
    async with broker.admin_channel(operator) as channel:
        stub: Any = clusters_pb2_grpc.ClustersServiceStub(channel)
        return await getattr(stub, method)(request)


async def approve(broker: Broker, operator: str, grant_id: str) -> Any:
    async with broker.admin_channel(operator) as channel:
        stub: Any = access_pb2_grpc.AccessServiceStub(channel)
        return await stub.ApproveGrant(access_pb2.ApproveGrantRequest(grant_id=grant_id))


def records(broker: Broker, action: str) -> list[dict[str, Any]]:
    return [r for r in audit_records(broker) if r["action"] == action]


async def test_registering_and_deregistering_a_cluster_needs_a_second_operator(
    broker: Broker, tmp_path: Path, exposure: Exposure
) -> None:
    joined = broker.server.runtime.clusters.is_joined
    with RogueApiServer(tmp_path, member_jwks()) as member:
        asked = await clusters_call(
            broker,
            PLATFORM,
            "RegisterCluster",
            clusters_pb2.RegisterClusterRequest(
                name=NAME,
                server=member.server,
                ca_pem=member.ca_pem,
                credential=clusters_pb2.ClusterCredential(bearer_token="member-token"),
                issuer=ROGUE_ISSUER,
            ),
        )
        grant_id = asked.pending_grant_id
        assert grant_id, "one operator registered a cluster alone"
        assert asked.cluster.key_ids == ["member-1"]  # checked before it is asked for
        assert not joined(NAME)

        with pytest.raises(grpc.RpcError) as own:
            await approve(broker, PLATFORM, grant_id)
        exposure.refusal(own.value)
        assert own.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(own.value).reason == "SELF_APPROVAL"
        assert not joined(NAME)

        approved = await approve(broker, SECURITY, grant_id)
        assert approved.grant.decided_by == SECURITY
        assert joined(NAME)
        got = await clusters_call(
            broker, PLATFORM, "GetCluster", clusters_pb2.GetClusterRequest(name=NAME)
        )
        assert got.cluster.source == clusters_pb2.CLUSTER_SOURCE_REGISTERED

        leaving = await clusters_call(
            broker,
            PLATFORM,
            "DeregisterCluster",
            clusters_pb2.DeregisterClusterRequest(name=NAME),
        )
        assert leaving.pending_grant_id
        assert joined(NAME)  # nothing happens before the approval
        await approve(broker, SECURITY, leaving.pending_grant_id)
        assert not joined(NAME)

    requests = [r for r in records(broker, "access.request") if r["who"]["name"] == PLATFORM]
    assert len(requests) == 2
    [self_approval] = [r for r in records(broker, "access.approve") if r["decision"] == "deny"]
    assert (self_approval["who"]["name"], self_approval["reason"]) == (PLATFORM, "SELF_APPROVAL")
    carried = {
        (r["action"], r["who"]["name"], r["target"])
        for r in audit_records(broker)
        if r.get("target", "").startswith("grant/")
    }
    assert carried == {
        ("clusters.register", SECURITY, f"grant/{grant_id}"),
        ("clusters.deregister", SECURITY, f"grant/{leaving.pending_grant_id}"),
    }
