"""The ASGI application: GraphQL (and GraphiQL) at /graphql, liveness at /healthz, readiness at
/readyz, Prometheus metrics at /metrics.

Before a GraphQL request reaches the schema it is checked here: a multipart or form request must
carry a header browsers cannot send cross-site without a preflight (CSRF), the body must fit the
size cap, and the caller must authenticate (only the GraphiQL page itself is served to anyone).
"""

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from cross_web import HTTPException
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from gateway import graphiql
from gateway.attachments import Attachments, UploadPolicy
from gateway.auth import NOBODY, Authenticator
from gateway.config import Settings
from gateway.data import object_deletions
from gateway.database import Database
from gateway.errors import BadUserInput, GatewayError, PayloadTooLarge
from gateway.events import EventHub
from gateway.health import readiness_route
from gateway.ids import new_id
from gateway.jsonops import to_json_bytes
from gateway.live import LiveService, LiveSettings, serve_sse, serve_websocket
from gateway.metrics import GatewayMetrics, mark_worker_dead, metrics_route
from gateway.migrate import upgrade_database
from gateway.observability import ObserveRequests, count_statements, current_record
from gateway.ratelimit import RateLimiter
from gateway.reaper import ObjectReaper
from gateway.storage import FILES_ROUTE, LocalStore, configured_store, content_disposition
from gateway.timestamps import utc_now
from gateway.tracing import instrument, tracing_enabled
from gateway.unit_of_work import OUTAGE_MESSAGE, is_outage
from gateway.validation import loads_strict
from resolvers.compiled import CompiledAnswer, CompiledReads
from resolvers.context import GatewayContext
from resolvers.extensions import RETRY_AFTER_SECONDS
from resolvers.limits import Limits
from resolvers.schema import schema

logger = logging.getLogger("gateway")

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Content types a browser may POST cross-site without a CORS preflight ("simple requests").
_SIMPLE_CONTENT_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded", "text/plain")
# Headers of Apollo's CSRF prevention, which upload clients (apollo-upload-client...) already send.
PREFLIGHT_HEADERS = ("apollo-require-preflight", "x-apollo-operation-name")
MULTIPART_OVERHEAD = 1024 * 1024  # the operations and map fields of an upload request
HTTP_STATUS = {
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "PAYLOAD_TOO_LARGE": 413,
    "RATE_LIMITED": 429,
    "SERVICE_UNAVAILABLE": 503,
}


