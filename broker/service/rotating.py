"""Rotation.RotateLeases, the primitive: a lease's next generation is issued, pushed to the
pod's Watch streams, and the old generation is revoked on the Ack or after the grace period.

The store does the bookkeeping: `begin_rotation` writes the next generation's pending row
before Vault is asked, and `complete_issue(..., retire_after=now + grace)` activates it and
turns the old generation revoking in one transaction. The Revoker revokes the old lease
when its time comes (the pod's Ack brings that time forward, see watching.py). If Vault
fails the old lease stays active; if the store fails after Vault issued, the new Vault
lease is revoked before the error is returned (as in Issue).

The operator is the one the admin listener's client certificate names; Cedar decides
`rotate` for it on each lease and the audit trail names it.
"""

from __future__ import annotations

from datetime import timedelta

import structlog

from broker.backends import Backends
from broker.errors import InvalidRequest, KeyferryError, PermissionDenied
from broker.models import IssueContext, IssuedSecret, RoleSpec, VaultLease
from broker.policy import Action, Operator, PolicyEngine
from broker.store import (
    ExistingLease,
    LeaseRecord,
    LeaseState,
    LeaseStateConflict,
    Store,
    StoreRunner,
)
from broker.store.clock import Clock

from .auditing import AuditTrail, operator_principal
from .catalog import RoleCatalog
from .events import EventHub, LeaseRotated
from .resources import lease_resource
from .results import Rotation
from .sealing import CredentialSealer

log = structlog.get_logger("keyferry.rotate")
MAX_LEASES = 100
MIN_GRACE = timedelta(seconds=1)
MAX_GRACE = timedelta(hours=24)


