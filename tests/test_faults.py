"""Infrastructure faults, as an operator meets them: the gateway's PostgreSQL connections killed
mid-transaction (`pg_terminate_backend` of this test database's backends only; the server itself is
shared and never restarted), PostgreSQL unreachable (a TCP proxy the test cuts), and an S3 server
that stops answering (moto behind a TCP proxy the test freezes).

What users rely on: an outage is `SERVICE_UNAVAILABLE` with `retryable: true` (HTTP 503 with
Retry-After when nothing succeeded); a failed write wrote nothing; the Python client's retries get
the write through; no row and no stored object is left orphaned or half-written.
"""

import os
import tempfile

# Importing chainlit (the data layer) writes `.chainlit/` under the app root: a scratch one.
os.environ.setdefault("CHAINLIT_APP_ROOT", tempfile.mkdtemp(prefix="chainlit-app-"))

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from chainlit.context import init_http_context
from sqlalchemy.engine import make_url

from gateway.attachments import Attachments
from gateway.chainlit import GatewayDataLayer
from gateway.client import GatewayClient, UploadFile
from gateway.data import object_deletions
from gateway.database import Database
from tests.conftest import (
    BUCKET,
    POSTGRES_ADMIN_URL,
    TEST_API_KEY,
    Api,
    S3Server,
    _asyncpg_dsn,
    clear_tables,
    client_of,
    running,
    secured_settings,
)
from tests.test_chainlit_data_layer import step_dict
from tests.test_elements import _settings, make_thread, upload

INGEST = "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { index step { id } error { code } } }"
CREATE_ELEMENT = (
    "mutation($input: ElementInput!, $file: Upload) {"
    " createElement(input: $input, file: $file) { id objectKey } }"
)


class TcpProxy:
    """A TCP proxy between the gateway and a server, which the test can make misbehave:
    `freeze()`: the server's answers stop (requests still arrive: it seems to hang);
    `cut()`: every connection drops and new ones are refused (it seems down);
    `restore()`: back to normal."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port or 0, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._connections |= {writer, upstream_writer}
        await asyncio.gather(
            self._pump(reader, upstream_writer, answers=False),
            self._pump(upstream_reader, writer, answers=True),
            return_exceptions=True,
        )
        self._connections -= {writer, upstream_writer}

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, answers: bool) -> None:
        try:
            while data := await source.read(65536):
                if answers:
                    await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()

    def freeze(self) -> None:
        self._flowing.clear()

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()

    async def restore(self) -> None:
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()
        self._flowing.set()


@contextlib.asynccontextmanager
async def proxy_to(host: str, port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def restore_after(proxy: TcpProxy, seconds: float) -> asyncio.TimerHandle:
    """A restart taking `seconds`: the server is back then."""
    return asyncio.get_running_loop().call_later(seconds, lambda: asyncio.ensure_future(proxy.restore()))


def steps_of(thread_id: str, count: int) -> list[dict[str, Any]]:
    return [
        {"id": str(uuid.uuid4()), "threadId": thread_id, "name": f"s{n}", "type": "run"} for n in range(count)
    ]


async def step_count(db: Database, thread_id: str) -> int:
    async with db.session() as session:
        statement = sa.text('SELECT COUNT(*) FROM steps WHERE "threadId" = :t')
        return int((await session.execute(statement, {"t": thread_id})).scalar_one())


def require_postgresql(database_url: str) -> None:
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("kills PostgreSQL backends; SQLite has no server connection to lose")


# --- PostgreSQL: a connection killed mid-transaction ----------------------------------------------


@contextlib.asynccontextmanager
async def thread_locked(database_url: str, thread_id: str) -> AsyncIterator[asyncpg.Connection]:
    """Hold the thread's row lock from another connection: the gateway's transaction writing a
    step of that thread waits there, in the middle of its work, until we let go."""
    connection = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("SELECT 1 FROM threads WHERE id = $1 FOR UPDATE", thread_id)
        try:
            yield connection
        finally:
            await transaction.rollback()
    finally:
        await connection.close()


async def kill_the_waiting_gateway_backend(database_url: str, locker: asyncpg.Connection) -> None:
    """pg_terminate_backend the gateway's backend of this test database that waits for the lock
    (only it: other engineers' databases on the same server are never touched)."""
    name = make_url(database_url).database
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL))
    try:
        for _ in range(200):
            pids = await admin.fetch(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> $2 AND wait_event_type = 'Lock'",
                name,
                locker.get_server_pid(),
            )
            if pids:
                for row in pids:
                    assert await admin.fetchval("SELECT pg_terminate_backend($1)", row["pid"])
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the gateway's transaction never reached the lock")
    finally:
        await admin.close()


