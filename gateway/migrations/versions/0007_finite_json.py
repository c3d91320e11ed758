"""JSON values hold only finite numbers: on SQLite, gateways before this revision stored `NaN`,
`Infinity` and `-Infinity` (what Python's json writes for them), which no browser's `JSON.parse`
accepts, so every page holding such a row broke. Each is replaced by null (the value is gone: a
non-finite number carries none). PostgreSQL's jsonb never accepted them: nothing to do there.

Revision ID: 0007
Revises: 0006
"""

import json
import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_COLUMNS = {
    "users": ("metadata",),
    "threads": ("metadata",),
    "steps": ("metadata", "generation", "modes"),
    "elements": ("props",),
    "gateway_pending_uploads": ("element",),
}


def finite(value: Any) -> Any:
    """`value` with every non-finite number replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table, columns in JSON_COLUMNS.items():
        for column in columns:
            # Only rows whose text can hold such a number are read (a LIKE scan, once).
            rows = bind.execute(
                sa.text(
                    f'SELECT rowid, "{column}" FROM "{table}" WHERE "{column}" LIKE \'%NaN%\''
                    f" OR \"{column}\" LIKE '%Infinity%'"
                )
            ).all()
            for rowid, text in rows:
                repaired = json.dumps(finite(json.loads(text)), ensure_ascii=False, separators=(",", ":"))
                if repaired != text:
                    bind.execute(
                        sa.text(f'UPDATE "{table}" SET "{column}" = :value WHERE rowid = :rowid'),
                        {"value": repaired, "rowid": rowid},
                    )


def downgrade() -> None:
    """Nothing to undo: the values replaced were no JSON."""
