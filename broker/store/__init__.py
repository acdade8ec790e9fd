"""The lease store: every credential keyferry hands out, from before Vault is asked until revoked.

Sync SQLAlchemy on a dedicated thread pool, not SQLAlchemy's asyncio extension:

- SQLite, the embedded default, has no asynchronous driver; aiosqlite is a thread per
  connection behind a queue, so "async" would only add a layer over the same threads.
- Alembic migrations, the scheduler's jobs (APScheduler runs them on threads) and the
  concurrency tests are all synchronous; one synchronous API serves them all.
- psycopg 3's sync driver is the one SQLAlchemy documents best, and a blocking call on a
  sized pool (`StoreRunner`) keeps the database's latency off the event loop exactly as the
  backends do with hvac. The pool is sized to the connection pool, so a thread never
  waits for a connection while holding a worker.
"""

from __future__ import annotations

from .async_store import AsyncStore
from .audit_chain import AuditChainRepository
from .checkpoints import CheckpointRepository
from .clusters import ClusterRepository
from .config import StoreSettings
from .engine import create_store_engine
from .errors import (
    ClusterExists,
    ClusterNotFound,
    GrantNotFound,
    GrantStateConflict,
    IssueInProgress,
    LeaseNotFound,
    LeaseStateConflict,
    RoleNotFound,
)
from .failures import store_errors
from .grants import GrantRepository
from .integrity import RowKeyMissing, RowSigner, RowTampered
from .keyring import KeyMissing, KeyRing, RingKey, derive_key
from .kube_grants import KubeGrantRepository
from .leases import LeaseRepository, Recorded, Settled
from .migrate import current_revision, head_revision, upgrade
from .rbac import RbacBindingRecord, RbacRepository
from .records import (
    LEASE_TRANSITIONS,
    LIVE_STATES,
    CapReached,
    CheckpointRecord,
    ClusterRecord,
    ClusterRequestRecord,
    Completion,
    EndedAtOnce,
    EndPath,
    ExistingLease,
    GrantRecord,
    GrantState,
    KubeGrantRecord,
    KubeObjects,
    LeaseHandle,
    LeaseQuery,
    LeaseRecord,
    LeaseRequest,
    LeaseState,
    LiveCaps,
    PendingLease,
    RoleRecord,
    RotationRequest,
    Selector,
)
from .rekey import KeyUse, Rekey, Reseal, TableReport
from .roles import RoleRepository
from .runner import StoreRunner
from .store import Store

__all__ = [
    "LEASE_TRANSITIONS",
    "LIVE_STATES",
    "AsyncStore",
    "AuditChainRepository",
    "CapReached",
    "CheckpointRecord",
    "CheckpointRepository",
    "ClusterExists",
    "ClusterNotFound",
    "ClusterRecord",
    "ClusterRepository",
    "ClusterRequestRecord",
    "Completion",
    "EndPath",
    "EndedAtOnce",
    "ExistingLease",
    "GrantNotFound",
    "GrantRecord",
    "GrantRepository",
    "GrantState",
    "GrantStateConflict",
    "IssueInProgress",
    "KeyMissing",
    "KeyRing",
    "KeyUse",
    "KubeGrantRecord",
    "KubeGrantRepository",
    "KubeObjects",
    "LeaseHandle",
    "LeaseNotFound",
    "LeaseQuery",
    "LeaseRecord",
    "LeaseRepository",
    "LeaseRequest",
    "LeaseState",
    "LeaseStateConflict",
    "LiveCaps",
    "PendingLease",
    "RbacBindingRecord",
    "RbacRepository",
    "Recorded",
    "Rekey",
    "Reseal",
    "RingKey",
    "RoleNotFound",
    "RoleRecord",
    "RoleRepository",
    "RotationRequest",
    "RowKeyMissing",
    "RowSigner",
    "RowTampered",
    "Selector",
    "Settled",
    "Store",
    "StoreRunner",
    "StoreSettings",
    "TableReport",
    "create_store_engine",
    "current_revision",
    "derive_key",
    "head_revision",
    "store_errors",
    "upgrade",
]
