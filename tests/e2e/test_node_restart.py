"""`keyferry.io/on-rotate: restart` on cluster a's real node: the kubelet restarts the app
container the agent ended, with the new credential already in its file.

The scene (broker on the node's bridge address, webhook, images) is tests/scene/node_scene.py's.
Each app copies its DSN file at start to /tmp/started-with, inside its container: a
restarted container starts from a fresh writable layer, so that copy shows which
credential the running instance of the app started with. Rotations go through the admin
API's RotateSelected, by selector, as `keyferry rotate --pod ...` sends them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest
from kubernetes import client as k8s

from broker.api.v1 import rotation_pb2, rotation_pb2_grpc
from broker.store import LeaseState
from tests.scene.broker_thread import BrokerThread
from tests.scene.kube_helpers import core, eventually
from tests.scene.node_scene import NAMESPACE, RUN, NodeScene, refused
from tests.scene.nodepods import SECRETS, NodePod, app_container, pod_body
from tests.scene.pods import AGENT, dsn_values, live_leases, live_leases_all

pytestmark = pytest.mark.bed
RESTART = {
    "keyferry.io/on-rotate": "restart",
    "keyferry.io/restart-containers": "app",
    "keyferry.io/restart-grace-seconds": "5",
}
# The app: keeps the DSN it started with, says so, idles; the worker (not restarted) too.
STARTS = (
    f'cp "{SECRETS}/db" /tmp/started-with; '
    "echo \"app started with files: $(ls \"$SECRETS\" | tr '\\n' ' ')\"; "
    "while true; do sleep 1 & wait $!; done"
)
RESTART_TIMEOUT = 90.0


def restart_body(name: str, image: str, roles: dict[str, str]) -> dict[str, Any]:
    body = pod_body(name, image, roles, annotations=RESTART)
    worker = app_container(image, {"SECRETS": SECRETS})
    worker["name"] = "worker"
    body["spec"]["containers"].append(worker)
    for container in body["spec"]["containers"]:
        container["command"] = ["sh", "-c", STARTS]
    body["spec"]["shareProcessNamespace"] = True
    return body


def restarts(pod: NodePod) -> dict[str, int]:
    """Each app container's restartCount, as the kubelet reports it."""
    statuses = pod.read().status.container_statuses or []
    return {s.name: s.restart_count for s in statuses}


def ready_again(pod: NodePod, expected: dict[str, int]) -> Any:
    def check() -> Any:
        found = pod.read()
        statuses = found.status.container_statuses or []
        counts = {s.name: s.restart_count for s in statuses}
        if counts == expected and all(s.ready for s in statuses):
            return found
        return None

    return eventually(check, f"{pod.name} restarted as {expected} and ready", RESTART_TIMEOUT)


def started_with(pod: NodePod) -> str:
    return pod.exec("cat", "/tmp/started-with")  # noqa: S108 - inside the container


def rotate_selected(broker: BrokerThread, pod: str, grace_seconds: int | None = None) -> Any:
    """RotateSelected by pod name: the summary (matched, done, pending)."""

    async def rotate() -> Any:
        request = rotation_pb2.RotateSelectedRequest(
            selector=rotation_pb2.LeaseSelector(clusters=["a"], pods=[pod])
        )
        if grace_seconds is not None:
            request.grace.seconds = grace_seconds
        async with broker.broker.admin_channel() as channel:
            stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
            summary = None
            async for message in stub.RotateSelected(request):
                if message.WhichOneof("event") == "summary":
                    summary = message.summary
            return summary

    return asyncio.run(rotate())


def audit_records(broker: BrokerThread, action: str, pod: str) -> list[dict[str, Any]]:
    text = broker.broker.settings.audit.log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line]
    return [r for r in records if r["action"] == action and r.get("pod") == pod]


def state(broker: BrokerThread, pod: str, lease_id: str) -> LeaseState:
    (lease,) = [lease for lease in live_leases_all(broker, "a", pod) if lease.id == lease_id]
    return LeaseState(lease.state)


