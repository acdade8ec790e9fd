"""Clusters registered at run time (ClustersService), with their pinned JWKS.

Revision ID: 0003
Revises: 0002

- sealed_credential: the broker's credential for the cluster's API server (bearer token
  or client certificate and key), encrypted by the broker like a lease's credential.
- jwks, jwks_fetched_at: the pinned service-account keys and when they were fetched.
- last_contact: when the broker last reached the API server.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clusters",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("server", sa.String(2048), nullable=False),
        sa.Column("ca_pem", sa.Text(), nullable=False),
        sa.Column("issuer", sa.String(2048), nullable=False),
        sa.Column("sealed_credential", sa.LargeBinary(), nullable=False),
        sa.Column("jwks", sa.JSON(), nullable=False),
        sa.Column("jwks_fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_contact", sa.DateTime(timezone=True), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("clusters")
