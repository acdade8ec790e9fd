"""The cluster registry's table: clusters registered at run time and their pinned JWKS."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.clock import Clock, utcnow

from .errors import ClusterExists, ClusterNotFound
from .failures import store_errors
from .records import ClusterRecord
from .schema import ClusterRow


class ClusterRepository:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock

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
            return ClusterRecord.model_validate(row)

    def list(self) -> list[ClusterRecord]:
        with store_errors("listing clusters"), self._sessions() as session:
            rows = session.scalars(select(ClusterRow).order_by(ClusterRow.name))
            return [ClusterRecord.model_validate(row) for row in rows]

    def record_jwks(self, name: str, jwks: dict[str, Any]) -> None:
        """Pin a freshly fetched JWKS; the fetch was also a contact."""
        with store_errors("saving a cluster's keys"), self._sessions.begin() as session:
            row = session.get(ClusterRow, name, with_for_update=True)
            if row is not None:
                now = self._clock()
                row.jwks, row.jwks_fetched_at, row.last_contact = jwks, now, now

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
