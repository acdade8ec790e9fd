"""Cluster a's one real node: containerd, kubelet, kube-proxy (iptables), kube-scheduler,
and CoreDNS as a Deployment on it (dns.py).

The node joins a cluster started on the bed's node network (kube.py, nodenet.py): the
kubelet listens on the network's address, which is the node's InternalIP, so the API
server reaches it for `kubectl logs/exec`; pods are attached to the bed's bridge by the CNI
bridge plugin and reach the host's servers through its address. Each component has its own
identity: the kubelet `system:node:<name>` in `system:nodes` (the Node authorizer and
NodeRestriction apply), kube-proxy `system:kube-proxy`, the scheduler
`system:kube-scheduler`.

One node runs on a machine at a time (a machine-wide lock): kube-proxy and the kubelet
write the network namespace's iptables chains and cgroups under fixed names.

Stopping removes what the node made (nodeclean.py), by its own names and pids: its pods
(deleted through the kubelet, so their sandboxes and network namespaces go), kube-proxy's
rules (`kube-proxy --cleanup`), the kubelet's KUBE-* chains (one drops non-loopback traffic
to 127.0.0.0/8), containerd's shims, mounts under the node's folder, the
/var/log/containers links to its pods' logs (the logs live in the node's folder), the
`kubepods` cgroups, and the kernel settings the kubelet and the bridge plugin change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kubernetes import client as k8s

from . import dns
from .cluster import write_kubeconfig
from .containerd import Containerd, require_runtime, start_containerd, unmount_under
from .errors import ServerUnavailable
from .gobuild import K8S_VERSION, KUBERNETES
from .kube import KubeCluster
from .nodeclean import (
    quiet,
    read_sysctls,
    remove_kube_chains,
    remove_kubepods_cgroups,
    remove_log_links,
    write_sysctls,
)
from .nodenet import NodeNetwork
from .ociimage import ImageSpec, write_archive
from .pki import KeyPair
from .ports import LOOPBACK, free_port
from .process import ManagedProcess
from .progress import say
from .workspace import Workspace

NODE_CLUSTER = "a"
START_TIMEOUT = 180.0
DRAIN_TIMEOUT = 60.0
LOCK = Path("/run/keyferry-bed-node.lock")
LOCK_WAIT = 600.0
# Only pods that tolerate this run here: the other tests' pods in cluster a (images that
# exist nowhere) stay Pending and are deleted at once, as on a cluster without nodes.
TAINT = {"key": "keyferry.invalid/real-node", "value": "yes", "effect": "NoSchedule"}
TOLERATION = {"key": TAINT["key"], "operator": "Equal", "value": "yes", "effect": "NoSchedule"}

# Images the node has without a registry (ociimage.py). CRI resolves short names under
# a default registry, so these are fully qualified names under a domain that cannot exist.
PAUSE_IMAGE = "keyferry.invalid/pause:catatonit"
BUSYBOX_IMAGE = "keyferry.invalid/busybox:bed"
BUSYBOX_APPLETS = (
    *("sh", "sleep", "cat", "echo", "printf", "head", "ls", "grep", "id", "ps", "kill", "true"),
    *("nc", "wget", "ssl_client", "nslookup"),
)

# Debian's catatonit in pause mode (-P): PID 1 of every pod sandbox; with
# shareProcessNamespace it reaps the pod's orphans, as Kubernetes' own pause does.
PAUSE = ImageSpec(files={"/catatonit": Path("/usr/bin/catatonit")}, entrypoint=["/catatonit", "-P"])
BUSYBOX = ImageSpec(
    files={"/bin/busybox": Path("/bin/busybox")},
    symlinks={f"/bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS},
    directories=("/tmp", "/etc"),  # noqa: S108 - folders inside the image
    entrypoint=["/bin/sh"],
)


@dataclass
class Node:
    name: str
    cluster: KubeCluster
    network: NodeNetwork
    folder: Path
    containerd: Containerd
    kubelet: ManagedProcess
    kube_proxy: ManagedProcess
    scheduler: ManagedProcess
    proxy_config: Path
    sysctls: dict[str, str]
    started_in: float = 0.0
    _lock: IO[str] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """The node's InternalIP: the bridge address pods reach the host's servers by."""
        return self.network.address

    @property
    def pod_logs(self) -> Path:
        return self.folder / "pod-logs"

    def load(self, archive: Path, ref: str) -> None:
        """Make an image from an OCI archive runnable here under the name `ref`."""
        self.containerd.load(archive, ref)

    def ready(self) -> bool:
        with self.cluster.api_client() as api:
            node = k8s.CoreV1Api(api).read_node(self.name)
        status = node.status
        conditions = {c.type: c.status for c in (status.conditions if status else None) or []}
        return conditions.get("Ready") == "True"

    def describe(self) -> str:
        return (
            f"node {self.name} of cluster {self.cluster.name} at {self.address} "
            f"(kubelet {K8S_VERSION}, pod CIDR {self.network.pod_cidr}, "
            f"started in {self.started_in:.1f}s)"
        )

    def stop(self) -> None:
        self.scheduler.stop()  # no new pods while the node drains
        try:
            self._drain()
        finally:
            self.kubelet.stop()
            self._forget()
            self.kube_proxy.stop()
            quiet([*self.proxy_command(), "--cleanup"])
            self.containerd.stop()
            remove_kube_chains()
            remove_kubepods_cgroups()
            unmount_under(self.folder)
            remove_log_links(self.pod_logs)
            write_sysctls(self.sysctls)
            if self._lock is not None:
                self._lock.close()  # releases the machine-wide node lock

    def proxy_command(self) -> list[str]:
        return [str(KUBERNETES.binary("kube-proxy")), f"--config={self.proxy_config}"]

    def _forget(self) -> None:
        """Remove the Node object, so the cluster does not list a node that is gone."""
        if self.cluster.apiserver.running():
            with self.cluster.api_client() as api, contextlib.suppress(Exception):
                k8s.CoreV1Api(api).delete_node(self.name)

    def _drain(self) -> None:
        """Delete every pod on this node through the kubelet, and wait for their sandboxes
        to stop (which removes their network namespaces and veths)."""
        if not self.kubelet.running() or not self.cluster.apiserver.running():
            return
        with self.cluster.api_client() as api, contextlib.suppress(Exception):
            core = k8s.CoreV1Api(api)
            pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.name}")
            for pod in pods.items:
                meta = pod.metadata
                if meta and meta.name and meta.namespace:
                    with contextlib.suppress(Exception):
                        core.delete_namespaced_pod(
                            meta.name, meta.namespace, grace_period_seconds=1
                        )
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            if not self.containerd.ctr("tasks", "list", "--quiet").split():
                return
            time.sleep(0.5)
        say(f"node {self.name}: pods still running after {DRAIN_TIMEOUT:.0f}s; killing them")


def start_node(ws: Workspace, cluster: object) -> Node:
    """Start the node of `cluster` (a process cluster on the node network) and wait until
    it is Ready and CoreDNS runs; the time that took (without waiting for another bed's
    node) is in `Node.started_in`."""
    if not isinstance(cluster, KubeCluster) or cluster.network is None:
        raise ServerUnavailable(
            "node",
            "cluster a runs without a node network (the bed needs root and local processes)",
            "run the tests as root with the default provider",
        )
    require_runtime()
    asked = time.monotonic()
    lock = _take_lock()
    started = time.monotonic()
    if started - asked > 1:
        say(f"node: waited {started - asked:.0f}s for another bed's node to stop")
    try:
        node = _launch(ws, cluster, cluster.network)
    except BaseException:
        lock.close()
        raise
    node._lock = lock
    try:
        node.kubelet.wait_until(node.ready, "registering a Ready node", START_TIMEOUT)
        node.kube_proxy.wait_until(lambda: _proxy_synced(node), "syncing its rules")
        node.scheduler.wait_until(node.scheduler.running, "running")
        dns.deploy(cluster, TOLERATION)
        node.kubelet.wait_until(lambda: dns.available(cluster), "running CoreDNS")
    except BaseException:
        node.stop()
        raise
    node.started_in = time.monotonic() - started
    say(f"node {node.name}: Ready in {node.started_in:.1f}s")
    return node


def _launch(ws: Workspace, cluster: KubeCluster, network: NodeNetwork) -> Node:
    name = f"node-{cluster.name}"
    folder = ws.folder(name)
    pki = folder / "pki"
    images = folder / "images"
    cni = folder / "cni"
    cni.mkdir(exist_ok=True)
    (cni / "10-keyferry-bed.conflist").write_text(json.dumps(cni_config(network, folder)))

    containerd = start_containerd(ws, PAUSE_IMAGE, cni)
    try:
        for spec, ref in (
            (PAUSE, PAUSE_IMAGE),
            (BUSYBOX, BUSYBOX_IMAGE),
            (dns.coredns_image(), dns.COREDNS_IMAGE),
        ):
            stem = ref.rsplit("/", 1)[1].replace(":", "-")
            containerd.load(write_archive(spec, ref, images / f"{stem}.tar"), ref)
    except BaseException:
        containerd.stop()
        raise

    def kubeconfig(stem: str, user: str, groups: tuple[str, ...] = ()) -> Path:
        cert = cluster.client_ca.issue(pki, stem, user, organizations=groups, client=True)
        path = folder / f"{stem}.kubeconfig"
        write_kubeconfig(path, cluster.name, cluster.server, cluster.ca_path, cert)
        return path

    serving = cluster.server_ca.issue(
        pki, "kubelet-serving", name, dns_names=(name,), ip_addresses=(network.address,)
    )
    kubelet_config = folder / "kubelet.json"
    kubelet_config.write_text(
        json.dumps(kubelet_configuration(cluster, network, containerd, serving, folder))
    )
    kubelet = ManagedProcess(
        f"{name}-kubelet",
        [
            str(KUBERNETES.binary("kubelet")),
            f"--config={kubelet_config}",
            f"--kubeconfig={kubeconfig('kubelet', f'system:node:{name}', ('system:nodes',))}",
            f"--root-dir={folder / 'kubelet'}",
            f"--hostname-override={name}",
            f"--node-ip={network.address}",
            "--v=1",
        ],
        ws.log(f"{name}-kubelet"),
        env=_clean_env(),
    )
    proxy_config = folder / "kube-proxy.json"
    proxy_kubeconfig = kubeconfig("kube-proxy", "system:kube-proxy")
    proxy_config.write_text(json.dumps(proxy_configuration(name, network, proxy_kubeconfig)))
    kube_proxy = ManagedProcess(
        f"{name}-kube-proxy",
        [str(KUBERNETES.binary("kube-proxy")), f"--config={proxy_config}", "--v=1"],
        ws.log(f"{name}-kube-proxy"),
        env=_clean_env(),
    )
    scheduler = ManagedProcess(
        f"kube-{cluster.name}-scheduler",
        [
            str(KUBERNETES.binary("kube-scheduler")),
            f"--kubeconfig={kubeconfig('kube-scheduler', 'system:kube-scheduler')}",
            "--leader-elect=false",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={free_port()}",
            "--profiling=false",
            "--v=1",
        ],
        ws.log(f"kube-{cluster.name}-scheduler"),
        env=_clean_env(),
    )
    node = Node(
        name,
        cluster,
        network,
        folder,
        containerd,
        kubelet,
        kube_proxy,
        scheduler,
        proxy_config,
        read_sysctls(),
    )
    for process in (scheduler, kubelet, kube_proxy):
        process.start()
    return node


def cni_config(network: NodeNetwork, folder: Path) -> dict[str, Any]:
    """The bed's bridge (already up, with its address) as the pods' network: no masquerade
    (nothing leaves the machine), a default route through the bridge address."""
    return {
        "cniVersion": "1.0.0",
        "name": "keyferry-bed",
        "plugins": [
            {
                "type": "bridge",
                "bridge": network.name,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": network.pod_cidr, "gateway": network.address}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(folder / "cni-ipam"),
                },
            },
            {"type": "loopback"},
        ],
    }


def kubelet_configuration(
    cluster: KubeCluster,
    network: NodeNetwork,
    containerd: Containerd,
    serving: KeyPair,
    folder: Path,
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": network.address,
        "port": free_port(),
        "readOnlyPort": 0,
        "healthzBindAddress": LOOPBACK,
        "healthzPort": free_port(),
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(cluster.client_ca.cert_path)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": containerd.endpoint,
        "imageServiceEndpoint": containerd.endpoint,
        # cgroup v1 here, no systemd: the cgroupfs driver, as runc is told in containerd.py.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": [],
        "podCIDR": network.pod_cidr,
        "podLogsDir": str(folder / "pod-logs"),
        # An offline node never deletes an image it cannot pull again.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "clusterDomain": dns.CLUSTER_DOMAIN,
        "clusterDNS": [dns.DNS_SERVICE_IP],
        "serializeImagePulls": False,
        "registerNode": True,
        "shutdownGracePeriod": "0s",
        "registerWithTaints": [TAINT],
        "logging": {"format": "text"},
    }


def proxy_configuration(name: str, network: NodeNetwork, kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": name,
        "clusterCIDR": network.pod_cidr,
        "healthzBindAddress": f"{LOOPBACK}:{free_port()}",
        "metricsBindAddress": f"{LOOPBACK}:{free_port()}",
        # NodePorts only on the bridge address, never on the machine's own interfaces.
        "nodePortAddresses": [network.pod_cidr],
        # 0: leave the machine's conntrack settings as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
    }


def _proxy_synced(node: Node) -> bool:
    """kube-proxy's /healthz answers 200 once it has written the Services' rules."""
    address = json.loads(node.proxy_config.read_text())["healthzBindAddress"]
    with urllib.request.urlopen(f"http://{address}/healthz", timeout=2) as response:
        return bool(response.status == 200)


def _take_lock() -> IO[str]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    handle = LOCK.open("a+")
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise ServerUnavailable(
                    "node",
                    f"another bed's node has run on this machine for {LOCK_WAIT:.0f}s ({LOCK})",
                    "wait for that test run to end: one node runs per machine",
                ) from None
            time.sleep(2)
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle


def _clean_env() -> dict[str, str]:
    drop = ("KUBECONFIG", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    return {k: v for k, v in os.environ.items() if k not in drop}
