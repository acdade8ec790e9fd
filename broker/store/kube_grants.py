"""The cluster grants' table: what each access grant to a member cluster created there.

Every move is one transaction on the locked row, checked against the state it must come
from, so an issue and the cleanup pass racing for one grant cannot both act: the loser
gets None (or the record as it is) and does nothing in the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from .errors import GrantNotFound
from .failures import store_errors
from .records import EndPath, KubeGrantRecord, KubeObjects
from .schema import KubeGrantRow

DEFAULT_BATCH = 100
MAX_ERROR = 1000


class KubeGrantRepository:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def add(self, record: KubeGrantRecord) -> KubeGrantRecord:
        with store_errors("recording a cluster grant"), self._sessions.begin() as session:
            row = KubeGrantRow(**record.model_dump())
            session.add(row)
            session.flush()
            return _record(row)

    def get(self, grant_id: str) -> KubeGrantRecord:
        with store_errors("reading a cluster grant"), self._sessions() as session:
            row = session.get(KubeGrantRow, grant_id)
            if row is None:
                raise GrantNotFound(grant_id)
            return _record(row)

    def many(self, grant_ids: Iterable[str]) -> dict[str, KubeGrantRecord]:
        """The cluster grants among `grant_ids`, by id (credential grants are not here)."""
        wanted = list(grant_ids)
        if not wanted:
            return {}
        query = select(KubeGrantRow).where(KubeGrantRow.grant_id.in_(wanted))
        with store_errors("reading cluster grants"), self._sessions() as session:
            return {row.grant_id: _record(row) for row in session.scalars(query)}

    def of_cluster(self, cluster: str) -> list[KubeGrantRecord]:
        query = select(KubeGrantRow).where(KubeGrantRow.cluster == cluster)
        with store_errors("reading a cluster's grants"), self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    def begin_create(
        self, grant_id: str, claimed_until: datetime, now: datetime
    ) -> KubeGrantRecord | None:
        """absent → creating, claimed by the caller until `claimed_until`; None when the
        objects are not absent (another call creates them, or they exist)."""
        with store_errors("claiming a cluster grant"), self._sessions.begin() as session:
            row = _get(session, grant_id)
            if row.objects != KubeObjects.ABSENT:
                return None
            row.objects = KubeObjects.CREATING
            row.account_uid = row.binding_uid = None
            row.next_attempt_at = claimed_until
            row.updated_at = now
            session.flush()
            return _record(row)

    def record_uids(
        self,
        grant_id: str,
        now: datetime,
        *,
        account_uid: str | None = None,
        binding_uid: str | None = None,
    ) -> KubeGrantRecord:
        """Keep the UID the API server gave an object the moment it is known."""
        with store_errors("recording a cluster object's UID"), self._sessions.begin() as session:
            row = _get(session, grant_id)
            if account_uid is not None:
                row.account_uid = account_uid
            if binding_uid is not None:
                row.binding_uid = binding_uid
            row.updated_at = now
            session.flush()
            return _record(row)

    def created(self, grant_id: str, token_expires_at: datetime, now: datetime) -> KubeGrantRecord:
        """creating → present; or the record as it is when the grant ended meanwhile."""
        with store_errors("recording a cluster grant's objects"), self._sessions.begin() as session:
            row = _get(session, grant_id)
            if row.objects in (KubeObjects.CREATING, KubeObjects.PRESENT):
                row.objects = KubeObjects.PRESENT
                row.next_attempt_at = None
            if row.token_expires_at is None or token_expires_at > row.token_expires_at:
                row.token_expires_at = token_expires_at
            row.updated_at = now
            session.flush()
            return _record(row)

    def to_remove(self, grant_id: str, now: datetime, *, again: bool = False) -> KubeGrantRecord:
        """Any state but removed → removing, due now (absent becomes removed: nothing to do);
        with `again` a removed row too (an issue that made objects after the removal)."""
        with store_errors("queueing a cluster grant's removal"), self._sessions.begin() as session:
            row = _get(session, grant_id)
            if row.objects == KubeObjects.ABSENT:
                row.objects = KubeObjects.REMOVED
                row.removed_at = now
            elif again or row.objects != KubeObjects.REMOVED:
                row.objects = KubeObjects.REMOVING
                row.next_attempt_at = now
            row.updated_at = now
            session.flush()
            return _record(row)

    def removal_failed(
        self, grant_id: str, error: str, next_attempt_at: datetime, now: datetime
    ) -> KubeGrantRecord:
        with store_errors("recording a failed removal"), self._sessions.begin() as session:
            row = _get(session, grant_id)
            row.attempts += 1
            row.last_error = error[:MAX_ERROR]
            row.next_attempt_at = next_attempt_at
            row.updated_at = now
            session.flush()
            return _record(row)

    def removed(
        self, grant_id: str, path: EndPath, now: datetime, *, reopen: bool
    ) -> KubeGrantRecord:
        """Both objects are gone: removed, with the path that ended the access; or back to
        absent when `reopen` (a failed or abandoned issue of a grant still open)."""
        with store_errors("recording a cluster grant's removal"), self._sessions.begin() as session:
            row = _get(session, grant_id)
            row.account_uid = row.binding_uid = None
            row.next_attempt_at = None
            if reopen:
                row.objects = KubeObjects.ABSENT
                row.token_expires_at = None
            else:
                row.objects = KubeObjects.REMOVED
                row.removed_at = now
                row.ended_path = path
                row.last_error = None
            row.updated_at = now
            session.flush()
            return _record(row)

    def due(self, now: datetime, limit: int = DEFAULT_BATCH) -> list[KubeGrantRecord]:
        """Rows whose objects must go now: removing and due, or creating past its claim
        (an issue that died)."""
        query = (
            select(KubeGrantRow)
            .where(
                KubeGrantRow.objects.in_([KubeObjects.REMOVING, KubeObjects.CREATING]),
                or_(KubeGrantRow.next_attempt_at.is_(None), KubeGrantRow.next_attempt_at <= now),
            )
            .order_by(KubeGrantRow.next_attempt_at, KubeGrantRow.grant_id)
            .limit(limit)
        )
        with store_errors("listing due cluster grant removals"), self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    def present(self, limit: int = DEFAULT_BATCH * 10) -> list[KubeGrantRecord]:
        """Grants whose objects stand in their clusters (checked for edits each pass)."""
        query = (
            select(KubeGrantRow)
            .where(KubeGrantRow.objects == KubeObjects.PRESENT)
            .order_by(KubeGrantRow.grant_id)
            .limit(limit)
        )
        with store_errors("listing present cluster grants"), self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    def pending_removals(self) -> int:
        """How many grants' objects still wait to be deleted (metrics)."""
        query = select(func.count()).where(KubeGrantRow.objects == KubeObjects.REMOVING)
        with store_errors("counting pending removals"), self._sessions() as session:
            return int(session.scalar(query) or 0)


def _record(row: KubeGrantRow) -> KubeGrantRecord:
    return KubeGrantRecord.model_validate(row)


def _get(session: Session, grant_id: str) -> KubeGrantRow:
    row = session.get(KubeGrantRow, grant_id, with_for_update=True)
    if row is None:
        raise GrantNotFound(grant_id)
    return row
