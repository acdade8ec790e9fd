"""One member cluster cannot reach another's pods (issue 18).

A member cluster's API server signs whatever token it likes. Registered as cluster `rogue`
(tests/scene/rogue_api.py: its own issuer and JWKS, a key of the test's own), it mints a
token naming a real pod of cluster a that holds a lease — that pod's namespace, service
account, name and UID — and reports that pod as one of its own. The broker keys leases by
(cluster, pod UID) and refuses a UID live in another cluster: no replay of a's sealed
credential, no lease for the rogue, and an audited deny.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.api.v1 import clusters_pb2, clusters_pb2_grpc
from broker.backends import VaultClient
from broker.store import LeaseState
from tests.bed.kube import KubeCluster
from tests.scene.admin_helpers import PLATFORM
from tests.scene.broker import Broker, issue, orders_leases, refused
from tests.scene.kube_helpers import BoundToken
from tests.scene.rogue_api import ROGUE_ISSUER, RogueApiServer, pod_object
from tests.scene.workloads import mint

from .attack_scene import Exposure, all_store_rows, denials, reason, store_rows

pytestmark = pytest.mark.bed
KID = "rogue-1"


def signing_key() -> tuple[rsa.RSAPrivateKey, bytes]:
    """The rogue cluster's service-account signing key and its JWKS."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KID, use="sig", alg="RS256")
    return key, json.dumps({"keys": [jwk]}).encode()


def forged_token(key: rsa.RSAPrivateKey, victim: BoundToken) -> str:
    """A token the rogue API server signs for cluster a's pod."""
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, Any] = {
        "iss": ROGUE_ISSUER,
        "aud": ["keyferry:rogue"],
        "sub": f"system:serviceaccount:{victim.namespace}:{victim.service_account}",
        "iat": now,
        "nbf": now,
        "exp": now + dt.timedelta(minutes=10),
        "kubernetes.io": {
            "namespace": victim.namespace,
            "serviceaccount": {"name": victim.service_account},
            "pod": {"name": victim.pod, "uid": victim.pod_uid},
        },
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


async def register_rogue(broker: Broker, server: RogueApiServer) -> None:
    async with broker.admin_channel(PLATFORM) as channel:
        stub: Any = clusters_pb2_grpc.ClustersServiceStub(channel)
        await stub.RegisterCluster(
            clusters_pb2.RegisterClusterRequest(
                name="rogue",
                server=server.server,
                ca_pem=server.ca_pem,
                credential=clusters_pb2.ClusterCredential(bearer_token="anything-goes"),
                issuer=ROGUE_ISSUER,
            )
        )


async def test_a_rogue_cluster_minting_a_pod_uid_of_cluster_a_gets_nothing(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    leases: VaultClient,
    tmp_path: Path,
    exposure: Exposure,
) -> None:
    victim = mint(kube_clusters["a"])
    issued = await issue(broker, victim)
    exposure.handed_out(*issued.credential.values.values())
    key, jwks = signing_key()
    pods = [pod_object(victim.namespace, victim.pod, victim.pod_uid)]
    with RogueApiServer(tmp_path, jwks, pods) as server:
        await register_rogue(broker, server)
        before = await orders_leases(leases)
        denied_before = len(denials(broker, "issue"))

        error = await refused(broker, forged_token(key, victim))

    exposure.refusal(error)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(error) == "TOKEN_INVALID"
    assert "holds live leases in cluster(s) a" in (error.details() or "")
    records = denials(broker, "issue")
    assert len(records) == denied_before + 1, "the refusal is not in the audit trail"
    record = records[-1]
    assert record["reason"] == "TOKEN_INVALID"
    assert record["who"] == {
        "kind": "workload",
        "name": f"rogue/{victim.namespace}/{victim.service_account}",
    }
    assert (record["cluster"], record["pod_uid"]) == ("rogue", victim.pod_uid)
    assert [row for row in all_store_rows(broker) if row.cluster == "rogue"] == []
    assert await orders_leases(leases) <= before  # Vault issued nothing for the rogue
    [row] = store_rows(broker, victim)
    assert (row.id, row.state, row.generation) == (issued.lease.id, LeaseState.ACTIVE, 1)
    again = await issue(broker, victim)  # the real pod is unaffected
    assert again.lease.id == issued.lease.id