@pytest.fixture(scope="module")
def deployment(scene: NodeScene) -> Iterator[list[NodePod]]:
    """A Deployment of two replicas with on-rotate: restart, a DSN each; Running and Ready."""
    name = f"restarted-{RUN}"
    template = restart_body(name, scene.images.app, {"db": "orders-db-ro"})
    template["metadata"].pop("name")
    template["metadata"]["labels"]["restart-run"] = RUN
    for key in ("apiVersion", "kind"):
        template.pop(key)
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"restart-run": RUN}},
            "template": template,
        },
    }
    with scene.cluster.api_client() as api:
        apps: Any = k8s.AppsV1Api(api)
        apps.create_namespaced_deployment(NAMESPACE, body)
        try:

            def two() -> list[str] | None:
                found = core(api).list_namespaced_pod(
                    NAMESPACE, label_selector=f"restart-run={RUN}"
                )
                names = sorted(p.metadata.name for p in found.items)
                return names if len(names) == 2 else None

            pods = [NodePod(scene.cluster, NAMESPACE, n) for n in eventually(two, "two pods", 60)]
            for pod in pods:
                with explained(pod):
                    pod.wait_ready()
            yield pods
        finally:
            apps.delete_namespaced_deployment(name, NAMESPACE, propagation_policy="Foreground")


@contextmanager
def explained(pod: NodePod) -> Iterator[None]:
    """On a failure, print what the kubelet says of each container, and its logs."""
    try:
        yield
    except AssertionError:
        found = pod.read()
        statuses = [
            *(found.status.init_container_statuses or []),
            *(found.status.container_statuses or []),
        ]
        for status in statuses:
            print(
                f"\n{pod.name}/{status.name}: restarts={status.restart_count} "
                f"ready={status.ready} state={status.state} last={status.last_state}"
            )
            for previous in ("--previous", None) if status.restart_count else (None,):
                try:
                    args = ["logs", "-n", pod.namespace, pod.name, "-c", status.name]
                    print(pod.cluster.kubectl(*args, *([previous] if previous else [])))
                except Exception as exc:  # only a diagnostic: whatever kubectl raised
                    print(f"(no logs: {exc})")
        raise


def test_a_rotation_restarts_the_app_container_once_then_the_old_login_isrefused(
    scene: NodeScene, deployment: list[NodePod]
) -> None:
    pod, other = deployment
    assert restarts(pod) == {"app": 0, "worker": 0}
    before, others_before = pod.secret("db"), other.secret("db")
    assert started_with(pod) == before
    (old,) = live_leases(scene.broker, "a", pod.name)

    summary = rotate_selected(scene.broker, pod.name)
    assert (summary.matched, summary.done, summary.failed) == (1, 1, 0)
    with explained(pod):
        ready_again(pod, {"app": 1, "worker": 0})
        _check_restarted(scene, pod, other, before, others_before, old.id)


def _check_restarted(
    scene: NodeScene, pod: NodePod, other: NodePod, before: str, others_before: str, old_id: str
) -> None:

    after = pod.secret("db")
    assert dsn_values(after)["user"] != dsn_values(before)["user"]
    assert started_with(pod) == after  # the app's new instance started with the new file
    user = pod.sh('psql "$(cat /tmp/started-with)" -Atc "select current_user"').strip()
    assert user == dsn_values(after)["user"]
    eventually(lambda: refused(before), "the old login refused after the Ack", 30)
    assert state(scene.broker, pod.name, old_id) == LeaseState.REVOKED

    agent_log = pod.logs(container=AGENT)
    assert agent_log.count("restart.begin") == 1
    assert agent_log.count("restart.done") == 1
    assert '"restart.not_back"' not in agent_log
    (record,) = eventually(
        lambda: audit_records(scene.broker, "pod.restarted", pod.name), "pod.restarted audited"
    )
    (new,) = [lease for lease in live_leases(scene.broker, "a", pod.name)]
    assert (record["target"], record["reason"], record["lease_id"]) == ("app", "ROTATION", new.id)
    assert record["generation"] == 2
    # The worker, the agent and the other pod are untouched; still one restart, not two.
    assert restarts(pod) == {"app": 1, "worker": 0}
    assert restarts(other) == {"app": 0, "worker": 0}
    assert other.secret("db") == others_before
    assert started_with(other) == others_before


