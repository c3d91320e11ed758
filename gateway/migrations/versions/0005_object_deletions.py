"""Stored objects waiting to be deleted: written in the transaction that deletes their rows, removed
once the object is gone. A failed deletion stays, with its error and the time of its next attempt,
until the background task succeeds: no object is orphaned by a crash or a storage outage.

And uploads a client was given a URL for (`requestElementUpload`) and has not completed yet: the
element's fields wait here; an upload never completed is removed with its object when it expires.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_object_deletions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("objectKey", sa.Text(), nullable=False),
        sa.Column("createdAt", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lastError", sa.Text()),
        sa.Column("nextAttemptAt", sa.Text(), nullable=False),
    )
    op.create_index("ix_gateway_object_deletions_next", "gateway_object_deletions", ["nextAttemptAt"])
    op.create_table(
        "gateway_pending_uploads",
        sa.Column("id", sa.String(36), primary_key=True),  # the element's id
        sa.Column("objectKey", sa.Text(), nullable=False),
        sa.Column("element", sa.JSON(), nullable=False),  # the element's fields, written on completion
        sa.Column("userId", sa.String(36)),  # the user who asked; NULL for a backend
        sa.Column("expiresAt", sa.Text(), nullable=False),
    )
    op.create_index("ix_gateway_pending_uploads_expires", "gateway_pending_uploads", ["expiresAt"])


def downgrade() -> None:
    op.drop_table("gateway_pending_uploads")
    op.drop_table("gateway_object_deletions")
