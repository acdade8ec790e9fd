"""One error tree for the broker; the gRPC layer maps each class to a status code and a reason.

    KeyferryError                       reason            gRPC status
    ├── InvalidRequest                  INVALID_FIELD     INVALID_ARGUMENT
    ├── NotFound                        ROLE_UNKNOWN ...  NOT_FOUND
    ├── AlreadyExists                   CLUSTER_EXISTS    ALREADY_EXISTS
    ├── FailedPrecondition              LEASES_NOT_...    FAILED_PRECONDITION
    ├── Unauthenticated                 TOKEN_INVALID     UNAUTHENTICATED
    ├── PermissionDenied                POLICY_DENIED     PERMISSION_DENIED
    │   └── SelfApproval                SELF_APPROVAL     PERMISSION_DENIED
    ├── LimitExceeded                   LIMIT_EXCEEDED    RESOURCE_EXHAUSTED
    └── TemporaryError                  (retry later)     UNAVAILABLE
        ├── VaultUnavailable            VAULT_UNAVAILABLE
        ├── StoreUnavailable            STORE_UNAVAILABLE
        └── AuditUnavailable            AUDIT_UNAVAILABLE

Every error carries `reason` (a name from broker.api.v1.ErrorReason, machine-readable)
and a message that tells a person what to fix. Code branches on the class or the reason,
never on the message text. A `TemporaryError` may succeed on retry (after `retry_after`
seconds), and so may a rate-limited `LimitExceeded` (its `retry_after` is set); every other
error will not until the request or the configuration changes.
"""

from __future__ import annotations


class KeyferryError(Exception):
    """Base of every error the broker raises on purpose."""

    reason = "UNSPECIFIED"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidRequest(KeyferryError):
    """A field of a request, role or config is invalid; `field` names it."""

    reason = "INVALID_FIELD"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(KeyferryError):
    reason = "NOT_FOUND"


class AlreadyExists(KeyferryError):
    """What the request would create exists already (a cluster's name or keys)."""

    reason = "ALREADY_EXISTS"


class FailedPrecondition(KeyferryError):
    """The system is not in a state that allows the request; fix that state, then retry."""

    reason = "FAILED_PRECONDITION"


class Unauthenticated(KeyferryError):
    reason = "TOKEN_INVALID"


class PodOfAnotherCluster(Unauthenticated):
    """A token names a pod UID that holds live leases in another cluster: its cluster's
    API server minted a token for a pod it does not run."""

    def __init__(self, cluster: str, pod_uid: str, holders: frozenset[str]) -> None:
        super().__init__(
            f"cluster {cluster!r} presented pod UID {pod_uid}, which holds live leases in "
            f"cluster(s) {', '.join(sorted(holders))}; refused (a forged pod identity)"
        )
        self.cluster = cluster
        self.pod_uid = pod_uid
        self.holders = holders


class PermissionDenied(KeyferryError):
    reason = "POLICY_DENIED"


class SelfApproval(PermissionDenied):
    """An operator tried to approve or deny their own access request: never allowed,
    whatever the policies say."""

    reason = "SELF_APPROVAL"


class LimitExceeded(KeyferryError):
    """A cap or rate limit refused the call; a rate limit says when to retry (`retry_after`
    seconds), a cap (None) only frees up when leases end."""

    reason = "LIMIT_EXCEEDED"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TemporaryError(KeyferryError):
    """The request may succeed if retried after `retry_after` seconds."""

    reason = "UNAVAILABLE"

    def __init__(
        self, message: str, *, retry_after: float = 1.0, reason: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class VaultUnavailable(TemporaryError):
    reason = "VAULT_UNAVAILABLE"


class StoreUnavailable(TemporaryError):
    reason = "STORE_UNAVAILABLE"


class AuditUnavailable(TemporaryError):
    reason = "AUDIT_UNAVAILABLE"
