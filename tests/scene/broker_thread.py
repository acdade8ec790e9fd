"""The agents' scene (e2e, reliability, the demo, the benchmarks): Vault engines for every
role of docs/examples/roles.yaml that the tests use, a broker running on its own event loop
in a thread (so tests may block on processes while it serves), and a keyferry webhook per
cluster pointing agents at that broker."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import yaml

from broker.backends.transit import TransitSigner
from injector.webhook.certs import server_context
from injector.webhook.config import AgentConfig, BrokerEndpoint, WebhookConfig
from injector.webhook.registration import registration
from injector.webhook.server import MUTATE_PATH, Admission, WebhookServer
from tests.bed.kube import KubeCluster
from tests.bed.moto import MotoServer
from tests.bed.pki import new_ca
from tests.bed.ports import LOOPBACK
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.broker import (
    MOUNT,
    POLICY,
    TRANSIT_KEY,
    TRANSIT_MOUNT,
    Broker,
    config,
    start_broker,
)
from tests.scene.engines import (
    add_assumed_role,
    enable,
    enable_approle,
    mount_aws,
    mount_pki,
    mount_postgres,
)
from tests.scene.kube_helpers import admission
from tests.scene.stores import sqlite_url

KV_MOUNT, KV_PATH = "keyferry/app-config", "orders/config"  # role app-config
AWS_MOUNT, AWS_ROLE = "keyferry/aws", "reader"  # role s3-reader
KV_VALUES = {"greeting": 'it\'s "quoted"\nand $HOME `x` \\ é', "color": "blue"}
PKI_MOUNT, PKI_ROLE = "keyferry/pki-internal", "internal"  # role internal-tls
ROLES = Path(__file__).parents[2] / "docs" / "examples" / "roles.yaml"


def mount_kv(root: hvac.Client) -> None:
    if f"{KV_MOUNT}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path=KV_MOUNT, options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret(KV_PATH, secret=KV_VALUES, mount_point=KV_MOUNT)


def mount_s3_reader(root: hvac.Client, moto: MotoServer) -> None:
    enable(root, "aws", AWS_MOUNT)
    mount_aws(root, moto, AWS_MOUNT)
    add_assumed_role(root, moto, AWS_MOUNT, AWS_ROLE, "keyferry-e2e-reader")


def mount_internal_tls(root: hvac.Client) -> str:
    """The PKI mount of role internal-tls (`{pod}.{namespace}.svc`, 24 h); its CA's PEM."""
    ca = mount_pki(root, PKI_MOUNT, PKI_ROLE, "svc")
    root.write_data(
        f"{PKI_MOUNT}/roles/{PKI_ROLE}",
        data={"allowed_domains": "svc", "allow_subdomains": True, "max_ttl": "48h"},
    )
    return ca


def role_catalog(folder: Path, postgres: PostgresServer, host: str = LOOPBACK) -> Path:
    """docs/examples/roles.yaml with the connection of orders-db-ro filled in for the bed's
    PostgreSQL at `host`, so the DSN file alone (host, port, dbname, user, password) logs in."""
    roles = yaml.safe_load(ROLES.read_text())
    for role in roles:
        if role["name"] == "orders-db-ro":
            role["connection"] = {
                "host": host,
                "port": postgres.port,
                "dbname": "postgres",
                "sslmode": "disable",
            }
    path = folder / "roles.yaml"
    path.write_text(yaml.safe_dump(roles))
    return path


