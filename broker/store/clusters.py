"""The cluster registry's table: clusters registered at run time and their pinned JWKS."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.clock import Clock, utcnow

from .errors import ClusterExists, ClusterNotFound
from .failures import store_errors
from .integrity import RowSigner, RowTampered
from .records import ClusterRecord
from .schema import ClusterRow


class ClusterRepository:
    def __init__(
        self, sessions: sessionmaker[Session], clock: Clock = utcnow, rows: RowSigner | None = None
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._rows = rows

    def add(
        self,
        *,
        name: str,
        server: str,
        ca_pem: str,
        issuer: str,
        sealed_credential: bytes,
        jwks: dict[str, Any],
    ) -> ClusterRecord:
        """Register a new cluster; ClusterExists when the name is taken."""
        now = self._clock()
        row = ClusterRow(
            name=name,
            server=server,
            ca_pem=ca_pem,
            issuer=issuer,
            sealed_credential=sealed_credential,
            jwks=jwks,
            jwks_fetched_at=now,
            last_contact=now,
            registered_at=now,
        )
        row.mac = self._mac(row)
        with store_errors("registering a cluster"):
            try:
                with self._sessions.begin() as session:
                    session.add(row)
                    session.flush()
                    record = ClusterRecord.model_validate(row)
            except IntegrityError as exc:  # the name is the primary key
                raise ClusterExists(f"a cluster named {name!r} is already registered") from exc
            return record

    def get(self, name: str) -> ClusterRecord:
        with store_errors("reading a cluster"), self._sessions() as session:
            row = session.get(ClusterRow, name)
            if row is None:
                raise ClusterNotFound(name)
            return self._checked(row)

    def exists(self, name: str) -> bool:
        """Whether a row of that name is there, intact or not (deregistering a tampered
        cluster must work)."""
        with store_errors("reading a cluster"), self._sessions() as session:
            return session.get(ClusterRow, name) is not None

    def list(self) -> list[ClusterRecord]:
        """Every cluster; RowTampered for the first whose MAC does not match."""
        intact, refused = self.list_intact()
        if refused:
            raise refused[0]
        return intact

    def list_intact(self) -> tuple[builtins.list[ClusterRecord], builtins.list[RowTampered]]:
        """The clusters whose rows match their MACs, and the refusal of each other one."""
        intact: builtins.list[ClusterRecord] = []
        refused: builtins.list[RowTampered] = []
        with store_errors("listing clusters"), self._sessions() as session:
            for row in session.scalars(select(ClusterRow).order_by(ClusterRow.name)):
                try:
                    intact.append(self._checked(row))
                except RowTampered as error:
                    refused.append(error)
        return intact, refused

    def record_jwks(self, name: str, jwks: dict[str, Any]) -> None:
        """Pin a freshly fetched JWKS; the fetch was also a contact. The row must be intact
        first (RowTampered): a new MAC must never bless an edited server or CA."""
        with store_errors("saving a cluster's keys"), self._sessions.begin() as session:
            row = session.get(ClusterRow, name, with_for_update=True)
            if row is not None:
                self._checked(row)
                now = self._clock()
                row.jwks, row.jwks_fetched_at, row.last_contact = jwks, now, now
                row.mac = self._mac(row)

    def record_contact(self, name: str, when: datetime) -> None:
        with store_errors("saving a cluster's last contact"), self._sessions.begin() as session:
            row = session.get(ClusterRow, name, with_for_update=True)
            if row is not None:
                row.last_contact = when

    def delete(self, name: str) -> None:
        with store_errors("deregistering a cluster"), self._sessions.begin() as session:
            row = session.get(ClusterRow, name, with_for_update=True)
            if row is None:
                raise ClusterNotFound(name)
            session.delete(row)

    def _checked(self, row: ClusterRow) -> ClusterRecord:
        if self._rows is not None:
            self._rows.check_cluster(row)
        return ClusterRecord.model_validate(row)

    def _mac(self, row: ClusterRow) -> str | None:
        if self._rows is None:
            return None
        return self._rows.cluster(
            name=row.name,
            server=row.server,
            ca_pem=row.ca_pem,
            issuer=row.issuer,
            sealed_credential=row.sealed_credential,
            jwks=row.jwks,
        )
