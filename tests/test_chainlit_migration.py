"""An existing Chainlit PostgreSQL database, upgraded with `gateway migrate` and served over GraphQL.

The database is made exactly as a Chainlit user made it (Chainlit's documented DDL, in
`fixtures/chainlit_schema.sql`) and filled with the rows Chainlit writes: microsecond timestamps,
some NULL `createdAt`, nested steps, elements with storage keys, and two or three feedback rows for
one step (Chainlit allowed it). The migration runs through the real CLI, in its own process.
"""

import asyncio
import copy
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.migrate import head_revision
from tests.conftest import _asyncpg_dsn, create_postgres_database, drop_postgres_database

CHAINLIT_DDL = Path(__file__).parent / "fixtures" / "chainlit_schema.sql"
CHAINLIT_TABLES = ("users", "threads", "steps", "elements", "feedbacks")
CLI_TIMEOUT = 60
GATEWAY_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

ALICE = "0a1c0000-0000-4000-8000-000000000001"
BOB = "0b0b0000-0000-4000-8000-000000000002"

T_TRIP = "10000000-0000-4000-8000-000000000001"  # steps, elements, a duplicated feedback
T_OLD = "10000000-0000-4000-8000-000000000002"  # no steps: last activity is its creation
T_UNNAMED = "10000000-0000-4000-8000-000000000003"  # no name, no createdAt, the newest step
T_BOB = "10000000-0000-4000-8000-000000000004"
T_BOB_EMPTY = "10000000-0000-4000-8000-000000000005"  # no createdAt, no steps

S_USER = "20000000-0000-4000-8000-000000000001"
S_RUN = "20000000-0000-4000-8000-000000000002"
S_LLM = "20000000-0000-4000-8000-000000000003"
S_TOOL = "20000000-0000-4000-8000-000000000004"
S_RETRY = "20000000-0000-4000-8000-000000000005"  # createdAt NULL, start set
S_ANSWER = "20000000-0000-4000-8000-000000000006"
S_LATE = "20000000-0000-4000-8000-000000000007"
S_BOB_Q = "20000000-0000-4000-8000-000000000008"
S_NO_TIME = "20000000-0000-4000-8000-000000000009"  # createdAt and start NULL

E_MAP = "30000000-0000-4000-8000-000000000001"
E_PDF = "30000000-0000-4000-8000-000000000002"
E_CODE = "30000000-0000-4000-8000-000000000003"

F_LLM = "40000000-0000-4000-8000-000000000001"
F_ANSWER_OLD = "40000000-0000-4000-8000-00000000000a"  # same step as F_ANSWER_NEW
F_ANSWER_NEW = "40000000-0000-4000-8000-00000000000b"
F_BOB_1 = "40000000-0000-4000-8000-000000000011"  # three rows for one step
F_BOB_2 = "40000000-0000-4000-8000-000000000012"
F_BOB_3 = "40000000-0000-4000-8000-000000000013"

# The migration keeps one feedback per step (the greatest id) and moves the others aside.
KEPT_FEEDBACKS = {F_LLM, F_ANSWER_NEW, F_BOB_3}
MOVED_FEEDBACKS = {F_ANSWER_OLD, F_BOB_1, F_BOB_2}

GENERATION = {
    "provider": "openai",
    "model": "gpt-4o",
    "settings": {"temperature": 0.2, "max_tokens": 512},
    "messages": [
        {"role": "system", "content": "You plan trips."},
        {"role": "user", "content": "Plan a trip to Paris"},
    ],
    "messageCompletion": {"role": "assistant", "content": "Day 1: Louvre\nDay 2: Orsay"},
    "tokenCount": 42,
    "type": "CHAT",
}
ALICE_METADATA = {"role": "admin", "provider": "credentials", "image": None}
TRIP_METADATA = {"chat_profile": "GPT-4", "env": {"lang": "fr", "tz": "Europe/Paris"}, "note": "café ☕"}


def _chainlit_user(
    user_id: str, identifier: str, metadata: dict[str, Any], created_at: str
) -> dict[str, Any]:
    return {"id": user_id, "identifier": identifier, "metadata": metadata, "createdAt": created_at}


def _chainlit_thread(thread_id: str, **columns: Any) -> dict[str, Any]:
    row = {
        "id": thread_id,
        "createdAt": None,
        "name": None,
        "userId": None,
        "userIdentifier": None,
        "tags": None,
        "metadata": None,
    }
    row.update(columns)
    return row


def _chainlit_step(step_id: str, thread_id: str, name: str, type_: str, **columns: Any) -> dict[str, Any]:
    row = {
        "id": step_id,
        "name": name,
        "type": type_,
        "threadId": thread_id,
        "parentId": None,
        "streaming": False,
        "waitForAnswer": False,
        "isError": False,
        "metadata": {},
        "tags": None,
        "input": "",
        "output": "",
        "createdAt": None,
        "start": None,
        "end": None,
        "generation": None,
        "showInput": "json",
        "language": None,
        "indent": 0,
    }
    row.update(columns)
    return row


