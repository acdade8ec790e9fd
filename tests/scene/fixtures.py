"""The scene's pytest fixtures, registered for every test by tests/conftest.py
(`pytest_plugins`), so a test asks for them by name and imports nothing from another test.

Per module: `root` (Vault's root client), `approle` (the broker's AppRole), `orders_db` (the
database mount of role orders-db-ro on the bed's PostgreSQL) and `transit` (the audit
checkpoints' key). Per test: `leases` (Vault as an outside observer), `clock` (the broker's
now; a module overrides it with a ShiftedClock or ManualClock), `broker_config` (the
bed-style config as YAML data; a module overrides it to change what its broker differs in,
taking the default as its argument) and `broker`, the in-process broker serving
`broker_config` with `clock`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import hvac
import pytest
from pydantic import SecretStr

from broker.backends import VaultClient, VaultSettings
from broker.backends.transit import TransitSigner
from broker.clock import utcnow
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer

from .broker import MOUNT, Broker, config, new_approle, new_transit, start_broker
from .engines import mount_postgres
from .stores import sqlite_url


@pytest.fixture(scope="module")
def root(vault: VaultServer) -> hvac.Client:
    return vault.client()


@pytest.fixture(scope="module")
def approle(root: hvac.Client) -> tuple[str, str]:
    return new_approle(root)


@pytest.fixture(scope="module")
def orders_db(root: hvac.Client, postgres: PostgresServer) -> Iterator[None]:
    mount_postgres(root, postgres, MOUNT, "ro")
    yield
    root.sys.disable_secrets_engine(MOUNT)  # revokes what is left, closes Vault's connections


@pytest.fixture(scope="module")
def transit(root: hvac.Client) -> TransitSigner:
    return new_transit(root)


@pytest.fixture
def leases(vault: VaultServer) -> Iterator[VaultClient]:
    """Vault as an outside observer (root token): which keyferry leases exist."""
    client = VaultClient(VaultSettings(addr=vault.addr, token=SecretStr(vault.root_token)))
    yield client
    client.close()


@pytest.fixture
def clock() -> Callable[[], datetime]:
    return utcnow


@pytest.fixture
def broker_config(
    tmp_path: Path,
    vault: VaultServer,
    approle: tuple[str, str],
    kube_clusters: dict[str, KubeCluster],
    orders_db: None,
    transit: TransitSigner,
) -> dict[str, Any]:
    """The config of `broker`: clusters a, b and c, role orders-db-ro's mount, the audit
    transit key, a SQLite store in the test's folder."""
    return config(tmp_path, vault, approle, kube_clusters, sqlite_url(tmp_path))


@pytest.fixture
async def broker(
    tmp_path: Path, broker_config: dict[str, Any], clock: Callable[[], datetime]
) -> AsyncIterator[Broker]:
    running = await start_broker(broker_config, tmp_path, clock)
    yield running
    await running.server.stop(1)
