"""Benchmark: Chainlit's own SQLAlchemyDataLayer against the gateway's GatewayDataLayer.

Both run in this process on the same PostgreSQL database and seed as bench/throughput.py (10 users
x 100 threads x 20 steps, about 800 bytes of text a step, some feedback; the gateway's migrations
make Chainlit's tables column for column): Chainlit's layer (from the installed chainlit package)
with its SQL on the database, the gateway's layer over HTTP to a real `gateway serve` process.
Each method is called 16 at a time (`--concurrency`), in interleaved rounds (gateway, Chainlit,
gateway, ...), outside a websocket session (an HTTP context: Chainlit's decorators then run writes
at once instead of queueing them until the user's first message). Chainlit's layer logs and
swallows SQL errors, so the writes are counted in the database afterwards.

Methods: get_thread (a thread of 20 steps), list_threads (a user's first 20 of 100 threads),
create_step (a new step in an existing thread), update_step (a seeded step's output rewritten),
upsert_feedback (a new feedback on a step that had none). Prints the rates, the ratio
gateway/Chainlit per method, the gateway process's CPU per call, this process's CPU per call (the
layer's own work: Chainlit's SQLAlchemy, or the gateway client's HTTP) and PostgreSQL's. Run by
hand, never in CI:

    .venv/bin/python bench/chainlit_layers.py [--only get_thread,list_threads] [--rounds 3]
        [--seconds 4] [--concurrency 16]
"""

import os
import tempfile

# Importing chainlit writes `.chainlit/config.toml` and `.files/` under the app root: a scratch one.
os.environ.setdefault("CHAINLIT_APP_ROOT", tempfile.mkdtemp(prefix="chainlit-bench-"))

import argparse
import asyncio
import logging
import random
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from chainlit.context import init_http_context
from chainlit.data.base import BaseDataLayer
from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.types import Feedback, Pagination, ThreadFilter
from scratch import scratch_database
from throughput import (
    BENCH_KEY,
    STEPS_PER_THREAD,
    TEXT_BYTES,
    THREADS_PER_USER,
    USERS,
    Monitor,
    Seed,
    asyncpg_dsn,
    gateway_process,
    load_average,
    markdown,
    now_timestamp,
    seed_database,
)

from gateway.chainlit import GatewayDataLayer
from gateway.migrate import upgrade_database

METHODS = ("get_thread", "list_threads", "create_step", "update_step", "upsert_feedback")
LAYERS = ("gateway", "chainlit")


@dataclass
class Tally:
    calls: int = 0
    errors: int = 0
    first_error: str = ""
    elapsed: float = 0.0
    client_cpu: float = 0.0
    gateway_cpu: float | None = None
    postgres_cpu: float | None = None
    sessions: int = 0

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0


@dataclass
class Writes:
    """What each layer wrote, to check in the database afterwards."""

    created: list[str] = field(default_factory=list)
    updated: dict[str, str] = field(default_factory=dict)  # step id -> the output written
    rated: list[str] = field(default_factory=list)
    feedback_ids: dict[str, str] = field(default_factory=dict)  # step -> its feedback's id


