"""`helm install` of charts/keyferry on cluster a's real node: the webhook's part of issue 15.

The chart's webhook Deployment runs as real pods from the webhook image the bed built
(imported into the node's containerd under the name the chart renders, pull policy
IfNotPresent), in a namespace that enforces Pod Security "restricted", with the chart's
Service, PodDisruptionBudget and NetworkPolicy; the API server calls the webhook through
its Service (the registration names the Service, not a URL) and a pod created in an
opted-in namespace comes back injected with the chart's agent image.

Not here yet: the chart's broker Deployment on the node (it needs Vault and cluster b's
API server on the bridge address) and the member variant applied to cluster b; the broker
of the real-node e2e tests runs on the host (tests/e2e/test_node_e2e.py).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.bed.images import ImageBuilder
from tests.bed.node import TOLERATION, Node
from tests.conftest import need
from tests.scene.kube_helpers import core, eventually

pytestmark = pytest.mark.bed

CHART = Path(__file__).resolve().parents[2] / "charts" / "keyferry"
RUN = secrets.token_hex(3)
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
INJECTION = {"keyferry.io/injection": "enabled"}


@dataclass
class Release:
    node: Node
    namespace: str
    name: str

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        where = ["-n", namespace or self.namespace] if namespace != "" else []
        found: dict[str, Any] = json.loads(
            self.node.cluster.kubectl("get", kind, name, *where, "-o", "json")
        )
        return found


@pytest.fixture(scope="module")
def release(node: Node) -> Iterator[Release]:
    images = {image.name: image for image in need(ImageBuilder().all)}
    node.load(images["webhook"].archive, images["webhook"].reference)
    cluster = node.cluster
    namespace, name = f"keyferry-{RUN}", "keyferry"
    with cluster.api_client() as api:
        body = {"metadata": {"name": namespace, "labels": RESTRICTED}}
        core(api).create_namespace(body)
    values = [
        f"--namespace={namespace}",
        "--set=broker.enabled=false",
        "--set=webhook.clusterName=a",
        f"--set=webhook.brokerAddress={node.address}:8443",
        f"--set-json=webhook.tolerations=[{json.dumps(TOLERATION)}]",
        "--set-string=webhook.namespaceSelector.matchLabels.keyferry\\.io/injection=enabled",
        "--wait",
        "--timeout=300s",
    ]
    cluster.helm("install", name, str(CHART), *values)
    try:
        yield Release(node, namespace, name)
    finally:
        cluster.helm("uninstall", name, f"--namespace={namespace}", "--wait")
        with cluster.api_client() as api:
            core(api).delete_namespace(namespace)


def test_the_webhook_deployment_runs_as_real_pods_under_restricted(release: Release) -> None:
    deployment = release.get("deployment", f"{release.name}-webhook")
    assert deployment["status"]["readyReplicas"] == deployment["spec"]["replicas"]
    selector = "app.kubernetes.io/component=webhook"
    listing = release.node.cluster.kubectl(
        "get", "pods", "-n", release.namespace, "-l", selector, "-o", "json"
    )
    pods = json.loads(listing)["items"]
    assert pods
    for pod in pods:
        assert pod["spec"]["nodeName"] == release.node.name
        assert pod["status"]["phase"] == "Running"
        (container,) = pod["status"]["containerStatuses"]
        assert container["ready"]
        assert container["image"].endswith("keyferry/webhook:0.1.0")
    namespace = release.get("namespace", release.namespace, "")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_service_pdb_and_network_policy_are_in_place(release: Release) -> None:
    service = f"{release.name}-webhook"
    endpoints = release.get("endpoints", service)
    addresses = [a["ip"] for subset in endpoints.get("subsets", []) for a in subset["addresses"]]
    assert len(addresses) == release.get("deployment", service)["spec"]["replicas"]
    assert release.get("poddisruptionbudget", service)["spec"]["minAvailable"] == 1
    assert release.get("networkpolicy", service)["spec"]["podSelector"]["matchLabels"]


def test_the_api_server_calls_the_webhook_through_its_service(release: Release) -> None:
    cluster = release.node.cluster
    hook = release.get("mutatingwebhookconfiguration", f"{release.name}-webhook", "")
    client = hook["webhooks"][0]["clientConfig"]
    assert "url" not in client
    assert client["service"]["namespace"] == release.namespace
    opted = f"inject-{RUN}"
    with cluster.api_client() as api:
        core(api).create_namespace({"metadata": {"name": opted, "labels": INJECTION}})
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"app-{RUN}",
                "annotations": {"keyferry.io/inject": "true", "keyferry.io/role.db": "orders"},
            },
            "spec": {
                "securityContext": {"runAsUser": 1001},
                "containers": [{"name": "app", "image": "keyferry.invalid/app:1"}],
            },
        }

        def injected() -> dict[str, Any] | None:
            with cluster.api_client() as api:
                raw = core(api).create_namespaced_pod(
                    opted, pod, dry_run="All", _preload_content=False
                )
            spec: dict[str, Any] = json.loads(raw.data)["spec"]
            agents = [c for c in spec.get("initContainers") or [] if c["name"] == "keyferry-agent"]
            return agents[0] if agents else None

        agent = eventually(injected, "a pod injected by the chart's webhook pods")
        assert agent["image"].endswith("keyferry/agent:0.1.0")
        # Every webhook pod's log: the Service sent the admission to one of them.
        selector = "app.kubernetes.io/component=webhook"
        logs = cluster.kubectl("logs", "-n", release.namespace, "-l", selector, "--tail=200")
        assert f"app-{RUN}" in logs
    finally:
        with cluster.api_client() as api:
            core(api).delete_namespace(opted)
