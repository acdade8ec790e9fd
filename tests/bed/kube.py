"""Kubernetes control planes: kube-apiserver + kube-controller-manager on the bed's etcd.

A cluster is its control plane only: pods are stored but not run, unless a node joins it
(node.py; cluster a, when the bed has a node network). A cluster given a `NodeNetwork`
listens on the network's address instead of 127.0.0.1, so pods reach it through the
`kubernetes` Service (its endpoints are that address) and the API server reaches the
kubelet with a client certificate of its own. Each cluster has its own etcd prefix, CAs,
admin client certificate and service-account signing key; clusters share nothing but the
etcd process. A cluster is started in two halves (`launch_cluster`, then
`KubeCluster.wait_ready`) so the bed can boot several API servers at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .cluster import ADMIN_USER, START_TIMEOUT, Cluster, ToolFailed, write_kubeconfig
from .etcd import EtcdServer
from .gobuild import KUBERNETES
from .nodenet import NodeNetwork
from .pki import CA, new_ca, service_account_keys
from .ports import LOOPBACK, free_port
from .process import ManagedProcess
from .workspace import Workspace

__all__ = [
    "ADMIN_USER",
    "CHARTS",
    "SHARED_ISSUER",
    "ClusterSpec",
    "KubeCluster",
    "ToolFailed",
    "launch_cluster",
    "start_cluster",
]

CHARTS = Path(__file__).parent / "charts"
# What kubeadm, kind, k3s and rke2 all default to: real fleets share this issuer string.
SHARED_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
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
    # Services get endpoints (the node's kube-proxy routes them).
    "endpoints-controller",
    "endpointslice-controller",
    # A Ready node loses the kubelet's not-ready taint; pods of a removed node are removed.
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
)


@dataclass(frozen=True)
class ClusterSpec:
    """What a test asks for; `issuer=None` means a unique issuer (the server's own URL)."""

    name: str
    issuer: str | None = None
    extra_audiences: tuple[str, ...] = ()
    authorization_mode: str = "Node,RBAC"


# The API server's audit log holds only the JWKS and discovery requests: an independent count
# of what the broker asked for (tests/security/test_token_flood.py), at no cost elsewhere.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    nonResourceURLs: [/openid/v1/jwks, /.well-known/openid-configuration]
  - level: None
"""


@dataclass
class KubeCluster(Cluster):
    """A cluster run as local processes: kube-apiserver and kube-controller-manager."""

    apiserver: ManagedProcess
    controller_manager: ManagedProcess
    etcd_prefix: str
    server_ca: CA
    client_ca: CA
    network: NodeNetwork | None = None  # set when a node can join (node.py)

    @property
    def audit_log(self) -> Path:
        return self.folder / "audit.log"

    def jwks_requests(self) -> int:
        """How many GET /openid/v1/jwks the API server has answered so far (its audit log)."""
        if not self.audit_log.exists():
            return 0
        return sum(
            1
            for line in self.audit_log.read_text().splitlines()
            if json.loads(line).get("requestURI") == "/openid/v1/jwks"
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for /readyz, start the controller manager, wait for the `default` account."""
        self.wait_serving(self.apiserver, timeout)
        self.controller_manager.start()
        self.wait_default_service_account(self.controller_manager, timeout)

    def stop(self) -> None:
        self.controller_manager.stop()
        self.apiserver.stop()


def launch_cluster(
    ws: Workspace,
    etcd: EtcdServer,
    spec: ClusterSpec,
    network: NodeNetwork | None = None,
    node_address: str | None = None,
) -> KubeCluster:
    """Write a cluster's keys and kubeconfig and start its API server (not yet ready).

    `node_address` (a cluster without the node, in a bed that has one): the node network's
    address, named on the serving certificate too, so pods may reach this API server through
    a relay there (relay.py) and verify it."""
    apiserver_bin = KUBERNETES.binary("kube-apiserver")
    manager_bin = KUBERNETES.binary("kube-controller-manager")
    name = f"kube-{spec.name}"
    folder = ws.folder(name)
    pki = folder / "pki"
    host = network.address if network else LOOPBACK
    port = free_port()
    server = f"https://{host}:{port}"
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
        ip_addresses=(
            LOOPBACK,
            SERVICE_IP,
            *([host] if network else []),
            *([node_address] if node_address else []),
        ),
    )
    admin = client_ca.issue(
        pki, "admin", ADMIN_USER, organizations=("system:masters",), client=True
    )
    sa = service_account_keys(pki)
    kubeconfig = folder / "kubeconfig"
    write_kubeconfig(kubeconfig, spec.name, server, server_ca.cert_path, admin)
    etcd_prefix = f"/keyferry-bed/{spec.name}"
    audit_policy = folder / "audit-policy.yaml"
    audit_policy.write_text(AUDIT_POLICY)

    apiserver = ManagedProcess(
        f"{name}-apiserver",
        [
            str(apiserver_bin),
            f"--etcd-servers={etcd.url}",
            f"--etcd-prefix={etcd_prefix}",
            f"--bind-address={host}",
            f"--advertise-address={host}",
            *(_node_args(pki, server_ca, client_ca) if network else _no_node_args()),
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
            f"--audit-policy-file={audit_policy}",
            f"--audit-log-path={folder / 'audit.log'}",
            "--audit-log-mode=blocking",
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
        host=host,
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
        server_ca=server_ca,
        client_ca=client_ca,
        network=network,
    )
    apiserver.start()
    return cluster


def _no_node_args() -> list[str]:
    # Several API servers share 127.0.0.1 and no pod runs: none needs `kubernetes` Endpoints.
    return ["--endpoint-reconciler-type=none"]


def _node_args(pki: Path, server_ca: CA, client_ca: CA) -> list[str]:
    """How the API server reaches the kubelet (`kubectl logs/exec`): by the node's
    InternalIP, with a client certificate, checking the kubelet's serving certificate."""
    client = client_ca.issue(
        pki,
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        organizations=("system:masters",),
        client=True,
    )
    return [
        f"--kubelet-client-certificate={client.cert}",
        f"--kubelet-client-key={client.key}",
        f"--kubelet-certificate-authority={server_ca.cert_path}",
        "--kubelet-preferred-address-types=InternalIP",
    ]


def start_cluster(ws: Workspace, etcd: EtcdServer, spec: ClusterSpec) -> KubeCluster:
    cluster = launch_cluster(ws, etcd, spec)
    try:
        cluster.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _server_env() -> dict[str, str]:
    # The servers must not inherit a client's kubeconfig or proxy settings from the shell.
    drop = ("KUBECONFIG", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    return {k: v for k, v in os.environ.items() if k not in drop}