class Bench:
    def __init__(self, seed: Seed, layers: dict[str, BaseDataLayer]) -> None:
        self.seed = seed
        self.layers = layers
        self.writes = {name: Writes() for name in LAYERS}
        rng = random.Random(15)
        # Steps to rewrite and steps to rate, disjoint per layer, each used once.
        steps = list(seed.steps)
        rng.shuffle(steps)
        unrated = [step for step in steps if step not in seed.rated]
        half = len(unrated) // 2
        self.to_update = {"gateway": steps[: len(steps) // 2], "chainlit": steps[len(steps) // 2 :]}
        self.to_rate = {"gateway": unrated[:half], "chainlit": unrated[half:]}

    def step_dict(self, rng: random.Random, step_id: str, thread_id: str, output: str) -> Any:
        moment = now_timestamp()
        return {
            "id": step_id,
            "threadId": thread_id,
            "parentId": None,
            "name": "Assistant",
            "type": "assistant_message",
            "streaming": False,
            "waitForAnswer": False,
            "isError": False,
            "metadata": {},
            "tags": None,
            "input": "",
            "output": output,
            "createdAt": moment,
            "start": moment,
            "end": moment,
            "showInput": None,
            "language": None,
        }

    def call(self, method: str, layer_name: str) -> Callable[[random.Random], Awaitable[None]]:
        layer, seed, writes = self.layers[layer_name], self.seed, self.writes[layer_name]

        async def get_thread(rng: random.Random) -> None:
            thread = await layer.get_thread(rng.choice(seed.threads))
            assert thread is not None and len(thread["steps"]) >= STEPS_PER_THREAD, "thread incomplete"

        async def list_threads(rng: random.Random) -> None:
            user_id = rng.choice(seed.users)[0]
            page = await layer.list_threads(Pagination(first=20), ThreadFilter(userId=user_id))
            assert len(page.data) == 20, f"{len(page.data)} threads listed"

        async def create_step(rng: random.Random) -> None:
            step_id = str(uuid.uuid4())
            output = f"created by {layer_name} " + "x" * TEXT_BYTES
            await layer.create_step(self.step_dict(rng, step_id, rng.choice(seed.threads), output))
            writes.created.append(step_id)

        async def update_step(rng: random.Random) -> None:
            step_id = self.to_update[layer_name].pop()
            output = f"updated by {layer_name} {uuid.uuid4()} " + "y" * TEXT_BYTES
            await layer.update_step(self.step_dict(rng, step_id, seed.step_thread[step_id], output))
            writes.updated[step_id] = output

        async def upsert_feedback(rng: random.Random) -> None:
            # A new rating while unrated steps last; then a changed rating of one this layer made
            # (by its feedback's id: Chainlit's layer would add a second row for the step otherwise).
            step_id = self.to_rate[layer_name].pop() if self.to_rate[layer_name] else None
            if step_id is None:
                step_id = rng.choice(writes.rated)
            feedback = Feedback(
                id=writes.feedback_ids.get(step_id),
                forId=step_id,
                value=rng.choice([0, 1]),
                threadId=seed.step_thread[step_id],
                comment="bench",
            )
            feedback_id = await layer.upsert_feedback(feedback)
            if step_id not in writes.feedback_ids:
                writes.feedback_ids[step_id] = feedback_id
                writes.rated.append(step_id)

        calls: dict[str, Callable[[random.Random], Awaitable[None]]] = {
            "get_thread": get_thread,
            "list_threads": list_threads,
            "create_step": create_step,
            "update_step": update_step,
            "upsert_feedback": upsert_feedback,
        }
        return calls[method]

    async def run(self, method: str, layer_name: str, seconds: float, concurrency: int, seed: int) -> Tally:
        call = self.call(method, layer_name)
        tally = Tally()
        deadline = 0.0

        async def worker(rng: random.Random) -> None:
            while time.perf_counter() < deadline:
                try:
                    await call(rng)
                except Exception as error:
                    tally.errors += 1
                    tally.first_error = tally.first_error or repr(error)[:300]
                tally.calls += 1

        cpu, began = time.process_time(), time.perf_counter()
        deadline = began + seconds
        await asyncio.gather(*(worker(random.Random(f"{seed}-{n}")) for n in range(concurrency)))
        tally.elapsed = time.perf_counter() - began
        tally.client_cpu = time.process_time() - cpu
        return tally


async def verify(database_url: str, bench: Bench) -> dict[str, str]:
    """Per layer: how many of its writes are in the database."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        found = {}
        for name, writes in bench.writes.items():
            created = await connection.fetchval(
                "SELECT count(*) FROM steps WHERE id = ANY($1::uuid[])", writes.created
            )
            rows = await connection.fetch(
                "SELECT id::text, output FROM steps WHERE id = ANY($1::uuid[])", list(writes.updated)
            )
            updated = sum(1 for row in rows if writes.updated[row["id"]] == row["output"])
            rated = await connection.fetchval(
                'SELECT count(*) FROM feedbacks WHERE "forId" = ANY($1::uuid[])', writes.rated
            )
            found[name] = (
                f"created {created}/{len(writes.created)}, updated {updated}/{len(writes.updated)}, "
                f"rated {rated}/{len(writes.rated)}"
            )
        return found
    finally:
        await connection.close()


def _ms(total: float, calls: int) -> str:
    return f"{total / calls * 1000:.2f}" if calls else "-"


def row(method: str, rounds: dict[str, list[Tally]]) -> list[str]:
    ours, theirs = rounds["gateway"], rounds["chainlit"]
    ratios = [g.rate / c.rate for g, c in zip(ours, theirs, strict=False) if c.rate]
    calls = {name: sum(t.calls for t in tallies) for name, tallies in rounds.items()}

    def total(name: str, attribute: str) -> float:
        return sum(getattr(t, attribute) or 0.0 for t in rounds[name])

    return [
        method,
        f"{statistics.median(t.rate for t in ours):,.0f}",
        f"{statistics.median(t.rate for t in theirs):,.0f}",
        f"{statistics.median(ratios):.2f}" if ratios else "-",
        " / ".join(f"{ratio:.2f}" for ratio in ratios),
        _ms(total("gateway", "gateway_cpu"), calls["gateway"]),
        f"{_ms(total('gateway', 'client_cpu'), calls['gateway'])} / "
        f"{_ms(total('chainlit', 'client_cpu'), calls['chainlit'])}",
        f"{_ms(total('gateway', 'postgres_cpu'), calls['gateway'])} / "
        f"{_ms(total('chainlit', 'postgres_cpu'), calls['chainlit'])}",
        f"{sum(t.sessions for t in ours)} / {sum(t.sessions for t in theirs)}",
        f"{sum(t.errors for t in ours)} / {sum(t.errors for t in theirs)}",
    ]


HEADER = [
    "method",
    "gateway calls/s",
    "Chainlit calls/s",
    "ratio gw/Chainlit (median)",
    "ratio per round",
    "gateway process CPU ms/call",
    "bench process CPU ms/call gw / Chainlit",
    "PostgreSQL CPU ms/call gw / Chainlit",
    "PG sessions opened gw / Chainlit",
    "errors gw / Chainlit",
]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(METHODS), help=f"methods (default {','.join(METHODS)})")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of a round (default 4)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of each layer before its rounds")
    args = parser.parse_args()
    methods = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {','.join(METHODS)}")
    # Chainlit's layer warns that it has no storage client (no elements here), once per layer.
    logging.getLogger("chainlit").setLevel(logging.ERROR)

    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print(f"# {command}\n# {os.cpu_count()} CPUs, load average {load_average()} at start", flush=True)
    async with scratch_database("postgresql") as url:
        await upgrade_database(url)
        seed = await seed_database(url)
        print(f"# seeded {USERS} users x {THREADS_PER_USER} threads x {STEPS_PER_THREAD} steps", flush=True)
        with (
            tempfile.TemporaryDirectory(prefix="gateway-bench-") as folder,
            gateway_process(url, Path(folder)) as (base, process),
        ):
            init_http_context()  # an HTTP call's context: no websocket session, writes not queued
            layers: dict[str, BaseDataLayer] = {
                "gateway": GatewayDataLayer(url=f"{base}/graphql", api_key=BENCH_KEY),
                "chainlit": SQLAlchemyDataLayer(conninfo=url),
            }
            monitor = Monitor(process.pid, url)
            await monitor.start()
            bench = Bench(seed, layers)
            try:
                for method in methods:  # warm-up: connections opened, code paths taken
                    for name in LAYERS:
                        await bench.run(method, name, args.warmup, args.concurrency, -1)
                results: dict[str, dict[str, list[Tally]]] = {}
                for method in methods:
                    rounds: dict[str, list[Tally]] = {name: [] for name in LAYERS}
                    for number in range(args.rounds):
                        for name in LAYERS:
                            tally, usage = await monitor.track(
                                bench.run(method, name, args.seconds, args.concurrency, number)
                            )
                            tally.gateway_cpu, tally.postgres_cpu = usage.server_cpu, usage.postgres_cpu
                            tally.sessions = usage.sessions or 0
                            rounds[name].append(tally)
                    for name in LAYERS:
                        first = next((t.first_error for t in rounds[name] if t.first_error), "")
                        if first:
                            print(f"# {method} ({name}): first error: {first}", flush=True)
                    print(f"# {method} done, load average {load_average()}", flush=True)
                    results[method] = rounds
                found = await verify(url, bench)
            finally:
                await monitor.close()
                for layer in layers.values():
                    await layer.close()
                await layers["chainlit"].engine.dispose()  # type: ignore[attr-defined]
    print(
        f"\nChainlit SQLAlchemyDataLayer vs gateway GatewayDataLayer, PostgreSQL, {args.rounds} interleaved "
        f"rounds of {args.seconds:g} s, {args.concurrency} concurrent calls\n"
    )
    print(markdown(HEADER, [row(method, rounds) for method, rounds in results.items()]))
    print("\nwrites found in the database afterwards (warm-up included):")
    for name, text in found.items():
        print(f"  {name}: {text}")
    print(f"load average at the end {load_average()}\ncommand: {command}")


if __name__ == "__main__":
    asyncio.run(main())