class RequestIdMiddleware:
    """Give each request an id (the client's `X-Request-ID` when it is sane), echoed in the response
    and quoted in masked errors and the log, so a user's report leads to the trace."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_REQUEST_ID.fullmatch(given) else new_id()
        scope.setdefault("state", {})["request_id"] = request_id
        if scope["type"] == "websocket":  # no response headers; and not a wrapper on every event sent
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


class GatewayGraphQL(GraphQL[GatewayContext, None]):
    def __init__(
        self,
        db: Database,
        auth: Authenticator,
        limits: Limits,
        attachments: Attachments,
        max_body_bytes: int,
        compiled_reads: CompiledReads | None = None,
        verify_compiled_reads: bool = False,
        rate_limiter: RateLimiter | None = None,
        live: LiveService | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(schema, multipart_uploads_enabled=True, **kwargs)
        self.db = db
        self.auth = auth
        self.limits = limits
        self.attachments = attachments
        self.max_body_bytes = max_body_bytes
        self.compiled_reads = compiled_reads
        self.verify_compiled_reads = verify_compiled_reads
        self.rate_limiter = rate_limiter
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Requests that are no GraphQL request (no query, a body that is not JSON, variables that
        are not an object) get a GraphQL error with a code too, not strawberry's plain text."""
        if scope["type"] != "http":  # not routed here: WebSockets go to gateway.live
            await super().__call__(scope, receive, send)
            return
        try:
            request = Request(scope=scope, receive=receive)
            if self._is_ide_page(request):
                scope["state"]["caller"] = NOBODY  # the page runs no operation
            else:
                _check_preflight(request)
                scope["state"]["caller"] = await self.auth.authenticate(
                    request.headers, request.client.host if request.client else None
                )
                if self.rate_limiter is not None:
                    self.rate_limiter.check(scope["state"]["caller"])
            capped = Request(scope=scope, receive=self._capped(request, receive))
            if self.live is not None and _wants_event_stream(request):
                response = await serve_sse(
                    self.live, capped, scope["state"]["caller"], await _sse_payload(capped)
                )
            else:
                response = await self._compiled(capped) or await self.run(capped)
        except GatewayError as error:
            scope["state"]["error_codes"] = [error.code]  # for the log and the metrics
            response = _error_response(
                error.message, error.code, HTTP_STATUS.get(error.code, 400), **error.extensions
            )
            if error.code == "UNAUTHENTICATED":
                response.headers["WWW-Authenticate"] = "Bearer"
            if "retryAfter" in error.extensions:
                response.headers["Retry-After"] = str(error.extensions["retryAfter"])
        except HTTPException as error:
            response = _error_response(error.reason, "BAD_USER_INPUT", error.status_code)
        except Exception as error:
            # Whatever escaped the schema's own handling: an outage while authenticating (API keys
            # and users are in the database) is worth retrying; anything else is a bug.
            request_id = scope["state"]["request_id"]
            if is_outage(error):
                logger.warning("database unreachable before GraphQL (request %s): %r", request_id, error)
                response = _error_response(OUTAGE_MESSAGE, "SERVICE_UNAVAILABLE", 503, retryable=True)
                response.headers["Retry-After"] = RETRY_AFTER_SECONDS
                await response(scope, receive, send)
                return
            logger.exception("unexpected error outside GraphQL execution (request %s)", request_id)
            response = _error_response(
                f"Internal server error. Quote request id {request_id} when reporting it.",
                "INTERNAL_SERVER_ERROR",
                500,
                requestId=request_id,
            )
        await response(scope, receive, send)

    async def _compiled(self, request: Request) -> Response | None:
        """The answer of the compiled read path, or None for the resolvers to answer (anything
        but a JSON POST of a query operation it covers)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if self.compiled_reads is None or request.method != "POST" or content_type != "application/json":
            return None
        try:  # the body parsed as the resolvers' path parses it (exact integers, strict JSON)
            payload = loads_strict(await request.body())
        except ValueError:
            return None  # the resolvers' path answers the refusal
        context = await self.get_context(request, None)  # type: ignore[arg-type]

        async def answer() -> CompiledAnswer | None:
            assert self.compiled_reads is not None
            return await self.compiled_reads.execute(
                query=payload.get("query"),
                variables=payload.get("variables"),
                operation_name=payload.get("operationName"),
                context=context,
            )

        compiled = await answer()
        if compiled is None:
            return None
        record = current_record()
        if record is not None:  # what OperationInfo records of the resolvers' operations
            record.operation, record.operation_type = compiled.operation, compiled.operation_type
            record.error_codes.extend(compiled.error_codes)
        if compiled.status == 503:  # an outage, nothing done: worth retrying (see ErrorCodes)
            headers = {"Retry-After": RETRY_AFTER_SECONDS}
            return Response(compiled.body, 503, headers=headers, media_type="application/json")
        if self.verify_compiled_reads and compiled.operation_type == "query":  # a write runs once
            return await self._verified(request, compiled, answer)
        return Response(compiled.body, media_type="application/json")

    async def _verified(
        self,
        request: Request,
        compiled: CompiledAnswer | None,
        again: Callable[[], Awaitable[CompiledAnswer | None]],
    ) -> Response:
        """The compiled answer if the resolvers give the same JSON, else an error naming both.
        Element URLs are signed again by each path (their expiry may differ by a second). A write
        landing between the two runs makes them differ: both run again, up to three times."""
        expected = b""
        for _attempt in range(3):
            expected = bytes((await self.run(request)).body)
            if compiled is not None and _same_json(
                orjson.loads(compiled.body), orjson.loads(expected), set(compiled.signed_urls)
            ):
                return Response(compiled.body, media_type="application/json")
            compiled = await again()
        body = compiled.body if compiled is not None else b"(not compiled)"
        logger.error("compiled read differs: %s\ncompiled: %s\nresolvers: %s", request.url, body, expected)
        return _error_response(
            "the compiled read path answered differently from the resolvers",
            "COMPILED_READ_MISMATCH",
            500,
            compiled=body.decode(),
            resolvers=expected.decode(),
        )

    def encode_json(self, data: object) -> bytes:
        return to_json_bytes(data)

    async def render_graphql_ide(self, request: Request) -> Response:
        """The gateway's own GraphiQL page (gateway.graphiql): no asset from another host."""
        return HTMLResponse(
            graphiql.page(auth_required=self.auth.open_mode is False),
            headers={"Content-Security-Policy": graphiql.CONTENT_SECURITY_POLICY},
        )

    def decode_json(self, data: str | bytes) -> object:
        """Strict JSON (see gateway.validation.loads_strict): a body Python's lenient parser would
        take (NaN, a lone top-level string) or choke on (bad UTF-8, deep nesting) is a 400."""
        try:
            return loads_strict(data)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None

    def _is_ide_page(self, request: Request) -> bool:
        """A request strawberry answers with the GraphiQL page (static HTML; its own queries, with
        whatever headers the developer sets in it, are checked like any other)."""
        return self.graphql_ide is not None and self.should_render_graphql_ide(request)  # type: ignore[arg-type]

    def _capped(self, request: Request, receive: Receive) -> Receive:
        """`receive`, refusing a body over the cap: at once by its Content-Length, else as it streams.
        A multipart request (an upload) may be as large as an upload, plus its other fields."""
        cap = self.max_body_bytes
        if request.headers.get("content-type", "").lower().startswith("multipart/"):
            cap = self.attachments.policy.max_bytes + MULTIPART_OVERHEAD
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise _too_large(cap)
        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > cap:
                raise _too_large(cap)
            return message

        return receive_capped

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> GatewayContext:
        return GatewayContext(
            db=self.db,
            request_id=request.scope["state"]["request_id"],
            caller=request.scope["state"]["caller"],
            limits=self.limits,
            attachments=self.attachments,
            request=request,
            response=response,
            events=self.live.hub if self.live is not None else None,
        )


