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
import base64
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop
from scratch import scratch_database
from throughput import BENCH_KEY, KeepAliveConnections, gateway_process

from gateway.migrate import upgrade_database

KEY = {"Authorization": f"Bearer {BENCH_KEY}"}
FOLLOW = "subscription($t: ID!) { threadEvents(threadId: $t) { cursor kind delta step { id } } }"
APPEND = "mutation($id: ID!, $d: String!) { appendStepOutput(id: $id, delta: $d) { id } }"
UPSERT_STEP = "mutation($i: StepInput!) { upsertStep(input: $i) { id } }"
UPSERT_THREAD = "mutation($i: ThreadInput!) { upsertThread(input: $i) { id } }"


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/graphql"


class Subscriber(asyncio.Protocol):
    """One graphql-transport-ws subscriber speaking just enough WebSocket (RFC 6455) to subscribe
    and read: at 1,000 subscribers and 50 writes/s the clients receive 50,000 messages a second on
    the same 2 cores as the servers, and the `websockets` client spent ~16 us of CPU on each, as
    much as a replica spent sending it. Events are matched by their delta ("w<write number>"),
    stamped with the time of the read that brought them."""

    def __init__(self, host: str, path: str, thread_id: str, expected: int, out: dict[int, float]) -> None:
        self.host, self.path, self.thread_id = host, path, thread_id
        self.expected, self.out = expected, out
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.upgraded = self.subscribed = False
        self.ready = asyncio.Event()
        self.finished = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's: a Transport, not its subclass
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        received = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self._fail(f"upgrade refused: {bytes(buffer[:200])!r}")
                return
            del buffer[: end + 4]
            self.upgraded = True
            self._send(1, orjson.dumps({"type": "connection_init", "payload": KEY}))
        while len(buffer) >= 2:
            opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                length, offset = int.from_bytes(buffer[2:4]), 4
            elif length == 127:
                length, offset = int.from_bytes(buffer[2:10]), 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            self._frame(opcode, payload, received)

    def _frame(self, opcode: int, payload: bytes, received: float) -> None:
        if opcode == 0x9:  # uvicorn pings every 20 s and closes a socket that does not answer
            self._send(0xA, payload)
        elif opcode == 0x8:
            self._fail(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")
        elif not self.subscribed:
            if b"connection_ack" not in payload:
                self._fail(f"no connection_ack: {payload[:200]!r}")
                return
            self.subscribed = True
            subscribe = {"query": FOLLOW, "variables": {"t": self.thread_id}}
            self._send(1, orjson.dumps({"id": "1", "type": "subscribe", "payload": subscribe}))
            self.ready.set()
        else:
            at = payload.find(b'"delta":"w')
            if at < 0:
                if b'"type":"next"' not in payload:
                    self._fail(f"not an event: {payload[:300]!r}")
                return
            self.out[int(payload[at + 10 : payload.index(b'"', at + 10)])] = received
            if len(self.out) >= self.expected and not self.finished.done():
                self.finished.set_result(None)

    def _send(self, opcode: int, payload: bytes) -> None:
        """A client frame: masked, as RFC 6455 requires of clients."""
        assert self.transport is not None
        size = len(payload)
        head = bytes([0x80 | opcode])
        if size < 126:
            head += bytes([0x80 | size])
        else:
            head += bytes([0x80 | 126]) + size.to_bytes(2)
        mask = os.urandom(4)
        repeated = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload) ^ int.from_bytes(repeated)).to_bytes(size) if size else b""
        self.transport.write(head + mask + masked)

    def _fail(self, reason: str) -> None:
        if not self.finished.done():
            self.finished.set_exception(RuntimeError(reason))
        self.ready.set()
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_exception(RuntimeError(f"connection lost: {exc!r}"))
        self.ready.set()


