"""The `gateway` command, run as a user runs it: in its own process, configured by environment.

`sys.executable -m gateway.cli` is the installed `gateway` script with the interpreter running the
tests, so these tests work in any virtual environment.
"""

import difflib
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.migrate import head_revision

REPO = Path(__file__).resolve().parent.parent
COMMITTED_SCHEMA = REPO / "schema.graphql"
CHAINLIT_TABLES = {"users", "threads", "steps", "elements", "feedbacks"}
CLI_TIMEOUT = 60
SERVER_START_TIMEOUT = 30
SERVER_STOP_TIMEOUT = 15


def _env(**settings: str) -> dict[str, str]:
    """The environment without any GATEWAY_* setting of the machine, plus the given ones."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env.update({f"GATEWAY_{name.upper()}": value for name, value in settings.items()})
    return env


def gateway(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=cwd,
        env=_env(**settings),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def test_schema_prints_the_committed_sdl(tmp_path: Path) -> None:
    result = gateway("schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    committed = COMMITTED_SCHEMA.read_text()
    if result.stdout != committed:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                result.stdout.splitlines(keepends=True),
                "schema.graphql (committed)",
                "gateway schema (generated)",
            )
        )
        pytest.fail(
            "schema.graphql differs from the schema the code generates. If the change is intended, "
            "regenerate it with `gateway schema > schema.graphql` and commit it.\n" + diff[:6000],
            pytrace=False,
        )


def _sqlite_schema(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT type, name, COALESCE(sql, '') FROM sqlite_master ORDER BY type, name"
        ).fetchall()
    connection.close()
    return [(str(kind), str(name), str(sql)) for kind, name, sql in rows]


def test_migrate_creates_a_fresh_sqlite_database_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    url = f"sqlite+aiosqlite:///{path}"
    head = head_revision()

    first = gateway("migrate", cwd=tmp_path, database_url=url)
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    assert f"to revision {head}" in first.stdout, first.stdout
    assert path.exists()
    schema = _sqlite_schema(path)
    tables = {name for kind, name, _ in schema if kind == "table"}
    assert CHAINLIT_TABLES | {"gateway_alembic_version"} <= tables, tables
    indexes = {name for kind, name, _ in schema if kind == "index"}
    assert {"ix_threads_userId_updatedAt_id", "ix_steps_threadId_createdAt_id", "ux_feedbacks_forId"} <= (
        indexes
    )
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version_num FROM gateway_alembic_version").fetchall() == [(head,)]
        columns = {row[1] for row in connection.execute('PRAGMA table_info("threads")')}
        assert "updatedAt" in columns
    connection.close()

    second = gateway("migrate", cwd=tmp_path, database_url=url)
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    assert f"already at revision {head}" in second.stdout, second.stdout
    assert _sqlite_schema(path) == schema, "a second migrate changed the schema"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """`gateway serve` as a child process, its stderr read line by line in the background."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def drain(self) -> str:
        while True:
            try:
                self.output.append(self.lines.get_nowait())
            except queue.Empty:
                return "".join(self.output)

    def wait_for_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"gateway serve exited with {self.process.returncode}:\n{self.drain()}")
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.output.append(line)
            if text in line:
                return line
        pytest.fail(f"gateway serve did not print {text!r} within {timeout} s:\n{self.drain()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=SERVER_STOP_TIMEOUT)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"],
        cwd=tmp_path,
        env=_env(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'served.db'}",
            storage_url=f"file://{tmp_path / 'files'}",
            host="127.0.0.1",
            port=str(port),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Server(process)
    try:
        yield running, f"http://127.0.0.1:{port}"
    finally:
        running.stop()


def _wait_until_healthy(client: httpx.Client, server: Server, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"gateway serve exited with {server.process.returncode}:\n{server.drain()}")
        try:
            return client.get("/healthz")
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"gateway serve did not answer /healthz within {timeout} s:\n{server.drain()}")


def test_serve_answers_over_http_and_stops_on_sigterm(server: tuple[Server, str]) -> None:
    running, base_url = server
    line = running.wait_for_line("GraphiQL", SERVER_START_TIMEOUT)
    assert f"{base_url}/graphql" in line, line

    with httpx.Client(base_url=base_url, timeout=10) as client:
        health = _wait_until_healthy(client, running, SERVER_START_TIMEOUT)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}

        # The fresh database was migrated at start: a write and a read go through.
        thread_id = "018f0000-0000-7000-8000-000000000001"
        response = client.post(
            "/graphql",
            json={
                "query": "mutation($id: ID!) { "
                'upsertThread(input: {id: $id, name: "Over HTTP", tags: ["cli"]}) { id name tags } }',
                "variables": {"id": thread_id},
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"] == {
            "upsertThread": {"id": thread_id, "name": "Over HTTP", "tags": ["cli"]}
        }
        response = client.post(
            "/graphql", json={"query": "{ threads { totalCount edges { node { id name } } } }"}
        )
        assert response.status_code == 200, response.text
        assert "errors" not in response.json(), response.text
        threads = response.json()["data"]["threads"]
        assert threads == {"totalCount": 1, "edges": [{"node": {"id": thread_id, "name": "Over HTTP"}}]}
        assert response.headers.get("x-request-id")

        page = client.get("/graphql", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "graphiql" in page.text.lower()

    running.process.send_signal(signal.SIGTERM)
    try:
        code = running.process.wait(timeout=SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gateway serve did not stop {SERVER_STOP_TIMEOUT} s after SIGTERM:\n{running.drain()}")
    running._reader.join(timeout=5)
    output = running.drain()
    # Uvicorn shuts down gracefully, then re-raises the signal it caught (so a supervisor sees
    # "terminated by SIGTERM"): either that or 0 is a clean exit, after the lifespan's shutdown.
    assert code in (0, -signal.SIGTERM), f"gateway serve exited with {code} on SIGTERM:\n{output}"
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output and "ERROR" not in output, output