async def test_connection_killed_mid_transaction_is_retryable_and_wrote_nothing(
    database_url: str, api: Api, db: Database
) -> None:
    require_postgresql(database_url)
    locked_thread, new_thread = str(uuid.uuid4()), str(uuid.uuid4())
    await api.ok(INGEST, s=steps_of(locked_thread, 1))
    # 20 steps of a new thread are written, then one of the locked thread waits for its lock.
    batch = steps_of(new_thread, 20) + steps_of(locked_thread, 1)
    async with thread_locked(database_url, locked_thread) as locker:
        request = asyncio.create_task(api.post(INGEST, {"s": batch}))
        await kill_the_waiting_gateway_backend(database_url, locker)
        response = await request
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert error["extensions"]["retryable"] is True
    assert error["extensions"]["outcome"] == "none"
    # Nothing half-written: the 20 steps written before the kill went with the transaction.
    assert await step_count(db, new_thread) == 0
    assert (await api.ok("query($t: ID!) { thread(id: $t) { id } }", t=new_thread))["thread"] is None
    # The pool replaces the killed connection: the same request now succeeds.
    data = await api.ok(INGEST, s=batch)
    assert all(item["error"] is None for item in data["ingestSteps"])
    assert await step_count(db, new_thread) == 20


async def test_the_client_rides_out_a_killed_connection(database_url: str, api: Api, db: Database) -> None:
    require_postgresql(database_url)
    locked_thread, new_thread = str(uuid.uuid4()), str(uuid.uuid4())
    await api.ok(INGEST, s=steps_of(locked_thread, 1))
    batch = steps_of(new_thread, 10) + steps_of(locked_thread, 1)
    async with GatewayClient("http://localhost/graphql", transport=api.http._transport) as client:
        async with thread_locked(database_url, locked_thread) as locker:
            write = asyncio.create_task(client.execute(INGEST, {"s": batch}))
            await kill_the_waiting_gateway_backend(database_url, locker)
        data = await write  # the first attempt was killed; a retry, after the lock is gone, lands
    assert [item["error"] for item in data["ingestSteps"]] == [None] * 11
    assert await step_count(db, new_thread) == 10  # each step once


async def test_connections_dropped_while_idle_are_replaced_before_use(
    database_url: str, api: Api, db: Database
) -> None:
    """The server drops the pool's idle connections (a restart, an idle timeout, an operator's
    kill): after a quiet moment the next requests get fresh connections, not a failure."""
    require_postgresql(database_url)
    thread_id = str(uuid.uuid4())
    await asyncio.gather(*(api.ok(INGEST, s=steps_of(thread_id, 1)) for _ in range(4)))  # a few pooled
    name = make_url(database_url).database
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL))
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND state = 'idle' AND pid <> pg_backend_pid()",
            name,
        )
    finally:
        await admin.close()
    assert killed >= 1
    await asyncio.sleep(1.2)  # idle past the pool's check-before-use threshold
    for query, variables in ((INGEST, {"s": steps_of(thread_id, 1)}), ("{ threads { totalCount } }", {})):
        response = await api.post(query, variables)
        assert response.status_code == 200, response.text
        assert "errors" not in response.json(), response.text
    assert await step_count(db, thread_id) == 5


# --- PostgreSQL unreachable (a restart, seen from the gateway) -------------------------------------