def client_process(
    urls: list[str], thread_id: str, count: int, expected: int, to_main: Any, from_main: Any
) -> None:
    """Opens `count` subscribers (round-robin over `urls`); reports when subscribed, then each
    subscriber's receive time per write; with `expected` 0, holds them open until told to stop."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        results: list[dict[int, float]] = [{} for _ in range(count)]
        subscribers: list[Subscriber] = []
        for index in range(count):
            url = httpx.URL(urls[index % len(urls)])
            subscriber = Subscriber(
                f"{url.host}:{url.port}", url.path, thread_id, expected or 1 << 30, results[index]
            )
            await loop.create_connection(lambda subscriber=subscriber: subscriber, url.host, url.port)
            subscribers.append(subscriber)
            if index % 50 == 49:
                await asyncio.sleep(0.05)  # not all handshakes at once
        await asyncio.gather(*(subscriber.ready.wait() for subscriber in subscribers))
        await asyncio.sleep(2)  # the subscribe messages are handled
        failed = [subscriber.finished.exception() for subscriber in subscribers if subscriber.finished.done()]
        if failed:
            raise RuntimeError(f"{len(failed)} subscribers failed to subscribe, e.g. {failed[0]}")
        to_main.put("ready")
        if expected:
            await asyncio.wait([subscriber.finished for subscriber in subscribers], timeout=120)
            to_main.put(results)
        else:
            await loop.run_in_executor(None, from_main.get)
            closed = [item for item in subscribers if item.finished.done() and item.finished.exception()]
            to_main.put(len(closed))  # closed by the server (too slow) or lost
        for subscriber in subscribers:
            subscriber.close()

    uvloop.run(run())


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


async def until_idle(pids: list[int]) -> None:
    """Until these processes use under 5 % of a core over half a second (a backlog is done)."""

    def cpu_seconds() -> float:
        ticks = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    while True:
        before = cpu_seconds()
        await asyncio.sleep(0.5)
        if cpu_seconds() - before < 0.025 * len(pids):
            return


async def writes_with_subscribers(bases: list[str], pids: list[int], args: argparse.Namespace) -> None:
    watched, unwatched = str(uuid.uuid4()), str(uuid.uuid4())
    async with httpx.AsyncClient(headers=KEY, timeout=30) as http:
        for thread_id in (watched, unwatched):
            await ok(http, bases[0], UPSERT_THREAD, i={"id": thread_id})
    processes, to_main, from_main = start_clients(
        [ws_url(base) for base in bases], watched, args.subscribers, args.client_processes, 0
    )
    writers = KeepAliveConnections(bases[0], 8, KEY)

    async def rate(thread_id: str) -> float:
        done = 0
        deadline = time.perf_counter() + args.round_seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                step = {"id": str(uuid.uuid4()), "threadId": thread_id, "name": "s", "type": "run"}
                body = orjson.dumps({"query": UPSERT_STEP, "variables": {"i": step}})
                status, answer = await writers.post_json(body)
                if status != 200 or b'"errors"' in answer:
                    raise RuntimeError(answer[:300])
                done += 1

        await asyncio.gather(*(worker() for _ in range(8)))
        await until_idle(pids)  # the watched round's events are all sent before the next round
        return done / args.round_seconds

    with_rates, without_rates = [], []
    for _ in range(args.rounds):
        without_rates.append(await rate(unwatched))
        with_rates.append(await rate(watched))
    await writers.close()
    for _ in processes:
        from_main.put("stop")
    closed = sum(to_main.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(30)
    ratios = [watched_rate / plain for watched_rate, plain in zip(with_rates, without_rates, strict=True)]
    print(f"upsertStep at concurrency 8 on replica 1, {args.subscribers} subscribers of the watched thread:")
    print(f"  without (unwatched thread): {', '.join(f'{item:.0f}' for item in without_rates)} /s")
    print(f"  with (watched thread):      {', '.join(f'{item:.0f}' for item in with_rates)} /s")
    print(
        f"  ratio with/without: median {statistics.median(ratios):.2f} "
        f"(rounds: {', '.join(f'{item:.2f}' for item in ratios)}); "
        f"subscribers closed as too slow or lost: {closed}"
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
                gateway_process(url, second) as (base_b, process_b),
            ):
                if "fan-out" in parts:
                    await fan_out([base_a, base_b], args)
                if "writes" in parts:
                    await writes_with_subscribers([base_a, base_b], [process_a.pid, process_b.pid], args)
                if "idle" in parts:
                    await idle_memory(base_a, process_a.pid, args)


if __name__ == "__main__":
    asyncio.run(main())
