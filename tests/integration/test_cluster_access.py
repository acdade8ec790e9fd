"""Just-in-time access to a member cluster on the bed: cluster a's real API server, the
broker's RBAC of docs/examples/broker-rbac.yaml as-is (its token, no admin certificate),
the example policy set, real kubectl with the kubeconfig `keyferry access issue` writes.

- alice (developers): requests; bob (security): approves, denies, revokes.
- The broker reaches cluster a through a relay the test can take away (the cluster
  unreachable for the broker); kubectl with a grant's kubeconfig goes the same way.
- The broker's clock is shifted by the tests, so a grant ends because the test says so.
  The token's own expiry is the API server's (real time), so a "token-expired" path is the
  broker's record that the grant ran its full length; the ServiceAccount's deletion is
  what makes kubectl refused at once either way.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from kubernetes import client as k8s
from typer.testing import CliRunner

from broker.api.v1 import (
    access_pb2,
    access_pb2_grpc,
    clusters_pb2,
    clusters_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)
from broker.audit import read_log
from broker.cli.access import kubeconfig, write_private
from broker.cli.main import app as cli
from broker.clusters.rbac import ClusterAccess
from broker.identity.admin_pki import AdminCa
from tests.bed.kube import KubeCluster
from tests.bed.vault import VaultServer
from tests.scene.admin_helpers import PLATFORM
from tests.scene.broker import DOCS, Broker, config, start_broker
from tests.scene.clocks import ShiftedClock
from tests.scene.cluster_access import (
    ACCESS_NAMESPACE,
    ApiRelay,
    ensure_namespace,
    grant_objects,
    kubectl_with,
    refused,
    relayed_broker_cluster,
)
from tests.scene.member_clusters import broker_kubeconfig, register_request
from tests.scene.polling import until
from tests.scene.stores import sqlite_url
from tests.scene.workloads import error_info

pytestmark = pytest.mark.bed
ALICE, BOB = "alice", "bob"
GROUPS = {ALICE: ["developers"], BOB: ["security"]}
REASON = "INC-4711: orders pods crash-looping"
ORDERS = "orders"
ABSENT_ROLE = "keyferry-test-absent"  # in the broker's RBAC and settings, not in the cluster
UNRIGHTED_ROLE = "admin"  # in the broker's settings, not in its RBAC
MISSING_NAMESPACE = "keyferry-no-such-ns"
# The example policies, and developers may also ask for the two ClusterRoles above and the
# missing namespace (so the cluster, not Cedar, is what refuses them).
EXTRA_POLICY = f"""
@id("test-developers-odd-roles")
permit (
  principal in Group::"developers",
  action == Action::"request_cluster_access",
  resource is ClusterAccess
)
when {{
  ["{ABSENT_ROLE}", "{UNRIGHTED_ROLE}"].contains(resource.cluster_role) ||
  resource.namespace == "{MISSING_NAMESPACE}"
}};
"""
ABSENT_ROLE_RIGHTS = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: keyferry-test-absent-role
rules:
  - apiGroups: ["rbac.authorization.k8s.io"]
    resources: ["clusterroles"]
    verbs: ["get", "bind"]
    resourceNames: ["{ABSENT_ROLE}"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: keyferry-test-absent-role
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: keyferry-test-absent-role
subjects:
  - kind: ServiceAccount
    name: keyferry-broker
    namespace: keyferry-system
"""


@pytest.fixture(scope="module")
def cluster_a(kube_clusters: dict[str, KubeCluster]) -> KubeCluster:
    cluster = kube_clusters["a"]
    with cluster.api_client() as api:
        ensure_namespace(api, ORDERS)
    cluster.kubectl("apply", "-f", "-", stdin=ABSENT_ROLE_RIGHTS)
    return cluster


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
async def relayed(
    tmp_path: Path, cluster_a: KubeCluster
) -> AsyncIterator[tuple[dict[str, Any], ApiRelay]]:
    entry, relay = await relayed_broker_cluster(cluster_a, tmp_path)
    yield entry, relay
    await relay.away()