async def test_database_unreachable_is_503_then_the_client_retries_through(
    database_url: str, db: Database
) -> None:
    require_postgresql(database_url)
    await clear_tables(db)
    url = make_url(database_url)
    async with proxy_to(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with running(secured_settings(proxied)) as app, client_of(app) as raw:
            api = raw.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
            thread_id = str(uuid.uuid4())
            await api.ok(INGEST, s=steps_of(thread_id, 1))
            await proxy.cut()
            for query in (INGEST, "{ threads { totalCount } }"):
                response = await api.post(query, {"s": steps_of(thread_id, 1)} if "$s" in query else {})
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"]
                [error] = response.json()["errors"]
                assert error["extensions"] == {
                    **error["extensions"],
                    "code": "SERVICE_UNAVAILABLE",
                    "retryable": True,
                }
            # A restart that takes a second: the client's retries ride it out.
            async with GatewayClient(
                "http://localhost/graphql", api_key=TEST_API_KEY, transport=raw.http._transport
            ) as client:
                restart = restore_after(proxy, 1.0)
                batch = steps_of(thread_id, 5)
                data = await client.execute(INGEST, {"s": batch})
                restart.cancel()
            assert [item["error"] for item in data["ingestSteps"]] == [None] * 5
            # A Chainlit app's write, through the data layer, rides out the same restart.
            layer = GatewayDataLayer(
                url="http://localhost/graphql", api_key=TEST_API_KEY, transport=raw.http._transport
            )
            init_http_context()  # as in a Chainlit app's request
            await proxy.cut()
            restart = restore_after(proxy, 1.0)
            try:
                await layer.create_step(step_dict(thread_id, output="survived"))
            finally:
                restart.cancel()
                await layer.close()
    assert await step_count(db, thread_id) == 7


# --- S3 that stops answering ----------------------------------------------------------------------


@pytest.fixture
async def frozen_s3(s3_server: S3Server) -> AsyncIterator[TcpProxy]:
    async with proxy_to("127.0.0.1", s3_server.port) as proxy:
        yield proxy


async def bucket_keys(s3_server: S3Server, prefix: str) -> set[str]:
    listed = await asyncio.to_thread(s3_server.client().list_objects_v2, Bucket=BUCKET, Prefix=prefix + "/")
    return {item["Key"] for item in listed.get("Contents", [])}


async def element_rows(db: Database) -> list[str]:
    async with db.session() as session:
        return list((await session.execute(sa.text('SELECT "objectKey" FROM elements'))).scalars())


async def until(condition: Any, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.1)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the condition never held")


async def test_s3_that_stops_answering_times_out_keeps_nothing_and_the_client_retries(
    database_url: str,
    db: Database,
    s3_server: S3Server,
    frozen_s3: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.reaper.retry_delay", lambda attempts: timedelta(0))
    await clear_tables(db)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    settings = _settings(
        database_url,
        f"s3://{BUCKET}/{prefix}",
        s3_server,
        s3_read_timeout_seconds=1.0,
        s3_connect_timeout_seconds=1.0,
        reaper_interval_seconds=0.2,
    )
    settings.s3_endpoint_url = f"http://127.0.0.1:{frozen_s3.port}"
    async with running(settings) as app, client_of(app) as raw:
        api = raw.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
        attachments: Attachments = app.state.attachments
        thread_id, _ = await make_thread(api)
        content = os.urandom(1000)

        # One upload while S3 takes the bytes but never answers: a retryable error in seconds.
        frozen_s3.freeze()
        started = asyncio.get_running_loop().time()
        response = await upload(api, {"threadId": thread_id, "name": "a.bin"}, content)
        elapsed = asyncio.get_running_loop().time() - started
        assert elapsed < 15, elapsed
        assert response.status_code == 503, response.text
        [error] = response.json()["errors"]
        assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE" and error["extensions"]["retryable"]
        assert await element_rows(db) == []  # no row for bytes that may not be there
        async with db.session() as session:
            queued = [item.objectKey for item in await object_deletions.pending_deletions(session)]
        assert len(queued) == 1 and queued[0].startswith(prefix + "/")  # its object, to delete

        # The Python client's upload while S3 is frozen: it retries once S3 answers again.
        async with GatewayClient(
            "http://localhost/graphql", api_key=TEST_API_KEY, transport=raw.http._transport
        ) as client:
            client_upload = asyncio.create_task(
                client.execute(
                    CREATE_ELEMENT,
                    {"input": {"threadId": thread_id, "name": "b.bin"}},
                    files={"file": UploadFile("b.bin", content=content)},
                )
            )

            async def two_queued() -> bool:
                async with db.session() as session:
                    return len(await object_deletions.pending_deletions(session)) >= 2

            await until(two_queued)  # the client's first attempt timed out
            await frozen_s3.restore()
            data = await client_upload
        key = data["createElement"]["objectKey"]

        # Once S3 answers, the reaper deletes every object no row names: nothing orphaned.
        attachments.reaper.kick()

        async def settled() -> bool:
            async with db.session() as session:
                return await object_deletions.pending_deletions(session) == []

        await until(settled)
        assert await element_rows(db) == [key]
        assert await bucket_keys(s3_server, prefix) == {key}
        read = await api.ok("query($id: ID!) { element(id: $id) { url } }", id=data["createElement"]["id"])
        async with httpx.AsyncClient() as outside:
            assert (await outside.get(read["element"]["url"])).content == content
