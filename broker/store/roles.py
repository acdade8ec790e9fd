"""The role catalog's table: keyferry role name → backend spec, as applied by ops."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.clock import Clock, utcnow

from .errors import RoleNotFound
from .failures import store_errors
from .integrity import RowSigner
from .records import RoleRecord
from .schema import RoleRow

PUT_ATTEMPTS = 3


class RoleRepository:
    def __init__(
        self, sessions: sessionmaker[Session], clock: Clock = utcnow, rows: RowSigner | None = None
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._rows = rows

    def put(self, name: str, spec: dict[str, Any]) -> RoleRecord:
        """Create or replace a role (Roles.Apply is declarative)."""
        for _ in range(PUT_ATTEMPTS):
            with store_errors("saving a role"):
                try:
                    with self._sessions.begin() as session:
                        row = session.get(RoleRow, name, with_for_update=True)
                        mac = None if self._rows is None else self._rows.role(name, spec)
                        if row is None:
                            row = RoleRow(name=name, spec=spec, updated_at=self._clock(), mac=mac)
                            session.add(row)
                        else:
                            row.spec, row.mac = spec, mac
                            row.updated_at = self._clock()
                        session.flush()
                        record = RoleRecord.model_validate(row)
                except IntegrityError:  # created concurrently: the next attempt updates it
                    continue
                else:
                    return record
        return self.get(name)

    def get(self, name: str) -> RoleRecord:
        with store_errors("reading a role"), self._sessions() as session:
            row = session.get(RoleRow, name)
            if row is None:
                raise RoleNotFound(name)
            return self._checked(row)

    def list(self) -> list[RoleRecord]:
        """Every role; RowTampered for the first whose MAC does not match."""
        with store_errors("listing roles"), self._sessions() as session:
            rows = session.scalars(select(RoleRow).order_by(RoleRow.name))
            return [self._checked(row) for row in rows]

    def _checked(self, row: RoleRow) -> RoleRecord:
        if self._rows is not None:
            self._rows.check_role(row.name, row.spec, row.mac)
        return RoleRecord.model_validate(row)

    def delete(self, name: str) -> None:
        with store_errors("deleting a role"), self._sessions.begin() as session:
            row = session.get(RoleRow, name, with_for_update=True)
            if row is None:
                raise RoleNotFound(name)
            session.delete(row)
