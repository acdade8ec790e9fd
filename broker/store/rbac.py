"""RBAC kept in sync across clusters: clusters' labels, the profiles applied, and the
bindings the broker made for them (by UID)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from .failures import store_errors
from .schema import ClusterLabelsRow, RbacBindingRow, RbacProfileRow


class RbacBindingRecord(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True, extra="forbid")

    cluster: str
    name: str
    namespace: str
    profile: str
    uid: str
    updated_at: AwareDatetime


class RbacRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def labels(self) -> dict[str, dict[str, str]]:
        with store_errors("reading clusters' labels"), self._sessions() as session:
            return {r.cluster: dict(r.labels) for r in session.scalars(select(ClusterLabelsRow))}

    def set_labels(self, cluster: str, labels: dict[str, str], now: datetime) -> dict[str, str]:
        with store_errors("labelling a cluster"), self._sessions.begin() as session:
            row = session.get(ClusterLabelsRow, cluster, with_for_update=True)
            if row is None:
                row = ClusterLabelsRow(cluster=cluster, labels={}, updated_at=now)
                session.add(row)
            row.labels = dict(labels)
            row.updated_at = now
            return dict(labels)

    def profiles(self) -> dict[str, dict[str, Any]]:
        with store_errors("reading RBAC profiles"), self._sessions() as session:
            return {r.name: dict(r.spec) for r in session.scalars(select(RbacProfileRow))}

    def replace_profiles(self, specs: dict[str, dict[str, Any]], now: datetime) -> None:
        """The profiles become exactly `specs` (one transaction)."""
        with store_errors("applying RBAC profiles"), self._sessions.begin() as session:
            session.execute(delete(RbacProfileRow))
            for name, spec in specs.items():
                session.add(RbacProfileRow(name=name, spec=spec, updated_at=now))

    def bindings(self, cluster: str) -> list[RbacBindingRecord]:
        query = select(RbacBindingRow).where(RbacBindingRow.cluster == cluster)
        with store_errors("reading RBAC bindings"), self._sessions() as session:
            return [RbacBindingRecord.model_validate(r) for r in session.scalars(query)]

    def record_binding(self, record: RbacBindingRecord) -> None:
        with store_errors("recording an RBAC binding"), self._sessions.begin() as session:
            key = (record.cluster, record.name, record.namespace)
            row = session.get(RbacBindingRow, key, with_for_update=True)
            if row is None:
                session.add(RbacBindingRow(**record.model_dump()))
            else:
                row.uid, row.profile, row.updated_at = record.uid, record.profile, record.updated_at

    def forget_binding(self, cluster: str, name: str, namespace: str) -> None:
        with store_errors("forgetting an RBAC binding"), self._sessions.begin() as session:
            row = session.get(RbacBindingRow, (cluster, name, namespace))
            if row is not None:
                session.delete(row)
