"""Kubernetes clusters without nodes: kube-apiserver + kube-controller-manager on the bed's etcd.

No container runtime runs here, so a cluster is its control plane only: pods are stored
but never scheduled or run. Each cluster has its own etcd prefix, CAs, admin client
certificate and service-account signing key; clusters share nothing but the etcd process.
A cluster is started in two halves (`launch_cluster`, then `KubeCluster.wait_ready`) so
the bed can boot several API servers at once.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client import ApiException

from .errors import BedError
from .etcd import EtcdServer
from .gobuild import HELM, KUBERNETES
from .pki import KeyPair, new_ca, service_account_keys
from .ports import LOOPBACK, free_port
from .process import ManagedProcess
from .workspace import Workspace

CHARTS = Path(__file__).parent / "charts"
# What kubeadm, kind, k3s and rke2 all default to: real fleets share this issuer string.
SHARED_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
ADMIN_USER = "keyferry-bed-admin"
CONTROLLERS = (
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "replicaset-controller",
    "deployment-controller",
    "job-controller",
    "clusterrole-aggregation-controller",
)
START_TIMEOUT = 120.0
TOOL_TIMEOUT = 120.0


class ToolFailed(BedError):
    """kubectl or helm exited non-zero; its output is in the message."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"`{' '.join(argv)}` exited with {returncode}:\n{output[-4000:]}")
        self.returncode = returncode
        self.output = output


@dataclass(frozen=True)
class ClusterSpec:
    """What a test asks for; `issuer=None` means a unique issuer (the server's own URL)."""

    name: str
    issuer: str | None = None
    extra_audiences: tuple[str, ...] = ()
    authorization_mode: str = "Node,RBAC"


