"""Each recorded deletion and pending upload names the store its object is in, so a gateway
deletes only objects of its own store: a replica configured with another bucket or directory
(by mistake, or while storage moves) must not drop rows for objects it cannot reach. Rows written
before this revision have no store; any gateway takes them, as before.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gateway_object_deletions") as table:
        table.add_column(sa.Column("store", sa.Text()))
    with op.batch_alter_table("gateway_pending_uploads") as table:
        table.add_column(sa.Column("store", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("gateway_pending_uploads") as table:
        table.drop_column("store")
    with op.batch_alter_table("gateway_object_deletions") as table:
        table.drop_column("store")
