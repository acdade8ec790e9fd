"""Leases, roles and audit checkpoints.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

LIVE_WHERE = sa.text("state IN ('pending', 'active')")


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("vault_lease_id", sa.String(512), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("cluster", sa.String(253), nullable=False),
        sa.Column("namespace", sa.String(253), nullable=False),
        sa.Column("service_account", sa.String(253), nullable=False),
        sa.Column("pod_name", sa.String(253), nullable=False),
        sa.Column("pod_uid", sa.String(64), nullable=False),
        sa.Column("credential", sa.String(253), nullable=False),
        sa.Column("role", sa.String(253), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoke_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("revoke_attempts", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'active', 'revoking', 'revoked', 'failed')",
            name="ck_leases_state",
        ),
    )
    op.create_index(
        "uq_leases_live_generation",
        "leases",
        ["pod_uid", "credential", "generation"],
        unique=True,
        sqlite_where=LIVE_WHERE,
        postgresql_where=LIVE_WHERE,
    )
    op.create_index("ix_leases_pod_credential", "leases", ["pod_uid", "credential"])
    op.create_index("ix_leases_state_expires", "leases", ["state", "expires_at"])
    op.create_index("ix_leases_state_revoke_after", "leases", ["state", "revoke_after"])
    op.create_index("ix_leases_workload", "leases", ["cluster", "namespace", "service_account"])
    op.create_index("ix_leases_vault_lease_id", "leases", ["vault_lease_id"])

    op.create_table(
        "roles",
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )

    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("chain", sa.String(128), nullable=False),
        sa.Column("record_count", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_audit_checkpoints_chain", "audit_checkpoints", ["chain", "record_count"])


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_table("roles")
    op.drop_table("leases")
