"""Which replica leads the periodic jobs: a PostgreSQL session-level advisory lock.

Why the lock and not a Kubernetes Lease: the replicas share exactly one thing that every
job already depends on, the PostgreSQL store. A lock held by a session dies with that
session, so the three ways a leader stops leading are one: it exits, it is killed
(kill -9 closes its socket; PostgreSQL ends the session and frees the lock at once), or
its connection to the store breaks, in which case it could do nothing useful anyway. A
Lease would need a Kubernetes API in reach of the broker (it may run outside any
cluster), RBAC to write Leases, and clock-based expiry that can briefly name two
holders under clock skew; an advisory lock has one holder by construction.

The lock is held on a dedicated connection, outside the store's pool, checked every
`scheduler.leadership` interval (`SELECT 1` under a timeout). A failed check drops the
connection and the lead at once: a replica that cannot reach PostgreSQL stops leading
before another can take the lock, because PostgreSQL frees it only when the session ends.
What remains is the moment between PostgreSQL ending a session (a restart, a network
cut it noticed first) and the old holder's next check; jobs are idempotent and read their
work from the lease table, so two passes in that moment do no harm.

SQLite means one replica: it always leads (`SoleLeader`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import psycopg
import structlog

from broker.store import StoreSettings
from broker.store.sessions import Session, open_session, postgres_conninfo

log = structlog.get_logger("keyferry.leadership")
LOCK_KEY = 0x6B66_6C65_6164_6572 & 0x7FFF_FFFF_FFFF_FFFF  # "kfleader", a signed bigint


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...

    async def check(self) -> None:
        """Keep the lead if held and still valid, else try to take it."""

    async def close(self) -> None: ...


class SoleLeader:
    """One replica (SQLite): always the leader."""

    is_leader = True

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


class AdvisoryLockLeader:
    """The lead is `pg_try_advisory_lock(LOCK_KEY)` held by this replica's own session."""

    def __init__(self, conninfo: str, timeout: float) -> None:
        self._conninfo = conninfo
        self._timeout = timeout
        self._conn: Session | None = None

    @property
    def is_leader(self) -> bool:
        return self._conn is not None

    async def check(self) -> None:
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.execute("SELECT 1"), self._timeout)
            except (psycopg.Error, TimeoutError, OSError) as error:
                log.warning("lost the lead: the lock's connection failed", error=str(error)[:200])
                await self._drop()
            return
        await self._try_take()

    async def close(self) -> None:
        await self._drop()

    async def _try_take(self) -> None:
        conn = None
        try:
            conn = await open_session(self._conninfo, "keyferry-leader", self._timeout)
            cursor = await asyncio.wait_for(
                conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)), self._timeout
            )
            row = await cursor.fetchone()
        except (psycopg.Error, TimeoutError, OSError) as error:
            log.debug("could not try for the lead", error=str(error)[:200])
            if conn is not None:
                await _close(conn)
            return
        if row is not None and row[0] is True:
            self._conn = conn
            log.info("took the lead")
        else:
            await _close(conn)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close(conn)


async def _close(conn: Session) -> None:
    """Close without waiting on a dead server (closing ends the session: the lock goes)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 2.0)


def leadership_for(settings: StoreSettings) -> Leadership:
    conninfo = postgres_conninfo(settings)
    if conninfo is None:
        return SoleLeader()
    return AdvisoryLockLeader(conninfo, settings.timeout)