@pytest.fixture
def broker_data(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    transit: object,
    relayed: tuple[dict[str, Any], ApiRelay],
) -> dict[str, Any]:
    data = config(tmp_path, vault, approle, {}, sqlite_url(tmp_path))
    data["clusters"] = [relayed[0]]
    policies = tmp_path / "policies.cedar"
    policies.write_text((DOCS / "examples" / "policies.cedar").read_text() + EXTRA_POLICY)
    data["policies"] = [str(policies)]
    data["revocation"] = {"interval": "1s", "backoff": "1s", "backoff_cap": "2s"}
    data["access"] = {
        "max_duration": "4h",
        "approval_wait": "30m",
        "expiry_interval": "1s",
        "cluster_roles": ["view", "edit", ABSENT_ROLE, UNRIGHTED_ROLE],
    }
    ca = AdminCa.load(tmp_path / "admin-ca")
    for name, groups in GROUPS.items():
        ca.issue_operator(name, groups)
    return data


@pytest.fixture
async def broker(
    tmp_path: Path, broker_data: dict[str, Any], clock: ShiftedClock
) -> AsyncIterator[Broker]:
    running = await start_broker(broker_data, tmp_path, clock)
    yield running
    await running.server.stop(1)


async def call(broker: Broker, operator: str, method: str, request: Any) -> Any:
    async with broker.admin_channel(operator) as channel:
        stub: Any = access_pb2_grpc.AccessServiceStub(channel)
        return await getattr(stub, method)(request, timeout=60)


async def approved(
    broker: Broker, minutes: int = 30, *, namespace: str = ORDERS, role: str = "edit"
) -> Any:
    wanted = access_pb2.ClusterAccessRequest(cluster="a", namespace=namespace, kube_role=role)
    request = access_pb2.RequestGrantRequest(
        cluster_access=wanted, duration=duration_pb2.Duration(seconds=minutes * 60), reason=REASON
    )
    grant = (await call(broker, ALICE, "RequestGrant", request)).grant
    decided = access_pb2.ApproveGrantRequest(grant_id=grant.id)
    return (await call(broker, BOB, "ApproveGrant", decided)).grant


async def issue(broker: Broker, grant_id: str) -> Any:
    request = access_pb2.IssueClusterAccessRequest(grant_id=grant_id)
    return await call(broker, ALICE, "IssueClusterAccess", request)


