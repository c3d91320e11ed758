"""Each recorded deletion and pending upload names the store its object is in, so a gateway
deletes only objects of its own store: a replica configured with another bucket or directory
(by mistake, or while storage moves) must not drop rows for objects it cannot reach. Rows written
before this revision have no store; any gateway takes them, as before.

Pending uploads also name their thread, so deleting a thread (or its user) ends its uploads: a
completion arriving later must not bring the thread back.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    on_postgres = op.get_bind().dialect.name == "postgresql"
    uuid: sa.types.TypeEngine[Any] = postgresql.UUID(as_uuid=False) if on_postgres else sa.String(36)
    with op.batch_alter_table("gateway_object_deletions") as table:
        table.add_column(sa.Column("store", sa.Text()))
    with op.batch_alter_table("gateway_pending_uploads") as table:
        table.add_column(sa.Column("store", sa.Text()))
        table.add_column(sa.Column("threadId", uuid))  # the type of threads.id, to compare with it
    op.create_index("ix_gateway_pending_uploads_thread", "gateway_pending_uploads", ["threadId"])


def downgrade() -> None:
    op.drop_index("ix_gateway_pending_uploads_thread", "gateway_pending_uploads")
    with op.batch_alter_table("gateway_pending_uploads") as table:
        table.drop_column("threadId")
        table.drop_column("store")
    with op.batch_alter_table("gateway_object_deletions") as table:
        table.drop_column("store")
