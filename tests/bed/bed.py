"""The Bed: starts each server on first use, remembers it, and stops all of them at the end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

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
