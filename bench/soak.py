"""Soak: does the gateway's memory stay flat under long mixed load, or does it leak?

Starts `gateway serve` in its own process on a scratch database, drives it with `--concurrency`
clients for `--minutes` (a chat backend's writes: steps upserted, output streamed, batches
ingested, threads deleted so the database stays bounded; a frontend's reads: the history query,
search, paging), samples the server's resident memory (VmRSS) every `--sample-seconds`, and
prints the series and the growth after warm-up (the first fifth of the run, at most 5 minutes):
caches fill during warm-up; after it, growth over 10% means something is unbounded. Run by hand:

    .venv/bin/python bench/soak.py [--backend sqlite|postgresql] [--minutes 30] [--concurrency 32]

The gateway's caches, all bounded: SQLAlchemy's compiled statements (500 per engine), asyncpg's
prepared statements (100 per connection, 20 connections), SQLite's page cache (2 MiB per
connection, 5 connections), the JWKS keys of one identity provider.
"""

import argparse
import asyncio
import os
import random
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
from scratch import scratch_database

KEY = "gw_bench-soak-key"
THREADS = 200  # live threads at any time: writes go to these, and old ones are deleted
UPSERT_STEP = "mutation($i: StepInput!) { upsertStep(input: $i) { id } }"
APPEND = "mutation($id: ID!, $d: String!) { appendStepOutput(id: $id, delta: $d) { id } }"
INGEST = "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { index error { code } } }"
DELETE_THREAD = "mutation($id: ID!) { deleteThread(id: $id) { id } }"
HISTORY = (
    "query($after: String) { threads(first: 20, after: $after) { pageInfo { endCursor }"
    " edges { node { id name updatedAt steps(last: 10) { edges { node { id output } } } } } } }"
)
SEARCH = "query($q: String) { threads(first: 10, filter: {search: $q}) { edges { node { id } } } }"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Load:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.threads = [str(uuid.uuid4()) for _ in range(THREADS)]
        self.steps: list[str] = []
        self.requests = 0
        self.failures = 0
        self.codes: Counter[str] = Counter()  # what the failed requests were told

    async def call(self, query: str, **variables: object) -> None:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        self.requests += 1
        errors = response.json().get("errors") if response.status_code < 500 else [{}]
        if response.status_code != 200 or errors:
            self.failures += 1
            self.codes[str(((errors or [{}])[0].get("extensions") or {}).get("code"))] += 1

    async def one(self) -> None:
        slot = random.randrange(len(self.threads))
        thread = self.threads[slot]
        roll = random.random()
        if roll < 0.25:
            step = str(uuid.uuid4())
            self.steps = [*self.steps[-999:], step]
            await self.call(UPSERT_STEP, i={"id": step, "threadId": thread, "name": "A", "type": "run"})
        elif roll < 0.45 and self.steps:
            await self.call(APPEND, id=random.choice(self.steps), d="token " * random.randint(1, 20))
        elif roll < 0.55:
            batch = [
                {"id": str(uuid.uuid4()), "threadId": thread, "name": "s", "type": "llm", "output": "x" * 200}
                for _ in range(20)
            ]
            await self.call(INGEST, s=batch)
        elif roll < 0.58:
            await self.call(DELETE_THREAD, id=thread)  # keeps the database bounded
            self.threads[slot] = str(uuid.uuid4())
        elif roll < 0.9:
            await self.call(HISTORY, after=None)
        else:
            await self.call(SEARCH, q=random.choice(["token", "xx", "nothing", "Ü"]))


async def drive(url: str, pid: int, minutes: float, concurrency: int, sample_seconds: float) -> list[float]:
    deadline = time.monotonic() + minutes * 60
    samples: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:
        load = Load(http)

        async def worker() -> None:
            while time.monotonic() < deadline:
                try:
                    await load.one()
                except httpx.HTTPError:
                    load.failures += 1

        async def sampler() -> None:
            started = time.monotonic()
            while time.monotonic() < deadline:
                samples.append(rss_mib(pid))
                print(
                    f"{time.monotonic() - started:7.0f} s  RSS {samples[-1]:7.1f} MiB  "
                    f"requests {load.requests}  failed {load.failures}",
                    flush=True,
                )
                await asyncio.sleep(sample_seconds)

        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
        print(f"failed requests by code: {dict(load.codes)} (NOT_FOUND: appends to deleted threads)")
    samples.append(rss_mib(pid))
    return samples


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sample-seconds", type=float, default=10)
    args = parser.parse_args()
    async with scratch_database(args.backend) as database_url:
        port = free_port()
        files = tempfile.mkdtemp(prefix="soak-files-")
        environment = {
            **os.environ,
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_STORAGE_URL": f"file://{files}",
            "GATEWAY_API_KEYS": KEY,
            "GATEWAY_PORT": str(port),
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        gateway = Path(sys.executable).parent / "gateway"
        server = await asyncio.create_subprocess_exec(str(gateway), "serve", env=environment)
        try:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient() as probe:
                for _ in range(100):
                    try:
                        if (await probe.get(url + "/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        await asyncio.sleep(0.2)
            samples = await drive(url, server.pid, args.minutes, args.concurrency, args.sample_seconds)
        finally:
            server.terminate()
            await asyncio.wait_for(server.wait(), timeout=30)
    warm = samples[min(len(samples) - 1, max(1, min(len(samples) // 5, int(300 / args.sample_seconds))))]
    growth = (samples[-1] - warm) / warm * 100
    print(f"start {samples[0]:.1f} MiB, after warm-up {warm:.1f} MiB, end {samples[-1]:.1f} MiB")
    print(f"growth after warm-up: {growth:+.1f}% ({'flat' if growth < 10 else 'GROWING'})")
    return 0 if growth < 10 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
