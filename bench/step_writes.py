"""Benchmark: step writes through the in-process app (no network) against raw asyncpg.

Times `upsertStep` of a new step into an existing thread, `appendStepOutput` and `ingestSteps` of
100 new steps, as a backend (API key) and as a user (JWT), with `--concurrency` requests in flight;
and, on PostgreSQL, asyncpg running the same rows' `INSERT ... ON CONFLICT`, `executemany` and
`UPDATE ... ||` on the same server, for the ratio. Prints per operation the wall time, this
process's CPU time and the SQL statements each ran (transaction control excluded). Run by hand:

    .venv/bin/python bench/step_writes.py [--backend sqlite|postgresql] [--count 2000] [--concurrency 16]
"""

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import jwt
from scratch import scratch_database
from sqlalchemy import event
from sqlalchemy.engine import make_url

from gateway.app import create_app
from gateway.config import Settings
from gateway.migrate import upgrade_database

SECRET = "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz"
KEY = "gw_bench-key-0123456789abcdefghijklmnop"
UPSERT = "mutation($i: StepInput!) { upsertStep(input: $i) { id output } }"
APPEND = "mutation($id: ID!, $d: String!) { appendStepOutput(id: $id, delta: $d) { id } }"
INGEST = "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { index error { code } } }"
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
BATCH = 100


def new_step(thread_id: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "threadId": thread_id, "name": "user", "type": "user_message"}


async def timed(
    name: str, count: int, concurrency: int, items: int, run: Callable[[], Awaitable[None]], log: list[str]
) -> float:
    """Runs `run` `count` times, `concurrency` at once; prints and returns steps per second."""
    for _ in range(10):  # warm the caches
        await run()
    log.clear()
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            await run()

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rate = items * count / wall
    print(
        f"{name:34s} {wall / count * 1000:7.2f} ms wall/op {cpu / count * 1000:7.2f} ms CPU/op "
        f"{rate:8.0f} steps/s {len(log) / count:6.1f} statements/op"
    )
    return rate


async def gateway_runs(url: str, count: int, concurrency: int) -> dict[str, float]:
    settings = Settings(database_url=url, auto_migrate=False, api_keys=KEY, jwt_secret=SECRET)
    app = create_app(settings)
    log: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() not in TRANSACTION_CONTROL:
            log.append(statement)

    now = int(time.time())
    token = jwt.encode({"sub": "bench@example.com", "iat": now, "exp": now + 3600}, SECRET, "HS256")
    callers = {"backend": {"X-API-Key": KEY}, "user": {"Authorization": f"Bearer {token}"}}
    rates: dict[str, float] = {}
    async with app.router.lifespan_context(app):
        for engine in app.state.db.engines:
            event.listen(engine.sync_engine, "before_cursor_execute", record)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            for who, headers in callers.items():

                async def post(query: str, headers: dict[str, str] = headers, **variables: Any) -> None:
                    body = {"query": query, "variables": variables}
                    reply = (await http.post("/graphql", json=body, headers=headers)).json()
                    assert not reply.get("errors"), reply

                thread_id = str(uuid.uuid4())
                step = new_step(thread_id)
                await post(UPSERT, i=step)

                async def upsert(thread_id: str = thread_id, post: Any = post) -> None:
                    await post(UPSERT, i={**new_step(thread_id), "output": "hello", "metadata": {"k": 1}})

                async def append(step_id: str = step["id"], post: Any = post) -> None:
                    await post(APPEND, id=step_id, d="token ")

                async def ingest(thread_id: str = thread_id, post: Any = post) -> None:
                    await post(INGEST, s=[{**new_step(thread_id), "output": "x"} for _ in range(BATCH)])

                rates[f"{who} upsert"] = await timed(f"{who} upsertStep", count, concurrency, 1, upsert, log)
                rates[f"{who} append"] = await timed(
                    f"{who} appendStepOutput", count, concurrency, 1, append, log
                )
                batches = max(count // 20, concurrency)
                rates[f"{who} ingest"] = await timed(
                    f"{who} ingestSteps x{BATCH}", batches, concurrency, BATCH, ingest, log
                )
    return rates


async def asyncpg_runs(url: str, count: int, concurrency: int) -> dict[str, float]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    thread_id = str(uuid.uuid4())
    columns = '(id, "threadId", name, type, streaming, output, metadata, "createdAt")'
    insert = (
        f"INSERT INTO steps {columns} VALUES ($1, $2, $3, $4, false, $5, $6::jsonb, $7) "
        "ON CONFLICT (id) DO UPDATE SET output = excluded.output RETURNING *"
    )
    append_sql = "UPDATE steps SET output = coalesce(output, '') || $1 WHERE id = $2 RETURNING *"
    now = "2026-01-01T00:00:00.000Z"
    step_id = str(uuid.uuid4())
    async with pool.acquire() as connection:
        await connection.execute(
            'INSERT INTO threads (id, "createdAt", "updatedAt") VALUES ($1, $2, $2)', thread_id, now
        )
        await connection.execute(insert, step_id, thread_id, "a", "run", "", '{"k": 1}', now)

    def row() -> tuple[Any, ...]:
        return (str(uuid.uuid4()), thread_id, "user", "user_message", "hello", '{"k": 1}', now)

    async def upsert() -> None:
        async with pool.acquire() as connection:
            await connection.fetchrow(insert, *row())

    async def append() -> None:
        async with pool.acquire() as connection:
            await connection.fetchrow(append_sql, "token ", step_id)

    async def ingest() -> None:
        async with pool.acquire() as connection, connection.transaction():
            await connection.executemany(insert, [row() for _ in range(BATCH)])

    rates = {}
    no_log: list[str] = []
    rates["upsert"] = await timed("asyncpg INSERT .. ON CONFLICT", count, concurrency, 1, upsert, no_log)
    rates["append"] = await timed("asyncpg UPDATE output ||", count, concurrency, 1, append, no_log)
    batches = max(count // 20, concurrency)
    rates["ingest"] = await timed(
        f"asyncpg executemany x{BATCH}", batches, concurrency, BATCH, ingest, no_log
    )
    await pool.close()
    return rates


async def main(backend: str, count: int, concurrency: int) -> None:
    async with scratch_database(backend) as url:
        await upgrade_database(url)
        rates = await gateway_runs(url, count, concurrency)
        if backend != "postgresql":
            return
        baseline = await asyncpg_runs(url, count, concurrency)
        for name, rate in rates.items():
            print(f"{name:20s} {rate / baseline[name.split()[1]]:5.2f}x asyncpg")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.backend, arguments.count, arguments.concurrency))
