"""Subscriptions across replicas: two gateway processes on one database deliver each other's
writes (PostgreSQL: NOTIFY; SQLite: the poll), and a dropped LISTEN connection loses nothing."""

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from gateway.database import Database
from gateway.events import LISTENER_NAME
from tests.conftest import TEST_API_KEY, Api, _asyncpg_dsn, new_uuid, open_settings, running
from tests.live import THREAD_EVENTS, live_client, served, until_live
from tests.test_cli import SERVER_START_TIMEOUT, Server, _env, _free_port, _wait_until_healthy
from tests.test_subscriptions import APPEND, new_step, new_thread

KEY = {"Authorization": f"Bearer {TEST_API_KEY}"}


@pytest.fixture(scope="session")
async def url(app: Starlette) -> AsyncIterator[str]:
    async with served(app) as address:
        yield address


def start_replica(database_url: str, tmp_path: Path, port: int) -> Server:
    """`gateway serve` in its own process on the same database (polling fast, for SQLite)."""
    env = _env(
        database_url=database_url,
        storage_url=f"file://{tmp_path / 'files'}",
        port=str(port),
        api_keys=TEST_API_KEY,
        auto_migrate="false",
        event_poll_seconds="0.2",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Server(process)


@pytest.fixture
async def replica(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A second gateway process on the same database; yields its base URL."""
    port = _free_port()
    server = start_replica(database_url, tmp_path, port)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base) as probe:
            await asyncio.to_thread(_wait_until_healthy, probe, server, SERVER_START_TIMEOUT)
        yield base
    finally:
        server.stop()


async def test_two_replicas_deliver_each_others_writes(api: Api, url: str, replica: str) -> None:
    thread_id = await new_thread(api)
    step_id = await new_step(api, thread_id, output="")
    async with httpx.AsyncClient(base_url=replica, headers=KEY) as other:
        other_api = Api(other, KEY)
        replica_ws = replica.replace("http://", "ws://") + "/graphql"
        async with (
            live_client(url) as here,
            live_client(replica_ws, init=KEY) as there,
        ):
            await until_live(
                here, other_api, await here.subscribe(THREAD_EVENTS, t=thread_id), thread_id=thread_id
            )
            await until_live(
                there, api, await there.subscribe(THREAD_EVENTS, t=thread_id), thread_id=thread_id
            )
            await other_api.ok(APPEND, id=step_id, d="from the replica ")
            await api.ok(APPEND, id=step_id, d="from here")
            for client in (here, there):
                # Each also sees the other's probe; the appends come last, in commit order.
                deltas = [event["delta"] for event in await client.events(2)]
                while deltas[-2:] != ["from the replica ", "from here"]:
                    deltas.append((await client.next_event())["delta"])


async def test_a_dropped_listen_connection_reconnects_and_catches_up(
    database_url: str, backend: str, db: Database, api: Api
) -> None:
    if backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    # No poll to hide a dead listener: only NOTIFY (or the catch-up after reconnecting) delivers.
    settings = open_settings(database_url, event_poll_seconds=3600)
    thread_id = await new_thread(api)
    async with (
        running(settings) as application,
        served(application) as address,
        live_client(address) as client,
    ):
        await until_live(client, api, await client.subscribe(THREAD_EVENTS, t=thread_id), thread_id=thread_id)
        name = make_url(database_url).database
        admin = await asyncpg.connect(_asyncpg_dsn(database_url))
        try:
            terminated = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND datname = $2",
                LISTENER_NAME,
                name,
            )
            assert terminated >= 1
            # Another program's write, while nobody listens: no kick from this process either.
            async with db.transaction() as session:
                await session.execute(
                    sa.text(
                        'INSERT INTO steps (id, name, type, "threadId", streaming, "createdAt") '
                        "VALUES (:id, 'missed', 'run', :thread, false, '2026-01-01T00:00:00.000Z')"
                    ),
                    {"id": new_uuid(), "thread": thread_id},
                )
            event = await client.next_event()
            assert event["kind"] == "STEP_CREATED"
            listening = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
                LISTENER_NAME,
                name,
            )
            assert listening >= 1
            # And NOTIFY works again on the new connection.
            async with db.transaction() as session:
                await session.execute(
                    sa.text("UPDATE threads SET name = 'after' WHERE id = :id"), {"id": thread_id}
                )
            assert (await client.next_event())["thread"]["name"] == "after"
        finally:
            await admin.close()
