"""The lease table's repository: every read and state change of a lease, one transaction each.

State changes are idempotent where a retry could repeat them (the scheduler's jobs, a
replica that takes over): repeating a change that already happened returns the record;
a move LEASE_TRANSITIONS (records.py) does not allow raises LeaseStateConflict with that
record. Only the lease engine (broker/service/engine/: lease_engine.py, revoker.py) calls the
lifecycle steps (begin_*, complete_issue, mark_*, settle_revoked, record_revoke_failure).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import (
    CursorResult,
    Select,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.clock import Clock, utcnow
from broker.errors import InvalidRequest
from broker.models import PodKey

from .errors import IssueInProgress, LeaseNotFound, LeaseStateConflict
from .failures import store_errors
from .records import (
    LIVE_STATES,
    ExistingLease,
    LeaseHandle,
    LeaseQuery,
    LeaseRecord,
    LeaseRequest,
    LeaseState,
    PendingLease,
    RotationRequest,
    Selector,
    lease_may_become,
    lease_sources,
)
from .schema import LeaseRow

if TYPE_CHECKING:
    from .store import StoreSessions

ERROR_CAP = 1000
INSERT_ATTEMPTS = 5
DEFAULT_BATCH = 100

_PENDING = frozenset({LeaseState.PENDING})
_ACTIVE = frozenset({LeaseState.ACTIVE})
_REVOKING = frozenset({LeaseState.REVOKING})
_FINAL = frozenset({LeaseState.REVOKED, LeaseState.FAILED})


class LeaseRepository:
    def __init__(self, sessions: StoreSessions, clock: Clock = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock

    # -- issue -----------------------------------------------------------------------------

    def begin_issue(self, request: LeaseRequest) -> PendingLease | ExistingLease:
        """Write the pending row for a new credential, before Vault is asked.

        Idempotent per (cluster, pod UID, credential): when a live lease exists, or a
        concurrent call wins the race, the result is that lease as ExistingLease and Vault
        must not be asked.
        """

        def build(session: Session) -> LeaseRow | LeaseRecord | None:
            return self._next(session, request.model_dump(), above=0)

        return self._insert_pending("begin issue", request.pod_uid, request.credential, build)

    def begin_rotation(self, lease_id: str) -> PendingLease | ExistingLease:
        """Write the pending row of the next generation of an active lease.

        The current generation stays active (and is handed out) until `complete_issue` of
        the new one moves it to revoking. If a newer live generation exists already, that
        one is returned as ExistingLease.
        """
        with store_errors("reading a lease"), self._sessions() as session:
            current = _record(_get(session, lease_id))

        def build(session: Session) -> LeaseRow | LeaseRecord | None:
            row = _get(session, lease_id)
            if row.state != LeaseState.ACTIVE:
                raise LeaseStateConflict(_record(row), "rotate", _ACTIVE)
            identity = LeaseRequest.model_validate(row, from_attributes=True).model_dump()
            return self._next(session, identity, above=row.generation)

        return self._insert_pending("begin rotation", current.pod_uid, current.credential, build)

    def complete_issue(
        self,
        lease_id: str,
        vault_lease_id: str,
        expires_at: datetime | None,
        *,
        retire_after: datetime | None = None,
        vault_lease: dict[str, Any] | None = None,
        sealed_credential: bytes | None = None,
    ) -> LeaseRecord:
        """Record what Vault issued; the pending row becomes active.

        Older active generations of the same pod's credential become revoking, to be
        revoked at Vault after `retire_after` (default: now). `expires_at` is None for a
        credential without a Vault lease lifetime (kv-v2). `vault_lease` (the backend's
        handle) and `sealed_credential` are kept with the row (see LeaseHandle).

        If the lease became revoking while Vault was asked (its pod was deleted), the
        Vault lease id is still recorded, so the revoker revokes it, and
        LeaseStateConflict tells the caller not to hand the credential out.
        """
        _require_aware(expires_at, "expires_at")
        _require_aware(retire_after, "retire_after")
        with store_errors("complete issue"), self._sessions.begin() as session:
            row = _get(session, lease_id, lock=True)
            if row.state == LeaseState.ACTIVE and row.vault_lease_id == vault_lease_id:
                return _record(row)
            now = self._clock()
            if row.state == LeaseState.REVOKING and row.vault_lease_id is None:
                row.vault_lease_id = vault_lease_id
                row.vault_lease = vault_lease
                row.expires_at = expires_at
                row.updated_at = now
                session.flush()
                late = LeaseStateConflict(_record(row), "complete issue", _PENDING)
            elif not lease_may_become(LeaseState(row.state), LeaseState.ACTIVE):
                raise LeaseStateConflict(_record(row), "complete issue", _PENDING)
            else:
                row.vault_lease = vault_lease
                row.sealed_credential = sealed_credential
                _activate(
                    session,
                    row,
                    vault_lease_id=vault_lease_id,
                    expires_at=expires_at,
                    retire_after=retire_after,
                    now=now,
                )
                return _record(row)
        raise late

    def mark_failed(self, lease_id: str, error: str) -> LeaseRecord:
        """Vault refused or never answered: the pending row is final, nothing to revoke."""

        def change(row: LeaseRow, now: datetime) -> bool:
            if row.state == LeaseState.FAILED:
                return False
            row.last_error = error[:ERROR_CAP]
            row.sealed_credential = None
            return True

        return self._move(lease_id, LeaseState.FAILED, "mark failed", change)[0]

    # -- renew -----------------------------------------------------------------------------

    def record_renewal(self, lease_id: str, expires_at: datetime) -> LeaseRecord:
        _require_aware(expires_at, "expires_at")

        def change(row: LeaseRow, now: datetime) -> bool:
            if row.state != LeaseState.ACTIVE:
                raise LeaseStateConflict(_record(row), "record renewal", _ACTIVE)
            row.expires_at = expires_at
            return True

        return self._change(lease_id, "record renewal", change)

    def leases_to_renew(
        self,
        before: datetime,
        limit: int = DEFAULT_BATCH,
        *,
        pods: Collection[PodKey] | None = None,
    ) -> list[LeaseRecord]:
        """Active leases whose Vault lease ends before `before`, soonest first; only those
        of `pods` when given (the broker renews only pods that hold a Watch stream)."""
        _require_aware(before, "before")
        query = select(LeaseRow).where(
            LeaseRow.state == LeaseState.ACTIVE, LeaseRow.expires_at < before
        )
        if pods is not None:
            query = query.where(tuple_(LeaseRow.cluster, LeaseRow.pod_uid).in_(list(pods)))
        query = query.order_by(LeaseRow.expires_at, LeaseRow.id).limit(limit)
        return self._list("leases to renew", query)

    # -- revoke ----------------------------------------------------------------------------

    def mark_revoking(self, lease_id: str, *, revoke_after: datetime | None = None) -> LeaseRecord:
        """Stop handing the lease out and queue it for revocation after `revoke_after`.

        Marking a revoking lease again keeps the earlier time (an Ack brings a rotated
        lease's revocation forward); a revoked or failed lease is returned unchanged. A
        pending lease may be marked too: `complete_issue` then records its Vault lease id
        for the revoker, and reconcile settles one whose issue never completes.
        """
        _require_aware(revoke_after, "revoke_after")

        def change(row: LeaseRow, now: datetime) -> bool:
            when = revoke_after or now
            earlier = row.revoke_after is not None and row.revoke_after <= when
            if row.state == LeaseState.REVOKING and earlier:
                return False
            row.revoke_after = when
            row.sealed_credential = None  # no longer handed out
            return True

        return self._move(lease_id, LeaseState.REVOKING, "mark revoking", change, quiet=_FINAL)[0]

    def record_revoke_failure(self, lease_id: str, error: str, retry_at: datetime) -> LeaseRecord:
        """Vault did not revoke it; try again at `retry_at`. Revocation never gives up."""
        _require_aware(retry_at, "retry_at")

        def change(row: LeaseRow, now: datetime) -> bool:
            if row.state != LeaseState.REVOKING:
                raise LeaseStateConflict(_record(row), "record revoke failure", _REVOKING)
            row.revoke_attempts += 1
            row.last_error = error[:ERROR_CAP]
            row.revoke_after = retry_at
            return True

        return self._change(lease_id, "record revoke failure", change)

    def mark_revoked(self, lease_id: str) -> LeaseRecord:
        """Vault revoked it (or reconcile found it gone): final."""
        return self.settle_revoked(lease_id)[0]

    def settle_revoked(self, lease_id: str) -> tuple[LeaseRecord, bool]:
        """mark_revoked, and whether this call made the change: of two replicas that both
        revoked the lease at Vault (harmless there), only the one that gets True records
        and announces it."""

        def change(row: LeaseRow, now: datetime) -> bool:
            if row.state == LeaseState.REVOKED:
                return False
            row.sealed_credential = None
            return True

        return self._move(lease_id, LeaseState.REVOKED, "mark revoked", change)

    def leases_to_revoke(self, now: datetime, limit: int = DEFAULT_BATCH) -> list[LeaseRecord]:
        """Revoking leases whose time has come, longest waiting first."""
        _require_aware(now, "now")
        query = (
            select(LeaseRow)
            .where(
                LeaseRow.state == LeaseState.REVOKING,
                or_(LeaseRow.revoke_after.is_(None), LeaseRow.revoke_after <= now),
            )
            .order_by(LeaseRow.revoke_after, LeaseRow.id)
            .limit(limit)
        )
        return self._list("leases to revoke", query)

    # -- read ------------------------------------------------------------------------------

    # The hot reads of Issue, Renew and Release (get, find_live, handle, count_live) are
    # Core statements built once, on a bare connection: an ORM session, its compilation and
    # its identity map cost more than the query itself (issue 19's profile).

    def get(self, lease_id: str) -> LeaseRecord:
        with store_errors("reading a lease"), self._sessions.reading() as connection:
            row = connection.execute(_BY_ID, {"lease_id": lease_id}).first()
        if row is None:
            raise LeaseNotFound(lease_id)
        return LeaseRecord.model_validate(row)

    def find_live(self, cluster: str, pod_uid: str, credential: str) -> LeaseRecord | None:
        """The lease to hand out for a pod's credential: the newest active, else pending.

        Keyed by the cluster too: a member cluster's API server can mint any pod UID.
        """
        key = {"cluster": cluster, "pod_uid": pod_uid, "credential": credential}
        with store_errors("finding a live lease"), self._sessions.reading() as connection:
            row = connection.execute(_LIVE, key).first()
        return None if row is None else LeaseRecord.model_validate(row)

    def clusters_holding(self, pod_uid: str) -> frozenset[str]:
        """The clusters whose pods of this UID hold live leases. Real pod UIDs are random
        UUIDs: one UID live in two clusters means one of them minted a token for a pod
        it does not run."""
        query = (
            select(LeaseRow.cluster)
            .where(LeaseRow.pod_uid == pod_uid, LeaseRow.state.in_(LIVE_STATES))
            .distinct()
        )
        with store_errors("finding a pod UID's clusters"), self._sessions.reading() as connection:
            return frozenset(connection.execute(query).scalars())

    def handle(self, lease_id: str) -> LeaseHandle:
        """The lease's Vault handle and sealed credential (LeaseNotFound if there is no row)."""
        with store_errors("reading a lease handle"), self._sessions.reading() as connection:
            row = connection.execute(_HANDLE, {"lease_id": lease_id}).first()
        if row is None:
            raise LeaseNotFound(lease_id)
        return LeaseHandle(row.id, row.vault_lease, row.sealed_credential)

    def count_live(self, *, pod_uid: str | None = None, cluster: str | None = None) -> int:
        """Pending and active leases of one pod, one cluster, or all (for caps and gauges).

        A pod is named by its cluster and UID: `pod_uid` needs `cluster`.
        """
        if pod_uid is not None and cluster is None:
            raise InvalidRequest("cluster", "a pod UID is counted within its cluster")
        query = select(func.count()).select_from(LeaseRow).where(LeaseRow.state.in_(LIVE_STATES))
        if pod_uid is not None:
            query = query.where(LeaseRow.pod_uid == pod_uid)
        if cluster is not None:
            query = query.where(LeaseRow.cluster == cluster)
        with store_errors("counting leases"), self._sessions.reading() as connection:
            return int(connection.execute(query).scalar_one())

    def count_revoking(self) -> int:
        """Revocations not done yet (due now or waiting for a retry): a gauge."""
        query = (
            select(func.count()).select_from(LeaseRow).where(LeaseRow.state == LeaseState.REVOKING)
        )
        with store_errors("counting revocations"), self._sessions() as session:
            return int(session.execute(query).scalar_one())

    def list_by_selector(self, selector: Selector, limit: int | None = None) -> list[LeaseRecord]:
        return self._list("listing leases", by_selector(selector, limit))

    def select_page(
        self, query: LeaseQuery, after: str | None = None, limit: int = DEFAULT_BATCH
    ) -> list[LeaseRecord]:
        """One page of the leases a query selects, by lease id; pass the last id of a page
        as `after` for the next. Keyset pages, so a fleet of 100,000 is read in slices
        that each cost an index range, never an offset scan."""
        statement = _where_query(select(LeaseRow), query)
        if after is not None:
            statement = statement.where(LeaseRow.id > after)
        return self._list("selecting leases", statement.order_by(LeaseRow.id).limit(limit))

    def count_grouped(
        self, query: LeaseQuery, group_by: Sequence[str], limit: int
    ) -> list[tuple[tuple[str, ...], int]]:
        """How many leases a query selects, by the values of the `group_by` columns (any of
        GROUP_COLUMNS; none for one total), largest groups first, at most `limit` groups."""
        columns = [GROUP_COLUMNS[name] for name in group_by]
        counted = func.count().label("leases")
        statement = _where_query(select(*columns, counted).select_from(LeaseRow), query)
        if columns:
            statement = statement.group_by(*columns).order_by(counted.desc(), *columns)
        with store_errors("counting leases"), self._sessions.reading() as connection:
            rows = connection.execute(statement.limit(limit)).all()
        return [(tuple(str(value) for value in row[:-1]), int(row[-1])) for row in rows]

    def vault_handles(self, lease_ids: Collection[str]) -> dict[str, dict[str, Any] | None]:
        """The Vault handle (`LeaseHandle.vault_lease`) of each lease named, in one query."""
        statement = select(LeaseRow.id, LeaseRow.vault_lease).where(
            LeaseRow.id.in_(list(lease_ids))
        )
        with store_errors("reading Vault handles"), self._sessions() as session:
            return {lease_id: handle for lease_id, handle in session.execute(statement)}

    # -- rotations by selector -------------------------------------------------------------

    def request_rotation(
        self, lease_ids: Collection[str], requested_at: datetime, grace_seconds: int | None
    ) -> int:
        """Note on each active lease named that a rotation was asked for; how many.

        The note survives a broker that dies before it rotates them: the rotation queue's
        pass (`rotation_requests`) finds them. A lease rotated meanwhile is left alone.
        """
        _require_aware(requested_at, "requested_at")
        statement = (
            update(LeaseRow)
            .where(LeaseRow.id.in_(list(lease_ids)), LeaseRow.state == LeaseState.ACTIVE)
            .values(rotate_requested_at=requested_at, rotate_grace=grace_seconds)
        )
        with store_errors("requesting rotations"), self._sessions.begin() as session:
            result = session.execute(statement)
            return int(cast("CursorResult[Any]", result).rowcount)

    def rotation_requests(
        self, before: datetime, limit: int = DEFAULT_BATCH
    ) -> list[RotationRequest]:
        """Active leases whose rotation was asked for before `before`, oldest request first."""
        _require_aware(before, "before")
        statement = (
            select(LeaseRow)
            .where(
                LeaseRow.state == LeaseState.ACTIVE,
                LeaseRow.rotate_requested_at.is_not(None),
                LeaseRow.rotate_requested_at <= before,
            )
            .order_by(LeaseRow.rotate_requested_at, LeaseRow.id)
            .limit(limit)
        )
        with store_errors("reading rotation requests"), self._sessions() as session:
            return [
                RotationRequest(_record(row), row.rotate_grace)
                for row in session.scalars(statement)
            ]

    def clear_rotation_request(self, lease_id: str) -> None:
        """The rotation asked for is done or failed (a failure is reported, not retried)."""
        statement = (
            update(LeaseRow)
            .where(LeaseRow.id == lease_id)
            .values(rotate_requested_at=None, rotate_grace=None)
        )
        with store_errors("clearing a rotation request"), self._sessions.begin() as session:
            session.execute(statement)

    # -- reconcile -------------------------------------------------------------------------

    def vault_lease_ids(self, states: Collection[LeaseState], prefix: str) -> dict[str, str]:
        """Lease ids by Vault lease id, of the leases in `states` that hold a Vault lease
        under `prefix` (two columns only: reconcile reads the whole fleet)."""
        statement = select(LeaseRow.vault_lease_id, LeaseRow.id).where(
            LeaseRow.state.in_(list(states)), LeaseRow.vault_lease_id.startswith(prefix)
        )
        with store_errors("listing Vault lease ids"), self._sessions() as session:
            return {str(vault_id): lease_id for vault_id, lease_id in session.execute(statement)}

    def unissued_before(self, before: datetime, limit: int = DEFAULT_BATCH) -> list[LeaseRecord]:
        """Pending or revoking rows without a Vault lease, written before `before`: their
        issue died with a broker (or never returned); reconcile settles them."""
        _require_aware(before, "before")
        query = (
            select(LeaseRow)
            .where(
                LeaseRow.state.in_([LeaseState.PENDING, LeaseState.REVOKING]),
                LeaseRow.vault_lease_id.is_(None),
                LeaseRow.created_at < before,
            )
            .order_by(LeaseRow.created_at, LeaseRow.id)
            .limit(limit)
        )
        return self._list("listing unissued leases", query)

    def pending_before(self, before: datetime, limit: int = DEFAULT_BATCH) -> list[LeaseRecord]:
        """Pending rows older than `before`: a crash between the row and Vault; reconcile."""
        _require_aware(before, "before")
        query = (
            select(LeaseRow)
            .where(LeaseRow.state == LeaseState.PENDING, LeaseRow.created_at < before)
            .order_by(LeaseRow.created_at, LeaseRow.id)
            .limit(limit)
        )
        return self._list("listing pending leases", query)

    # -- helpers ---------------------------------------------------------------------------

    def _next(
        self, session: Session, identity: dict[str, str], above: int
    ) -> LeaseRow | LeaseRecord | None:
        """The live lease above generation `above` if there is one, else a new row to insert.

        Whether a live row exists and the highest generation come from one statement, so
        from one snapshot: two callers that find no live row pick the same generation,
        and the unique index lets only one of them insert it. None: the live row seen by
        the first statement was gone by the second; try again.
        """
        cluster, pod_uid, credential = (
            identity["cluster"],
            identity["pod_uid"],
            identity["credential"],
        )
        same = (
            LeaseRow.cluster == cluster,
            LeaseRow.pod_uid == pod_uid,
            LeaseRow.credential == credential,
        )
        is_live_above = and_(LeaseRow.state.in_(LIVE_STATES), LeaseRow.generation > above)
        top, live_above = session.execute(
            select(
                func.coalesce(func.max(LeaseRow.generation), 0),
                func.count(case((is_live_above, 1))),
            ).where(*same)
        ).one()
        if not live_above:
            return self._new_row(identity, top + 1)
        live = session.scalars(
            _live_query(cluster, pod_uid, credential).where(LeaseRow.generation > above).limit(1)
        ).first()
        return None if live is None else _record(live)

    def _new_row(self, identity: dict[str, str], generation: int) -> LeaseRow:
        now = self._clock()
        return LeaseRow(
            id=str(uuid.uuid4()),
            vault_lease_id=None,
            state=LeaseState.PENDING,
            generation=generation,
            expires_at=None,
            revoke_after=None,
            created_at=now,
            updated_at=now,
            last_error=None,
            revoke_attempts=0,
            **identity,
        )

    def _insert_pending(
        self,
        operation: str,
        pod_uid: str,
        credential: str,
        build: Callable[[Session], LeaseRow | LeaseRecord | None],
    ) -> PendingLease | ExistingLease:
        """Run `build` and insert its row; on losing a race to the unique index, run again.

        A loser's insert fails on `uq_leases_live_generation` (PostgreSQL waits for the
        winner to commit first), and the next attempt finds the winner's row.
        """
        for _ in range(INSERT_ATTEMPTS):
            with store_errors(operation):
                try:
                    with self._sessions.begin() as session:
                        built = build(session)
                        if built is None:
                            continue
                        if isinstance(built, LeaseRecord):
                            result: PendingLease | ExistingLease = ExistingLease(built)
                        else:
                            session.add(built)
                            session.flush()
                            result = PendingLease(_record(built))
                except IntegrityError:
                    continue
                else:
                    return result
        raise IssueInProgress(pod_uid, credential)

    def _change(
        self, lease_id: str, operation: str, change: Callable[[LeaseRow, datetime], bool]
    ) -> LeaseRecord:
        """A change that keeps the lease's state (a renewal, a failed revocation)."""
        with self._editing(operation, lease_id) as row:
            now = self._clock()
            if change(row, now):
                row.updated_at = now
            return _record(row)

    def _move(
        self,
        lease_id: str,
        target: LeaseState,
        operation: str,
        change: Callable[[LeaseRow, datetime], bool],
        *,
        quiet: frozenset[LeaseState] = frozenset(),
    ) -> tuple[LeaseRecord, bool]:
        """Move the lease to `target` as LEASE_TRANSITIONS allows, with `change` writing
        the fields that go with it (False: nothing to do); and whether anything changed.

        A lease in `target` already gets `change` alone (marking a revoking lease again
        brings its time forward); one in a `quiet` state is returned unchanged; any other
        move the table does not allow raises LeaseStateConflict with the lease as it is.
        """
        with self._editing(operation, lease_id) as row:
            current = LeaseState(row.state)
            if current in quiet:
                return _record(row), False
            if current != target and not lease_may_become(current, target):
                raise LeaseStateConflict(_record(row), operation, lease_sources(target))
            now = self._clock()
            if not change(row, now):
                return _record(row), False
            row.state = target
            row.updated_at = now
            return _record(row), True

    @contextmanager
    def _editing(self, operation: str, lease_id: str) -> Iterator[LeaseRow]:
        """The lease's row, read under the write lock as a LeaseRow outside any session;
        the columns the block changed are written back in one UPDATE when it ends without
        an error (an error rolls back). Core statements: a lifecycle step of Issue or
        Release without an ORM session, its identity map and its flush (issue 19)."""
        with store_errors(operation), self._sessions.writing() as connection:
            found = connection.execute(_LOCKED, {"lease_id": lease_id}).first()
            if found is None:
                raise LeaseNotFound(lease_id)
            before = dict(found._mapping)
            row = LeaseRow(**before)
            yield row
            changed = {
                column: now
                for column, was in before.items()
                if (now := getattr(row, column)) != was
            }
            if changed:
                connection.execute(
                    update(LeaseRow).where(LeaseRow.id == lease_id).values(**changed)
                )

    def _list(self, operation: str, query: Select[LeaseRow]) -> list[LeaseRecord]:
        with store_errors(operation), self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]


