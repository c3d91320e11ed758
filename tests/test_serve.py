"""`gateway serve` as operators run it, in its own processes: worker processes on one port with
metrics summed over them, JSON logs, the authentication in force named at start, and start-up
failures in one line."""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.migrate import head_revision
from tests.conftest import POSTGRES_ADMIN_URL, TEST_API_KEY
from tests.test_cli import (
    SERVER_START_TIMEOUT,
    Server,
    _env,
    _free_port,
    _wait_until_healthy,
    gateway,
)
from tests.test_operations import samples

KEY = {"Authorization": f"Bearer {TEST_API_KEY}"}


def start(tmp_path: Path, *args: str, **settings: str) -> tuple[Server, str]:
    port = _free_port()
    env = _env(
        database_url=f"sqlite:///{tmp_path / 'served.db'}",
        storage_url=f"file://{tmp_path / 'files'}",
        port=str(port),
        **settings,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Server(process), f"http://127.0.0.1:{port}"


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == pid and b"resource_tracker" not in cmdline:
                found.append(int(entry.name))
    return found


def test_workers_serve_one_port_migrate_once_and_sum_their_metrics(
    tmp_path: Path, servers: list[Server]
) -> None:
    server, base_url = start(tmp_path, "--workers", "2", api_keys=TEST_API_KEY)
    servers.append(server)
    with httpx.Client(base_url=base_url, timeout=10) as client:
        _wait_until_healthy(client, server, SERVER_START_TIMEOUT)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while len(_children(server.process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_children(server.process.pid)) == 2, server.drain()

    # Each request on a connection of its own, so the kernel hands them to either worker.
    sent = 30
    for _ in range(sent):
        with httpx.Client(base_url=base_url, timeout=10) as client:
            answer = client.post("/graphql", json={"query": "query Ping { viewer { id } }"}, headers=KEY)
            assert answer.status_code == 200, answer.text
    counted = []
    for _ in range(4):  # whichever worker answers /metrics reports every worker's requests
        with httpx.Client(base_url=base_url, timeout=10) as client:
            metrics = samples(client.get("/metrics", headers=KEY).text)
        labels = (("operation", "Ping"), ("outcome", "ok"), ("type", "query"))
        counted.append(metrics[("gateway_requests_total", labels)])
    assert counted == [sent] * 4, counted
    output = server.drain()
    assert output.count(f"to {head_revision()}") == 1, output  # migrated once, before the workers
    assert "Traceback" not in output, output


def test_json_logs_carry_the_request_and_never_the_key(tmp_path: Path, servers: list[Server]) -> None:
    server, base_url = start(tmp_path, api_keys=TEST_API_KEY, log_format="json")
    servers.append(server)
    with httpx.Client(base_url=base_url, timeout=10) as client:
        _wait_until_healthy(client, server, SERVER_START_TIMEOUT)
        answer = client.post("/graphql", json={"query": "query Mine { threads { totalCount } }"}, headers=KEY)
        assert answer.status_code == 200
    request_id = answer.headers["x-request-id"]
    line = server.wait_for_line(request_id, SERVER_START_TIMEOUT)
    entry = json.loads(line)
    assert entry["request_id"] == request_id
    assert entry["operation"] == "Mine"
    assert entry["caller"] == "backend"
    assert entry["outcome"] == "ok"
    assert entry["level"] == "INFO"
    assert isinstance(entry["duration_ms"], float)
    assert entry["time"].endswith("Z")
    server.stop()
    output = server.drain()
    lines = [line for line in output.splitlines() if line.strip()]
    for text in lines:
        json.loads(text)  # every line is one JSON object
    assert TEST_API_KEY not in output and TEST_API_KEY[:12] not in output
    assert any("authentication: 1 API keys (1 from GATEWAY_API_KEYS" in text for text in lines), output


def test_the_log_names_open_development_mode(tmp_path: Path, servers: list[Server]) -> None:
    server, _ = start(tmp_path)
    servers.append(server)
    server.wait_for_line("OPEN DEVELOPMENT MODE", SERVER_START_TIMEOUT)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"database_url": "mysql://user@localhost/chat"}, "GATEWAY_DATABASE_URL"),
        ({"storage_url": "ftp://files.example.com/chat"}, "GATEWAY_STORAGE_URL"),
        ({"port": "eighty"}, "GATEWAY_PORT"),
        ({"cors_origins": "*"}, "GATEWAY_CORS_ORIGINS"),
        ({"rate_limit": "lots"}, "GATEWAY_RATE_LIMIT"),
        ({"log_format": "xml"}, "GATEWAY_LOG_FORMAT"),
        ({"database_url": "postgresql://postgres@127.0.0.1:1/none"}, "GATEWAY_DATABASE_URL"),
        ({"host": "0.0.0.0"}, "GATEWAY_API_KEYS"),  # open development mode off loopback
    ],
)
def test_start_up_failures_are_one_line_naming_the_setting(
    tmp_path: Path, settings: dict[str, str], expected: str
) -> None:
    result = gateway("serve", "--port", str(_free_port()), cwd=tmp_path, **settings)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # One line says why (a log line may come before it: the fresh database was migrated).
    failures = [line for line in result.stderr.splitlines() if line.startswith("gateway: cannot start: ")]
    assert len(failures) == 1 and expected in failures[0], result.stderr


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = gateway("serve", cwd=tmp_path, port=str(port))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"gateway: cannot start: port {port} on 127.0.0.1 is in use by another program: stop it, "
        "or choose another port with GATEWAY_PORT or --port"
    ]


def test_debug_level_shows_the_traceback(tmp_path: Path) -> None:
    result = gateway(
        "migrate", cwd=tmp_path, database_url="postgresql://postgres@127.0.0.1:1/none", log_level="DEBUG"
    )
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("gateway: cannot start: ")


def test_a_plain_postgresql_url_means_asyncpg(tmp_path: Path) -> None:
    import asyncio

    from tests.conftest import create_postgres_database, drop_postgres_database

    url = asyncio.run(create_postgres_database("gateway_plain_url"))
    try:
        plain = url.replace("postgresql+asyncpg://", "postgresql://")
        result = gateway("migrate", cwd=tmp_path, database_url=plain)
        assert result.returncode == 0, result.stderr
        assert f"to revision {head_revision()}" in result.stdout
    finally:
        asyncio.run(drop_postgres_database(url))
    assert POSTGRES_ADMIN_URL  # the server the suite uses


def test_version_help_and_key_ids(tmp_path: Path) -> None:
    version = gateway("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("gateway 0."), version.stdout
    serve_help = gateway("serve", "--help", cwd=tmp_path).stdout
    assert "--workers" in serve_help and "GATEWAY_AUTO_MIGRATE" in serve_help
    assert "told not to" not in serve_help

    database = f"sqlite:///{tmp_path / 'keys.db'}"
    created = gateway("api-key", "create", "--name", "chat-backend", cwd=tmp_path, database_url=database)
    assert created.returncode == 0, created.stderr
    listed = gateway("api-key", "list", cwd=tmp_path, database_url=database)
    header, row = listed.stdout.strip().splitlines()
    assert header.split()[:2] == ["id", "name"]
    key_id, name = row.split()[:2]
    assert name == "chat-backend"
    revoked = gateway("api-key", "revoke", key_id, cwd=tmp_path, database_url=database)
    assert revoked.returncode == 0 and "chat-backend" in revoked.stderr, revoked.stderr
    assert os.path.exists(tmp_path / "keys.db")
