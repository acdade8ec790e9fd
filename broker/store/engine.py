"""One SQLAlchemy engine per store, tuned for each database keyferry supports.

SQLite: WAL journal so readers never block the writer, and every transaction that writes
starts with BEGIN IMMEDIATE. Python's sqlite3 (before 3.12) otherwise begins lazily at the
first write, and two transactions that both read and then write deadlock on the upgrade and
one fails at once instead of waiting; IMMEDIATE takes the write lock up front, so writers
queue for at most `timeout` seconds. Read-only sessions (Store's plain sessions; writes go
through `sessions.begin()`) carry READ_ONLY and begin DEFERRED instead: in WAL they read a
snapshot without taking the write lock, side by side with the writer.

PostgreSQL: psycopg 3, a bounded pool, pre-ping, and statement and lock timeouts so a
stuck database fails a call instead of holding it.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from broker.errors import InvalidRequest

from .config import StoreSettings

POSTGRES_DRIVER = "postgresql+psycopg"
READ_ONLY = "keyferry_read_only"  # execution option: the transaction only reads


def create_store_engine(settings: StoreSettings) -> Engine:
    url = _url(settings)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite(url, settings)
    if backend == "postgresql":
        return _postgresql(url, settings)
    raise InvalidRequest(
        "store.url", f"unsupported database {backend!r}; use sqlite:///<path> or postgresql://"
    )


def _url(settings: StoreSettings) -> URL:
    try:
        url = make_url(settings.url.get_secret_value())
    except ArgumentError as exc:
        raise InvalidRequest(
            "store.url", "not a database URL; use sqlite:///<path> or postgresql://..."
        ) from exc
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername=POSTGRES_DRIVER)
    return url


def _sqlite(url: URL, settings: StoreSettings) -> Engine:
    engine = create_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_timeout=settings.timeout,
        connect_args={"timeout": settings.timeout, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN off; see "begin"
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        reads_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN DEFERRED" if reads_only else "BEGIN IMMEDIATE")

    return engine


def _postgresql(url: URL, settings: StoreSettings) -> Engine:
    timeout_ms = int(settings.timeout * 1000)
    return create_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_timeout=settings.timeout,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": max(1, math.ceil(settings.timeout)),
            "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        },
    )
