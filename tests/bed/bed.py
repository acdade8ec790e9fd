"""The Bed: starts each server on first use, remembers it, and stops all of them at the end.

Who starts a server is the bed's provider (provider.py): local processes by default, or
containers with KEYFERRY_BED_PROVIDER=containers. With local processes as root, the bed
first creates its node network (nodenet.py): cluster a's API server, PostgreSQL,
MariaDB and the dev Vault listen on its address too, and `node()` joins a real kubelet to cluster a.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from .cluster import Cluster
from .etcd import EtcdServer, start_etcd
from .jaeger import JaegerServer, start_jaeger
from .kube import ClusterSpec
from .mariadb import MariaDBServer
from .moto import MotoServer
from .node import NODE_CLUSTER, Node, start_node
from .nodenet import NodeNetwork, can_create, create_network
from .postgres import PostgresServer
from .progress import step
from .provider import Provider, select_provider
from .vault import VaultServer
from .workspace import Workspace


class Stoppable(Protocol):
    def stop(self) -> None: ...

    def describe(self) -> str: ...


S = TypeVar("S", bound=Stoppable)


class Bed:
    def __init__(
        self,
        workspace: Workspace | None = None,
        keep_files: bool = False,
        provider: Provider | None = None,
    ) -> None:
        self.provider = provider or select_provider()
        self.workspace = workspace or Workspace.create()
        self.keep_files = keep_files
        self._servers: dict[str, Stoppable] = {}
        self._network: NodeNetwork | None = None

    def _get(self, name: str, start: Callable[[Workspace], S]) -> S:
        server = self._servers.get(name)
        if server is None:
            with step(f"starting {name}"):
                server = start(self.workspace)
            self._servers[name] = server
        return server  # type: ignore[return-value]

    def vault(self) -> VaultServer:
        """A dev-mode Vault (in memory): fast, for most tests."""
        network = self.network()
        return self._get("vault-dev", lambda ws: self.provider.start_vault_dev(ws, network))

    def vault_persistent(self) -> VaultServer:
        """A Vault on file storage that keeps its leases across restarts."""
        return self._get("vault-persistent", self.provider.start_vault_persistent)

    def network(self) -> NodeNetwork | None:
        """The bridge pods reach the host through, created on first use; None when this bed
        cannot have a node (not root, or servers in containers)."""
        if self._network is None and self.provider.name == "processes" and can_create():
            self._network = self._get("node-network", lambda _: create_network())
        return self._network

    def postgres(self) -> PostgresServer:
        network = self.network()
        return self._get("postgres", lambda ws: self.provider.start_postgres(ws, network))

    def mariadb(self) -> MariaDBServer:
        network = self.network()
        return self._get("mariadb", lambda ws: self.provider.start_mariadb(ws, network))

    def moto(self) -> MotoServer:
        network = self.network()
        return self._get("moto", lambda ws: self.provider.start_moto(ws, network))

    def jaeger(self) -> JaegerServer:
        """The trace receiver: OTLP gRPC in, Jaeger's query API out (jaeger.py)."""
        return self._get("jaeger", start_jaeger)

    def etcd(self) -> EtcdServer:
        """The one etcd that the process provider's clusters store their data in."""
        return self._get("etcd", start_etcd)

    def cluster(self, name: str, issuer: str | None = None) -> Cluster:
        """One Kubernetes cluster; a new one with `issuer=None` gets a unique issuer (its URL)."""
        return self.clusters([ClusterSpec(name, issuer)])[0]

    def clusters(self, specs: Sequence[ClusterSpec] | int = 2) -> list[Cluster]:
        """Clusters by spec (or the first n of a, b, c, ...), the new ones booted side by side.

        Asking again for a running cluster returns it, unless its issuer differs.
        """
        if isinstance(specs, int):
            specs = [ClusterSpec(chr(ord("a") + i)) for i in range(specs)]
        fresh = [s for s in specs if f"kube-{s.name}" not in self._servers]
        if fresh:
            etcd = self.etcd() if self.provider.uses_etcd else None
            names = ", ".join(s.name for s in fresh)
            with step(f"starting Kubernetes cluster(s) {names}"):
                launched: list[Cluster] = []
                try:
                    for spec in fresh:
                        bridge = self.network()
                        network = bridge if spec.name == NODE_CLUSTER else None
                        # The others name the bridge's address too: pods reach them by relay.
                        named = bridge.address if bridge and network is None else None
                        launched.append(
                            self.provider.launch_cluster(self.workspace, spec, etcd, network, named)
                        )
                    for cluster in launched:
                        cluster.wait_ready()
                except BaseException:
                    for cluster in launched:
                        cluster.stop()
                    raise
            for cluster in launched:
                self._servers[f"kube-{cluster.name}"] = cluster
        running = [self._servers[f"kube-{s.name}"] for s in specs]
        clusters = [c for c in running if isinstance(c, Cluster)]
        for spec, cluster in zip(specs, clusters, strict=True):
            if spec.issuer is not None and spec.issuer != cluster.issuer:
                raise ValueError(
                    f"cluster {spec.name} already runs with issuer {cluster.issuer}, "
                    f"not {spec.issuer}"
                )
        return clusters

    def node(self) -> Node:
        """Cluster a's one real node (containerd, kubelet, kube-proxy, kube-scheduler),
        started on first use; ServerUnavailable says why when this machine cannot run it."""
        cluster = self.cluster(NODE_CLUSTER)
        return self._get(f"node-{NODE_CLUSTER}", lambda ws: start_node(ws, cluster))

    def release_node(self) -> None:
        """Stop cluster a's node if this bed runs it, freeing the machine's one node for
        another bed (the demo's, run as its own process); `node()` starts it again."""
        node = self._servers.pop(f"node-{NODE_CLUSTER}", None)
        if node is not None:
            with step(f"stopping node-{NODE_CLUSTER} (released for another bed)"):
                node.stop()

    @property
    def servers(self) -> dict[str, Stoppable]:
        return dict(self._servers)

    def stop(self) -> None:
        """Stop every server this bed started, newest first, then remove the workspace."""
        for name, server in reversed(list(self._servers.items())):
            with step(f"stopping {name}"):
                server.stop()
        self._servers.clear()
        self.provider.close()
        if not self.keep_files:
            self.workspace.remove()
