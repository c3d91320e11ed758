"""API keys for backends: only a SHA-256 hash of each key is stored, with a short prefix to tell
keys apart in `gateway api-key list`. A revoked key keeps its row (and its name) for the record.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("keyHash", sa.String(64), nullable=False, unique=True),
        sa.Column("createdAt", sa.Text(), nullable=False),
        sa.Column("revokedAt", sa.Text()),
    )
    # One live key per name, so `revoke NAME` means one key; revoked names may be reused.
    op.create_index(
        "ux_gateway_api_keys_live_name",
        "gateway_api_keys",
        ["name"],
        unique=True,
        postgresql_where=sa.text('"revokedAt" IS NULL'),
        sqlite_where=sa.text('"revokedAt" IS NULL'),
    )


def downgrade() -> None:
    op.drop_table("gateway_api_keys")
