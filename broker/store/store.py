"""The store as the broker holds it: one engine, migrated at open, and its repositories.

Every repository reads through a plain session (`sessions()`), or through a bare
connection (`sessions.reading()`) where a hot read needs no ORM, and writes through
`sessions.begin()`. On SQLite the two differ (StoreSessions): reads run side by side on
WAL snapshots, and writers of this process queue on one lock, woken the moment it is
free, rather than in SQLite's busy handler, which sleeps 1, 2, 5 ... 100 ms between tries
(under concurrent Issue calls, most of their time; issue 9's profile).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session, sessionmaker

from broker.clock import Clock, utcnow

from .audit_chain import AuditChainRepository
from .checkpoints import CheckpointRepository
from .cluster_requests import ClusterRequestRepository
from .clusters import ClusterRepository
from .config import DEFAULT_TIMEOUT, StoreSettings
from .engine import READ_ONLY, create_store_engine
from .failures import store_errors
from .grants import GrantRepository
from .integrity import RowSigner, adopt_unsigned_rows
from .leases import LeaseRepository
from .migrate import upgrade
from .roles import RoleRepository


class Store:
    def __init__(
        self,
        engine: Engine,
        clock: Clock = utcnow,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        rows: RowSigner | None = None,
    ) -> None:
        self.engine = engine
        sessions = StoreSessions(engine, timeout)
        self._sessions = sessions
        self.adopted_rows = 0  # rows given their first MAC by this open (integrity.py)
        self.leases = LeaseRepository(sessions, clock)
        self.roles = RoleRepository(sessions, clock, rows)
        self.checkpoints = CheckpointRepository(sessions, clock)
        self.audit_chain = AuditChainRepository(sessions)
        self.clusters = ClusterRepository(sessions, clock, rows)
        self.cluster_requests = ClusterRequestRepository(sessions, rows)
        self.grants = GrantRepository(sessions)

    @classmethod
    def open(
        cls, settings: StoreSettings, clock: Clock = utcnow, *, rows: RowSigner | None = None
    ) -> Store:
        """Connect and bring the schema to the newest revision (StoreUnavailable if not).
        With `rows` (the broker's), role and cluster rows are MAC'd and checked
        (integrity.py); without, they are neither."""
        engine = create_store_engine(settings)
        adopted: list[int] = []

        def adopt(connection: Connection, before: str | None) -> None:
            if rows is not None:
                adopted.append(adopt_unsigned_rows(rows, connection, before))

        try:
            upgrade(engine, adopt)
        except BaseException:
            engine.dispose()
            raise
        store = cls(engine, clock, timeout=settings.timeout, rows=rows)
        store.adopted_rows = sum(adopted)
        return store

    def refresh_statistics(self) -> bool:
        """Refresh SQLite's query-planner statistics (a full ANALYZE: about 0.3 s at 100,000
        leases, writers waiting meanwhile); False on PostgreSQL, whose autovacuum does its
        own. Without them SQLite prefers an index that yields a selection's order over a
        more selective one (a pod's leases read through its whole cluster: 93 ms instead of
        1 ms at 100,000 leases); sampled statistics (analysis_limit) mislead it the same way
        for a namespace and service account."""
        if self.engine.dialect.name != "sqlite":
            return False
        with (
            store_errors("refreshing the planner's statistics"),
            self._sessions.begin() as session,
        ):
            session.execute(text("ANALYZE"))
        return True

    def close(self) -> None:
        self.engine.dispose()


class StoreSessions(sessionmaker[Session]):
    """A sessionmaker whose plain sessions only read; `begin()` opens a writing one."""

    def __init__(self, engine: Engine, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(engine, expire_on_commit=False)
        self._engine = engine
        self._timeout = timeout
        self._sqlite = engine.dialect.name == "sqlite"
        self._reads = engine.execution_options(**{READ_ONLY: True}) if self._sqlite else engine
        self._writer = threading.RLock()

    def __call__(self, **local_kw: Any) -> Session:
        local_kw.setdefault("bind", self._reads)
        return super().__call__(**local_kw)

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for Core reads, in one read-only transaction (a WAL snapshot on
        SQLite): no Session, no ORM compilation, no identity map."""
        with self._reads.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A connection for Core writes, in one transaction that may write (the same write
        turn and BEGIN IMMEDIATE on SQLite as `begin()`)."""
        with self._write_turn(), self._engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def begin(self) -> Iterator[Session]:
        with self._write_turn(), super().__call__() as session, session.begin():
            yield session

    @contextmanager
    def _write_turn(self) -> Iterator[None]:
        if not self._sqlite:
            yield
            return
        # Not had within the store's timeout: go on, and SQLite's own busy timeout decides.
        mine = self._writer.acquire(timeout=self._timeout)
        try:
            yield
        finally:
            if mine:
                self._writer.release()
