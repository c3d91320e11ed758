"""Benchmark: the history query's cost does not grow with the size of the database.

Seeds a small and a large database (threads of one user among many users, each thread with its
steps and some feedback), then times the frontend's history query (a user's 20 newest threads,
each with its last 10 steps and their feedback) and a search, with a backend's API key, and the
history query again with the user's own token (whose authorization conditions ride in the same
statements). Prints the ratio large/small and the SQL statements each request ran. Run by hand:

    .venv/bin/python bench/history_query.py [--backend sqlite|postgresql] [--small 1000] [--large 10000]

PostgreSQL is reached at GATEWAY_TEST_POSTGRES_URL (default postgres on 127.0.0.1:5432); the
benchmark creates its databases and drops them.
"""

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import httpx
import jwt
import sqlalchemy as sa
from scratch import scratch_database
from sqlalchemy import event

from gateway.app import create_app
from gateway.config import Settings
from gateway.database import Database
from gateway.ids import new_id
from gateway.migrate import upgrade_database
from gateway.tables import feedbacks_table, steps_table, threads_table, users_table

STEPS_PER_THREAD = 20
BENCH_KEY = "gw_bench-key"
BENCH_SECRET = "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz"
HISTORY = """
query($user: ID!) {
  threads(first: 20, filter: {userId: $user}) {
    edges { node { id name steps(last: 10) { edges { node { id output feedback { value } } } } } }
  }
}"""
SEARCH = """
query($user: ID!, $term: String!) {
  threads(first: 20, filter: {userId: $user, search: $term}) { edges { node { id } } }
}"""


def _timestamp(seconds: float) -> str:
    moment = time.gmtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{int(seconds * 1000) % 1000:03d}Z"


async def seed(db: Database, threads: int) -> tuple[str, str]:
    """`threads` threads over 100 users; returns the id and identifier of the user whose history
    is read."""
    rng = random.Random(7)
    users = [
        {"id": new_id(), "identifier": f"user{index}@example.com", "metadata": {}} for index in range(100)
    ]
    start = 1_700_000_000.0
    thread_rows, step_rows, feedback_rows = [], [], []
    for index in range(threads):
        thread_id = new_id()
        created = start + index * 60
        # The reader owns 40 threads at any size, spread over time: both runs return the same page
        # shape (20 threads, 10 steps each), so only the database's size differs.
        owner = users[0] if index % (threads // 40) == 0 else users[1 + index % (len(users) - 1)]
        last = created + STEPS_PER_THREAD * 2
        thread_rows.append(
            {
                "id": thread_id,
                "createdAt": _timestamp(created),
                "updatedAt": _timestamp(last),
                "name": f"conversation {index}",
                "userId": owner["id"],
                "userIdentifier": owner["identifier"],
                "metadata": {},
                "tags": [],
            }
        )
        for turn in range(STEPS_PER_THREAD):
            step_id = new_id()
            step_rows.append(
                {
                    "id": step_id,
                    "threadId": thread_id,
                    "name": "assistant",
                    "type": "assistant_message",
                    "streaming": False,
                    "createdAt": _timestamp(created + turn * 2),
                    "output": f"answer {turn} about topic {rng.randrange(10_000)}",
                    "metadata": {},
                }
            )
            if rng.random() < 0.1:
                feedback_rows.append(
                    {"id": new_id(), "forId": step_id, "threadId": thread_id, "value": rng.randrange(2)}
                )
    async with db.transaction() as session:
        await session.execute(sa.insert(users_table), users)
        for table, rows in (
            (threads_table, thread_rows),
            (steps_table, step_rows),
            (feedbacks_table, feedback_rows),
        ):
            for offset in range(0, len(rows), 5000):
                await session.execute(sa.insert(table), rows[offset : offset + 5000])
    if db.dialect_name == "postgresql":
        # As autovacuum would after a bulk load; ANALYZE inside a rolled-back transaction keeps nothing.
        async with db.engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(sa.text("ANALYZE"))
    return str(users[0]["id"]), str(users[0]["identifier"])


async def measure(url: str, threads: int, repeats: int) -> dict[str, Any]:
    await upgrade_database(url)
    settings = Settings(database_url=url, auto_migrate=False, api_keys=BENCH_KEY, jwt_secret=BENCH_SECRET)
    app = create_app(settings)
    db: Database = app.state.db
    statements: list[str] = []
    for engine in db.engines:
        event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        user_id, identifier = await seed(db, threads)
        token = jwt.encode({"sub": identifier, "exp": int(time.time()) + 3600}, BENCH_SECRET, "HS256")
        results: dict[str, Any] = {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
            for name, query, variables, credential in (
                ("history", HISTORY, {"user": user_id}, BENCH_KEY),
                ("search", SEARCH, {"user": user_id, "term": "TOPIC 42"}, BENCH_KEY),
                ("as user", HISTORY, {"user": user_id}, token),
            ):
                timings = []
                for _ in range(repeats):
                    statements.clear()
                    began = time.perf_counter()
                    response = await http.post(
                        "/graphql",
                        json={"query": query, "variables": variables},
                        headers={"Authorization": f"Bearer {credential}"},
                    )
                    timings.append(time.perf_counter() - began)
                    assert not response.json().get("errors"), response.text
                counted = [
                    s
                    for s in statements
                    if s.split(None, 1)[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK")
                ]
                results[name] = (statistics.median(timings), len(counted))
        if db.dialect_name == "postgresql":
            async with db.engine.connect() as connection:
                plan = (
                    (
                        await connection.execute(
                            sa.text(
                                'EXPLAIN SELECT * FROM threads WHERE "userId" = :u '
                                'ORDER BY "updatedAt" DESC, id DESC LIMIT 21'
                            ),
                            {"u": user_id},
                        )
                    )
                    .scalars()
                    .all()
                )
            results["plan"] = plan[1].strip() if len(plan) > 1 else plan[0]
        return results
    finally:
        await db.dispose()


async def with_database(backend: str, threads: int, repeats: int) -> dict[str, Any]:
    async with scratch_database(backend) as url:
        return await measure(url, threads, repeats)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    parser.add_argument("--small", type=int, default=1_000, help="threads in the small database")
    parser.add_argument("--large", type=int, default=10_000, help="threads in the large database")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    for backend in args.backend or ["sqlite", "postgresql"]:
        small = await with_database(backend, args.small, args.repeats)
        large = await with_database(backend, args.large, args.repeats)
        print(f"{backend}: {args.small} vs {args.large} threads ({STEPS_PER_THREAD} steps each)")
        for name in ("history", "search", "as user"):
            (small_time, small_sql), (large_time, large_sql) = small[name], large[name]
            print(
                f"  {name:8} median {small_time * 1000:7.1f} ms -> {large_time * 1000:7.1f} ms"
                f"  ratio {large_time / small_time:5.2f}  SQL statements {small_sql} -> {large_sql}"
            )
        print(f"  history as the user / with a key: {large['as user'][0] / large['history'][0]:5.2f}")
        if "plan" in large:
            print(f"  thread list plan: {large['plan']}")


if __name__ == "__main__":
    asyncio.run(main())
