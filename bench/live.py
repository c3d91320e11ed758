"""Benchmark: subscriptions on PostgreSQL with two `gateway serve` processes (replicas).

1. Fan-out: `--subscribers` WebSocket subscribers of one thread's feed, spread over both replicas
   (opened by `--client-processes` processes of this script), while a writer appends to a step of
   that thread at `--rate` writes/s for `--seconds`, alternating between the replicas. Every
   subscriber must receive every event; prints the percentiles of write-acknowledged (the
   mutation's answer arrived) to event-received.
2. Writes with subscribers: `upsertStep` throughput at concurrency 8 on the watched thread against
   an unwatched one, interleaved rounds, same processes: the ratio is the subscribers' cost.
3. Idle memory: `--idle` idle subscriptions (one socket each) on one replica: its resident memory
   before and after, per subscription.

Targets (issue 13): every event to every subscriber; p99 <= 100 ms, p50 <= 20 ms at 1,000
subscribers and 50 writes/s; throughput with subscribers >= 0.8x; idle subscription <= 50 KB.

    .venv/bin/python bench/live.py [--subscribers 1000] [--rate 50] [--seconds 10] [--idle 10000]
"""

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from scratch import scratch_database
from throughput import BENCH_KEY, gateway_process
from websockets.asyncio.client import connect

from gateway.migrate import upgrade_database

KEY = {"Authorization": f"Bearer {BENCH_KEY}"}
FOLLOW = "subscription($t: ID!) { threadEvents(threadId: $t) { cursor kind delta step { id } } }"
APPEND = "mutation($id: ID!, $d: String!) { appendStepOutput(id: $id, delta: $d) { id } }"
UPSERT_STEP = "mutation($i: StepInput!) { upsertStep(input: $i) { id } }"
UPSERT_THREAD = "mutation($i: ThreadInput!) { upsertThread(input: $i) { id } }"


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/graphql"


async def subscriber(
    url: str, thread_id: str, ready: asyncio.Event, expected: int, out: dict[int, float]
) -> None:
    async with connect(url, subprotocols=["graphql-transport-ws"], max_size=None, open_timeout=120) as socket:  # type: ignore[list-item]
        await socket.send(orjson.dumps({"type": "connection_init", "payload": KEY}).decode())
        await socket.recv()
        await socket.send(
            orjson.dumps(
                {"id": "1", "type": "subscribe", "payload": {"query": FOLLOW, "variables": {"t": thread_id}}}
            ).decode()
        )
        ready.set()
        while len(out) < expected:
            message = orjson.loads(await socket.recv())
            received = time.time()
            delta = message["payload"]["data"]["threadEvents"]["delta"]
            if delta and delta.startswith("w"):
                out[int(delta[1:])] = received


def client_process(
    urls: list[str], thread_id: str, count: int, expected: int, to_main: Any, from_main: Any
) -> None:
    """Opens `count` subscribers (round-robin over `urls`); reports when subscribed, then each
    subscriber's receive time per write; with `expected` 0, holds them open until told to stop."""

    async def run() -> None:
        readies = [asyncio.Event() for _ in range(count)]
        results: list[dict[int, float]] = [{} for _ in range(count)]
        tasks = []
        for index in range(count):
            url = urls[index % len(urls)]
            tasks.append(
                asyncio.create_task(
                    subscriber(url, thread_id, readies[index], expected or 1 << 30, results[index])
                )
            )
            if index % 50 == 49:
                await asyncio.sleep(0.05)  # not all handshakes at once
        await asyncio.gather(*(ready.wait() for ready in readies))
        await asyncio.sleep(2)  # the subscribe messages are handled
        to_main.put("ready")
        if expected:
            await asyncio.wait(tasks, timeout=120)
            to_main.put(results)
        else:
            await asyncio.get_running_loop().run_in_executor(None, from_main.get)
        for task in tasks:
            task.cancel()

    asyncio.run(run())


