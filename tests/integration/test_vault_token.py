"""The broker's own Vault token outlives an idle broker. Vault revokes every lease a token
created when that token expires, so each replica renews its token on a timer
(`vault.token_check_interval`), not only when a call happens to need Vault.

On the bed: an AppRole whose tokens live TOKEN_TTL seconds, a broker that issues one lease
and then makes no call of its own for three of the token's lifetimes (no Watch, so no lease
renewals; reconcile runs only at start). The lease is still in Vault, its login still
works, and the token was renewed rather than replaced.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import hvac
import pytest

from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.bed.vault import VaultServer
from tests.scene.broker import POLICY, config, issue, log_in, start_broker
from tests.scene.engines import enable_approle
from tests.scene.stores import sqlite_url
from tests.scene.workloads import mint

pytestmark = pytest.mark.bed
TOKEN_TTL = 4  # seconds


async def test_an_idle_broker_keeps_its_token_and_so_its_leases(
    tmp_path: Path,
    vault: VaultServer,
    root: hvac.Client,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
    orders_db: None,
    transit: object,
) -> None:
    approle = enable_approle(
        root, "keyferry-broker", POLICY.read_text(), "keyferry-idle", token_ttl=f"{TOKEN_TTL}s"
    )
    data = config(tmp_path, vault, approle, kube_clusters, sqlite_url(tmp_path))
    data["vault"]["token_check_interval"] = "1s"
    broker = await start_broker(data, tmp_path)
    try:
        issued = await issue(broker, mint(kube_clusters["a"]))
        store = broker.store()
        vault_lease_id = store.leases.get(issued.lease.id).vault_lease_id
        store.close()
        keeper = broker.server.runtime.vault.keeper
        logins = keeper.logins

        await asyncio.sleep(3 * TOKEN_TTL)  # the token's life three times over, idle

        found = root.sys.read_lease(vault_lease_id)["data"]  # InvalidRequest once revoked
        assert found["id"] == vault_lease_id
        log_in(postgres, issued.credential.values)
        assert keeper.renewals >= 2
        assert keeper.logins == logins  # renewed, never lost and replaced
    finally:
        await broker.server.stop(1)
