"""Reconcile: make the store and Vault agree about the leases under keyferry's own mounts.

keyferry's rule is "no untracked lease": a pending row is written before Vault is asked.
A broker that dies (kill -9, a lost node) can still leave the two apart, and reconcile
settles them, run once at broker start and then periodically:

1. Rows whose issue died with a broker (pending, or revoking, and no Vault lease recorded,
   written more than `orphan_age` ago): a pending one becomes failed, a revoking one
   revoked. Whatever Vault issued for them is unknown to the store, so step 3 revokes it.
2. A store lease Vault does not know (active or revoking, its Vault lease id gone from
   Vault: expired, or revoked behind keyferry's back) is closed: revoked, with the pod told.
3. A Vault lease the store does not know is revoked at Vault. An Issue records its Vault
   lease just after Vault answers, so a lease seen in that moment is not an orphan: it is
   revoked only when a pass at least `orphan_age` earlier saw it unknown already (the
   first pass after a start only notes what it sees; run reconcile more often than
   `orphan_age` to clear orphans sooner).

The store is read before Vault is listed for step 2 (a lease issued after the snapshot
cannot look gone) and after it for step 3 (a lease recorded meanwhile is known). Every
change is audited as the broker's own `broker.reconcile`; rows are closed through the lease
engine (engine/lease_engine.py), so a lease the Revoker settles meanwhile is recorded once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from broker.audit import AuditAction, AuditEvent
from broker.backends import VaultClient, list_keyferry_leases
from broker.backends.leases import revoke_lease
from broker.errors import KeyferryError
from broker.store import LeaseState

from ..common.audit_trail import system_principal
from ..core import Core

log = structlog.get_logger("keyferry.reconcile")
SYSTEM_JOB = "broker.reconcile"
HELD = frozenset({LeaseState.ACTIVE, LeaseState.REVOKING})
KNOWN = frozenset({LeaseState.PENDING, LeaseState.ACTIVE, LeaseState.REVOKING})


@dataclass(frozen=True)
class ReconcileReport:
    """What one pass changed: rows settled, store leases closed, Vault leases revoked, and
    Vault orphans left for a later pass (too young, or Vault refused the revoke)."""

    settled: int
    closed: int
    revoked: int
    deferred: int


class Reconciler:
    def __init__(
        self,
        core: Core,
        *,
        vault: VaultClient,
        orphan_age: timedelta,
    ) -> None:
        self._vault = vault
        self._leases = core.store.leases
        self._engine = core.engine
        self._audit = core.audit
        self._clock = core.clock
        self._orphan_age = orphan_age
        self._unknown_since: dict[str, datetime] = {}

    async def run_once(self) -> ReconcileReport:
        request_id = uuid.uuid4().hex
        settled = await self._settle_unissued(request_id)
        prefix = self._vault.settings.mount_prefix
        held = await self._leases.vault_lease_ids(HELD, prefix)
        in_vault = set(await list_keyferry_leases(self._vault))
        closed = 0
        for vault_id, lease_id in held.items():
            if vault_id not in in_vault:
                closed += await self._close(lease_id, request_id)
        known = await self._leases.vault_lease_ids(KNOWN, prefix)
        revoked, deferred = await self._revoke_unknown(in_vault - known.keys(), request_id)
        report = ReconcileReport(settled, closed, revoked, deferred)
        log.info("reconciled", **report.__dict__)
        return report

    async def _settle_unissued(self, request_id: str) -> int:
        who = system_principal(SYSTEM_JOB)
        settled = 0
        while rows := await self._leases.unissued_before(self._clock() - self._orphan_age):
            for lease in rows:
                settled += await self._engine.close_unissued(lease, who, request_id)
        return settled

    async def _close(self, lease_id: str, request_id: str) -> int:
        # Not closed when revoked meanwhile by whoever revoked it at Vault (the Revoker's
        # pass, an Ack's revocation on another replica), which recorded and announced it.
        if not await self._engine.close_gone(lease_id, system_principal(SYSTEM_JOB), request_id):
            return 0
        log.info("store lease unknown to Vault closed", lease_id=lease_id)
        return 1

    async def _revoke_unknown(self, unknown: set[str], request_id: str) -> tuple[int, int]:
        now = self._clock()
        self._unknown_since = {
            vault_id: self._unknown_since.get(vault_id, now) for vault_id in unknown
        }
        young = now - self._orphan_age
        revoked = deferred = 0
        for vault_id in sorted(unknown):
            if self._unknown_since[vault_id] > young:
                deferred += 1
                continue
            try:
                await revoke_lease(self._vault, vault_id)
            except KeyferryError as error:
                log.warning(
                    "orphan not revoked; next pass", vault_lease=vault_id, error=error.message
                )
                deferred += 1
                continue
            del self._unknown_since[vault_id]
            await self._audit.record(
                AuditEvent(
                    who=system_principal(SYSTEM_JOB),
                    action=AuditAction.VAULT_LEASE_REVOKED,
                    reason="UNKNOWN_TO_STORE",
                    target=vault_id,
                    request_id=request_id,
                )
            )
            log.info("Vault lease unknown to the store revoked", vault_lease=vault_id)
            revoked += 1
        return revoked, deferred
