"""The ASGI application: GraphQL (and GraphiQL) at /graphql, a health check at /healthz."""

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cross_web import HTTPException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from gateway.config import Settings
from gateway.database import Database
from gateway.ids import new_id
from gateway.migrate import upgrade_database
from resolvers.context import GatewayContext
from resolvers.schema import schema

logger = logging.getLogger("gateway")

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


class GatewayGraphQL(GraphQL[GatewayContext, None]):
    def __init__(self, db: Database, **kwargs: Any) -> None:
        super().__init__(schema, **kwargs)
        self.db = db

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Requests that are no GraphQL request (no query, a body that is not JSON, variables that
        are not an object) get a GraphQL error with a code too, not strawberry's plain text."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            response = await self.run(Request(scope=scope, receive=receive))
        except HTTPException as error:
            response = _error_response(error.reason, "BAD_USER_INPUT", error.status_code)
        except Exception:
            # Whatever escaped the schema's own handling (e.g. a body nested too deep to decode).
            request_id = scope["state"]["request_id"]
            logger.exception("unexpected error outside GraphQL execution (request %s)", request_id)
            response = _error_response(
                f"Internal server error. Quote request id {request_id} when reporting it.",
                "INTERNAL_SERVER_ERROR",
                500,
                requestId=request_id,
            )
        await response(scope, receive, send)

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> GatewayContext:
        return GatewayContext(
            db=self.db, request_id=request.scope["state"]["request_id"], request=request, response=response
        )


def _error_response(message: str, code: str, status: int, **extensions: str) -> JSONResponse:
    body = {"errors": [{"message": message, "extensions": {**extensions, "code": code}}]}
    return JSONResponse(body, status)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    db = Database(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if settings.auto_migrate:
            await upgrade_database(settings.database_url)
        try:
            yield
        finally:
            await db.dispose()

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    graphql = GatewayGraphQL(db, graphql_ide="graphiql")
    app = Starlette(
        routes=[Route("/graphql", graphql), Route("/healthz", health)],
        lifespan=lifespan,
    )
    app.add_middleware(RequestIdMiddleware)
    app.state.db = db
    app.state.settings = settings
    return app
