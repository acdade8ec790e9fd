"""Vault (or OpenBao) servers for the bed: dev mode in memory, or persistent file storage.

OpenBao is the first choice, but the Go module proxy reachable here refuses every
version of ``github.com/openbao/openbao`` (see docs/testbed.md), so the bed builds the
fallback named in the issue, HashiCorp Vault (an MPL-2.0 release, see docs/testbed.md), with
the aws secrets engine built in. Both speak the same HTTP API and CLI flags; `flavour`
records which one ran and the test session prints it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import hvac

from .errors import ServerFailed
from .gobuild import VAULT
from .nodenet import NodeNetwork
from .ports import LOOPBACK, free_port
from .process import ManagedProcess
from .readiness import Runner
from .workspace import Workspace

DEV_ROOT_TOKEN = "keyferry-bed-root"
FLAVOUR = "HashiCorp Vault v1.13.2 (MPL-2.0), built from its Go module"
CONTAINER_FLAVOUR = "HashiCorp Vault v1.13.2 (MPL-2.0), its container image"  # containers.py


@dataclass
class VaultServer:
    """A running Vault: its address, a root token, and how to restart it."""

    mode: str  # "dev" or "persistent"
    port: int
    process: Runner  # a local process or a container (see readiness.py)
    root_token: str = ""
    unseal_key: str = ""
    config_path: Path | None = None
    flavour: str = FLAVOUR
    also_on: str | None = None
    """The node network's address, where pods reach this Vault too (same port); None: none."""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def node_addr(self) -> str:
        """The address the node's pods reach this Vault at (the dev Vault of a bed with a node)."""
        if self.also_on is None:
            raise ValueError("this Vault does not listen on a node network's address")
        return f"http://{self.also_on}:{self.port}"

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=10)

    def healthy(self) -> bool:
        return bool(self.client().sys.is_initialized()) and not self.client().sys.is_sealed()

    def describe(self) -> str:
        return f"{self.addr} ({self.mode}; {self.flavour}; root token {self.root_token})"

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        """Stop and start the same server; a persistent one is unsealed again."""
        self.process.stop()
        self.process.start()
        if self.mode == "persistent":
            self.process.wait_until(self.answers, "answering on its port")
            self.client().sys.submit_unseal_key(self.unseal_key)
        self.process.wait_until(self.healthy, "unsealed and healthy")

    def answers(self) -> bool:
        return self.client().sys.is_initialized() is not None


def dev_args(port: int) -> list[str]:
    """`vault` arguments of a dev-mode server (in memory, root token DEV_ROOT_TOKEN)."""
    return [
        "server",
        "-dev",
        f"-dev-root-token-id={DEV_ROOT_TOKEN}",
        f"-dev-listen-address={LOOPBACK}:{port}",
        "-dev-no-store-token",
    ]


def persistent_config(port: int, data: str) -> dict[str, object]:
    """The configuration of a persistent server: file storage in `data`, plain HTTP."""
    return {
        "storage": {"file": {"path": data}},
        "listener": {"tcp": {"address": f"{LOOPBACK}:{port}", "tls_disable": True}},
        "disable_mlock": True,
        "api_addr": f"http://{LOOPBACK}:{port}",
        "ui": False,
    }


def initialise(server: VaultServer, name: str) -> None:
    """Initialise a new persistent server with one key share, unseal it, check the root token."""
    init = server.client().sys.initialize(secret_shares=1, secret_threshold=1)
    server.root_token = init["root_token"]
    server.unseal_key = init["keys"][0]
    server.client().sys.submit_unseal_key(server.unseal_key)
    server.process.wait_until(server.healthy, "unsealed and healthy")
    if not server.client().is_authenticated():
        raise ServerFailed(name, "the root token from initialisation is not accepted")


def node_listener(address: str, port: int) -> dict[str, object]:
    """A configuration adding a plain-HTTP listener on `address` (the node network's, where
    the node's pods reach the host); Vault merges it with dev mode's own listener."""
    return {"listener": [{"tcp": {"address": f"{address}:{port}", "tls_disable": True}}]}


def start_vault_dev(
    ws: Workspace, network: NodeNetwork | None = None, name: str = "vault-dev"
) -> VaultServer:
    """A dev-mode Vault on 127.0.0.1, and on the node network's address when there is one."""
    binary = VAULT.binary("vault")
    home = ws.folder(name)
    port = free_port()
    argv = [str(binary), *dev_args(port)]
    if network is not None:
        extra = home / "node-listener.json"
        extra.write_text(json.dumps(node_listener(network.address, port)))
        argv.append(f"-config={extra}")
    process = ManagedProcess(name, argv, ws.log(name), env=_env(home))
    server = VaultServer(
        "dev",
        port,
        process,
        root_token=DEV_ROOT_TOKEN,
        also_on=network.address if network else None,
    )
    process.start()
    process.wait_until(server.healthy, "unsealed and healthy")
    return server


def start_vault_persistent(ws: Workspace, name: str = "vault-persistent") -> VaultServer:
    """A Vault on file storage, initialised with one key share and unsealed through the API."""
    binary = VAULT.binary("vault")
    home = ws.folder(name)
    port = free_port()
    config = home / "vault.json"
    config.write_text(json.dumps(persistent_config(port, str(home / "data"))))
    process = ManagedProcess(
        name, [str(binary), "server", f"-config={config}"], ws.log(name), env=_env(home)
    )
    server = VaultServer("persistent", port, process, config_path=config)
    process.start()
    process.wait_until(server.answers, "answering on its port")
    initialise(server, name)
    return server


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env["HOME"] = str(home)
    return env