@dataclass
class KubeCluster:
    name: str
    port: int
    issuer: str
    api_audiences: tuple[str, ...]
    folder: Path
    ca_path: Path
    kubeconfig: Path
    admin: KeyPair
    apiserver: ManagedProcess
    controller_manager: ManagedProcess
    etcd_prefix: str
    _ssl: ssl.SSLContext | None = field(default=None, init=False, repr=False)

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def api_client(self) -> Any:
        """A fresh `kubernetes.client.ApiClient` for the admin user, from the kubeconfig."""
        return k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), context=self.name
        )

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        """GET a raw API path as the admin user (for /readyz, /openid/v1/jwks, ...)."""
        request = urllib.request.Request(self.server + path)
        with urllib.request.urlopen(request, timeout=timeout, context=self._context()) as response:
            body: bytes = response.read()
            return body

    def jwks(self) -> dict[str, Any]:
        keys: dict[str, Any] = json.loads(self.get("/openid/v1/jwks"))
        return keys

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """Run the built kubectl against this cluster and return its stdout."""
        cache = self.folder / "kubectl-cache"
        argv = [str(KUBERNETES.binary("kubectl")), f"--kubeconfig={self.kubeconfig}"]
        return _tool([*argv, f"--cache-dir={cache}", *args], self._tool_env(), stdin)

    def helm(self, *args: str, stdin: str | None = None) -> str:
        """Run the built helm with this cluster's kubeconfig and a private helm home."""
        return _tool([str(HELM.binary("helm")), *args], self._tool_env(), stdin)

    def ready(self) -> bool:
        return self.get("/readyz") == b"ok"

    def has_default_service_account(self) -> bool:
        with self.api_client() as api:
            try:
                k8s.CoreV1Api(api).read_namespaced_service_account("default", "default")
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
        return True

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for /readyz, start the controller manager, wait for the `default` account."""
        self.apiserver.wait_until(self.ready, "ready (/readyz)", timeout)
        self.controller_manager.start()
        self.controller_manager.wait_until(
            self.has_default_service_account,
            "creating the default ServiceAccount in namespace default",
            timeout,
        )

    def describe(self) -> str:
        return f"{self.server} issuer={self.issuer} kubeconfig={self.kubeconfig}"

    def stop(self) -> None:
        self.controller_manager.stop()
        self.apiserver.stop()

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context(cafile=str(self.ca_path))
            context.load_cert_chain(str(self.admin.cert), str(self.admin.key))
            self._ssl = context
        return self._ssl

    def _tool_env(self) -> dict[str, str]:
        home = self.folder / "tool-home"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            HOME=str(home),
            HELM_CACHE_HOME=str(home / "helm-cache"),
            HELM_CONFIG_HOME=str(home / "helm-config"),
            HELM_DATA_HOME=str(home / "helm-data"),
        )
        return env


def launch_cluster(ws: Workspace, etcd: EtcdServer, spec: ClusterSpec) -> KubeCluster:
    """Write a cluster's keys and kubeconfig and start its API server (not yet ready)."""
    apiserver_bin = KUBERNETES.binary("kube-apiserver")
    manager_bin = KUBERNETES.binary("kube-controller-manager")
    name = f"kube-{spec.name}"
    folder = ws.folder(name)
    pki = folder / "pki"
    port = free_port()
    server = f"https://{LOOPBACK}:{port}"
    issuer = spec.issuer or server
    audiences = (issuer, *spec.extra_audiences)

    server_ca = new_ca(pki, "ca", f"keyferry-bed {spec.name} server CA")
    client_ca = new_ca(pki, "client-ca", f"keyferry-bed {spec.name} client CA")
    serving = server_ca.issue(
        pki,
        "apiserver",
        "kube-apiserver",
        dns_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ip_addresses=(LOOPBACK, SERVICE_IP),
    )
    admin = client_ca.issue(
        pki, "admin", ADMIN_USER, organizations=("system:masters",), client=True
    )
    sa = service_account_keys(pki)
    kubeconfig = folder / "kubeconfig"
    _write_kubeconfig(kubeconfig, spec.name, server, server_ca.cert_path, admin)
    etcd_prefix = f"/keyferry-bed/{spec.name}"

    apiserver = ManagedProcess(
        f"{name}-apiserver",
        [
            str(apiserver_bin),
            f"--etcd-servers={etcd.url}",
            f"--etcd-prefix={etcd_prefix}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            # Several API servers share 127.0.0.1; none needs the `kubernetes` Endpoints.
            "--endpoint-reconciler-type=none",
            f"--secure-port={port}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={client_ca.cert_path}",
            f"--service-account-issuer={issuer}",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            f"--api-audiences={','.join(audiences)}",
            f"--authorization-mode={spec.authorization_mode}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={folder / 'cert-dir'}",
            "--profiling=false",
            "--v=1",
        ],
        ws.log(f"{name}-apiserver"),
        env=_server_env(),
    )
    controller_manager = ManagedProcess(
        f"{name}-controller-manager",
        [
            str(manager_bin),
            f"--kubeconfig={kubeconfig}",
            f"--controllers={','.join(CONTROLLERS)}",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={sa.key}",
            f"--root-ca-file={server_ca.cert_path}",
            f"--cluster-name={spec.name}",
            "--leader-elect=false",
            "--secure-port=0",
            "--profiling=false",
            "--v=1",
        ],
        ws.log(f"{name}-controller-manager"),
        env=_server_env(),
    )
    cluster = KubeCluster(
        name=spec.name,
        port=port,
        issuer=issuer,
        api_audiences=audiences,
        folder=folder,
        ca_path=server_ca.cert_path,
        kubeconfig=kubeconfig,
        admin=admin,
        apiserver=apiserver,
        controller_manager=controller_manager,
        etcd_prefix=etcd_prefix,
    )
    apiserver.start()
    return cluster


def start_cluster(ws: Workspace, etcd: EtcdServer, spec: ClusterSpec) -> KubeCluster:
    cluster = launch_cluster(ws, etcd, spec)
    try:
        cluster.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _write_kubeconfig(path: Path, name: str, server: str, ca: Path, admin: KeyPair) -> None:
    """A kubeconfig (JSON is valid YAML) whose only context is named after the cluster."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {"client-certificate": str(admin.cert), "client-key": str(admin.key)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": ADMIN_USER}}],
        "current-context": name,
        "preferences": {},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def _server_env() -> dict[str, str]:
    # The servers must not inherit a client's kubeconfig or proxy settings from the shell.
    drop = ("KUBECONFIG", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _tool(argv: Sequence[str], env: Mapping[str, str], stdin: str | None) -> str:
    result = subprocess.run(
        list(argv),
        input=stdin,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise ToolFailed(argv, result.returncode, result.stdout + result.stderr)
    return result.stdout