def _chainlit_element(element_id: str, thread_id: str, name: str, **columns: Any) -> dict[str, Any]:
    row = {
        "id": element_id,
        "threadId": thread_id,
        "type": None,
        "url": None,
        "chainlitKey": None,
        "name": name,
        "display": "inline",
        "objectKey": None,
        "size": None,
        "page": None,
        "language": None,
        "forId": None,
        "mime": None,
    }
    row.update(columns)
    return row


def _feedback(
    feedback_id: str, for_id: str, thread_id: str, value: int, comment: str | None
) -> dict[str, Any]:
    return {"id": feedback_id, "forId": for_id, "threadId": thread_id, "value": value, "comment": comment}


CHAINLIT_ROWS: dict[str, list[dict[str, Any]]] = {
    "users": [
        _chainlit_user(ALICE, "alice@example.com", ALICE_METADATA, "2025-02-28T09:00:00.000001Z"),
        _chainlit_user(BOB, "bob@example.com", {"provider": "header"}, "2025-02-28T09:15:30.500000Z"),
    ],
    "threads": [
        _chainlit_thread(
            T_TRIP,
            createdAt="2025-03-01T10:00:00.123456Z",
            name="Trip planning",
            userId=ALICE,
            userIdentifier="alice@example.com",
            tags=["travel", "paris"],
            metadata=TRIP_METADATA,
        ),
        _chainlit_thread(
            T_OLD,
            createdAt="2025-02-01T08:00:00.000001Z",
            name="Old chat",
            userId=ALICE,
            userIdentifier="alice@example.com",
            tags=[],
            metadata={},
        ),
        _chainlit_thread(T_UNNAMED, userId=ALICE, userIdentifier="alice@example.com"),
        _chainlit_thread(
            T_BOB,
            createdAt="2025-03-02T09:30:00.000000Z",
            name="Bob's question",
            userId=BOB,
            userIdentifier="bob@example.com",
            tags=["support"],
            metadata={"env": {"region": "eu"}},
        ),
        _chainlit_thread(T_BOB_EMPTY, userId=BOB, userIdentifier="bob@example.com", metadata={"draft": True}),
    ],
    "steps": [
        _chainlit_step(
            S_USER,
            T_TRIP,
            "Alice",
            "user_message",
            output="Plan a trip to Paris ☕",
            showInput="false",
            createdAt="2025-03-01T10:00:01.000001Z",
            start="2025-03-01T10:00:01.000001Z",
            end="2025-03-01T10:00:01.000001Z",
        ),
        _chainlit_step(
            S_RUN,
            T_TRIP,
            "on_message",
            "run",
            createdAt="2025-03-01T10:00:02.000002Z",
            start="2025-03-01T10:00:02.000002Z",
            end="2025-03-01T10:05:00.700000Z",
        ),
        _chainlit_step(
            S_LLM,
            T_TRIP,
            "ChatOpenAI",
            "llm",
            parentId=S_RUN,
            input='{"prompt": "Plan a trip to Paris"}',
            output="Day 1: Louvre\nDay 2: Orsay",
            generation=GENERATION,
            language="json",
            indent=1,
            metadata={"model": "gpt-4o"},
            createdAt="2025-03-01T10:00:03.000003Z",
            start="2025-03-01T10:00:03.000003Z",
            end="2025-03-01T10:00:04.000000Z",
        ),
        _chainlit_step(
            S_TOOL,
            T_TRIP,
            "search_hotels",
            "tool",
            parentId=S_RUN,
            input='{"city": "Paris"}',
            output="timeout after 30 s",
            isError=True,
            tags=["tool", "retry"],
            indent=1,
            createdAt="2025-03-01T10:00:04.000004Z",
            start="2025-03-01T10:00:04.000004Z",
        ),
        _chainlit_step(
            S_RETRY,
            T_TRIP,
            "search_hotels_retry",
            "tool",
            parentId=S_TOOL,
            output="3 hotels",
            indent=2,
            start="2025-03-01T10:00:05.000005Z",
            end="2025-03-01T10:00:06.000006Z",
        ),
        _chainlit_step(
            S_ANSWER,
            T_TRIP,
            "Assistant",
            "assistant_message",
            output="Here is your itinerary",
            metadata={"favorite": True, "source": "gpt-4o"},
            tags=["final"],
            streaming=False,
            createdAt="2025-03-01T10:05:00.654321Z",
            start="2025-03-01T10:04:30.000000Z",
            end="2025-03-01T10:05:00.654321Z",
        ),
        _chainlit_step(
            S_LATE,
            T_UNNAMED,
            "Alice",
            "user_message",
            output="Bonjour",
            waitForAnswer=None,
            isError=None,
            metadata=None,
            showInput=None,
            indent=None,
            createdAt="2025-03-05T12:00:00.000100Z",
        ),
        _chainlit_step(
            S_BOB_Q,
            T_BOB,
            "Bob",
            "user_message",
            output="How do I reset my password?",
            createdAt="2025-03-02T09:30:01.250000Z",
        ),
        _chainlit_step(
            S_NO_TIME, T_BOB, "Assistant", "assistant_message", output="Use the link.", streaming=True
        ),
    ],
    "elements": [
        _chainlit_element(
            E_MAP,
            T_TRIP,
            "map.png",
            type="image",
            forId=S_ANSWER,
            mime="image/png",
            size="medium",
            url="https://chainlit-files.s3.amazonaws.com/alice/map.png",
            chainlitKey="a1b2c3d4",
            objectKey=f"{ALICE}/{E_MAP}/map.png",
        ),
        _chainlit_element(
            E_PDF,
            T_TRIP,
            "itinerary.pdf",
            type="pdf",
            forId=S_USER,
            mime="application/pdf",
            display="side",
            page=2,
            url="https://example.com/itinerary.pdf",
        ),
        _chainlit_element(
            E_CODE,
            T_BOB,
            "snippet.py",
            type="text",
            display="page",
            language="python",
            mime="text/x-python",
            chainlitKey="k-3",
            objectKey=f"{BOB}/{E_CODE}/snippet.py",
        ),
    ],
    "feedbacks": [
        _feedback(F_LLM, S_LLM, T_TRIP, 0, None),
        _feedback(F_ANSWER_OLD, S_ANSWER, T_TRIP, 1, "great plan"),
        _feedback(F_ANSWER_NEW, S_ANSWER, T_TRIP, 0, "the hotel was wrong"),
        _feedback(F_BOB_1, S_BOB_Q, T_BOB, 0, "no"),
        _feedback(F_BOB_2, S_BOB_Q, T_BOB, 0, None),
        _feedback(F_BOB_3, S_BOB_Q, T_BOB, 1, "solved, thanks"),
    ],
}
JSONB_COLUMNS = {"metadata", "generation"}