def test_two_credentials_rotated_together_make_one_restart(scene: NodeScene) -> None:
    body = restart_body(
        f"two-{RUN}", scene.images.app, {"db": "orders-db-ro", "db2": "orders-db-ro"}
    )
    pod = scene.start(body)
    try:
        olds = {name: pod.secret(name) for name in ("db", "db2")}
        summary = rotate_selected(scene.broker, pod.name)
        assert (summary.matched, summary.done) == (2, 2)
        with explained(pod):
            ready_again(pod, {"app": 1, "worker": 0})
        for name, old in olds.items():
            assert pod.secret(name) != old
            eventually(partial(refused, old), f"the old {name} login refused", 30)
        agent_log = pod.logs(container=AGENT)
        assert agent_log.count("restart.begin") == 1

        def both() -> list[dict[str, Any]] | None:
            found = audit_records(scene.broker, "pod.restarted", pod.name)
            return found if len(found) >= 2 else None

        records = eventually(both, "pod.restarted audited for both rotations")
        assert sorted(r["credential"] for r in records) == ["db", "db2"]
        assert {r["target"] for r in records} == {"app"}
        assert restarts(pod) == {"app": 1, "worker": 0}
    finally:
        pod.delete()


def test_restart_policy_never_is_refused_at_admission(scene: NodeScene) -> None:
    body = restart_body(f"never-{RUN}", scene.images.app, {"db": "orders-db-ro"})
    body["spec"]["restartPolicy"] = "Never"
    with scene.cluster.api_client() as api, pytest.raises(k8s.ApiException) as refused:
        core(api).create_namespaced_pod(NAMESPACE, body)
    assert refused.value.status == 400
    message = json.loads(str(refused.value.body))["message"]
    assert "pod field spec.restartPolicy:" in message
    assert "a Job should use keyferry.io/mode: init-only" in message
    with scene.cluster.api_client() as api:
        stored = core(api).list_namespaced_pod(NAMESPACE).items
    assert f"never-{RUN}" not in {p.metadata.name for p in stored}


def test_an_app_that_does_not_come_back_loses_the_old_credential_at_the_grace(
    scene: NodeScene,
) -> None:
    """The app's image is a tag of its own that is removed once the pod runs: with
    imagePullPolicy Never the kubelet cannot start the container again (ErrImageNeverPull)."""
    gone = f"{scene.images.app.rsplit(':', 1)[0]}:gone-{RUN}"
    containerd = scene.node.containerd
    containerd.ctr("images", "tag", scene.images.app, gone)
    body = restart_body(f"gone-{RUN}", gone, {"db": "orders-db-ro"})
    app = body["spec"]["containers"][0]
    app["imagePullPolicy"] = "Never"
    pod = scene.start(body)
    try:
        before = pod.secret("db")
        (old,) = live_leases(scene.broker, "a", pod.name)
        containerd.ctr("images", "rm", gone)
        rotate_selected(scene.broker, pod.name, grace_seconds=20)

        def not_back() -> bool:
            statuses = pod.read().status.container_statuses or []
            app_status = next(s for s in statuses if s.name == "app")
            waiting = app_status.state.waiting
            return bool(waiting and waiting.reason == "ErrImageNeverPull")

        eventually(not_back, "the app container unable to start again", 60)
        eventually(
            lambda: state(scene.broker, pod.name, old.id) == LeaseState.REVOKED,
            "the old lease revoked at the rotation's grace",
            90,
        )
        assert refused(before)

        def reported() -> str | None:
            text = pod.logs(container=AGENT)
            return text if "restart.not_back" in text else None

        log = eventually(reported, "the agent reporting that the app did not come back", 30)
        assert "restart.done" not in log
        assert audit_records(scene.broker, "pod.restarted", pod.name) == []
        revoked = eventually(
            lambda: audit_records(scene.broker, "lease.revoked", pod.name),
            "lease.revoked audited",
        )
        assert [r["lease_id"] for r in revoked] == [old.id]
    finally:
        pod.delete()
        if gone in containerd.ctr("images", "list", "--quiet").split():
            containerd.ctr("images", "rm", gone)
