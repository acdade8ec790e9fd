"""One audit chain shared by every replica: its head and its records in the store.

Revision ID: 0005
Revises: 0004

- audit_heads: per chain, the record count and the last record's hash; a replica appends
  under this row's lock (SELECT ... FOR UPDATE), so records of all replicas form one chain.
- audit_records: each record's log line (canonical JSON, as broker.audit writes it), by
  chain and sequence number.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_heads",
        sa.Column("chain", sa.String(128), primary_key=True),
        sa.Column("record_count", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_records",
        sa.Column("chain", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True),
        sa.Column("line", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_records")
    op.drop_table("audit_heads")