def _asyncpg_url(url: str) -> str:
    return _asyncpg_dsn(url)


async def _insert_chainlit_rows(connection: asyncpg.Connection) -> None:
    """Insert as Chainlit's SQL data layer does: named columns, JSON documents as JSON text."""
    for table, rows in CHAINLIT_ROWS.items():
        for row in rows:
            columns = ", ".join(f'"{name}"' for name in row)
            placeholders = ", ".join(
                f"${index}::jsonb" if name in JSONB_COLUMNS else f"${index}"
                for index, name in enumerate(row, start=1)
            )
            values = [
                json.dumps(value) if name in JSONB_COLUMNS and value is not None else value
                for name, value in row.items()
            ]
            await connection.execute(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", *values)


async def _snapshot(connection: asyncpg.Connection, table: str) -> dict[str, dict[str, Any]]:
    """Every row of a table, by id, as JSON (so any change to any column shows)."""
    records = await connection.fetch(f"SELECT to_jsonb(t) AS row FROM {table} t")
    rows = [json.loads(record["row"]) for record in records]
    return {row["id"]: row for row in rows}


async def _snapshot_all(connection: asyncpg.Connection) -> dict[str, dict[str, dict[str, Any]]]:
    tables = [*CHAINLIT_TABLES]
    if await connection.fetchval("SELECT to_regclass('gateway_feedback_duplicates') IS NOT NULL"):
        tables.append("gateway_feedback_duplicates")
    return {table: await _snapshot(connection, table) for table in tables}


async def _columns(connection: asyncpg.Connection, table: str) -> dict[str, asyncpg.Record]:
    records = await connection.fetch(
        "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = $1",
        table,
    )
    return {record["column_name"]: record for record in records}


def _only(row: dict[str, Any], columns: set[str]) -> dict[str, Any]:
    return {name: value for name, value in row.items() if name in columns}


def _cli_env(database_url: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env["GATEWAY_DATABASE_URL"] = database_url
    return env


async def run_gateway(*args: str, database_url: str, cwd: Path) -> tuple[int, str, str]:
    """`gateway <args>` in its own process, with the interpreter running the tests."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        cwd=cwd,
        env=_cli_env(database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"`gateway {' '.join(args)}` did not finish within {CLI_TIMEOUT} s")
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture
async def chainlit_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database holding Chainlit's schema and rows, as a Chainlit app left it."""
    url = await create_postgres_database("gateway_chainlit")
    try:
        connection = await asyncpg.connect(_asyncpg_url(url), timeout=5)
        try:
            await connection.execute(CHAINLIT_DDL.read_text())
            await _insert_chainlit_rows(connection)
        finally:
            await connection.close()
        yield url
    finally:
        await drop_postgres_database(url)


class GraphQL:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        body = response.json()
        assert response.status_code == 200 and not body.get("errors"), f"{response.status_code}: {body}"
        data: dict[str, Any] = body["data"]
        return data


def _ids(connection: dict[str, Any]) -> list[str]:
    return [edge["node"]["id"] for edge in connection["edges"]]


async def test_chainlit_database_is_migrated_without_loss_and_served(
    chainlit_database: str, tmp_path: Path
) -> None:
    url = chainlit_database
    connection = await asyncpg.connect(_asyncpg_url(url), timeout=5)
    try:
        original_columns = {table: set(await _columns(connection, table)) for table in CHAINLIT_TABLES}
        before = await _snapshot_all(connection)
        assert {table: len(rows) for table, rows in before.items()} == {
            table: len(rows) for table, rows in CHAINLIT_ROWS.items()
        }
        migration_started = datetime.now(UTC) - timedelta(seconds=1)

        # -- the migration, through the real CLI ----------------------------------------------
        code, stdout, stderr = await run_gateway("migrate", database_url=url, cwd=tmp_path)
        assert code == 0, f"gateway migrate failed ({code}):\n{stdout}\n{stderr}"
        head = head_revision()
        assert f"to revision {head}" in stdout, stdout
        migration_finished = datetime.now(UTC) + timedelta(seconds=1)
        version = await connection.fetchval("SELECT version_num FROM gateway_alembic_version")
        assert version == head

        after = await _snapshot_all(connection)

        # -- nothing lost: every original row, every original column value ---------------------
        assert {table: len(rows) for table, rows in after.items()} == {
            "users": 2,
            "threads": 5,
            "steps": 9,
            "elements": 3,
            "feedbacks": 3,
            "gateway_feedback_duplicates": 3,
        }
        expected = copy.deepcopy(before)
        # The only original values that change: NULL step times, back-filled (start, else the thread's).
        expected["steps"][S_RETRY]["createdAt"] = "2025-03-01T10:00:05.000005Z"
        expected["steps"][S_NO_TIME]["createdAt"] = "2025-03-02T09:30:00.000000Z"
        # ... and NULL thread times: the first step's, else the thread's back-filled activity.
        expected["threads"][T_UNNAMED]["createdAt"] = "2025-03-05T12:00:00.000100Z"
        expected["threads"][T_BOB_EMPTY]["createdAt"] = after["threads"][T_BOB_EMPTY]["updatedAt"]
        for table in ("users", "threads", "steps", "elements"):
            kept = {row_id: _only(row, original_columns[table]) for row_id, row in after[table].items()}
            assert kept == expected[table], f"{table} rows changed by the migration"
        feedbacks_now = {**after["feedbacks"], **after["gateway_feedback_duplicates"]}
        assert set(after["feedbacks"]) == KEPT_FEEDBACKS
        assert set(after["gateway_feedback_duplicates"]) == MOVED_FEEDBACKS
        assert feedbacks_now == expected["feedbacks"], "feedback rows were lost or altered"
        assert (
            await connection.fetchval(
                'SELECT count(*) FROM (SELECT "forId" FROM feedbacks GROUP BY "forId" HAVING count(*) > 1) d'
            )
            == 0
        )

        # -- the new columns, and their back-fill -----------------------------------------------
        steps_columns = await _columns(connection, "steps")
        assert {"command", "modes", "defaultOpen", "autoCollapse"} <= set(steps_columns)
        assert steps_columns["modes"]["data_type"] == "jsonb"
        assert steps_columns["defaultOpen"]["data_type"] == "boolean"
        elements_columns = await _columns(connection, "elements")
        assert {"props", "sizeBytes", "createdAt"} <= set(elements_columns)
        assert elements_columns["props"]["data_type"] == "jsonb"
        assert elements_columns["sizeBytes"]["data_type"] == "bigint"
        threads_columns = await _columns(connection, "threads")
        assert threads_columns["updatedAt"]["data_type"] == "text"
        assert threads_columns["updatedAt"]["is_nullable"] == "NO"
        assert threads_columns["updatedAt"]["column_default"] is not None

        updated_at = {row_id: row["updatedAt"] for row_id, row in after["threads"].items()}
        assert updated_at[T_TRIP] == "2025-03-01T10:05:00.654321Z"  # its newest step
        assert updated_at[T_UNNAMED] == "2025-03-05T12:00:00.000100Z"
        assert updated_at[T_BOB] == "2025-03-02T09:30:01.250000Z"
        assert updated_at[T_OLD] == "2025-02-01T08:00:00.000001Z"  # no steps: its creation
        # Neither steps nor createdAt: the time of the migration.
        assert GATEWAY_TIMESTAMP.match(updated_at[T_BOB_EMPTY]), updated_at[T_BOB_EMPTY]
        empty_updated = datetime.fromisoformat(updated_at[T_BOB_EMPTY])
        assert migration_started <= empty_updated <= migration_finished
        for row in after["steps"].values():
            assert (row["command"], row["modes"], row["defaultOpen"], row["autoCollapse"]) == (
                None,
                None,
                False,
                False,
            )
        element_times = {row_id: row["createdAt"] for row_id, row in after["elements"].items()}
        assert element_times == {
            E_MAP: "2025-03-01T10:05:00.654321Z",  # its step's
            E_PDF: "2025-03-01T10:00:01.000001Z",
            E_CODE: "2025-03-02T09:30:00.000000Z",  # no step: its thread's
        }
        for row in after["elements"].values():
            assert (row["props"], row["sizeBytes"]) == (None, None)

        # -- the indexes ------------------------------------------------------------------------
        index_rows = await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        )
        indexes = {row["indexname"]: row["indexdef"] for row in index_rows}
        expected_indexes = {
            "ix_threads_userId_updatedAt_id": ("threads", '("userId", "updatedAt", id)'),
            "ix_threads_updatedAt_id": ("threads", '("updatedAt", id)'),
            "ix_threads_createdAt_id": ("threads", '("createdAt", id)'),
            "ix_steps_threadId_createdAt_id": ("steps", '("threadId", "createdAt", id)'),
            "ix_steps_parentId": ("steps", '("parentId")'),
            "ix_elements_threadId_createdAt_id": ("elements", '("threadId", "createdAt", id)'),
            "ix_elements_forId": ("elements", '("forId")'),
            "ux_feedbacks_forId": ("feedbacks", '("forId")'),
            "ix_feedbacks_threadId": ("feedbacks", '("threadId")'),
        }
        for name, (table, columns) in expected_indexes.items():
            assert name in indexes, f"index {name} is missing; indexes: {sorted(indexes)}"
            assert f" ON public.{table} USING btree {columns}" in indexes[name], indexes[name]
        assert indexes["ux_feedbacks_forId"].startswith("CREATE UNIQUE INDEX")
        if await connection.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            # A role that may create pg_trgm gets the search indexes.
            for name, table, column in (
                ("ix_threads_name_trgm", "threads", "name"),
                ("ix_steps_input_trgm", "steps", "input"),
                ("ix_steps_output_trgm", "steps", "output"),
            ):
                assert name in indexes, f"trigram index {name} is missing"
                assert f"ON public.{table} USING gin ({column} gin_trgm_ops)" in indexes[name], indexes[name]

        # -- a second `gateway migrate` is a no-op ----------------------------------------------
        code, stdout, stderr = await run_gateway("migrate", database_url=url, cwd=tmp_path)
        assert code == 0, f"second gateway migrate failed ({code}):\n{stdout}\n{stderr}"
        assert f"already at revision {head}" in stdout, stdout
        assert await _snapshot_all(connection) == after, "a second migrate changed rows"

        # -- the migrated rows, served over GraphQL ---------------------------------------------
        await _check_graphql(url)

        # -- Chainlit goes on writing after the migration ---------------------------------------
        await _check_chainlit_writes(connection, url)
    finally:
        await connection.close()


async def _check_graphql(url: str) -> None:
    app = create_app(Settings(database_url=url, auto_migrate=False))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            graphql = GraphQL(http)
            await _check_thread_lists(graphql)
            await _check_trip_thread(graphql)
            await _check_users_and_lookups(graphql)
    finally:
        await app.state.db.dispose()


async def _check_thread_lists(graphql: GraphQL) -> None:
    data = await graphql(
        """query($user: ID!) { threads(filter: {userId: $user}) { totalCount edges { node {
             id name createdAt updatedAt userId userIdentifier tags metadata user { identifier } } } } }""",
        user=ALICE,
    )
    nodes = [edge["node"] for edge in data["threads"]["edges"]]
    assert data["threads"]["totalCount"] == 3
    assert nodes == [
        {
            "id": T_UNNAMED,
            "name": None,
            "createdAt": "2025-03-05T12:00:00.000Z",
            "updatedAt": "2025-03-05T12:00:00.000Z",
            "userId": ALICE,
            "userIdentifier": "alice@example.com",
            "tags": [],
            "metadata": {},
            "user": {"identifier": "alice@example.com"},
        },
        {
            "id": T_TRIP,
            "name": "Trip planning",
            "createdAt": "2025-03-01T10:00:00.123Z",
            "updatedAt": "2025-03-01T10:05:00.654Z",
            "userId": ALICE,
            "userIdentifier": "alice@example.com",
            "tags": ["travel", "paris"],
            "metadata": TRIP_METADATA,
            "user": {"identifier": "alice@example.com"},
        },
        {
            "id": T_OLD,
            "name": "Old chat",
            "createdAt": "2025-02-01T08:00:00.000Z",
            "updatedAt": "2025-02-01T08:00:00.000Z",
            "userId": ALICE,
            "userIdentifier": "alice@example.com",
            "tags": [],
            "metadata": {},
            "user": {"identifier": "alice@example.com"},
        },
    ]

    data = await graphql(
        """query { threads(filter: {userIdentifier: "bob@example.com"}) { edges { node {
             id createdAt updatedAt tags metadata } } } }"""
    )
    empty_thread = data["threads"]["edges"][0]["node"]
    assert empty_thread["createdAt"] == empty_thread["updatedAt"], "no time at all: created when migrated"
    assert [edge["node"] for edge in data["threads"]["edges"]] == [
        {
            "id": T_BOB_EMPTY,
            "createdAt": empty_thread["createdAt"],
            "updatedAt": empty_thread["updatedAt"],
            "tags": [],
            "metadata": {"draft": True},
        },
        {
            "id": T_BOB,
            "createdAt": "2025-03-02T09:30:00.000Z",
            "updatedAt": "2025-03-02T09:30:01.250Z",
            "tags": ["support"],
            "metadata": {"env": {"region": "eu"}},
        },
    ]

    # Paging by the back-filled updatedAt neither repeats nor skips a thread.
    seen: list[str] = []
    after: str | None = None
    for _ in range(5):
        data = await graphql(
            "query($after: String) { threads(first: 2, after: $after) { "
            "edges { node { id } } pageInfo { hasNextPage endCursor } } }",
            after=after,
        )
        seen += _ids(data["threads"])
        if not data["threads"]["pageInfo"]["hasNextPage"]:
            break
        after = data["threads"]["pageInfo"]["endCursor"]
    assert seen == [T_BOB_EMPTY, T_UNNAMED, T_BOB, T_TRIP, T_OLD]

    # Filters over migrated rows: only the kept feedback of each step counts.
    filters: list[tuple[str, dict[str, Any], list[str]]] = [
        ("feedback 0", {"feedback": 0}, [T_TRIP]),
        ("feedback 1", {"feedback": 1}, [T_BOB]),
        ("tags", {"tags": ["travel"]}, [T_TRIP]),
        ("metadata", {"metadata": {"env": {"lang": "fr"}}}, [T_TRIP]),
        ("search in step output", {"search": "LOUVRE"}, [T_TRIP]),
        ("search in a thread without name", {"search": "bonjour"}, [T_UNNAMED]),
        ("search non-ASCII", {"search": "☕"}, [T_TRIP]),
    ]
    for label, thread_filter, expected in filters:
        data = await graphql(
            "query($filter: ThreadFilter) { threads(filter: $filter) { edges { node { id } } } }",
            filter=thread_filter,
        )
        assert _ids(data["threads"]) == expected, label


STEP_FIELDS = """
    id threadId parentId name type input output isError streaming waitForAnswer showInput language
    command modes defaultOpen autoCollapse tags metadata generation createdAt start end
    feedback { id forId threadId value comment }
    elements { id name }
    children { edges { node { id } } }
"""


async def _check_trip_thread(graphql: GraphQL) -> None:
    data = await graphql(
        f"""query($id: ID!) {{ thread(id: $id) {{
              steps(first: 50) {{ totalCount edges {{ node {{ {STEP_FIELDS} }} }} }}
              roots: steps(filter: {{rootOnly: true}}) {{ edges {{ node {{ id }} }} }}
              latest: steps(last: 2) {{ edges {{ node {{ id }} }} }}
              elements {{ totalCount edges {{ node {{
                id threadId forId type name mime size display language page props objectKey chainlitKey
                url sizeBytes createdAt }} }} }}
              feedbacks {{ totalCount edges {{ node {{ id forId value comment step {{ id }} }} }} }}
            }} }}""",
        id=T_TRIP,
    )
    thread = data["thread"]
    steps = {edge["node"]["id"]: edge["node"] for edge in thread["steps"]["edges"]}
    assert _ids(thread["steps"]) == [S_USER, S_RUN, S_LLM, S_TOOL, S_RETRY, S_ANSWER]  # oldest first
    assert thread["steps"]["totalCount"] == 6
    assert _ids(thread["roots"]) == [S_USER, S_RUN, S_ANSWER]
    assert _ids(thread["latest"]) == [S_RETRY, S_ANSWER]

    assert steps[S_LLM] == {
        "id": S_LLM,
        "threadId": T_TRIP,
        "parentId": S_RUN,
        "name": "ChatOpenAI",
        "type": "llm",
        "input": '{"prompt": "Plan a trip to Paris"}',
        "output": "Day 1: Louvre\nDay 2: Orsay",
        "isError": False,
        "streaming": False,
        "waitForAnswer": False,
        "showInput": "json",
        "language": "json",
        "command": None,
        "modes": None,
        "defaultOpen": False,
        "autoCollapse": False,
        "tags": [],
        "metadata": {"model": "gpt-4o"},
        "generation": GENERATION,
        "createdAt": "2025-03-01T10:00:03.000Z",
        "start": "2025-03-01T10:00:03.000Z",
        "end": "2025-03-01T10:00:04.000Z",
        "feedback": {"id": F_LLM, "forId": S_LLM, "threadId": T_TRIP, "value": 0, "comment": None},
        "elements": [],
        "children": {"edges": []},
    }
    assert _ids(steps[S_RUN]["children"]) == [S_LLM, S_TOOL]
    assert _ids(steps[S_TOOL]["children"]) == [S_RETRY]
    assert steps[S_TOOL]["isError"] is True
    assert steps[S_TOOL]["tags"] == ["tool", "retry"]
    assert steps[S_TOOL]["output"] == "timeout after 30 s"
    assert steps[S_RETRY]["createdAt"] == "2025-03-01T10:00:05.000Z"  # back-filled from start
    assert steps[S_USER]["output"] == "Plan a trip to Paris ☕"
    assert steps[S_USER]["showInput"] == "false"
    assert steps[S_USER]["elements"] == [{"id": E_PDF, "name": "itinerary.pdf"}]
    assert steps[S_USER]["feedback"] is None
    answer = steps[S_ANSWER]
    assert answer["metadata"] == {"favorite": True, "source": "gpt-4o"}
    assert answer["tags"] == ["final"]
    assert answer["createdAt"] == "2025-03-01T10:05:00.654Z"
    assert answer["elements"] == [{"id": E_MAP, "name": "map.png"}]
    # The step's one feedback is the one the migration kept.
    assert answer["feedback"] == {
        "id": F_ANSWER_NEW,
        "forId": S_ANSWER,
        "threadId": T_TRIP,
        "value": 0,
        "comment": "the hotel was wrong",
    }

    elements = [edge["node"] for edge in thread["elements"]["edges"]]
    assert thread["elements"]["totalCount"] == 2
    assert [element["id"] for element in elements] == [E_PDF, E_MAP]  # by back-filled createdAt
    pdf, image = elements
    assert pdf == {
        "id": E_PDF,
        "threadId": T_TRIP,
        "forId": S_USER,
        "type": "pdf",
        "name": "itinerary.pdf",
        "mime": "application/pdf",
        "size": None,
        "display": "side",
        "language": None,
        "page": 2,
        "props": None,
        "objectKey": None,
        "chainlitKey": None,
        "url": "https://example.com/itinerary.pdf",
        "sizeBytes": None,
        "createdAt": "2025-03-01T10:00:01.000Z",
    }
    assert {key: value for key, value in image.items() if key != "url"} == {
        "id": E_MAP,
        "threadId": T_TRIP,
        "forId": S_ANSWER,
        "type": "image",
        "name": "map.png",
        "mime": "image/png",
        "size": "medium",
        "display": "inline",
        "language": None,
        "page": None,
        "props": None,
        "objectKey": f"{ALICE}/{E_MAP}/map.png",
        "chainlitKey": "a1b2c3d4",
        "sizeBytes": None,
        "createdAt": "2025-03-01T10:05:00.654Z",
    }
    assert image["url"]  # a stored object is readable (its URL may be signed at read time)

    feedbacks = [edge["node"] for edge in thread["feedbacks"]["edges"]]
    assert thread["feedbacks"]["totalCount"] == 2
    assert sorted((f["id"], f["forId"], f["value"], f["comment"], f["step"]["id"]) for f in feedbacks) == [
        (F_LLM, S_LLM, 0, None, S_LLM),
        (F_ANSWER_NEW, S_ANSWER, 0, "the hotel was wrong", S_ANSWER),
    ]


async def _check_users_and_lookups(graphql: GraphQL) -> None:
    data = await graphql(
        """query { alice: user(identifier: "alice@example.com") { id identifier metadata createdAt }
                   bob: user(identifier: "bob@example.com") { id metadata createdAt } }"""
    )
    assert data["alice"] == {
        "id": ALICE,
        "identifier": "alice@example.com",
        "metadata": ALICE_METADATA,
        "createdAt": "2025-02-28T09:00:00.000Z",
    }
    assert data["bob"] == {
        "id": BOB,
        "metadata": {"provider": "header"},
        "createdAt": "2025-02-28T09:15:30.500Z",
    }

    data = await graphql(
        """query($retry: ID!, $late: ID!, $code: ID!, $bob: ID!) {
             retry: step(id: $retry) { parent { id parent { id parent { id } } } thread { id name } }
             late: step(id: $late) { waitForAnswer isError showInput metadata tags thread { updatedAt } }
             code: element(id: $code) { threadId forId language display objectKey chainlitKey createdAt }
             bob: thread(id: $bob) { steps { edges { node { id createdAt streaming
               feedback { id value comment } } } } elements { edges { node { id } } } }
           }""",
        retry=S_RETRY,
        late=S_LATE,
        code=E_CODE,
        bob=T_BOB,
    )
    assert data["retry"] == {
        "parent": {"id": S_TOOL, "parent": {"id": S_RUN, "parent": None}},
        "thread": {"id": T_TRIP, "name": "Trip planning"},
    }
    assert data["late"] == {
        "waitForAnswer": None,
        "isError": None,
        "showInput": None,
        "metadata": {},
        "tags": [],
        "thread": {"updatedAt": "2025-03-05T12:00:00.000Z"},
    }
    assert data["code"] == {
        "threadId": T_BOB,
        "forId": None,
        "language": "python",
        "display": "page",
        "objectKey": f"{BOB}/{E_CODE}/snippet.py",
        "chainlitKey": "k-3",
        "createdAt": "2025-03-02T09:30:00.000Z",
    }
    bob_steps = [edge["node"] for edge in data["bob"]["steps"]["edges"]]
    assert bob_steps == [
        {"id": S_NO_TIME, "createdAt": "2025-03-02T09:30:00.000Z", "streaming": True, "feedback": None},
        {
            "id": S_BOB_Q,
            "createdAt": "2025-03-02T09:30:01.250Z",
            "streaming": False,
            "feedback": {"id": F_BOB_3, "value": 1, "comment": "solved, thanks"},
        },
    ]
    assert _ids(data["bob"]["elements"]) == [E_CODE]


async def _check_chainlit_writes(connection: asyncpg.Connection, url: str) -> None:
    """The statements Chainlit's SQL data layer runs, which know nothing of the new columns."""
    thread_id = "10000000-0000-4000-8000-0000000000ff"
    step_id = "20000000-0000-4000-8000-0000000000ff"
    element_id = "30000000-0000-4000-8000-0000000000ff"
    written_after = datetime.now(UTC) - timedelta(seconds=1)
    await connection.execute(
        'INSERT INTO threads ("id", "createdAt", "name", "userId", "userIdentifier", "tags", "metadata") '
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb) "
        'ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name"',
        thread_id,
        "2025-03-10T08:00:00.000001Z",
        "Written by Chainlit",
        ALICE,
        "alice@example.com",
        ["new"],
        json.dumps({"chat_profile": "GPT-4"}),
    )
    await connection.execute(
        'INSERT INTO steps ("id", "name", "type", "threadId", "parentId", "streaming", "waitForAnswer", '
        '"isError", "metadata", "tags", "input", "output", "createdAt", "start", "end", "generation", '
        '"showInput", "language") '
        "VALUES ($1, $2, $3, $4, NULL, false, false, false, $5::jsonb, NULL, $6, $7, $8, $8, $8, NULL, "
        "'json', NULL)",
        step_id,
        "Alice",
        "user_message",
        thread_id,
        "{}",
        "",
        "Hello again",
        "2025-03-10T08:00:01.000001Z",
    )
    await connection.execute(
        'INSERT INTO elements ("id", "threadId", "type", "chainlitKey", "url", "objectKey", "name", '
        '"display", "size", "language", "page", "forId", "mime") '
        "VALUES ($1, $2, 'file', 'ck', NULL, 'alice/notes.txt', 'notes.txt', 'inline', NULL, NULL, NULL, $3, "
        "'text/plain')",
        element_id,
        thread_id,
        step_id,
    )
    written_before = datetime.now(UTC) + timedelta(seconds=1)
    row = await connection.fetchrow('SELECT "updatedAt" FROM threads WHERE id = $1', thread_id)
    assert row is not None and row["updatedAt"] is not None, "a Chainlit thread insert got no updatedAt"
    assert GATEWAY_TIMESTAMP.match(row["updatedAt"]), row["updatedAt"]
    assert written_after <= datetime.fromisoformat(row["updatedAt"]) <= written_before
    step = await connection.fetchrow('SELECT "defaultOpen", "autoCollapse" FROM steps WHERE id = $1', step_id)
    assert step is not None and (step["defaultOpen"], step["autoCollapse"]) == (False, False)
    element_created = await connection.fetchval('SELECT "createdAt" FROM elements WHERE id = $1', element_id)
    assert element_created is not None and GATEWAY_TIMESTAMP.match(element_created), element_created

    # The gateway serves what Chainlit wrote: the new thread is the newest activity.
    app = create_app(Settings(database_url=url, auto_migrate=False))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            data = await GraphQL(http)(
                """query($user: ID!) { threads(filter: {userId: $user}, first: 1) { totalCount edges { node {
                     id tags metadata steps { edges { node { id output elements { name } } } } } } } }""",
                user=ALICE,
            )
    finally:
        await app.state.db.dispose()
    assert data["threads"]["totalCount"] == 4
    assert [edge["node"] for edge in data["threads"]["edges"]] == [
        {
            "id": thread_id,
            "tags": ["new"],
            "metadata": {"chat_profile": "GPT-4"},
            "steps": {
                "edges": [
                    {"node": {"id": step_id, "output": "Hello again", "elements": [{"name": "notes.txt"}]}}
                ]
            },
        },
    ]
