"""`who-can` and `why` against the decisions the broker makes for the same requests: the
scene's broker (clusters a, b, c; the example policy set; role orders-db-ro), real pods in
cluster a with tokens bound to them, and operators of the example policy's groups.

For each pod the test asks both: WhoCan's answer (is the pod among those allowed, or
refused by a forbid, or absent) and Why's, and the broker's own Issue with the pod's token.
For operators: WhoCan names the groups that may request the role; a member of each group
asks RequestGrant for real.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from broker.api.v1 import access_pb2, access_pb2_grpc, policy_pb2, policy_pb2_grpc
from broker.identity.admin_pki import AdminCa
from tests.bed.kube import KubeCluster
from tests.scene.admin_helpers import PLATFORM, SECURITY
from tests.scene.broker import ROLE, Broker, issue
from tests.scene.kube_helpers import BoundToken
from tests.scene.polling import until
from tests.scene.workloads import mint

pytestmark = pytest.mark.bed
CREDENTIAL = "orders-db"
DEVELOPER = "dana-developer"


async def who_can(broker: Broker) -> Any:
    async with broker.admin_channel(SECURITY) as channel:
        stub: Any = policy_pb2_grpc.PolicyServiceStub(channel)
        return await stub.WhoCan(
            policy_pb2.WhoCanRequest(role=ROLE, credential_name=CREDENTIAL), timeout=60
        )


async def why(broker: Broker, token: BoundToken) -> Any:
    request = policy_pb2.WhyRequest(
        role=ROLE,
        cluster=token.cluster,
        namespace=token.namespace,
        service_account=token.service_account,
        pod=token.pod,
        credential_name=CREDENTIAL,
    )
    async with broker.admin_channel(SECURITY) as channel:
        stub: Any = policy_pb2_grpc.PolicyServiceStub(channel)
        return await stub.Why(request, timeout=60)


async def issues(broker: Broker, token: BoundToken) -> bool:
    """What the broker decides for the pod's own Issue."""
    try:
        await issue(broker, token, CREDENTIAL)
    except grpc.RpcError as error:
        code = error.code()
    else:
        return True
    assert code == grpc.StatusCode.PERMISSION_DENIED
    return False


def answer_for(reply: Any, token: BoundToken) -> str:
    """Where WhoCan puts the pod: allowed, refused (a forbid) or absent (default deny)."""
    for group in reply.workloads:
        if (group.cluster, group.namespace, group.service_account) != (
            token.cluster,
            token.namespace,
            token.service_account,
        ):
            continue
        if token.pod in group.pods:
            return "allowed"
        if any(line.startswith(f"{token.pod}:") for line in group.refused_pods):
            return "refused"
    return "absent"


async def test_who_can_and_why_answer_as_the_broker_decides(
    broker: Broker, kube_clusters: dict[str, KubeCluster]
) -> None:
    cluster = kube_clusters["a"]
    pods = {
        "orders app": mint(cluster, "orders", "app"),
        "orders debug pod": mint(cluster, "orders", "debug"),
        "billing app": mint(cluster, "billing", "app"),
    }

    async def seen() -> Any:
        reply = await who_can(broker)
        shown = {answer_for(reply, pods["orders app"]), answer_for(reply, pods["orders debug pod"])}
        return reply if "absent" not in shown else None

    reply = await until(seen, "the new pods in the broker's pod inventory", within=30)
    assert reply.inventory["a"] in ("watch", "listed")
    for what, token in pods.items():
        actual = await issues(broker, token)
        answered = answer_for(reply, token)
        explained = await why(broker, token)
        assert (answered == "allowed") is actual, what
        assert explained.allowed is actual, what
        if answered == "refused":
            assert "no-debug-pods" in explained.policy_ids
    allowed = next(
        g for g in reply.workloads if g.namespace == "orders" and pods["orders app"].pod in g.pods
    )
    assert "orders-workloads-issue" in allowed.policy_ids

    # Operators: the groups WhoCan says may request the role, and one it does not name.
    requesting = {o.group for o in reply.operators if o.action == "request_access" and o.group}
    assert requesting == {"developers"}
    ca = AdminCa.load(broker.settings.admin.client_ca.parent)  # type: ignore[union-attr]
    ca.issue_operator(DEVELOPER, ["developers"])
    for operator, group in ((DEVELOPER, "developers"), (PLATFORM, "platform")):
        request = access_pb2.RequestGrantRequest(
            role=ROLE, duration=duration_pb2.Duration(seconds=600), reason="INC-1: who-can test"
        )
        async with broker.admin_channel(operator) as channel:
            stub: Any = access_pb2_grpc.AccessServiceStub(channel)
            code = grpc.StatusCode.OK
            try:
                await stub.RequestGrant(request, timeout=60)
            except grpc.RpcError as error:
                code = error.code()
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED)
        actual = code == grpc.StatusCode.OK
        assert (group in requesting) is actual, operator


async def test_who_can_is_decided_by_cedar_and_audited(broker: Broker) -> None:
    async with broker.admin_channel(PLATFORM) as channel:
        stub: Any = policy_pb2_grpc.PolicyServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            await stub.WhoCan(policy_pb2.WhoCanRequest(role=ROLE), timeout=60)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "explain" in (caught.value.details() or "")