def _activate(
    session: Session,
    row: LeaseRow,
    *,
    vault_lease_id: str,
    expires_at: datetime | None,
    retire_after: datetime | None,
    now: datetime,
) -> None:
    """Make a pending row active; older active generations start being revoked."""
    row.state = LeaseState.ACTIVE
    row.vault_lease_id = vault_lease_id
    row.expires_at = expires_at
    row.updated_at = now
    session.execute(
        update(LeaseRow)
        .where(
            LeaseRow.cluster == row.cluster,
            LeaseRow.pod_uid == row.pod_uid,
            LeaseRow.credential == row.credential,
            LeaseRow.state == LeaseState.ACTIVE,
            LeaseRow.generation < row.generation,
        )
        .values(
            state=LeaseState.REVOKING,
            revoke_after=retire_after or now,
            updated_at=now,
            sealed_credential=None,
        )
    )
    session.flush()


GROUP_COLUMNS: dict[str, Any] = {
    "cluster": LeaseRow.cluster,
    "namespace": LeaseRow.namespace,
    "service_account": LeaseRow.service_account,
    "role": LeaseRow.role,
    "state": LeaseRow.state,
}
"""The columns `count_grouped` may group by."""

S = TypeVar("S", bound=Select[Any])


def _where_query(statement: S, query: LeaseQuery) -> S:
    """`statement` narrowed to what `query` selects."""
    statement = statement.where(LeaseRow.state.in_(query.states))
    for column, values in (
        (LeaseRow.cluster, query.clusters),
        (LeaseRow.namespace, query.namespaces),
        (LeaseRow.service_account, query.service_accounts),
        (LeaseRow.pod_name, query.pod_names),
        (LeaseRow.role, query.roles),
        (LeaseRow.id, query.lease_ids),
    ):
        if values:
            statement = statement.where(column.in_(sorted(values)))
    return statement


