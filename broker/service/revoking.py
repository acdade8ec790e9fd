"""Revoking leases the store has queued (state revoking): rotated-away generations after an
Ack or their grace period, and retries of revocations Vault did not answer.

The row is revoking before Vault is asked, and becomes revoked only after Vault answered,
so a Vault lease is never left alive without a row saying so. A failure records the error
and the next attempt time on the row; revocation never gives up.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import structlog

from broker.audit import Principal
from broker.backends import Backends
from broker.errors import KeyferryError
from broker.models import VaultLease
from broker.store import LeaseRecord, Store, StoreRunner
from broker.store.clock import Clock

from .auditing import AuditTrail, system_principal
from .events import EventHub, LeaseRevoked

log = structlog.get_logger("keyferry.revoke")
RETRY_AFTER = timedelta(seconds=30)
NOT_ISSUED_YET = "the Vault lease is not recorded yet (issue still running); retrying"
ROTATED, REVOKED = "rotated", "revoked"
SYSTEM_JOB = "broker.revoke"


class Revoker:
    def __init__(
        self,
        *,
        store: Store,
        runner: StoreRunner,
        backends: Backends,
        audit: AuditTrail,
        hub: EventHub,
        clock: Clock,
    ) -> None:
        self._leases = store.leases
        self._run = runner.run
        self._backends = backends
        self._audit = audit
        self._hub = hub
        self._clock = clock

    async def revoke(self, lease: LeaseRecord, who: Principal, request_id: str) -> LeaseRecord:
        """Revoke one revoking lease at Vault now and mark it revoked; on a Vault failure the
        row keeps the error and a retry time, and the error is raised."""
        handle = await self._run(self._leases.handle, lease.id)
        if handle.vault_lease is None:
            retry_at = self._clock() + RETRY_AFTER
            return await self._run(
                self._leases.record_revoke_failure, lease.id, NOT_ISSUED_YET, retry_at
            )
        vault_lease = VaultLease.model_validate(handle.vault_lease)
        try:
            await self._backends.for_lease(vault_lease).revoke(vault_lease)
        except KeyferryError as error:
            retry_at = self._clock() + RETRY_AFTER
            await self._run(self._leases.record_revoke_failure, lease.id, error.message, retry_at)
            raise
        revoked = await self._run(self._leases.mark_revoked, lease.id)
        reason = await self._reason(revoked)
        await self._audit.lease_change(
            who, "lease.revoked", revoked, request_id, reason=reason.upper()
        )
        self._hub.publish(revoked.pod_uid, LeaseRevoked(revoked.id, reason))
        log.info("lease revoked", lease_id=revoked.id, reason=reason, request_id=request_id)
        return revoked

    async def revoke_due(self) -> int:
        """One pass over the revocations that are due; how many succeeded."""
        due = await self._run(self._leases.leases_to_revoke, self._clock())
        done = 0
        for lease in due:
            try:
                await self.revoke(lease, system_principal(SYSTEM_JOB), uuid.uuid4().hex)
            except KeyferryError as error:
                log.warning("revocation failed; will retry", lease_id=lease.id, error=error.message)
            else:
                done += 1
        return done

    async def _reason(self, lease: LeaseRecord) -> str:
        """`rotated` when a newer generation of the credential is live, else `revoked`."""
        live = await self._run(self._leases.find_live, lease.pod_uid, lease.credential)
        superseded = live is not None and live.generation > lease.generation
        return ROTATED if superseded else REVOKED
