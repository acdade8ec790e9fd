"""Workloads reaching beyond what they were granted: a role their namespace or service account
may not have, and another pod's lease renewed, released or acknowledged on a Watch stream.

Each is refused with its typed reason, leaves a deny record in the audit trail, and
leaves no new lease; the other pod's lease stays as it was and its login keeps working.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from broker.api.v1 import broker_pb2
from broker.backends import VaultClient
from broker.store import LeaseState
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.scene.broker import Broker, issue, log_in, orders_leases
from tests.scene.kube_helpers import eventually
from tests.scene.workloads import bearer, broker_stub, mint

from .attack_scene import Exposure, assert_no_lease, audit_records, denials, reason, store_rows

pytestmark = pytest.mark.bed


@pytest.mark.parametrize(
    ("namespace", "account", "role"),
    [
        ("payments", "workload", "orders-db-ro"),  # a namespace no policy permits
        ("billing", "workload", "orders-db-ro"),  # billing's permit names account "biller"
        ("orders", "workload", "s3-reader"),  # orders may have database roles only
    ],
)
async def test_a_role_the_namespace_or_service_account_may_not_have(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    leases: VaultClient,
    exposure: Exposure,
    namespace: str,
    account: str,
    role: str,
) -> None:
    token = mint(kube_clusters["a"], namespace=namespace, account=account)
    before = await orders_leases(leases)
    with pytest.raises(grpc.RpcError) as caught:
        await issue(broker, token, role=role)
    exposure.refusal(caught.value)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "POLICY_DENIED"
    record = denials(broker, "issue")[-1]
    assert (record["namespace"], record["pod"], record["role"]) == (namespace, token.pod, role)
    assert record["reason"] == "POLICY_DENIED"
    await assert_no_lease(broker, token, leases, before)


async def test_the_permitted_account_of_billing_is_issued(
    broker: Broker, kube_clusters: dict[str, KubeCluster], exposure: Exposure
) -> None:
    """The control for the account case: the same namespace as "biller" is issued."""
    token = mint(kube_clusters["a"], namespace="billing", account="biller")
    issued = await issue(broker, token)
    exposure.handed_out(*issued.credential.values.values())
    assert issued.lease.role == "orders-db-ro"


@pytest.mark.parametrize("method", ["Renew", "Release"])
async def test_one_pod_renewing_or_releasing_another_pods_lease(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    leases: VaultClient,
    postgres: PostgresServer,
    exposure: Exposure,
    method: str,
) -> None:
    owner = mint(kube_clusters["a"], pod_prefix="owner")
    stranger = mint(kube_clusters["a"], pod_prefix="stranger")  # same namespace and account
    issued = await issue(broker, owner)
    exposure.handed_out(*issued.credential.values.values())
    before = await orders_leases(leases)
    request: Any = (broker_pb2.RenewRequest if method == "Renew" else broker_pb2.ReleaseRequest)(
        lease_id=issued.lease.id
    )
    async with broker_stub(broker.port, broker.ca) as stub:
        with pytest.raises(grpc.RpcError) as caught:
            await getattr(stub, method)(request, metadata=bearer(stranger))
    exposure.refusal(caught.value)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # tells nothing of other pods
    assert reason(caught.value) == "NOT_FOUND"
    record = denials(broker, method.lower())[-1]
    assert (record["pod"], record["lease_id"], record["reason"]) == (
        stranger.pod,
        issued.lease.id,
        "NOT_FOUND",
    )
    await assert_no_lease(broker, stranger, leases, before)
    [row] = store_rows(broker, owner)
    assert (row.state, row.generation) == (LeaseState.ACTIVE, 1)
    assert row.expires_at is not None
    log_in(postgres, issued.credential.values)  # the owner's login still works


async def test_one_pod_acknowledging_another_pods_lease_on_its_watch_stream(
    broker: Broker,
    kube_clusters: dict[str, KubeCluster],
    leases: VaultClient,
    postgres: PostgresServer,
    exposure: Exposure,
) -> None:
    owner = mint(kube_clusters["b"], pod_prefix="owner")
    stranger = mint(kube_clusters["b"], pod_prefix="stranger")
    issued = await issue(broker, owner)
    exposure.handed_out(*issued.credential.values.values())
    before = await orders_leases(leases)
    ack = broker_pb2.WatchRequest(
        ack=broker_pb2.Ack(lease_id=issued.lease.id, generation=issued.lease.generation)
    )

    async with broker_stub(broker.port, broker.ca) as stub:
        call = stub.Watch(metadata=bearer(stranger))
        await call.write(ack)

        def refused() -> dict[str, Any] | None:
            found = denials(broker, "ack")
            return found[-1] if found else None

        record = await asyncio.to_thread(eventually, refused, "the ack is refused and audited")
        call.cancel()
    assert (record["pod"], record["lease_id"]) == (stranger.pod, issued.lease.id)
    acked = [r for r in audit_records(broker) if r["action"] == "lease.acked"]
    assert acked == []
    await assert_no_lease(broker, stranger, leases, before)
    [row] = store_rows(broker, owner)
    assert row.state == LeaseState.ACTIVE
    log_in(postgres, issued.credential.values)
