"""The access grants' table: every step of a just-in-time grant, one transaction each.

Each step locks the row, checks the move against GRANT_TRANSITIONS and writes it, so two
approvers (or an approver and the expiry job) racing for one grant cannot both win: the
loser gets GrantStateConflict with the grant as it is now. Repeating a step that already
happened the same way (the expiry job after a restart) returns the record unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .errors import GrantNotFound, GrantStateConflict
from .failures import store_errors
from .records import OPEN_GRANT_STATES, GrantRecord, GrantState, grant_may_become
from .schema import GrantRow

DEFAULT_BATCH = 100


class GrantRepository:
    """Every step takes `now` from the caller: the service's clock is the one that counts."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def add(self, grant: GrantRecord) -> GrantRecord:
        """Store a new grant as the caller built it (pending, with its id)."""
        row = GrantRow(**grant.model_dump())
        with store_errors("recording an access grant"), self._sessions.begin() as session:
            session.add(row)
            session.flush()
            return _record(row)

    def get(self, grant_id: str) -> GrantRecord:
        with store_errors("reading an access grant"), self._sessions() as session:
            return _record(_get(session, grant_id))

    def find(
        self, *, requester: str | None = None, states: frozenset[GrantState] | None = None
    ) -> list[GrantRecord]:
        """Grants, newest first; only one requester's, or only some states, when given."""
        query = select(GrantRow)
        if requester is not None:
            query = query.where(GrantRow.requester == requester)
        if states is not None:
            query = query.where(GrantRow.state.in_(list(states)))
        query = query.order_by(GrantRow.requested_at.desc(), GrantRow.id)
        with store_errors("listing access grants"), self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    def due(self, now: datetime, limit: int = DEFAULT_BATCH) -> list[GrantRecord]:
        """Open grants (pending, approved, issued) whose `expires_at` has passed."""
        query = (
            select(GrantRow)
            .where(GrantRow.state.in_(list(OPEN_GRANT_STATES)), GrantRow.expires_at <= now)
            .order_by(GrantRow.expires_at, GrantRow.id)
            .limit(limit)
        )
        with store_errors("listing due access grants"), self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    def approve(self, grant_id: str, approver: str, now: datetime) -> GrantRecord:
        """pending → approved; the grant now holds for its duration from this moment."""

        def change(row: GrantRow) -> None:
            row.decided_by, row.decided_at = approver, now
            row.expires_at = now + timedelta(seconds=row.duration_seconds)

        return self._move(grant_id, GrantState.APPROVED, "approved", change, now)

    def deny(self, grant_id: str, approver: str, now: datetime) -> GrantRecord:
        def change(row: GrantRow) -> None:
            row.decided_by, row.decided_at = approver, now

        return self._move(grant_id, GrantState.DENIED, "denied", change, now)

    def record_lease(self, grant_id: str, lease_id: str, now: datetime) -> GrantRecord:
        """approved → issued, with the lease issued for it; an issued grant keeps its
        lease id up to date (a newer generation after a rotation)."""

        def change(row: GrantRow) -> None:
            row.lease_id = lease_id

        target = GrantState.ISSUED
        return self._move(grant_id, target, "used to issue a credential", change, now, again=True)

    def mark_issued(self, grant_id: str, now: datetime) -> GrantRecord:
        """approved → issued for a grant that holds no lease (access to a member cluster);
        issuing again leaves it issued."""

        def change(row: GrantRow) -> None:
            pass

        target = GrantState.ISSUED
        return self._move(grant_id, target, "used to issue access", change, now, again=True)

    def end(self, grant_id: str, state: GrantState, by: str, now: datetime) -> GrantRecord:
        """An open grant becomes expired or revoked; ending it again the same way is a no-op."""
        if state not in (GrantState.EXPIRED, GrantState.REVOKED):
            raise ValueError(f"a grant ends expired or revoked, not {state}")

        def change(row: GrantRow) -> None:
            row.ended_by, row.ended_at = by, now

        return self._move(grant_id, state, state.value, change, now)

    def _move(
        self,
        grant_id: str,
        target: GrantState,
        step: str,
        change: Callable[[GrantRow], None],
        now: datetime,
        *,
        again: bool = False,
    ) -> GrantRecord:
        """Move the grant to `target`; a final state reached before is returned as is,
        and with `again` the change is applied to a grant already in `target`."""
        with store_errors(f"grant {step}"), self._sessions.begin() as session:
            row = _get(session, grant_id, lock=True)
            current = GrantState(row.state)
            if current == target and target.final:
                return _record(row)
            if not (grant_may_become(current, target) or (again and current == target)):
                raise GrantStateConflict(_record(row), step)
            change(row)
            row.state = target
            row.updated_at = now
            session.flush()
            return _record(row)


def _record(row: GrantRow) -> GrantRecord:
    return GrantRecord.model_validate(row)


def _get(session: Session, grant_id: str, *, lock: bool = False) -> GrantRow:
    row = session.get(GrantRow, grant_id, with_for_update=lock)
    if row is None:
        raise GrantNotFound(grant_id)
    return row
