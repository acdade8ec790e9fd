"""The broker's flows (Issue, Release, Watch, Renew, RotateLeases, the role catalog), apart
from any transport.

The server turns gRPC calls into these calls and their results and errors back into
messages and statuses; nothing here knows about gRPC.
"""

from .callers import bearer_token
from .catalog import RoleCatalog, StoredRole
from .events import LeaseExpiring, LeaseRevoked, LeaseRotated, WatchEvent
from .results import IssuedLease, RenewedLease, Rotation
from .rotating import ADMIN_SOCKET_OPERATOR
from .runtime import BrokerRuntime
from .watching import AckMessage, TokenExpired

__all__ = [
    "ADMIN_SOCKET_OPERATOR",
    "AckMessage",
    "BrokerRuntime",
    "IssuedLease",
    "LeaseExpiring",
    "LeaseRevoked",
    "LeaseRotated",
    "RenewedLease",
    "RoleCatalog",
    "Rotation",
    "StoredRole",
    "TokenExpired",
    "WatchEvent",
    "bearer_token",
]
