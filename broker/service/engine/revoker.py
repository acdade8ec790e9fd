"""Revoking leases the store has queued (state revoking): rotated-away generations after an
Ack or their grace period, and retries of revocations Vault did not answer.

The row is revoking before Vault is asked, and becomes revoked only after Vault answered,
so a Vault lease is never left alive without a row saying so. A failure records the error
and the next attempt time on the row, and an audit record (`lease.revoke_failed`);
revocation never gives up. The wait doubles with each failed attempt from
`revocation.backoff` up to `revocation.backoff_cap`, with up to a tenth
taken off at random so a Vault outage does not end in one stampede of retries. The
revoking rows are the queue: the leader's pass reads them, whoever queued them.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection

from broker.audit import AuditAction, AuditEvent, Principal
from broker.backends import Backends
from broker.clock import Clock
from broker.errors import KeyferryError
from broker.models import VaultLease
from broker.store import AsyncStore, EndedAtOnce, LeaseRecord

from ..common.audit_trail import AuditTrail, system_principal
from ..events.hub import EventHub, LeaseRevoked

log = structlog.get_logger("keyferry.revoke")
CLAIM_MARGIN = timedelta(seconds=5)  # beyond the Vault call's own timeout
DEFAULT_CLAIM = timedelta(seconds=10) + CLAIM_MARGIN  # with Vault's default call timeout
RETRY_AFTER = timedelta(seconds=30)  # an issue still running: its Vault lease is not known
NOT_ISSUED_YET = "the Vault lease is not recorded yet (issue still running); retrying"
ROTATED, REVOKED = "rotated", "revoked"
SYSTEM_JOB = "broker.revoke"


@dataclass(frozen=True)
class Backoff:
    """Waits between revocation attempts: `first`, doubled per failure, at most `cap`."""

    first: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(minutes=10)

    def after(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failure (1 = the first), jitter included."""
        wait: timedelta = min(self.cap, self.first * (2 ** min(max(attempts - 1, 0), 32)))
        spread = 1 - random.random() / 10  # noqa: S311 - spread, not secrecy
        return wait * spread


