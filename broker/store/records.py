"""Typed results of the store: what callers get back instead of ORM rows.

Rows never leave a session; a record is a frozen copy, safe to pass between threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from broker.models import PodKey


class LeaseState(StrEnum):
    """pending → active → revoking → revoked; pending → failed (LEASE_TRANSITIONS).

    - pending: written before Vault is asked, so a crash never leaves an untracked lease.
    - active: Vault issued it; the broker renews it.
    - revoking: no longer handed out; revoked at Vault once `revoke_after` has passed
      (at once for a deleted pod, after the Ack or a grace period for a rotated one);
      retried until it succeeds.
    - revoked, failed: final. failed means Vault never issued it.
    """

    PENDING = "pending"
    ACTIVE = "active"
    REVOKING = "revoking"
    REVOKED = "revoked"
    FAILED = "failed"


LIVE_STATES = frozenset({LeaseState.PENDING, LeaseState.ACTIVE})
"""The states an Issue for the same (pod UID, credential) must find instead of a new lease."""

LEASE_TRANSITIONS: dict[LeaseState, frozenset[LeaseState]] = {
    LeaseState.PENDING: frozenset({LeaseState.ACTIVE, LeaseState.FAILED, LeaseState.REVOKING}),
    LeaseState.ACTIVE: frozenset({LeaseState.REVOKING, LeaseState.REVOKED}),
    LeaseState.REVOKING: frozenset({LeaseState.REVOKED}),
    LeaseState.REVOKED: frozenset(),
    LeaseState.FAILED: frozenset(),
}
"""Which state each lease state may move to; the store refuses any other move with
LeaseStateConflict. pending → revoking is a pod that went away while Vault was asked;
active → revoked is reconcile closing a lease Vault no longer knows."""


def lease_may_become(current: LeaseState, target: LeaseState) -> bool:
    return target in LEASE_TRANSITIONS[current]


def lease_sources(target: LeaseState) -> frozenset[LeaseState]:
    """The states a lease may reach `target` from."""
    return frozenset(s for s, targets in LEASE_TRANSITIONS.items() if target in targets)


_RECORD = ConfigDict(frozen=True, from_attributes=True, extra="forbid")


class LeaseRequest(BaseModel):
    """Who a new lease is for and what it is; the identity fields of a lease row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: str = Field(min_length=1, max_length=253)
    namespace: str = Field(min_length=1, max_length=253)
    service_account: str = Field(min_length=1, max_length=253)
    pod_name: str = Field(min_length=1, max_length=253)
    pod_uid: str = Field(min_length=1, max_length=64)
    credential: str = Field(min_length=1, max_length=253)
    role: str = Field(min_length=1, max_length=253)


class LeaseRecord(BaseModel):
    model_config = _RECORD

    id: str
    vault_lease_id: str | None
    state: LeaseState
    cluster: str
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    credential: str
    role: str
    generation: int
    expires_at: AwareDatetime | None
    revoke_after: AwareDatetime | None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    last_error: str | None
    revoke_attempts: int

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def pod_key(self) -> PodKey:
        return PodKey(self.cluster, self.pod_uid)


@dataclass(frozen=True)
class LeaseHandle:
    """What the broker keeps beside a lease row to revoke it and to hand it out again.

    `vault_lease` is the backend's VaultLease as JSON (nothing secret); `sealed_credential`
    is the credential encrypted by the broker, present only while the lease is live.
    """

    lease_id: str
    vault_lease: dict[str, Any] | None
    sealed_credential: bytes | None = field(repr=False)


@dataclass(frozen=True)
class PendingLease:
    """This call wrote the pending row: it, and only it, asks Vault for the credential."""

    lease: LeaseRecord


@dataclass(frozen=True)
class ExistingLease:
    """A live lease already exists for the pod's credential: hand it out, ask Vault nothing.

    Its state may still be pending while another call is asking Vault.
    """

    lease: LeaseRecord


