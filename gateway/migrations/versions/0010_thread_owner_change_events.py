"""A thread's old owner hears that it left their thread list: when `threads."userId"` changes,
0009's trigger records THREAD_UPDATED for the new owner only, so the old owner's list
(`userThreadEvents`) kept showing a thread they can no longer read. Now the same update also
records, for the old owner (when there was one), THREAD_DELETED of the thread as `activity`: it
goes to that owner's list only, never to the thread's own feed (the thread still exists).

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGER = "gateway_threads_disowned_event"
SQLITE_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

PG_FUNCTION = f"""
CREATE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM gateway_record_event(NEW.id, OLD."userId", 'THREAD_DELETED', NEW.id, NULL, true);
    RETURN NULL;
END
$$
"""
# PostgreSQL fires a table's triggers in name order: this one before 0009's gateway_threads_event,
# as SQLite (in practice) fires the newest trigger first: both record the old owner's event first.
PG_TRIGGER = (
    f'CREATE TRIGGER {TRIGGER} AFTER UPDATE OF "userId" ON threads FOR EACH ROW '
    'WHEN (OLD."userId" IS DISTINCT FROM NEW."userId" AND OLD."userId" IS NOT NULL) '
    f"EXECUTE FUNCTION {TRIGGER}()"
)
SQLITE_TRIGGER = (
    f'CREATE TRIGGER {TRIGGER} AFTER UPDATE OF "userId" ON threads '
    'WHEN OLD."userId" IS NOT NEW."userId" AND OLD."userId" IS NOT NULL BEGIN '
    'INSERT INTO gateway_thread_events ("threadId", "userId", kind, "entityId", delta, activity, '
    f'"createdAt") VALUES (NEW.id, OLD."userId", \'THREAD_DELETED\', NEW.id, NULL, 1, {SQLITE_NOW}); '
    "END"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON threads")
        op.execute(f"DROP FUNCTION IF EXISTS {TRIGGER}()")
        return
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
