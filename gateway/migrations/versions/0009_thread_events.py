"""The event log behind subscriptions: `gateway_thread_events`, written by triggers on threads,
steps, elements and feedbacks, so every write records its events in its own transaction, whoever
writes (the gateway, or a Chainlit app's own SQL layer sharing the database), cascades included.

- A step update that only extends `output` is `STEP_OUTPUT_APPENDED` with exactly the text added.
- A thread update that only moves `updatedAt` (a step was written: 0003's trigger) is recorded as
  `activity`: it goes to the owner's thread list, not to the thread's own feed.
- `position` is the order subscribers see (the cursor). On PostgreSQL it is assigned at commit,
  under a transaction-level advisory lock, by a deferred constraint trigger: a transaction takes its
  positions only when nothing else can commit in between, and releases the lock only once its rows
  are visible. So rows appear in position order, and a reader that saw position N has seen every
  row below N (the sequence-before-commit trap: a `bigserial` taken at insert time could commit
  after a higher one was read). The same trigger sends one NOTIFY per transaction, which wakes
  every replica. SQLite has one writer at a time: the row id, taken under the write lock, already is
  commit order.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_NOW = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
SQLITE_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
# pg_advisory_xact_lock's key for assigning positions; any constant no other code uses.
POSITION_LOCK_KEY = 7_140_913_001
NOTIFY_CHANNEL = "gateway_thread_events"
SOURCE_TABLES = ("threads", "steps", "elements", "feedbacks")

PG_TABLE = """
CREATE TABLE gateway_thread_events (
    id bigserial PRIMARY KEY,
    position bigint UNIQUE,
    "threadId" uuid NOT NULL,
    "userId" uuid,
    kind text NOT NULL,
    "entityId" uuid,
    delta text,
    activity boolean NOT NULL DEFAULT false,
    "createdAt" text NOT NULL
)
"""
SQLITE_TABLE = """
CREATE TABLE gateway_thread_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    position INTEGER UNIQUE,
    "threadId" VARCHAR(36) NOT NULL,
    "userId" VARCHAR(36),
    kind TEXT NOT NULL,
    "entityId" VARCHAR(36),
    delta TEXT,
    activity BOOLEAN NOT NULL DEFAULT 0,
    "createdAt" TEXT NOT NULL
)
"""
INDEXES = (
    'CREATE INDEX ix_gateway_thread_events_thread ON gateway_thread_events ("threadId", position)',
    'CREATE INDEX ix_gateway_thread_events_user ON gateway_thread_events ("userId", position)',
    'CREATE INDEX ix_gateway_thread_events_created ON gateway_thread_events ("createdAt")',
)

PG_FUNCTIONS = f"""
CREATE SEQUENCE gateway_thread_event_positions;

CREATE FUNCTION gateway_record_event(thread uuid, owner uuid, event_kind text, entity uuid,
                                     appended text, is_activity boolean) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO gateway_thread_events ("threadId", "userId", kind, "entityId", delta, activity, "createdAt")
    VALUES (thread, owner, event_kind, entity, appended, is_activity, {PG_NOW})
$$;

