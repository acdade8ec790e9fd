"""Registry changes waiting for a second operator (cluster_requests): one row per access
grant that approves a registration or a deregistration. Written with the grant, read when
it is approved, MAC'd and checked like a cluster row (integrity.py)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from .errors import GrantNotFound
from .failures import store_errors
from .integrity import RowSigner
from .records import ClusterRequestRecord
from .schema import ClusterRequestRow


class ClusterRequestRepository:
    def __init__(self, sessions: sessionmaker[Session], rows: RowSigner | None = None) -> None:
        self._sessions = sessions
        self._rows = rows

    def add(self, request: ClusterRequestRecord) -> ClusterRequestRecord:
        row = ClusterRequestRow(**request.model_dump())
        if self._rows is not None:
            row.mac = self._rows.cluster_request(row)
        with store_errors("recording a cluster request"), self._sessions.begin() as session:
            session.add(row)
            session.flush()
            return ClusterRequestRecord.model_validate(row)

    def get(self, grant_id: str) -> ClusterRequestRecord:
        """The request of that grant; GrantNotFound if none, RowTampered if edited."""
        with store_errors("reading a cluster request"), self._sessions() as session:
            row = session.get(ClusterRequestRow, grant_id)
            if row is None:
                raise GrantNotFound(grant_id)
            if self._rows is not None:
                self._rows.check_cluster_request(row)
            return ClusterRequestRecord.model_validate(row)
