"""Cluster a's real node: a Deployment's pod scheduled, run and stopped by a real kubelet.

One pod carries what keyferry's injected pods will need (issue 15): a native sidecar with
a startupProbe, a projected token with audience `keyferry:a`, an in-memory emptyDir shared
with the app, `runAsUser: 1001`, a shared process namespace whose PID 1 is the bed's pause
image (catatonit). The tests go through the API server as a user would (`kubectl logs`,
`kubectl exec`), reach a host server (PostgreSQL) and the API server (the `kubernetes`
Service) from the pod, resolve Services through the cluster's CoreDNS, and delete the pod
through the kubelet.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.dns import DNS_SERVICE_IP
from tests.bed.gobuild import K8S_VERSION
from tests.bed.kube import SERVICE_IP, KubeCluster
from tests.bed.node import BUSYBOX_IMAGE, TOLERATION, Node
from tests.bed.postgres import PostgresServer
from tests.scene.kube_helpers import apps, core, eventually, new_namespace

pytestmark = pytest.mark.bed
AUDIENCE = "keyferry:a"
UID = 1001
GRACE = 20
START_TIMEOUT = 120.0

SIDECAR = """
trap 'exit 0' TERM
sleep 1
echo ready > /shared/ready
while true; do sleep 1; done
"""
# On SIGTERM the app tells the test, over TCP to the node address, that it got the signal.
APP = """
trap 'echo "SIGTERM $(id -u)" | nc -w 2 {address} {port}; exit 0' TERM
echo "app started as $(id -u), sidecar said $(cat /shared/ready)"
while true; do sleep 1; done
"""


@dataclass
class Listener:
    """A TCP server on the node address: what pods send on SIGTERM ends up in `received`."""

    sock: socket.socket
    received: list[str]

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def listener(node: Node) -> Iterator[Listener]:
    sock = socket.create_server((node.address, 0))
    received: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                received.append(conn.recv(1024).decode(errors="replace").strip())

    threading.Thread(target=serve, daemon=True).start()
    yield Listener(sock, received)
    sock.close()


@dataclass
class Running:
    cluster: KubeCluster
    namespace: str
    pod: Any


def deployment(name: str, address: str, port: int) -> dict[str, Any]:
    container = {"image": BUSYBOX_IMAGE, "imagePullPolicy": "Never"}
    mounts = [{"name": "shared", "mountPath": "/shared"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "tolerations": [TOLERATION],
                    "shareProcessNamespace": True,
                    "terminationGracePeriodSeconds": GRACE,
                    "securityContext": {"runAsUser": UID, "runAsGroup": UID, "runAsNonRoot": True},
                    "initContainers": [
                        {
                            **container,
                            "name": "sidecar",
                            "restartPolicy": "Always",
                            "command": ["sh", "-c", SIDECAR],
                            "volumeMounts": mounts,
                            "startupProbe": {
                                "exec": {"command": ["cat", "/shared/ready"]},
                                "periodSeconds": 1,
                                "failureThreshold": 30,
                            },
                        }
                    ],
                    "containers": [
                        {
                            **container,
                            "name": "app",
                            "command": ["sh", "-c", APP.format(address=address, port=port)],
                            "volumeMounts": [
                                *mounts,
                                {"name": "keyferry-token", "mountPath": "/var/run/keyferry"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "shared", "emptyDir": {"medium": "Memory"}},
                        {
                            "name": "keyferry-token",
                            "projected": {
                                "sources": [
                                    {
                                        "serviceAccountToken": {
                                            "audience": AUDIENCE,
                                            "expirationSeconds": 600,
                                            "path": "token",
                                        }
                                    }
                                ]
                            },
                        },
                    ],
                },
            },
        },
    }


@pytest.fixture(scope="module")
def running(node: Node, listener: Listener) -> Iterator[Running]:
    cluster = node.cluster
    started = time.monotonic()
    with cluster.api_client() as api:
        namespace = new_namespace(api, "node")
        eventually(
            lambda: core(api).list_namespaced_service_account(namespace).items,
            "the default ServiceAccount",
        )
        apps(api).create_namespaced_deployment(
            namespace, deployment("echo", node.address, listener.port)
        )

        def ready_pod() -> Any:
            for pod in core(api).list_namespaced_pod(namespace, label_selector="app=echo").items:
                statuses = pod.status.container_statuses or []
                if pod.status.phase == "Running" and statuses and all(s.ready for s in statuses):
                    return pod
            return None

        pod = eventually(ready_pod, "the Deployment's pod Running and Ready", START_TIMEOUT)
    print(f"\nnode: Deployment to Ready pod in {time.monotonic() - started:.1f}s")
    yield Running(cluster, namespace, pod)
    with cluster.api_client() as api:
        core(api).delete_namespace(namespace)


def exec_(running: Running, *argv: str, container: str = "app") -> str:
    return running.cluster.kubectl(
        "exec", "-n", running.namespace, running.pod.metadata.name, "-c", container, "--", *argv
    )


def test_the_node_is_ready_with_its_own_identity(node: Node) -> None:
    with node.cluster.api_client() as api:
        found = core(api).read_node(node.name)
    assert found.status.node_info.kubelet_version == K8S_VERSION
    assert found.status.node_info.container_runtime_version.startswith("containerd://")
    addresses = {a.type: a.address for a in found.status.addresses}
    assert addresses["InternalIP"] == node.address
    assert found.spec.taints[0].key == TOLERATION["key"]


def test_the_deployment_pod_runs_on_the_node(node: Node, running: Running) -> None:
    pod = running.pod
    assert pod.spec.node_name == node.name
    assert pod.status.pod_ip in _hosts(node.network.pod_cidr)
    sidecar = pod.status.init_container_statuses[0]
    assert sidecar.name == "sidecar"
    assert sidecar.started
    assert sidecar.ready
    assert sidecar.state.running
    assert pod.status.container_statuses[0].ready


def test_logs_and_exec_go_through_the_api_server(running: Running) -> None:
    logs = running.cluster.kubectl(
        "logs", "-n", running.namespace, running.pod.metadata.name, "-c", "app"
    )
    assert logs.strip() == f"app started as {UID}, sidecar said ready"
    assert exec_(running, "id", "-u").strip() == str(UID)


def test_the_projected_token_has_the_audience(running: Running) -> None:
    token = exec_(running, "cat", "/var/run/keyferry/token")
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aud"] == [AUDIENCE]
    assert claims["iss"] == running.cluster.issuer
    assert claims["kubernetes.io"]["pod"]["name"] == running.pod.metadata.name
    assert claims["sub"] == f"system:serviceaccount:{running.namespace}:default"


def test_the_shared_volume_is_in_memory(running: Running) -> None:
    mounts = exec_(running, "grep", " /shared ", "/proc/mounts")
    assert mounts.split()[2] == "tmpfs"
    assert exec_(running, "cat", "/shared/ready", container="sidecar").strip() == "ready"


def test_pid_1_is_the_pause_image_and_it_reaps(running: Running) -> None:
    assert exec_(running, "cat", "/proc/1/cmdline").split("\0")[:2] == ["/catatonit", "-P"]
    # An orphan of the exec'd shell is re-parented to PID 1, which must reap it on exit.
    exec_(running, "sh", "-c", "sleep 1 & exit 0")
    time.sleep(2.5)
    states = exec_(running, "sh", "-c", "cat /proc/[0-9]*/stat")
    zombies = [line for line in states.splitlines() if line.split(") ", 1)[1].startswith("Z")]
    assert zombies == []


def test_a_pod_reaches_postgres_through_the_node_address(
    node: Node, postgres: PostgresServer, running: Running
) -> None:
    # PostgreSQL's SSLRequest; a server without TLS answers with the single byte "N".
    request = r"\0\0\0\10\4\322\26\57"
    answer = exec_(
        running,
        "sh",
        "-c",
        f"printf '{request}' | nc -w 3 {node.address} {postgres.port} | head -c 1",
    )
    assert answer == "N"


def test_the_kubernetes_service_reaches_the_api_server(node: Node, running: Running) -> None:
    with running.cluster.api_client() as api:
        endpoints = core(api).read_namespaced_endpoints("kubernetes", "default")
    assert [a.ip for a in endpoints.subsets[0].addresses] == [node.address]
    version = exec_(running, "wget", "-q", "-O", "-", f"https://{SERVICE_IP}/version")
    assert json.loads(version)["gitVersion"] == K8S_VERSION


def test_cluster_dns_resolves_services(running: Running) -> None:
    assert f"nameserver {DNS_SERVICE_IP}" in exec_(running, "cat", "/etc/resolv.conf")
    answer = exec_(running, "nslookup", "kubernetes.default.svc.cluster.local")
    assert f"Address: {SERVICE_IP}" in answer


def test_deletion_goes_through_the_kubelet(running: Running, listener: Listener) -> None:
    name = running.pod.metadata.name
    with running.cluster.api_client() as api:
        core(api).delete_namespaced_pod(name, running.namespace)
        started = time.monotonic()
        terminating = core(api).read_namespaced_pod(name, running.namespace)
        assert terminating.metadata.deletion_timestamp is not None  # the kubelet has to act

        def gone() -> bool:
            try:
                core(api).read_namespaced_pod(name, running.namespace)
            except k8s.ApiException as exc:
                return bool(exc.status == 404)
            return False

        eventually(gone, "the kubelet to finish the pod", GRACE + 30)
    print(f"\nnode: pod deleted through the kubelet in {time.monotonic() - started:.1f}s")
    assert f"SIGTERM {UID}" in listener.received


def _hosts(cidr: str) -> set[str]:
    return {str(h) for h in ipaddress.ip_network(cidr).hosts()}
