"""Benchmark: an upload streams through the gateway; it is never held whole in memory.

Starts `gateway serve` in its own process (local storage, or S3 on a moto server in another
process), uploads a large file with createElement, and prints the gateway's peak resident memory
(VmHWM) before and after, against the file's size, then reads the bytes back and compares them.
Run by hand:

    .venv/bin/python bench/upload_memory.py [--store local|s3] [--megabytes 256]
"""

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

KEY = "gw_bench-upload-key"
CREATE = "mutation($i: ElementInput!, $f: Upload) { createElement(input: $i, file: $f) { id sizeBytes url } }"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", choices=["local", "s3"], default="local")
    parser.add_argument("--megabytes", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gateway-upload-bench-"))
    payload = work / "payload.bin"
    with payload.open("wb") as handle:
        for _ in range(args.megabytes):
            handle.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATABASE_URL=f"sqlite+aiosqlite:///{work / 'gateway.db'}",
        GATEWAY_API_KEYS=KEY,
        GATEWAY_MAX_UPLOAD_BYTES=str(args.megabytes * 1024 * 1024 + 1),
        GATEWAY_LOG_LEVEL="WARNING",
    )
    helpers: list[subprocess.Popen[bytes]] = []
    if args.store == "s3":
        s3_port = free_port()
        moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(s3_port)], stderr=subprocess.DEVNULL
        )
        helpers.append(moto)
        env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        wait_for(f"http://127.0.0.1:{s3_port}/")
        httpx.put(f"http://127.0.0.1:{s3_port}/bench-bucket")
        env.update(
            GATEWAY_STORAGE_URL="s3://bench-bucket/uploads",
            GATEWAY_S3_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
        )
    else:
        env.update(GATEWAY_STORAGE_URL=f"file://{work / 'files'}")
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    helpers.append(gateway)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/healthz")
        headers = {"Authorization": f"Bearer {KEY}", "Apollo-Require-Preflight": "true"}
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
            thread_id = "01900000-0000-7000-8000-000000000001"
            client.post(
                "/graphql",
                json={
                    "query": 'mutation($t: ID!) { upsertThread(input: {id: $t, name: "bench"}) { id } }',
                    "variables": {"t": thread_id},
                },
            )
            before = peak_rss_mib(gateway.pid)
            operations = {
                "query": CREATE,
                "variables": {"i": {"threadId": thread_id, "name": "payload.bin"}, "f": None},
            }
            began = time.perf_counter()
            with payload.open("rb") as handle:
                response = client.post(
                    "/graphql",
                    data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.f"]})},
                    files={"0": ("payload.bin", handle, "application/octet-stream")},
                )
            elapsed = time.perf_counter() - began
            after = peak_rss_mib(gateway.pid)
            element = response.json()["data"]["createElement"]
            read_back = httpx.get(element["url"], timeout=600).content
        size_mib = element["sizeBytes"] / 1024 / 1024
        print(
            f"store {args.store}: uploaded {size_mib:.0f} MiB in {elapsed:.1f} s "
            f"({size_mib / elapsed:.0f} MiB/s)"
        )
        print(f"  gateway peak RSS: {before:.0f} MiB before, {after:.0f} MiB after the upload")
        print(f"  peak growth / file size: {(after - before) / size_mib:.3f}")
        print(f"  read back byte for byte: {hashlib.sha256(read_back).hexdigest() == digest}")
    finally:
        for process in helpers:
            process.terminate()
            process.wait(timeout=15)


if __name__ == "__main__":
    main()
