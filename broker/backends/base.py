"""The one interface every backend offers, and the pieces of a Vault answer they share."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from broker import errors
from broker.models import (
    BackendKind,
    IssueContext,
    IssuedSecret,
    Lifecycle,
    RoleSpec,
    VaultLease,
)

R = TypeVar("R")


class Backend(Protocol):
    """Issues one kind of credential and knows how that kind lives and ends."""

    kind: BackendKind
    revokes_at_vault: bool
    """False when ending a lease asks Vault nothing (a KV value): the lease engine then
    ends its row in one store transaction."""

    def lifecycle(self, role: RoleSpec) -> Lifecycle:
        """Renewable? Revocable? How does it end? (For aws it depends on the role.)"""
        ...

    async def issue(self, role: RoleSpec, context: IssueContext) -> IssuedSecret: ...

    async def renew(self, lease: VaultLease, increment: timedelta | None = None) -> VaultLease:
        """Extend a renewable lease; InvalidRequest for a kind that cannot be renewed."""
        ...

    async def revoke(self, lease: VaultLease) -> None:
        """End the credential as far as this kind allows (see `lifecycle().ends`)."""
        ...


class LeaseReply(BaseModel):
    """The lease part of a Vault answer (an issued secret, or a renewal)."""

    model_config = ConfigDict(extra="ignore")

    lease_id: str = ""
    lease_duration: int = 0
    renewable: bool = False


class SecretReply(LeaseReply):
    data: dict[str, Any]


def expect(role: RoleSpec, kind: type[R]) -> R:
    if not isinstance(role, kind):
        raise errors.InvalidRequest(
            "kind", f"role {role.name!r} is a {role.kind} role, not one this backend issues"
        )
    return role


def not_renewable(lease: VaultLease, why: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        "lease", f"lease of role {lease.role!r} cannot be renewed: {why}; issue a new credential"
    )


def leased(
    role: RoleSpec, mount: str, reply: SecretReply, now: datetime, **extra: Any
) -> VaultLease:
    """The lease of a freshly issued secret with a Vault lease (database, aws)."""
    ttl = timedelta(seconds=reply.lease_duration)
    return VaultLease(
        role=role.name,
        kind=role.kind,
        mount=mount,
        lease_id=reply.lease_id,
        renewable=reply.renewable,
        ttl=ttl,
        issued_at=now,
        expires_at=now + ttl,
        **extra,
    )
