"""Benchmark: Chatsky's context-storage benchmark (`chatsky.utils.db_benchmark`) on the gateway's
`GatewayContextStorage` (over HTTP to a real `gateway serve` process) and on Chatsky's own SQL
storage, both on the same PostgreSQL, in interleaved rounds (gateway, SQL, gateway, ...).

Each round is `time_context_read_write` of one context growing from `--from-len` to `--to-len`
turns, `--step` turns a write (Chatsky's `BasicBenchmarkConfig`, default message and misc sizes):
after each write the context is read back as a turn starts (`Context.connected`: the MAIN record,
each field's keys and latest items). Both storages run in the same interpreter, a venv of their
own (`--baseline-venv`) holding Chatsky 0.10 with SQLAlchemy 2.0, since Chatsky 0.10's SQL storage
fails on SQLAlchemy 2.1 (its `run_sync(table.create, ...)`); the gateway runs from this venv, with
its own versions. Prints, per storage, the median over rounds of a turn's write (`store`), read
(`Context.connected`) and both, the rate of turns (read + write) and the ratio gateway/SQL; how a
turn's cost grows with the context's length (the mean read + write at lengths near 10, 100, 500,
1,000 turns); and the gateway process's CPU per turn (from /proc). Run by hand, never in CI:

    .venv/bin/python bench/chatsky_storages.py [--rounds 2] [--from-len 10] [--to-len 1000]
        [--step 1] [--baseline-venv .venv-chatsky-sql]

The baseline venv is made if missing: python3 -m venv .venv-chatsky-sql && .venv-chatsky-sql/bin/pip
install 'chatsky[postgresql]==0.10.0' 'sqlalchemy[asyncio]>=2.0,<2.1' humanize pympler tqdm httpx
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
BASELINE_PACKAGES = [
    "chatsky[postgresql]==0.10.0",
    "sqlalchemy[asyncio]>=2.0,<2.1",
    "humanize",  # chatsky.utils.db_benchmark's imports
    "pympler",
    "tqdm",
    "httpx",  # gateway.client, imported from this checkout
]
LENGTHS = (10, 100, 500, 1000)
STORAGES = ("gateway", "sql")


# --- the worker: one round of Chatsky's benchmark, in the baseline venv ----------------------


def worker(storage_name: str, url: str, api_key: str, first: int, last: int, step: int) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from chatsky.context_storages import context_storage_factory
    from chatsky.utils.db_benchmark import BasicBenchmarkConfig, time_context_read_write

    from gateway.chatsky import GatewayContextStorage

    storage: Any
    if storage_name == "gateway":
        storage = GatewayContextStorage(url, api_key=api_key)
    else:
        storage = context_storage_factory(url)
    config = BasicBenchmarkConfig(
        context_num=1, from_dialog_len=first, to_dialog_len=last, step_dialog_len=step
    )

    async def run() -> tuple[Any, Any, Any]:
        await storage.connect()
        return await time_context_read_write(storage, config.get_context, 1, config.context_updater)

    started = time.process_time()
    writes, reads, updates = asyncio.run(run())
    print(
        json.dumps(
            {
                "write": writes[0],
                "reads": reads[0],
                "updates": updates[0],
                "client_cpu": time.process_time() - started,
            }
        )
    )


# --- the driver, in the gateway's venv -------------------------------------------------------


def baseline_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"making the baseline venv {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *BASELINE_PACKAGES], check=True)
    return python


def near(times: dict[int, float], length: int) -> float:
    """The mean read + write of the turns within 5% of `length` turns."""
    window = [value for key, value in times.items() if abs(key - length) <= max(2, length // 20)]
    return statistics.mean(window) if window else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--from-len", type=int, default=10)
    parser.add_argument("--to-len", type=int, default=1000)
    parser.add_argument("--step", type=int, default=1)
    parser.add_argument("--baseline-venv", type=Path, default=REPO / ".venv-chatsky-sql")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, url, key, first, last, step = args.worker
        worker(name, url, key, int(first), int(last), int(step))
        return
    asyncio.run(drive(args))


async def drive(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    from scratch import scratch_database
    from throughput import (
        BENCH_KEY,
        cpu_delta,
        cpu_seconds,
        gateway_process,
        load_average,
        process_tree,
    )

    from gateway.migrate import upgrade_database

    python = baseline_python(args.baseline_venv)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in STORAGES}
    async with scratch_database("postgresql") as database_url:
        await upgrade_database(database_url)
        sql_url = database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
        with (
            tempfile.TemporaryDirectory() as folder,
            gateway_process(database_url, Path(folder)) as (base, process),
        ):
            urls = {"gateway": f"{base}/graphql", "sql": sql_url}
            for round_number in range(args.rounds):
                for name in STORAGES:
                    before = cpu_seconds(process_tree(process.pid))
                    command = [
                        str(python),
                        str(SCRIPT),
                        "--worker",
                        name,
                        urls[name],
                        BENCH_KEY,
                        str(args.from_len),
                        str(args.to_len),
                        str(args.step),
                    ]
                    env = {**os.environ, "PYTHONPATH": str(REPO)}
                    ran = await asyncio.to_thread(
                        subprocess.run, command, env=env, capture_output=True, text=True, check=False
                    )
                    if ran.returncode != 0:
                        raise SystemExit(f"{name} round failed:\n{ran.stderr[-3000:]}")
                    result = json.loads(ran.stdout.strip().splitlines()[-1])
                    result["gateway_cpu"] = cpu_delta(before, cpu_seconds(process_tree(process.pid)))
                    results[name].append(result)
                    print(f"round {round_number + 1} {name}: done", file=sys.stderr)
    report(results, args)
    print(f"\nload average after: {load_average()}")


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    from throughput import markdown

    summary: dict[str, dict[str, float]] = {}
    rows = []
    for name in STORAGES:
        rounds = results[name]
        reads = [statistics.mean(float(v) for v in r["reads"].values()) for r in rounds]
        updates = [statistics.mean(float(v) for v in r["updates"].values()) for r in rounds]
        turns = [read + update for read, update in zip(reads, updates, strict=True)]
        turn_count = [len(r["updates"]) for r in rounds]
        summary[name] = {"turn": statistics.median(turns)}
        cpu = statistics.median(r["gateway_cpu"] / count for r, count in zip(rounds, turn_count, strict=True))
        client = statistics.median(
            r["client_cpu"] / count for r, count in zip(rounds, turn_count, strict=True)
        )
        rows.append(
            [
                name,
                f"{statistics.median(updates) * 1000:.2f}",
                f"{statistics.median(reads) * 1000:.2f}",
                f"{summary[name]['turn'] * 1000:.2f}",
                f"{1 / summary[name]['turn']:.0f}",
                " / ".join(f"{turn * 1000:.2f}" for turn in turns),
                f"{cpu * 1000:.2f}" if name == "gateway" else "-",
                f"{client * 1000:.2f}",
            ]
        )
    print(
        f"Chatsky db_benchmark, one context from {args.from_len} to {args.to_len} turns, {args.step} "
        f"a write, {args.rounds} interleaved rounds, PostgreSQL for both\n"
    )
    header = [
        "storage",
        "write ms",
        "read ms",
        "read+write ms",
        "turns/s",
        "each round's read+write ms",
        "gateway CPU ms/turn",
        "client CPU ms/turn",
    ]
    print(markdown(header, rows))
    ratio = summary["sql"]["turn"] / summary["gateway"]["turn"]
    print(f"\nthroughput of a turn's read+write, gateway/SQL: {ratio:.2f}x")
    growth_rows = []
    for name in STORAGES:
        by_length: dict[int, list[float]] = {}
        for r in results[name]:
            merged = {
                int(key): float(r["reads"][key]) + float(r["updates"][key])
                for key in r["updates"]
                if key in r["reads"]
            }
            for length in LENGTHS:
                by_length.setdefault(length, []).append(near(merged, length))
        growth_rows.append(
            [name, *(f"{statistics.median(by_length[length]) * 1000:.2f}" for length in LENGTHS)]
        )
    print("\nread+write ms of a turn by the context's length (turns)\n")
    print(markdown(["storage", *(str(length) for length in LENGTHS)], growth_rows))


if __name__ == "__main__":
    main()
