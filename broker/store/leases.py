"""The lease table's repository: every read and state change of a lease, one transaction each.

State changes are idempotent where a retry could repeat them (the scheduler's jobs, a
replica that takes over): repeating a change that already happened returns the record;
a move LEASE_TRANSITIONS (records.py) does not allow raises LeaseStateConflict with that
record. Only the lease engine (broker/service/engine/: lease_engine.py, revoker.py) calls the
lifecycle steps (begin_*, complete_issue, mark_*, settle_revoked, record_revoke_failure).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    RowMapping,
    Select,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError

from broker.clock import Clock, utcnow
from broker.errors import InvalidRequest
from broker.models import PodKey

from .errors import IssueInProgress, LeaseNotFound, LeaseStateConflict
from .failures import store_errors
from .records import (
    LIVE_STATES,
    CapReached,
    Completion,
    EndedAtOnce,
    ExistingLease,
    LeaseHandle,
    LeaseQuery,
    LeaseRecord,
    LeaseRequest,
    LeaseState,
    LiveCaps,
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


# A lease's audit record(s) kept in the store's chain in the lifecycle step's own
# transaction (broker.audit.shared): the change and its record commit together.
Recorded = Callable[[Connection, LeaseRecord], object]
Settled = Callable[[Connection, LeaseRecord, bool], object]


def _above(lease: LeaseRecord) -> dict[str, Any]:
    return {
        "cluster": lease.cluster,
        "pod_uid": lease.pod_uid,
        "credential": lease.credential,
        "above": lease.generation,
    }


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
        admitted = self.admit_issue(request, None)
        assert not isinstance(admitted, CapReached)  # noqa: S101 - no caps, none reached
        return admitted

    def admit_issue(
        self, request: LeaseRequest, caps: LiveCaps | None
    ) -> PendingLease | ExistingLease | CapReached:
        """Issue's one trip to the store: the live lease of the pod's credential with its
        handle (ExistingLease: replay it), else the pod's and its cluster's live leases
        counted against `caps` (CapReached: refuse), else the pending row written — all in
        one write transaction, so the count and the insert cannot be split by another
        writer (on SQLite the write turn; on PostgreSQL the unique index decides a race
        for the same credential, and the count is the transaction's own snapshot)."""
        identity = request.model_dump()

        def build(connection: Connection) -> _Built:
            return self._next(connection, identity, above=0, caps=caps)

        return self._insert_pending("begin issue", request.pod_uid, request.credential, build)

    def begin_rotation(self, lease_id: str) -> PendingLease | ExistingLease:
        """Write the pending row of the next generation of an active lease.

        The current generation stays active (and is handed out) until `complete_issue` of
        the new one moves it to revoking. If a newer live generation exists already, that
        one is returned as ExistingLease.
        """
        current = self.get(lease_id)

        def build(connection: Connection) -> _Built:
            row = connection.execute(_BY_ID, {"lease_id": lease_id}).first()
            if row is None:
                raise LeaseNotFound(lease_id)
            record = LeaseRecord.model_validate(row)
            if record.state != LeaseState.ACTIVE:
                raise LeaseStateConflict(record, "rotate", _ACTIVE)
            identity = LeaseRequest.model_validate(record, from_attributes=True).model_dump()
            return self._next(connection, identity, above=record.generation, caps=None)

        begun = self._insert_pending("begin rotation", current.pod_uid, current.credential, build)
        assert not isinstance(begun, CapReached)  # noqa: S101 - no caps, none reached
        return begun

    def begin_rotations(
        self, lease_ids: Sequence[str]
    ) -> list[PendingLease | ExistingLease | LeaseStateConflict | LeaseNotFound]:
        """`begin_rotation` for many leases in one transaction (the batch form: a shared
        KV version rotated for every lease of a role), in the order given; a lease that
        is not active comes back as its LeaseStateConflict, one that does not exist as
        LeaseNotFound. If a concurrent writer takes one of the generations (the unique
        index), each is begun on its own instead."""
        with store_errors("begin rotations"):
            try:
                with self._sessions.writing() as connection:
                    return [self._begin_one(connection, lease_id) for lease_id in lease_ids]
            except (IntegrityError, _Raced):
                pass
        results: list[PendingLease | ExistingLease | LeaseStateConflict | LeaseNotFound] = []
        for lease_id in lease_ids:
            try:
                results.append(self.begin_rotation(lease_id))
            except (LeaseStateConflict, LeaseNotFound) as refused:
                results.append(refused)
        return results

    def _begin_one(
        self, connection: Connection, lease_id: str
    ) -> PendingLease | ExistingLease | LeaseStateConflict | LeaseNotFound:
        row = connection.execute(_BY_ID, {"lease_id": lease_id}).first()
        if row is None:
            return LeaseNotFound(lease_id)
        record = LeaseRecord.model_validate(row)
        if record.state != LeaseState.ACTIVE:
            return LeaseStateConflict(record, "rotate", _ACTIVE)
        identity = LeaseRequest.model_validate(record, from_attributes=True).model_dump()
        built = self._next(connection, identity, above=record.generation, caps=None)
        if built is None or isinstance(built, CapReached):
            raise _Raced  # the newer live row went between two reads: one by one instead
        inserted = self._inserted(connection, built)
        assert not isinstance(inserted, CapReached)  # noqa: S101 - no caps, none reached
        return inserted

    def complete_issue(
        self,
        lease_id: str,
        vault_lease_id: str,
        expires_at: datetime | None,
        *,
        retire_after: datetime | None = None,
        vault_lease: dict[str, Any] | None = None,
        sealed_credential: bytes | None = None,
        recorded: Recorded | None = None,
    ) -> LeaseRecord:
        """Record what Vault issued; the pending row becomes active.

        Older active generations of the same pod's credential become revoking, to be
        revoked at Vault after `retire_after` (default: now). `expires_at` is None for a
        credential without a Vault lease lifetime (kv-v2). `vault_lease` (the backend's
        handle) and `sealed_credential` are kept with the row (see LeaseHandle).

        If the lease became revoking while Vault was asked (its pod was deleted), the
        Vault lease id is still recorded, so the revoker revokes it, and
        LeaseStateConflict tells the caller not to hand the credential out.

        `recorded`: called with the active lease inside the same transaction (its audit
        record kept in the store's chain: both commit or neither does).
        """
        done = Completion(
            lease_id, vault_lease_id, expires_at, retire_after, vault_lease, sealed_credential
        )
        _check_completion(done)
        with store_errors("complete issue"), self._sessions.writing() as connection:
            result = self._complete(connection, done)
            if recorded is not None and isinstance(result, LeaseRecord):
                recorded(connection, result)
        if isinstance(result, LeaseStateConflict):
            raise result
        return result

    def complete_issues(
        self, completions: Sequence[Completion], recorded: Recorded | None = None
    ) -> list[LeaseRecord | LeaseStateConflict]:
        """`complete_issue` for many pending rows in one transaction, in the order given;
        a row that turned revoking meanwhile (its Vault lease id recorded all the same) or
        that cannot become active comes back as its LeaseStateConflict. `recorded`: as for
        `complete_issue`, once per lease that became active."""
        for done in completions:
            _check_completion(done)
        with store_errors("complete issues"), self._sessions.writing() as connection:
            results = [self._complete(connection, done) for done in completions]
            for result in results:
                if recorded is not None and isinstance(result, LeaseRecord):
                    recorded(connection, result)
            return results

    def _complete(
        self, connection: Connection, done: Completion
    ) -> LeaseRecord | LeaseStateConflict:
        found = connection.execute(_LOCKED, {"lease_id": done.lease_id}).first()
        if found is None:
            raise LeaseNotFound(done.lease_id)
        row = found._mapping
        state = LeaseState(row["state"])
        if state == LeaseState.ACTIVE and row["vault_lease_id"] == done.vault_lease_id:
            return _record_of(row)
        now = self._clock()
        if state == LeaseState.REVOKING and row["vault_lease_id"] is None:
            changed: dict[str, Any] = {
                "vault_lease_id": done.vault_lease_id,
                "vault_lease": done.vault_lease,
                "expires_at": done.expires_at,
                "updated_at": now,
            }
            connection.execute(_UPDATE_BY_ID, {"lease_id": done.lease_id, **changed})
            return LeaseStateConflict(_record_of({**row, **changed}), "complete issue", _PENDING)
        if not lease_may_become(state, LeaseState.ACTIVE):
            return LeaseStateConflict(_record_of(row), "complete issue", _PENDING)
        changed = {
            "state": LeaseState.ACTIVE,
            "vault_lease_id": done.vault_lease_id,
            "vault_lease": done.vault_lease,
            "sealed_credential": done.sealed_credential,
            "expires_at": done.expires_at,
            "updated_at": now,
        }
        connection.execute(_UPDATE_BY_ID, {"lease_id": done.lease_id, **changed})
        connection.execute(
            _RETIRE_OLDER,
            {
                "b_cluster": row["cluster"],
                "b_pod_uid": row["pod_uid"],
                "b_credential": row["credential"],
                "b_generation": row["generation"],
                "b_revoke_after": done.retire_after or now,
                "b_now": now,
            },
        )
        return _record_of({**row, **changed})

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

    def mark_revoking(
        self,
        lease_id: str,
        *,
        revoke_after: datetime | None = None,
        recorded: Recorded | None = None,
    ) -> LeaseRecord:
        """Stop handing the lease out and queue it for revocation after `revoke_after`.

        Marking a revoking lease again keeps the earlier time (an Ack brings a rotated
        lease's revocation forward); a revoked or failed lease is returned unchanged. A
        pending lease may be marked too: `complete_issue` then records its Vault lease id
        for the revoker, and reconcile settles one whose issue never completes.
        `recorded`: called with the marked lease inside the same transaction when this
        call changed it.
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

        return self._move(
            lease_id,
            LeaseState.REVOKING,
            "mark revoking",
            change,
            quiet=_FINAL,
            recorded=recorded,
        )[0]

    def end_at_once(
        self, lease_id: str, recorded: Callable[[Connection, EndedAtOnce], None] | None = None
    ) -> EndedAtOnce | None:
        """An active lease that nothing at Vault holds (a KV value) ended in one
        transaction: revoking and revoked together, and whether a newer generation of its
        credential is live (it was rotated away). None when the row is not active (any
        other state goes the usual way: `mark_revoking`, then the Revoker). `recorded`:
        called with the outcome inside the same transaction."""
        with store_errors("end a lease"), self._sessions.writing() as connection:
            found = connection.execute(_LOCKED, {"lease_id": lease_id}).first()
            if found is None:
                raise LeaseNotFound(lease_id)
            row = found._mapping
            if row["state"] != LeaseState.ACTIVE:
                return None
            now = self._clock()
            revoking = {"state": LeaseState.REVOKING, "revoke_after": now, "updated_at": now}
            changed = {**revoking, "state": LeaseState.REVOKED, "sealed_credential": None}
            connection.execute(_UPDATE_BY_ID, {"lease_id": lease_id, **changed})
            key = {
                "cluster": row["cluster"],
                "pod_uid": row["pod_uid"],
                "credential": row["credential"],
                "above": row["generation"],
            }
            _, newer = connection.execute(_TOP, key).one()
            ended = EndedAtOnce(
                _record_of({**row, **revoking}), _record_of({**row, **changed}), bool(newer)
            )
            if recorded is not None:
                recorded(connection, ended)
        return ended

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

    def settle_revoked(
        self, lease_id: str, recorded: Settled | None = None
    ) -> tuple[LeaseRecord, bool]:
        """mark_revoked, and whether this call made the change: of two replicas that both
        revoked the lease at Vault (harmless there), only the one that gets True records
        and announces it. `recorded`: called with the revoked lease inside the same
        transaction when this call made the change, and whether a newer generation of its
        credential is live (it was rotated away)."""

        def change(row: LeaseRow, now: datetime) -> bool:
            if row.state == LeaseState.REVOKED:
                return False
            row.sealed_credential = None
            return True

        def then(connection: Connection, revoked: LeaseRecord) -> None:
            if recorded is not None:
                _, newer = connection.execute(_TOP, _above(revoked)).one()
                recorded(connection, revoked, bool(newer))

        return self._move(lease_id, LeaseState.REVOKED, "mark revoked", change, recorded=then)

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

    def get_with_handle(self, lease_id: str) -> tuple[LeaseRecord, LeaseHandle]:
        """The row and its Vault handle, read by one statement."""
        with store_errors("reading a lease"), self._sessions.reading() as connection:
            row = connection.execute(_WITH_HANDLE, {"lease_id": lease_id}).first()
        if row is None:
            raise LeaseNotFound(lease_id)
        return _record_of(row._mapping), LeaseHandle(row.id, row.vault_lease, row.sealed_credential)

    def get_many(self, lease_ids: Sequence[str]) -> dict[str, LeaseRecord]:
        """The rows named that exist, by id, read by one statement."""
        statement = select(*_RECORD_COLUMNS).where(LeaseRow.id.in_(list(lease_ids)))
        with store_errors("reading leases"), self._sessions.reading() as connection:
            return {
                row.id: LeaseRecord.model_validate(row) for row in connection.execute(statement)
            }

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
        with store_errors("finding a pod UID's clusters"), self._sessions.reading() as connection:
            return frozenset(connection.execute(_HOLDERS, {"pod_uid": pod_uid}).scalars())

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
        with store_errors("reading Vault handles"), self._sessions.reading() as connection:
            return {lease_id: handle for lease_id, handle in connection.execute(statement)}

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

    def clear_rotation_requests(self, lease_ids: Collection[str]) -> None:
        """`clear_rotation_request` for many leases in one statement."""
        statement = (
            update(LeaseRow)
            .where(LeaseRow.id.in_(list(lease_ids)))
            .values(rotate_requested_at=None, rotate_grace=None)
        )
        with store_errors("clearing rotation requests"), self._sessions.writing() as connection:
            connection.execute(statement)

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
        self,
        connection: Connection,
        identity: dict[str, str],
        above: int,
        caps: LiveCaps | None,
    ) -> _Built:
        """The live lease above generation `above` (with its handle) if there is one, else
        CapReached when `caps` are reached, else the values of a new row to insert.

        Whether a live row exists and the highest generation come from one statement, so
        from one snapshot: two callers that find no live row pick the same generation,
        and the unique index lets only one of them insert it. None: the live row seen by
        the first statement was gone by the second; try again.
        """
        key = {
            "cluster": identity["cluster"],
            "pod_uid": identity["pod_uid"],
            "credential": identity["credential"],
            "above": above,
        }
        if caps is None:
            top, live_above = connection.execute(_TOP, key).one()
        else:  # the counts in the same statement: one round trip to PostgreSQL
            top, live_above, held, in_cluster = connection.execute(_TOP_CAPS, key).one()
        if live_above:
            live = connection.execute(_LIVE_ABOVE, key).first()
            if live is None:
                return None
            handle = LeaseHandle(live.id, live.vault_lease, live.sealed_credential)
            return ExistingLease(_record_of(live._mapping), handle)
        if caps is not None and (held >= caps.per_pod or in_cluster >= caps.per_cluster):
            return CapReached(int(held), int(in_cluster))
        return self._new_row(identity, top + 1)

    def _new_row(self, identity: dict[str, str], generation: int) -> dict[str, Any]:
        now = self._clock()
        return {
            "id": str(uuid.uuid4()),
            "vault_lease_id": None,
            "state": LeaseState.PENDING,
            "generation": generation,
            "expires_at": None,
            "revoke_after": None,
            "created_at": now,
            "updated_at": now,
            "last_error": None,
            "revoke_attempts": 0,
            **identity,
        }

    @staticmethod
    def _inserted(
        connection: Connection, built: dict[str, Any] | ExistingLease | CapReached
    ) -> PendingLease | ExistingLease | CapReached:
        if not isinstance(built, dict):
            return built
        connection.execute(_INSERT, built)
        return PendingLease(_record_of(built))

    def _insert_pending(
        self,
        operation: str,
        pod_uid: str,
        credential: str,
        build: Callable[[Connection], _Built],
    ) -> PendingLease | ExistingLease | CapReached:
        """Run `build` and insert its row; on losing a race to the unique index, run again.

        A loser's insert fails on `uq_leases_live_generation` (PostgreSQL waits for the
        winner to commit first), and the next attempt finds the winner's row.
        """
        for _ in range(INSERT_ATTEMPTS):
            with store_errors(operation):
                try:
                    with self._sessions.writing() as connection:
                        built = build(connection)
                        if built is None:
                            continue
                        result = self._inserted(connection, built)
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
        recorded: Recorded | None = None,
    ) -> tuple[LeaseRecord, bool]:
        """Move the lease to `target` as LEASE_TRANSITIONS allows, with `change` writing
        the fields that go with it (False: nothing to do); and whether anything changed.

        A lease in `target` already gets `change` alone (marking a revoking lease again
        brings its time forward); one in a `quiet` state is returned unchanged; any other
        move the table does not allow raises LeaseStateConflict with the lease as it is.
        `recorded`: called with the moved lease, after its UPDATE, in the same transaction.
        """
        moved: list[LeaseRecord] = []

        def then(connection: Connection) -> None:
            if recorded is not None and moved:
                recorded(connection, moved[0])

        with self._editing(operation, lease_id, then) as row:
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
            moved.append(_record(row))
            return moved[0], True

    @contextmanager
    def _editing(
        self,
        operation: str,
        lease_id: str,
        then: Callable[[Connection], None] | None = None,
    ) -> Iterator[LeaseRow]:
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
            if changed:  # one statement per set of columns, compiled once and cached
                connection.execute(_UPDATE_BY_ID, {"lease_id": lease_id, **changed})
            if then is not None:
                then(connection)

    def _list(self, operation: str, query: Select[LeaseRow]) -> list[LeaseRecord]:
        with store_errors(operation), self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]


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


def _record_of(values: Mapping[str, Any] | RowMapping) -> LeaseRecord:
    """A record from a row's columns (a Core row's mapping, or the values inserted)."""
    return LeaseRecord.model_validate({name: values[name] for name in _RECORD_FIELDS})


def _check_completion(done: Completion) -> None:
    _require_aware(done.expires_at, "expires_at")
    _require_aware(done.retire_after, "retire_after")


class _Raced(Exception):
    """A batch met a concurrent writer: its leases are begun one by one instead."""


_Built = dict[str, Any] | ExistingLease | CapReached | None
"""What a pending row's build step found: new row values, a live lease, a reached cap, or
None (a race between two reads: try again)."""


_RECORD_FIELDS = tuple(LeaseRecord.model_fields)
_RECORD_COLUMNS = [LeaseRow.__table__.c[name] for name in _RECORD_FIELDS]
_LEASES = cast("Table", LeaseRow.__table__)
_SAME_CREDENTIAL = (
    LeaseRow.cluster == bindparam("cluster"),
    LeaseRow.pod_uid == bindparam("pod_uid"),
    LeaseRow.credential == bindparam("credential"),
)
_IS_LIVE_ABOVE = and_(LeaseRow.state.in_(LIVE_STATES), LeaseRow.generation > bindparam("above"))
_TOP = select(
    func.coalesce(func.max(LeaseRow.generation), 0), func.count(case((_IS_LIVE_ABOVE, 1)))
).where(*_SAME_CREDENTIAL)
_LIVE_ABOVE = (
    select(*_RECORD_COLUMNS, LeaseRow.vault_lease, LeaseRow.sealed_credential)
    .where(*_SAME_CREDENTIAL, _IS_LIVE_ABOVE)
    .order_by(case((LeaseRow.state == LeaseState.ACTIVE, 0), else_=1), LeaseRow.generation.desc())
    .limit(1)
)
_LIVE_OF_POD = and_(
    LeaseRow.cluster == bindparam("cluster"),
    LeaseRow.pod_uid == bindparam("pod_uid"),
    LeaseRow.state.in_(LIVE_STATES),
)
_TOP_CAPS = _TOP.add_columns(  # uncorrelated: counts over the whole table
    select(func.count()).select_from(_LEASES).where(_LIVE_OF_POD).correlate(None).scalar_subquery(),
    select(func.count())
    .select_from(_LEASES)
    .where(LeaseRow.cluster == bindparam("cluster"), LeaseRow.state.in_(LIVE_STATES))
    .correlate(None)
    .scalar_subquery(),
)
_INSERT = insert(_LEASES)
_UPDATE_BY_ID = update(_LEASES).where(LeaseRow.id == bindparam("lease_id"))
_RETIRE_OLDER = (
    update(_LEASES)
    .where(
        LeaseRow.cluster == bindparam("b_cluster"),
        LeaseRow.pod_uid == bindparam("b_pod_uid"),
        LeaseRow.credential == bindparam("b_credential"),
        LeaseRow.state == LeaseState.ACTIVE,
        LeaseRow.generation < bindparam("b_generation"),
    )
    .values(
        state=LeaseState.REVOKING,
        revoke_after=bindparam("b_revoke_after"),
        updated_at=bindparam("b_now"),
        sealed_credential=None,
    )
)
_HOLDERS = (
    select(LeaseRow.cluster)
    .where(LeaseRow.pod_uid == bindparam("pod_uid"), LeaseRow.state.in_(LIVE_STATES))
    .distinct()
)
_WITH_HANDLE = select(*_RECORD_COLUMNS, LeaseRow.vault_lease, LeaseRow.sealed_credential).where(
    LeaseRow.id == bindparam("lease_id")
)
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
