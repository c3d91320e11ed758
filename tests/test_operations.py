"""What operators and browser frontends rely on, over HTTP: CORS, liveness and readiness, Prometheus
metrics, rate limits and traces."""

import asyncio
import contextlib
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from gateway.config import Settings
from gateway.metrics import MAX_OPERATION_NAMES
from gateway.migrate import upgrade_database
from tests.conftest import (
    QUIET_REAPER,
    TEST_API_KEY,
    Api,
    client_of,
    create_postgres_database,
    drop_postgres_database,
    new_uuid,
    running,
    secured_settings,
    user_token,
)

FRONTEND = "http://localhost:3000"
KEY = {"Authorization": f"Bearer {TEST_API_KEY}"}


@contextlib.asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[Api]:
    async with running(settings) as application, client_of(application) as api:
        yield api


# CORS ----------------------------------------------------------------------------------------


async def test_a_listed_origin_s_preflight_is_answered_without_credentials(database_url: str) -> None:
    async with gateway(
        secured_settings(database_url, cors_origins=f"{FRONTEND}, https://chat.example.com")
    ) as api:
        response = await api.http.options(
            "/graphql",
            headers={
                "Origin": FRONTEND,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, apollo-require-preflight",
            },
        )
        assert response.status_code in (200, 204), response.text
        assert response.headers["access-control-allow-origin"] == FRONTEND
        assert {"GET", "POST"} <= {
            m.strip() for m in response.headers["access-control-allow-methods"].split(",")
        }
        allowed = response.headers["access-control-allow-headers"].lower()
        for header in (
            "authorization",
            "content-type",
            "apollo-require-preflight",
            "x-apollo-operation-name",
        ):
            assert header in allowed, allowed
        assert int(response.headers["access-control-max-age"]) > 0

        # The real request carries the headers a browser needs to hand the answer to the page.
        answer = await api.http.post(
            "/graphql", json={"query": "{ viewer { id } }"}, headers={"Origin": FRONTEND, **KEY}
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == FRONTEND
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


async def test_an_unlisted_origin_gets_no_cors_headers(database_url: str) -> None:
    async with gateway(secured_settings(database_url, cors_origins=FRONTEND)) as api:
        preflight = await api.http.options(
            "/graphql",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers
        answer = await api.http.post(
            "/graphql", json={"query": "{ viewer { id } }"}, headers={"Origin": "https://evil.example", **KEY}
        )
        assert "access-control-allow-origin" not in answer.headers


def test_a_wildcard_origin_is_refused() -> None:
    with pytest.raises(ValidationError, match="`\\*` is not accepted"):
        Settings(cors_origins="*")


# Liveness and readiness ------------------------------------------------------------------------


async def test_readiness_names_the_object_store_while_it_is_unusable(
    database_url: str, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    settings = secured_settings(database_url, storage_url=f"file://{files}")
    async with gateway(settings) as api:
        ready = await api.http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}

        shutil.rmtree(files, ignore_errors=True)
        files.write_text("a file where the directory should be")  # like a volume not mounted
        down = await api.http.get("/readyz")
        assert down.status_code == 503
        assert set(down.json()["failed"]) == {"storage"}, down.json()
        assert (await api.http.get("/healthz")).status_code == 200  # alive: no reason to restart

        files.unlink()
        assert (await api.http.get("/readyz")).status_code == 200


class TcpProxy:
    """Forwards a local port to PostgreSQL, and can cut every connection (the database is down)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_readiness_names_the_database_while_it_is_unreachable_and_recovers() -> None:
    url = await create_postgres_database()
    proxy = TcpProxy(make_url(url).port or 5432)
    try:
        await upgrade_database(url)
        await proxy.start()
        through_proxy = make_url(url).set(port=proxy.port).render_as_string(hide_password=False)
        settings = Settings(
            database_url=through_proxy,
            auto_migrate=False,
            reaper_interval_seconds=QUIET_REAPER,
            api_keys=TEST_API_KEY,
        )
        async with gateway(settings) as api:
            assert (await api.http.get("/readyz")).status_code == 200

            await proxy.stop()
            down = await api.http.get("/readyz")
            assert down.status_code == 503
            assert set(down.json()["failed"]) == {"database"}, down.json()
            assert (await api.http.get("/healthz")).status_code == 200

            await proxy.start()  # the same port again
            for _ in range(20):
                if (await api.http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.25)
            assert (await api.http.get("/readyz")).status_code == 200
    finally:
        with contextlib.suppress(Exception):
            await proxy.stop()
        await drop_postgres_database(url)


# Metrics ------------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await api.http.get("/metrics", headers=KEY)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def requests_of(metrics: dict[Any, float], operation: str, kind: str, outcome: str) -> float:
    labels = (("operation", operation), ("outcome", outcome), ("type", kind))
    return metrics.get(("gateway_requests_total", labels), 0.0)


async def test_metrics_count_requests_by_operation_outcome_and_error_code(database_url: str) -> None:
    async with gateway(secured_settings(database_url)) as api:
        backend = api.with_headers(**KEY)
        before = await scrape(api)
        for _ in range(2):
            await backend.ok("query History { threads(first: 5) { edges { node { id } } } }")
        await backend.ok("{ viewer { id } }")
        assert await backend.code('query Broken { thread(id: "not-a-uuid") { id } }') == "BAD_USER_INPUT"
        await api.http.post("/graphql", json={"query": "{ viewer { id } }"})  # no credentials
        after = await scrape(api)

    def delta(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert requests_of(after, "History", "query", "ok") - requests_of(before, "History", "query", "ok") == 2
    assert (
        requests_of(after, "(anonymous)", "query", "ok") - requests_of(before, "(anonymous)", "query", "ok")
        == 1
    )
    broken = ("Broken", "query", "client_error")
    assert requests_of(after, *broken) - requests_of(before, *broken) == 1
    assert delta(("gateway_errors_total", (("code", "BAD_USER_INPUT"),))) == 1
    assert delta(("gateway_errors_total", (("code", "UNAUTHENTICATED"),))) == 1
    history = (("operation", "History"), ("outcome", "ok"), ("type", "query"))
    assert delta(("gateway_request_duration_seconds_count", history)) == 2
    assert delta(("gateway_request_sql_statements_count", ())) >= 4
    assert delta(("gateway_request_sql_statements_sum", ())) >= 2  # the two History queries' reads
    pools = {labels for name, labels in after if name == "gateway_db_pool_connections_in_use"}
    assert pools, "no pool gauge"
    assert any(name == "gateway_db_pool_waiting" for name, _ in after)
    assert ("gateway_object_deletions_pending", ()) in after
    assert ("gateway_uploads_pending", ()) in after


async def test_operation_names_fold_into_one_label_past_the_bound(database_url: str) -> None:
    async with gateway(secured_settings(database_url)) as api:
        backend = api.with_headers(**KEY)
        for index in range(MAX_OPERATION_NAMES + 5):
            await backend.ok(f"query Name{index} {{ viewer {{ id }} }}")
        metrics = await scrape(api)
    names = {dict(labels)["operation"] for name, labels in metrics if name == "gateway_requests_total"}
    assert "(other)" in names
    assert len([name for name in names if name.startswith("Name")]) <= MAX_OPERATION_NAMES


async def test_metrics_are_for_api_keys_only(database_url: str) -> None:
    async with gateway(secured_settings(database_url)) as api:
        assert (await api.http.get("/metrics")).status_code == 401
        token = {"Authorization": f"Bearer {user_token('alice')}"}
        assert (await api.http.get("/metrics", headers=token)).status_code == 403
        assert (await api.http.get("/metrics", headers=KEY)).status_code == 200


async def test_metrics_in_open_mode_answer_local_callers_only(app: Starlette) -> None:
    async with client_of(app) as local:
        assert (await local.http.get("/metrics")).status_code == 200
    async with client_of(app, client_host="192.0.2.7") as remote:
        assert (await remote.http.get("/metrics")).status_code == 401


# Rate limits --------------------------------------------------------------------------------


async def test_a_caller_over_its_rate_gets_429_and_others_are_unaffected(database_url: str) -> None:
    async with gateway(secured_settings(database_url, rate_limit="3/minute")) as api:
        backend = api.with_headers(**KEY)
        for _ in range(3):
            await backend.ok("{ viewer { id } }")
        refused = await backend.post("{ viewer { id } }")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        error = refused.json()["errors"][0]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert "3 requests per 60 s" in error["message"]

        user = api.with_headers(Authorization=f"Bearer {user_token('bob')}")
        assert (await user.ok("{ viewer { identifier } }")) == {"viewer": {"identifier": "bob"}}


def test_a_malformed_rate_is_refused() -> None:
    with pytest.raises(ValidationError, match="600/minute"):
        Settings(rate_limit="lots")


# Traces -------------------------------------------------------------------------------------


@pytest.fixture
def otlp_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """A real OTLP/HTTP endpoint: the spans the gateway exports, decoded."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans: list[Any] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    spans.extend(scope.spans)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    try:
        yield spans
    finally:
        server.shutdown()


async def test_a_traced_request_has_its_operation_request_id_and_sql_spans(
    tmp_path: Path, otlp_receiver: list[Any]
) -> None:
    # One database suffices: the spans come from the ASGI and SQLAlchemy instrumentations, and the
    # process's tracer provider (made once) exports to this receiver.
    from gateway import tracing

    url = f"sqlite+aiosqlite:///{tmp_path / 'traced.db'}"
    await upgrade_database(url)
    async with gateway(secured_settings(url)) as api:
        response = await api.with_headers(**KEY).post("query Recent { threads(first: 3) { totalCount } }")
        assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    tracing.flush()
    server = [span for span in otlp_receiver if span.name == "query Recent"]
    assert len(server) == 1, [span.name for span in otlp_receiver]
    attributes = {item.key: item.value.string_value for item in server[0].attributes}
    assert attributes["gateway.request_id"] == request_id
    assert attributes["graphql.operation.name"] == "Recent"
    sql = [
        span
        for span in otlp_receiver
        if span.trace_id == server[0].trace_id and span.name.split()[0] in ("SELECT", "WITH")
    ]
    assert sql, [span.name for span in otlp_receiver if span.trace_id == server[0].trace_id]


async def test_metrics_follow_pending_uploads_and_count_one_request_s_statements(database_url: str) -> None:
    async with gateway(secured_settings(database_url)) as api:
        backend = api.with_headers(**KEY)
        thread = new_uuid()
        await backend.ok(f'mutation {{ upsertThread(input: {{id: "{thread}", name: "t"}}) {{ id }} }}')
        before = await scrape(api)
        await backend.ok(
            "mutation($i: ElementInput!) { requestElementUpload(input: $i) { elementId } }",
            i={"threadId": thread, "name": "big.bin"},
        )
        middle = await scrape(api)
        assert middle[("gateway_uploads_pending", ())] == before[("gateway_uploads_pending", ())] + 1

        await backend.ok(
            "query One($id: ID!) { thread(id: $id) { steps(last: 10) { edges { node { id } } } } }", id=thread
        )
        after = await scrape(api)
    ran = (
        after[("gateway_request_sql_statements_sum", ())] - middle[("gateway_request_sql_statements_sum", ())]
    )
    assert (
        after[("gateway_request_sql_statements_count", ())]
        - middle[("gateway_request_sql_statements_count", ())]
        == 1
    )
    assert 1 <= ran <= 3, ran  # one request's reads, each level one statement