def start_clients(
    urls: list[str], thread_id: str, total: int, processes: int, expected: int
) -> tuple[list[Any], Any, Any]:
    context = multiprocessing.get_context("spawn")
    to_main, from_main = context.Queue(), context.Queue()
    started = []
    for number in range(processes):
        count = total // processes + (1 if number < total % processes else 0)
        process = context.Process(
            target=client_process, args=(urls, thread_id, count, expected, to_main, from_main)
        )
        process.start()
        started.append(process)
    for _ in started:
        assert to_main.get(timeout=600) == "ready"
    return started, to_main, from_main


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def fan_out(bases: list[str], args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(headers=KEY, timeout=30) as http:
        thread_id, step_id = str(uuid.uuid4()), str(uuid.uuid4())
        await ok(
            http,
            bases[0],
            UPSERT_STEP,
            i={"id": step_id, "threadId": thread_id, "name": "s", "type": "run", "output": ""},
        )
        writes = int(args.rate * args.seconds)
        processes, to_main, _ = start_clients(
            [ws_url(base) for base in bases], thread_id, args.subscribers, args.client_processes, writes
        )
        print(f"{args.subscribers} subscribed; writing for {args.seconds:.0f} s", flush=True)
        acknowledged: dict[int, float] = {}
        started = time.perf_counter()
        pending = []
        for index in range(writes):
            await asyncio.sleep(max(0.0, started + index / args.rate - time.perf_counter()))

            async def write(number: int) -> None:
                await ok(http, bases[number % 2], APPEND, id=step_id, d=f"w{number}")
                acknowledged[number] = time.time()

            pending.append(asyncio.create_task(write(index)))
        await asyncio.gather(*pending)
        achieved = writes / (time.perf_counter() - started)
        results: list[list[dict[int, float]]] = [to_main.get(timeout=300) for _ in processes]
        for process in processes:
            process.join(30)
    latencies: list[float] = []
    complete = 0
    subscribers = [item for chunk in results for item in chunk]
    for received in subscribers:
        complete += len(received) == writes
        latencies.extend(max(0.0, received[index] - acknowledged[index]) * 1000 for index in received)
    print(
        f"fan-out: {len(subscribers)} subscribers over {len(bases)} replicas, "
        f"{writes} writes at {achieved:.1f}/s"
    )
    print(f"  subscribers that received every event: {complete}/{len(subscribers)}")
    print(
        f"  write-acknowledged to event-received: p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p90 {percentile(latencies, 0.9):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms, "
        f"max {max(latencies):.1f} ms ({len(latencies)} deliveries)"
    )


async def ok(http: httpx.AsyncClient, base: str, query: str, **variables: Any) -> dict[str, Any]:
    response = await http.post(f"{base}/graphql", json={"query": query, "variables": variables})
    body = response.json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    data: dict[str, Any] = body["data"]
    return data


async def writes_with_subscribers(bases: list[str], args: argparse.Namespace) -> None:
    watched, unwatched = str(uuid.uuid4()), str(uuid.uuid4())
    async with httpx.AsyncClient(headers=KEY, timeout=30) as http:
        for thread_id in (watched, unwatched):
            await ok(http, bases[0], UPSERT_THREAD, i={"id": thread_id})
        processes, _, from_main = start_clients(
            [ws_url(base) for base in bases], watched, args.subscribers, args.client_processes, 0
        )

        async def rate(thread_id: str) -> float:
            done = 0
            deadline = time.perf_counter() + args.round_seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    step = {"id": str(uuid.uuid4()), "threadId": thread_id, "name": "s", "type": "run"}
                    await ok(http, bases[0], UPSERT_STEP, i=step)
                    done += 1

            await asyncio.gather(*(worker() for _ in range(8)))
            return done / args.round_seconds

        with_rates, without_rates = [], []
        for _ in range(args.rounds):
            without_rates.append(await rate(unwatched))
            with_rates.append(await rate(watched))
        for _ in processes:
            from_main.put("stop")
        for process in processes:
            process.join(30)
    ratios = [watched_rate / plain for watched_rate, plain in zip(with_rates, without_rates, strict=True)]
    print(f"upsertStep at concurrency 8 on replica 1, {args.subscribers} subscribers of the watched thread:")
    print(f"  without (unwatched thread): {', '.join(f'{item:.0f}' for item in without_rates)} /s")
    print(f"  with (watched thread):      {', '.join(f'{item:.0f}' for item in with_rates)} /s")
    print(
        f"  ratio with/without: median {statistics.median(ratios):.2f} "
        f"(rounds: {', '.join(f'{item:.2f}' for item in ratios)})"
    )


async def idle_memory(base: str, pid: int, args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(headers=KEY, timeout=30) as http:
        thread_id = str(uuid.uuid4())
        await ok(http, base, UPSERT_THREAD, i={"id": thread_id})
        # Warm the process (one subscription) so that what follows is the subscriptions' cost.
        processes, _, from_main = start_clients([ws_url(base)], thread_id, 10, 1, 0)
        before = rss_kib(pid)
        more, _, more_stop = start_clients([ws_url(base)], thread_id, args.idle, args.client_processes, 0)
        await asyncio.sleep(3)
        after = rss_kib(pid)
        for queue, group in ((from_main, processes), (more_stop, more)):
            for _ in group:
                queue.put("stop")
            for process in group:
                process.join(60)
    print(
        f"idle: {args.idle} idle subscriptions (a socket each) on one replica: "
        f"RSS {before / 1024:.0f} MiB -> "
        f"{after / 1024:.0f} MiB, {(after - before) / args.idle:.1f} KiB per subscription"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=5.0)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--only", default="fan-out,writes,idle")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    async with scratch_database("postgresql") as url:
        await upgrade_database(url)
        with tempfile.TemporaryDirectory() as folder:
            first, second = Path(folder) / "a", Path(folder) / "b"
            first.mkdir()
            second.mkdir()
            with (
                gateway_process(url, first) as (base_a, process_a),
                gateway_process(url, second) as (base_b, _),
            ):
                if "fan-out" in parts:
                    await fan_out([base_a, base_b], args)
                if "writes" in parts:
                    await writes_with_subscribers([base_a, base_b], args)
                if "idle" in parts:
                    await idle_memory(base_a, process_a.pid, args)


if __name__ == "__main__":
    asyncio.run(main())
