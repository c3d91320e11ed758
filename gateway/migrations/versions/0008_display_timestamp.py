"""`gateway_display_timestamp(text)` on PostgreSQL: a stored timestamp in the API's canonical form
(`2026-11-22T05:17:33.123Z`), as `gateway.timestamps.display_timestamp` gives it, so reads the
database answers as JSON show rows Chainlit wrote (microseconds, no zone) like the gateway's own.
Text that is no timestamp comes back as it is. SQLite gets the Python function on each connection.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DISPLAY_TIMESTAMP = r"""
CREATE OR REPLACE FUNCTION gateway_display_timestamp(stored text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    trimmed text := btrim(stored, E' \t\n\r\f\v');
    zone text := '(Z|[+-]\d\d(:?\d\d(:?\d\d([.,]\d+)?)?)?)';
BEGIN
    IF stored IS NULL THEN
        RETURN NULL;
    END IF;
    -- What Python's datetime.fromisoformat reads: a date, then optionally a time, then a zone.
    IF trimmed !~ ('^\d{4}-\d\d-\d\d([T ]\d\d(:?\d\d(:?\d\d([.,]\d+)?)?)?' || zone || '?)?$') THEN
        RETURN stored;
    END IF;
    IF trimmed ~ (zone || '$') AND trimmed ~ '[T ]' THEN
        RETURN to_char(trimmed::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
    END IF;
    RETURN to_char(trimmed::timestamp, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
EXCEPTION WHEN OTHERS THEN
    RETURN stored;
END
$$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DISPLAY_TIMESTAMP)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS gateway_display_timestamp(text)")
