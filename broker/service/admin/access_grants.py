"""AccessService's flows: just-in-time grants of a role's credentials to operators.

request → approve (or deny) → issue → expiry or revoke. Every step: the grant brought up
to date first (a grant past its `expires_at` is expired on the spot, so an expired grant
never issues, whether or not the expiry job ran), Cedar decides, the audit trail records
the decision (fail-closed: no record, no step), then the store moves the grant.

Nobody approves or denies their own request: the broker refuses it whatever the policies
say (SelfApproval), and the example policy set forbids it as well.

The credential is a normal tracked lease owned by the grant (see common/grant_terms.py), issued and
ended by the lease engine (engine/lease_engine.py) like a pod's: ending a grant ends its lease,
the row revoking before Vault is asked, and a revocation Vault does not answer now is
retried until it succeeds. Its Vault lease is
renewed down (or up, within the role's max TTL) to end when the grant does; only roles
whose credentials Vault can revoke may be granted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Protocol

import structlog

from broker.audit import AuditAction, Principal
from broker.backends import Backends
from broker.errors import (
    FailedPrecondition,
    InvalidRequest,
    KeyferryError,
    PermissionDenied,
    SelfApproval,
)
from broker.models import IssuedSecret, RoleSpec
from broker.policy import Action, Operator, RoleResource
from broker.settings import AccessSettings
from broker.store import (
    ExistingLease,
    GrantRecord,
    GrantState,
    GrantStateConflict,
    LeaseStateConflict,
    RoleNotFound,
    Selector,
)

from ..common.audit_trail import operator_principal, system_principal
from ..common.grant_terms import (
    ACCESS_OWNER,
    CLUSTER_BACKEND,
    CLUSTER_CHANGE_PREFIX,
    check_grant_ask,
    cluster_change_of,
    grant_lease_request,
    grant_resource,
    new_grant,
)
from ..common.results import GrantCredential, GrantEnd
from ..common.role_catalog import RoleCatalog
from ..core import Core
from ..engine.lease_engine import IssueOrder, TrackedCredential

log = structlog.get_logger("keyferry.access")
EXPIRY_JOB = "broker.access-expiry"
UNKNOWN_BACKEND = "unknown"
ISSUABLE = frozenset({GrantState.APPROVED, GrantState.ISSUED})


class GrantApproved(Protocol):
    """What an approval carries out besides the grant itself: a change of the cluster
    registry (clusters.py). Called after the grant is approved in the store; its error
    reaches the approver (the approval stands: the requester asks again)."""

    async def grant_approved(
        self, grant: GrantRecord, approver: Operator, request_id: str
    ) -> None: ...


class AccessFlow:
    def __init__(
        self,
        core: Core,
        *,
        catalog: RoleCatalog,
        backends: Backends,
        settings: AccessSettings,
    ) -> None:
        self._catalog = catalog
        self._gate = core.gate
        self._audit = core.audit
        self._grants = core.store.grants
        self._leases = core.store.leases
        self._backends = backends
        self._engine = core.engine
        self._settings = settings
        self._clock = core.clock
        self._approved: list[GrantApproved] = []

    def on_approve(self, approved: GrantApproved) -> None:
        """Call `approved` whenever a grant is approved."""
        self._approved.append(approved)

    # -- request, decide -------------------------------------------------------------------

    async def request(
        self,
        operator: Operator,
        role_name: str,
        duration: timedelta | None,
        reason: str,
        request_id: str,
    ) -> GrantRecord:
        ask = check_grant_ask(role_name, duration, reason, self._settings.max_duration)
        role = (await self._catalog.get(ask.role)).spec
        if not self._backends.for_role(role).lifecycle(role).revocable:
            raise FailedPrecondition(
                f"role {role.name!r} issues credentials Vault cannot revoke, so they could "
                "outlive a grant; grant a role whose credentials can be revoked"
            )
        wait = self._settings.approval_wait
        grant = new_grant(ask, operator.name, self._clock(), wait, operator.person)
        await self._gate.require(
            operator,
            Action.REQUEST_ACCESS,
            RoleResource(name=role.name, backend=role.kind),
            lambda decision: self._audit.grant(
                operator_principal(operator),
                AuditAction.ACCESS_REQUEST,
                grant,
                request_id,
                decision=decision,
            ),
            f"no policy permits operator {operator.name!r} to request role {role.name!r} "
            f"for {grant.duration_seconds}s (Cedar action 'request_access' on the Role); "
            "ask for a Cedar permit or a shorter duration",
            context={"duration_seconds": grant.duration_seconds},
        )
        stored = await self._grants.add(grant)
        log.info(
            "access requested",
            grant_id=stored.id,
            role=stored.role,
            requester=stored.requester,
            request_id=request_id,
        )
        return stored

    async def approve(self, operator: Operator, grant_id: str, request_id: str) -> GrantRecord:
        grant = await self._decide(operator, grant_id, "approve", request_id)
        approved = await self._grants.approve(grant.id, operator.name, self._clock())
        for carry_out in self._approved:
            await carry_out.grant_approved(approved, operator, request_id)
        return approved

    async def deny(self, operator: Operator, grant_id: str, request_id: str) -> GrantRecord:
        grant = await self._decide(operator, grant_id, "deny", request_id)
        return await self._grants.deny(grant.id, operator.name, self._clock())

    async def _decide(
        self, operator: Operator, grant_id: str, verb: str, request_id: str
    ) -> GrantRecord:
        """Cedar's approve_access, and never the requester; audited either way."""
        grant = await self.current(grant_id)
        resource = grant_resource(grant, await self._backend_of(grant.role))
        own = is_requester(operator, grant)
        decision = await self._gate.decide(
            operator,
            Action.APPROVE_ACCESS,
            resource,
            lambda decision: self._audit.grant(
                operator_principal(operator),
                AuditAction(f"access.{verb}"),
                grant,
                request_id,
                decision=decision,
                reason=SelfApproval.reason if own else None,
            ),
        )
        if own:
            raise SelfApproval(
                f"operator {operator.name!r} requested grant {grant.id}; someone else must "
                f"{verb} it"
            )
        if not decision.allowed:
            raise PermissionDenied(
                f"no policy permits operator {operator.name!r} to {verb} grant {grant.id} "
                f"(Cedar action 'approve_access' on the Grant); ask for a Cedar permit"
            )
        if grant.state != GrantState.PENDING:
            raise GrantStateConflict(grant, f"{verb}d")
        return grant

    # -- issue -----------------------------------------------------------------------------

    async def issue(self, operator: Operator, grant_id: str, request_id: str) -> GrantCredential:
        """The grant's credential for its requester; the same one on a repeated call."""
        grant = await self.current(grant_id)
        who = operator_principal(operator)
        if operator.name != grant.requester:
            await self._audit.grant(
                who, AuditAction.ACCESS_ISSUE, grant, request_id, reason="NOT_REQUESTER"
            )
            raise PermissionDenied(
                f"grant {grant.id} is {grant.requester!r}'s; only its requester may use it"
            )
        if grant.state not in ISSUABLE:
            refused = f"GRANT_{grant.state.value.upper()}"
            await self._audit.grant(
                who, AuditAction.ACCESS_ISSUE, grant, request_id, reason=refused
            )
            raise GrantStateConflict(grant, "used to issue a credential")
        if cluster_change_of(grant) is not None:
            raise FailedPrecondition(
                f"grant {grant.id} approves a change of the cluster registry ({grant.role}); "
                "its approval carried it out, there is no credential to issue"
            )
        role = (await self._catalog.get(grant.role)).spec
        begun = await self._engine.begin(grant_lease_request(grant))
        if isinstance(begun, ExistingLease):
            return _handed(grant, await self._engine.replay(begun.lease, who, request_id))

        async def end_with_grant(issued: IssuedSecret) -> IssuedSecret:
            return await self._end_with_grant(issued, grant, role)

        order = IssueOrder(begun.lease, role, who, request_id, shape=end_with_grant)
        try:
            tracked = await self._engine.issue(order)
        except LeaseStateConflict as conflict:
            # The grant ended while Vault answered: its row is revoking with this Vault
            # lease recorded, so the Revoker ends it; the credential is not handed out.
            raise FailedPrecondition(
                f"access grant {grant.id} ended while its credential was issued; the "
                "credential was revoked"
            ) from conflict
        record = tracked.lease
        try:
            grant = await self._grants.record_lease(grant.id, record.id, self._clock())
        except GrantStateConflict as ended:
            # The grant ended while Vault answered: its lease goes with it, at once.
            await self._end_leases(ended.grant, who, request_id)
            raise
        await self._audit.grant(who, AuditAction.ACCESS_ISSUE, grant, request_id)
        log.info("access issued", grant_id=grant.id, lease_id=record.id, request_id=request_id)
        return _handed(grant, tracked)

    async def _end_with_grant(
        self, issued: IssuedSecret, grant: GrantRecord, role: RoleSpec
    ) -> IssuedSecret:
        """Renew the fresh Vault lease to end when the grant does (Vault caps it at the
        role's max TTL). A lease that cannot be renewed ends when Vault says, or at the
        grant's end, whichever is first: the grant's end revokes it."""
        lease = issued.lease
        remaining = grant.expires_at - self._clock()
        if not lease.renewable or lease.expires_at is None:
            return issued
        increment = timedelta(seconds=max(int(remaining.total_seconds()), 1))
        renewed = await self._backends.for_role(role).renew(lease, increment)
        return IssuedSecret(credential=issued.credential, lease=renewed)

    # -- end -------------------------------------------------------------------------------

    async def revoke(self, operator: Operator, grant_id: str, request_id: str) -> GrantEnd:
        """End an open grant now and revoke its credential (a revoked grant: again, no-op)."""
        grant = await self.current(grant_id)
        who = operator_principal(operator)
        resource = grant_resource(grant, await self._backend_of(grant.role))
        await self._gate.require(
            operator,
            Action.REVOKE_ACCESS,
            resource,
            lambda decision: self._audit.grant(
                who, AuditAction.ACCESS_REVOKE, grant, request_id, decision=decision
            ),
            f"no policy permits operator {operator.name!r} to revoke grant {grant.id} "
            "(Cedar action 'revoke_access' on the Grant); ask for a Cedar permit",
        )
        ended = await self._grants.end(grant.id, GrantState.REVOKED, operator.name, self._clock())
        pending = await self._end_leases(ended, who, request_id)
        return GrantEnd(grant=ended, pending_lease_ids=pending)

    async def current(self, grant_id: str) -> GrantRecord:
        """The grant as it is now: one past its end is expired first (and its lease revoked)."""
        if not grant_id:
            raise InvalidRequest("grant_id", "is required: the id RequestGrant returned")
        grant = await self._grants.get(grant_id)
        if grant.state.final or grant.expires_at > self._clock():
            return grant
        return await self._expire(grant)

    async def expire_due(self) -> int:
        """One pass of the expiry job: expire every open grant past its end; how many."""
        due = await self._grants.due(self._clock())
        done = 0
        for grant in due:
            try:
                await self._expire(grant)
            except KeyferryError as error:
                log.warning(
                    "grant expiry failed; will retry", grant_id=grant.id, error=error.message
                )
            else:
                done += 1
        return done

    async def _expire(self, grant: GrantRecord) -> GrantRecord:
        who = system_principal(EXPIRY_JOB)
        request_id = uuid.uuid4().hex
        try:
            ended = await self._grants.end(grant.id, GrantState.EXPIRED, EXPIRY_JOB, self._clock())
        except GrantStateConflict as conflict:
            return conflict.grant  # ended otherwise meanwhile (revoked, denied)
        if grant.state != ended.state:
            await self._audit.grant(who, AuditAction.ACCESS_EXPIRE, ended, request_id)
        await self._end_leases(ended, who, request_id)
        log.info("grant expired", grant_id=ended.id, request_id=request_id)
        return ended

    async def _end_leases(self, grant: GrantRecord, who: Principal, request_id: str) -> list[str]:
        """Revoke the grant's live leases; the ids of those Vault did not revoke now (queued,
        retried by the Revoker until they are)."""
        selector = Selector(cluster=ACCESS_OWNER, pod_name=grant.id)
        leases = await self._leases.list_by_selector(selector)
        queued = []
        reason = f"GRANT_{grant.state.value.upper()}"
        for lease in leases:
            try:
                await self._engine.end(lease, who, reason, request_id)
            except KeyferryError as error:
                log.warning("grant's lease queued", lease_id=lease.id, error=error.message)
                queued.append(lease.id)
        return queued

    # -- read ------------------------------------------------------------------------------

    async def get(self, operator: Operator, grant_id: str, request_id: str) -> GrantRecord:
        grant = await self.current(grant_id)
        if not await self._may_view(operator, grant, request_id):
            raise PermissionDenied(
                f"no policy permits operator {operator.name!r} to see grant {grant.id} "
                "(Cedar action 'view_access' on the Grant)"
            )
        return grant

    async def list_grants(
        self,
        operator: Operator,
        request_id: str,
        *,
        states: Iterable[GrantState] = (),
        requester: str | None = None,
    ) -> list[GrantRecord]:
        """The grants the operator may see (one audited decision each), newest first."""
        await self.expire_due()
        chosen = frozenset(states) or None
        grants = await self._grants.find(requester=requester, states=chosen)
        return [g for g in grants if await self._may_view(operator, g, request_id)]

    async def _may_view(self, operator: Operator, grant: GrantRecord, request_id: str) -> bool:
        resource = grant_resource(grant, await self._backend_of(grant.role))
        decision = await self._gate.decide(
            operator,
            Action.VIEW_ACCESS,
            resource,
            lambda decision: self._audit.grant(
                operator_principal(operator),
                AuditAction.ACCESS_READ,
                grant,
                request_id,
                decision=decision,
            ),
        )
        return decision.allowed

    async def _backend_of(self, role_name: str) -> str:
        """The role's backend for Cedar; `unknown` once the role was deleted; `cluster` for
        a change of the cluster registry."""
        if role_name.startswith(CLUSTER_CHANGE_PREFIX):
            return CLUSTER_BACKEND
        try:
            return (await self._catalog.get(role_name)).spec.kind
        except RoleNotFound:
            return UNKNOWN_BACKEND


def is_requester(operator: Operator, grant: GrantRecord) -> bool:
    """Whether `operator` is the person who asked: the same certificate name, or the same
    stable identity under another name (a grant from before identities: its name only)."""
    if operator.name == grant.requester:
        return True
    return grant.requester_identity is not None and operator.person == grant.requester_identity


def _handed(grant: GrantRecord, tracked: TrackedCredential) -> GrantCredential:
    return GrantCredential(
        grant=grant,
        lease=tracked.lease,
        credential=tracked.credential,
        renewable=tracked.vault_lease.renewable,
    )
