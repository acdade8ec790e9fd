"""Broker.Renew: a caller outside a pod extends one of its own leases at Vault now (a pod
that holds a Watch stream has the broker renew for it, jobs/renewal.py)."""

from __future__ import annotations

from broker.audit import AuditAction
from broker.policy import Action

from ..common.callers import Callers
from ..common.results import RenewedLease
from ..core import Core
from ..jobs.renewal import Renewer
from .limits import LeaseCallRates
from .own_leases import OwnLeaseGate


class RenewFlow:
    """Broker.Renew: a caller extends one of its own leases (callers outside pods)."""

    def __init__(
        self,
        core: Core,
        *,
        callers: Callers,
        renewer: Renewer,
        rates: LeaseCallRates,
    ) -> None:
        self._gate = OwnLeaseGate(core, callers, rates)
        self._audit = core.audit
        self._renewer = renewer

    async def renew(self, token: str, lease_id: str, request_id: str) -> RenewedLease:
        own = await self._gate.authorize(token, lease_id, Action.RENEW, request_id)
        workload, lease = own.workload, own.lease
        renewed = await self._renewer.renew(lease)
        await self._audit.lease(workload, AuditAction.LEASE_RENEWED, renewed.lease, request_id)
        return renewed
