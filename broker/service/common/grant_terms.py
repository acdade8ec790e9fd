"""What a just-in-time grant is as data: a validated request, its Cedar resource, and the
identity its lease row and audit records carry.

A grant's lease is a normal tracked lease whose owner is the grant, not a pod: `cluster`
is ACCESS_OWNER (never a cluster's name, those are DNS labels, so no pod watch, sweep or
cluster selector takes it for a pod's), `service_account` the requester, `pod_name` the
grant id and `pod_uid` `grant:<id>`, the key Issue's idempotency already uses. So the
revocation path, its retries and the audit trail treat it like any other lease.
"""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from broker.errors import InvalidRequest
from broker.models.durations import format_duration
from broker.policy import GrantResource, RoleResource
from broker.settings import MIN_GRANT as MIN_DURATION
from broker.store import GrantRecord, GrantState, LeaseRequest

ACCESS_OWNER = "@access"
GRANT_CREDENTIAL = "access"
MAX_REASON = 1000
MAX_ROLE = 253


class GrantAsk(BaseModel):
    """A RequestGrant as the broker accepts it."""

    model_config = ConfigDict(frozen=True)

    role: str
    duration: timedelta
    reason: str


def check_grant_ask(
    role: str, duration: timedelta | None, reason: str, max_duration: timedelta
) -> GrantAsk:
    """The request, or InvalidRequest naming the field and what to write instead."""
    if not role or len(role) > MAX_ROLE:
        raise InvalidRequest("role", "is required: a role of the catalog (`keyferry roles list`)")
    if duration is None:
        raise InvalidRequest("duration", "is required: how long the grant holds, like 30m")
    if not MIN_DURATION <= duration <= max_duration:
        raise InvalidRequest(
            "duration",
            f"{format_duration(duration)} is outside what the broker allows: give between "
            f"{format_duration(MIN_DURATION)} and {format_duration(max_duration)} "
            "(the broker's access.max_duration)",
        )
    text = reason.strip()
    if not text:
        raise InvalidRequest(
            "reason", "is required: say why access is needed (a ticket, an incident)"
        )
    if len(text) > MAX_REASON:
        raise InvalidRequest("reason", f"is {len(text)} characters; keep it to {MAX_REASON}")
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise InvalidRequest("reason", "contains control characters; write plain text on one line")
    return GrantAsk(role=role, duration=duration, reason=text)


def grant_owner(grant_id: str) -> str:
    """The owner key (pod_uid) of a grant's lease rows."""
    return f"grant:{grant_id}"


def grant_where(grant_id: str) -> dict[str, Any]:
    """Where a grant's audit records say it happened: the grant is the owner, as on its lease."""
    return {"cluster": ACCESS_OWNER, "pod": grant_id, "pod_uid": grant_owner(grant_id)}


def grant_lease_request(grant: GrantRecord) -> LeaseRequest:
    return LeaseRequest(
        cluster=ACCESS_OWNER,
        namespace=ACCESS_OWNER,
        service_account=grant.requester,
        pod_name=grant.id,
        pod_uid=grant_owner(grant.id),
        credential=GRANT_CREDENTIAL,
        role=grant.role,
    )


def grant_resource(grant: GrantRecord, backend: str) -> GrantResource:
    return GrantResource(
        grant_id=grant.id,
        requester=grant.requester,
        duration_seconds=grant.duration_seconds,
        role=RoleResource(name=grant.role, backend=backend),
    )


def new_grant(
    ask: GrantAsk,
    requester: str,
    now: datetime,
    wait: timedelta,
    requester_identity: str | None = None,
) -> GrantRecord:
    """A pending grant that lapses unless decided within `wait`; `requester_identity` is
    the requester as approvals compare it (Operator.person)."""
    return GrantRecord(
        id=str(uuid.uuid4()),
        state=GrantState.PENDING,
        role=ask.role,
        requester=requester,
        reason=ask.reason,
        duration_seconds=int(ask.duration.total_seconds()),
        requested_at=now,
        expires_at=now + wait,
        decided_by=None,
        decided_at=None,
        ended_by=None,
        ended_at=None,
        lease_id=None,
        updated_at=now,
        requester_identity=requester_identity,
    )


# -- changes of the cluster registry, approved like grants -------------------------------
# With cluster_registration.approval: required, registering or deregistering a cluster is
# an access grant like any other (same table, states, approvals, self-approval refusal and
# audit records) whose `role` names the change, `cluster:register:<name>` or
# `cluster:deregister:<name>` (no catalog role has a `:`); what to do on approval is kept
# beside it (store/cluster_requests.py). It issues nothing: approval carries it out.

CLUSTER_CHANGE_PREFIX = "cluster:"
CLUSTER_BACKEND = "cluster"
CLUSTER_CHANGES = ("register", "deregister")


def cluster_change_grant(
    kind: str,
    name: str,
    reason: str,
    *,
    requester: str,
    now: datetime,
    wait: timedelta,
    requester_identity: str | None = None,
) -> GrantRecord:
    """A pending grant that approves `kind` (register, deregister) of cluster `name`."""
    if kind not in CLUSTER_CHANGES:
        raise ValueError(f"a cluster change is one of {CLUSTER_CHANGES}, not {kind!r}")
    ask = GrantAsk(
        role=f"{CLUSTER_CHANGE_PREFIX}{kind}:{name}",
        duration=MIN_DURATION,
        reason=reason[:MAX_REASON],
    )
    return new_grant(ask, requester, now, wait, requester_identity)


def cluster_change_of(grant: GrantRecord) -> tuple[str, str] | None:
    """(kind, cluster name) when the grant approves a registry change; None otherwise."""
    if not grant.role.startswith(CLUSTER_CHANGE_PREFIX):
        return None
    kind, _, name = grant.role.removeprefix(CLUSTER_CHANGE_PREFIX).partition(":")
    return (kind, name) if kind in CLUSTER_CHANGES and name else None
