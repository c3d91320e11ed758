"""Benchmark: the gateway's throughput against the database driven directly, on the same machine.

Seeds a scratch database (10 users x 100 threads x 20 steps, about 800 bytes of text a step, some
feedback) with the driver's bulk paths (asyncpg COPY, sqlite3 executemany), starts a real
`gateway serve` process on it, and runs each workload at a fixed concurrency in interleaved rounds:
a gateway round, then a baseline round doing the same work straight on the database (one SQL
statement that returns the same JSON, or the same write), then a gateway round again... so both
see the same machine state. The load comes from separate client processes (`--clients`), never
from this one, which only samples /proc between rounds.

Workloads (`--only a,b,...`):
  a  history read (a user's 20 newest threads with their last 10 steps and feedback), API key
  b  the thread list alone          c  one thread's steps(last: 10)
  d  search in a user's threads     e  history read with the user's own JWT
  f  upsertStep of a new step       g  ingestSteps of 100 new steps (rates in steps/s)
  h  appendStepOutput to an existing step

Prints a markdown table: rates, the ratio gateway/baseline (median of the rounds' ratios, and
each round's), the gateway process's CPU per request (and PostgreSQL's backends', and the
client's), and the gateway's memory. With `--soak MINUTES`, only a memory check runs instead: a
mixed workload at the given concurrency, the gateway's RSS every 30 s, and its growth after the
first 30 s (warm-up). Run by hand, never in CI:

    .venv/bin/python bench/throughput.py [--only a,b] [--rounds 3] [--seconds 5 | --requests 2000]
        [--concurrency 16] [--clients 1] [--backend postgresql|sqlite] [--soak MINUTES]
        [--gateway-url URL --database-url URL --api-key KEY [--jwt-secret S] [--gateway-pid PID]]

PostgreSQL is reached at GATEWAY_TEST_POSTGRES_URL (default postgres on 127.0.0.1:5432); the
benchmark creates its database and drops it. On SQLite the baselines of a (the same one
statement, in SQLite's JSON functions) and f run over aiosqlite, writes through one connection as
the gateway does; the others have none.
"""

import argparse
import asyncio
import base64
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import shlex
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import jwt
import uvloop
from scratch import scratch_database
from sqlalchemy.engine import make_url

from gateway.jsonops import like_pattern
from gateway.migrate import upgrade_database

USERS = 10
THREADS_PER_USER = 100
STEPS_PER_THREAD = 20
TEXT_BYTES = 800
FEEDBACK_SHARE = 0.1
INGEST_BATCH = 100
BENCH_KEY = "gw_bench-throughput-key-0123456789"
BENCH_SECRET = "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SEED_EPOCH = 1_767_225_600.0  # 2026-01-01: seeded activity is in the past, below the triggers' now()

STEP_NODE = "id type name input output createdAt feedback { value comment }"
HISTORY = f"""query History($user: ID!) {{ threads(first: 20, filter: {{userId: $user}}) {{
  pageInfo {{ hasNextPage endCursor }}
  edges {{ node {{ id name updatedAt steps(last: 10) {{ pageInfo {{ hasPreviousPage startCursor }}
    edges {{ node {{ {STEP_NODE} }} }} }} }} }} }} }}"""
THREAD_LIST = """query Threads($user: ID!) { threads(first: 20, filter: {userId: $user}) {
  pageInfo { hasNextPage endCursor } edges { node { id name updatedAt } } } }"""
THREAD_STEPS = f"""query Steps($thread: ID!) {{ thread(id: $thread) {{ steps(last: 10) {{
  pageInfo {{ hasPreviousPage startCursor }} edges {{ node {{ {STEP_NODE} }} }} }} }} }}"""
SEARCH = """query Search($user: ID!, $term: String!) {
  threads(first: 20, filter: {userId: $user, search: $term}) {
  pageInfo { hasNextPage endCursor } edges { node { id name updatedAt } } } }"""
UPSERT_STEP = "mutation Upsert($input: StepInput!) { upsertStep(input: $input) { id } }"
INGEST_STEPS = """mutation Ingest($steps: [StepInput!]!) {
  ingestSteps(steps: $steps) { index id error { code message } } }"""
APPEND_OUTPUT = (
    "mutation Append($id: ID!, $delta: String!) { appendStepOutput(id: $id, delta: $delta) { id } }"
)

WORKLOADS = {
    "a": "history read, API key",
    "b": "thread list",
    "c": "one thread's steps(last: 10)",
    "d": "search",
    "e": "history read, user's JWT",
    "f": "upsertStep (new step)",
    "g": f"ingestSteps ({INGEST_BATCH} steps/call)",
    "h": "appendStepOutput",
}
SQLITE_BASELINES = {"a", "f"}
T = TypeVar("T")
SOAK_MIX = ["a", "a", "b", "c", "c", "f", "h", "h"]


# --- the baselines' SQL: one statement per request, the response JSON built by the database ---


def _pg_cursor(name: str, sort_value: str, row_id: str) -> str:
    """The gateway's cursor (base64url of `["<ordering>",[<sort value>,<id>]]`, unpadded), in SQL."""
    raw = f"""'["{name}",["' || {sort_value} || '","' || {row_id}::text || '"]]'"""
    return f"rtrim(translate(encode(convert_to({raw}, 'UTF8'), 'base64'), E'+/\\n', '-_'), '=')"


PG_STEP_NODE = (
    "json_build_object('id', x.id, 'type', x.type, 'name', x.name, 'input', x.input, 'output', x.output,"
    " 'createdAt', x.\"createdAt\", 'feedback', CASE WHEN f.id IS NULL THEN NULL"
    " ELSE json_build_object('value', f.value, 'comment', f.comment) END)"
)


