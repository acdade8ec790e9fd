"""Renewing Vault leases: the broker's own renewals for pods that hold a Watch stream (the
periodic pass), and one lease's renewal at Vault (also Broker.Renew's, workload/renew.py).

For pods the broker owns renewal, and the open Watch stream is the heartbeat: a pass
renews the renewable leases of watched pods once `renewal.fraction` (default 2/3) of their
current lifetime has passed, up to `renewal.jitter` of it earlier (a fixed spread per
lease, so leases issued together are not renewed together), and at the latest when they
expire within `renewal.window`. Each replica renews for the streams it serves (the hub is
per replica), so this job does not wait for the lead: a stream that moves to another
replica moves its renewals with it. A pod
whose agent is gone is not kept alive; its leases run out at their TTL. A lease that
cannot be extended any further (not renewable, or Vault capped it at the role's max TTL)
is re-issued: the broker rotates it (a new generation pushed to the stream, the old one
revoked on the Ack or when its remaining life is over). When that fails, the pod gets one
Expiring event per broker run, so the agent knows before the credential dies.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog

from broker.audit import AuditAction
from broker.backends import Backends
from broker.errors import InvalidRequest, KeyferryError, VaultUnavailable
from broker.models import VaultLease
from broker.settings import RenewalSettings
from broker.store import (
    LeaseRecord,
    LeaseState,
    LeaseStateConflict,
)

from ..common.audit_trail import system_principal
from ..common.results import RenewedLease
from ..core import Core
from ..events.hub import EventHub, LeaseExpiring, LeaseRenewed

log = structlog.get_logger("keyferry.renew")
SYSTEM_JOB = "broker.renew"
LOOK_AHEAD = timedelta(days=3650)  # every lease with an end is a candidate; due() decides
CANDIDATES = 500
MIN_REISSUE_GRACE = timedelta(seconds=1)
Reissue = Callable[[LeaseRecord, timedelta, str], Awaitable[object]]


class Renewer:
    """Renews one lease at Vault and records the new expiry; and the periodic pass."""

    def __init__(
        self,
        core: Core,
        *,
        backends: Backends,
        hub: EventHub,
        settings: RenewalSettings,
        reissue: Reissue,
    ) -> None:
        self._leases = core.store.leases
        self._backends = backends
        self._audit = core.audit
        self._hub = hub
        self._settings = settings
        self._clock = core.clock
        self._warned: set[str] = set()
        self._reissue = reissue
        """How a lease that cannot be renewed further is replaced (RotationFlow.reissue)."""

    async def vault_lease(self, lease: LeaseRecord) -> VaultLease:
        handle = await self._leases.handle(lease.id)
        if handle.vault_lease is None:
            raise InvalidRequest("lease_id", f"lease {lease.id} is still being issued; retry")
        return VaultLease.model_validate(handle.vault_lease)

    async def renew(self, lease: LeaseRecord) -> RenewedLease:
        """Extend an active lease at Vault and record its new expiry."""
        if lease.state != LeaseState.ACTIVE:
            raise InvalidRequest(
                "lease_id",
                f"lease {lease.id} is {lease.state}; only an active lease can be renewed "
                "(call Issue for the live one)",
            )
        vault_lease = await self.vault_lease(lease)
        backend = self._backends.for_lease(vault_lease)
        renewed = await backend.renew(vault_lease, self._settings.increment)
        expires_at = renewed.expires_at or self._clock()
        try:
            record = await self._leases.record_renewal(lease.id, expires_at)
        except LeaseStateConflict as conflict:
            raise InvalidRequest(
                "lease_id", f"lease {lease.id} changed while it was renewed: {conflict.message}"
            ) from conflict
        return RenewedLease(lease=record, renewable=renewed.renewable, granted=renewed.ttl)

    async def renew_due(self) -> int:
        """One pass: renew watched pods' leases that expire within the window; how many."""
        watched = self._hub.watched()
        if not watched:
            return 0
        now = self._clock()
        candidates = await self._leases.leases_to_renew(now + LOOK_AHEAD, CANDIDATES, pods=watched)
        due = [c for c in candidates if renewal_due(c, now, self._settings)]
        renewed = 0
        for index, lease in enumerate(due):
            try:
                if await self._renew_watched(lease):
                    renewed += 1
            except VaultUnavailable as error:
                # Vault is away: the others would fail alike. One line, and the next pass
                # tries them all again.
                left = len(due) - index
                log.warning("renewals wait for Vault", due=left, error=error.message)
                break
            except KeyferryError as error:
                log.warning("renewal failed", lease_id=lease.id, error=error.message)
        return renewed

    async def _renew_watched(self, lease: LeaseRecord) -> bool:
        vault_lease = await self.vault_lease(lease)
        if not vault_lease.renewable:
            await self._replace(lease)
            return False
        result = await self.renew(lease)
        record = result.lease
        await self._audit.lease_change(
            system_principal(SYSTEM_JOB), AuditAction.LEASE_RENEWED, record, uuid.uuid4().hex
        )
        wanted = self._settings.increment or vault_lease.ttl
        if result.granted is not None and result.granted < wanted:
            await self._replace(record)  # capped at the max TTL: the next renewal cannot help
        elif record.expires_at is not None:
            self._hub.publish(record.pod_key, LeaseRenewed(record.id, record.expires_at))
        return True

    async def _replace(self, lease: LeaseRecord) -> None:
        """Re-issue before the end (the rest of its life as the grace), else warn."""
        if lease.expires_at is not None:
            grace = max(lease.expires_at - self._clock(), MIN_REISSUE_GRACE)
            try:
                await self._reissue(lease, grace, uuid.uuid4().hex)
            except KeyferryError as error:
                log.warning("re-issue failed", lease_id=lease.id, error=error.message)
            else:
                return
        self._warn(lease)

    def _warn(self, lease: LeaseRecord) -> None:
        if lease.id in self._warned or lease.expires_at is None:
            return
        self._warned.add(lease.id)
        self._hub.publish(lease.pod_key, LeaseExpiring(lease.id, lease.expires_at))


def renewal_due(lease: LeaseRecord, now: datetime, settings: RenewalSettings) -> bool:
    """Past its renewal point: `fraction` of the lifetime since its last renewal (or
    issue), less this lease's share of the jitter; or within `window` of its end."""
    if lease.expires_at is None:
        return False
    if lease.expires_at - now <= settings.window:
        return True
    lifetime = lease.expires_at - lease.updated_at
    fraction = settings.fraction - settings.jitter * _spread(lease)
    return now >= lease.updated_at + lifetime * max(fraction, 0.0)


def _spread(lease: LeaseRecord) -> float:
    """A number in [0, 1) fixed for this lease and its current end."""
    key = f"{lease.id}/{lease.expires_at}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