async def refusal(broker: Broker, grant_id: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        await issue(broker, grant_id)
    return caught.value


async def grant(broker: Broker, grant_id: str) -> Any:
    request = access_pb2.GetGrantRequest(grant_id=grant_id)
    return (await call(broker, BOB, "GetGrant", request)).grant


async def left_in(cluster: KubeCluster, grant_id: str) -> list[str]:
    def read() -> list[str]:
        with cluster.api_client() as api:
            return grant_objects(api, grant_id)

    return await asyncio.to_thread(read)


async def removed(broker: Broker, grant_id: str) -> Any:
    async def probe() -> Any:
        found = await grant(broker, grant_id)
        return found if found.cluster_access.objects == "removed" else None

    return await until(probe, f"grant {grant_id}'s objects removed", within=30)


def write_kubeconfig(reply: Any, path: Path) -> Path:
    write_private(path, kubeconfig(reply))
    return path


async def kubectl(kubeconfig: Path, *args: str) -> Any:
    return await asyncio.to_thread(kubectl_with, kubeconfig, *args)


def audit_actions(broker: Broker, grant_id: str) -> list[str]:
    records = [json.loads(line) for line in read_log(broker.settings.audit.log) if line]
    return [r["action"] for r in records if r.get("pod") == grant_id]


# --- the path of a grant ----------------------------------------------------------------------


async def test_the_cli_kubeconfig_works_in_its_namespace_only_until_revoked(
    broker: Broker, cluster_a: KubeCluster, tmp_path: Path
) -> None:
    runner = CliRunner()
    alice = ["--context", str(broker.context_file(tmp_path, ALICE))]
    bob = ["--context", str(broker.context_file(tmp_path, BOB))]

    def run(*args: str) -> Any:
        return runner.invoke(cli, list(args))

    requested = await asyncio.to_thread(
        run,
        "access",
        "request",
        "--cluster=a",
        f"--namespace={ORDERS}",
        "--kube-role=edit",
        "--duration=30m",
        f"--reason={REASON}",
        "-o",
        "json",
        *alice,
    )
    assert requested.exit_code == 0, requested.output
    grant_id = cli_json(requested)["id"]
    assert cli_json(requested)["role"] == f"kube:a/{ORDERS}/edit"
    own = await asyncio.to_thread(run, "access", "approve", grant_id, *alice)
    assert own.exit_code == 1
    approved_ = await asyncio.to_thread(run, "access", "approve", grant_id, *bob)
    assert approved_.exit_code == 0, approved_.output

    target = tmp_path / "alice" / "orders-a.yaml"
    target.parent.mkdir()
    issued = await asyncio.to_thread(
        run, "access", "issue", grant_id, "--to", str(target), "-o", "json", *alice
    )
    assert issued.exit_code == 0, issued.output
    assert target.stat().st_mode & 0o777 == 0o600
    assert "token" not in cli_json(issued)

    mine = await kubectl(target, "get", "pods", f"--namespace={ORDERS}")
    assert mine.ok, mine.output
    assert (await kubectl(target, "auth", "can-i", "create", "deployments")).output.strip() == "yes"
    for outside in (
        ("get", "pods", "--namespace=kube-system"),
        ("get", "pods", "--all-namespaces"),
        ("get", "secrets", "--namespace=default"),
        ("get", "namespaces"),
        ("get", "serviceaccounts", f"--namespace={ACCESS_NAMESPACE}"),
    ):
        result = await kubectl(target, *outside)
        assert refused(result), (outside, result.output)
    assert sorted(await left_in(cluster_a, grant_id)) == [
        f"RoleBinding/{ORDERS}/keyferry-grant-{grant_id}",
        f"ServiceAccount/{ACCESS_NAMESPACE}/keyferry-grant-{grant_id}",
    ]
    listed = await asyncio.to_thread(run, "access", "list", "-o", "json", *bob)
    shown = next(g for g in cli_json(listed) if g["id"] == grant_id)
    assert shown["state"] == "issued"
    assert shown["cluster_objects"] == "present"

    revoked = await asyncio.to_thread(run, "access", "revoke", grant_id, *bob)
    assert revoked.exit_code == 0, revoked.output
    after = await kubectl(target, "get", "pods", f"--namespace={ORDERS}")
    assert refused(after), after.output
    assert await left_in(cluster_a, grant_id) == []
    ended = await grant(broker, grant_id)
    assert ended.cluster_access.objects == "removed"
    assert ended.cluster_access.ended_path == "service-account-deleted"
    actions = audit_actions(broker, grant_id)
    assert actions.index("access.revoke") < actions.index("access.cluster_removed")


async def test_expiry_ends_access_by_the_token_or_by_deleting_its_account(
    broker: Broker, cluster_a: KubeCluster, clock: ShiftedClock, tmp_path: Path
) -> None:
    """A 30-minute grant's token expires at the grant's end; a 5-minute grant's token
    cannot (the TokenRequest API's least is 10 minutes), so its end deletes the account."""
    long, short = await approved(broker, 30), await approved(broker, 5)
    configs = {}
    for made in (long, short):
        reply = await issue(broker, made.id)
        configs[made.id] = write_kubeconfig(reply, tmp_path / f"{made.id}.yaml")
        until_end = reply.token_expires_at.ToDatetime() - reply.grant.expires_at.ToDatetime()
        if made is long:
            assert abs(until_end) <= timedelta(seconds=5)
        else:
            assert until_end >= timedelta(minutes=4)
        assert (await kubectl(configs[made.id], "get", "pods", f"-n={ORDERS}")).ok

    paths = {}
    for made, offset in ((short, 6), (long, 31)):
        clock.offset = timedelta(minutes=offset)
        ended = await removed(broker, made.id)
        assert ended.state == access_pb2.GRANT_STATE_EXPIRED
        paths[made.id] = ended.cluster_access.ended_path
        assert refused(await kubectl(configs[made.id], "get", "pods", f"-n={ORDERS}"))
        assert await left_in(cluster_a, made.id) == []
        if made is short:
            assert (await kubectl(configs[long.id], "get", "pods", f"-n={ORDERS}")).ok
    assert paths == {long.id: "token-expired", short.id: "service-account-deleted"}


# --- refusals -------------------------------------------------------------------------------


async def test_what_the_cluster_lacks_is_named_and_nothing_is_left(
    broker: Broker, cluster_a: KubeCluster
) -> None:
    cases = [
        (f"namespace '{MISSING_NAMESPACE}' does not exist", MISSING_NAMESPACE, "edit"),
        (f"ClusterRole '{ABSENT_ROLE}' does not exist", ORDERS, ABSENT_ROLE),
        ("lacks a rule cluster access needs: get clusterroles", ORDERS, UNRIGHTED_ROLE),
    ]
    for said, namespace, role in cases:
        made = await approved(broker, 30, namespace=namespace, role=role)
        error = await refusal(broker, made.id)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert said in (error.details() or ""), error.details()
        assert await left_in(cluster_a, made.id) == []
        after = await grant(broker, made.id)
        assert after.state == access_pb2.GRANT_STATE_APPROVED  # may be issued once fixed
        assert after.cluster_access.objects == "absent"


async def test_all_namespaces_needs_a_permit_naming_it(broker: Broker) -> None:
    wanted = access_pb2.ClusterAccessRequest(cluster="a", all_namespaces=True, kube_role="view")
    request = access_pb2.RequestGrantRequest(
        cluster_access=wanted, duration=duration_pb2.Duration(seconds=600), reason=REASON
    )
    with pytest.raises(grpc.RpcError) as caught:
        await call(broker, ALICE, "RequestGrant", request)
    assert error_info(caught.value).reason == "POLICY_DENIED"
    assert "request_cluster_wide_access" in (caught.value.details() or "")


async def test_who_can_request_a_cluster_role_answers_as_requests_are_decided(
    broker: Broker,
) -> None:
    async with broker.admin_channel(BOB) as channel:
        stub: Any = policy_pb2_grpc.PolicyServiceStub(channel)
        reply = await stub.WhoCan(
            policy_pb2.WhoCanRequest(kube_role="edit", cluster="a"), timeout=60
        )
    developers = [o for o in reply.operators if o.group == "developers"]
    assert [o.action for o in developers] == ["request_cluster_access"]
    where = set(developers[0].namespaces)
    assert {ORDERS, MISSING_NAMESPACE} <= where
    assert "developers-request-cluster-access" in developers[0].policy_ids
    assert not [o for o in reply.operators if o.group == "security"]
    # alice (developers) asks for real: allowed where who-can says, refused elsewhere.
    for namespace in (ORDERS, "kube-system", "default"):
        wanted = access_pb2.ClusterAccessRequest(cluster="a", namespace=namespace, kube_role="edit")
        request = access_pb2.RequestGrantRequest(
            cluster_access=wanted, duration=duration_pb2.Duration(seconds=600), reason=REASON
        )
        code = grpc.StatusCode.OK
        try:
            await call(broker, ALICE, "RequestGrant", request)
        except grpc.RpcError as error:
            code = error.code()
        assert (code == grpc.StatusCode.OK) is (namespace in where), namespace


# --- an unreachable cluster, and objects keyferry did not make ---------------------------------


async def test_an_unreachable_cluster_refuses_issue_and_holds_removal_until_it_answers(
    broker: Broker,
    cluster_a: KubeCluster,
    relayed: tuple[dict[str, Any], ApiRelay],
    tmp_path: Path,
) -> None:
    relay = relayed[1]
    made = await approved(broker, 30)
    await relay.away()
    error = await refusal(broker, made.id)
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    assert "unreachable" in (error.details() or "")
    assert (await grant(broker, made.id)).cluster_access.objects == "absent"

    await relay.up()
    reply = await issue(broker, made.id)
    config_file = write_kubeconfig(reply, tmp_path / "grant.yaml")
    await relay.away()
    revoke = access_pb2.RevokeGrantRequest(grant_id=made.id)
    revoked = (await call(broker, BOB, "RevokeGrant", revoke)).grant
    assert revoked.state == access_pb2.GRANT_STATE_REVOKED
    assert revoked.cluster_access.objects == "removing"

    async def retried() -> Any:
        found = await grant(broker, made.id)
        return found if found.cluster_access.removal_attempts >= 2 else None

    pending = await retried_until(retried)
    assert "unreachable" in pending.cluster_access.last_error
    assert await pending_removals(broker) == 1.0
    assert len(await left_in(cluster_a, made.id)) == 2  # still there, as the broker says

    await relay.up()
    ended = await removed(broker, made.id)
    assert ended.cluster_access.ended_path == "service-account-deleted"
    assert await left_in(cluster_a, made.id) == []
    assert await pending_removals(broker) == 0.0
    assert refused(await kubectl(config_file, "get", "pods", f"-n={ORDERS}"))
    assert "access.cluster_remove_failed" in audit_actions(broker, made.id)


async def test_an_edited_binding_ends_the_grant_and_copied_labels_do_not_get_it_deleted(
    broker: Broker, cluster_a: KubeCluster
) -> None:
    made = await approved(broker, 30)
    await issue(broker, made.id)
    name = f"keyferry-grant-{made.id}"

    def replace_binding() -> str:
        with cluster_a.api_client() as api:
            rbac: Any = k8s.RbacAuthorizationV1Api(api)
            ours = rbac.read_namespaced_role_binding(name, ORDERS)
            rbac.delete_namespaced_role_binding(name, ORDERS)
            ours.metadata = k8s.V1ObjectMeta(
                name=name, labels=ours.metadata.labels, annotations=ours.metadata.annotations
            )
            return str(rbac.create_namespaced_role_binding(ORDERS, ours).metadata.uid)

    impostor = await asyncio.to_thread(replace_binding)
    # The broker notices its binding is gone (another UID stands there): the grant ends,
    # its ServiceAccount is deleted, and the binding it did not make is left alone.
    ended = await removed(broker, made.id)
    assert ended.state == access_pb2.GRANT_STATE_REVOKED
    assert ended.ended_by == "broker.cluster-access"
    assert await left_in(cluster_a, made.id) == [f"RoleBinding/{ORDERS}/{name}"]

    def uid_now() -> str:
        with cluster_a.api_client() as api:
            rbac: Any = k8s.RbacAuthorizationV1Api(api)
            found = rbac.read_namespaced_role_binding(name, ORDERS)
            rbac.delete_namespaced_role_binding(name, ORDERS)
            return str(found.metadata.uid)

    assert await asyncio.to_thread(uid_now) == impostor


async def test_a_broker_killed_mid_issue_leaves_nothing_after_restart(
    broker: Broker,
    broker_data: dict[str, Any],
    cluster_a: KubeCluster,
    clock: ShiftedClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ServiceAccount and binding are made, then the broker stops before the token is
    (the issue is cancelled, as a kill would leave it); the restarted broker's cleanup pass
    deletes both once the issue's claim has passed, and the grant may be issued again."""
    made = await approved(broker, 30)
    real_token = ClusterAccess.token

    async def hang(self: ClusterAccess, objects: Any, seconds: int) -> Any:
        await asyncio.Event().wait()  # never: the broker dies here

    monkeypatch.setattr(ClusterAccess, "token", hang)
    issuing = asyncio.ensure_future(issue(broker, made.id))

    async def both_made() -> bool:
        return len(await left_in(cluster_a, made.id)) == 2

    await until(both_made, "the grant's ServiceAccount and binding made", within=30)
    await broker.server.stop(0)
    with pytest.raises(grpc.RpcError):
        await issuing
    monkeypatch.setattr(ClusterAccess, "token", real_token)

    restarted = await start_broker(broker_data, tmp_path, clock)
    try:
        assert len(await left_in(cluster_a, made.id)) == 2  # the issue still holds its claim
        clock.offset = timedelta(minutes=2)  # past the claim: the pass takes the row

        async def cleaned() -> bool:
            return await left_in(cluster_a, made.id) == []

        await until(cleaned, "the dead issue's objects deleted", within=30)
        assert (await grant(restarted, made.id)).cluster_access.objects == "absent"
        reply = await issue(restarted, made.id)  # the grant is still good
        config_file = write_kubeconfig(reply, tmp_path / "after-restart.yaml")
        assert (await kubectl(config_file, "get", "pods", f"-n={ORDERS}")).ok
    finally:
        await restarted.server.stop(1)


async def test_deregistering_a_cluster_ends_its_grants_and_deletes_their_objects(
    broker: Broker, kube_clusters: dict[str, KubeCluster], tmp_path: Path
) -> None:
    b = kube_clusters["b"]
    with b.api_client() as api:
        ensure_namespace(api, ORDERS)
    request = register_request(b, await asyncio.to_thread(broker_kubeconfig, b, tmp_path))
    async with broker.admin_channel(PLATFORM) as channel:
        clusters: Any = clusters_pb2_grpc.ClustersServiceStub(channel)
        await clusters.RegisterCluster(request, timeout=60)
    wanted = access_pb2.ClusterAccessRequest(cluster="b", namespace=ORDERS, kube_role="view")
    asked = access_pb2.RequestGrantRequest(
        cluster_access=wanted, duration=duration_pb2.Duration(seconds=1800), reason=REASON
    )
    made = (await call(broker, ALICE, "RequestGrant", asked)).grant
    await call(broker, BOB, "ApproveGrant", access_pb2.ApproveGrantRequest(grant_id=made.id))
    config_file = write_kubeconfig(await issue(broker, made.id), tmp_path / "b.yaml")
    assert (await kubectl(config_file, "get", "pods", f"-n={ORDERS}")).ok
    assert len(await left_in(b, made.id)) == 2

    async with broker.admin_channel(PLATFORM) as channel:
        clusters = clusters_pb2_grpc.ClustersServiceStub(channel)
        await clusters.DeregisterCluster(
            clusters_pb2.DeregisterClusterRequest(name="b"), timeout=60
        )
    assert await left_in(b, made.id) == []
    assert refused(await kubectl(config_file, "get", "pods", f"-n={ORDERS}"))
    ended = await grant(broker, made.id)
    assert ended.state == access_pb2.GRANT_STATE_REVOKED
    assert ended.cluster_access.objects == "removed"


# --- helpers --------------------------------------------------------------------------------


async def retried_until(probe: Any) -> Any:
    return await until(probe, "the removal retried", within=30)


async def pending_removals(broker: Broker) -> float:
    port = broker.server.metrics_port
    assert port is not None

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(scrape)
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("keyferry_cluster_grant_removals_pending ")
    )
    return float(line.split()[1])


def cli_json(result: Any) -> Any:
    """The JSON a command printed; the in-process broker's log lines share its stdout."""
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line[:1] in ("{", "["))
    return json.loads("\n".join(lines[start:]))
