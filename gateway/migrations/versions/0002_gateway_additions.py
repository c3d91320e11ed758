"""The gateway's additions: newer Chainlit columns, threads."updatedAt", elements' size and time,
indexes for every hot path, one feedback per step, and trigram search on PostgreSQL.

Every addition is nullable or defaulted, and existing rows are back-filled, so a Chainlit database
keeps all its rows and a Chainlit app can go on writing to it.

Revision ID: 0002
Revises: 0001
"""

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger("gateway.migrate")

EPOCH = "1970-01-01T00:00:00.000Z"
PG_NOW = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
SQLITE_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

INDEXES: list[tuple[str, str, list[str], bool]] = [
    ("ix_threads_userId_updatedAt_id", "threads", ["userId", "updatedAt", "id"], False),
    ("ix_threads_updatedAt_id", "threads", ["updatedAt", "id"], False),
    ("ix_threads_createdAt_id", "threads", ["createdAt", "id"], False),
    ("ix_threads_userId_createdAt_id", "threads", ["userId", "createdAt", "id"], False),
    ("ix_steps_threadId_createdAt_id", "steps", ["threadId", "createdAt", "id"], False),
    ("ix_steps_parentId", "steps", ["parentId"], False),
    ("ix_elements_threadId_createdAt_id", "elements", ["threadId", "createdAt", "id"], False),
    ("ix_elements_forId", "elements", ["forId"], False),
    ("ux_feedbacks_forId", "feedbacks", ["forId"], True),
    ("ix_feedbacks_threadId", "feedbacks", ["threadId"], False),
]
TRIGRAM_INDEXES = [
    ("ix_threads_name_trgm", "threads", "name"),
    ("ix_steps_input_trgm", "steps", "input"),
    ("ix_steps_output_trgm", "steps", "output"),
]


def _add_missing_columns(table: str, columns: list[sa.Column[Any]]) -> None:
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns(table)}
    for column in columns:
        if column.name not in present:
            op.add_column(table, column)


def _keep_one_feedback_per_step() -> None:
    """Chainlit allowed several feedback rows for one step; the unique index allows one. The one
    kept has a comment if any does; the others move to `gateway_feedback_duplicates`, so none is
    lost. One window-function pass finds them (no per-row subquery: fine on millions of rows)."""
    bind = op.get_bind()
    extra = (
        'SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY "forId" '
        "ORDER BY (comment IS NULL), CAST(id AS TEXT) DESC) AS position FROM feedbacks) ranked "
        "WHERE position > 1"
    )
    duplicates = bind.execute(sa.text(f"SELECT count(*) FROM ({extra}) extra")).scalar_one()
    if not duplicates:
        return
    logger.warning("moving %d duplicate feedback rows to gateway_feedback_duplicates", duplicates)
    bind.execute(
        sa.text(
            "CREATE TABLE IF NOT EXISTS gateway_feedback_duplicates AS SELECT * FROM feedbacks WHERE 1 = 0"
        )
    )
    bind.execute(
        sa.text(f"INSERT INTO gateway_feedback_duplicates SELECT * FROM feedbacks WHERE id IN ({extra})")
    )
    bind.execute(sa.text(f"DELETE FROM feedbacks WHERE id IN ({extra})"))


def _create_indexes(tables: tuple[str, ...]) -> None:
    bind = op.get_bind()
    existing = {index["name"] for table in tables for index in sa.inspect(bind).get_indexes(table)}
    for name, table, columns, unique in INDEXES:
        if table in tables and name not in existing:
            op.create_index(name, table, columns, unique=unique)


def upgrade() -> None:
    bind = op.get_bind()
    on_postgres = bind.dialect.name == "postgresql"
    document: sa.types.TypeEngine[Any] = postgresql.JSONB() if on_postgres else sa.JSON()
    now = PG_NOW if on_postgres else SQLITE_NOW

    _add_missing_columns(
        "steps",
        [
            sa.Column("command", sa.Text()),
            sa.Column("modes", document),
            sa.Column("defaultOpen", sa.Boolean(), server_default=sa.false()),
            sa.Column("autoCollapse", sa.Boolean(), server_default=sa.false()),
        ],
    )
    _add_missing_columns(
        "elements",
        [
            sa.Column("props", document),
            sa.Column("sizeBytes", sa.BigInteger()),
            sa.Column("createdAt", sa.Text()),
        ],
    )
    _add_missing_columns("threads", [sa.Column("updatedAt", sa.Text())])

    # The back-fills below look steps up by thread: index them first, or each is a full scan.
    _create_indexes(("steps", "elements"))
    # Back-fill the sort keys: a thread's last activity is its newest step, else its creation.
    op.execute(
        'UPDATE steps SET "createdAt" = COALESCE(steps."start", '
        '(SELECT t."createdAt" FROM threads t WHERE t.id = steps."threadId"), '
        f"'{EPOCH}') WHERE \"createdAt\" IS NULL"
    )
    op.execute(
        'UPDATE threads SET "updatedAt" = COALESCE('
        '(SELECT MAX(s."createdAt") FROM steps s WHERE s."threadId" = threads.id), '
        f'threads."createdAt", {now}) WHERE "updatedAt" IS NULL'
    )
    # A thread without a creation time was created by its first step.
    op.execute(
        'UPDATE threads SET "createdAt" = COALESCE('
        '(SELECT MIN(s."createdAt") FROM steps s WHERE s."threadId" = threads.id), '
        '"updatedAt") WHERE "createdAt" IS NULL'
    )
    op.execute(
        'UPDATE elements SET "createdAt" = COALESCE('
        '(SELECT s."createdAt" FROM steps s WHERE s.id = elements."forId"), '
        '(SELECT t."createdAt" FROM threads t WHERE t.id = elements."threadId"), '
        f"'{EPOCH}') WHERE \"createdAt\" IS NULL"
    )
    if on_postgres:
        # Rows a Chainlit app inserts later without these columns get a value (explicit NULLs
        # are filled by the triggers of revision 0003, which SQLite needs for all of them).
        op.execute('ALTER TABLE threads ALTER COLUMN "updatedAt" SET NOT NULL')
        for table, column in (
            ("threads", "updatedAt"),
            ("threads", "createdAt"),
            ("steps", "createdAt"),
            ("elements", "createdAt"),
        ):
            op.execute(f'ALTER TABLE {table} ALTER COLUMN "{column}" SET DEFAULT {now}')

    _keep_one_feedback_per_step()
    _create_indexes(("threads", "feedbacks"))
    if on_postgres:
        existing = {
            index["name"] for table in ("threads", "steps") for index in sa.inspect(bind).get_indexes(table)
        }
        _create_trigram_indexes(existing)


def _create_trigram_indexes(existing_indexes: set[str | None]) -> None:
    """Substring search (`ILIKE '%term%'`) in any language uses these; without the extension
    (a role that may not create it) search still works, by scanning."""
    bind = op.get_bind()
    savepoint = bind.begin_nested()
    try:
        bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        savepoint.commit()
    except sa.exc.DBAPIError as error:
        savepoint.rollback()
        logger.warning("pg_trgm is not available (%s); search will scan instead of using an index", error)
        return
    for name, table, column in TRIGRAM_INDEXES:
        if name not in existing_indexes:
            op.execute(f'CREATE INDEX {name} ON {table} USING gin ("{column}" gin_trgm_ops)')


def downgrade() -> None:
    raise NotImplementedError("downgrading would drop data Chainlit does not store; restore a backup instead")