def _wants_event_stream(request: Request) -> bool:
    """A graphql-sse request (distinct connections mode): it accepts only an event stream."""
    accept = request.headers.get("accept", "").lower()
    return "text/event-stream" in accept and request.method in ("GET", "POST")


async def _sse_payload(request: Request) -> Any:
    """The subscription of a graphql-sse request: the JSON body, or a GET's query parameters."""
    if request.method == "GET":
        params = request.query_params
        try:
            variables = loads_strict(params["variables"]) if "variables" in params else None
        except ValueError as error:
            raise BadUserInput(f"`variables` is not JSON: {error}") from None
        return {
            "query": params.get("query"),
            "variables": variables,
            "operationName": params.get("operationName"),
        }
    try:
        return loads_strict(await request.body())
    except ValueError as error:
        raise BadUserInput(f"the body is not JSON: {error}") from None


def _same_json(compiled: Any, resolved: Any, signed_urls: set[str]) -> bool:
    """Equal JSON, but for element URLs the compiled path signed, which match any URL string."""
    if isinstance(compiled, str) and compiled in signed_urls:
        return isinstance(resolved, str)
    if isinstance(compiled, dict) and isinstance(resolved, dict):
        return compiled.keys() == resolved.keys() and all(
            _same_json(value, resolved[key], signed_urls) for key, value in compiled.items()
        )
    if isinstance(compiled, list) and isinstance(resolved, list):
        return len(compiled) == len(resolved) and all(
            _same_json(item, other, signed_urls) for item, other in zip(compiled, resolved, strict=True)
        )
    return bool(compiled == resolved)


