"""The testcontainers provider (`KEYFERRY_BED_PROVIDER=containers`): the bed's servers from
pinned images on a Docker engine, for machines that run one. No engine runs on this
project's machines or on CI, so this provider is not exercised there (docs/testbed.md).

It shares with the process provider the server dataclasses, their health probes and the
set-up after start (Vault's dev root token and persistent initialisation, the MariaDB admin
user, moto's admin user); only how a server is started differs. Every container but k3s
shares the host's network and listens on 127.0.0.1:<free port>, as a process would.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import pymysql
from testcontainers.core.container import DockerContainer

from .cluster import Cluster
from .engine import (
    MARIADB_IMAGE,
    MOTO_IMAGE,
    POSTGRES_IMAGE,
    VAULT_IMAGE,
    ContainerRunner,
    host_network,
    require_engine,
)
from .etcd import EtcdServer
from .k3s import launch_k3s
from .kube import ClusterSpec
from .mariadb import MariaDBServer, create_mariadb_admin
from .mariadb import server_args as mariadb_args
from .moto import SERVER_ENV, MotoServer, bootstrap_moto_admin
from .nodenet import NodeNetwork
from .ports import LOOPBACK, free_port
from .postgres import PostgresServer
from .postgres import server_args as postgres_args
from .vault import (
    CONTAINER_FLAVOUR,
    DEV_ROOT_TOKEN,
    VaultServer,
    dev_args,
    initialise,
    persistent_config,
)
from .workspace import Workspace

VAULT_FLAVOUR = f"{CONTAINER_FLAVOUR} {VAULT_IMAGE}"
VAULT_DATA = "/vault/file"  # the image's storage volume, owned by its vault user
MARIADB_START_TIMEOUT = 180.0  # the first start initialises the data folder


class ContainersProvider:
    """Starts each server in a container; `close()` removes every container it created."""

    name = "containers"
    uses_etcd = False  # each k3s keeps its own datastore

    def __init__(self) -> None:
        self._engine_answered = False
        self._runners: list[ContainerRunner] = []

    def start_vault_dev(self, ws: Workspace, network: NodeNetwork | None) -> VaultServer:
        port = free_port()
        runner = self._runner(ws, "vault-dev", lambda: _vault().with_command(dev_args(port)))
        server = VaultServer("dev", port, runner, root_token=DEV_ROOT_TOKEN, flavour=VAULT_FLAVOUR)
        runner.start()
        runner.wait_until(server.healthy, "unsealed and healthy")
        return server

    def start_vault_persistent(self, ws: Workspace) -> VaultServer:
        name = "vault-persistent"
        port = free_port()
        config = json.dumps(persistent_config(port, VAULT_DATA))
        runner = self._runner(
            ws,
            name,
            lambda: _vault().with_env("VAULT_LOCAL_CONFIG", config).with_command(["server"]),
        )
        server = VaultServer("persistent", port, runner, flavour=VAULT_FLAVOUR)
        runner.start()
        runner.wait_until(server.answers, "answering on its port")
        initialise(server, name)
        return server

    def start_postgres(self, ws: Workspace, network: NodeNetwork | None) -> PostgresServer:
        port = free_port()
        password = secrets.token_urlsafe(18)
        runner = self._runner(
            ws,
            "postgres",
            lambda: (
                host_network(DockerContainer(POSTGRES_IMAGE))
                .with_env("POSTGRES_PASSWORD", password)
                .with_env("POSTGRES_HOST_AUTH_METHOD", "scram-sha-256")
                .with_command(["postgres", *postgres_args(port)])
            ),
        )
        server = PostgresServer(port, password, POSTGRES_IMAGE.rsplit(":", 1)[1], runner)
        runner.start()
        runner.wait_until(server.healthy, "accepting connections")
        return server

    def start_mariadb(self, ws: Workspace, network: NodeNetwork | None) -> MariaDBServer:
        port = free_port()
        root_password = secrets.token_urlsafe(18)
        runner = self._runner(
            ws,
            "mariadb",
            lambda: (
                host_network(DockerContainer(MARIADB_IMAGE))
                .with_env("MARIADB_ROOT_PASSWORD", root_password)
                .with_command(mariadb_args(port))
            ),
        )
        server = MariaDBServer(port, None, secrets.token_urlsafe(18), "unknown", runner)

        def bootstrap() -> bool:
            root = pymysql.connect(
                host=LOOPBACK,
                port=port,
                user="root",
                password=root_password,
                connect_timeout=2,
                autocommit=True,
            )
            server.version = create_mariadb_admin(root, server.admin_password)
            return True

        runner.start()
        runner.wait_until(bootstrap, "accepting root logins over TCP", MARIADB_START_TIMEOUT)
        runner.wait_until(server.healthy, "accepting TCP logins")
        return server

    def start_moto(self, ws: Workspace, network: NodeNetwork | None = None) -> MotoServer:
        port = free_port()
        # The image's entrypoint is `moto_server -H 0.0.0.0`; the later -H wins.
        runner = self._runner(
            ws,
            "moto",
            lambda: (
                host_network(DockerContainer(MOTO_IMAGE))
                .with_envs(**SERVER_ENV)
                .with_command(["-H", LOOPBACK, "-p", str(port)])
            ),
        )
        server = MotoServer(port, "", "", runner)
        runner.start()
        runner.wait_until(server.healthy, "answering HTTP")
        server.access_key_id, server.secret_access_key = bootstrap_moto_admin(server.endpoint)
        return server

    def launch_cluster(
        self,
        ws: Workspace,
        spec: ClusterSpec,
        etcd: EtcdServer | None,
        network: NodeNetwork | None = None,
        node_address: str | None = None,
    ) -> Cluster:
        self._require_engine()
        return launch_k3s(ws, spec, self._runners.append)

    def close(self) -> None:
        """Remove every container this provider created, newest first (their logs are kept)."""
        while self._runners:
            self._runners.pop().remove()

    def _require_engine(self) -> None:
        if not self._engine_answered:
            require_engine()
            self._engine_answered = True

    def _runner(
        self, ws: Workspace, name: str, make: Callable[[], DockerContainer]
    ) -> ContainerRunner:
        """Check the engine (a container object needs one), make the container, track it."""
        self._require_engine()
        runner = ContainerRunner(name, make(), ws.log(name))
        self._runners.append(runner)
        return runner


def _vault() -> DockerContainer:
    # Dev mode and the persistent config both disable mlock, so no IPC_LOCK capability.
    return host_network(DockerContainer(VAULT_IMAGE)).with_env("SKIP_SETCAP", "1")
