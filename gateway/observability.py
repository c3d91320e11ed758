"""What operators see of each request: one log line (text or JSON), the metrics of gateway.metrics,
and the request id in every log record written while the request runs.

The work per request is a few clock reads and dictionary lookups: the GraphQL operation's name and
type come from strawberry's execution context (`OperationInfo`), which has parsed the document
already, and SQL statements are counted by a listener on the engines.
"""

import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from gateway.database import Database

if TYPE_CHECKING:  # gateway.metrics imports this module
    from gateway.metrics import GatewayMetrics

access_logger = logging.getLogger("gateway.access")
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


@dataclass
class RequestRecord:
    """What one request did, filled in while it runs (kept in the ASGI scope's state)."""

    operation: str | None = None
    operation_type: str | None = None
    error_codes: list[str] = field(default_factory=list)
    sql_statements: int = 0


_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("record", default=None)


def current_record() -> RequestRecord | None:
    return _current.get()


class OperationInfo(SchemaExtension):
    """Records the operation's name, type and error codes for the log and the metrics. Listed
    first among the schema's extensions, so it sees the codes `ErrorCodes` gave the errors."""

    def on_operation(self) -> Iterator[None]:
        yield
        record = _current.get()
        if record is None:
            return
        context = self.execution_context
        record.operation = context.operation_name
        if context.graphql_document is not None:
            with contextlib.suppress(RuntimeError):  # no operation of that name in the document
                record.operation_type = context.operation_type.value
        errors = getattr(context.result, "errors", None) or []
        record.error_codes.extend(str((error.extensions or {}).get("code", "")) for error in errors)


_TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def count_statements(db: Database) -> None:
    """Count the SQL statements each request runs (into its RequestRecord)."""

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        current = _current.get()
        if current is not None and not statement.lstrip()[:9].upper().startswith(_TRANSACTION_CONTROL):
            current.sql_statements += 1

    for engine in db.engines:
        event.listen(engine.sync_engine, "before_cursor_execute", record)


def outcome_of(status: int, codes: list[str]) -> str:
    if status >= 500 or "INTERNAL_SERVER_ERROR" in codes:
        return "server_error"
    if status >= 400 or codes:
        return "client_error"
    return "ok"


class ObserveRequests:
    """ASGI middleware: times each HTTP request, then logs it and feeds the metrics."""

    def __init__(self, app: ASGIApp, metrics: "GatewayMetrics | None" = None, traced: bool = False) -> None:
        self.app = app
        self.metrics = metrics  # None when metrics are off
        self.traced = traced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record = RequestRecord()
        record_token = _current.set(record)
        id_token = request_id_var.set(scope.get("state", {}).get("request_id"))
        status = 500
        trace_id: str | None = None

        async def send_status(message: Message) -> None:
            nonlocal status, trace_id
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.traced:  # now: the request's span ends with the response's last byte
                    trace_id = self._annotate_span(scope, record)
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            duration = time.perf_counter() - started
            self._observe(scope, record, status, duration, trace_id)
            request_id_var.reset(id_token)
            _current.reset(record_token)

    @staticmethod
    def _annotate_span(scope: Scope, record: RequestRecord) -> str | None:
        from gateway import tracing

        tracing.annotate_span(record.operation, record.operation_type, scope["state"].get("request_id"))
        return tracing.current_trace_id()

    def _observe(
        self, scope: Scope, record: RequestRecord, status: int, duration: float, trace_id: str | None
    ) -> None:
        state = scope.get("state", {})
        caller = state.get("caller")
        codes = record.error_codes or state.get("error_codes", [])
        outcome = outcome_of(status, codes)
        # GraphQL requests, also those refused before running (unauthenticated, rate limited...);
        # not the GraphiQL page (its caller is "nobody") nor CORS preflights.
        is_operation = (
            scope["path"] == "/graphql"
            and scope["method"] in ("GET", "POST")
            and (caller is None or caller.kind.value != "nobody")
        )
        if self.metrics is not None and is_operation:
            self.metrics.observe_request(record, codes, outcome, duration)
        if not access_logger.isEnabledFor(logging.INFO):
            return
        operation = record.operation if is_operation else None
        caller_kind = caller.kind.value if caller is not None else None
        access_logger.info(
            "%s %s %s %.1f ms operation=%s caller=%s outcome=%s",
            scope["method"],
            scope["path"],
            status,
            duration * 1000,
            operation or "-",
            caller_kind or "-",
            outcome,
            extra={
                "operation": operation,
                "operation_type": record.operation_type if is_operation else None,
                "caller": caller_kind,
                "status": status,
                "duration_ms": round(duration * 1000, 2),
                "outcome": outcome,
                "error_codes": codes or None,
                "sql_statements": record.sql_statements,
                "trace_id": trace_id,
            },
        )


class RequestIdFilter(logging.Filter):
    """Puts the running request's id on every log record (`-` outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


# Attributes of the access log line that the JSON format writes as fields of their own.
_FIELDS = (
    "request_id",
    "operation",
    "operation_type",
    "caller",
    "status",
    "duration_ms",
    "outcome",
    "error_codes",
    "sql_statements",
    "trace_id",
)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "-":
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """The root logger's one handler, in the chosen format; uvicorn's loggers write through it."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    if level.upper() != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)
