"""What the broker's flows return to the server, which converts them for the wire."""

from __future__ import annotations

from datetime import timedelta

from pydantic import AwareDatetime, BaseModel, ConfigDict

from broker.models import Credential
from broker.store import GrantRecord, LeaseRecord


class IssuedLease(BaseModel):
    """A live lease and its credential; `replayed` when an earlier Issue created it."""

    model_config = ConfigDict(frozen=True)

    lease: LeaseRecord
    credential: Credential
    renewable: bool
    replayed: bool


class RenewedLease(BaseModel):
    """A lease after a renewal: `lease.expires_at` is the new expiry."""

    model_config = ConfigDict(frozen=True)

    lease: LeaseRecord
    renewable: bool
    granted: timedelta | None = None  # what Vault granted; less than asked: capped at max TTL


class Rotation(BaseModel):
    """One lease's rotation: the new generation and when the old one is revoked at the latest."""

    model_config = ConfigDict(frozen=True)

    previous_lease_id: str
    lease: LeaseRecord
    renewable: bool
    revoke_after: AwareDatetime | None
    already_rotated: bool


class GrantCredential(BaseModel):
    """IssueForGrant's result: the grant, its lease, and the credential."""

    model_config = ConfigDict(frozen=True)

    grant: GrantRecord
    lease: LeaseRecord
    credential: Credential
    renewable: bool


class GrantEnd(BaseModel):
    """RevokeGrant's result: the grant, and its leases Vault did not revoke yet (queued)."""

    model_config = ConfigDict(frozen=True)

    grant: GrantRecord
    pending_lease_ids: list[str]
