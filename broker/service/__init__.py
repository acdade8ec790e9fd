"""The broker's flows (Issue, Release, Watch, Renew, RotateLeases, the role catalog and
operators' decisions on it), apart from any transport.

The server turns gRPC calls into these calls and their results and errors back into
messages and statuses; nothing here knows about gRPC.
"""

from .access import AccessFlow
from .callers import bearer_token
from .catalog import RoleCatalog, StoredRole
from .cluster_admin import ClusterAdmin, ClusterView, Deregistered, LeasesNotRevoked
from .events import LeaseExpiring, LeaseRenewed, LeaseRevoked, LeaseRotated, WatchEvent
from .refusals import CALLER_PEER
from .results import GrantCredential, GrantEnd, IssuedLease, RenewedLease, Rotation
from .role_admin import RoleAdmin
from .root_rotation import RootRotated, RootTarget
from .runtime import BrokerRuntime
from .selection import LeaseProgress, LeaseSelector, Outcome, Planned, SelectionEvent, Summary
from .watching import AckMessage, TokenExpired

__all__ = [
    "CALLER_PEER",
    "AccessFlow",
    "AckMessage",
    "BrokerRuntime",
    "ClusterAdmin",
    "ClusterView",
    "Deregistered",
    "GrantCredential",
    "GrantEnd",
    "IssuedLease",
    "LeaseExpiring",
    "LeaseProgress",
    "LeaseRenewed",
    "LeaseRevoked",
    "LeaseRotated",
    "LeaseSelector",
    "LeasesNotRevoked",
    "Outcome",
    "Planned",
    "RenewedLease",
    "RoleAdmin",
    "RoleCatalog",
    "RootRotated",
    "RootTarget",
    "Rotation",
    "SelectionEvent",
    "StoredRole",
    "Summary",
    "TokenExpired",
    "WatchEvent",
    "bearer_token",
]
