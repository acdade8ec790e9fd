"""The broker's flows (Issue, Release, the role catalog), apart from any transport.

The server turns gRPC calls into these calls and their results and errors back into
messages and statuses; nothing here knows about gRPC.
"""

from .callers import bearer_token
from .catalog import RoleCatalog, StoredRole
from .results import IssuedLease
from .runtime import BrokerRuntime

__all__ = ["BrokerRuntime", "IssuedLease", "RoleCatalog", "StoredRole", "bearer_token"]
