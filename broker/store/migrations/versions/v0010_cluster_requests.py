"""Registry changes waiting for a second operator's approval.

Revision ID: 0010
Revises: 0009

Registering a cluster lets its API server speak for its pods, so with
cluster_registration.approval: required a registration (or deregistration) is an access
grant another operator approves (issue 18); this table keeps what to do on approval.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_requests",
        sa.Column("grant_id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("server", sa.String(2048), nullable=False),
        sa.Column("ca_pem", sa.Text(), nullable=False),
        sa.Column("issuer", sa.String(2048), nullable=False),
        sa.Column("sealed_credential", sa.LargeBinary(), nullable=True),
        sa.Column("force", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mac", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("cluster_requests")
