"""Names shared by the Alembic environment and `gateway.migrate`."""

VERSION_TABLE = "gateway_alembic_version"  # apart from any Alembic table of the app's own schema
MIGRATION_LOCK_KEY = 7_424_731_913  # pg_advisory_xact_lock key: one replica migrates at a time
