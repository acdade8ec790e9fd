"""Lease stores for the tests: a SQLite file or a fresh database on the bed's PostgreSQL."""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.bed.postgres import PostgresServer

START = datetime(2030, 1, 1, tzinfo=UTC)


class TickingClock:
    """Controlled time: each reading is one second after the previous one."""

    def __init__(self, start: datetime = START) -> None:
        self._ticks = itertools.count()
        self._start = start
        self._lock = threading.Lock()
        self.last = start

    def __call__(self) -> datetime:
        with self._lock:
            self.last = self._start + timedelta(seconds=next(self._ticks))
            return self.last


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'store.db'}"


@contextmanager
def postgres_database(postgres: PostgresServer) -> Iterator[str]:
    """A database of its own for one test, dropped (with its connections) afterwards."""
    name = f"kf_{secrets.token_hex(6)}"
    with postgres.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres.dsn(dbname=name)
    finally:
        with postgres.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
