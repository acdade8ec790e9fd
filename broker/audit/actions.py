"""Every audit record's `action`: one member per action, each with the sentence the docs'
table shows (docs/security.md, checked against this enum by tests/unit/test_audit_actions.py).

Actions are user-facing like annotations: people filter the trail by them and alerts match
them, so a new one is added here (and to the table), never spelled as a free string. A
decision's action is the Cedar action's name (`issue`, `rotate`, ...); a state change or an
operator's step is `<subject>.<what happened>`. Records written before an action existed
still parse: `AuditEvent.action` stays a constrained string.
"""

from __future__ import annotations

from enum import StrEnum


class AuditAction(StrEnum):
    description: str

    # The default only lets mypy accept a lookup by value (`AuditAction("lease.revoked")`);
    # every member gives one (tests/unit/test_audit_actions.py).
    def __new__(cls, value: str, description: str = "") -> AuditAction:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    # A workload's calls, decided by Cedar (refusals before any policy ran are recorded
    # under the same action, `who: workload/unauthenticated` for a refused token).
    ISSUE = "issue", "a workload asked for a credential of a role (Issue)"
    RELEASE = "release", "a workload asked to end one of its leases (Release)"
    RENEW = "renew", "a workload asked to extend one of its leases (Renew)"
    WATCH = "watch", "a workload's Watch stream asked to follow one of its leases"
    ACK = "ack", "a workload acknowledged a lease that is not its own (a deny, NOT_FOUND)"

    # A lease's state changes, whoever caused them.
    LEASE_ACTIVE = "lease.active", "a lease was issued and is active (credential fingerprints)"
    LEASE_REPLAYED = "lease.replayed", "a repeated Issue was answered with the pod's live lease"
    LEASE_FAILED = (
        "lease.failed",
        "issuing a lease failed and was undone, or reconcile abandoned it",
    )
    LEASE_RENEWED = "lease.renewed", "a lease's Vault lease was extended"
    LEASE_ACKED = "lease.acked", "a workload confirmed it wrote a rotated lease's credential"
    POD_RESTARTED = (
        "pod.restarted",
        "a workload's agent restarted an app container (target) to put a rotated lease in use",
    )
    LEASE_REVOKING = "lease.revoking", "a lease ends: queued for revocation at Vault, with why"
    LEASE_REVOKED = "lease.revoked", "Vault revoked a lease's credential"
    LEASE_REVOKE_FAILED = "lease.revoke_failed", "Vault refused a revocation; it is retried"
    VAULT_LEASE_REVOKED = (
        "vault_lease.revoked",
        "the reconciler revoked a Vault lease no lease row accounts for",
    )

    # An operator's rotation and revocation (RotationService).
    ROTATE = "rotate", "an operator's rotation of one lease, decided by Cedar"
    ROTATE_PLAN = "rotate.plan", "the selector of a dry-run RotateSelected (nothing decided)"
    ROTATE_SELECTED = "rotate.selected", "the selector of a RotateSelected, before any rotation"
    REVOKE = "revoke", "an operator's revocation of one lease, decided by Cedar"
    REVOKE_PLAN = "revoke.plan", "the selector of a dry-run RevokeSelected (nothing decided)"
    REVOKE_SELECTED = "revoke.selected", "the selector of a RevokeSelected, before any revocation"
    ROTATE_ROOT = "rotate_root", "an operator's RotateRoot of a database connection, decided"
    CONNECTION_ROOT_ROTATED = "connection.root_rotated", "Vault rotated a connection's root"
    CONNECTION_ROOT_ROTATE_FAILED = (
        "connection.root_rotate_failed",
        "Vault refused to rotate a connection's root",
    )

    # The role catalog (RolesService; Cedar action `grant`).
    ROLES_APPLY = "roles.apply", "an operator created or changed a role"
    ROLES_READ = "roles.read", "an operator read a role"
    ROLES_LIST = "roles.list", "one role an operator's ListRoles decided on"
    ROLES_DELETE = "roles.delete", "an operator deleted a role"

    # The cluster registry (ClustersService; Cedar action `register`).
    CLUSTERS_REGISTER = (
        "clusters.register",
        "an operator registered a cluster (or its checks failed)",
    )
    CLUSTERS_READ = "clusters.read", "an operator read a cluster"
    CLUSTERS_LIST = "clusters.list", "one cluster an operator's ListClusters decided on"
    CLUSTERS_DEREGISTER = "clusters.deregister", "an operator deregistered a cluster"

    # Just-in-time access grants (AccessService).
    ACCESS_REQUEST = "access.request", "an operator requested a grant of a role"
    ACCESS_APPROVE = "access.approve", "an operator approved a grant"
    ACCESS_DENY = "access.deny", "an operator denied a grant"
    ACCESS_ISSUE = "access.issue", "a grant's requester was issued its credential (or refused)"
    ACCESS_REVOKE = "access.revoke", "an operator revoked a grant"
    ACCESS_EXPIRE = "access.expire", "a grant's time ran out; its leases end"
    ACCESS_READ = "access.read", "one grant an operator's GetGrant or ListGrants decided on"

    # Reading the broker's records (AuditService, LeasesService; Cedar action `audit` on
    # the Broker): one decision per call.
    AUDIT_LIST = "audit.list", "an operator read a page of the audit trail (ListAuditRecords)"
    AUDIT_VERIFY = "audit.verify", "an operator had the broker verify the audit chain"
    AUDIT_ACTIVITY = "audit.activity", "an operator read the activity per minute"
    LEASES_LIST = "leases.list", "an operator read a page of leases by selector (ListLeases)"
    LEASES_COUNT = "leases.count", "an operator counted leases by selector (CountLeases)"
    # What the broker refused to trust (issue 18).
    STORE_ROW_REFUSED = (
        "store.row_refused",
        "a role or cluster row failed its integrity check (edited outside keyferry): refused",
    )
