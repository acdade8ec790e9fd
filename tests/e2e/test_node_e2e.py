"""The agent end to end on cluster a's real node: pods created through the API server,
mutated by the keyferry webhook (the API server calls it), scheduled by kube-scheduler and
run by the kubelet from the images the bed built: the injected agent image exactly as the
webhook names it, and an app image with Debian's `psql`, `openssl` and `aws`.

The broker runs on the host (a thread of this process, as in test_agent_e2e.py) and listens
on the node's bridge address, where the agents reach it; PostgreSQL and moto listen there
too. Everything a test looks at inside a pod it sees through `kubectl exec`/`logs`, as a
user would. Cluster b has no node (one kube-proxy per machine): its pods stay on the kubelet
harness in test_agent_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from broker.api.v1 import rotation_pb2, rotation_pb2_grpc
from broker.store import LeaseState
from tests.bed.node import TOLERATION
from tests.bed.postgres import PostgresServer
from tests.scene.broker_thread import (
    BrokerThread,
)
from tests.scene.kube_helpers import core, eventually
from tests.scene.node_scene import NAMESPACE, RUN, NodeScene, refused
from tests.scene.nodepods import (
    APP_UID,
    SECRETS,
    NodePod,
    agent_status,
    app_container,
    create,
    injected,
    pod_body,
)
from tests.scene.pods import AGENT, dsn_values, live_leases, live_leases_all

pytestmark = pytest.mark.bed
ROLES = {"db": "orders-db-ro", "s3": "s3-reader", "tls": "internal-tls"}
API_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def running(scene: NodeScene) -> Iterator[NodePod]:
    """One annotated pod, Running and Ready on the node: a DSN, STS keys and a certificate."""
    body = pod_body(f"orders-{RUN}", scene.images.app, ROLES, env=scene.aws_env())
    pod = scene.start(body)
    yield pod
    if not pod.gone():
        pod.delete()


def test_the_pod_is_admitted_through_the_api_server_and_run_by_the_kubelet(
    scene: NodeScene, running: NodePod
) -> None:
    assert injected(running)
    calls = [seen for seen in scene.webhook.seen if seen.name == running.name]
    assert [(c.namespace, c.patched, c.dry_run) for c in calls] == [(NAMESPACE, True, False)]
    pod = running.read()
    assert pod.spec.node_name == scene.node.name
    agent = agent_status(pod)
    assert agent.image == scene.images.agent
    assert agent.started
    assert agent.ready
    assert agent.state.running


def test_the_sidecar_is_ready_only_after_its_files_exist(running: NodePod) -> None:
    # The app container starts only after the agent's startupProbe passed (native sidecar);
    # its first line lists the files it found then.
    first = running.logs().splitlines()[0]
    assert first.split(":", 1)[1].split() == sorted(ROLES)
    modes = running.sh(f"stat -c '%a %U' {SECRETS}/db")
    assert modes.split()[0] == "440"


def test_psql_logs_in_with_the_dsn_file_alone(running: NodePod, postgres: PostgresServer) -> None:
    assert running.sh("env | grep -c '^PG' || true").strip() == "0"
    dsn = running.secret("db")
    user = running.sh(f'psql "$(cat {SECRETS}/db)" -Atc "select current_user"').strip()
    assert user == dsn_values(dsn)["user"]


def test_openssl_verifies_the_certificate_against_the_mounts_ca(
    scene: NodeScene, running: NodePod
) -> None:
    encoded = base64.b64encode(scene.ca_pem.encode()).decode()
    verdict = running.sh(
        f"echo {encoded} | base64 -d > /tmp/ca.pem && "
        f"openssl verify -CAfile /tmp/ca.pem {SECRETS}/tls"
    )
    assert verdict.strip() == f"{SECRETS}/tls: OK"
    subject = running.sh(f"openssl x509 -in {SECRETS}/tls -noout -subject")
    assert f"{running.name}.{NAMESPACE}.svc" in subject


def test_the_aws_cli_calls_sts_with_the_credentials_file(running: NodePod) -> None:
    # Debian's aws CLI (2.9) predates AWS_ENDPOINT_URL: the endpoint goes on the command line.
    arn = running.sh(
        'aws --endpoint-url "$AWS_ENDPOINT_URL" sts get-caller-identity --query Arn --output text'
    )
    assert "keyferry-e2e-reader" in arn


def test_the_agent_has_no_api_token_and_the_app_has_its_own(running: NodePod) -> None:
    listing = running.exec("ls", "-A", API_TOKEN_DIR, container=AGENT)
    assert listing.split() == []
    token = running.exec("cat", f"{API_TOKEN_DIR}/token")
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == f"system:serviceaccount:{NAMESPACE}:workload"
    assert "keyferry:a" not in claims["aud"]


def test_a_rotation_changes_the_file_signals_the_app_and_the_old_login_isrefused(
    scene: NodeScene,
) -> None:
    body = pod_body(
        f"rotating-{RUN}",
        scene.images.app,
        {"db": "orders-db-ro"},
        annotations={"keyferry.io/on-rotate": "signal:SIGHUP"},
    )
    body["spec"]["shareProcessNamespace"] = True
    pod = scene.start(body)
    try:
        before = pod.secret("db")
        (lease,) = live_leases(scene.broker, "a", pod.name)
        rotated = _rotate(scene.broker, lease.id)
        assert rotated.rotations[0].lease.generation == 2
        eventually(lambda: pod.secret("db") != before, "the file in the container changed")
        after = pod.secret("db")
        assert dsn_values(after)["user"] != dsn_values(before)["user"]
        eventually(lambda: "got SIGHUP" in pod.logs(), "the app's SIGHUP (shared PID namespace)")
        user = pod.sh(f'psql "$(cat {SECRETS}/db)" -Atc "select current_user"').strip()
        assert user == dsn_values(after)["user"]
        eventually(lambda: refused(before), "the old login refused after the Ack", 30)
    finally:
        pod.delete()


def test_kubectl_delete_pod_revokes_its_leases_and_the_logins_arerefused(
    scene: NodeScene, running: NodePod
) -> None:
    dsn = running.secret("db")
    assert len(live_leases(scene.broker, "a", running.name)) == len(ROLES)
    took = running.delete()
    print(f"\nnode e2e: kubectl delete pod took {took:.1f}s (kubelet SIGTERM, agent release)")

    def all_revoked() -> list[Any] | None:
        leases = live_leases_all(scene.broker, "a", running.name)
        done = leases and all(lease.state == LeaseState.REVOKED for lease in leases)
        return leases if done else None

    eventually(all_revoked, "every lease of the deleted pod revoked", 30)
    assert refused(dsn)


def test_a_job_in_init_only_mode_completes_and_its_leases_end(scene: NodeScene) -> None:
    name = f"migrate-{RUN}"
    env = {"SECRETS": SECRETS}
    app = app_container(scene.images.app, env)
    app["command"] = ["sh", "-c", f'psql "$(cat {SECRETS}/db)" -Atc "select current_user"']
    template = pod_body(
        name,
        scene.images.app,
        {"db": "orders-db-ro"},
        annotations={"keyferry.io/mode": "init-only"},
    )
    template["spec"] |= {"restartPolicy": "Never", "containers": [app]}
    template["metadata"].pop("name")
    template.pop("apiVersion")
    template.pop("kind")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": template},
    }
    cluster = scene.cluster
    with cluster.api_client() as api:
        batch: Any = k8s.BatchV1Api(api)
        batch.create_namespaced_job(NAMESPACE, job)
        try:

            def finished() -> Any:
                status = batch.read_namespaced_job(name, NAMESPACE).status
                if status.failed:
                    raise AssertionError(f"job {name} failed")
                return status if status.succeeded else None

            eventually(finished, f"job {name} completing", 120)
            (pod,) = (
                core(api).list_namespaced_pod(NAMESPACE, label_selector=f"job-name={name}").items
            )
            logs = core(api).read_namespaced_pod_log(pod.metadata.name, NAMESPACE, container="app")
            assert logs.strip().startswith("v-")  # Vault's database user names

            def ended() -> list[Any] | None:
                leases = live_leases_all(scene.broker, "a", pod.metadata.name)
                done = leases and all(lease.state == LeaseState.REVOKED for lease in leases)
                return leases if done else None

            eventually(ended, "the init-only pod's leases ended", 60)
        finally:
            batch.delete_namespaced_job(name, NAMESPACE, propagation_policy="Background")
    assert TOLERATION in template["spec"]["tolerations"]
    assert app["securityContext"]["runAsUser"] == APP_UID


CRASHES = 3
"""Kubelet restarts of the crashing app (its back-off: 10 s, 20 s, ...: about 40 s)."""


def test_a_crash_looping_app_container_keeps_one_lease_per_credential(scene: NodeScene) -> None:
    """The app exits non-zero as soon as it starts; the kubelet restarts it (CrashLoopBackOff)
    while the native sidecar keeps running: no restart issues or releases anything."""
    roles = {"db": "orders-db-ro", "s3": "s3-reader"}
    body = pod_body(f"crashing-{RUN}", scene.images.app, roles)
    body["spec"]["containers"][0]["command"] = ["sh", "-c", 'ls "$SECRETS"; exit 3']
    pod = create(scene.cluster, NAMESPACE, body)
    try:

        def crashed_enough() -> Any:
            statuses = pod.read().status.container_statuses or []
            app = next((s for s in statuses if s.name == "app"), None)
            return app if app is not None and app.restart_count >= CRASHES else None

        app = eventually(crashed_enough, f"the app restarted {CRASHES} times by the kubelet", 180)
        assert app.last_state.terminated.exit_code == 3
        agent = agent_status(pod.read())
        assert (agent.restart_count, agent.ready) == (0, True)
        leases = live_leases_all(scene.broker, "a", pod.name)
        assert sorted(lease.credential for lease in leases) == sorted(roles)
        assert all(lease.state == LeaseState.ACTIVE for lease in leases)
        assert sorted(pod.logs().split()) == sorted(roles)  # what the last run found
    finally:
        pod.delete()


def _rotate(broker: BrokerThread, lease_id: str) -> Any:
    async def rotate() -> Any:
        async with broker.broker.admin_channel() as channel:
            stub: Any = rotation_pb2_grpc.RotationServiceStub(channel)
            return await stub.RotateLeases(rotation_pb2.RotateLeasesRequest(lease_ids=[lease_id]))

    return asyncio.run(rotate())