def _record(row: LeaseRow) -> LeaseRecord:
    return LeaseRecord.model_validate(row)


def _get(session: Session, lease_id: str, *, lock: bool = False) -> LeaseRow:
    row = session.get(LeaseRow, lease_id, with_for_update=lock)
    if row is None:
        raise LeaseNotFound(lease_id)
    return row


def _live_query(cluster: str, pod_uid: str, credential: str) -> Select[LeaseRow]:
    active_first = case((LeaseRow.state == LeaseState.ACTIVE, 0), else_=1)
    return (
        select(LeaseRow)
        .where(
            LeaseRow.cluster == cluster,
            LeaseRow.pod_uid == pod_uid,
            LeaseRow.credential == credential,
            LeaseRow.state.in_(LIVE_STATES),
        )
        .order_by(active_first, LeaseRow.generation.desc())
    )


_RECORD_COLUMNS = [LeaseRow.__table__.c[name] for name in LeaseRecord.model_fields]
_BY_ID = select(*_RECORD_COLUMNS).where(LeaseRow.id == bindparam("lease_id"))
_LOCKED = select(LeaseRow.__table__).where(LeaseRow.id == bindparam("lease_id")).with_for_update()
_HANDLE = select(LeaseRow.id, LeaseRow.vault_lease, LeaseRow.sealed_credential).where(
    LeaseRow.id == bindparam("lease_id")
)
_LIVE = (
    select(*_RECORD_COLUMNS)
    .where(
        LeaseRow.cluster == bindparam("cluster"),
        LeaseRow.pod_uid == bindparam("pod_uid"),
        LeaseRow.credential == bindparam("credential"),
        LeaseRow.state.in_(LIVE_STATES),
    )
    .order_by(case((LeaseRow.state == LeaseState.ACTIVE, 0), else_=1), LeaseRow.generation.desc())
    .limit(1)
)


def _require_aware(value: datetime | None, field: str) -> None:
    if value is not None and value.tzinfo is None:
        raise InvalidRequest(field, "must be a timezone-aware datetime (UTC)")


def by_selector(selector: Selector, limit: int | None = None) -> Select[LeaseRow]:
    """The leases a selector names, oldest first (ListLeases, the Watch snapshot)."""
    query = select(LeaseRow).where(LeaseRow.state.in_(selector.states))
    for column, value in (
        (LeaseRow.cluster, selector.cluster),
        (LeaseRow.namespace, selector.namespace),
        (LeaseRow.service_account, selector.service_account),
        (LeaseRow.pod_name, selector.pod_name),
        (LeaseRow.role, selector.role),
    ):
        if value is not None:
            query = query.where(column == value)
    return query.order_by(LeaseRow.created_at, LeaseRow.id).limit(limit)
