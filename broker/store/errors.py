"""The store's own errors, in the broker's error tree (broker.errors)."""

from __future__ import annotations

from broker.errors import (
    AlreadyExists,
    FailedPrecondition,
    KeyferryError,
    NotFound,
    TemporaryError,
)

from .records import GrantRecord, GrantState, LeaseRecord, LeaseState


class LeaseNotFound(NotFound):
    def __init__(self, lease_id: str) -> None:
        super().__init__(f"lease {lease_id!r} does not exist; list leases with `keyferry leases`")
        self.lease_id = lease_id


class RoleNotFound(NotFound):
    reason = "ROLE_UNKNOWN"

    def __init__(self, name: str) -> None:
        super().__init__(f"role {name!r} does not exist; list roles with `keyferry roles list`")
        self.name = name


class ClusterNotFound(NotFound):
    reason = "CLUSTER_UNKNOWN"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"cluster {name!r} is not registered; list clusters with `keyferry clusters list`"
        )
        self.name = name


class ClusterExists(AlreadyExists):
    """A cluster of that name, or one holding the same service-account key, is registered."""

    reason = "CLUSTER_EXISTS"


class LeaseStateConflict(KeyferryError):
    """A lease is not in a state that allows the change asked for.

    The caller decides what follows from `lease.state`: for example, a Vault lease that
    was issued for a row that meanwhile became `revoking` must be revoked at once. It is
    handled inside the broker and is not meant to reach a client.
    """

    def __init__(self, lease: LeaseRecord, change: str, allowed: frozenset[LeaseState]) -> None:
        wanted = ", ".join(sorted(allowed))
        super().__init__(
            f"lease {lease.id} is {lease.state}; {change} needs it to be one of: {wanted}"
        )
        self.lease = lease
        self.change = change
        self.allowed = allowed


class IssueInProgress(TemporaryError):
    """Concurrent calls kept racing for the same (pod UID, credential); retry shortly."""

    def __init__(self, pod_uid: str, credential: str) -> None:
        super().__init__(
            f"another request is issuing credential {credential!r} for pod {pod_uid}; retry",
            retry_after=0.5,
        )


class GrantNotFound(NotFound):
    def __init__(self, grant_id: str) -> None:
        super().__init__(
            f"access grant {grant_id!r} does not exist; list grants with `keyferry access list`"
        )
        self.grant_id = grant_id


class GrantStateConflict(FailedPrecondition):
    """A grant is not in a state that allows the step asked for (approve a denied grant,
    issue for an expired one); `grant` is the grant as it is."""

    def __init__(self, grant: GrantRecord, step: str) -> None:
        super().__init__(
            f"access grant {grant.id} is {grant.state}; it cannot be {step}"
            + _GRANT_HINTS.get(grant.state, "")
        )
        self.grant = grant
        self.step = step


_GRANT_HINTS = {
    GrantState.PENDING: " until an approver approves it (`keyferry access approve`)",
    GrantState.DENIED: "; it was denied: request a new grant",
    GrantState.EXPIRED: "; it has expired: request a new grant",
    GrantState.REVOKED: "; it was revoked: request a new grant",
}
