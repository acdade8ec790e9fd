"""Broker.Release: the caller gives back one of its own leases, revoked at Vault now.

The pod may be terminating (an agent releases at shutdown), so a terminating pod's token
is accepted here. A lease of another pod is reported as not found, like one that does not
exist, so a caller learns nothing about other pods' leases.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.backends import Backends
from broker.errors import InvalidRequest, KeyferryError, PermissionDenied
from broker.models import VaultLease
from broker.policy import Action, PolicyEngine
from broker.store import LeaseNotFound, LeaseRecord, LeaseState, Store, StoreRunner

from .auditing import AuditTrail
from .callers import Callers
from .resources import lease_resource

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
    ) -> None:
        self._callers = callers
        self._policy = policy
        self._audit = audit
        self._leases = store.leases
        self._run = runner.run
        self._backends = backends

    async def release(self, token: str, lease_id: str, request_id: str) -> LeaseRecord:
        workload = await self._callers.authenticate(token, allow_terminating=True)
        if not lease_id:
            raise InvalidRequest("lease_id", "is required: the id Issue returned in lease.id")
        lease = await self._run(self._leases.get, lease_id)
        if lease.pod_uid != workload.pod_uid or lease.cluster != workload.cluster:
            raise LeaseNotFound(lease_id)
        handle = await self._run(self._leases.handle, lease_id)
        vault_lease = VaultLease.model_validate(handle.vault_lease) if handle.vault_lease else None
        decision = self._policy.decide(workload, Action.RELEASE, lease_resource(lease, vault_lease))
        await self._audit.decision(
            workload,
            "release",
            decision,
            request_id,
            role=lease.role,
            credential=lease.credential,
            lease_id=lease.id,
        )
        if not decision.allowed:
            raise PermissionDenied(
                f"no policy permits {workload.namespace}/{workload.service_account} in cluster "
                f"{workload.cluster!r} to release lease {lease.id}"
            )
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
