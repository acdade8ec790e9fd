"""Injected pods on cluster a's real node (tests/bed/node.py), for the e2e tests and the demo.

The node runs the images the bed built (tests/bed/images.py): keyferry's agent exactly as
the webhook injects it, and the app image with Debian's `psql`, `openssl` and `aws`. What a
test does with a running pod goes through the API server as a user's would: `kubectl exec`,
`kubectl logs`, `kubectl delete pod` (the kubelet then stops the containers).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from tests.bed.images import ImageBuilder
from tests.bed.kube import KubeCluster
from tests.bed.node import TOLERATION, Node
from tests.scene.kube_helpers import core, eventually
from tests.scene.workloads import ACCOUNT, ensure_namespace

from .pods import AGENT

# The chart's webhook selects namespaces that opt in with this label.
INJECTION_LABEL = ("keyferry.io/injection", "enabled")
SECRETS = "/keyferry/secrets"
APP_UID, FS_GROUP = 1001, 3000
START_TIMEOUT = 120.0
# The app: says which credential files it found when it started, logs each SIGHUP (the
# agent's on-rotate signal), idles otherwise; the tests run psql, openssl and aws in it with
# `kubectl exec`.
APP_SCRIPT = (
    "trap 'echo got SIGHUP' HUP; "
    "echo \"app started with files: $(ls \"$SECRETS\" | tr '\\n' ' ')\"; "
    "while true; do sleep 1 & wait $!; done"
)


@dataclass(frozen=True)
class NodeImages:
    agent: str
    app: str


def load_images(node: Node) -> NodeImages:
    """Build (or find cached) the agent and app images and import them into the node's
    containerd under the names pods ask for: no pod ever pulls."""
    images = {image.name: image for image in ImageBuilder().all()}
    for name in ("agent", "app"):
        node.load(images[name].archive, images[name].reference)
    return NodeImages(images["agent"].reference, images["app"].reference)


def prepare_namespace(cluster: KubeCluster, namespace: str, opt_in: tuple[str, str]) -> None:
    """The namespace with the workload ServiceAccount, opted in to injection."""
    with cluster.api_client() as api:
        ensure_namespace(api, namespace)
        labels = dict([opt_in, INJECTION_LABEL])
        core(api).patch_namespace(namespace, {"metadata": {"labels": labels}})


def pod_body(
    name: str,
    image: str,
    roles: dict[str, str],
    *,
    annotations: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    generate: bool = False,
) -> dict[str, Any]:
    """An annotated pod for the real node: it tolerates the node's taint, its app runs as
    APP_UID (not the agent's UID), the pod's fsGroup lets it read the 0440 files, and it
    keeps its own Kubernetes API token (the agent gets none)."""
    notes = {"keyferry.io/inject": "true", **(annotations or {})}
    notes |= {f"keyferry.io/role.{file}": role for file, role in roles.items()}
    metadata: dict[str, Any] = {"annotations": notes, "labels": {"app": "keyferry-e2e"}}
    metadata |= {"generateName": f"{name}-"} if generate else {"name": name}
    values = {"SECRETS": SECRETS, **(env or {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "serviceAccountName": ACCOUNT,
            "tolerations": [TOLERATION],
            "terminationGracePeriodSeconds": 10,
            "securityContext": {"runAsNonRoot": True, "fsGroup": FS_GROUP},
            "containers": [app_container(image, values)],
        },
    }


def app_container(image: str, env: dict[str, str]) -> dict[str, Any]:
    return {
        "name": "app",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", APP_SCRIPT],
        "securityContext": {
            "runAsUser": APP_UID,
            "runAsGroup": APP_UID,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }


@dataclass
class NodePod:
    """A pod the kubelet runs, seen through the API server."""

    cluster: KubeCluster
    namespace: str
    name: str

    def read(self) -> Any:
        with self.cluster.api_client() as api:
            return core(api).read_namespaced_pod(self.name, self.namespace)

    def stored(self) -> dict[str, Any]:
        with self.cluster.api_client() as api:
            raw = core(api).read_namespaced_pod(self.name, self.namespace, _preload_content=False)
            found: dict[str, Any] = json.loads(raw.data)
        return found

    def exec(self, *argv: str, container: str = "app") -> str:
        return self.cluster.kubectl(
            "exec", "-n", self.namespace, self.name, "-c", container, "--", *argv
        )

    def sh(self, script: str, container: str = "app") -> str:
        return self.exec("sh", "-c", script, container=container)

    def secret(self, file: str) -> str:
        return self.exec("cat", f"{SECRETS}/{file}")

    def logs(self, container: str = "app") -> str:
        return self.cluster.kubectl("logs", "-n", self.namespace, self.name, "-c", container)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Any:
        """Until the pod is Running and every container, sidecars included, is ready."""

        def ready() -> Any:
            pod = self.read()
            status = pod.status
            always = {
                c.name for c in pod.spec.init_containers or [] if c.restart_policy == "Always"
            }
            sidecars = [s for s in status.init_container_statuses or [] if s.name in always]
            statuses = [*(status.container_statuses or []), *sidecars]
            if status.phase == "Running" and statuses and all(s.ready for s in statuses):
                return pod
            return None

        return eventually(ready, f"pod {self.name} Running and Ready on the node", timeout)

    def delete(self, wait: bool = True, timeout: float = 60.0) -> float:
        """`kubectl delete pod` as a user does it (the kubelet stops the containers); how
        long it took until the pod object was gone."""
        started = time.monotonic()
        with self.cluster.api_client() as api:
            core(api).delete_namespaced_pod(self.name, self.namespace)
        if wait:
            eventually(self.gone, f"pod {self.name} finished by the kubelet", timeout)
        return time.monotonic() - started

    def gone(self) -> bool:
        try:
            self.read()
        except k8s.ApiException as exc:
            return bool(exc.status == 404)
        return False


def create(cluster: KubeCluster, namespace: str, body: dict[str, Any]) -> NodePod:
    with cluster.api_client() as api:
        created = core(api).create_namespaced_pod(namespace, body)
    return NodePod(cluster, namespace, created.metadata.name)


def injected(pod: NodePod) -> bool:
    return any(c["name"] == AGENT for c in pod.stored()["spec"].get("initContainers") or [])


def agent_status(pod: Any) -> Any:
    """The injected agent's status (a native sidecar: an init container that keeps running)."""
    return next(s for s in pod.status.init_container_statuses or [] if s.name == AGENT)
