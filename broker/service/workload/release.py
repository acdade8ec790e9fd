"""Broker.Release: the caller gives back one of its own leases, revoked at Vault now.

The pod may be terminating (an agent releases at shutdown), so a terminating pod's token
is accepted here. Another pod's lease is not found (own_leases.py). The lease is ended by
the lease engine (engine/lease_engine.py): a revocation Vault does not take now stays queued on
its row, retried by the Revoker until it succeeds, and the error is returned.
"""

from __future__ import annotations

from broker.policy import Action
from broker.store import LeaseRecord, LeaseState

from ..common.audit_trail import principal_of
from ..common.callers import Callers
from ..core import Core
from .limits import LeaseCallRates
from .own_leases import OwnLeaseGate

FINAL = frozenset({LeaseState.REVOKED, LeaseState.FAILED})
RELEASED = "RELEASED"


class ReleaseFlow:
    def __init__(
        self,
        core: Core,
        *,
        callers: Callers,
        rates: LeaseCallRates,
    ) -> None:
        self._gate = OwnLeaseGate(core, callers, rates)
        self._engine = core.engine

    async def release(self, token: str, lease_id: str, request_id: str) -> LeaseRecord:
        own = await self._gate.authorize(
            token, lease_id, Action.RELEASE, request_id, allow_terminating=True
        )
        if own.lease.state in FINAL:
            return own.lease
        return await self._engine.end(
            own.lease,
            principal_of(own.workload),
            RELEASED,
            request_id,
            vault_lease=own.vault_lease,
        )
