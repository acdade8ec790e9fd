"""Scale of the store: selection queries over a lease table of 10,000 to 100,000 rows, on
SQLite and on PostgreSQL, through the store's own query functions (what ListLeases, the
Watch snapshot and the scheduler's sweeps call).

Rows are written in bulk straight into the table (a fleet's worth of history: most leases
revoked, a tenth active, some revoking or pending), then each query runs `samples` times.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import insert

from broker.store import LeaseState, Selector, Store
from broker.store.config import StoreSettings
from broker.store.schema import LeaseRow
from tests.bed.postgres import PostgresServer
from tests.scene.stores import postgres_database, sqlite_url

from .stats import summarise

CLUSTERS = ("a", "b", "c")
NAMESPACES = 20
ACCOUNTS = 5
ROLES = ("orders-db-ro", "orders-db-rw", "app-config", "aws-s3-read", "pki-web")
CHUNK = 5_000
PAGE = 100  # what one ListLeases page or one sweep batch selects
STATES = (
    [LeaseState.REVOKED] * 80
    + [LeaseState.ACTIVE] * 10
    + [LeaseState.REVOKING] * 5
    + [LeaseState.FAILED] * 4
    + [LeaseState.PENDING] * 1
)


def _rows(count: int, start: int, now: datetime, rng: random.Random) -> Iterator[dict[str, Any]]:
    for i in range(start, start + count):
        state = rng.choice(STATES)
        cluster = CLUSTERS[i % len(CLUSTERS)]
        namespace = f"ns-{rng.randrange(NAMESPACES)}"
        created = now - timedelta(seconds=rng.randrange(30 * 24 * 3600))
        yield {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "vault_lease_id": None if state == LeaseState.PENDING else f"keyferry/x/{i}",
            "state": state.value,
            "cluster": cluster,
            "namespace": namespace,
            "service_account": f"sa-{rng.randrange(ACCOUNTS)}",
            "pod_name": f"pod-{i}",
            "pod_uid": str(uuid.UUID(int=i + 1)),
            "credential": "db",
            "role": rng.choice(ROLES),
            "generation": 1,
            "expires_at": now + timedelta(seconds=rng.randrange(-3600, 7200)),
            "revoke_after": now + timedelta(seconds=rng.randrange(-600, 600))
            if state == LeaseState.REVOKING
            else None,
            "created_at": created,
            "updated_at": created,
            "last_error": None,
            "revoke_attempts": 0,
            "vault_lease": None,
            "sealed_credential": None,
        }


def fill(store: Store, count: int, start: int, rng: random.Random) -> float:
    """Add `count` rows; the seconds it took."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    rows = list(_rows(count, start, now, rng))
    with store.engine.begin() as connection:
        for offset in range(0, len(rows), CHUNK):
            connection.execute(insert(LeaseRow), rows[offset : offset + CHUNK])
    store.refresh_statistics()  # as the broker's store-statistics job does (SQLite)
    return time.perf_counter() - started


def queries(store: Store, rng: random.Random, rows: int) -> dict[str, Callable[[], object]]:
    """The selections measured, each a call of the store's own query functions."""
    leases = store.leases
    now = datetime.now(UTC)

    def ns() -> str:
        return f"ns-{rng.randrange(NAMESPACES)}"

    return {
        "ListLeases by pod": lambda: leases.list_by_selector(
            Selector(cluster=CLUSTERS[0], namespace=ns(), pod_name=f"pod-{rng.randrange(rows)}")
        ),
        "ListLeases by namespace + service account (page of 100)": lambda: leases.list_by_selector(
            Selector(cluster=rng.choice(CLUSTERS), namespace=ns(), service_account="sa-1"),
            limit=PAGE,
        ),
        "ListLeases by role (page of 100)": lambda: leases.list_by_selector(
            Selector(role=rng.choice(ROLES)), limit=PAGE
        ),
        "ListLeases by cluster (page of 100)": lambda: leases.list_by_selector(
            Selector(cluster=rng.choice(CLUSTERS)), limit=PAGE
        ),
        "sweep: leases to renew (batch of 100)": lambda: leases.leases_to_renew(
            now + timedelta(minutes=10), PAGE
        ),
        "sweep: leases to revoke (batch of 100)": lambda: leases.leases_to_revoke(now, PAGE),
        "sweep: pending before (batch of 100)": lambda: leases.pending_before(now, PAGE),
    }


def measure(store: Store, sizes: tuple[int, ...], samples: int) -> list[dict[str, Any]]:
    """Grow the table through `sizes`, timing every query at each size."""
    rng = random.Random(9)
    have = 0
    result = []
    for size in sizes:
        fill_seconds = fill(store, size - have, have, rng)
        have = size
        for name, query in queries(store, rng, size).items():
            query()  # warm: statement cache, pages in memory
            timings = []
            for _ in range(samples):
                started = time.perf_counter()
                query()
                timings.append(time.perf_counter() - started)
            result.append(
                {
                    "rows": size,
                    "query": name,
                    "fill_seconds": round(fill_seconds, 1),
                    **summarise(timings).as_dict(),
                }
            )
    return result


@contextmanager
def sqlite_store(folder: Path) -> Iterator[Store]:
    folder.mkdir(parents=True, exist_ok=True)
    store = Store.open(StoreSettings(url=SecretStr(sqlite_url(folder))))
    try:
        yield store
    finally:
        store.close()


@contextmanager
def postgres_store(postgres: PostgresServer) -> Iterator[Store]:
    with postgres_database(postgres) as url:
        store = Store.open(StoreSettings(url=SecretStr(url)))
        try:
            yield store
        finally:
            store.close()


def store_scale(
    folder: Path, postgres: PostgresServer, sizes: tuple[int, ...], samples: int
) -> dict[str, list[dict[str, Any]]]:
    with sqlite_store(folder / "scale-sqlite") as store:
        sqlite = measure(store, sizes, samples)
    with postgres_store(postgres) as store:
        postgresql = measure(store, sizes, samples)
    return {"sqlite": sqlite, "postgresql": postgresql}
