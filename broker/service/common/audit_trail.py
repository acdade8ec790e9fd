"""The broker's side of the audit trail: events built from typed facts, written off the loop.

Writing blocks on fsync, so it runs on one dedicated thread. Records are group-committed:
while one write is on its way to the disk, the records of other calls queue; the next
write seals the whole queue in arrival order and writes it with one fsync
(AuditLog.append_all). Each caller still waits until its own record is on disk. A record
that cannot be written raises AuditUnavailable to every caller of its batch, and those
requests are refused: nothing is issued or revoked that the trail does not show.

Refusals before any policy ran (a bad token, a pod that is gone) are the exception to one
record per event: the first of a kind is written at once, the rest are counted and
summarised every `refusal_summary` (broker.service.common.refusals).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Connection

from broker import tracing
from broker.audit import (
    AuditAction,
    AuditChain,
    AuditEvent,
    Decision,
    Fingerprinter,
    Principal,
    PrincipalKind,
    StoreChainLog,
)
from broker.errors import KeyferryError
from broker.models import Credential
from broker.policy import Action, Operator, Workload
from broker.policy import Decision as PolicyDecision
from broker.store import GrantRecord, LeaseRecord, RowTampered

from .grant_terms import grant_where
from .refusals import CALLER_PEER, RefusalKind, RefusalTally, peer_host

log = structlog.get_logger("keyferry.audit")
_FINGERPRINT_NAME = re.compile(r"[^a-z0-9_.-]")
# Who a refused token claims to be is not known to be true: such callers are recorded as this.
UNAUTHENTICATED = Principal(kind=PrincipalKind.WORKLOAD, name="unauthenticated")
DEFAULT_REFUSAL_SUMMARY = timedelta(seconds=60)
INTEGRITY_CHECK = "broker.integrity"


def principal_of(workload: Workload) -> Principal:
    return Principal(
        kind=PrincipalKind.WORKLOAD,
        name=f"{workload.cluster}/{workload.namespace}/{workload.service_account}",
    )


def operator_principal(operator: Operator) -> Principal:
    return Principal(kind=PrincipalKind.OPERATOR, name=operator.name)


def system_principal(job: str) -> Principal:
    """The broker acting on its own (renewals, revocations that come due)."""
    return Principal(kind=PrincipalKind.SYSTEM, name=job)


def decided(action: Action) -> AuditAction:
    """The audit action of a Cedar decision: the Cedar action's own name."""
    return AuditAction(action.value)


def _decision(decision: PolicyDecision, reason: str | None) -> Decision:
    """A step refused for a reason of its own (self-approval) is a deny even when a
    policy permitted it."""
    return Decision.ALLOW if decision.allowed and reason is None else Decision.DENY


def lease_where(lease: LeaseRecord) -> dict[str, Any]:
    return {
        "cluster": lease.cluster,
        "namespace": lease.namespace,
        "pod": lease.pod_name,
        "pod_uid": lease.pod_uid,
    }


def where(workload: Workload) -> dict[str, Any]:
    return {
        "cluster": workload.cluster,
        "namespace": workload.namespace,
        "pod": workload.pod,
        "pod_uid": workload.pod_uid,
    }