def _pg_last_steps(thread: str) -> str:
    """A thread's `steps(last: 10)` connection as JSON (a LATERAL subquery's one column, `steps`)."""
    cursor = _pg_cursor("steps:createdAt", 'x."createdAt"', "x.id")
    return f"""(
  SELECT json_build_object(
    'pageInfo', json_build_object(
      'hasPreviousPage', count(*) > 10,
      'startCursor', (array_agg({cursor} ORDER BY x."createdAt", x.id) FILTER (WHERE x.n <= 10))[1]),
    'edges', coalesce(json_agg(json_build_object('node', {PG_STEP_NODE}) ORDER BY x."createdAt", x.id)
                      FILTER (WHERE x.n <= 10), '[]'::json)) AS steps
  FROM (SELECT s.id, s.type, s.name, s.input, s.output, s."createdAt",
               row_number() OVER (ORDER BY s."createdAt" DESC, s.id DESC) AS n
        FROM steps s WHERE s."threadId" = {thread}
        ORDER BY s."createdAt" DESC, s.id DESC LIMIT 11) x
  LEFT JOIN feedbacks f ON f."forId" = x.id
)"""


def _pg_thread_page(owner: str, *, extra: str = "", with_steps: bool) -> str:
    """`threads(first: 20, filter)` as JSON: threads by updatedAt desc, id desc."""
    cursor = _pg_cursor("threads:updatedAt:desc", 'p."updatedAt"', "p.id")
    steps_field = ", 'steps', s.steps" if with_steps else ""
    lateral = f"CROSS JOIN LATERAL {_pg_last_steps('p.id')} s" if with_steps else ""
    return f"""
WITH page AS (
  SELECT t.id, t.name, t."updatedAt", row_number() OVER (ORDER BY t."updatedAt" DESC, t.id DESC) AS n
  FROM threads t WHERE t."userId" = {owner} {extra}
  ORDER BY t."updatedAt" DESC, t.id DESC LIMIT 21
)
SELECT json_build_object('threads', json_build_object(
  'pageInfo', json_build_object(
    'hasNextPage', (SELECT count(*) > 20 FROM page),
    'endCursor', (SELECT {cursor} FROM page p WHERE p.n <= 20 ORDER BY p.n DESC LIMIT 1)),
  'edges', coalesce((
    SELECT json_agg(json_build_object('node', json_build_object(
             'id', p.id, 'name', p.name, 'updatedAt', p."updatedAt"{steps_field})) ORDER BY p.n)
    FROM page p {lateral} WHERE p.n <= 20), '[]'::json)))::text"""


PG_SEARCH_CONDITION = """AND (t.name ILIKE $2 ESCAPE '\\' OR EXISTS (
    SELECT 1 FROM steps s WHERE s."threadId" = t.id
    AND (s.input ILIKE $2 ESCAPE '\\' OR s.output ILIKE $2 ESCAPE '\\')))"""
PG_SQL = {
    "a": _pg_thread_page("$1", with_steps=True),
    "b": _pg_thread_page("$1", with_steps=False),
    "c": f"""SELECT json_build_object('thread', (SELECT json_build_object('steps', s.steps)
             FROM threads t CROSS JOIN LATERAL {_pg_last_steps("t.id")} s WHERE t.id = $1))::text""",
    "d": _pg_thread_page("$1", extra=PG_SEARCH_CONDITION, with_steps=False),
    "e": _pg_thread_page("(SELECT u.id FROM users u WHERE u.identifier = $1)", with_steps=True),
}
STEP_COLUMNS = ("id", "threadId", "type", "name", "input", "output", "createdAt")
STEP_COLUMN_LIST = ", ".join(f'"{c}"' for c in STEP_COLUMNS)
UPSERT_SQL = (
    f"INSERT INTO steps ({STEP_COLUMN_LIST}, streaming, metadata) "
    + "VALUES ("
    + ", ".join(f"${i}" for i in range(1, len(STEP_COLUMNS) + 1))
    + ", false, '{}') ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in STEP_COLUMNS if c != "id")
)
APPEND_SQL = "UPDATE steps SET output = coalesce(output, '') || $1 WHERE id = $2"


def _sqlite_cursor(name: str, sort_value: str, row_id: str) -> str:
    return f"""gateway_bench_b64url('["{name}",["' || {sort_value} || '","' || {row_id} || '"]]')"""


SQLITE_HISTORY = f"""
WITH page AS (
  SELECT t.id, t.name, t."updatedAt", row_number() OVER (ORDER BY t."updatedAt" DESC, t.id DESC) AS n
  FROM threads t WHERE t."userId" = :user ORDER BY t."updatedAt" DESC, t.id DESC LIMIT 21
)
SELECT json_object('threads', json_object(
  'pageInfo', json_object(
    'hasNextPage', json(CASE WHEN (SELECT count(*) FROM page) > 20 THEN 'true' ELSE 'false' END),
    'endCursor', (SELECT {_sqlite_cursor("threads:updatedAt:desc", 'p."updatedAt"', "p.id")}
                  FROM page p WHERE p.n <= 20 ORDER BY p.n DESC LIMIT 1)),
  'edges', json((SELECT json_group_array(json_object('node', json_object(
      'id', p.id, 'name', p.name, 'updatedAt', p."updatedAt", 'steps', json((
        SELECT json_object(
          'pageInfo', json_object(
            'hasPreviousPage', json(CASE WHEN count(*) > 10 THEN 'true' ELSE 'false' END),
            'startCursor', min(CASE WHEN x.n = min(cnt, 10) THEN
                               {_sqlite_cursor("steps:createdAt", 'x."createdAt"', "x.id")} END)),
          'edges', json((SELECT json_group_array(json_object('node', json_object(
              'id', y.id, 'type', y.type, 'name', y.name, 'input', y.input, 'output', y.output,
              'createdAt', y."createdAt", 'feedback', json((SELECT json_object('value', f.value,
              'comment', f.comment) FROM feedbacks f WHERE f."forId" = y.id)))))
            FROM (SELECT * FROM (SELECT s.* FROM steps s WHERE s."threadId" = p.id
                                 ORDER BY s."createdAt" DESC, s.id DESC LIMIT 10)
                  ORDER BY "createdAt", id) y)))
        FROM (SELECT s.id, s."createdAt", row_number() OVER (ORDER BY s."createdAt" DESC, s.id DESC) AS n,
                     count(*) OVER () AS cnt
              FROM (SELECT * FROM steps s WHERE s."threadId" = p.id
                    ORDER BY s."createdAt" DESC, s.id DESC LIMIT 11) s) x)))))
    FROM (SELECT * FROM page WHERE n <= 20 ORDER BY n) p))))"""
