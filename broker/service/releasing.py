"""Broker.Release: the caller gives back one of its own leases, revoked at Vault now.

The pod may be terminating (an agent releases at shutdown), so a terminating pod's token
is accepted here. Another pod's lease is not found (own_leases.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.backends import Backends
from broker.errors import KeyferryError
from broker.models import VaultLease
from broker.policy import Action, PolicyEngine
from broker.store import LeaseRecord, LeaseState, Store, StoreRunner

from .auditing import AuditTrail
from .callers import Callers
from .limits import LeaseCallRates
from .own_leases import OwnLeaseGate

FINAL = frozenset({LeaseState.REVOKED, LeaseState.FAILED})
REVOKE_RETRY = timedelta(seconds=30)


class ReleaseFlow:
    def __init__(
        self,
        *,
        callers: Callers,
        policy: PolicyEngine,
        audit: AuditTrail,
        store: Store,
        runner: StoreRunner,
        backends: Backends,
        rates: LeaseCallRates,
    ) -> None:
        self._gate = OwnLeaseGate(callers, policy, audit, store, runner, rates)
        self._audit = audit
        self._leases = store.leases
        self._run = runner.run
        self._backends = backends

    async def release(self, token: str, lease_id: str, request_id: str) -> LeaseRecord:
        own = await self._gate.authorize(
            token, lease_id, Action.RELEASE, request_id, allow_terminating=True
        )
        workload, lease, vault_lease = own.workload, own.lease, own.vault_lease
        if lease.state in FINAL:
            return lease
        revoking = await self._run(self._leases.mark_revoking, lease.id)
        await self._audit.lease(workload, "lease.revoking", revoking, request_id)
        if vault_lease is None:
            # Still pending: complete_issue records the Vault lease id on the revoking row,
            # and the revoker ends it.
            return revoking
        await self._revoke(vault_lease, revoking)
        revoked = await self._run(self._leases.mark_revoked, lease.id)
        await self._audit.lease(workload, "lease.revoked", revoked, request_id)
        return revoked

    async def _revoke(self, vault_lease: VaultLease, lease: LeaseRecord) -> None:
        try:
            await self._backends.for_lease(vault_lease).revoke(vault_lease)
        except KeyferryError as error:
            # The row stays revoking with the error; revocation is retried until it succeeds.
            retry_at = datetime.now(UTC) + REVOKE_RETRY
            await self._run(self._leases.record_revoke_failure, lease.id, error.message, retry_at)
            raise
