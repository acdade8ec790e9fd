"""Broker.Issue, step by step, each step refusing with its own typed error.

token → pod still bound → rate limits → credential name → role → Cedar → audit the decision → caps →
pending row (before Vault) → Vault → complete the row → audit → credential.

Idempotent per (cluster, pod UID, credential name): when the store already holds a live
lease for them, its sealed credential is returned and Vault is not asked (see
common/sealing.py), unless that lease has run out unrenewed: then it is ended (audited
reason EXPIRED) and Vault issues a new one. A pod UID that holds live leases in another
cluster is refused (an audited PodOfAnotherCluster): a member cluster's API server can mint
a token for any UID. The pending row, Vault, completing and undoing are the lease engine's
(engine/lease_engine.py): if the store cannot record what Vault issued, the Vault lease is
revoked before the error is returned, so no credential exists that the store does not know
about.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from broker.audit import AuditAction
from broker.errors import InvalidRequest, KeyferryError, PodOfAnotherCluster, Unauthenticated
from broker.models import RoleSpec
from broker.policy import Action, RoleResource, Workload
from broker.store import (
    CapReached,
    ExistingLease,
    IssueInProgress,
    LeaseRecord,
    LeaseRequest,
    LeaseState,
    LeaseStateConflict,
    LiveCaps,
    PendingLease,
)

from ..common.audit_trail import principal_of
from ..common.callers import Callers
from ..common.results import IssuedLease
from ..common.role_catalog import RoleCatalog
from ..core import Core
from ..engine.lease_engine import IssueOrder, TrackedCredential
from .limits import IssueRates, cap_refusal
from .names import check_credential_name

log = structlog.get_logger("keyferry.issue")
Refused = Callable[[KeyferryError, Workload | None], Awaitable[None]]
ENDED_RETRIES = 3  # an ended lease retired, then Issue begins again (a race may need a second)


@dataclass(frozen=True)
class IssueLimits:
    per_pod: int
    per_cluster: int


class IssueFlow:
    def __init__(
        self,
        core: Core,
        *,
        callers: Callers,
        catalog: RoleCatalog,
        limits: IssueLimits,
        rates: IssueRates,
    ) -> None:
        self._callers = callers
        self._catalog = catalog
        self._gate = core.gate
        self._audit = core.audit
        self._leases = core.store.leases
        self._engine = core.engine
        self._limits = limits
        self._rates = rates
        self._clock = core.clock
        self._admitting: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        """Per cluster: one admission at a time. The count and the insert are one store
        transaction (engine.admit); on PostgreSQL two transactions of one replica could
        still both count below the cap, so this replica admits one at a time per cluster.
        Several replicas: the cap may be passed by one lease per replica at most."""

    async def issue(
        self, token: str, credential_name: str, role_name: str, request_id: str
    ) -> IssuedLease:
        refused = self._audit.refusal(AuditAction.ISSUE, request_id)
        workload = await self._callers.authenticate(token, refused=refused)
        await self._require_own_uid(workload, refused)
        self._rates.check(workload)
        check_credential_name(credential_name)
        if not role_name:
            raise InvalidRequest("role", "is required: the keyferry role to issue from")
        role = (await self._catalog.get(role_name)).spec
        await self._gate.require(
            workload,
            Action.ISSUE,
            RoleResource(name=role.name, backend=role.kind),
            lambda decision: self._audit.decision(
                workload,
                AuditAction.ISSUE,
                decision,
                request_id,
                role=role.name,
                credential=credential_name,
            ),
            f"no policy permits {workload.namespace}/{workload.service_account} in cluster "
            f"{workload.cluster!r} to issue role {role.name!r}; ask for a Cedar permit",
            context={"credential_name": credential_name},
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
        who = principal_of(workload)
        if isinstance(begun, ExistingLease):
            if self._ended(begun.lease):  # retired and re-found each time: a retry will do
                raise IssueInProgress(begun.lease.pod_uid, begun.lease.credential)
            return await self._replay(workload, begun, role, request_id, refused)
        order = IssueOrder(begun.lease, role, who, request_id)
        try:
            tracked = await self._engine.issue(order)
        except LeaseStateConflict as conflict:
            raise Unauthenticated(
                f"lease {begun.lease.id} was revoked while it was issued "
                f"({conflict.lease.state}): its pod is going away"
            ) from conflict
        record = tracked.lease
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
        return _issued(tracked)

    async def _require_own_uid(
        self,
        workload: Workload,
        refused: Refused,
    ) -> None:
        holders = await self._leases.clusters_holding(workload.pod_uid)
        if holders - {workload.cluster}:
            error = PodOfAnotherCluster(workload.cluster, workload.pod_uid, holders)
            await refused(error, workload)
            raise error

    async def _begin(
        self, workload: Workload, request: LeaseRequest
    ) -> PendingLease | ExistingLease:
        caps = LiveCaps(self._limits.per_pod, self._limits.per_cluster)
        async with self._admitting[workload.cluster]:
            begun = await self._engine.admit(request, caps)
        if isinstance(begun, CapReached):
            raise cap_refusal(workload, begun, self._limits.per_pod)
        return begun

    def _ended(self, lease: LeaseRecord) -> bool:
        """An active lease whose Vault lease has run out (nobody renewed it: its pod held
        no Watch, or the broker was away): its credential no longer works anywhere."""
        ends = lease.expires_at
        return lease.state is LeaseState.ACTIVE and ends is not None and ends <= self._clock()

    async def _retire_ended(self, workload: Workload, lease: LeaseRecord, request_id: str) -> None:
        """End the ended lease (Vault has already dropped it; revoking is harmless there) so
        the next pass of Issue asks Vault for a new credential instead of replaying a dead
        one. A revocation Vault does not take now stays queued for the Revoker."""
        try:
            await self._engine.end(lease, principal_of(workload), "EXPIRED", request_id)
        except KeyferryError as error:
            log.warning("ended lease queued", lease_id=lease.id, error=error.message)
        log.info("lease past its end retired; issuing anew", lease_id=lease.id)

    async def _replay(
        self,
        workload: Workload,
        existing: ExistingLease,
        role: RoleSpec,
        request_id: str,
        refused: Refused,
    ) -> IssuedLease:
        lease = existing.lease
        if (lease.cluster, lease.pod_uid) != (workload.cluster, workload.pod_uid):
            error = PodOfAnotherCluster(
                workload.cluster, workload.pod_uid, frozenset({lease.cluster})
            )
            await refused(error, workload)
            raise error
        if lease.role != role.name:
            raise InvalidRequest(
                "role",
                f"this pod's credential {lease.credential!r} was issued from role "
                f"{lease.role!r}; use another credential_name, or Release lease {lease.id} first",
            )
        return _issued(
            await self._engine.replay(lease, principal_of(workload), request_id, existing.handle)
        )


def _issued(tracked: TrackedCredential) -> IssuedLease:
    return IssuedLease(
        lease=tracked.lease,
        credential=tracked.credential,
        renewable=tracked.vault_lease.renewable,
        replayed=tracked.replayed,
    )
