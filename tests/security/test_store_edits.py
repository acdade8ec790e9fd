"""Someone who can write the lease store but holds no sealing key (issue 18).

A lease row's sealed credential is bound to the pod it was sealed for (cluster, pod UID,
credential name, role, generation: broker/service/common/sealing.py). A victim's row edited
to name the attacker's pod makes Issue find it for the attacker, and the blob then does not
open: the attacker gets an error, not the victim's credential, and no replay is recorded.
"""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import text

from broker.backends import VaultClient
from tests.bed.kube import KubeCluster
from tests.scene.broker import Broker, issue, refused
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