def scene_broker(
    folder: Path,
    vault: VaultServer,
    postgres: PostgresServer,
    clusters: dict[str, KubeCluster],
    *,
    policies: tuple[Path, ...] = (),
    limits: dict[str, Any] | None = None,
    renewal: dict[str, Any] | None = None,
    ttl: str = "5m",
    workload_host: str = LOOPBACK,
    db_host: str = LOOPBACK,
) -> BrokerThread:
    """A broker in a thread on the bed: its AppRole, role orders-db-ro's PostgreSQL mount
    (with the connection in the catalog; Vault's default lease TTL `ttl`), the audit
    transit key, docs/examples' policies plus `policies`, and `limits` and `renewal` over
    the test defaults. Other engines are the caller's. Its workload listener is on
    `workload_host`, and the DSNs it issues name PostgreSQL at `db_host` (both the node's
    address for real pods)."""
    root: hvac.Client = vault.client()
    approle = enable_approle(root, "keyferry-broker", POLICY.read_text(), "keyferry-broker")
    mount_postgres(root, postgres, MOUNT, "ro", default_ttl=ttl)
    enable(root, "transit", TRANSIT_MOUNT)
    root.secrets.transit.create_key(name=TRANSIT_KEY, key_type="ed25519", mount_point=TRANSIT_MOUNT)
    TransitSigner(root, TRANSIT_KEY, TRANSIT_MOUNT)
    data = config(folder, vault, approle, clusters, sqlite_url(folder))
    data["policies"] += [str(path) for path in policies]
    data["roles"] = str(role_catalog(folder, postgres, db_host))
    data["limits"] |= limits or {}
    data["workload"]["host"] = workload_host
    if renewal is not None:
        data["renewal"] = renewal
    return BrokerThread(data, folder)


@contextmanager
def serving(
    folder: Path,
    vault: VaultServer,
    postgres: PostgresServer,
    clusters: dict[str, KubeCluster],
    **options: Any,
) -> Iterator[BrokerThread]:
    """`scene_broker(...)` (same arguments) while the block runs; then the broker stops and
    role orders-db-ro's mount is disabled, which revokes what is left of its leases."""
    running = scene_broker(folder, vault, postgres, clusters, **options)
    try:
        yield running
    finally:
        running.stop()
        vault.client().sys.disable_secrets_engine(MOUNT)


class BrokerThread:
    """A broker on its own event loop, in a daemon thread."""

    def __init__(self, data: dict[str, Any], folder: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.broker: Broker = self.call(start_broker(data, folder))

    def call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=60)

    def streams(self) -> int:
        """How many Watch streams the broker serves now."""
        hub = self.broker.server.runtime.flows.hub

        async def count() -> int:
            return hub.stream_count()

        return int(self.call(count()))

    def stop(self) -> None:
        self.call(self.broker.server.stop(1))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@dataclass
class Webhook:
    cluster: KubeCluster
    config: WebhookConfig
    server: WebhookServer
    registration: str
    seen: list[Admission]
    """Every admission this webhook answered (appended from the server's threads)."""


@contextmanager
def webhooks(
    clusters: list[KubeCluster],
    folder: Path,
    broker: Broker,
    run: str,
    opt_in: tuple[str, str],
    agent_image: str = "keyferry/agent:e2e",
) -> Iterator[dict[str, Webhook]]:
    """A webhook per cluster (a local server the API server calls by URL), each pointing
    agents at the broker's workload listener as the broker listens (its host, its port)."""
    ca = new_ca(folder, "ca", "keyferry e2e webhook CA")
    serving = ca.issue(folder, "serving", "keyferry-webhook", ip_addresses=(LOOPBACK,))
    context = server_context(serving.cert, serving.key)
    bundle = base64.b64encode(ca.pem()).decode()
    started: dict[str, Webhook] = {}
    try:
        for cluster in clusters:
            config = WebhookConfig(
                cluster_name=cluster.name,
                namespace=f"keyferry-{run}",
                agent=AgentConfig(image=agent_image),
                broker=BrokerEndpoint(
                    address=f"{broker.settings.workload.host}:{broker.port}",
                    ca_pem=broker.ca.read_text(),
                ),
            )
            seen: list[Admission] = []
            server = WebhookServer(config, context, observe=seen.append)
            url = f"https://{LOOPBACK}:{server.start()}{MUTATE_PATH}"
            name = f"keyferry-e2e-{run}"
            document = registration(name, url, bundle, config, opt_in_label=opt_in)
            with cluster.api_client() as api:
                admission(api).create_mutating_webhook_configuration(document)
            started[cluster.name] = Webhook(cluster, config, server, name, seen)
        yield started
    finally:
        for hook in started.values():
            with hook.cluster.api_client() as api:
                admission(api).delete_mutating_webhook_configuration(hook.registration)
            hook.server.stop()