class Revoker:
    def __init__(
        self,
        *,
        store: AsyncStore,
        backends: Backends,
        audit: AuditTrail,
        hub: EventHub,
        clock: Clock,
        backoff: Backoff | None = None,
        claim: timedelta = DEFAULT_CLAIM,
    ) -> None:
        self._leases = store.leases
        self._backends = backends
        self._audit = audit
        self._hub = hub
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._claim = claim

    def claimed_until(self) -> datetime:
        """When a revocation a call starts now becomes the periodic pass's to do: the call
        owns the row until then, so the pass does not revoke it beside the call (and record
        it under its own request id); a call that dies leaves it to the pass after this."""
        return self._clock() + self._claim

    async def revoke(
        self,
        lease: LeaseRecord,
        who: Principal,
        request_id: str,
        *,
        vault_lease: VaultLease | None = None,
    ) -> LeaseRecord:
        """Revoke one revoking lease at Vault now and mark it revoked; on a Vault failure the
        row keeps the error and a retry time, and the error is raised. `vault_lease`: its
        Vault handle when the caller holds it already (else it is read from the row)."""
        if vault_lease is None:
            handle = await self._leases.handle(lease.id)
            if handle.vault_lease is None:
                retry_at = self._clock() + RETRY_AFTER
                return await self._leases.record_revoke_failure(lease.id, NOT_ISSUED_YET, retry_at)
            vault_lease = VaultLease.model_validate(handle.vault_lease)
        try:
            await self._backends.for_lease(vault_lease).revoke(vault_lease)
        except KeyferryError as error:
            await self._record_failure(lease, who, request_id, error)
            raise
        revoked, _ = await self.settle(lease.id, who, request_id)
        return revoked

    async def end_at_once(
        self, lease: LeaseRecord, who: Principal, reason: str, request_id: str
    ) -> LeaseRecord | None:
        """End an active lease that nothing at Vault holds (a KV value) in one store
        transaction, then record `lease.revoking` (with `reason`) and `lease.revoked` in
        one audit write and tell its pod, as `end` and `settle` would one after the other.
        None when the row was not active: the caller ends it the usual way."""
        keep = self._audit.keeper()

        def events(done: EndedAtOnce) -> list[AuditEvent]:
            why = ROTATED if done.superseded else REVOKED
            change = self._audit.lease_change_event
            return [
                change(who, AuditAction.LEASE_REVOKING, done.revoking, request_id, reason=reason),
                change(
                    who, AuditAction.LEASE_REVOKED, done.revoked, request_id, reason=why.upper()
                ),
            ]

        def recorded(connection: Connection, done: EndedAtOnce) -> None:
            if keep is None:
                return
            keep(connection, events(done))

        ended = await self._leases.end_at_once(lease.id, None if keep is None else recorded)
        if ended is None:
            return None
        why = ROTATED if ended.superseded else REVOKED
        if keep is None:
            await asyncio.gather(*(self._audit.record(event) for event in events(ended)))
        revoked = ended.revoked
        self._hub.publish(revoked.pod_key, LeaseRevoked(revoked.id, why))
        log.info("lease revoked", lease_id=revoked.id, reason=why, request_id=request_id)
        return revoked

    async def settle(
        self, lease_id: str, who: Principal, request_id: str, *, reason: str | None = None
    ) -> tuple[LeaseRecord, bool]:
        """Mark a lease revoked that Vault no longer holds, and whether this call did: only
        that call records it (`lease.revoked`, with `reason`, or ROTATED / REVOKED) and
        tells its pod, so two replicas (or the Revoker and reconcile) that both saw it go
        record it once. LeaseStateConflict for a lease that was never issued (failed)."""
        keep = self._audit.keeper()
        seen: list[str] = []

        def recorded(connection: Connection, done: LeaseRecord, superseded: bool) -> None:
            if keep is None:
                return
            seen.append(ROTATED if superseded else REVOKED)
            event = self._audit.lease_change_event(
                who, AuditAction.LEASE_REVOKED, done, request_id, reason=reason or seen[-1].upper()
            )
            keep(connection, [event])

        revoked, settled = await self._leases.settle_revoked(
            lease_id, None if keep is None else recorded
        )
        if not settled:
            return revoked, False  # another replica (or call) revoked it first and said so
        if seen:  # recorded with the change, in its transaction
            why = seen[-1]
        else:
            why = await self._reason(revoked)
            await self._audit.lease_change(
                who, AuditAction.LEASE_REVOKED, revoked, request_id, reason=reason or why.upper()
            )
        self._hub.publish(revoked.pod_key, LeaseRevoked(revoked.id, why))
        log.info("lease revoked", lease_id=revoked.id, reason=why, request_id=request_id)
        return revoked, True

    async def revoke_due(self) -> int:
        """One pass over the revocations that are due; how many succeeded."""
        due = await self._leases.leases_to_revoke(self._clock())
        done = 0
        for lease in due:
            try:
                await self.revoke(lease, system_principal(SYSTEM_JOB), uuid.uuid4().hex)
            except KeyferryError as error:
                log.warning("revocation not done", lease_id=lease.id, error=error.message)
            else:
                done += 1
        return done

    async def _record_failure(
        self, lease: LeaseRecord, who: Principal, request_id: str, error: KeyferryError
    ) -> None:
        retry_at = self._clock() + self._backoff.after(lease.revoke_attempts + 1)
        failed = await self._leases.record_revoke_failure(lease.id, error.message, retry_at)
        log.warning(
            "revocation failed; will retry",
            lease_id=lease.id,
            attempts=failed.revoke_attempts,
            retry_at=retry_at.isoformat(),
            error=error.message,
        )
        try:
            await self._audit.lease_change(
                who, AuditAction.LEASE_REVOKE_FAILED, failed, request_id, reason=error.reason
            )
        except KeyferryError as also:  # the row keeps the retry either way
            log.warning("revocation failure not audited", lease_id=lease.id, error=also.message)

    async def _reason(self, lease: LeaseRecord) -> str:
        """`rotated` when a newer generation of the credential is live, else `revoked`."""
        live = await self._leases.find_live(lease.cluster, lease.pod_uid, lease.credential)
        superseded = live is not None and live.generation > lease.generation
        return ROTATED if superseded else REVOKED
