"""Benchmark: how long `gateway migrate` takes on a large existing Chainlit database.

Builds a database with Chainlit's schema (revision 0001, the schema Chainlit's DDL creates), fills
it with threads, steps, elements and feedback (some steps rated twice, as Chainlit allowed), then
times the upgrade to the newest revision and prints rows per second. Run by hand:

    .venv/bin/python bench/migration.py [--backend sqlite|postgresql] [--threads 4000] [--steps 50]
"""

import argparse
import asyncio
import random
import time
import uuid

import sqlalchemy as sa
from alembic import command
from scratch import scratch_database
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.migrate import _config, upgrade_database


def _ts(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{random.randrange(10**6):06d}Z"


async def build_chainlit_database(url: str, threads: int, steps_per_thread: int) -> int:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(lambda sync: command.upgrade(_config(sync), "0001"))
        await connection.commit()
    on_postgres = url.startswith("postgresql")
    rng = random.Random(3)
    user_id = str(uuid.uuid4())
    rows = 0
    async with engine.begin() as connection:
        meta = "{}"
        await connection.execute(
            sa.text(
                "INSERT INTO users (id, identifier, metadata) VALUES (:id, 'bench', "
                + ("CAST(:m AS JSONB))" if on_postgres else ":m)")
            ),
            {"id": user_id, "m": meta},
        )
        for start in range(0, threads, 500):
            thread_rows, step_rows, feedback_rows = [], [], []
            for index in range(start, min(start + 500, threads)):
                thread_id = str(uuid.uuid4())
                created = 1_700_000_000 + index * 60
                thread_rows.append({"id": thread_id, "c": _ts(created), "u": user_id})
                for turn in range(steps_per_thread):
                    step_id = str(uuid.uuid4())
                    step_rows.append({"id": step_id, "t": thread_id, "c": _ts(created + turn)})
                    if rng.random() < 0.1:
                        for _ in range(rng.choice((1, 1, 2))):
                            feedback_rows.append({"id": str(uuid.uuid4()), "f": step_id, "t": thread_id})
            await connection.execute(
                sa.text('INSERT INTO threads (id, "createdAt", "userId", name) VALUES (:id, :c, :u, \'t\')'),
                thread_rows,
            )
            await connection.execute(
                sa.text(
                    'INSERT INTO steps (id, "threadId", "createdAt", name, type, streaming, output) '
                    "VALUES (:id, :t, :c, 'a', 'assistant_message', false, 'some output text')"
                ),
                step_rows,
            )
            await connection.execute(
                sa.text('INSERT INTO feedbacks (id, "forId", "threadId", value) VALUES (:id, :f, :t, 1)'),
                feedback_rows,
            )
            rows += len(thread_rows) + len(step_rows) + len(feedback_rows)
    await engine.dispose()
    return rows


async def run(backend: str, threads: int, steps: int) -> None:
    async with scratch_database(backend) as url:
        rows = await build_chainlit_database(url, threads, steps)
        began = time.perf_counter()
        await upgrade_database(url)
        elapsed = time.perf_counter() - began
    print(
        f"{backend}: migrated {rows} rows ({threads} threads x {steps} steps) in {elapsed:.1f} s"
        f" ({rows / elapsed:,.0f} rows/s)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    parser.add_argument("--threads", type=int, default=4_000)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    for backend in args.backend or ["sqlite", "postgresql"]:
        await run(backend, args.threads, args.steps)


if __name__ == "__main__":
    asyncio.run(main())
