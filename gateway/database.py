"""The database engine and sessions, for SQLite (embedded default) and PostgreSQL (asyncpg)."""

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from gateway import jsonops
from gateway.data.pagination import encode_cursor
from gateway.timestamps import display_timestamp


class Database:
    """Engines and session factories. Sessions are short: open one per unit of work.

    SQLite allows one writer at a time: writes go through a pool of one connection, so requests
    queue for it instead of failing with `database is locked`, and take the write lock up front.
    Reads use their own connections and, in WAL mode, never wait for a writer. PostgreSQL uses one
    pool for both.
    """

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 20) -> None:
        parsed = make_url(url)
        self.url = url
        self.dialect_name = parsed.get_backend_name()
        if self.dialect_name == "sqlite":
            self.engine: AsyncEngine = create_async_engine(
                url, echo=echo, pool_size=1, max_overflow=0, pool_timeout=60, json_serializer=_dump_json
            )
            self.read_engine = create_async_engine(
                url, echo=echo, pool_size=4, max_overflow=4, json_serializer=_dump_json
            )
            _configure_sqlite(self.engine, begin="BEGIN IMMEDIATE")
            _configure_sqlite(self.read_engine, begin="BEGIN")
        elif self.dialect_name == "postgresql":
            self.engine = create_async_engine(
                url,
                echo=echo,
                # Enough kept open for a busy process: connections opened past the pool are
                # closed again when returned, and that churn cost more than the queries.
                pool_size=pool_size,
                max_overflow=10,
                pool_pre_ping=True,
                json_serializer=_dump_json,
            )
            self.read_engine = self.engine
        else:
            raise ValueError(
                f"unsupported database {parsed.drivername!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        self._reads = async_sessionmaker(self.read_engine, expire_on_commit=False, autoflush=False)
        self._writes = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)

    @property
    def engines(self) -> tuple[AsyncEngine, ...]:
        return (self.engine,) if self.read_engine is self.engine else (self.engine, self.read_engine)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads; whatever it did is rolled back when it closes."""
        async with self._reads() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed when the block ends, rolled back on error."""
        async with self._writes() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        for engine in self.engines:
            await engine.dispose()


def _dump_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _configure_sqlite(engine: AsyncEngine, *, begin: str) -> None:
    functions: dict[str, tuple[int, Callable[..., Any]]] = {
        "gateway_icontains": (2, jsonops.sqlite_icontains),
        "gateway_json_contains": (2, jsonops.sqlite_json_contains),
        "gateway_json_merge": (2, jsonops.sqlite_json_merge),
        "gateway_tags_contain_all": (2, jsonops.sqlite_tags_contain_all),
        # Reads the database answers as JSON (gateway.data.json_reads) call these per row.
        "gateway_display_timestamp": (1, display_timestamp),
        "gateway_cursor": (-1, encode_cursor),
    }

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so SAVEPOINT works (SQLAlchemy's recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.close()
        for name, (arity, function) in functions.items():
            dbapi_connection.create_function(name, arity, function, deterministic=True)

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Any) -> None:
        # Writers BEGIN IMMEDIATE: they take the write lock up front, so another process's writer
        # waits (busy_timeout) instead of failing when a read turns into a write.
        connection.exec_driver_sql(begin)