class RotationFlow:
    def __init__(
        self,
        *,
        catalog: RoleCatalog,
        policy: PolicyEngine,
        audit: AuditTrail,
        store: Store,
        runner: StoreRunner,
        backends: Backends,
        sealer: CredentialSealer,
        hub: EventHub,
        grace: timedelta,
        clock: Clock,
    ) -> None:
        self._catalog = catalog
        self._policy = policy
        self._audit = audit
        self._leases = store.leases
        self._run = runner.run
        self._backends = backends
        self._sealer = sealer
        self._hub = hub
        self._grace = grace
        self._clock = clock

    async def rotate(
        self,
        operator: Operator,
        lease_ids: list[str],
        grace: timedelta | None,
        request_id: str,
    ) -> list[Rotation]:
        """Rotate every lease named; all are found and decided before any is rotated."""
        grace = self._check_grace(grace)
        if not lease_ids or len(lease_ids) > MAX_LEASES:
            raise InvalidRequest("lease_ids", f"give between 1 and {MAX_LEASES} lease ids")
        leases = []
        for index, lease_id in enumerate(lease_ids):
            if not lease_id:
                raise InvalidRequest(f"lease_ids[{index}]", "is empty: give a lease id")
            leases.append(await self._run(self._leases.get, lease_id))
        for lease in leases:
            await self._decide(operator, lease, request_id)
        rotations = []
        for index, lease in enumerate(leases):
            rotations.append(await self._rotate_one(operator, index, lease, grace, request_id))
        return rotations

    def _check_grace(self, grace: timedelta | None) -> timedelta:
        if grace is None:
            return self._grace
        if not MIN_GRACE <= grace <= MAX_GRACE:
            raise InvalidRequest("grace", "must be between 1 second and 24 hours")
        return grace

    async def _decide(self, operator: Operator, lease: LeaseRecord, request_id: str) -> None:
        handle = await self._run(self._leases.handle, lease.id)
        vault_lease = VaultLease.model_validate(handle.vault_lease) if handle.vault_lease else None
        decision = self._policy.decide(operator, Action.ROTATE, lease_resource(lease, vault_lease))
        await self._audit.decision_on_lease(
            operator_principal(operator), "rotate", decision, lease, request_id
        )
        if not decision.allowed:
            raise PermissionDenied(
                f"no policy permits operator {operator.name!r} to rotate lease {lease.id}"
            )

    async def _rotate_one(
        self,
        operator: Operator,
        index: int,
        lease: LeaseRecord,
        grace: timedelta,
        request_id: str,
    ) -> Rotation:
        successor = await self._successor(lease)
        if successor is not None:
            return await self._already(lease, successor)
        if lease.state != LeaseState.ACTIVE:
            raise InvalidRequest(
                f"lease_ids[{index}]",
                f"lease {lease.id} is {lease.state}; only an active lease can be rotated",
            )
        role = (await self._catalog.get(lease.role)).spec
        begun = await self._run(self._leases.begin_rotation, lease.id)
        if isinstance(begun, ExistingLease):
            return await self._already(lease, begun.lease)
        pending = begun.lease
        try:
            issued = await self._backends.for_role(role).issue(role, _context(lease))
        except KeyferryError as error:
            await self._run(self._leases.mark_failed, pending.id, error.message)
            await self._audit.lease_change(
                operator_principal(operator),
                "lease.failed",
                pending,
                request_id,
                reason=error.reason,
            )
            raise
        return await self._complete(
            operator,
            index=index,
            lease=lease,
            pending=pending,
            role=role,
            issued=issued,
            grace=grace,
            request_id=request_id,
        )

    async def _complete(
        self,
        operator: Operator,
        *,
        index: int,
        lease: LeaseRecord,
        pending: LeaseRecord,
        role: RoleSpec,
        issued: IssuedSecret,
        grace: timedelta,
        request_id: str,
    ) -> Rotation:
        who = operator_principal(operator)
        vault_lease = issued.lease
        revoke_after = self._clock() + grace
        try:
            record = await self._run(
                self._leases.complete_issue,
                pending.id,
                vault_lease.lease_id,
                vault_lease.expires_at,
                retire_after=revoke_after,
                vault_lease=vault_lease.model_dump(mode="json"),
                sealed_credential=self._sealer.seal(pending.id, issued.credential),
            )
        except LeaseStateConflict as conflict:
            # The pod went away while Vault answered: the row is revoking with the new Vault
            # lease recorded, so the Revoker ends it.
            raise InvalidRequest(
                f"lease_ids[{index}]", f"lease {lease.id}'s pod is going away; not rotated"
            ) from conflict
        except KeyferryError as error:
            await self._undo(pending, vault_lease, error)
            raise
        await self._audit.lease_change(
            who, "lease.active", record, request_id, credential=issued.credential
        )
        previous = await self._run(self._leases.get, lease.id)
        await self._audit.lease_change(
            who, "lease.revoking", previous, request_id, reason="ROTATED"
        )
        self._hub.publish(record.pod_uid, LeaseRotated(record, issued.credential, vault_lease))
        log.info(
            "lease rotated",
            previous_lease_id=lease.id,
            lease_id=record.id,
            generation=record.generation,
            role=role.name,
            revoke_after=revoke_after.isoformat(),
            request_id=request_id,
        )
        return Rotation(
            previous_lease_id=lease.id,
            lease=record,
            renewable=vault_lease.renewable,
            revoke_after=revoke_after,
            already_rotated=False,
        )

    async def _successor(self, lease: LeaseRecord) -> LeaseRecord | None:
        """The live newer generation, when this lease was rotated already."""
        live = await self._run(self._leases.find_live, lease.pod_uid, lease.credential)
        return live if live is not None and live.generation > lease.generation else None

    async def _already(self, lease: LeaseRecord, successor: LeaseRecord) -> Rotation:
        previous = await self._run(self._leases.get, lease.id)
        handle = await self._run(self._leases.handle, successor.id)
        renewable = bool(handle.vault_lease and handle.vault_lease.get("renewable"))
        return Rotation(
            previous_lease_id=lease.id,
            lease=successor,
            renewable=renewable,
            revoke_after=previous.revoke_after,
            already_rotated=True,
        )

    async def _undo(
        self, pending: LeaseRecord, vault_lease: VaultLease, error: KeyferryError
    ) -> None:
        """The store did not record the new credential: revoke it at Vault, then close the
        pending row. If the revoke fails too, the pending row stays for reconcile."""
        try:
            await self._backends.for_lease(vault_lease).revoke(vault_lease)
        except KeyferryError as also:
            log.exception(
                "could not revoke a rotated-in Vault lease; reconcile must",
                lease_id=pending.id,
                error=also.message,
            )
            return
        try:
            await self._run(self._leases.mark_failed, pending.id, error.message)
        except KeyferryError as also:
            log.exception("could not mark a lease failed", lease_id=pending.id, error=also.message)


def _context(lease: LeaseRecord) -> IssueContext:
    return IssueContext(
        cluster=lease.cluster,
        namespace=lease.namespace,
        service_account=lease.service_account,
        pod=lease.pod_name,
        pod_uid=lease.pod_uid,
    )
