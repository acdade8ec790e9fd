"""The one place where database failures become broker errors.

Every SQLAlchemy or Alembic failure means the store did not do what was asked; the caller
gets StoreUnavailable (retry later) with the driver's error chained, never a driver
exception. The message names the operation and the error class, not the statement or its
parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

from broker.errors import StoreUnavailable

MAPPED: tuple[type[Exception], ...] = (SQLAlchemyError, CommandError)
MESSAGE_CAP = 200


@contextmanager
def store_errors(operation: str) -> Iterator[None]:
    """Raise StoreUnavailable, chained, for any database failure inside the block."""
    try:
        yield
    except MAPPED as exc:
        raise StoreUnavailable(f"lease store: {operation} failed: {describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    origin = getattr(exc, "orig", None) or exc
    first_line = str(origin).strip().splitlines()[0] if str(origin).strip() else ""
    return f"{type(origin).__name__}: {first_line[:MESSAGE_CAP]}".rstrip(": ")
