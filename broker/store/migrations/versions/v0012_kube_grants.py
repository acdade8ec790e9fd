"""Just-in-time access to member clusters: what each cluster grant created there.

Revision ID: 0012
Revises: 0011

One row per access grant to a cluster (the grant itself stays in access_grants): the
cluster, namespace (none: all namespaces) and ClusterRole; the ServiceAccount made for
the grant and the UIDs the API server gave it and its binding (ownership is checked by
UID, never by labels alone); where the objects are in their life (absent, creating,
present, removing, removed), the deletion retries, and which path ended the access
(the token's own expiry, or the ServiceAccount's deletion).

And RBAC kept in sync across clusters: each cluster's labels, the RBAC profiles applied,
and the bindings the broker made for them (by UID: it deletes or restores only those).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision: str | None = "0011"
branch_labels = None
depends_on = None

OBJECTS_CHECK = "objects IN ('absent', 'creating', 'present', 'removing', 'removed')"


def upgrade() -> None:
    op.create_table(
        "kube_grants",
        sa.Column("grant_id", sa.String(36), primary_key=True),
        sa.Column("cluster", sa.String(63), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=True),
        sa.Column("cluster_role", sa.String(253), nullable=False),
        sa.Column("account_namespace", sa.String(63), nullable=False),
        sa.Column("account", sa.String(253), nullable=False),
        sa.Column("objects", sa.String(16), nullable=False),
        sa.Column("account_uid", sa.String(64), nullable=True),
        sa.Column("binding_uid", sa.String(64), nullable=True),
        sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("ended_path", sa.String(32), nullable=True),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(OBJECTS_CHECK, name="ck_kube_grants_objects"),
    )
    op.create_index("ix_kube_grants_objects_next", "kube_grants", ["objects", "next_attempt_at"])
    op.create_index("ix_kube_grants_cluster", "kube_grants", ["cluster"])
    op.create_table(
        "cluster_labels",
        sa.Column("cluster", sa.String(63), primary_key=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rbac_profiles",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "rbac_bindings",
        sa.Column("cluster", sa.String(63), primary_key=True),
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("namespace", sa.String(63), primary_key=True),
        sa.Column("profile", sa.String(63), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rbac_bindings")
    op.drop_table("rbac_profiles")
    op.drop_table("cluster_labels")
    op.drop_index("ix_kube_grants_cluster", "kube_grants")
    op.drop_index("ix_kube_grants_objects_next", "kube_grants")
    op.drop_table("kube_grants")
