"""The first step of every call a pod makes on one of its own leases (Release, Renew):
authenticate, take one call from the pod's rate limit, check the lease id is one, find the
lease, ask Cedar, audit the decision.

A lease of another pod is reported as not found, like one that does not exist, so a
caller learns nothing about other pods' leases.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.models import VaultLease
from broker.policy import Action, Workload
from broker.store import LeaseNotFound, LeaseRecord

from ..common.audit_trail import decided
from ..common.callers import Callers
from ..common.lease_resource import lease_resource
from ..core import Core
from .limits import LeaseCallRates
from .names import check_lease_id


@dataclass(frozen=True)
class OwnLease:
    workload: Workload
    lease: LeaseRecord
    vault_lease: VaultLease | None  # None while the lease is still pending


@dataclass(frozen=True)
class OwnLeaseGate:
    core: Core
    callers: Callers
    rates: LeaseCallRates

    async def authorize(
        self,
        token: str,
        lease_id: str,
        action: Action,
        request_id: str,
        *,
        allow_terminating: bool = False,
    ) -> OwnLease:
        """The caller and its lease, once Cedar allowed `action` on it (and the audit says so)."""
        audit = self.core.audit
        workload = await self.callers.authenticate(
            token,
            allow_terminating=allow_terminating,
            refused=audit.refusal(decided(action), request_id),
        )
        self.rates.check(workload, action.value.capitalize())
        lease_id = check_lease_id(lease_id)
        lease, handle = await self.core.store.leases.get_with_handle(lease_id)
        if lease.pod_uid != workload.pod_uid or lease.cluster != workload.cluster:
            # Another pod's lease: the caller hears "not found", the audit trail the truth.
            error = LeaseNotFound(lease_id)
            await audit.not_yours(workload, decided(action), lease, error.reason, request_id)
            raise error
        vault_lease = VaultLease.model_validate(handle.vault_lease) if handle.vault_lease else None
        await self.core.gate.require(
            workload,
            action,
            lease_resource(lease, vault_lease),
            lambda decision: audit.decision(
                workload,
                decided(action),
                decision,
                request_id,
                role=lease.role,
                credential=lease.credential,
                lease_id=lease.id,
            ),
            f"no policy permits {workload.namespace}/{workload.service_account} in cluster "
            f"{workload.cluster!r} to {action.value} lease {lease.id}",
        )
        return OwnLease(workload, lease, vault_lease)