CREATE FUNCTION gateway_thread_event_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Runs at commit: positions are taken in commit order (see the module's docstring).
    PERFORM pg_advisory_xact_lock({POSITION_LOCK_KEY});
    UPDATE gateway_thread_events SET position = nextval('gateway_thread_event_positions')
    WHERE id = NEW.id;
    PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
    RETURN NULL;
END
$$;

CREATE FUNCTION gateway_threads_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM gateway_record_event(NEW.id, NEW."userId", 'THREAD_CREATED', NEW.id, NULL, false);
    ELSIF TG_OP = 'UPDATE' THEN
        IF to_jsonb(OLD) IS DISTINCT FROM to_jsonb(NEW) THEN
            PERFORM gateway_record_event(NEW.id, NEW."userId", 'THREAD_UPDATED', NEW.id, NULL,
                (to_jsonb(OLD) - 'updatedAt') = (to_jsonb(NEW) - 'updatedAt'));
        END IF;
    ELSE
        PERFORM gateway_record_event(OLD.id, OLD."userId", 'THREAD_DELETED', OLD.id, NULL, false);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION gateway_steps_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before_output text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM gateway_record_event(NEW."threadId", NULL, 'STEP_CREATED', NEW.id, NULL, false);
    ELSIF TG_OP = 'UPDATE' THEN
        IF to_jsonb(OLD) IS DISTINCT FROM to_jsonb(NEW) THEN
            before_output := coalesce(OLD.output, '');
            IF (to_jsonb(OLD) - 'output') = (to_jsonb(NEW) - 'output') AND NEW.output IS NOT NULL
               AND left(NEW.output, length(before_output)) = before_output THEN
                PERFORM gateway_record_event(NEW."threadId", NULL, 'STEP_OUTPUT_APPENDED', NEW.id,
                    substr(NEW.output, length(before_output) + 1), false);
            ELSE
                PERFORM gateway_record_event(NEW."threadId", NULL, 'STEP_UPDATED', NEW.id, NULL, false);
            END IF;
        END IF;
    ELSE
        PERFORM gateway_record_event(OLD."threadId", NULL, 'STEP_DELETED', OLD.id, NULL, false);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION gateway_elements_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD."threadId" IS NOT NULL THEN
            PERFORM gateway_record_event(OLD."threadId", NULL, 'ELEMENT_DELETED', OLD.id, NULL, false);
        END IF;
    ELSIF NEW."threadId" IS NOT NULL
          AND (TG_OP = 'INSERT' OR to_jsonb(OLD) IS DISTINCT FROM to_jsonb(NEW)) THEN
        PERFORM gateway_record_event(NEW."threadId", NULL, 'ELEMENT_CREATED', NEW.id, NULL, false);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION gateway_feedbacks_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM gateway_record_event(OLD."threadId", NULL, 'FEEDBACK_DELETED', OLD.id, NULL, false);
    ELSIF TG_OP = 'INSERT' OR to_jsonb(OLD) IS DISTINCT FROM to_jsonb(NEW) THEN
        PERFORM gateway_record_event(NEW."threadId", NULL, 'FEEDBACK_UPSERTED', NEW.id, NULL, false);
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER gateway_thread_events_position AFTER INSERT ON gateway_thread_events
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gateway_thread_event_position();
"""

# SQLite: the columns each table's triggers compare (a Chainlit app may not add columns there).
THREAD_COLUMNS = ("name", "userId", "userIdentifier", "tags", "metadata", "createdAt")
STEP_COLUMNS = (
    "name", "type", "threadId", "parentId", "streaming", "waitForAnswer", "isError", "metadata",
    "tags", "input", "createdAt", "start", "end", "generation", "showInput", "language", "indent",
    "command", "modes", "defaultOpen", "autoCollapse",
)  # fmt: skip
ELEMENT_COLUMNS = (
    "threadId", "type", "url", "chainlitKey", "name", "display", "objectKey", "size", "page",
    "language", "forId", "mime", "props", "sizeBytes", "createdAt",
)  # fmt: skip
FEEDBACK_COLUMNS = ("forId", "threadId", "value", "comment")


# Columns 0003's triggers fill right after an insert that left them NULL: that second write is
# part of the insert, not a change anyone made.
FILLED_COLUMNS = ("createdAt", "updatedAt")


def _changed(columns: Sequence[str]) -> str:
    return "(" + " OR ".join(_column_changed(column) for column in columns) + ")"


def _column_changed(column: str) -> str:
    if column in FILLED_COLUMNS:
        return f'(OLD."{column}" IS NOT NEW."{column}" AND OLD."{column}" IS NOT NULL)'
    return f'OLD."{column}" IS NOT NEW."{column}"'


def _sqlite_record(
    thread: str, owner: str, kind: str, entity: str, delta: str = "NULL", activity: str = "0"
) -> str:
    return (
        "INSERT INTO gateway_thread_events "
        '("threadId", "userId", kind, "entityId", delta, activity, "createdAt") '
        f"VALUES ({thread}, {owner}, '{kind}', {entity}, {delta}, {activity}, {SQLITE_NOW});"
    )


def _sqlite_triggers() -> dict[str, str]:
    """name -> CREATE TRIGGER statement."""
    before = "coalesce(OLD.output, '')"
    appended = (
        f"NOT {_changed(STEP_COLUMNS)} AND NEW.output IS NOT NULL "
        f"AND substr(NEW.output, 1, length({before})) = {before}"
    )
    thread_changed = _changed(THREAD_COLUMNS)
    return {
        "gateway_thread_events_position": "AFTER INSERT ON gateway_thread_events BEGIN "
        "UPDATE gateway_thread_events SET position = NEW.id WHERE id = NEW.id; END",
        "gateway_threads_event_insert": "AFTER INSERT ON threads BEGIN "
        + _sqlite_record("NEW.id", 'NEW."userId"', "THREAD_CREATED", "NEW.id")
        + " END",
        "gateway_threads_event_update": "AFTER UPDATE ON threads WHEN "
        + _changed([*THREAD_COLUMNS, "updatedAt"])
        + " BEGIN "
        + _sqlite_record(
            "NEW.id", 'NEW."userId"', "THREAD_UPDATED", "NEW.id", activity=f"NOT {thread_changed}"
        )
        + " END",
        "gateway_threads_event_delete": "AFTER DELETE ON threads BEGIN "
        + _sqlite_record("OLD.id", 'OLD."userId"', "THREAD_DELETED", "OLD.id")
        + " END",
        "gateway_steps_event_insert": "AFTER INSERT ON steps BEGIN "
        + _sqlite_record('NEW."threadId"', "NULL", "STEP_CREATED", "NEW.id")
        + " END",
        "gateway_steps_event_append": "AFTER UPDATE ON steps "
        f"WHEN OLD.output IS NOT NEW.output AND {appended} BEGIN "
        + _sqlite_record(
            'NEW."threadId"',
            "NULL",
            "STEP_OUTPUT_APPENDED",
            "NEW.id",
            f"substr(NEW.output, length({before}) + 1)",
        )
        + " END",
        "gateway_steps_event_update": "AFTER UPDATE ON steps WHEN "
        + _changed([*STEP_COLUMNS, "output"])
        + f" AND NOT (OLD.output IS NOT NEW.output AND {appended}) BEGIN "
        + _sqlite_record('NEW."threadId"', "NULL", "STEP_UPDATED", "NEW.id")
        + " END",
        "gateway_steps_event_delete": "AFTER DELETE ON steps BEGIN "
        + _sqlite_record('OLD."threadId"', "NULL", "STEP_DELETED", "OLD.id")
        + " END",
        "gateway_elements_event_insert": 'AFTER INSERT ON elements WHEN NEW."threadId" IS NOT NULL BEGIN '
        + _sqlite_record('NEW."threadId"', "NULL", "ELEMENT_CREATED", "NEW.id")
        + " END",
        "gateway_elements_event_update": 'AFTER UPDATE ON elements WHEN NEW."threadId" IS NOT NULL AND '
        + _changed(ELEMENT_COLUMNS)
        + " BEGIN "
        + _sqlite_record('NEW."threadId"', "NULL", "ELEMENT_CREATED", "NEW.id")
        + " END",
        "gateway_elements_event_delete": 'AFTER DELETE ON elements WHEN OLD."threadId" IS NOT NULL BEGIN '
        + _sqlite_record('OLD."threadId"', "NULL", "ELEMENT_DELETED", "OLD.id")
        + " END",
        "gateway_feedbacks_event_insert": "AFTER INSERT ON feedbacks BEGIN "
        + _sqlite_record('NEW."threadId"', "NULL", "FEEDBACK_UPSERTED", "NEW.id")
        + " END",
        "gateway_feedbacks_event_update": "AFTER UPDATE ON feedbacks WHEN "
        + _changed(FEEDBACK_COLUMNS)
        + " BEGIN "
        + _sqlite_record('NEW."threadId"', "NULL", "FEEDBACK_UPSERTED", "NEW.id")
        + " END",
        "gateway_feedbacks_event_delete": "AFTER DELETE ON feedbacks BEGIN "
        + _sqlite_record('OLD."threadId"', "NULL", "FEEDBACK_DELETED", "OLD.id")
        + " END",
    }


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.execute(PG_TABLE if postgresql else SQLITE_TABLE)
    for statement in INDEXES:
        op.execute(statement)
    if postgresql:
        for statement in _pg_statements():
            op.execute(statement)
        for table in SOURCE_TABLES:
            op.execute(
                f"CREATE TRIGGER gateway_{table}_event AFTER INSERT OR UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION gateway_{table}_event()"
            )
        return
    for name, body in _sqlite_triggers().items():
        op.execute(f"CREATE TRIGGER {name} {body}")


def _pg_statements() -> list[str]:
    """PG_FUNCTIONS, one statement each (asyncpg runs one statement per execute)."""
    statements: list[str] = []
    current: list[str] = []
    in_body = False
    for line in PG_FUNCTIONS.strip().splitlines():
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if not in_body and line.rstrip().endswith(";"):
            statements.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    if "".join(current).strip():
        statements.append("\n".join(current))
    return statements


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in SOURCE_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS gateway_{table}_event ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS gateway_{table}_event()")
        op.execute("DROP TABLE IF EXISTS gateway_thread_events")
        op.execute("DROP FUNCTION IF EXISTS gateway_thread_event_position()")
        op.execute("DROP FUNCTION IF EXISTS gateway_record_event(uuid, uuid, text, uuid, text, boolean)")
        op.execute("DROP SEQUENCE IF EXISTS gateway_thread_event_positions")
        return
    for name in _sqlite_triggers():
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS gateway_thread_events")
