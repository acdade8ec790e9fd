"""An access grant keeps its requester's stable identity.

Revision ID: 0011
Revises: 0010

Approvals compared the certificate's CN alone, so one person with two operator names
could approve their own request (issue 18). The requester's identity (the certificate's
`urn:keyferry:operator:` name, or its CN) is kept with the grant; rows from before have
none and are compared by name, as they were.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("access_grants") as batch:
        batch.add_column(sa.Column("requester_identity", sa.String(253), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_grants") as batch:
        batch.drop_column("requester_identity")
