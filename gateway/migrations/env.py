"""Alembic environment: runs the gateway's migrations on the connection `gateway.migrate` hands in."""

from alembic import context
from sqlalchemy import text

from gateway.migrations.env_settings import MIGRATION_LOCK_KEY, VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    context.run_migrations()
