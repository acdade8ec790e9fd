"""The keyferry webhook on the bed's real API servers, as the webhook tests, the annotation
attacks and the benchmarks use it: one in-process webhook per cluster (its config names the
cluster) on 127.0.0.1 with a fresh CA, registered by URL for namespaces carrying this
process's opt-in label only, and the pod bodies and readers of a stored pod they share."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from injector.webhook.certs import server_context
from injector.webhook.config import AgentConfig, BrokerEndpoint, WebhookConfig
from injector.webhook.registration import registration
from injector.webhook.server import MUTATE_PATH, Admission, WebhookServer
from tests.bed.kube import KubeCluster
from tests.bed.pki import new_ca
from tests.bed.ports import LOOPBACK

from .kube_helpers import admission, core, eventually, new_namespace

RUN = secrets.token_hex(3)
OPT_IN = (f"keyferry.test/inject-{RUN}", "on")
APP_UID = 1000
INJECT = {"keyferry.io/inject": "true", "keyferry.io/role.db": "orders-db-ro"}


@dataclass
class Harness:
    cluster: KubeCluster
    config: WebhookConfig
    registration: str
    server: WebhookServer = field(init=False)
    seen: list[Admission] = field(default_factory=list)
    round_trips: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, admission: Admission) -> None:
        with self.lock:
            self.seen.append(admission)

    def admissions(self, namespace: str) -> list[Admission]:
        with self.lock:
            return [a for a in self.seen if a.namespace == namespace]

    def namespace(self, prefix: str) -> str:
        with self.cluster.api_client() as api:
            return new_namespace(api, prefix, labels=dict([OPT_IN]))

    def create(self, namespace: str, body: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Create a pod through the API server; the stored (or dry-run) pod as JSON."""
        with self.cluster.api_client() as api:
            started = time.perf_counter()
            raw = core(api).create_namespaced_pod(
                namespace, body, _preload_content=False, **options
            )
            self.round_trips.append(time.perf_counter() - started)
            created: dict[str, Any] = json.loads(raw.data)
        return created

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        with self.cluster.api_client() as api:
            raw = core(api).read_namespaced_pod(name, namespace, _preload_content=False)
            stored: dict[str, Any] = json.loads(raw.data)
        return stored


def pod_body(
    name: str | None = None, annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"annotations": annotations or {}}
    metadata.update({"name": name} if name else {"generateName": "app-"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "securityContext": {"runAsUser": APP_UID, "runAsNonRoot": True},
            "containers": [{"name": "app", "image": "keyferry/smoke:0.1.0"}],
            **spec,
        },
    }


def agent_of(stored: dict[str, Any]) -> dict[str, Any] | None:
    init = stored["spec"].get("initContainers") or []
    agents = [c for c in init if c["name"] == "keyferry-agent"]
    assert len(agents) <= 1, "the agent was added twice"
    return agents[0] if agents else None


def volumes_of(stored: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in stored["spec"].get("volumes") or []}


@contextmanager
def harnesses(clusters: list[KubeCluster], folder: Path) -> Iterator[dict[str, Harness]]:
    """A webhook per cluster, registered for OPT_IN namespaces and active."""
    ca = new_ca(folder, "ca", "keyferry webhook test CA")
    serving = ca.issue(folder, "serving", "keyferry-webhook", ip_addresses=(LOOPBACK,))
    context = server_context(serving.cert, serving.key)
    bundle = base64.b64encode(ca.pem()).decode()
    started: dict[str, Harness] = {}
    try:
        for cluster in clusters:
            name = cluster.name
            config = WebhookConfig(
                cluster_name=name,
                namespace=f"keyferry-{RUN}",
                agent=AgentConfig(image="keyferry/agent:test"),
                broker=BrokerEndpoint(address="127.0.0.1:9443"),
            )
            harness = Harness(cluster, config, f"keyferry-{RUN}")
            harness.server = WebhookServer(config, context, observe=harness.observe)
            url = f"https://{LOOPBACK}:{harness.server.start()}{MUTATE_PATH}"
            document = registration(harness.registration, url, bundle, config, opt_in_label=OPT_IN)
            with harness.cluster.api_client() as api:
                admission(api).create_mutating_webhook_configuration(document)
            started[name] = harness
        for harness in started.values():
            _wait_until_active(harness)
        yield started
    finally:
        for harness in started.values():
            with harness.cluster.api_client() as api:
                admission(api).delete_mutating_webhook_configuration(harness.registration)
            harness.server.stop()


def _wait_until_active(harness: Harness) -> None:
    """The API server picks up a new configuration asynchronously: retry until a pod is patched."""
    namespace = harness.namespace("warmup")

    def patched() -> bool:
        stored = harness.create(namespace, pod_body(annotations=INJECT))
        return agent_of(stored) is not None

    eventually(patched, f"the keyferry webhook patching pods on {harness.cluster.name}")
