"""The broker's flows (Issue, Release, Watch, Renew, RotateLeases, the role catalog and
operators' decisions on it), apart from any transport.

The server turns gRPC calls into these calls and their results and errors back into
messages and statuses; nothing here knows about gRPC. The sub-packages, from the top of
the layers down (import-linter holds the order, pyproject.toml):

- runtime.py: everything opened from settings, in dependency order;
- workload/ (the pods' calls) and admin/ (the operators' calls): the flows;
- jobs/: what the broker does periodically, and the scheduler and leader that run it;
- core.py: the services every flow shares (store, audit trail, clock, gate, engine);
- engine/: the lease engine and its Revoker, the only code that moves a lease's state;
- events/: the Watch streams' event hub and its relay between replicas;
- common/: callers, the policy gate, the audit trail, the role catalog, sealing, results.
"""

from .admin import audit_reading as audit_requests
from .admin import lease_listing as lease_requests
from .admin.access_grants import AccessFlow
from .admin.audit_reading import AuditReading
from .admin.clusters import ClusterAdmin, ClusterView, Deregistered, LeasesNotRevoked
from .admin.lease_listing import LeaseCount, LeaseListing, LeasePage
from .admin.revoke_selected import RevocationFlow
from .admin.roles import RoleAdmin
from .admin.root_credential import RootRotated, RootRotationFlow, RootTarget
from .admin.rotation import RotationFlow
from .admin.selection import LeaseProgress, LeaseSelector, Outcome, Planned, SelectionEvent, Summary
from .common.callers import bearer_token
from .common.refusals import CALLER_PEER
from .common.results import GrantCredential, GrantEnd, IssuedLease, RenewedLease, Rotation
from .common.role_catalog import RoleCatalog, StoredRole
from .events.hub import LeaseExpiring, LeaseRenewed, LeaseRevoked, LeaseRotated, WatchEvent
from .runtime import BrokerRuntime
from .workload.issue import IssueFlow
from .workload.release import ReleaseFlow
from .workload.renew import RenewFlow
from .workload.watch import AckMessage, TokenExpired, WatchFlow

__all__ = [
    "CALLER_PEER",
    "AccessFlow",
    "AckMessage",
    "AuditReading",
    "BrokerRuntime",
    "ClusterAdmin",
    "ClusterView",
    "Deregistered",
    "GrantCredential",
    "GrantEnd",
    "IssueFlow",
    "IssuedLease",
    "LeaseCount",
    "LeaseExpiring",
    "LeaseListing",
    "LeasePage",
    "LeaseProgress",
    "LeaseRenewed",
    "LeaseRevoked",
    "LeaseRotated",
    "LeaseSelector",
    "LeasesNotRevoked",
    "Outcome",
    "Planned",
    "ReleaseFlow",
    "RenewFlow",
    "RenewedLease",
    "RevocationFlow",
    "RoleAdmin",
    "RoleCatalog",
    "RootRotated",
    "RootRotationFlow",
    "RootTarget",
    "Rotation",
    "RotationFlow",
    "SelectionEvent",
    "StoredRole",
    "Summary",
    "TokenExpired",
    "WatchEvent",
    "WatchFlow",
    "audit_requests",
    "bearer_token",
    "lease_requests",
]
