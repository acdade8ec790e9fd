"""A pod's leases are keyed by (cluster, pod UID), not the pod UID alone.

Revision ID: 0008
Revises: 0007

A member cluster's API server can mint a token with any UID, so the UID of a pod of
another cluster must not reach that pod's live lease (issue 18). Existing rows keep their
cluster column as it is; widening a unique index cannot make existing rows collide.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None

LIVE_WHERE = sa.text("state IN ('pending', 'active')")


def upgrade() -> None:
    _rekey(["cluster", "pod_uid", "credential"])


def downgrade() -> None:
    _rekey(["pod_uid", "credential"])


def _rekey(pod: list[str]) -> None:
    """Both lease indexes of a pod's credential, over the columns `pod` names it by."""
    op.drop_index("ix_leases_pod_credential", "leases")
    op.drop_index("uq_leases_live_generation", "leases")
    op.create_index(
        "uq_leases_live_generation",
        "leases",
        [*pod, "generation"],
        unique=True,
        sqlite_where=LIVE_WHERE,
        postgresql_where=LIVE_WHERE,
    )
    op.create_index("ix_leases_pod_credential", "leases", pod)
