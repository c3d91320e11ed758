"""Chainlit's SQL data layer schema, created where it does not exist yet.

A database that Chainlit already created keeps its tables and rows untouched; a new database gets
the same five tables, column for column (`seeds/000`: users, threads, steps, elements, feedbacks).

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    on_postgres = bind.dialect.name == "postgresql"
    uuid: sa.types.TypeEngine[Any] = postgresql.UUID(as_uuid=False) if on_postgres else sa.String(36)
    document: sa.types.TypeEngine[Any] = postgresql.JSONB() if on_postgres else sa.JSON()
    tags: sa.types.TypeEngine[Any] = postgresql.ARRAY(sa.Text()) if on_postgres else sa.JSON()
    existing = set(sa.inspect(bind).get_table_names())

    if "users" not in existing:
        op.create_table(
            "users",
            sa.Column("id", uuid, primary_key=True),
            sa.Column("identifier", sa.Text(), nullable=False, unique=True),
            sa.Column("metadata", document, nullable=False),
            sa.Column("createdAt", sa.Text()),
        )
    if "threads" not in existing:
        op.create_table(
            "threads",
            sa.Column("id", uuid, primary_key=True),
            sa.Column("createdAt", sa.Text()),
            sa.Column("name", sa.Text()),
            sa.Column("userId", uuid, sa.ForeignKey("users.id", ondelete="CASCADE")),
            sa.Column("userIdentifier", sa.Text()),
            sa.Column("tags", tags),
            sa.Column("metadata", document),
        )
    if "steps" not in existing:
        op.create_table(
            "steps",
            sa.Column("id", uuid, primary_key=True),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("type", sa.Text(), nullable=False),
            sa.Column("threadId", uuid, sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False),
            sa.Column("parentId", uuid),
            sa.Column("streaming", sa.Boolean(), nullable=False),
            sa.Column("waitForAnswer", sa.Boolean()),
            sa.Column("isError", sa.Boolean()),
            sa.Column("metadata", document),
            sa.Column("tags", tags),
            sa.Column("input", sa.Text()),
            sa.Column("output", sa.Text()),
            sa.Column("createdAt", sa.Text()),
            sa.Column("start", sa.Text()),
            sa.Column("end", sa.Text()),
            sa.Column("generation", document),
            sa.Column("showInput", sa.Text()),
            sa.Column("language", sa.Text()),
            sa.Column("indent", sa.Integer()),
        )
    if "elements" not in existing:
        op.create_table(
            "elements",
            sa.Column("id", uuid, primary_key=True),
            sa.Column("threadId", uuid, sa.ForeignKey("threads.id", ondelete="CASCADE")),
            sa.Column("type", sa.Text()),
            sa.Column("url", sa.Text()),
            sa.Column("chainlitKey", sa.Text()),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("display", sa.Text()),
            sa.Column("objectKey", sa.Text()),
            sa.Column("size", sa.Text()),
            sa.Column("page", sa.Integer()),
            sa.Column("language", sa.Text()),
            sa.Column("forId", uuid),
            sa.Column("mime", sa.Text()),
        )
    if "feedbacks" not in existing:
        op.create_table(
            "feedbacks",
            sa.Column("id", uuid, primary_key=True),
            sa.Column("forId", uuid, nullable=False),
            sa.Column("threadId", uuid, sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False),
            sa.Column("value", sa.Integer(), nullable=False),
            sa.Column("comment", sa.Text()),
        )


def downgrade() -> None:
    raise NotImplementedError("the baseline is Chainlit's schema; it is never dropped by a migration")