class AuditTrail:
    def __init__(
        self,
        log: AuditChain,
        fingerprinter: Fingerprinter,
        refusal_summary: timedelta = DEFAULT_REFUSAL_SUMMARY,
    ) -> None:
        self.log = log
        self._fingerprinter = fingerprinter
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="keyferry-audit")
        self._queue: list[tuple[AuditEvent, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._refusals = RefusalTally()
        self._refusal_summary = refusal_summary
        self._summarising: asyncio.Task[None] | None = None
        self._rows_refused: set[tuple[str, str]] = set()

    async def record(self, event: AuditEvent) -> None:
        """Write the record before returning; AuditUnavailable if it is not on disk. With
        tracing on, the record carries the trace id of the request that caused it."""
        with tracing.span("audit", {"keyferry.audit.action": event.action}):
            found = tracing.trace_id()
            if found is not None and event.trace_id is None:
                event = event.model_copy(update={"trace_id": found})
            loop = asyncio.get_running_loop()
            written: asyncio.Future[None] = loop.create_future()
            self._queue.append((event, written))
            writer = self._writer
            if writer is None or writer.done() or writer.get_loop() is not loop:
                self._writer = loop.create_task(self._write_queued())
            await written

    async def _write_queued(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await loop.run_in_executor(
                    self._pool, self.log.append_all, [event for event, _ in batch]
                )
            except Exception as exc:  # every caller of the batch is refused with it
                for _, written in batch:
                    if not written.done():
                        written.set_exception(exc)
            else:
                for _, written in batch:
                    if not written.done():
                        written.set_result(None)

    def keeper(self) -> Callable[[Connection, Sequence[AuditEvent]], None] | None:
        """When the chain is the store's (`audit.sink: store`): a function that keeps
        events in the chain inside a store transaction the caller holds, so a lease's
        change and its records commit together (a replica killed between the two leaves
        neither). None with a file chain: the caller records as usual, after the change.
        Call it on the loop (it takes the request's trace id with it)."""
        chain = self.log
        if not isinstance(chain, StoreChainLog):
            return None
        trace = tracing.trace_id()

        def keep(connection: Connection, events: Sequence[AuditEvent]) -> None:
            chain.append_on(
                connection,
                [
                    e if trace is None or e.trace_id else e.model_copy(update={"trace_id": trace})
                    for e in events
                ],
            )

        return keep

    async def decision(
        self,
        workload: Workload,
        action: AuditAction,
        decision: PolicyDecision,
        request_id: str,
        **fields: Any,
    ) -> None:
        await self.record(
            AuditEvent(
                who=principal_of(workload),
                action=action,
                decision=Decision.ALLOW if decision.allowed else Decision.DENY,
                reason=None if decision.allowed else "POLICY_DENIED",
                policy_ids=decision.policy_ids,
                request_id=request_id,
                **where(workload),
                **fields,
            )
        )

    def refusal(
        self, action: AuditAction, request_id: str
    ) -> Callable[[KeyferryError, Workload | None], Awaitable[None]]:
        """A callback recording a caller refused before any policy ran (a bad token, a pod
        that is gone): a deny record with the error's reason, the caller's address, and the
        pod when the token proved one. Only the first refusal of a kind is written at
        once; the rest are counted into the next summary record."""

        async def refused(error: KeyferryError, workload: Workload | None) -> None:
            known = {k: v or None for k, v in where(workload).items()} if workload else {}
            kind = RefusalKind(
                who=principal_of(workload) if workload else UNAUTHENTICATED,
                action=action,
                reason=error.reason,
                peer=peer_host(CALLER_PEER.get()),
                **known,
            )
            if self._refusals.note(kind):
                await self.record(_refusal_event(kind, request_id=request_id))
            else:
                self._summarise_later()

        return refused

    def _summarise_later(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._summarising
        if task is None or task.done() or task.get_loop() is not loop:
            self._summarising = loop.create_task(self._summarise())

    async def _summarise(self) -> None:
        await asyncio.sleep(self._refusal_summary.total_seconds())
        events = [_refusal_event(kind, count=n) for kind, n in self._refusals.take()]
        if events:
            await asyncio.gather(*(self.record(event) for event in events))

    async def flush_refusals(self) -> None:
        """Write the counted refusals now (tests, and a broker that stops)."""
        if self._summarising is not None:
            self._summarising.cancel()
        events = [_refusal_event(kind, count=n) for kind, n in self._refusals.take()]
        if events:
            await asyncio.gather(*(self.record(event) for event in events))

    async def not_yours(
        self,
        workload: Workload,
        action: AuditAction,
        lease: LeaseRecord,
        reason: str,
        request_id: str,
    ) -> None:
        """A pod asked to act on another pod's lease: denied, recorded with both pods."""
        await self.record(
            AuditEvent(
                who=principal_of(workload),
                action=action,
                decision=Decision.DENY,
                reason=reason,
                request_id=request_id,
                role=lease.role,
                credential=lease.credential,
                lease_id=lease.id,
                **where(workload),
            )
        )

    async def lease(
        self,
        workload: Workload,
        action: AuditAction,
        lease: LeaseRecord,
        request_id: str,
        *,
        credential: Credential | None = None,
        reason: str | None = None,
        target: str | None = None,
    ) -> None:
        """A lease's state change; a new credential appears only as fingerprints. `target`:
        what else it acted on (the app container a restart ended)."""
        await self.record(
            AuditEvent(
                who=principal_of(workload),
                action=action,
                reason=reason,
                target=target,
                role=lease.role,
                credential=lease.credential,
                lease_id=lease.id,
                generation=lease.generation,
                request_id=request_id,
                fingerprints=self.fingerprints(credential) if credential else {},
                **where(workload),
            )
        )

    async def decision_on_lease(
        self,
        who: Principal,
        action: AuditAction,
        decision: PolicyDecision,
        lease: LeaseRecord,
        request_id: str,
    ) -> None:
        """A decision about one lease by a principal other than its own pod's workload."""
        await self.record(
            AuditEvent(
                who=who,
                action=action,
                decision=Decision.ALLOW if decision.allowed else Decision.DENY,
                reason=None if decision.allowed else "POLICY_DENIED",
                policy_ids=decision.policy_ids,
                request_id=request_id,
                role=lease.role,
                credential=lease.credential,
                lease_id=lease.id,
                generation=lease.generation,
                **lease_where(lease),
            )
        )

    async def operator_decision(
        self,
        operator: Operator,
        action: AuditAction,
        decision: PolicyDecision,
        request_id: str,
        *,
        role: str | None = None,
        cluster: str | None = None,
        target: str | None = None,
    ) -> None:
        """An operator's decision about something other than a lease (a role, a cluster,
        a Vault path, the broker)."""
        await self.record(
            AuditEvent(
                who=operator_principal(operator),
                action=action,
                decision=Decision.ALLOW if decision.allowed else Decision.DENY,
                reason=None if decision.allowed else "POLICY_DENIED",
                policy_ids=decision.policy_ids,
                request_id=request_id,
                role=role,
                cluster=cluster,
                target=target,
            )
        )

    async def operator_refusal(
        self,
        operator: Operator,
        action: AuditAction,
        error: KeyferryError,
        request_id: str,
        *,
        cluster: str | None = None,
    ) -> None:
        """An operator's request that policy allowed but the broker refused (a cluster that
        fails its checks): a deny record with the error's reason."""
        await self.record(
            AuditEvent(
                who=operator_principal(operator),
                action=action,
                decision=Decision.DENY,
                reason=error.reason,
                request_id=request_id,
                cluster=cluster,
            )
        )

    async def cluster_change(
        self, approver: Operator, action: AuditAction, name: str, grant_id: str, request_id: str
    ) -> None:
        """A registry change carried out on a second operator's approval (`target` is the
        approving grant; its `access.request` and `access.approve` records say who asked
        and who approved)."""
        await self.record(
            AuditEvent(
                who=operator_principal(approver),
                action=action,
                decision=Decision.ALLOW,
                request_id=request_id,
                cluster=name,
                target=f"grant/{grant_id}",
            )
        )

    async def lease_change(
        self,
        who: Principal,
        action: AuditAction,
        lease: LeaseRecord,
        request_id: str,
        *,
        credential: Credential | None = None,
        reason: str | None = None,
    ) -> None:
        """A lease's state change made by an operator or by the broker itself."""
        await self.record(
            self.lease_change_event(
                who, action, lease, request_id, credential=credential, reason=reason
            )
        )

    def lease_change_event(
        self,
        who: Principal,
        action: AuditAction,
        lease: LeaseRecord,
        request_id: str,
        *,
        credential: Credential | None = None,
        reason: str | None = None,
    ) -> AuditEvent:
        """The event `lease_change` records (for `keeper`, inside the change's transaction)."""
        return AuditEvent(
            who=who,
            action=action,
            reason=reason,
            role=lease.role,
            credential=lease.credential,
            lease_id=lease.id,
            generation=lease.generation,
            request_id=request_id,
            fingerprints=self.fingerprints(credential) if credential else {},
            **lease_where(lease),
        )

    async def grant(
        self,
        who: Principal,
        action: AuditAction,
        grant: GrantRecord,
        request_id: str,
        *,
        decision: PolicyDecision | None = None,
        reason: str | None = None,
    ) -> None:
        """A step of a just-in-time grant. The grant is the owner (`pod` its id, `pod_uid`
        `grant:<id>`, as on its lease's records); the requester's free-text reason is kept
        as a fingerprint only, which ties the record to the reason stored with the grant."""
        allowed = decision is None or decision.allowed
        await self.record(
            AuditEvent(
                who=who,
                action=action,
                decision=None if decision is None else _decision(decision, reason),
                reason=reason if reason is not None else (None if allowed else "POLICY_DENIED"),
                policy_ids=() if decision is None else decision.policy_ids,
                request_id=request_id,
                role=grant.role,
                lease_id=grant.lease_id,
                fingerprints={"reason": self._fingerprinter.fingerprint(grant.reason)},
                **grant_where(grant.id),
            )
        )

    async def row_refused(self, error: RowTampered) -> bool:
        """A role or cluster row that failed its integrity check: recorded once per row and
        broker life (every Issue of a tampered role is refused, not every one recorded);
        whether this call wrote it."""
        key = (error.table, error.key)
        if key in self._rows_refused:
            return False
        self._rows_refused.add(key)
        log.error("store row refused", table=error.table, row=error.key, error=error.message)
        await self.record(
            AuditEvent(
                who=system_principal(INTEGRITY_CHECK),
                action=AuditAction.STORE_ROW_REFUSED,
                decision=Decision.DENY,
                reason=error.audit_reason,
                target=f"{error.table}/{error.key}"[:253],
                role=error.key if error.table == "roles" else None,
                cluster=error.key if error.table == "clusters" else None,
            )
        )
        return True

    def fingerprints(self, credential: Credential) -> dict[str, str]:
        found: dict[str, str] = {}
        for index, (name, value) in enumerate(sorted(credential.values.items())):
            key = _FINGERPRINT_NAME.sub("_", name.lower())[:64]
            if not key[:1].isalpha():
                key = f"value.{index}"
            found[key] = self._fingerprinter.fingerprint(value)
        return found

    def close(self) -> None:
        """Write the counted refusals not yet summarised, then stop the writer thread."""
        if self._summarising is not None:
            self._summarising.cancel()
        events = [_refusal_event(kind, count=n) for kind, n in self._refusals.take()]
        if events:
            try:
                self._pool.submit(self.log.append_all, events).result()
            except Exception:  # the broker is stopping; the log says what was lost
                log.warning("refusal summaries not written at stop", kinds=len(events))
        self._pool.shutdown(wait=True)


def _refusal_event(
    kind: RefusalKind, *, request_id: str | None = None, count: int | None = None
) -> AuditEvent:
    return AuditEvent(
        who=kind.who,
        action=kind.action,
        decision=Decision.DENY,
        reason=kind.reason,
        request_id=request_id,
        peer=kind.peer,
        count=count,
        cluster=kind.cluster,
        namespace=kind.namespace,
        pod=kind.pod,
        pod_uid=kind.pod_uid,
    )
