"""Who runs the bed's servers: local processes (the default) or containers on a Docker engine.

`KEYFERRY_BED_PROVIDER` chooses: `processes` (default) builds or installs every server and
runs it as a local process; `containers` runs the same servers from pinned images through
testcontainers (containers.py) and needs a Docker engine. Both hand out the same server
dataclasses, probe health with the same methods and do the same set-up after start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from .cluster import Cluster
from .errors import BedError
from .etcd import EtcdServer
from .kube import ClusterSpec, launch_cluster
from .mariadb import MariaDBServer, start_mariadb
from .moto import MotoServer, start_moto
from .nodenet import NodeNetwork
from .postgres import PostgresServer, start_postgres
from .vault import VaultServer, start_vault_dev, start_vault_persistent
from .workspace import Workspace

PROVIDER_VAR = "KEYFERRY_BED_PROVIDER"
PROCESSES = "processes"
CONTAINERS = "containers"


class Provider(Protocol):
    """Starts each kind of server in a workspace; the Bed remembers and stops them."""

    name: str
    uses_etcd: bool  # whether its clusters keep their data in the bed's etcd

    def start_vault_dev(self, ws: Workspace, network: NodeNetwork | None) -> VaultServer: ...

    def start_vault_persistent(self, ws: Workspace) -> VaultServer: ...

    def start_postgres(self, ws: Workspace, network: NodeNetwork | None) -> PostgresServer: ...

    def start_mariadb(self, ws: Workspace, network: NodeNetwork | None) -> MariaDBServer: ...

    def start_moto(self, ws: Workspace, network: NodeNetwork | None) -> MotoServer: ...

    def launch_cluster(
        self,
        ws: Workspace,
        spec: ClusterSpec,
        etcd: EtcdServer | None,
        network: NodeNetwork | None = None,
        node_address: str | None = None,
    ) -> Cluster: ...

    def close(self) -> None:
        """Release what outlives `stop()` of its servers (containers); called by Bed.stop."""


class ProcessProvider:
    """Every server as a local process on a free loopback port (docs/testbed.md)."""

    name = PROCESSES
    uses_etcd = True

    def start_vault_dev(self, ws: Workspace, network: NodeNetwork | None) -> VaultServer:
        return start_vault_dev(ws, network)

    def start_vault_persistent(self, ws: Workspace) -> VaultServer:
        return start_vault_persistent(ws)

    def start_postgres(self, ws: Workspace, network: NodeNetwork | None) -> PostgresServer:
        return start_postgres(ws, network)

    def start_mariadb(self, ws: Workspace, network: NodeNetwork | None) -> MariaDBServer:
        return start_mariadb(ws, network)

    def start_moto(self, ws: Workspace, network: NodeNetwork | None) -> MotoServer:
        return start_moto(ws, network)

    def launch_cluster(
        self,
        ws: Workspace,
        spec: ClusterSpec,
        etcd: EtcdServer | None,
        network: NodeNetwork | None = None,
        node_address: str | None = None,
    ) -> Cluster:
        if etcd is None:
            raise BedError("the process provider's clusters keep their data in the bed's etcd")
        return launch_cluster(ws, etcd, spec, network, node_address)

    def close(self) -> None:
        """Nothing to release: each process is gone once its server is stopped."""


def provider_name(env: Mapping[str, str] = os.environ) -> str:
    """The provider `env` asks for (default: processes); a name not known fails loudly."""
    name = env.get(PROVIDER_VAR, "").strip() or PROCESSES
    if name not in (PROCESSES, CONTAINERS):
        raise BedError(f"{PROVIDER_VAR}={name!r} is not known; choose {PROCESSES} or {CONTAINERS}")
    return name


def select_provider(env: Mapping[str, str] = os.environ) -> Provider:
    """The provider `env` asks for; testcontainers is imported only when containers are."""
    if provider_name(env) == PROCESSES:
        return ProcessProvider()
    from .containers import ContainersProvider  # noqa: PLC0415  (imports testcontainers)

    return ContainersProvider()
