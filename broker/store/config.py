"""The store's settings group; the broker's settings nest it as `store`."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from broker.models import Duration

DEFAULT_URL = "sqlite:///keyferry.db"
DEFAULT_POOL_SIZE = 8
DEFAULT_TIMEOUT = 10.0


class StoreSettings(BaseModel):
    """Where the lease store lives and how long a call may wait for it.

    `url` is `sqlite:///<path>` (one replica) or `postgresql://user:password@host/db`
    (several replicas; the psycopg 3 driver is chosen for a bare `postgresql://`). It is a
    secret because a PostgreSQL URL carries a password.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: SecretStr = SecretStr(DEFAULT_URL)
    pool_size: int = Field(default=DEFAULT_POOL_SIZE, ge=1, le=200)
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=300)
    statistics_interval: Duration = Field(
        default=timedelta(hours=1),
        description="how often the SQLite store's query-planner statistics are refreshed "
        "(PostgreSQL's autovacuum does its own)",
    )