class Selector(BaseModel):
    """Which leases a rotate, revoke or list applies to; unset fields match everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    pod_name: str | None = None
    role: str | None = None
    states: frozenset[LeaseState] = LIVE_STATES


class LeaseQuery(BaseModel):
    """Leases by any mix of fields, each a set of accepted values (empty: any value).

    Fields are combined with AND, the values of one field with OR. The service validates
    what a caller asked for (service/admin/selection.py) before it becomes a query.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    clusters: frozenset[str] = frozenset()
    namespaces: frozenset[str] = frozenset()
    service_accounts: frozenset[str] = frozenset()
    pod_names: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    lease_ids: frozenset[str] = frozenset()
    states: frozenset[LeaseState] = LIVE_STATES


@dataclass(frozen=True)
class RotationRequest:
    """An active lease a rotation was asked for and not done yet, and its grace (seconds;
    None for the broker's default)."""

    lease: LeaseRecord
    grace_seconds: int | None


class RoleRecord(BaseModel):
    model_config = _RECORD

    name: str
    spec: dict[str, Any]
    updated_at: datetime


class ClusterRecord(BaseModel):
    """A cluster registered at run time; its credential stays sealed."""

    model_config = _RECORD

    name: str
    server: str
    ca_pem: str
    issuer: str
    sealed_credential: bytes = Field(repr=False)
    jwks: dict[str, Any]
    jwks_fetched_at: AwareDatetime
    last_contact: AwareDatetime | None
    registered_at: AwareDatetime


class ClusterRequestRecord(BaseModel):
    """A registry change waiting for approval (its grant's id); the credential stays sealed."""

    model_config = _RECORD

    grant_id: str
    kind: str  # register | deregister
    name: str
    server: str
    ca_pem: str
    issuer: str
    sealed_credential: bytes | None = Field(repr=False)
    force: bool
    created_at: AwareDatetime


class CheckpointRecord(BaseModel):
    model_config = _RECORD

    id: int
    chain: str
    record_count: int
    head_hash: str
    document: str
    created_at: AwareDatetime


class GrantState(StrEnum):
    """A just-in-time access grant's life; no grant outlives its `expires_at`.

        pending ──approve──▶ approved ──issue──▶ issued
           │                    │                  │
           ├─deny─▶ denied      ├─expire/revoke─▶ expired / revoked
           └─expire/revoke─▶ expired / revoked ◀──┘

    denied, expired and revoked are final: nothing issues for them again, and the lease
    issued for an ended grant is revoked.
    """

    PENDING = "pending"
    APPROVED = "approved"
    ISSUED = "issued"
    DENIED = "denied"
    EXPIRED = "expired"
    REVOKED = "revoked"

    @property
    def final(self) -> bool:
        return self in FINAL_GRANT_STATES


FINAL_GRANT_STATES = frozenset({GrantState.DENIED, GrantState.EXPIRED, GrantState.REVOKED})
OPEN_GRANT_STATES = frozenset({GrantState.PENDING, GrantState.APPROVED, GrantState.ISSUED})
GRANT_TRANSITIONS: dict[GrantState, frozenset[GrantState]] = {
    GrantState.PENDING: frozenset(
        {GrantState.APPROVED, GrantState.DENIED, GrantState.EXPIRED, GrantState.REVOKED}
    ),
    GrantState.APPROVED: frozenset({GrantState.ISSUED, GrantState.EXPIRED, GrantState.REVOKED}),
    GrantState.ISSUED: frozenset({GrantState.EXPIRED, GrantState.REVOKED}),
    GrantState.DENIED: frozenset(),
    GrantState.EXPIRED: frozenset(),
    GrantState.REVOKED: frozenset(),
}
"""Which state each state may move to; anything else is a GrantStateConflict."""


def grant_may_become(current: GrantState, target: GrantState) -> bool:
    return target in GRANT_TRANSITIONS[current]


class GrantRecord(BaseModel):
    model_config = _RECORD

    id: str
    state: GrantState
    role: str
    requester: str
    reason: str
    duration_seconds: int
    requested_at: AwareDatetime
    expires_at: AwareDatetime
    decided_by: str | None
    decided_at: AwareDatetime | None
    ended_by: str | None
    ended_at: AwareDatetime | None
    lease_id: str | None
    updated_at: AwareDatetime
    requester_identity: str | None = None
    """Who asked, as approvals compare it (Operator.person): not the certificate's name
    alone, so one person holding two names cannot approve their own request."""
