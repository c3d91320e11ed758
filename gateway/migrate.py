"""Schema migrations (Alembic): create a new database, or upgrade one Chainlit made, in place."""

import logging

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.migrations.env_settings import VERSION_TABLE

logger = logging.getLogger(__name__)


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", "gateway:migrations")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def _current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


async def upgrade_database(database_url: str) -> tuple[str | None, str | None]:
    """Bring the schema to the newest revision; returns (revision before, revision after).

    A plain engine is used on purpose: on SQLite, foreign keys stay off while tables are rebuilt.
    """
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            before = await connection.run_sync(_current_revision)
            await connection.run_sync(lambda sync: command.upgrade(_config(sync), "head"))
            await connection.commit()
            after = await connection.run_sync(_current_revision)
    finally:
        await engine.dispose()
    if before != after:
        logger.info("database migrated from %s to %s", before or "nothing", after)
    return before, after
