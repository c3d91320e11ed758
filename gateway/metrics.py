"""Prometheus metrics at /metrics (prometheus-client).

With `gateway serve --workers N` every worker writes its samples to files in
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, which the CLI sets up), and any
worker answering /metrics reports the sum over all of them.
"""

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth import Authenticator, CallerKind
from gateway.database import Database
from gateway.errors import Unauthenticated
from gateway.observability import RequestRecord
from gateway.tables import ObjectDeletion, PendingUpload

POOL_SAMPLE_SECONDS = 1.0  # the pool gauges follow requests at most this often (and at each scrape)
MAX_OPERATION_NAMES = 100  # distinct operation labels per process; more fold into OTHER
ANONYMOUS = "(anonymous)"
OTHER = "(other)"
_LABELS = ("operation", "type", "outcome")

REQUESTS = Counter("gateway_requests_total", "GraphQL requests, by operation, type and outcome", _LABELS)
DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time to answer a GraphQL request",
    _LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ERRORS = Counter("gateway_errors_total", "Errors in GraphQL responses, by extensions.code", ("code",))
SQL_STATEMENTS = Histogram(
    "gateway_request_sql_statements",
    "SQL statements one GraphQL request ran",
    buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
POOL_IN_USE = Gauge(
    "gateway_db_pool_connections_in_use",
    "Database connections checked out of the pool",
    ("pool",),
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "gateway_db_pool_waiting",
    "Requests waiting for a database connection",
    ("pool",),
    multiprocess_mode="livesum",
)
DELETIONS_PENDING = Gauge(
    "gateway_object_deletions_pending",
    "Stored objects whose deletion is still to be done (or retried)",
    multiprocess_mode="livemostrecent",
)
UPLOADS_PENDING = Gauge(
    "gateway_uploads_pending",
    "Element uploads requested and not completed yet",
    multiprocess_mode="livemostrecent",
)

SUBSCRIPTIONS = Gauge(
    "gateway_subscriptions",
    "Subscriptions open (WebSocket and Server-Sent Events)",
    multiprocess_mode="livesum",
)
EVENTS_SENT = Counter(
    "gateway_subscription_events_sent_total", "Events sent to subscribers (one per subscriber)"
)
SUBSCRIBERS_TOO_SLOW = Counter(
    "gateway_subscribers_too_slow_total", "Subscriber connections closed for falling too far behind"
)


class OperationLabels:
    """Operation names as label values, bounded: an unnamed operation is ANONYMOUS, and once
    MAX_OPERATION_NAMES names were seen, new ones are OTHER (clients choose names freely)."""

    def __init__(self, limit: int = MAX_OPERATION_NAMES) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, name: str | None) -> str:
        if not name:
            return ANONYMOUS
        if name in self._seen:
            return name
        if len(self._seen) >= self.limit:
            return OTHER
        self._seen.add(name)
        return name


def _pool_state(engine: AsyncEngine) -> tuple[int, int]:
    """(connections in use, requests waiting for one) of a QueuePool."""
    pool: Any = engine.sync_engine.pool
    in_use = pool.checkedout() if hasattr(pool, "checkedout") else 0
    # SQLAlchemy exposes no count of waiters: its async queue wraps an asyncio.Queue, whose
    # pending getters are the waiting requests.
    queue = getattr(getattr(pool, "_pool", None), "_queue", None)
    waiting = len(getattr(queue, "_getters", ()) or ())
    return int(in_use), waiting


class GatewayMetrics:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.operations = OperationLabels()
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._pools_sampled = -float("inf")
        if db.read_engine is db.engine:
            self.pools = {"main": db.engine}
        else:
            self.pools = {"write": db.engine, "read": db.read_engine}

    def observe_request(self, record: RequestRecord, codes: list[str], outcome: str, duration: float) -> None:
        labels = (self.operations(record.operation), record.operation_type or "none", outcome)
        children = self._children.get(labels)
        if children is None:  # labels() takes a lock and builds a key: once per label set
            children = self._children[labels] = (REQUESTS.labels(*labels), DURATION.labels(*labels))
        children[0].inc()
        children[1].observe(duration)
        for code in codes:
            ERRORS.labels(code or "NONE").inc()
        SQL_STATEMENTS.observe(record.sql_statements)
        now = time.monotonic()
        if now - self._pools_sampled > POOL_SAMPLE_SECONDS:
            self._sample_pools()
            self._pools_sampled = now

    def _sample_pools(self) -> None:
        for name, engine in self.pools.items():
            in_use, waiting = _pool_state(engine)
            POOL_IN_USE.labels(name).set(in_use)
            POOL_WAITING.labels(name).set(waiting)

    async def _sample_backlog(self) -> None:
        async with self.db.session() as session:
            deletions = await session.scalar(sa.select(sa.func.count()).select_from(ObjectDeletion))
            uploads = await session.scalar(sa.select(sa.func.count()).select_from(PendingUpload))
        DELETIONS_PENDING.set(deletions or 0)
        UPLOADS_PENDING.set(uploads or 0)

    async def exposition(self) -> bytes:
        """The metrics in Prometheus' text format: of this process, or of every worker."""
        self._sample_pools()
        await self._sample_backlog()
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(REGISTRY)


def metrics_route(metrics: GatewayMetrics, auth: Authenticator) -> Callable[[Request], Awaitable[Response]]:
    """/metrics, for operators: a backend's API key, or a local developer in open mode (user
    tokens are refused: a frontend's user has no business reading the server's figures)."""

    async def serve_metrics(request: Request) -> Response:
        try:
            caller = await auth.authenticate(request.headers, request.client.host if request.client else None)
        except Unauthenticated as error:
            return _refusal(error.message, error.code, 401)
        if caller.kind not in (CallerKind.BACKEND, CallerKind.DEVELOPER):
            return _refusal("metrics need an API key, not a user's token", "FORBIDDEN", 403)
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return serve_metrics


def _refusal(message: str, code: str, status: int) -> JSONResponse:
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]}, status)


def mark_worker_dead() -> None:
    """A worker stops: its live gauges leave the sums (multiprocess mode only)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
