"""Just-in-time access grants (AccessService).

Revision ID: 0006
Revises: 0005

One row per grant: role, requester, reason, duration, state (pending, approved, issued,
denied, expired, revoked), who decided and when, who ended it, and the lease issued for
it. `expires_at` is the request's deadline while pending and the grant's end once
approved; the expiry job finds due grants by (state, expires_at).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None

STATE_CHECK = "state IN ('pending', 'approved', 'issued', 'denied', 'expired', 'revoked')"


def upgrade() -> None:
    op.create_table(
        "access_grants",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("role", sa.String(253), nullable=False),
        sa.Column("requester", sa.String(253), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(253), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(253), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_id", sa.String(36), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(STATE_CHECK, name="ck_access_grants_state"),
    )
    op.create_index("ix_access_grants_state_expires", "access_grants", ["state", "expires_at"])
    op.create_index("ix_access_grants_requester", "access_grants", ["requester"])


def downgrade() -> None:
    op.drop_index("ix_access_grants_requester", "access_grants")
    op.drop_index("ix_access_grants_state_expires", "access_grants")
    op.drop_table("access_grants")
