"""Each lease keeps its Vault handle and its credential, sealed, for idempotent Issue.

Revision ID: 0002
Revises: 0001

- vault_lease: the backend's VaultLease as JSON (kind, mount, lease id, serial, version):
  what revocation needs, nothing secret.
- sealed_credential: the credential values encrypted by the broker (AES-256-GCM, the lease
  id as associated data), so a repeated Issue returns them without a new Vault lease.
  Cleared when the lease stops being handed out.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("leases", sa.Column("vault_lease", sa.JSON(), nullable=True))
    op.add_column("leases", sa.Column("sealed_credential", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("sealed_credential")
        batch.drop_column("vault_lease")
