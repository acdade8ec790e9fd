"""Dedicated PostgreSQL sessions outside the store's pool: the leader's lock and the event
relay's LISTEN and NOTIFY each need a connection of their own that lives as long as the
replica (a pooled connection is returned, recycled, and pre-pinged away)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from .config import StoreSettings

Session = psycopg.AsyncConnection[tuple[Any, ...]]


def postgres_conninfo(settings: StoreSettings) -> str | None:
    """The store's URL for psycopg when it is PostgreSQL; None for SQLite (one replica)."""
    url = make_url(settings.url.get_secret_value())
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def open_session(conninfo: str, name: str, timeout: float) -> Session:
    """An autocommit session with TCP keepalives, so a dead peer is noticed in seconds."""
    connect = psycopg.AsyncConnection.connect(
        conninfo,
        autocommit=True,
        connect_timeout=max(1, int(timeout)),
        application_name=name,
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=2,
    )
    return await asyncio.wait_for(connect, timeout)
