"""Every write to a step moves its thread's "updatedAt", whoever writes it.

Triggers, rather than application code, so that a Chainlit app still writing to the same database
moves its threads up the gateway's list too. Only rows that really change fire them: an upsert that
changes nothing (a retried request) leaves the thread where it is. On SQLite, elements that another
writer inserts without "createdAt" get one (PostgreSQL has a column default for that).

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_NOW = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
SQLITE_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION gateway_touch_thread() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    moment text := {PG_NOW};
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE threads SET "updatedAt" = moment WHERE id = OLD."threadId" AND "updatedAt" < moment;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE threads SET "updatedAt" = moment WHERE id = NEW."threadId" AND "updatedAt" < moment;
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute("DROP TRIGGER IF EXISTS steps_touch_thread ON steps")
        op.execute(
            "CREATE TRIGGER steps_touch_thread AFTER INSERT OR UPDATE OR DELETE ON steps "
            "FOR EACH ROW EXECUTE FUNCTION gateway_touch_thread()"
        )
        return
    touch = (
        f'UPDATE threads SET "updatedAt" = {SQLITE_NOW} WHERE id = {{row}}."threadId" '
        f'AND ("updatedAt" IS NULL OR "updatedAt" < {SQLITE_NOW});'
    )
    op.execute(
        "CREATE TRIGGER IF NOT EXISTS steps_touch_thread_insert AFTER INSERT ON steps BEGIN "
        f"{touch.format(row='NEW')} END"
    )
    op.execute(
        "CREATE TRIGGER IF NOT EXISTS steps_touch_thread_update AFTER UPDATE ON steps BEGIN "
        f"{touch.format(row='OLD')} {touch.format(row='NEW')} END"
    )
    op.execute(
        "CREATE TRIGGER IF NOT EXISTS steps_touch_thread_delete AFTER DELETE ON steps BEGIN "
        f"{touch.format(row='OLD')} END"
    )
    op.execute(
        "CREATE TRIGGER IF NOT EXISTS elements_created_at_default AFTER INSERT ON elements "
        f'WHEN NEW."createdAt" IS NULL BEGIN UPDATE elements SET "createdAt" = {SQLITE_NOW} '
        "WHERE id = NEW.id; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS steps_touch_thread ON steps")
        op.execute("DROP FUNCTION IF EXISTS gateway_touch_thread()")
        return
    for name in (
        "steps_touch_thread_insert",
        "steps_touch_thread_update",
        "steps_touch_thread_delete",
        "elements_created_at_default",
    ):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
