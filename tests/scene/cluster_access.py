"""Just-in-time cluster access on the bed: the broker's way to a member cluster through a
relay the test can take away (the cluster unreachable, for the broker only), real kubectl
with a grant's kubeconfig, and what a grant left in the cluster."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client as k8s

from tests.bed.gobuild import KUBERNETES
from tests.bed.kube import KubeCluster
from tests.bed.ports import LOOPBACK, free_port

from .member_clusters import broker_kubeconfig

GRANT_LABEL = "keyferry.dev/grant"
ACCESS_NAMESPACE = "keyferry-access"
RELAY_CHUNK = 64 * 1024


class ApiRelay:
    """A TCP relay on a loopback port to a cluster's API server (whose certificate names
    127.0.0.1, so TLS verifies through it); `away()` makes the cluster unreachable."""

    def __init__(self, host: str, port: int) -> None:
        self.port = free_port()
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(
            self._relay, LOOPBACK, self.port, reuse_address=True
        )

    async def away(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, upstream_writer}
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )
        self._links -= {writer, upstream_writer}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(RELAY_CHUNK):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.transport.abort()


async def relayed_broker_cluster(
    cluster: KubeCluster, folder: Path
) -> tuple[dict[str, Any], ApiRelay]:
    """The broker's config entry for `cluster` with the RBAC of docs/examples/broker-rbac.yaml
    (a token of the broker's ServiceAccount), reaching the API server through a relay."""
    kubeconfig = await asyncio.to_thread(broker_kubeconfig, cluster, folder)
    data = json.loads(kubeconfig.read_text())
    target = urlsplit(data["clusters"][0]["cluster"]["server"])
    assert target.hostname is not None
    assert target.port is not None
    relay = ApiRelay(target.hostname, target.port)
    await relay.up()
    data["clusters"][0]["cluster"]["server"] = relay.server
    kubeconfig.write_text(json.dumps(data))
    entry = {
        "name": cluster.name,
        "kubeconfig": str(kubeconfig),
        "context": cluster.name,
        "issuer": cluster.issuer,
    }
    return entry, relay


@dataclass(frozen=True)
class Kubectl:
    code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.code == 0


def kubectl_with(kubeconfig: Path, *args: str) -> Kubectl:
    """Real kubectl with a grant's kubeconfig (and nothing else of the environment's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(kubeconfig.parent)
    result = subprocess.run(
        [
            str(KUBERNETES.binary("kubectl")),
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={kubeconfig.parent / 'kubectl-cache'}",
            "--request-timeout=20s",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Kubectl(result.returncode, result.stdout + result.stderr)


def refused(result: Kubectl) -> bool:
    """kubectl failed because the API server said 401 or 403."""
    text = result.output.lower()
    said = ("forbidden", "unauthorized", "must be logged in")  # 403; 401 as kubectl words it
    return not result.ok and any(words in text for words in said)


def grant_objects(api: Any, grant_id: str) -> list[str]:
    """What carries the grant's label in the cluster: ServiceAccounts, RoleBindings and
    ClusterRoleBindings, as `kind/namespace/name`."""
    selector = f"{GRANT_LABEL}={grant_id}"
    core: Any = k8s.CoreV1Api(api)
    rbac: Any = k8s.RbacAuthorizationV1Api(api)
    found = [
        f"ServiceAccount/{o.metadata.namespace}/{o.metadata.name}"
        for o in core.list_service_account_for_all_namespaces(label_selector=selector).items
    ]
    found += [
        f"RoleBinding/{o.metadata.namespace}/{o.metadata.name}"
        for o in rbac.list_role_binding_for_all_namespaces(label_selector=selector).items
    ]
    found += [
        f"ClusterRoleBinding//{o.metadata.name}"
        for o in rbac.list_cluster_role_binding(label_selector=selector).items
    ]
    return found


def ensure_namespace(api: Any, name: str) -> None:
    try:
        k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise
