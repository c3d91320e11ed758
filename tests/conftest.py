"""Fixtures: every API test runs against SQLite and PostgreSQL, through GraphQL over HTTP.

PostgreSQL is reached at GATEWAY_TEST_POSTGRES_URL (default: postgres on 127.0.0.1:5432, trust
auth); each run creates its own database and drops it. Without a reachable server the PostgreSQL
half is skipped locally, and fails in CI (CI=true), where a skip would hide missing coverage.
"""

import os
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import boto3
import httpx
import jwt
import pytest
import sqlalchemy as sa
from moto.server import ThreadedMotoServer
from sqlalchemy import event
from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.config import Settings
from gateway.database import Database
from gateway.migrate import upgrade_database

POSTGRES_ADMIN_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Element bytes of every gateway the tests start go to a scratch directory, not the working one.
os.environ.setdefault("GATEWAY_STORAGE_URL", f"file://{tempfile.mkdtemp(prefix='gateway-files-')}")
# Every query the suite sends that the compiled read path answers is also run on the resolvers;
# a difference answers COMPILED_READ_MISMATCH, so the assertions on the answer fail.
os.environ.setdefault("GATEWAY_COMPILED_READS_VERIFY", "true")
# The session's long-lived gateways share the database with the apps single tests start, each
# with its own store; their reapers act only when their own deletes wake them, never on a timer
# that could take another store's pending deletions.
QUIET_REAPER = 10**9
TABLES_CHILDREN_FIRST = ("feedbacks", "elements", "steps", "threads", "users")


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_postgres_database(prefix: str = "gateway_test") -> str:
    """Create a fresh PostgreSQL database; returns its SQLAlchemy URL. Fails in CI when unreachable."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        connection = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        message = f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {error}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    connection = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'gateway.db'}"
        await upgrade_database(url)
        yield url
        return
    url = await create_postgres_database()
    try:
        await upgrade_database(url)
        yield url
    finally:
        await drop_postgres_database(url)


@pytest.fixture(scope="session")
async def app(database_url: str) -> AsyncIterator[Starlette]:
    """The gateway in open development mode (no credentials configured), as a developer runs it."""
    async with running(open_settings(database_url)) as application:
        yield application


@pytest.fixture
def db(app: Starlette) -> Database:
    database: Database = app.state.db
    return database


@pytest.fixture
def backend(database_url: str) -> str:
    return make_url(database_url).get_backend_name()


class GraphQLFailure(AssertionError):
    pass


@dataclass
class Api:
    """GraphQL over HTTP against the ASGI app, as a client would call it (with `headers`, e.g.
    its credentials, on every request)."""

    http: httpx.AsyncClient
    headers: dict[str, str] = field(default_factory=dict)

    def with_headers(self, **headers: str) -> "Api":
        return Api(self.http, {**self.headers, **headers})

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, **headers: str
    ) -> httpx.Response:
        return await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={**self.headers, **headers},
        )

    async def ok(self, query: str, **variables: Any) -> dict[str, Any]:
        """The data of a request that must succeed."""
        response = await self.post(query, variables)
        body = response.json()
        if response.status_code != 200 or body.get("errors"):
            raise GraphQLFailure(f"{response.status_code}: {body.get('errors')}")
        data: dict[str, Any] = body["data"]
        return data

    async def error(self, query: str, **variables: Any) -> dict[str, Any]:
        """The single error of a request that must fail."""
        body = (await self.post(query, variables)).json()
        errors = body.get("errors")
        assert errors, f"expected an error, got {body}"
        assert len(errors) == 1, errors
        error: dict[str, Any] = errors[0]
        return error

    async def code(self, query: str, **variables: Any) -> str:
        error = await self.error(query, **variables)
        code: str = error.get("extensions", {}).get("code")
        return code


async def clear_tables(db: Database) -> None:
    async with db.transaction() as session:
        for table in (*TABLES_CHILDREN_FIRST, "gateway_api_keys"):
            await session.execute(sa.text(f"DELETE FROM {table}"))


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Starlette]:
    """An app with its lifespan run (startup checks, then shutdown), as a server runs it."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@asynccontextmanager
async def client_of(application: Starlette, client_host: str = "127.0.0.1") -> AsyncIterator[Api]:
    transport = httpx.ASGITransport(app=application, client=(client_host, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        yield Api(http)


@pytest.fixture
async def api(app: Starlette, db: Database) -> AsyncIterator[Api]:
    await clear_tables(db)
    async with client_of(app) as client:
        yield client


# A gateway with authentication configured: a backend key in GATEWAY_API_KEYS, HS256 user tokens.
TEST_API_KEY = "gw_test-backend-key-0123456789abcdefghijklmnop"
TEST_JWT_SECRET = "test-jwt-secret-0123456789abcdefghijklmnopqrstuvwxyz"


def user_token(identifier: str, *, secret: str = TEST_JWT_SECRET, lifetime: int = 3600, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": identifier, "iat": now, "exp": now + lifetime, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def open_settings(database_url: str, **overrides: Any) -> Settings:
    """Open development mode (no credentials configured), migrated already, the reaper quiet."""
    return Settings(
        database_url=database_url, auto_migrate=False, reaper_interval_seconds=QUIET_REAPER, **overrides
    )


def secured_settings(database_url: str, **overrides: Any) -> Settings:
    return Settings(
        database_url=database_url,
        auto_migrate=False,
        reaper_interval_seconds=QUIET_REAPER,
        api_keys=TEST_API_KEY,
        jwt_secret=TEST_JWT_SECRET,
        **overrides,
    )


@pytest.fixture(scope="session")
async def secured_app(database_url: str) -> AsyncIterator[Starlette]:
    async with running(secured_settings(database_url)) as application:
        yield application


@pytest.fixture
async def secured_api(secured_app: Starlette, db: Database) -> AsyncIterator[Api]:
    """A client of the secured gateway, sending no credentials (add them with `with_headers`)."""
    await clear_tables(db)
    async with client_of(secured_app) as client:
        yield client


@dataclass
class StatementLog:
    statements: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)

    def clear(self) -> None:
        self.statements.clear()


@pytest.fixture
def sql_statements(db: Database) -> Iterator[StatementLog]:
    """The SQL statements the open gateway's database runs (transaction control excluded)."""
    with statement_log(db) as log:
        yield log


@contextmanager
def statement_log(db: Database) -> Iterator[StatementLog]:
    """The SQL statements `db` runs while the block runs (transaction control excluded)."""
    log = StatementLog()

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        first_word = statement.lstrip().split(None, 1)[0].upper()
        if first_word not in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
            log.statements.append(statement)

    for engine in db.engines:
        event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield log
    finally:
        for engine in db.engines:
            event.remove(engine.sync_engine, "before_cursor_execute", record)


def new_uuid() -> str:
    return str(uuid.uuid4())


# S3: a real S3 protocol server (moto), shared by the element and fault tests.
BUCKET = "gateway-test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class S3Server:
    """moto's S3 server on a fixed port, which can be stopped and started again (its data stays:
    it lives in this process)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ[name] = value
    server = S3Server()
    server.start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()
