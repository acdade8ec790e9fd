"""What a backend hands out (a credential and its lease) and how each kind of credential ends.

A `VaultLease` is the handle the lease store keeps: everything needed to renew or revoke
the credential later, and nothing secret. The secret values live only in `Credential`,
whose repr and JSON form hide them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr

BackendKind = Literal["database", "aws", "kv", "pki"]


class Ending(StrEnum):
    """How a credential stops working."""

    REVOKED = "revoked"
    """Revoking the lease deletes the account now (database user, IAM user); Vault also
    revokes it when the lease runs out."""
    EXPIRES = "expires"
    """It works until its TTL runs out whatever keyferry does (STS session credentials);
    revoking only makes Vault forget the lease. Rotation replaces it before expiry."""
    CRL = "crl"
    """Revoking by serial puts it on the mount's CRL; it also ends at its notAfter."""
    SUPERSEDED = "superseded"
    """It never ends on its own; rotation hands out a newer version (KV)."""


class Lifecycle(BaseModel):
    """The facts the scheduler plans renewals, rotations and revocations by."""

    model_config = ConfigDict(frozen=True)

    renewable: bool
    revocable: bool
    ends: Ending
    shared: bool = False
    """One Vault read serves every lease of the role (a KV version, the same for every
    pod): rotating many of its leases reads Vault once (the lease engine's batch form)."""


class IssueContext(BaseModel):
    """Who a credential is minted for; PKI name templates are filled from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    service_account: str = Field(min_length=1)
    pod: str = Field(min_length=1)
    pod_uid: str = ""

    def template_values(self) -> dict[str, str]:
        return {
            "cluster": self.cluster,
            "namespace": self.namespace,
            "service_account": self.service_account,
            "pod": self.pod,
        }


class Credential(BaseModel):
    """Secret values by name (`username`, `password`, `access_key_id`, `certificate`, ...)."""

    model_config = ConfigDict(frozen=True)

    values: dict[str, SecretStr]

    def reveal(self) -> dict[str, str]:
        """The plain values, for the one place that writes them out (the agent's files)."""
        return {name: value.get_secret_value() for name, value in self.values.items()}


class VaultLease(BaseModel):
    """A handed-out credential's lease: enough to renew or revoke it, nothing secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str
    kind: BackendKind
    mount: str = Field(description="the full Vault mount path, prefix included")
    lease_id: str = Field(
        default="", description="Vault's lease id; empty for kinds without one (kv, pki)"
    )
    renewable: bool
    ttl: timedelta = Field(description="time left when Vault answered")
    issued_at: AwareDatetime
    expires_at: AwareDatetime | None = Field(
        description="when the credential stops working; None for a KV value, which never does"
    )
    version: int | None = Field(default=None, description="the KV version handed out")
    serial: str | None = Field(
        default=None, description="the certificate's serial, as Vault writes it"
    )

    def renewed(self, ttl: timedelta, now: datetime) -> VaultLease:
        return self.model_copy(update={"ttl": ttl, "expires_at": now + ttl})


class IssuedSecret(BaseModel):
    """A new credential and its lease, as a backend returns them from `issue`."""

    model_config = ConfigDict(frozen=True)

    credential: Credential
    lease: VaultLease
