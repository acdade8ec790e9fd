"""Role and cluster rows carry an integrity MAC.

Revision ID: 0009
Revises: 0008

The broker trusts a role row (which Vault path) and a cluster row (which API server, CA
and signing keys); someone who can write the database must not be able to change them
unnoticed (issue 18). The column holds an HMAC-SHA256 (hex) under a key the database does
not hold (broker/store/integrity.py). The migration cannot compute it: the start that runs
this migration adopts the rows already there with a MAC, in the same transaction
(`Store.open`), and every later start refuses a row without one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels = None
depends_on = None

TABLES = ("roles", "clusters")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("mac", sa.String(64), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("mac")
