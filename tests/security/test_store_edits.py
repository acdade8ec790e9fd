"""Someone who can write the store but holds no broker key (issue 18).

Lease rows:
A lease row's sealed credential is bound to the pod it was sealed for (cluster, pod UID,
credential name, role, generation: broker/service/common/sealing.py). A victim's row edited
to name the attacker's pod makes Issue find it for the attacker, and the blob then does not
open: the attacker gets an error, not the victim's credential, and no replay is recorded.

Role and cluster rows carry a MAC under a key derived from the sealing key
(broker/store/integrity.py): a role pointed at another Vault role, or a registered
cluster pointed at another API server, is refused with the fix in the message and one
audit record; an edited cluster is not joined when the broker reads its rows anew.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text

from broker.api.v1 import clusters_pb2, clusters_pb2_grpc
from broker.backends import VaultClient
from tests.bed.kube import KubeCluster
from tests.scene.admin_helpers import PLATFORM
from tests.scene.broker import Broker, issue, refused, start_broker
from tests.scene.rogue_api import ROGUE_ISSUER, RogueApiServer
from tests.scene.workloads import mint

from .attack_scene import Exposure, audit_records

pytestmark = pytest.mark.bed


async def test_a_victims_lease_row_pointed_at_another_pod_does_not_open(
    broker: Broker, kube_clusters: dict[str, KubeCluster], leases: VaultClient, exposure: Exposure
) -> None:
    cluster = kube_clusters["a"]
    victim, attacker = mint(cluster), mint(cluster)
    issued = await issue(broker, victim)
    exposure.handed_out(*issued.credential.values.values())
    store = broker.store()
    try:
        with store.engine.begin() as connection:
            connection.execute(
                text("UPDATE leases SET pod_uid = :uid, pod_name = :pod WHERE id = :id"),
                {"uid": attacker.pod_uid, "pod": attacker.pod, "id": issued.lease.id},
            )
    finally:
        store.close()

    error = await refused(broker, attacker)

    exposure.refusal(error)
    assert error.code() == grpc.StatusCode.INTERNAL  # SealBroken: nothing the caller can fix
    assert "does not open" in (error.details() or "")
    for value in issued.credential.values.values():
        assert value not in (error.details() or "")
    replays = [r for r in audit_records(broker) if r["action"] == "lease.replayed"]
    assert [r for r in replays if r.get("lease_id") == issued.lease.id] == []


# -- rows the broker trusts: roles and registered clusters (row MACs) ------------------------


def edit_rows(broker: Broker, sql: str, **values: object) -> None:
    store = broker.store()  # a store without the broker's keys, as a database login has it
    try:
        with store.engine.begin() as connection:
            connection.execute(text(sql), values)
    finally:
        store.close()


def refused_rows(broker: Broker, target: str) -> list[dict[str, Any]]:
    return [
        r
        for r in audit_records(broker)
        if r["action"] == "store.row_refused" and r.get("target") == target
    ]


async def test_a_role_row_edited_in_the_store_is_refused_with_its_fix_and_audited(
    broker: Broker, kube_clusters: dict[str, KubeCluster], exposure: Exposure
) -> None:
    store = broker.store()
    try:
        spec = store.roles.get("orders-db-ro").spec
    finally:
        store.close()
    edited = json.dumps({**spec, "vault_role": "rw"})  # a role of the attacker's choosing
    edit_rows(broker, "UPDATE roles SET spec = :spec WHERE name = 'orders-db-ro'", spec=edited)

    error = await refused(broker, mint(kube_clusters["a"]))
    again = await refused(broker, mint(kube_clusters["a"]))

    exposure.refusal(error)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error.details() or ""
    assert "roles row 'orders-db-ro'" in details
    assert "keyferry roles apply" in details
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    [record] = refused_rows(broker, "roles/orders-db-ro")  # once, not once per Issue
    assert (record["decision"], record["reason"]) == ("deny", "ROW_MAC_MISMATCH")
    assert record["who"] == {"kind": "system", "name": "broker.integrity"}


async def test_a_cluster_row_edited_in_the_store_is_not_trusted_after_a_restart(
    broker: Broker, tmp_path: Path, exposure: Exposure
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="member-1", use="sig", alg="RS256")
    with RogueApiServer(tmp_path, json.dumps({"keys": [jwk]}).encode()) as member:
        async with broker.admin_channel(PLATFORM) as channel:
            stub: Any = clusters_pb2_grpc.ClustersServiceStub(channel)
            await stub.RegisterCluster(
                clusters_pb2.RegisterClusterRequest(
                    name="member",
                    server=member.server,
                    ca_pem=member.ca_pem,
                    credential=clusters_pb2.ClusterCredential(bearer_token="member-token"),
                    issuer=ROGUE_ISSUER,
                )
            )
    edit_rows(
        broker, "UPDATE clusters SET server = 'https://203.0.113.9:6443' WHERE name = 'member'"
    )

    # The same store read anew, as a restart does: the edited cluster is not joined.
    data = yaml.safe_load((tmp_path / "broker.yaml").read_text())
    data["data_dir"] = str(tmp_path / "restarted")
    data["audit"] = {**data["audit"], "log": str(tmp_path / "restarted-audit.jsonl")}
    folder = tmp_path / "restart"
    folder.mkdir()
    restarted = await start_broker(data, folder)
    try:
        assert restarted.server.runtime.clusters.is_joined("member") is False
        [record] = refused_rows(restarted, "clusters/member")
        assert (record["decision"], record["cluster"]) == ("deny", "member")
        async with restarted.admin_channel(PLATFORM) as channel:
            stub = clusters_pb2_grpc.ClustersServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                await stub.GetCluster(clusters_pb2.GetClusterRequest(name="member"))
            exposure.refusal(caught.value)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "keyferry clusters deregister" in (caught.value.details() or "")
            # The fix the message names works on the edited row.
            await stub.DeregisterCluster(clusters_pb2.DeregisterClusterRequest(name="member"))
        store = restarted.store()
        try:
            assert not store.clusters.exists("member")
        finally:
            store.close()
    finally:
        await restarted.server.stop(1)
