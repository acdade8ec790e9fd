"""The Cedar resource of a lease, as every flow that decides about one lease builds it."""

from __future__ import annotations

from broker.models import VaultLease
from broker.policy import LeaseResource, RoleResource
from broker.store import LeaseRecord

UNKNOWN_BACKEND = "unknown"


def lease_resource(lease: LeaseRecord, vault_lease: VaultLease | None) -> LeaseResource:
    """A pending lease has no Vault handle yet, so its backend is `unknown`."""
    backend = vault_lease.kind if vault_lease is not None else UNKNOWN_BACKEND
    return LeaseResource(
        lease_id=lease.id,
        cluster=lease.cluster,
        namespace=lease.namespace,
        service_account=lease.service_account,
        role=RoleResource(name=lease.role, backend=backend),
    )
