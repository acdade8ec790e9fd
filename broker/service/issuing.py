"""Broker.Issue, step by step, each step refusing with its own typed error.

token → pod still bound → rate limits → credential name → role → Cedar → audit the decision → caps →
pending row (before Vault) → Vault → complete the row → audit → credential.

Idempotent per (pod UID, credential name): when the store already holds a live lease for
them, its sealed credential is returned and Vault is not asked (see sealing.py), unless that
lease has run out unrenewed: then it goes to the revoker and Vault issues a new one. If the
store cannot record what Vault issued, the Vault lease is revoked before the error is
returned, so no credential exists that the store does not know about.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass

import structlog

from broker.backends import Backends
from broker.errors import InvalidRequest, KeyferryError, PermissionDenied, Unauthenticated
from broker.models import IssueContext, IssuedSecret, RoleSpec, VaultLease
from broker.policy import Action, PolicyEngine, RoleResource, Workload
from broker.store import (
    ExistingLease,
    IssueInProgress,
    LeaseRecord,
    LeaseRequest,
    LeaseState,
    LeaseStateConflict,
    PendingLease,
    Store,
    StoreRunner,
)
from broker.store.clock import Clock, utcnow

from .auditing import AuditTrail
from .callers import Callers
from .catalog import RoleCatalog
from .limits import IssueRates, check_limits
from .names import check_credential_name
from .results import IssuedLease
from .sealing import CredentialSealer

log = structlog.get_logger("keyferry.issue")
PENDING_POLL = 0.05
PENDING_WAIT = 15.0  # longer than one Vault call may take (VaultSettings.timeout)
ENDED_RETRIES = 3  # an ended lease retired, then Issue begins again (a race may need a second)


@dataclass(frozen=True)
class IssueLimits:
    per_pod: int
    per_cluster: int


class IssueFlow:
    def __init__(
        self,
        *,
        callers: Callers,
        catalog: RoleCatalog,
        policy: PolicyEngine,
        audit: AuditTrail,
        store: Store,
        runner: StoreRunner,
        backends: Backends,
        sealer: CredentialSealer,
        limits: IssueLimits,
        rates: IssueRates,
        clock: Clock = utcnow,
    ) -> None:
        self._callers = callers
        self._catalog = catalog
        self._policy = policy
        self._audit = audit
        self._leases = store.leases
        self._run = runner.run
        self._runner = runner
        self._backends = backends
        self._sealer = sealer
        self._limits = limits
        self._rates = rates
        self._clock = clock
        self._admitting: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        """Per cluster: counting live leases and writing the pending row are one step, or a
        burst of new pods all count below the cap and all get a lease. One replica: with
        several, the count and the insert need one database transaction under a lock."""

    async def issue(
        self, token: str, credential_name: str, role_name: str, request_id: str
    ) -> IssuedLease:
        workload = await self._callers.authenticate(
            token, refused=self._audit.refusal("issue", request_id)
        )
        self._rates.check(workload)
        check_credential_name(credential_name)
        if not role_name:
            raise InvalidRequest("role", "is required: the keyferry role to issue from")
        role = (await self._catalog.get(role_name)).spec
        decision = self._policy.decide(
            workload,
            Action.ISSUE,
            RoleResource(name=role.name, backend=role.kind),
            {"credential_name": credential_name},
        )
        await self._audit.decision(
            workload, "issue", decision, request_id, role=role.name, credential=credential_name
        )
        if not decision.allowed:
            raise PermissionDenied(
                f"no policy permits {workload.namespace}/{workload.service_account} in cluster "
                f"{workload.cluster!r} to issue role {role.name!r}; ask for a Cedar permit"
            )
        request = LeaseRequest(
            cluster=workload.cluster,
            namespace=workload.namespace,
            service_account=workload.service_account,
            pod_name=workload.pod,
            pod_uid=workload.pod_uid,
            credential=credential_name,
            role=role.name,
        )
        for _ in range(ENDED_RETRIES):
            begun = await self._begin(workload, request)
            if not (isinstance(begun, ExistingLease) and self._ended(begun.lease)):
                break
            await self._retire_ended(workload, begun.lease, request_id)
        if isinstance(begun, ExistingLease):
            if self._ended(begun.lease):  # retired and re-found each time: a retry will do
                raise IssueInProgress(begun.lease.pod_uid, begun.lease.credential)
            return await self._replay(workload, begun.lease, role, request_id)
        pending = begun.lease
        try:
            issued = await self._backends.for_role(role).issue(role, _context(workload))
        except KeyferryError as error:
            await self._settle_failed(workload, pending, error, request_id)
            raise
        return await self._complete(workload, pending, issued, request_id)

    async def _begin(
        self, workload: Workload, request: LeaseRequest
    ) -> PendingLease | ExistingLease:
        async with self._admitting[workload.cluster]:
            live = await self._run(self._leases.find_live, workload.pod_uid, request.credential)
            if live is None:
                await check_limits(
                    self._leases,
                    self._runner,
                    workload,
                    self._limits.per_pod,
                    self._limits.per_cluster,
                )
            return await self._run(self._leases.begin_issue, request)

    def _ended(self, lease: LeaseRecord) -> bool:
        """An active lease whose Vault lease has run out (nobody renewed it: its pod held
        no Watch, or the broker was away): its credential no longer works anywhere."""
        ends = lease.expires_at
        return lease.state is LeaseState.ACTIVE and ends is not None and ends <= self._clock()

    async def _retire_ended(self, workload: Workload, lease: LeaseRecord, request_id: str) -> None:
        """Hand the ended lease to the revoker (Vault has already dropped it; revoking is
        harmless there) so the next pass of Issue asks Vault for a new credential instead of
        replaying a dead one."""
        try:
            revoking = await self._run(
                self._leases.mark_revoking, lease.id, revoke_after=self._clock()
            )
        except LeaseStateConflict:
            return  # a concurrent call retired it first
        await self._audit.lease(workload, "lease.revoking", revoking, request_id, reason="EXPIRED")
        log.info("lease past its end retired; issuing anew", lease_id=lease.id)

    async def _complete(
        self, workload: Workload, pending: LeaseRecord, issued: IssuedSecret, request_id: str
    ) -> IssuedLease:
        vault_lease = issued.lease
        try:
            record = await self._run(
                self._leases.complete_issue,
                pending.id,
                vault_lease.lease_id,
                vault_lease.expires_at,
                vault_lease=vault_lease.model_dump(mode="json"),
                sealed_credential=self._sealer.seal(pending.id, issued.credential),
            )
        except LeaseStateConflict as conflict:
            # The row turned revoking while Vault answered (the pod went away): the revoker
            # has the Vault lease id now; this credential must not be handed out.
            await self._revoke_quietly(vault_lease)
            raise Unauthenticated(
                f"lease {pending.id} was revoked while it was issued "
                f"({conflict.lease.state}): its pod is going away"
            ) from conflict
        except KeyferryError as error:
            await self._undo(workload, pending, vault_lease, error, request_id)
            raise
        await self._audit.lease(
            workload, "lease.active", record, request_id, credential=issued.credential
        )
        log.info(
            "lease issued",
            lease_id=record.id,
            role=record.role,
            credential=record.credential,
            cluster=workload.cluster,
            namespace=workload.namespace,
            pod=workload.pod,
            request_id=request_id,
        )
        return IssuedLease(
            lease=record,
            credential=issued.credential,
            renewable=vault_lease.renewable,
            replayed=False,
        )

    async def _replay(
        self, workload: Workload, lease: LeaseRecord, role: RoleSpec, request_id: str
    ) -> IssuedLease:
        if lease.role != role.name:
            raise InvalidRequest(
                "role",
                f"this pod's credential {lease.credential!r} was issued from role "
                f"{lease.role!r}; use another credential_name, or Release lease {lease.id} first",
            )
        lease = await self._wait_active(lease)
        handle = await self._run(self._leases.handle, lease.id)
        if handle.sealed_credential is None or handle.vault_lease is None:
            raise IssueInProgress(lease.pod_uid, lease.credential)
        credential = self._sealer.unseal(lease.id, handle.sealed_credential)
        vault_lease = VaultLease.model_validate(handle.vault_lease)
        await self._audit.lease(workload, "lease.replayed", lease, request_id)
        return IssuedLease(
            lease=lease, credential=credential, renewable=vault_lease.renewable, replayed=True
        )

    async def _wait_active(self, lease: LeaseRecord) -> LeaseRecord:
        """A pending lease is being issued by a concurrent call: wait for it to complete."""
        deadline = time.monotonic() + PENDING_WAIT
        while lease.state == LeaseState.PENDING and time.monotonic() < deadline:
            await asyncio.sleep(PENDING_POLL)
            lease = await self._run(self._leases.get, lease.id)
        if lease.state != LeaseState.ACTIVE:
            raise IssueInProgress(lease.pod_uid, lease.credential)
        return lease

    async def _settle_failed(
        self, workload: Workload, pending: LeaseRecord, error: KeyferryError, request_id: str
    ) -> None:
        """Vault did not issue: the pending row is final. (A Vault call that timed out may
        still have issued; reconcile finds such a lease under keyferry's prefix.)"""
        try:
            failed = await self._run(self._leases.mark_failed, pending.id, error.message)
            await self._audit.lease(
                workload, "lease.failed", failed, request_id, reason=error.reason
            )
        except KeyferryError as also:
            log.exception("could not mark a lease failed", lease_id=pending.id, error=also.message)

    async def _undo(
        self,
        workload: Workload,
        pending: LeaseRecord,
        vault_lease: VaultLease,
        error: KeyferryError,
        request_id: str,
    ) -> None:
        """The store did not record the issued credential: revoke it at Vault, then try to
        close the pending row. If even the revoke fails, the pending row stays for reconcile."""
        log.error(
            "store failed after Vault issued; revoking the Vault lease",
            lease_id=pending.id,
            error=error.message,
            request_id=request_id,
        )
        if not await self._revoke_quietly(vault_lease):
            return
        await self._settle_failed(workload, pending, error, request_id)

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


def _context(workload: Workload) -> IssueContext:
    return IssueContext(
        cluster=workload.cluster,
        namespace=workload.namespace,
        service_account=workload.service_account,
        pod=workload.pod,
        pod_uid=workload.pod_uid,
    )
