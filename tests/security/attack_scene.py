"""The attack scene: the scene's broker (tests/scene) on the bed (Vault with AppRole,
PostgreSQL behind a keyferry database mount, clusters a, b and c), plus what every attack
test checks after the refusal — the audit trail's deny record and no lease in the store or
in Vault — and an `Exposure` that gathers every secret the broker handed out and every text
it produced (logs, /metrics, error messages, audit records), for
tests/security/test_zz_exposure.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from broker.backends import VaultClient
from broker.backends.transit import TransitSigner
from broker.store import LeaseState, Selector
from tests.bed.kube import KubeCluster
from tests.bed.vault import VaultServer
from tests.scene.broker import Broker, config, orders_leases, start_broker
from tests.scene.kube_helpers import BoundToken
from tests.scene.stores import sqlite_url
from tests.scene.workloads import error_info

DOCS_ROLES = Path(__file__).parents[2] / "docs" / "examples" / "roles.yaml"


# Pods of namespace "billing" may issue database roles only as service account "biller":
# a pod of that namespace running as any other account is the "wrong account" attack.
BILLING_POLICY = """
@id("billing-biller-issue")
permit (principal is Workload, action == Action::"issue", resource is Role)
when {
  principal.namespace == "billing" && principal.service_account == "biller" &&
  resource.backend == "database"
};
"""


@dataclass
class Exposure:
    """What the security tests handed out (secrets) and what the broker said (texts)."""

    log_file: Path
    secrets: set[str] = field(default_factory=set)
    texts: list[tuple[str, str]] = field(default_factory=list)

    def handed_out(self, *values: str) -> None:
        self.secrets.update(v for v in values if v)

    def said(self, origin: str, text: str) -> None:
        self.texts.append((origin, text))

    def refusal(self, error: grpc.RpcError) -> None:
        self.said("error message", f"{error.code()} {error.details()}")


@pytest.fixture(scope="package")
def exposure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposure]:
    """Every log line of tests/security's brokers and webhooks (structlog as JSON at debug,
    and the standard logging of grpc, hvac and the kubernetes client) goes to one file as
    well; the logging set-up is restored when tests/security ends.

    structlog renders its events and hands them to the standard logging, so one handler,
    with one lock, writes the file. (It used to have its own PrintLogger on the same file
    object: two locks guarding one stream, one of them not reentrant, written from the
    broker's worker threads. A log call made while one lock was held (by a finalizer the
    garbage collector ran inside a write) could wait for the other lock forever: the CI run
    at 17ddd38 hung at the handler's lock.)"""
    log_file = tmp_path_factory.mktemp("exposure") / "broker.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        yield Exposure(log_file)
    finally:
        structlog.reset_defaults()
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
        handler.close()


@pytest.fixture
async def broker(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    transit: TransitSigner,
    exposure: Exposure,
) -> AsyncIterator[Broker]:
    async with scene_broker(tmp_path, vault, approle, kube_clusters, exposure) as running:
        yield running


@asynccontextmanager
async def scene_broker(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    exposure: Exposure,
    **sections: Any,
) -> AsyncIterator[Broker]:
    """The scene's broker, its config's top-level `sections` replaced (`tokens={...}`);
    its /metrics and audit log go to the exposure scan when it stops."""
    data = config(tmp_path, vault, approle, kube_clusters, sqlite_url(tmp_path))
    billing = tmp_path / "billing.cedar"
    billing.write_text(BILLING_POLICY)
    data["policies"].append(str(billing))
    data.update(sections)
    exposure.handed_out(approle[1], data["sealing"]["key"], data["audit"]["hmac_key"])
    running = await start_broker(data, tmp_path)
    try:
        yield running
    finally:
        exposure.said("metrics", await metrics_text(running))
        await running.server.stop(1)
        exposure.said("audit log", json.dumps(audit_records(running)))


async def metrics_text(broker: Broker) -> str:
    assert broker.server.metrics_port is not None
    url = f"http://127.0.0.1:{broker.server.metrics_port}/metrics"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())


def audit_records(broker: Broker) -> list[dict[str, Any]]:
    """The audit log's records so far (the log is created on its first record)."""
    path = broker.settings.audit.log
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def denials(broker: Broker, action: str) -> list[dict[str, Any]]:
    return [r for r in audit_records(broker) if r["action"] == action and r["decision"] == "deny"]


def store_rows(broker: Broker, token: BoundToken) -> list[Any]:
    """Every lease row (any state) of the token's pod."""
    store = broker.store()
    try:
        return store.leases.list_by_selector(
            Selector(
                cluster=token.cluster,
                namespace=token.namespace,
                pod_name=token.pod,
                states=frozenset(LeaseState),
            )
        )
    finally:
        store.close()


def all_store_rows(broker: Broker) -> list[Any]:
    store = broker.store()
    try:
        return store.leases.list_by_selector(Selector(states=frozenset(LeaseState)))
    finally:
        store.close()


async def assert_no_lease(
    broker: Broker, token: BoundToken | None, vault_leases: VaultClient, before: set[str]
) -> None:
    """Nothing was issued: no row for the pod in the store, no new lease in Vault under
    keyferry's prefix."""
    if token is not None:
        assert store_rows(broker, token) == []
    assert await orders_leases(vault_leases) <= before


def reason(error: grpc.RpcError) -> str:
    return str(error_info(error).reason)