SQLITE_UPSERT = (
    f"INSERT INTO steps ({STEP_COLUMN_LIST}, streaming, metadata) VALUES ("
    + ", ".join("?" for _ in STEP_COLUMNS)
    + ", 0, '{}') ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f'"{c}" = excluded."{c}"' for c in STEP_COLUMNS if c != "id")
)


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# --- seed ---


@dataclass
class Seed:
    users: list[tuple[str, str]]  # (id, identifier)
    threads: list[str]
    steps: list[str]
    terms: list[str]
    thread_owner: dict[str, str] = field(default_factory=dict)
    step_thread: dict[str, str] = field(default_factory=dict)
    rated: set[str] = field(default_factory=set)  # steps with a feedback


def _timestamp(seconds: float) -> str:
    moment = time.gmtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{round(seconds * 1000) % 1000:03d}Z"


def now_timestamp() -> str:
    return _timestamp(time.time())


def _vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def text_of(rng: random.Random, words: list[str], size: int) -> str:
    parts: list[str] = []
    length = 0
    while length < size:
        # Zipf-like: a few words are everywhere, most are rare (as in real text, and for search).
        word = words[min(int(rng.paretovariate(1.1)) - 1, len(words) - 1)]
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:size]


def build_rows(
    prefix: str, rng: random.Random
) -> tuple[Seed, list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows of users (id, identifier, metadata, createdAt), threads (id, createdAt, name, userId,
    userIdentifier, metadata, updatedAt), steps (id, name, type, threadId, streaming, metadata,
    input, output, createdAt, start, end) and feedbacks (id, forId, threadId, value, comment)."""
    words = _vocabulary(rng)
    rng.shuffle(words)
    users = [(str(uuid.uuid4()), f"{prefix}-user{index}@example.com") for index in range(USERS)]
    seed = Seed(users=users, threads=[], steps=[], terms=words[40:1500])
    user_rows = [(uid, ident, "{}", _timestamp(SEED_EPOCH)) for uid, ident in users]
    thread_rows, step_rows, feedback_rows = [], [], []
    for uid, ident in users:
        for index in range(THREADS_PER_USER):
            thread_id = str(uuid.uuid4())
            created = SEED_EPOCH + rng.uniform(0, 300 * 86_400)
            moment = created
            for turn in range(STEPS_PER_THREAD):
                moment += rng.uniform(1, 600)
                step_id = str(uuid.uuid4())
                user_turn = turn % 2 == 0
                prompt_size = TEXT_BYTES // 4 if not user_turn else TEXT_BYTES // 2
                step_rows.append(
                    (
                        step_id,
                        "user" if user_turn else "Assistant",
                        "user_message" if user_turn else "assistant_message",
                        thread_id,
                        False,
                        "{}",
                        text_of(rng, words, prompt_size),
                        text_of(rng, words, TEXT_BYTES - prompt_size),
                        _timestamp(moment),
                        _timestamp(moment),
                        _timestamp(moment + 1),
                    )
                )
                seed.steps.append(step_id)
                seed.step_thread[step_id] = thread_id
                if not user_turn and rng.random() < FEEDBACK_SHARE * 2:
                    comment = rng.choice([None, "helpful", "wrong answer", "too long"])
                    feedback_rows.append((str(uuid.uuid4()), step_id, thread_id, rng.randrange(2), comment))
                    seed.rated.add(step_id)
            thread_rows.append(
                (
                    thread_id,
                    _timestamp(created),
                    f"conversation {index} about {text_of(rng, words, 30)}",
                    uid,
                    ident,
                    "{}",
                    _timestamp(moment),
                )
            )
            seed.threads.append(thread_id)
            seed.thread_owner[thread_id] = uid
    return seed, user_rows, thread_rows, step_rows, feedback_rows


USER_COLUMNS = ["id", "identifier", "metadata", "createdAt"]
THREAD_COLUMNS = ["id", "createdAt", "name", "userId", "userIdentifier", "metadata", "updatedAt"]
SEED_STEP_COLUMNS = [
    "id", "name", "type", "threadId", "streaming", "metadata", "input", "output", "createdAt", "start", "end",
]  # fmt: skip
FEEDBACK_COLUMNS = ["id", "forId", "threadId", "value", "comment"]


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sqlite_path(url: str) -> str:
    database = make_url(url).database
    assert database, url
    return database


async def seed_database(url: str, prefix: str = "bench") -> Seed:
    """Bulk-load the rows (triggers off while loading; threads' updatedAt set from their steps)."""
    seed, users, threads, steps, feedbacks = build_rows(prefix, random.Random(15))
    if url.startswith("postgresql"):
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            async with connection.transaction():
                await connection.execute("SET LOCAL session_replication_role = replica")
                for table, columns, rows in (
                    ("users", USER_COLUMNS, users),
                    ("threads", THREAD_COLUMNS, threads),
                    ("steps", SEED_STEP_COLUMNS, steps),
                    ("feedbacks", FEEDBACK_COLUMNS, feedbacks),
                ):
                    await connection.copy_records_to_table(table, records=rows, columns=columns)
            await connection.execute("VACUUM ANALYZE users, threads, steps, feedbacks")
        finally:
            await connection.close()
        return seed

    def load() -> None:
        with sqlite3.connect(sqlite_path(url)) as db:
            for table, columns, rows in (
                ("users", USER_COLUMNS, users),
                ("threads", THREAD_COLUMNS, threads),
                ("steps", SEED_STEP_COLUMNS, steps),
                ("feedbacks", FEEDBACK_COLUMNS, feedbacks),
            ):
                names = ", ".join(f'"{c}"' for c in columns)
                db.executemany(
                    f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' for _ in columns)})", rows
                )
            # The steps' triggers stamped their threads with now(): put back the seeded activity.
            db.executemany('UPDATE threads SET "updatedAt" = ? WHERE id = ?', [(t[6], t[0]) for t in threads])
            db.execute("ANALYZE")

    await asyncio.to_thread(load)
    return seed


# --- /proc sampling ---


def _proc_stat(pid: int) -> tuple[int, int]:
    """(ppid, utime + stime in clock ticks) of a live process."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (uvicorn workers, if any)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError, IndexError, ValueError):
                parents[int(entry)] = _proc_stat(int(entry))[0]
    tree, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    times = {}
    for pid in pids:
        with suppress(OSError):
            times[pid] = _proc_stat(pid)[1] / CLOCK_TICKS
    return times


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two samples, by processes alive at the second (new ones in full)."""
    return sum(spent - before.get(pid, 0.0) for pid, spent in after.items())


def memory_kib(pids: list[int], key: str) -> int:
    total = 0
    for pid in pids:
        with suppress(OSError), open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def load_average() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


# --- the gateway process ---


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "gateway"
    return [str(script), "serve"] if script.exists() else [sys.executable, "-m", "gateway.cli", "serve"]


@contextmanager
def gateway_process(database_url: str, folder: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`gateway serve` on a free port, its own process; yields its base URL and process."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env |= {
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_API_KEYS": BENCH_KEY,
        "GATEWAY_JWT_SECRET": BENCH_SECRET,
        "GATEWAY_AUTO_MIGRATE": "false",
        "GATEWAY_STORAGE_URL": f"file://{folder / 'files'}",
        "GATEWAY_LOG_LEVEL": "WARNING",  # uvicorn's access log off: what is measured is the gateway
    }
    log = (folder / "gateway.log").open("wb")
    process = subprocess.Popen(
        [*gateway_command(), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited: {(folder / 'gateway.log').read_text()[-2000:]}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not answer /healthz within 60 s")
            time.sleep(0.1)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# --- the load generator (its own process) ---


@dataclass
class ClientConfig:
    graphql_url: str
    api_key: str
    jwt_secret: str | None
    database_url: str
    concurrency: int
    seed: Seed
    index: int


@dataclass
class Outcome:
    requests: int = 0
    units: int = 0
    errors: int = 0
    first_error: str = ""
    elapsed: float = 0.0
    cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)


Operation = Callable[[random.Random], Awaitable[int]]  # returns the units of work done


class KeepAliveConnections:
    """A minimal HTTP/1.1 client: one kept-alive connection per concurrent request, each request
    one `write` and the answer read by Content-Length. httpx costs ~1.3 ms of CPU a request, more
    than the gateway spends answering a small query; on a 2-core machine that CPU is taken from the
    server being measured, so the load generator must cost as little as the asyncpg baseline's."""

    def __init__(self, base_url: str, concurrency: int, headers: dict[str, str]) -> None:
        parsed = httpx.URL(base_url)
        self.host, self.port = parsed.host, parsed.port or 80
        self.path = parsed.raw_path.decode().rstrip("/") + "/graphql"
        self.size = concurrency
        self.headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.opened: list[asyncio.StreamWriter] = []

    async def post_json(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        request = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"{self.headers}{extra}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        if self.idle.empty() and len(self.opened) < self.size:
            connection = await self._open()
        else:
            connection = await self.idle.get()
            if connection[0].at_eof():
                connection = await self._reopen(connection)
        try:
            answer = await self._exchange(connection, request)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server closed a connection left idle between rounds (uvicorn's keep-alive
            # timeout) before reading the request: send it again on a new one.
            connection = await self._reopen(connection)
            answer = await self._exchange(connection, request)
        self.idle.put_nowait(connection)
        return answer

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.opened.append(writer)
        return reader, writer

    async def _reopen(
        self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        connection[1].close()
        self.opened.remove(connection[1])
        return await self._open()

    @staticmethod
    async def _exchange(
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
    ) -> tuple[int, bytes]:
        reader, writer = connection
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:  # the gateway always sends a Content-Length
            raise RuntimeError(f"no Content-Length in {head[:200]!r}")
        return int(head[9:12]), await reader.readexactly(length)

    async def close(self) -> None:
        for writer in self.opened:
            writer.close()


class Client:
    """One load-generating process: an httpx client for the gateway and a pool (asyncpg, or
    aiosqlite connections) of the same size for the baselines; they never run at the same time."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.seed = config.seed
        self.postgres = config.database_url.startswith("postgresql")
        self.http = KeepAliveConnections(
            config.graphql_url, config.concurrency, {"Authorization": f"Bearer {config.api_key}"}
        )
        self.pool: asyncpg.Pool | None = None
        self.sqlite_readers: asyncio.Queue[Any] = asyncio.Queue()
        self.sqlite_writer: Any = None
        self.sqlite_write_lock = asyncio.Lock()
        self.tokens = {
            identifier: jwt.encode(
                {"sub": identifier, "exp": int(time.time()) + 7 * 86_400}, config.jwt_secret, "HS256"
            )
            for _, identifier in self.seed.users
            if config.jwt_secret
        }
        self.owners = dict(self.seed.users)

    async def start(self) -> None:
        if self.postgres:
            self.pool = await asyncpg.create_pool(
                asyncpg_dsn(self.config.database_url),
                min_size=self.config.concurrency,
                max_size=self.config.concurrency,
            )
        else:
            import aiosqlite

            path = sqlite_path(self.config.database_url)
            for _ in range(self.config.concurrency):
                reader = await aiosqlite.connect(path)
                await reader.execute("PRAGMA journal_mode = WAL")
                await reader.create_function("gateway_bench_b64url", 1, _b64url, deterministic=True)
                self.sqlite_readers.put_nowait(reader)
            self.sqlite_writer = await aiosqlite.connect(path, isolation_level=None)
            await self.sqlite_writer.execute("PRAGMA busy_timeout = 30000")

    async def close(self) -> None:
        await self.http.close()
        if self.pool is not None:
            await self.pool.close()
        while not self.sqlite_readers.empty():
            await self.sqlite_readers.get_nowait().close()
        if self.sqlite_writer is not None:
            await self.sqlite_writer.close()

    # gateway side

    async def graphql(self, query: str, variables: dict[str, Any], token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        status, answer = await self.http.post_json(
            json.dumps({"query": query, "variables": variables}).encode(), headers
        )
        body = json.loads(answer)
        if status != 200 or body.get("errors"):
            raise RuntimeError(f"HTTP {status}: {str(body)[:300]}")
        return body["data"]

    def user(self, rng: random.Random) -> tuple[str, str]:
        return rng.choice(self.seed.users)

    def new_step(self, rng: random.Random, thread: str) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "threadId": thread,
            "type": "assistant_message",
            "name": "Assistant",
            "input": "",
            "output": "".join(rng.choices("abcdefghij klmnopqrstuvwxyz", k=TEXT_BYTES)),
            "createdAt": now_timestamp(),
        }

    def operation(self, work: str, side: str) -> Operation:
        seed = self.seed

        async def gateway(rng: random.Random) -> int:
            if work in ("a", "b"):
                await self.graphql(HISTORY if work == "a" else THREAD_LIST, {"user": self.user(rng)[0]})
            elif work == "c":
                await self.graphql(THREAD_STEPS, {"thread": rng.choice(seed.threads)})
            elif work == "d":
                await self.graphql(SEARCH, {"user": self.user(rng)[0], "term": rng.choice(seed.terms)})
            elif work == "e":
                user_id, identifier = self.user(rng)
                await self.graphql(HISTORY, {"user": user_id}, token=self.tokens[identifier])
            elif work == "f":
                await self.graphql(UPSERT_STEP, {"input": self.new_step(rng, rng.choice(seed.threads))})
            elif work == "g":
                thread = rng.choice(seed.threads)
                steps = [self.new_step(rng, thread) for _ in range(INGEST_BATCH)]
                data = await self.graphql(INGEST_STEPS, {"steps": steps})
                failed = [item for item in data["ingestSteps"] if item["error"]]
                if failed:
                    raise RuntimeError(f"ingestSteps: {failed[0]}")
                return INGEST_BATCH
            elif work == "h":
                await self.graphql(APPEND_OUTPUT, {"id": rng.choice(seed.steps), "delta": " token"})
            return 1

        async def baseline_pg(rng: random.Random) -> int:
            assert self.pool is not None
            if work in ("a", "b", "d", "e", "c"):
                if work == "c":
                    args: tuple[Any, ...] = (rng.choice(seed.threads),)
                elif work == "d":
                    args = (self.user(rng)[0], like_pattern(rng.choice(seed.terms)))
                elif work == "e":
                    args = (self.user(rng)[1],)
                else:
                    args = (self.user(rng)[0],)
                json.loads(await self.pool.fetchval(PG_SQL[work], *args))
            elif work == "f":
                step = self.new_step(rng, rng.choice(seed.threads))
                await self.pool.execute(UPSERT_SQL, *(step[c] for c in STEP_COLUMNS))
            elif work == "g":
                thread = rng.choice(seed.threads)
                rows = [
                    tuple(step[c] for c in STEP_COLUMNS)
                    for step in (self.new_step(rng, thread) for _ in range(INGEST_BATCH))
                ]
                async with self.pool.acquire() as connection, connection.transaction():
                    await connection.executemany(UPSERT_SQL, rows)
                return INGEST_BATCH
            elif work == "h":
                await self.pool.execute(APPEND_SQL, " token", rng.choice(seed.steps))
            return 1

        async def baseline_sqlite(rng: random.Random) -> int:
            if work == "a":
                reader = await self.sqlite_readers.get()
                try:
                    async with reader.execute(SQLITE_HISTORY, {"user": self.user(rng)[0]}) as cursor:
                        row = await cursor.fetchone()
                    json.loads(row[0])
                finally:
                    self.sqlite_readers.put_nowait(reader)
            elif work == "f":
                step = self.new_step(rng, rng.choice(seed.threads))
                # One writer connection, as the gateway's: each write its own transaction.
                async with self.sqlite_write_lock:
                    await self.sqlite_writer.execute("BEGIN IMMEDIATE")
                    await self.sqlite_writer.execute(SQLITE_UPSERT, tuple(step[c] for c in STEP_COLUMNS))
                    await self.sqlite_writer.execute("COMMIT")
            else:
                raise ValueError(f"no SQLite baseline for {work}")
            return 1

        if side == "gateway":
            return gateway
        return baseline_pg if self.postgres else baseline_sqlite

    async def run(
        self, work: str, side: str, seconds: float | None, requests: int | None, seed: int
    ) -> Outcome:
        operation = self.operation(work, side)
        outcome = Outcome()
        remaining = [requests if requests is not None else -1]
        deadline = 0.0

        async def worker(rng: random.Random) -> None:
            while True:
                if requests is not None:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                elif time.perf_counter() >= deadline:
                    return
                began = time.perf_counter()
                try:
                    done = await operation(rng)  # (not `+= await`: that reads units before awaiting)
                    outcome.units += done
                except Exception as error:
                    outcome.errors += 1
                    outcome.first_error = outcome.first_error or repr(error)[:400]
                outcome.latencies.append(time.perf_counter() - began)
                outcome.requests += 1

        cpu_before, began = time.process_time(), time.perf_counter()
        deadline = began + (seconds or 0.0)
        await asyncio.gather(
            *(
                worker(random.Random(f"{seed}-{self.config.index}-{n}"))
                for n in range(self.config.concurrency)
            )
        )
        outcome.elapsed = time.perf_counter() - began
        outcome.cpu = time.process_time() - cpu_before
        return outcome

    async def check(self, work: str) -> tuple[Any, Any]:
        """The gateway's answer and the baseline's for the same arguments."""
        user_id, identifier = self.seed.users[0]
        term = next(t for t in self.seed.terms[200:] if len(t) > 5)
        thread = self.seed.threads[0]
        if work == "c":
            ours = await self.graphql(THREAD_STEPS, {"thread": thread})
            args: tuple[Any, ...] = (thread,)
        elif work == "d":
            ours = await self.graphql(SEARCH, {"user": user_id, "term": term})
            args = (user_id, like_pattern(term))
        elif work == "e":
            ours = await self.graphql(HISTORY, {"user": user_id}, token=self.tokens[identifier])
            args = (identifier,)
        else:
            ours = await self.graphql(HISTORY if work == "a" else THREAD_LIST, {"user": user_id})
            args = (user_id,)
        if self.pool is not None:
            theirs = json.loads(await self.pool.fetchval(PG_SQL[work], *args))
        else:
            reader = await self.sqlite_readers.get()
            try:
                async with reader.execute(SQLITE_HISTORY, {"user": user_id}) as cursor:
                    row = await cursor.fetchone()
            finally:
                self.sqlite_readers.put_nowait(reader)
            theirs = json.loads(row[0])
        return ours, theirs


def client_main(config: ClientConfig, pipe: multiprocessing.connection.Connection) -> None:
    async def serve() -> None:
        client = Client(config)
        await client.start()
        pipe.send("ready")
        try:
            while True:
                command = pipe.recv()  # blocks between rounds: nothing else runs here then
                if command is None:
                    return
                try:
                    if command["kind"] == "check":
                        pipe.send(await client.check(command["work"]))
                    else:
                        pipe.send(
                            await client.run(
                                command["work"],
                                command["side"],
                                command["seconds"],
                                command["requests"],
                                command["seed"],
                            )
                        )
                except Exception as error:
                    pipe.send(error)
        finally:
            await client.close()

    # uvloop for both sides alike (asyncpg's baseline and the HTTP client), as the gateway runs.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


class Clients:
    """The client processes, commanded together; results summed."""

    def __init__(self, configs: list[ClientConfig]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes = []
        for config in configs:
            ours, theirs = context.Pipe()
            process = context.Process(target=client_main, args=(config, theirs), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    async def _receive(self, pipe: multiprocessing.connection.Connection) -> Any:
        answer = await asyncio.to_thread(pipe.recv)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def ready(self) -> None:
        await asyncio.gather(*(self._receive(pipe) for pipe in self.pipes))

    async def check(self, work: str) -> tuple[Any, Any]:
        self.pipes[0].send({"kind": "check", "work": work})
        answer: tuple[Any, Any] = await self._receive(self.pipes[0])
        return answer

    async def run(
        self, work: str, side: str, seconds: float | None, requests: int | None, seed: int
    ) -> Outcome:
        for index, pipe in enumerate(self.pipes):
            share = (
                None
                if requests is None
                else requests // len(self.pipes) + (index < requests % len(self.pipes))
            )
            pipe.send(
                {
                    "kind": "run",
                    "work": work,
                    "side": side,
                    "seconds": seconds,
                    "requests": share,
                    "seed": seed,
                }
            )
        outcomes: list[Outcome] = await asyncio.gather(*(self._receive(pipe) for pipe in self.pipes))
        total = Outcome()
        for outcome in outcomes:
            total.requests += outcome.requests
            total.units += outcome.units
            total.errors += outcome.errors
            total.first_error = total.first_error or outcome.first_error
            total.elapsed = max(total.elapsed, outcome.elapsed)
            total.cpu += outcome.cpu
            total.latencies += outcome.latencies
        return total

    def close(self) -> None:
        for pipe in self.pipes:
            with suppress(OSError):
                pipe.send(None)
        for process in self.processes:
            process.join(15)
            if process.is_alive():
                process.terminate()


# --- measuring ---


@dataclass
class Usage:
    server_cpu: float | None  # the gateway's processes, seconds
    postgres_cpu: float | None  # the bench database's backends, seconds
    sessions: int | None  # PostgreSQL sessions opened


@dataclass
class Round:
    outcome: Outcome
    server_cpu: float | None
    postgres_cpu: float | None
    sessions: int | None = None

    @property
    def rate(self) -> float:
        return self.outcome.units / self.outcome.elapsed if self.outcome.elapsed else 0.0


class Monitor:
    """Samples the gateway's processes and the PostgreSQL backends serving the bench database."""

    def __init__(self, gateway_pid: int | None, database_url: str) -> None:
        self.gateway_pid = gateway_pid
        self.database_url = database_url
        self.connection: asyncpg.Connection | None = None
        self.database = make_url(database_url).database

    async def start(self) -> None:
        if self.database_url.startswith("postgresql"):
            self.connection = await asyncpg.connect(asyncpg_dsn(self.database_url))

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    def gateway_pids(self) -> list[int]:
        return process_tree(self.gateway_pid) if self.gateway_pid else []

    async def backend_pids(self) -> list[int]:
        if self.connection is None:
            return []
        rows = await self.connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.database
        )
        return [row["pid"] for row in rows]

    async def sessions(self) -> int:
        """Sessions ever opened on the bench database (PostgreSQL's statistics, flushed within ~1 s)."""
        if self.connection is None:
            return 0
        value = await self.connection.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = $1", self.database
        )
        return int(value or 0)

    async def track(self, work: Awaitable[T]) -> tuple[T, Usage]:
        """Runs `work`, sampling the gateway's CPU before and after, and the database's backends
        every 0.2 s meanwhile: a pool may close connections during the round, and a backend's CPU
        is last seen alive (at most 0.2 s of it is missed)."""
        server_before = cpu_seconds(self.gateway_pids())
        backends_before = cpu_seconds(await self.backend_pids())
        sessions_before = await self.sessions()
        seen = dict(backends_before)
        running = asyncio.ensure_future(work)
        while not running.done():
            await asyncio.wait([running], timeout=0.2)
            seen |= cpu_seconds(await self.backend_pids())
        result = running.result()
        server_after = cpu_seconds(self.gateway_pids())
        await asyncio.sleep(1.0 if self.connection is not None else 0)  # statistics flush
        usage = Usage(
            cpu_delta(server_before, server_after) if self.gateway_pid else None,
            cpu_delta(backends_before, seen) if self.connection is not None else None,
            await self.sessions() - sessions_before if self.connection is not None else None,
        )
        return result, usage

    def rss_mib(self, key: str = "VmRSS") -> float:
        return memory_kib(self.gateway_pids(), key) / 1024

    async def measure(
        self, clients: Clients, work: str, side: str, args: argparse.Namespace, seed: int
    ) -> Round:
        outcome, usage = await self.track(clients.run(work, side, args.seconds, args.requests, seed))
        return Round(outcome, usage.server_cpu, usage.postgres_cpu, usage.sessions)


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__ if value is not None else None


def _ids(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["id"]] if "id" in value else []
        return own + [i for key, v in value.items() if key != "id" for i in _ids(v)]
    if isinstance(value, list):
        return [i for item in value for i in _ids(item)]
    return []


def compare(ours: Any, theirs: Any) -> str:
    if ours == theirs:
        return f"identical JSON ({len(_ids(ours))} ids)"
    same_ids = _ids(ours) == _ids(theirs)
    # Shapes compared on dict keys only: a None in one answer may be a string in the other.
    same_keys = json.dumps(_keys(ours), sort_keys=True) == json.dumps(_keys(theirs), sort_keys=True)
    return f"DIFFERENT: same ids {same_ids}, same shape {same_keys} ({len(_ids(ours))} ids)"


def _keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_keys(item) for item in value]
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


@dataclass
class Result:
    work: str
    gateway: list[Round]
    baseline: list[Round]

    def row(self) -> list[str]:
        unit = "steps/s" if self.work == "g" else "req/s"
        gateway_rate = _median([r.rate for r in self.gateway])
        baseline_rate = _median([r.rate for r in self.baseline])
        ratios = [g.rate / b.rate for g, b in zip(self.gateway, self.baseline, strict=False) if b.rate]
        requests = sum(r.outcome.requests for r in self.gateway)
        server_cpu = [r.server_cpu for r in self.gateway if r.server_cpu is not None]
        per_request = sum(server_cpu) / requests if server_cpu and requests else None
        pg = _pg_per_request(self.gateway), _pg_per_request(self.baseline)
        client = _client_per_request(self.gateway), _client_per_request(self.baseline)
        busy = sum(r.outcome.cpu for r in self.gateway) / sum(r.outcome.elapsed for r in self.gateway)
        latencies = [x for r in self.gateway for x in r.outcome.latencies]
        errors = sum(r.outcome.errors for r in self.gateway + self.baseline)
        return [
            f"{self.work}. {WORKLOADS[self.work]}",
            f"{gateway_rate:,.0f} {unit}" if gateway_rate else "-",
            f"{baseline_rate:,.0f} {unit}" if baseline_rate else "-",
            f"{statistics.median(ratios):.2f}" if ratios else "-",
            " / ".join(f"{ratio:.2f}" for ratio in ratios) or "-",
            _ms(per_request),
            f"{_ms(pg[0])} / {_ms(pg[1])}",
            f"{_ms(client[0])} / {_ms(client[1])} ({busy:.0%})",
            f"{_percentile(latencies, 0.5) * 1000:.0f} / {_percentile(latencies, 0.99) * 1000:.0f}",
            f"{_sessions(self.gateway)} / {_sessions(self.baseline)}",
            str(errors),
        ]


def _pg_per_request(rounds: list[Round]) -> float | None:
    spent = [r.postgres_cpu for r in rounds if r.postgres_cpu is not None]
    requests = sum(r.outcome.requests for r in rounds)
    return sum(spent) / requests if spent and requests else None


def _sessions(rounds: list[Round]) -> str:
    opened = [r.sessions for r in rounds if r.sessions is not None]
    return str(sum(opened)) if opened else "-"


def _client_per_request(rounds: list[Round]) -> float | None:
    requests = sum(r.outcome.requests for r in rounds)
    return sum(r.outcome.cpu for r in rounds) / requests if requests else None


HEADER = [
    "work",
    "gateway",
    "baseline",
    "ratio gw/base (median)",
    "ratio per round",
    "gateway CPU ms/req",
    "PostgreSQL CPU ms/req gw / base",
    "client CPU ms/req gw / base (client busy, gw)",
    "gw latency ms p50 / p99",
    "PG sessions opened gw / base",
    "errors",
]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# --- main ---


@asynccontextmanager
async def target(args: argparse.Namespace) -> AsyncIterator[tuple[str, str, int | None, Seed]]:
    """(database URL, gateway base URL, gateway pid, seed): a scratch database and a started
    gateway, or the running gateway and database the options name."""
    if args.gateway_url:
        if not args.database_url:
            raise SystemExit("--gateway-url needs --database-url (the database that gateway serves)")
        print(f"# seeding {args.database_url.split('@')[-1]} (rows are kept)", flush=True)
        seed = await seed_database(args.database_url, prefix=f"bench-{uuid.uuid4().hex[:6]}")
        yield args.database_url, args.gateway_url.removesuffix("/graphql"), args.gateway_pid, seed
        return
    async with scratch_database(args.backend) as url:
        began = time.perf_counter()
        await upgrade_database(url)
        seed = await seed_database(url)
        print(
            f"# migrated and seeded {USERS} users x {THREADS_PER_USER} threads x {STEPS_PER_THREAD} steps"
            f" in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        with (
            tempfile.TemporaryDirectory(prefix="gateway-bench-") as folder,
            gateway_process(url, Path(folder)) as (base, process),
        ):
            yield url, base, process.pid, seed


async def soak(clients: Clients, monitor: Monitor, args: argparse.Namespace) -> None:
    print(f"# soak: mixed workload {'+'.join(SOAK_MIX)} for {args.soak} min, RSS every 30 s", flush=True)
    samples: list[tuple[float, float, int]] = []
    began = time.monotonic()
    rng = random.Random(15)
    chunk = 0
    while time.monotonic() - began < args.soak * 60:
        requests = 0
        slice_end = time.monotonic() + 30
        while time.monotonic() < slice_end:
            outcome = await clients.run(rng.choice(SOAK_MIX), "gateway", 3.0, None, chunk)
            requests += outcome.requests
            chunk += 1
        samples.append((time.monotonic() - began, monitor.rss_mib(), requests))
        print(f"  {samples[-1][0]:6.0f} s  RSS {samples[-1][1]:7.1f} MiB  ({requests} requests)", flush=True)
    if len(samples) >= 2:
        warm, last = samples[0][1], samples[-1][1]
        print(
            f"RSS after warm-up {warm:.1f} MiB, at the end {last:.1f} MiB: growth {(last - warm) / warm:+.1%}"
        )
    print(f"peak (VmHWM) {monitor.rss_mib('VmHWM'):.1f} MiB")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(WORKLOADS), help="workloads, e.g. a,b,f (default all)")
    parser.add_argument("--rounds", type=int, default=3, help="gateway rounds (and as many baseline rounds)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--seconds", type=float, help="length of a round (default 5)")
    amount.add_argument("--requests", type=int, help="requests in a round, instead of --seconds")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--clients", type=int, default=1, help="load-generating processes (default 1)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of each side before its rounds")
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--gateway-url", help="bench this running gateway instead of starting one")
    parser.add_argument("--database-url", help="with --gateway-url: the database it serves (gets seeded)")
    parser.add_argument("--api-key", default=BENCH_KEY, help="with --gateway-url: a backend key")
    parser.add_argument("--jwt-secret", help="with --gateway-url: its GATEWAY_JWT_SECRET (else e is skipped)")
    parser.add_argument("--gateway-pid", type=int, help="with --gateway-url: its pid, for CPU and memory")
    parser.add_argument("--soak", type=float, metavar="MINUTES", help="only the memory check, this long")
    args = parser.parse_args()
    if args.seconds is None and args.requests is None:
        args.seconds = 5.0
    works = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in works if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; choose from {','.join(WORKLOADS)}")
    secret = BENCH_SECRET if not args.gateway_url else args.jwt_secret
    if not secret and "e" in works:
        print("# no --jwt-secret: workload e skipped")
        works.remove("e")
    sqlite = (args.database_url or "").startswith("sqlite") if args.gateway_url else args.backend == "sqlite"

    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print(f"# {command}\n# {os.cpu_count()} CPUs, load average {load_average()} at start", flush=True)
    async with target(args) as (database_url, base, gateway_pid, seed):
        monitor = Monitor(gateway_pid, database_url)
        await monitor.start()
        shares = [
            args.concurrency // args.clients + (i < args.concurrency % args.clients)
            for i in range(args.clients)
        ]
        clients = Clients(
            [
                ClientConfig(base, args.api_key, secret, database_url, share, seed, index)
                for index, share in enumerate(shares)
            ]
        )
        try:
            await clients.ready()
            rss_start = monitor.rss_mib()
            if args.soak:
                await soak(clients, monitor, args)
                return
            has_baseline = {w: not sqlite or w in SQLITE_BASELINES for w in works}
            for work in works:
                if work in "abcde" and has_baseline[work]:
                    ours, theirs = await clients.check(work)
                    print(f"# check {work}: baseline vs gateway: {compare(ours, theirs)}", flush=True)
            for work in works:  # warm-up: every code path and pool connection used once, not measured
                for side in ("gateway", "baseline") if has_baseline[work] else ("gateway",):
                    await clients.run(work, side, args.warmup, None, -1)
            rss_warm = monitor.rss_mib()
            results = []
            for work in works:
                result = Result(work, [], [])
                for number in range(args.rounds):
                    result.gateway.append(await monitor.measure(clients, work, "gateway", args, number))
                    if has_baseline[work]:
                        result.baseline.append(await monitor.measure(clients, work, "baseline", args, number))
                first_error = next(
                    (
                        r.outcome.first_error
                        for r in result.gateway + result.baseline
                        if r.outcome.first_error
                    ),
                    "",
                )
                if first_error:
                    print(f"# {work}: first error: {first_error}", flush=True)
                print(f"# {work} done, load average {load_average()}", flush=True)
                results.append(result)
            amount_text = f"{args.seconds:g} s" if args.seconds else f"{args.requests} requests"
            print(
                f"\n{args.backend if not args.gateway_url else 'running gateway'}: {len(works)} workloads, "
                f"{args.rounds} interleaved rounds of {amount_text} each side, "
                f"concurrency {args.concurrency} "
                f"over {args.clients} client process(es)\n"
            )
            print(markdown(HEADER, [result.row() for result in results]))
            print(
                f"\ngateway RSS: {rss_start:.1f} MiB at start, {rss_warm:.1f} MiB after warm-up, "
                f"peak (VmHWM) {monitor.rss_mib('VmHWM'):.1f} MiB"
            )
            if sqlite:
                print("SQLite baselines (aiosqlite, one writer connection): a and f only; others '-'.")
            print(f"load average at the end {load_average()}\ncommand: {command}")
        finally:
            clients.close()
            await monitor.close()


if __name__ == "__main__":
    asyncio.run(main())
