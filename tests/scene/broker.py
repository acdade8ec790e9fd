"""The bed's in-process broker: its config as docs/examples/broker.yaml has it (Vault with
AppRole and docs/vault-policy.hcl, a PostgreSQL-backed database mount for role
orders-db-ro, the audit transit key, the example policies and roles, clusters a, b and c,
a SQLite or PostgreSQL store), the running `Broker`, and the calls most tests make on it."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import hvac
import pytest
import yaml

from broker.api.v1 import broker_pb2
from broker.backends import VaultClient, list_keyferry_leases
from broker.backends.transit import TransitSigner
from broker.cli.context import CliContext, save_context
from broker.clock import utcnow
from broker.server import BrokerServer, create_server
from broker.settings import BrokerSettings, load_settings
from broker.store import Store
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer

from .admin_helpers import SECURITY, admin_channel, admin_section
from .engines import enable, enable_approle
from .workloads import bearer, broker_stub

DOCS = Path(__file__).parents[2] / "docs"
POLICY = DOCS / "vault-policy.hcl"
MOUNT = "keyferry/db-orders"  # the mount of role orders-db-ro in docs/examples/roles.yaml
ROLE = "orders-db-ro"
TRANSIT_MOUNT, TRANSIT_KEY = "keyferry/transit", "audit-checkpoints"
HMAC_KEY = "test-audit-hmac-key-0123456789abcdef"


def new_approle(root: hvac.Client) -> tuple[str, str]:
    """The broker's AppRole with docs/vault-policy.hcl."""
    return enable_approle(root, "keyferry-broker", POLICY.read_text(), "keyferry-broker")


def new_transit(root: hvac.Client) -> TransitSigner:
    """The audit checkpoints' transit key."""
    enable(root, "transit", TRANSIT_MOUNT)
    root.secrets.transit.create_key(name=TRANSIT_KEY, key_type="ed25519", mount_point=TRANSIT_MOUNT)
    return TransitSigner(root, TRANSIT_KEY, TRANSIT_MOUNT)


def config(
    folder: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    clusters: dict[str, KubeCluster],
    store_url: str,
) -> dict[str, Any]:
    """The bed-style config, as docs/examples/broker.yaml has it, as plain YAML data."""
    role_id, secret_id = approle
    return {
        "data_dir": str(folder / "data"),
        "vault": {
            "addr": vault.addr,
            "approle": {"role_id": role_id, "secret_id": secret_id},
        },
        "store": {"url": store_url, "pool_size": 8},
        "audit": {
            "log": str(folder / "audit.jsonl"),
            "hmac_key": HMAC_KEY,
            "transit_mount": TRANSIT_MOUNT,
            "transit_key": TRANSIT_KEY,
        },
        "sealing": {"key": base64.b64encode(os.urandom(32)).decode()},
        "policies": [str(DOCS / "examples" / "policies.cedar")],
        "roles": str(DOCS / "examples" / "roles.yaml"),
        "clusters": [
            {
                "name": c.name,
                "kubeconfig": str(c.kubeconfig),
                "context": c.name,
                "issuer": c.issuer,
            }
            for c in clusters.values()
        ],
        "workload": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "limits": {"per_pod": 4, "per_cluster": 1000, "pod_issue_burst": 1000},
        "admin": admin_section(folder / "admin-ca"),
        # Tests and the demo register clusters as one operator; the two-operator default
        # (production) is tested in tests/security/test_cluster_approval.py.
        "cluster_registration": {"approval": "single"},
    }


@dataclass
class Broker:
    server: BrokerServer
    port: int
    settings: BrokerSettings

    @property
    def ca(self) -> Path:
        return self.server.tls.cert_path

    def store(self) -> Store:
        return Store.open(self.settings.store)

    def admin_channel(self, operator: str = SECURITY) -> AbstractAsyncContextManager[Any]:
        """A mutual-TLS channel to the admin listener as `operator` (see admin_helpers)."""
        return admin_channel(self.settings, self.server.admin_port, operator)

    def context_file(self, folder: Path, operator: str = SECURITY) -> Path:
        """A CLI context file for `operator` on this broker's admin listener."""
        ca = self.settings.admin.client_ca
        assert ca is not None
        path = folder / f"{operator}-context.yaml"
        save_context(
            path,
            CliContext(
                address=f"127.0.0.1:{self.server.admin_port}",
                ca=ca,
                cert=ca.parent / "operators" / f"{operator}.crt",
                key=ca.parent / "operators" / f"{operator}.key",
            ),
        )
        return path


async def start_broker(
    data: dict[str, Any], folder: Path, clock: Callable[[], datetime] = utcnow
) -> Broker:
    """A broker serving `data` (written to `folder`/broker.yaml), reading now from `clock`."""
    path = folder / "broker.yaml"
    path.write_text(yaml.safe_dump(data))
    settings = load_settings(path)
    server, port = await create_server(settings, clock=clock)
    await server.start()
    return Broker(server, port, settings)


async def orders_leases(client: VaultClient) -> set[str]:
    return {lease for lease in await list_keyferry_leases(client) if lease.startswith(MOUNT)}


async def issue(
    broker: Broker, token: Any, credential: str = "orders-db", role: str = ROLE
) -> broker_pb2.IssueResponse:
    async with broker_stub(broker.port, broker.ca) as stub:
        return await stub.Issue(
            broker_pb2.IssueRequest(credential_name=credential, role=role), metadata=bearer(token)
        )


async def refused(broker: Broker, token: Any, credential: str = "orders-db") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        await issue(broker, token, credential)
    return caught.value


def log_in(postgres: PostgresServer, values: Any) -> None:
    with postgres.connect(values["username"], values["password"]) as conn:
        assert conn.execute("select current_user").fetchone() == (values["username"],)
