"""Selecting leases by selector on a large fleet, and rotations the lease table remembers.

Revision ID: 0004
Revises: 0003

- rotate_requested_at, rotate_grace: a rotation asked for by selector is written on each
  selected active row first, so a broker that dies mid-rotation finds the rest in the
  table after a restart (the lease table is the work queue).
- ix_leases_role_state, ix_leases_namespace, ix_leases_pod_name: a selector's role,
  namespace or pod alone reads an index, as its cluster does (ix_leases_workload), so
  selecting a few leases out of 100,000 never scans the table.
- ix_leases_state_rotate: the rotation queue's pass reads only the requested rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("leases", sa.Column("rotate_requested_at", sa.DateTime(timezone=True)))
    op.add_column("leases", sa.Column("rotate_grace", sa.Integer()))
    op.create_index("ix_leases_role_state", "leases", ["role", "state"])
    op.create_index("ix_leases_namespace", "leases", ["namespace"])
    op.create_index("ix_leases_pod_name", "leases", ["pod_name"])
    op.create_index("ix_leases_state_rotate", "leases", ["state", "rotate_requested_at"])


def downgrade() -> None:
    op.drop_index("ix_leases_state_rotate", "leases")
    op.drop_index("ix_leases_pod_name", "leases")
    op.drop_index("ix_leases_namespace", "leases")
    op.drop_index("ix_leases_role_state", "leases")
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("rotate_grace")
        batch.drop_column("rotate_requested_at")
