"""The ORM tables. Migrations (broker/store/migrations) create them; a test proves both agree.

Partial unique index `uq_leases_live_generation` is the store's idempotency rule: among
pending and active rows, one per (pod UID, credential, generation). Issue takes the next
generation after every existing row of that pod's credential, so two concurrent Issues
always pick the same generation and collide; a rotation adds generation + 1 while the
current one stays active until the pod has the new credential. SQLite and PostgreSQL
both support `CREATE UNIQUE INDEX ... WHERE`; revoking, revoked and failed rows are outside
it, so a restarted agent gets a new lease while its old one is still being revoked.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

LIVE_WHERE = "state IN ('pending', 'active')"
STATE_CHECK = "state IN ('pending', 'active', 'revoking', 'revoked', 'failed')"
GRANT_STATE_CHECK = "state IN ('pending', 'approved', 'issued', 'denied', 'expired', 'revoked')"
NAME = 253  # a Kubernetes object name (DNS subdomain) at most


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite keeps no offset, so it stores naive UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the lease store takes timezone-aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData()


class LeaseRow(Base):
    __tablename__ = "leases"
    __table_args__ = (
        CheckConstraint(STATE_CHECK, name="ck_leases_state"),
        Index(
            "uq_leases_live_generation",
            "cluster",
            "pod_uid",
            "credential",
            "generation",
            unique=True,
            sqlite_where=text(LIVE_WHERE),
            postgresql_where=text(LIVE_WHERE),
        ),
        Index("ix_leases_pod_credential", "cluster", "pod_uid", "credential"),
        Index("ix_leases_state_expires", "state", "expires_at"),
        Index("ix_leases_state_revoke_after", "state", "revoke_after"),
        Index("ix_leases_workload", "cluster", "namespace", "service_account"),
        Index("ix_leases_vault_lease_id", "vault_lease_id"),
        Index("ix_leases_role_state", "role", "state"),
        Index("ix_leases_namespace", "namespace"),
        Index("ix_leases_pod_name", "pod_name"),
        Index("ix_leases_state_rotate", "state", "rotate_requested_at"),
        Index("ix_leases_cluster_created", "cluster", "created_at", "id"),
        Index("ix_leases_role_created", "role", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vault_lease_id: Mapped[str | None] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(16))
    cluster: Mapped[str] = mapped_column(String(NAME))
    namespace: Mapped[str] = mapped_column(String(NAME))
    service_account: Mapped[str] = mapped_column(String(NAME))
    pod_name: Mapped[str] = mapped_column(String(NAME))
    pod_uid: Mapped[str] = mapped_column(String(64))
    credential: Mapped[str] = mapped_column(String(NAME))
    role: Mapped[str] = mapped_column(String(NAME))
    generation: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoke_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    revoke_attempts: Mapped[int] = mapped_column(Integer)
    vault_lease: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sealed_credential: Mapped[bytes | None] = mapped_column(LargeBinary)
    rotate_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rotate_grace: Mapped[int | None] = mapped_column(Integer)  # seconds


class RoleRow(Base):
    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    mac: Mapped[str | None] = mapped_column(String(64))  # integrity.py


class CheckpointRow(Base):
    """A signed audit checkpoint: the audit trail's second sink, apart from its file."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (Index("ix_audit_checkpoints_chain", "chain", "record_count"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain: Mapped[str] = mapped_column(String(128))
    record_count: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    document: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ClusterRow(Base):
    """A cluster registered at run time: how to reach it (its credential sealed by the
    broker) and its pinned JWKS."""

    __tablename__ = "clusters"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    server: Mapped[str] = mapped_column(String(2048))
    ca_pem: Mapped[str] = mapped_column(Text)
    issuer: Mapped[str] = mapped_column(String(2048))
    sealed_credential: Mapped[bytes] = mapped_column(LargeBinary)
    jwks: Mapped[dict[str, Any]] = mapped_column(JSON)
    jwks_fetched_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_contact: Mapped[datetime | None] = mapped_column(UTCDateTime())
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    mac: Mapped[str | None] = mapped_column(String(64))  # integrity.py


class AuditHeadRow(Base):
    """The shared audit chain's head: appends take this row's lock (audit_chain.py)."""

    __tablename__ = "audit_heads"

    chain: Mapped[str] = mapped_column(String(128), primary_key=True)
    record_count: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))


class AuditRecordRow(Base):
    """One record of the shared audit chain, as its canonical log line."""

    __tablename__ = "audit_records"

    chain: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    line: Mapped[str] = mapped_column(Text)


class GrantRow(Base):
    """A just-in-time access grant: who asked for which role, for how long and why, who
    decided, and until when it holds (the request's deadline while pending)."""

    __tablename__ = "access_grants"
    __table_args__ = (
        CheckConstraint(GRANT_STATE_CHECK, name="ck_access_grants_state"),
        Index("ix_access_grants_state_expires", "state", "expires_at"),
        Index("ix_access_grants_requester", "requester"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(NAME))
    requester: Mapped[str] = mapped_column(String(NAME))
    reason: Mapped[str] = mapped_column(Text)
    duration_seconds: Mapped[int] = mapped_column(Integer)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(NAME))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_by: Mapped[str | None] = mapped_column(String(NAME))
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_id: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    requester_identity: Mapped[str | None] = mapped_column(String(NAME))


class ClusterRequestRow(Base):
    """A change of the cluster registry waiting for a second operator: the access grant
    that approves it, and what to do (register: how to reach the cluster, its credential
    sealed; deregister: whether to force). MAC'd like a cluster row (integrity.py)."""

    __tablename__ = "cluster_requests"

    grant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(63))
    server: Mapped[str] = mapped_column(String(2048))
    ca_pem: Mapped[str] = mapped_column(Text)
    issuer: Mapped[str] = mapped_column(String(2048))
    sealed_credential: Mapped[bytes | None] = mapped_column(LargeBinary)
    force: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    mac: Mapped[str | None] = mapped_column(String(64))
