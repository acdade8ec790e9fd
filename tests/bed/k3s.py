"""A bed cluster as a k3s container (the testcontainers provider): a real kubelet runs pods.

One container per cluster, each with its own datastore, CAs and service-account keys. The
API server's port 6443 is published on a free host port chosen first, so the server URL
(and with it a unique issuer) is known before start, as in the process provider. The
admin credentials come from the container's own kubeconfig; the bed writes them to files
and a kubeconfig of the same layout as a process cluster's (cluster.py).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from testcontainers.community.k3s import K3SContainer

from .cluster import START_TIMEOUT, Cluster, write_kubeconfig
from .engine import K3S_IMAGE, ContainerRunner
from .kube import ClusterSpec
from .pki import KeyPair
from .ports import LOOPBACK, free_port
from .workspace import Workspace


@dataclass
class K3sCluster(Cluster):
    """A cluster run by k3s in a container (API server, controllers, kubelet, datastore)."""

    container: ContainerRunner
    image: str = K3S_IMAGE

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for /readyz and for the `default` ServiceAccount, as for a process cluster."""
        self.wait_serving(self.container, timeout)
        self.wait_default_service_account(self.container, timeout)

    def describe(self) -> str:
        return f"{super().describe()} ({self.image})"

    def stop(self) -> None:
        self.container.stop()


def k3s_args(spec: ClusterSpec, issuer: str, audiences: tuple[str, ...]) -> list[str]:
    """`k3s` arguments: the issuer (k3s's default is kube.SHARED_ISSUER) and audiences as asked."""
    return [
        "server",
        "--disable=traefik",
        f"--tls-san={LOOPBACK}",
        f"--kube-apiserver-arg=service-account-issuer={issuer}",
        f"--kube-apiserver-arg=api-audiences={','.join(audiences)}",
        f"--kube-apiserver-arg=authorization-mode={spec.authorization_mode}",
    ]


def launch_k3s(
    ws: Workspace, spec: ClusterSpec, track: Callable[[ContainerRunner], None]
) -> K3sCluster:
    """Start a k3s container and write its kubeconfig (not yet ready: see `wait_ready`)."""
    name = f"kube-{spec.name}"
    folder = ws.folder(name)
    port = free_port()
    server = f"https://{LOOPBACK}:{port}"
    issuer = spec.issuer or server
    audiences = (issuer, *spec.extra_audiences)
    container = K3SContainer(image=K3S_IMAGE)
    # testcontainers sets K3S_URL (k3s's "server to join"); a lone server joins nothing.
    container.env.pop("K3S_URL", None)
    container.with_command(k3s_args(spec, issuer, audiences))
    container.with_bind_ports(K3SContainer.KUBE_SECURE_PORT, port)
    runner = ContainerRunner(name, container, ws.log(name))
    track(runner)
    runner.start()  # K3SContainer.start waits for "Node controller sync successful"
    ca_path, admin = admin_credentials(yaml.safe_load(container.config_yaml()), folder / "pki")
    kubeconfig = folder / "kubeconfig"
    write_kubeconfig(kubeconfig, spec.name, server, ca_path, admin)
    return K3sCluster(
        name=spec.name,
        host=LOOPBACK,
        port=port,
        issuer=issuer,
        api_audiences=audiences,
        folder=folder,
        ca_path=ca_path,
        kubeconfig=kubeconfig,
        admin=admin,
        container=runner,
    )


def admin_credentials(kubeconfig: dict[str, Any], pki: Path) -> tuple[Path, KeyPair]:
    """Write the server CA and the admin certificate and key of a k3s kubeconfig to files."""
    pki.mkdir(parents=True, exist_ok=True)
    cluster = kubeconfig["clusters"][0]["cluster"]
    user = kubeconfig["users"][0]["user"]
    ca = pki / "ca.crt"
    ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    admin = KeyPair(pki / "admin.crt", pki / "admin.key")
    admin.cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
    admin.key.touch(mode=0o600)
    admin.key.write_bytes(base64.b64decode(user["client-key-data"]))
    return ca, admin
