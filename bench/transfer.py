"""Benchmark: `gateway import` and `gateway export` of many steps on PostgreSQL: the import rate
(steps/s; the target is at least 5,000) and each command's peak resident memory (the target: under
200 MB whatever the number of steps, since both stream).

Writes a JSONL export of `--steps` steps (threads of `--steps-per-thread`, about 400 bytes of text
each, a user per 100 threads), imports it into a fresh PostgreSQL database with the `gateway` CLI in
its own process, imports it again (everything unchanged), exports it, and checks the export has
the same lines. Each command's peak RSS is its own (VmHWM, read from /proc while it runs), its
CPU time from `wait4`. As a
baseline, the same steps are written by asyncpg alone in the same run (multi-row INSERTs of 1,000
rows into a table of the same columns, no checks, no triggers): the ratio says what the import's
checks, counting and transactions cost. Run by hand:

    .venv/bin/python bench/transfer.py [--steps 1000000] [--steps-per-thread 100]
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
TEXT = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, ünïcødé ✓. " * 6


def dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def write_export(path: Path, steps: int, per_thread: int) -> tuple[int, list[tuple[Any, ...]]]:
    """The export file; returns its number of threads and the first 100,000 steps' rows (for the
    baseline)."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    threads = (steps + per_thread - 1) // per_thread
    sample: list[tuple[Any, ...]] = []
    with path.open("w") as out:
        out.write('{"format":"conversation-gateway","version":1}\n')
        users = []
        for number in range((threads + 99) // 100):
            user = {
                "type": "user",
                "id": str(uuid.uuid4()),
                "identifier": f"user{number}@example.com",
                "metadata": {},
                "createdAt": stamp(start),
            }
            users.append(user)
            out.write(json.dumps(user) + "\n")
        written = 0
        for number in range(threads):
            owner = users[number // 100]
            thread_id = str(uuid.uuid4())
            created = start + timedelta(seconds=number)
            rows = []
            for index in range(min(per_thread, steps - written)):
                moment = stamp(created + timedelta(milliseconds=index))
                step = {
                    "id": str(uuid.uuid4()),
                    "name": "assistant",
                    "type": "assistant_message",
                    "parentId": None,
                    "streaming": False,
                    "waitForAnswer": None,
                    "isError": None,
                    "metadata": {"n": index},
                    "tags": None,
                    "input": None,
                    "output": f"{index} {TEXT}",
                    "createdAt": moment,
                    "start": moment,
                    "end": moment,
                    "generation": None,
                    "showInput": None,
                    "language": None,
                    "indent": None,
                    "command": None,
                    "modes": None,
                    "defaultOpen": None,
                    "autoCollapse": None,
                }
                rows.append(step)
                if len(sample) < 100_000:
                    sample.append((step["id"], thread_id, step["name"], step["type"], step["output"], moment))
            written += len(rows)
            thread = {
                "type": "thread",
                "id": thread_id,
                "createdAt": stamp(created),
                "name": f"thread {number}",
                "userId": owner["id"],
                "userIdentifier": owner["identifier"],
                "tags": None,
                "metadata": {},
                "updatedAt": rows[-1]["createdAt"],
                "steps": rows,
                "elements": [],
                "feedback": [],
            }
            out.write(json.dumps(thread, ensure_ascii=False) + "\n")
    return threads, sample


def lines_of(path: Path) -> int:
    with path.open("rb") as lines:
        return sum(1 for _ in lines)


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident memory so far (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_cli(*args: str, database_url: str) -> tuple[float, float, float, str]:
    """(seconds, peak RSS in MB, CPU seconds, stderr's last lines) of one CLI command."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=database_url, GATEWAY_STORAGE_URL=f"file://{tempfile.mkdtemp()}")
    with tempfile.TemporaryFile() as stderr:
        began = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], env=env, stderr=stderr)
        # The peak is read from /proc while the command runs: VmHWM is its own memory's, whereas
        # wait4's ru_maxrss also counts the memory of this process it was forked from.
        peak_kib = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_kib = max(peak_kib, vm_hwm_kib(process.pid))
            time.sleep(0.05)
        elapsed = time.perf_counter() - began
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        text = stderr.read().decode()
    if process.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(args)} failed:\n{text[-3000:]}")
    tail = "\n".join(line for line in text.splitlines()[-6:])
    return elapsed, peak_kib / 1024, usage.ru_utime + usage.ru_stime, tail


async def baseline(url: str, rows: list[tuple[Any, ...]]) -> float:
    """Steps/s of plain multi-row INSERTs by asyncpg, 1,000 rows a statement."""
    connection = await asyncpg.connect(dsn(url))
    try:
        await connection.execute(
            'CREATE TABLE bench_steps (id uuid PRIMARY KEY, "threadId" uuid, name text, type text, '
            'output text, "createdAt" text)'
        )
        began = time.perf_counter()
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            values = ",".join(
                f"(${i * 6 + 1}::uuid,${i * 6 + 2}::uuid,${i * 6 + 3},${i * 6 + 4},${i * 6 + 5},${i * 6 + 6})"
                for i in range(len(chunk))
            )
            async with connection.transaction():
                await connection.execute(
                    f"INSERT INTO bench_steps VALUES {values}", *[value for row in chunk for value in row]
                )
        return len(rows) / (time.perf_counter() - began)
    finally:
        await connection.execute("DROP TABLE IF EXISTS bench_steps")
        await connection.close()


async def create_database() -> str:
    name = f"gateway_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn(ADMIN_URL))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def drop_database(url: str) -> None:
    admin = await asyncpg.connect(dsn(ADMIN_URL))
    await admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--steps-per-thread", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-transfer-bench-"))
    source, exported = work / "source.jsonl", work / "exported.jsonl"
    began = time.perf_counter()
    threads, sample = write_export(source, args.steps, args.steps_per_thread)
    print(
        f"wrote {args.steps:,} steps in {threads:,} threads ({source.stat().st_size / 2**20:,.0f} MiB) "
        f"in {time.perf_counter() - began:.0f} s",
        flush=True,
    )
    url = asyncio.run(create_database())
    try:
        results = []
        seconds, rss, cpu, tail = run_cli("import", str(source), database_url=url)
        results.append(("import (new)", seconds, rss, cpu))
        print(tail, flush=True)
        seconds, rss, cpu, tail = run_cli("import", str(source), database_url=url)
        results.append(("import again (unchanged)", seconds, rss, cpu))
        print(tail, flush=True)
        seconds, rss, cpu, tail = run_cli("export", "--output", str(exported), database_url=url)
        results.append(("export", seconds, rss, cpu))
        same = lines_of(exported) == lines_of(source)
        rate = asyncio.run(baseline(url, sample))
    finally:
        asyncio.run(drop_database(url))
    print(f"\n{args.steps:,} steps, {threads:,} threads of {args.steps_per_thread} steps, PostgreSQL\n")
    print("| command | seconds | steps/s | peak RSS (MB) | CPU s of the command |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, seconds, rss, cpu in results:
        print(f"| {name} | {seconds:,.1f} | {args.steps / seconds:,.0f} | {rss:,.0f} | {cpu:,.1f} |")
    print(
        f"\nbaseline: asyncpg multi-row INSERTs of {len(sample):,} of the steps: {rate:,.0f} steps/s; "
        f"the import's rate is {args.steps / results[0][1] / rate:.2f} of it"
    )
    print(f"export has as many lines as the source: {same}")


if __name__ == "__main__":
    main()
