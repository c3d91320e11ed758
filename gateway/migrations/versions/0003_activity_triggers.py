"""Triggers that keep the sort keys right, whoever writes: also a Chainlit app sharing the database.

- A step inserted, changed or deleted moves its thread's "updatedAt". Only rows that really change
  fire it: an upsert that changes nothing (a retried request) leaves the thread where it is.
- Sort keys are never NULL: threads' "createdAt" and "updatedAt", steps' and elements' "createdAt"
  get the current time when a writer leaves them out or sets NULL (Chainlit's `update_thread`
  writes no "createdAt" when it merges metadata). A NULL would have no place in keyset pagination.

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
SORT_KEYS = {"threads": ("createdAt", "updatedAt"), "steps": ("createdAt",), "elements": ("createdAt",)}

PG_TOUCH_THREAD = f"""
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


def _pg_fill_function(table: str, columns: tuple[str, ...]) -> str:
    assignments = "\n".join(
        f'    NEW."{column}" := COALESCE(NEW."{column}", {PG_NOW});' for column in columns
    )
    return (
        f"CREATE OR REPLACE FUNCTION gateway_fill_{table}_times() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n{assignments}\n    RETURN NEW;\nEND\n$$"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_TOUCH_THREAD)
        op.execute("DROP TRIGGER IF EXISTS steps_touch_thread ON steps")
        op.execute(
            "CREATE TRIGGER steps_touch_thread AFTER INSERT OR UPDATE OR DELETE ON steps "
            "FOR EACH ROW EXECUTE FUNCTION gateway_touch_thread()"
        )
        for table, columns in SORT_KEYS.items():
            op.execute(_pg_fill_function(table, columns))
            op.execute(f"DROP TRIGGER IF EXISTS {table}_fill_times ON {table}")
            op.execute(
                f"CREATE TRIGGER {table}_fill_times BEFORE INSERT OR UPDATE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION gateway_fill_{table}_times()"
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
    # SQLite triggers cannot change NEW: fill the row right after it is written instead.
    for table, columns in SORT_KEYS.items():
        for column in columns:
            for event in ("INSERT", f'UPDATE OF "{column}"'):
                name = f"{table}_fill_{column}_{event.split()[0].lower()}"
                op.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {event} ON {table} "
                    f'WHEN NEW."{column}" IS NULL BEGIN '
                    f'UPDATE {table} SET "{column}" = {SQLITE_NOW} WHERE id = NEW.id; END'
                )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS steps_touch_thread ON steps")
        op.execute("DROP FUNCTION IF EXISTS gateway_touch_thread()")
        for table in SORT_KEYS:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_fill_times ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS gateway_fill_{table}_times()")
        return
    names = ["steps_touch_thread_insert", "steps_touch_thread_update", "steps_touch_thread_delete"]
    names += [
        f"{table}_fill_{column}_{event}"
        for table, columns in SORT_KEYS.items()
        for column in columns
        for event in ("insert", "update")
    ]
    for name in names:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
