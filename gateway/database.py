"""The database engine and sessions, for SQLite (embedded default) and PostgreSQL (asyncpg)."""

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
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
                json_serializer=_dump_json,
            )
            _ping_after_idle(self.engine)
            self.read_engine = self.engine
        else:
            raise ValueError(
                f"unsupported database {parsed.drivername!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        self._writes = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        if self.dialect_name == "postgresql":
            # Reads, and writes of one statement, need no BEGIN and ROLLBACK or COMMIT around them
            # (two round trips, and as much of PostgreSQL's time as a small statement): each
            # statement is its own transaction. Reads lose nothing by it: at READ COMMITTED every
            # statement of a transaction takes a snapshot of its own anyway.
            statements = async_sessionmaker(
                self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
                autoflush=False,
            )
            self._reads = self._one_statement_writes = statements
        else:
            # SQLite: a read transaction is one snapshot (WAL) for all its statements; writes keep
            # BEGIN IMMEDIATE, which orders the writers of several processes.
            self._reads = async_sessionmaker(self.read_engine, expire_on_commit=False, autoflush=False)
            self._one_statement_writes = self._writes

    @property
    def engines(self) -> tuple[AsyncEngine, ...]:
        return (self.engine,) if self.read_engine is self.engine else (self.engine, self.read_engine)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only (on PostgreSQL each statement commits as it runs)."""
        async with self._reads() as session:
            yield session

    @asynccontextmanager
    async def transaction(self, *, one_statement: bool = False) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed when the block ends, rolled back on error.

        `one_statement`: the block writes with a single statement (reads around it are fine), so
        that statement is the transaction, committed as it runs; on SQLite, a transaction as usual.
        """
        sessions = self._one_statement_writes if one_statement else self._writes
        async with sessions() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        for engine in self.engines:
            await engine.dispose()


# A connection back in the pool for longer than this is checked before use (see _ping_after_idle).
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_after_idle(engine: AsyncEngine) -> None:
    """Check a pooled connection before use only when it sat idle: a connection the server dropped
    while it waited (a restart, an idle timeout) is replaced instead of failing a request.

    SQLAlchemy's `pool_pre_ping` checks at every checkout, and on asyncpg its check is three round
    trips (BEGIN, a query, ROLLBACK): more than a small read itself. A connection returned moments
    ago is almost surely alive; if it is not, the request fails as retryable and SQLAlchemy's
    disconnect handling replaces every connection of the pool.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            # The pool discards this connection and checks out another (SQLAlchemy's recipe).
            raise DisconnectionError(f"pooled connection dropped while idle: {error!r}") from error


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
