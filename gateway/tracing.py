"""OpenTelemetry traces (the `otel` extra), on when OTEL_EXPORTER_OTLP_ENDPOINT is set: a span per
HTTP request (the ASGI instrumentation) named after the GraphQL operation and carrying the request
id, with a child span per SQL statement (the SQLAlchemy instrumentation). Exported over OTLP/HTTP;
the standard OTEL_* variables (service name, headers, sampler...) apply.
"""

import logging
import os
from typing import Any

from starlette.applications import Starlette

from gateway.database import Database

logger = logging.getLogger("gateway.tracing")
_provider: Any = None  # one TracerProvider per process, made by the first app that traces


def tracing_requested() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _tracer_provider() -> Any:
    global _provider
    if _provider is None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        service = os.environ.get("OTEL_SERVICE_NAME", "conversation-gateway")
        _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(_provider)
    return _provider


def tracing_enabled() -> bool:
    """Asked for (OTEL_EXPORTER_OTLP_ENDPOINT) and possible (the otel extra is installed)."""
    if not tracing_requested():
        return False
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.instrumentation.asgi
        import opentelemetry.instrumentation.sqlalchemy  # noqa: F401
    except ImportError:
        logger.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but the otel extra is not installed: no traces "
            "(pip install 'conversation-gateway[otel]')"
        )
        return False
    return True


def instrument(app: Starlette, db: Database) -> None:
    """Trace `app`'s requests and `db`'s statements (when tracing_enabled())."""
    from opentelemetry import metrics
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    provider = _tracer_provider()
    tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    usage = metrics.get_meter("gateway").create_up_down_counter("db.client.connections.usage")
    for engine in db.engines:
        # Per engine rather than SQLAlchemyInstrumentor().instrument(), which patches engine
        # creation for the whole process, once.
        EngineTracer(tracer, engine.sync_engine, usage)  # type: ignore[no-untyped-call]
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)
    logger.info("tracing: spans go to %s", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def annotate_span(operation: str | None, operation_type: str | None, request_id: str | None) -> None:
    """Name the request's span after its GraphQL operation, and give it the request id."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return
    if operation_type:
        span.update_name(f"{operation_type} {operation or '(anonymous)'}")
        span.set_attribute("graphql.operation.type", operation_type)
    if operation:
        span.set_attribute("graphql.operation.name", operation)
    if request_id:
        span.set_attribute("gateway.request_id", request_id)


def current_trace_id() -> str | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def flush() -> None:
    if _provider is not None:
        _provider.force_flush()
