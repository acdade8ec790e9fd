"""The Bed: starts each server on first use, remembers it, and stops all of them at the end."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from .etcd import EtcdServer, start_etcd
from .kube import ClusterSpec, KubeCluster, launch_cluster
from .mariadb import MariaDBServer, start_mariadb
from .moto import MotoServer, start_moto
from .postgres import PostgresServer, start_postgres
from .progress import step
from .vault import VaultServer, start_vault_dev, start_vault_persistent
from .workspace import Workspace


class Stoppable(Protocol):
    def stop(self) -> None: ...

    def describe(self) -> str: ...


S = TypeVar("S", bound=Stoppable)


class Bed:
    def __init__(self, workspace: Workspace | None = None, keep_files: bool = False) -> None:
        self.workspace = workspace or Workspace.create()
        self.keep_files = keep_files
        self._servers: dict[str, Stoppable] = {}

    def _get(self, name: str, start: Callable[[Workspace], S]) -> S:
        server = self._servers.get(name)
        if server is None:
            with step(f"starting {name}"):
                server = start(self.workspace)
            self._servers[name] = server
        return server  # type: ignore[return-value]

    def vault(self) -> VaultServer:
        """A dev-mode Vault (in memory): fast, for most tests."""
        return self._get("vault-dev", start_vault_dev)

    def vault_persistent(self) -> VaultServer:
        """A Vault on file storage that keeps its leases across restarts."""
        return self._get("vault-persistent", start_vault_persistent)

    def postgres(self) -> PostgresServer:
        return self._get("postgres", start_postgres)

    def mariadb(self) -> MariaDBServer:
        return self._get("mariadb", start_mariadb)

    def moto(self) -> MotoServer:
        return self._get("moto", start_moto)

    def etcd(self) -> EtcdServer:
        """The one etcd that every Kubernetes cluster of this bed stores its data in."""
        return self._get("etcd", start_etcd)

    def cluster(self, name: str, issuer: str | None = None) -> KubeCluster:
        """One Kubernetes cluster; a new one with `issuer=None` gets a unique issuer (its URL)."""
        return self.clusters([ClusterSpec(name, issuer)])[0]

    def clusters(self, specs: Sequence[ClusterSpec] | int = 2) -> list[KubeCluster]:
        """Clusters by spec (or the first n of a, b, c, ...), the new ones booted side by side.

        Asking again for a running cluster returns it, unless its issuer differs.
        """
        if isinstance(specs, int):
            specs = [ClusterSpec(chr(ord("a") + i)) for i in range(specs)]
        fresh = [s for s in specs if f"kube-{s.name}" not in self._servers]
        if fresh:
            etcd = self.etcd()
            names = ", ".join(s.name for s in fresh)
            with step(f"starting Kubernetes cluster(s) {names}"):
                launched: list[KubeCluster] = []
                try:
                    for spec in fresh:
                        launched.append(launch_cluster(self.workspace, etcd, spec))
                    for cluster in launched:
                        cluster.wait_ready()
                except BaseException:
                    for cluster in launched:
                        cluster.stop()
                    raise
            for cluster in launched:
                self._servers[f"kube-{cluster.name}"] = cluster
        running = [self._servers[f"kube-{s.name}"] for s in specs]
        clusters = [c for c in running if isinstance(c, KubeCluster)]
        for spec, cluster in zip(specs, clusters, strict=True):
            if spec.issuer is not None and spec.issuer != cluster.issuer:
                raise ValueError(
                    f"cluster {spec.name} already runs with issuer {cluster.issuer}, "
                    f"not {spec.issuer}"
                )
        return clusters

    @property
    def servers(self) -> dict[str, Stoppable]:
        return dict(self._servers)

    def stop(self) -> None:
        """Stop every server this bed started, newest first, then remove the workspace."""
        for name, server in reversed(list(self._servers.items())):
            with step(f"stopping {name}"):
                server.stop()
        self._servers.clear()
        if not self.keep_files:
            self.workspace.remove()