def _too_large(cap: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is over the limit of {cap} bytes", maximum=cap)


def _check_preflight(request: Request) -> None:
    """Refuse what a web page could make a browser send cross-site without a preflight, unless it
    carries a header such a page cannot set (Apollo's CSRF prevention)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if (
        request.method == "POST"
        and content_type in _SIMPLE_CONTENT_TYPES
        and not any(request.headers.get(name) for name in PREFLIGHT_HEADERS)
    ):
        raise BadUserInput(
            f"a {content_type} request must carry a non-empty `Apollo-Require-Preflight` or "
            "`X-Apollo-Operation-Name` header (cross-site request forgery protection)"
        )


def _error_response(message: str, code: str, status: int, **extensions: object) -> JSONResponse:
    body = {"errors": [{"message": message, "extensions": {**extensions, "code": code}}]}
    return JSONResponse(body, status)


def local_file_route(store: LocalStore) -> Callable[[Request], Awaitable[Response]]:
    """Serves a local object to whoever holds a URL `read_url` signed, until it expires: with its
    content type and name, streamed from disk."""

    async def serve_file(request: Request) -> Response:
        key = request.path_params["key"]
        query = request.query_params
        expires, name, mime = query.get("expires", ""), query.get("name", ""), query.get("mime", "")
        signed = store.signer.valid(query.get("signature", ""), "GET", key, expires, name, mime)
        if not signed or not expires.isdigit() or int(expires) < time.time():
            return _error_response("the link is invalid or has expired", "FORBIDDEN", 403)
        try:
            path = store.path_of(key)
        except ValueError:
            return _error_response("the link is invalid or has expired", "FORBIDDEN", 403)
        if not path.is_file():
            return _error_response("the file does not exist (any more)", "NOT_FOUND", 404)
        headers = {
            "Content-Disposition": content_disposition(name, mime),
            "Cache-Control": "private, max-age=60",
            "X-Content-Type-Options": "nosniff",
        }
        if mime.split(";")[0].strip().lower() != "application/pdf":  # a sandbox stops PDF viewers
            # Opened in a tab, the file runs nothing and reaches nothing of the gateway's origin
            # (where GraphiQL keeps its token).
            headers["Content-Security-Policy"] = (
                "sandbox; default-src 'none'; img-src 'self'; media-src 'self'"
            )
        return FileResponse(path, media_type=mime or "application/octet-stream", headers=headers)

    return serve_file


def local_upload_route(
    store: LocalStore, policy: UploadPolicy, db: Database
) -> Callable[[Request], Awaitable[Response]]:
    """Takes the bytes of an upload `upload_url` signed (the local twin of a presigned S3 PUT),
    streamed to disk, up to GATEWAY_MAX_UPLOAD_BYTES, while the upload waits to be completed:
    once completed (or given up), its link can no longer replace or recreate the element's bytes."""

    async def receive_file(request: Request) -> Response:
        key = request.path_params["key"]
        expires = request.query_params.get("expires", "")
        signed = store.signer.valid(request.query_params.get("signature", ""), "PUT", key, expires)
        if not signed or not expires.isdigit() or int(expires) < time.time():
            return _error_response("the upload link is invalid or has expired", "FORBIDDEN", 403)
        async with db.session() as session:
            pending = await object_deletions.upload_is_pending(session, object_key=key, now=utc_now())
        if not pending:
            return _error_response("this upload was completed or given up already", "FORBIDDEN", 403)
        try:
            await store.put(
                key,
                request.stream(),
                content_type=request.headers.get("content-type"),
                max_bytes=policy.max_bytes,
            )
        except PayloadTooLarge as error:
            return _error_response(error.message, error.code, 413, **error.extensions)
        return Response(status_code=200)

    return receive_file


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    db = Database(settings.database_url)
    auth = Authenticator(settings, db)
    store = configured_store(settings)
    reaper = ObjectReaper(
        db, store, interval=settings.reaper_interval_seconds, retention_days=settings.retention_days
    )
    attachments = Attachments(
        store=store,
        reaper=reaper,
        policy=UploadPolicy.from_settings(settings),
        url_expiry_seconds=settings.url_expiry_seconds,
        public_url=settings.public_url,
    )

    # The event log is read on connections of its own: it never waits for a request's connection.
    events_db = Database(settings.database_url, pool_size=2)
    hub = EventHub(events_db, poll_seconds=settings.event_poll_seconds, retention=settings.event_retention)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            if settings.auto_migrate:
                await upgrade_database(settings.database_url)
            await auth.start()
            await store.start()
            await reaper.start()
            reaper.kick()  # deletions a previous run left to retry
            await hub.start()
            yield
        finally:
            await hub.stop()
            await events_db.dispose()
            await reaper.stop()
            mark_worker_dead()
            await store.close()
            await auth.close()
            await db.dispose()

    async def health(_request: Request) -> JSONResponse:
        """Liveness: the process answers (restart it when this fails); readiness is /readyz."""
        return JSONResponse({"status": "ok"})

    limits = Limits(
        max_depth=settings.max_query_depth,
        max_aliases=settings.max_query_aliases,
        max_tokens=settings.max_query_tokens,
        max_cost=settings.max_query_cost,
        introspection=settings.introspection,
    )
    compiled_reads = CompiledReads(schema, db, limits)
    live = LiveService(
        schema,
        db,
        hub,
        auth,
        limits,
        attachments,
        LiveSettings(
            retention=settings.event_retention,
            buffer=settings.subscription_buffer,
            auth_recheck_seconds=settings.subscription_auth_recheck_seconds,
            allowed_origins=tuple(settings.cors_origin_list),
        ),
    )

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await serve_websocket(live, websocket)

    graphql = GatewayGraphQL(
        db,
        auth,
        limits,
        attachments,
        settings.max_body_bytes,
        compiled_reads=compiled_reads if settings.compiled_reads else None,
        verify_compiled_reads=settings.compiled_reads_verify,
        rate_limiter=RateLimiter(*settings.rate) if settings.rate else None,
        graphql_ide="graphiql" if settings.graphiql else None,
        live=live,
    )
    metrics = GatewayMetrics(db) if settings.metrics else None
    count_statements(db)
    routes: list[BaseRoute] = [
        Route("/graphql", graphql),
        WebSocketRoute("/graphql", websocket_endpoint),
        Route("/healthz", health),
    ]
    routes.append(Route("/readyz", readiness_route(db, store)))
    if metrics is not None:
        routes.append(Route("/metrics", metrics_route(metrics, auth)))
    if settings.graphiql:
        routes.append(Mount(graphiql.ASSETS_ROUTE, StaticFiles(directory=graphiql.ASSETS)))
    if isinstance(store, LocalStore):
        routes.append(Route(FILES_ROUTE + "{key:path}", local_file_route(store), methods=["GET", "HEAD"]))
        upload_route = local_upload_route(store, attachments.policy, db)
        routes.append(Route(FILES_ROUTE + "{key:path}", upload_route, methods=["PUT"]))
    app = Starlette(routes=routes, lifespan=lifespan)
    if settings.cors_origin_list:
        # Outside authentication: a preflight carries no credential, and is answered here.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-api-key", "x-request-id", *PREFLIGHT_HEADERS],
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        )
    traced = tracing_enabled()
    app.add_middleware(ObserveRequests, metrics=metrics, traced=traced)
    if traced:
        instrument(app, db)  # outside ObserveRequests, whose work is then inside the request's span
    app.add_middleware(RequestIdMiddleware)
    app.state.db = db
    app.state.auth = auth
    app.state.attachments = attachments
    app.state.settings = settings
    app.state.compiled_reads = compiled_reads
    app.state.events = hub
    app.state.live = live
    return app
