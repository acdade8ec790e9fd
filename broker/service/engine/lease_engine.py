"""The lease engine: the one place a tracked lease is begun, issued, handed out again, undone
and ended. Issue, rotation and access grants create credentials through it; Release,
RevokeSelected, access revoke and expiry, cluster deregistration, the pod watch and sweep
and Issue's retiring of a dead lease end them through it. No other flow calls the store's
lifecycle steps (tests/unit/test_lease_engine_contract.py holds that).

Creating a credential, whatever asks for it:

    begin: pending row (before Vault) ─▶ Vault issues ─▶ [shape] ─▶ complete: row active
                                          │                │           │
                                          ▼                ▼           ▼
                                        fail            undo        undo, or (the row
                                                                    turned revoking
                                                                    meanwhile) revoke
                                                                    and LeaseStateConflict

- fail: Vault issued nothing; the row becomes failed (`lease.failed`).
- undo: Vault issued but the credential will not be handed out (a shaping step or the
  store failed): the Vault lease is revoked first, and only once Vault took that, the row
  becomes failed — failed means nothing lives at Vault. If Vault does not revoke, the row
  stays pending: reconcile fails it once it is `orphan_age` old and revokes the Vault
  lease it finds under keyferry's prefix that no row knows. Marking the row failed is
  itself guarded: the store that just failed may fail again, and then reconcile settles it.
- A row that turned revoking while Vault answered (its pod went away, its grant ended)
  has the Vault lease id recorded by `complete_issue` for the Revoker; the engine revokes
  it at once as well and raises LeaseStateConflict, which each flow answers in its terms.

Per-backend lifecycle: a backend whose credentials Vault cannot revoke (a KV read, an STS
session) creates nothing at Vault to undo, so its undo only closes the row; one that
creates a Vault lease (a database role) is revoked first (see `_undone_at_vault`).

Batch form (`issue_many`, used by rotation for a shared KV secret): the same steps for
many pending rows — orders of a role whose one Vault read every lease shares
(`Lifecycle.shared`: a KV version) ask Vault once, every row is completed in one store
transaction (`complete_issues`), and the `lease.active` records are one group commit;
each order's failure is undone as `issue` would undo it.

Ending a lease (`end`): the row is marked revoking (no longer handed out), audited
`lease.revoking` with why, then the Revoker revokes it at Vault and settles the row (one
`lease.revoked`, whoever settles first). A revocation Vault does not take now stays
queued on its row; `end` raises that error and the Revoker's pass retries it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import structlog
from sqlalchemy import Connection

from broker.audit import AuditAction, Principal
from broker.backends import Backends
from broker.clock import Clock
from broker.errors import KeyferryError
from broker.models import Credential, IssueContext, IssuedSecret, RoleSpec, VaultLease
from broker.store import (
    AsyncStore,
    CapReached,
    Completion,
    ExistingLease,
    IssueInProgress,
    LeaseHandle,
    LeaseNotFound,
    LeaseRecord,
    LeaseRequest,
    LeaseState,
    LeaseStateConflict,
    LiveCaps,
    PendingLease,
)

from ..common.audit_trail import AuditTrail
from ..common.sealing import CredentialSealer
from .revoker import Revoker

log = structlog.get_logger("keyferry.leases")
PENDING_POLL = 0.05
PENDING_WAIT = 15.0  # longer than one Vault call may take (VaultSettings.timeout)

Shape = Callable[[IssuedSecret], Awaitable[IssuedSecret]]
"""A step between Vault's answer and the store (an access grant renews its fresh lease to
end with the grant); its failure undoes the issue."""


@dataclass(frozen=True)
class IssueOrder:
    """One credential to issue for a pending row this call wrote."""

    pending: LeaseRecord
    role: RoleSpec
    who: Principal
    request_id: str
    retire_after: datetime | None = None
    """When older active generations are revoked (rotation's grace); None: at once."""
    shape: Shape | None = None


@dataclass(frozen=True)
class TrackedCredential:
    """A lease as handed out: its row, its credential and its Vault lease."""

    lease: LeaseRecord
    credential: Credential
    vault_lease: VaultLease
    replayed: bool


@dataclass(frozen=True)
class PendingWait:
    """How long a call waits for a concurrent call's pending row to complete, and how
    often it looks; the clock and the sleep are injected so tests drive the wait."""

    poll: float = PENDING_POLL
    limit: float = PENDING_WAIT
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class LeaseEngine:
    def __init__(
        self,
        *,
        store: AsyncStore,
        backends: Backends,
        sealer: CredentialSealer,
        audit: AuditTrail,
        revoker: Revoker,
        clock: Clock,
        wait: PendingWait | None = None,
    ) -> None:
        self._leases = store.leases
        self._backends = backends
        self._sealer = sealer
        self._audit = audit
        self._revoker = revoker
        self._clock = clock
        self._wait = wait or PendingWait()

    # -- create ----------------------------------------------------------------------------

    async def begin(self, request: LeaseRequest) -> PendingLease | ExistingLease:
        """The pending row for a new credential, or the live lease that is already there."""
        return await self._leases.begin_issue(request)

    async def admit(
        self, request: LeaseRequest, caps: LiveCaps
    ) -> PendingLease | ExistingLease | CapReached:
        """Issue's one trip to the store: the live lease to replay (with its handle), or
        CapReached when the pod or its cluster holds as many live leases as `caps` allow,
        or the pending row for a new credential — one transaction."""
        return await self._leases.admit_issue(request, caps)

    async def begin_next_generation(self, lease_id: str) -> PendingLease | ExistingLease:
        """The pending row of an active lease's next generation, or the newer live one."""
        return await self._leases.begin_rotation(lease_id)

    async def begin_next_generations(
        self, lease_ids: Sequence[str]
    ) -> list[PendingLease | ExistingLease | LeaseStateConflict | LeaseNotFound]:
        """`begin_next_generation` for many leases in one store transaction (the batch
        form), in order; a lease that is not active comes back as its conflict, one that
        is gone as LeaseNotFound."""
        return await self._leases.begin_rotations(lease_ids)

    async def issue(self, order: IssueOrder) -> TrackedCredential:
        """Ask Vault for the pending row's credential and record it (see the module doc
        for what each failure leaves behind); audited `lease.active`."""
        issued = await self._ask_vault(order)
        return await self._record(order, issued)

    def shares_issue(self, role: RoleSpec) -> bool:
        """Whether one Vault read serves every lease of the role (a KV version): the batch
        form (`issue_many`) then reads it once for all of them."""
        return self._backends.for_role(role).lifecycle(role).shared

    async def issue_many(
        self, orders: Sequence[IssueOrder]
    ) -> list[TrackedCredential | KeyferryError]:
        """`issue` for many pending rows at once, each outcome in the order given: its
        credential, or the error its own `issue` would have raised, with the same undo.

        Orders of one role whose Vault read every lease shares (`shares_issue`: a KV
        version) and without a shaping step ask Vault once for all of them; any other
        asks on its own, concurrently (a caller bounds how many it passes). Every row is
        completed in one store transaction, and the `lease.active` records reach the
        audit trail as one group commit."""
        groups = _by_read(orders, self)
        asked = await asyncio.gather(*(self._asked(group) for group in groups))
        issued: dict[int, IssuedSecret | KeyferryError] = {}
        for group, answers in zip(groups, asked, strict=True):
            for index in group.indexes:
                issued[index] = answers
        results: list[TrackedCredential | KeyferryError | None] = [None] * len(orders)
        asked_ok = [(i, o) for i, o in enumerate(orders) if isinstance(issued[i], IssuedSecret)]
        for index, answer in issued.items():
            if isinstance(answer, KeyferryError):
                results[index] = answer
        recorded = await self._record_many(
            [(order, cast("IssuedSecret", issued[index])) for index, order in asked_ok]
        )
        for (index, _), outcome in zip(asked_ok, recorded, strict=True):
            results[index] = outcome
        return [cast("TrackedCredential | KeyferryError", result) for result in results]

    async def _asked(self, group: _Read) -> IssuedSecret | KeyferryError:
        """One Vault read for a group of orders, or each order's own ask (a group of one);
        a refused read fails every row of its group."""
        first = group.orders[0]
        if len(group.orders) == 1:
            try:
                return await self._ask_vault(first)
            except KeyferryError as error:
                return error
        try:
            return await self._backends.for_role(first.role).issue(
                first.role, issue_context(first.pending)
            )
        except KeyferryError as error:
            await asyncio.gather(
                *(self.fail(o.pending, o.who, error, o.request_id) for o in group.orders)
            )
            return error

    async def _record_many(
        self, asked: list[tuple[IssueOrder, IssuedSecret]]
    ) -> list[TrackedCredential | KeyferryError]:
        if not asked:
            return []
        completions = [
            Completion(
                order.pending.id,
                issued.lease.lease_id,
                issued.lease.expires_at,
                order.retire_after,
                issued.lease.model_dump(mode="json"),
                self._sealer.seal_lease(order.pending, issued.credential),
            )
            for order, issued in asked
        ]
        keep = self._audit.keeper()
        by_id = {order.pending.id: (order, issued) for order, issued in asked}

        def recorded(connection: Connection, lease: LeaseRecord) -> None:
            if keep is None:
                return
            order, issued = by_id[lease.id]
            active = self._audit.lease_change_event(
                order.who,
                AuditAction.LEASE_ACTIVE,
                lease,
                order.request_id,
                credential=issued.credential,
            )
            keep(connection, [active])

        try:
            outcomes = await self._leases.complete_issues(
                completions, None if keep is None else recorded
            )
        except KeyferryError as error:
            log.exception(
                "store failed after Vault issued; undoing the batch",
                leases=len(asked),
                error=error.message,
                request_id=asked[0][0].request_id,
            )
            await asyncio.gather(*(self._undo(o, i.lease, error) for o, i in asked))
            return [error] * len(asked)
        results: list[TrackedCredential | KeyferryError] = []
        for (_, issued), outcome in zip(asked, outcomes, strict=True):
            if isinstance(outcome, LeaseStateConflict):
                await self._revoke_quietly(issued.lease)  # as in `_record`
                results.append(outcome)
            else:
                results.append(TrackedCredential(outcome, issued.credential, issued.lease, False))
        done = [(order, r) for (order, _), r in zip(asked, results, strict=True)]
        if keep is not None:
            return results  # recorded with the change, in its transaction
        try:
            await asyncio.gather(
                *(
                    self._audit.lease_change(
                        order.who,
                        AuditAction.LEASE_ACTIVE,
                        tracked.lease,
                        order.request_id,
                        credential=tracked.credential,
                    )
                    for order, tracked in done
                    if isinstance(tracked, TrackedCredential)
                )
            )
        except KeyferryError as error:  # as in `_record`: recorded, not handed out
            return [error if isinstance(r, TrackedCredential) else r for _, r in done]
        return results

    async def _ask_vault(self, order: IssueOrder) -> IssuedSecret:
        try:
            issued = await self._backends.for_role(order.role).issue(
                order.role, issue_context(order.pending)
            )
        except KeyferryError as error:
            await self.fail(order.pending, order.who, error, order.request_id)
            raise
        if order.shape is None:
            return issued
        try:
            return await order.shape(issued)
        except KeyferryError as error:
            await self._undo(order, issued.lease, error)
            raise

    async def _record(self, order: IssueOrder, issued: IssuedSecret) -> TrackedCredential:
        pending, vault_lease = order.pending, issued.lease
        keep = self._audit.keeper()

        def recorded(connection: Connection, lease: LeaseRecord) -> None:
            if keep is None:
                return
            active = self._audit.lease_change_event(
                order.who,
                AuditAction.LEASE_ACTIVE,
                lease,
                order.request_id,
                credential=issued.credential,
            )
            keep(connection, [active])

        try:
            record = await self._leases.complete_issue(
                pending.id,
                vault_lease.lease_id,
                vault_lease.expires_at,
                retire_after=order.retire_after,
                vault_lease=vault_lease.model_dump(mode="json"),
                sealed_credential=self._sealer.seal_lease(pending, issued.credential),
                recorded=None if keep is None else recorded,
            )
        except LeaseStateConflict:
            # The row turned revoking while Vault answered: the Revoker has the Vault lease
            # id now; revoked at once too, and the credential is not handed out.
            await self._revoke_quietly(vault_lease)
            raise
        except KeyferryError as error:
            log.exception(
                "store failed after Vault issued; revoking the Vault lease",
                lease_id=pending.id,
                error=error.message,
                request_id=order.request_id,
            )
            await self._undo(order, vault_lease, error)
            raise
        if keep is None:
            await self._audit.lease_change(
                order.who,
                AuditAction.LEASE_ACTIVE,
                record,
                order.request_id,
                credential=issued.credential,
            )
        return TrackedCredential(record, issued.credential, vault_lease, replayed=False)

    async def replay(
        self,
        lease: LeaseRecord,
        who: Principal,
        request_id: str,
        handle: LeaseHandle | None = None,
    ) -> TrackedCredential:
        """The live lease's credential again (a repeated call): Vault is not asked. A
        pending lease is waited for; one that does not become active is IssueInProgress.
        `handle`: the lease's handle as read with it (admit), used while it was active."""
        if lease.state is not LeaseState.ACTIVE or handle is None:
            lease = await self._wait_active(lease)
            handle = await self._leases.handle(lease.id)
        if handle.sealed_credential is None or handle.vault_lease is None:
            raise IssueInProgress(lease.pod_uid, lease.credential)
        credential = self._sealer.unseal_lease(lease, handle.sealed_credential)
        vault_lease = VaultLease.model_validate(handle.vault_lease)
        await self._audit.lease_change(who, AuditAction.LEASE_REPLAYED, lease, request_id)
        return TrackedCredential(lease, credential, vault_lease, replayed=True)

    async def _wait_active(self, lease: LeaseRecord) -> LeaseRecord:
        wait = self._wait
        deadline = wait.monotonic() + wait.limit
        while lease.state == LeaseState.PENDING and wait.monotonic() < deadline:
            await wait.sleep(wait.poll)
            lease = await self._leases.get(lease.id)
        if lease.state != LeaseState.ACTIVE:
            raise IssueInProgress(lease.pod_uid, lease.credential)
        return lease

    async def fail(
        self, pending: LeaseRecord, who: Principal, error: KeyferryError, request_id: str
    ) -> LeaseRecord | None:
        """Vault issued nothing for the pending row: it is final (`lease.failed`). Guarded:
        a row the store cannot close now is left pending for reconcile (None)."""
        try:
            failed = await self._leases.mark_failed(pending.id, error.message)
            await self._audit.lease_change(
                who, AuditAction.LEASE_FAILED, failed, request_id, reason=error.reason
            )
        except KeyferryError as also:
            log.exception("could not mark a lease failed", lease_id=pending.id, error=also.message)
            return None
        return failed

    async def _undo(self, order: IssueOrder, vault_lease: VaultLease, error: KeyferryError) -> None:
        if await self._undone_at_vault(order.role, vault_lease):
            await self.fail(order.pending, order.who, error, order.request_id)

    async def _undone_at_vault(self, role: RoleSpec, vault_lease: VaultLease) -> bool:
        """Whether nothing this issue created lives on at Vault."""
        if not self._backends.for_role(role).lifecycle(role).revocable:
            return True  # a KV read, an STS session: nothing at Vault to undo
        return await self._revoke_quietly(vault_lease)

    async def _revoke_quietly(self, vault_lease: VaultLease) -> bool:
        try:
            await self._backends.for_lease(vault_lease).revoke(vault_lease)
        except KeyferryError as error:
            log.exception(
                "could not revoke an issued Vault lease; reconcile must",
                vault_lease_id=vault_lease.lease_id,
                error=error.message,
            )
            return False
        return True

    # -- end -------------------------------------------------------------------------------

    async def end(
        self,
        lease: LeaseRecord,
        who: Principal,
        reason: str,
        request_id: str,
        *,
        vault_lease: VaultLease | None = None,
    ) -> LeaseRecord:
        """End a lease now: revoking (`lease.revoking`, with why), revoked at Vault and
        settled by the Revoker (`lease.revoked`). A lease already revoked or failed is
        returned as it is; one still being issued stays revoking for the Revoker (its
        Vault lease is recorded when the issue completes). A Vault that does not revoke
        now: the row keeps the error and a retry time, and the error is raised.
        `vault_lease`: the lease's Vault handle when the caller read it already (it does
        not change once recorded), so the Revoker need not read it again; when nothing at
        Vault holds it (a KV value), an active lease is ended in one store transaction
        and both records are one audit write."""
        if (
            vault_lease is not None
            and lease.state is LeaseState.ACTIVE
            and not self._backends.for_lease(vault_lease).revokes_at_vault
        ):
            ended = await self._revoker.end_at_once(lease, who, reason, request_id)
            if ended is not None:
                return ended
        keep = self._audit.keeper()
        kept: list[LeaseRecord] = []

        def recorded(connection: Connection, changed: LeaseRecord) -> None:
            if keep is None:
                return
            event = self._audit.lease_change_event(
                who, AuditAction.LEASE_REVOKING, changed, request_id, reason=reason
            )
            keep(connection, [event])
            kept.append(changed)

        marked = await self._leases.mark_revoking(
            lease.id,
            revoke_after=self._revoker.claimed_until(),
            recorded=None if keep is None else recorded,
        )
        if marked.state is not LeaseState.REVOKING:
            return marked
        if not kept:  # a file chain, or a lease already revoking (marked again)
            await self._audit.lease_change(
                who, AuditAction.LEASE_REVOKING, marked, request_id, reason=reason
            )
        return await self._revoker.revoke(marked, who, request_id, vault_lease=vault_lease)

    async def revoke_now(self, lease: LeaseRecord, who: Principal, request_id: str) -> LeaseRecord:
        """Bring a retiring lease's revocation forward (the pod Acked its successor): the row,
        revoking since the rotation (audited then, reason ROTATED), is revoked at Vault now
        and settled by the Revoker; Vault failures as in `end`. One that nothing at Vault
        holds (a KV value) is settled at once: one store transaction, not two."""
        handle = await self._leases.handle(lease.id)
        vault_lease = VaultLease.model_validate(handle.vault_lease) if handle.vault_lease else None
        if (
            vault_lease is not None
            and lease.state is LeaseState.REVOKING
            and not self._backends.for_lease(vault_lease).revokes_at_vault
        ):
            try:
                revoked, _ = await self._revoker.settle(lease.id, who, request_id)
            except LeaseStateConflict:
                pass  # not revoking any more: the usual way says what it is
            else:
                return revoked
        due = await self._leases.mark_revoking(lease.id, revoke_after=self._revoker.claimed_until())
        if due.state is not LeaseState.REVOKING:
            return due
        return await self._revoker.revoke(due, who, request_id, vault_lease=vault_lease)

    async def close_unissued(self, lease: LeaseRecord, who: Principal, request_id: str) -> bool:
        """Reconcile's end of a row whose issue died with a broker (no Vault lease recorded):
        a pending one fails, a revoking one is settled revoked (ABANDONED); False when its
        issue completed meanwhile or someone else settled it."""
        if lease.state is LeaseState.PENDING:
            try:
                failed = await self._leases.mark_failed(
                    lease.id, "abandoned: no Vault lease recorded"
                )
            except LeaseStateConflict:
                return False  # its issue completed meanwhile: nothing to settle
            await self._audit.lease_change(
                who, AuditAction.LEASE_FAILED, failed, request_id, reason="ABANDONED"
            )
            return True
        return await self._settle(lease.id, who, request_id, "ABANDONED")

    async def close_gone(self, lease_id: str, who: Principal, request_id: str) -> bool:
        """Reconcile's end of a lease Vault no longer knows (expired, or revoked behind
        keyferry's back): settled revoked (NOT_IN_VAULT), the pod told; False when whoever
        revoked it settled it first."""
        return await self._settle(lease_id, who, request_id, "NOT_IN_VAULT")

    async def _settle(self, lease_id: str, who: Principal, request_id: str, reason: str) -> bool:
        try:
            _, settled = await self._revoker.settle(lease_id, who, request_id, reason=reason)
        except LeaseStateConflict:
            return False  # not revocable from its state (its issue completed, or failed)
        return settled


@dataclass(frozen=True)
class _Read:
    """Orders answered by one Vault read (or one order on its own) and their places."""

    orders: tuple[IssueOrder, ...]
    indexes: tuple[int, ...]


def _by_read(orders: Sequence[IssueOrder], engine: LeaseEngine) -> list[_Read]:
    """Orders of one shared role (no shaping step) together, every other order alone."""
    shared: dict[str, list[int]] = {}
    alone: list[_Read] = []
    for index, order in enumerate(orders):
        if order.shape is None and engine.shares_issue(order.role):
            shared.setdefault(order.role.name, []).append(index)
        else:
            alone.append(_Read((order,), (index,)))
    together = [
        _Read(tuple(orders[i] for i in indexes), tuple(indexes)) for indexes in shared.values()
    ]
    return together + alone


def issue_context(lease: LeaseRecord) -> IssueContext:
    """Whom Vault issues for: the lease row's owner (a pod, or a grant)."""
    return IssueContext(
        cluster=lease.cluster,
        namespace=lease.namespace,
        service_account=lease.service_account,
        pod=lease.pod_name,
        pod_uid=lease.pod_uid,
    )
