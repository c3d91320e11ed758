"""Readiness (/readyz): whether this process can serve now, i.e. its database and object store answer.
Liveness (/healthz, in gateway.app) only says the process runs."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.database import Database
from gateway.storage import ObjectStore

logger = logging.getLogger("gateway.health")
READY_TIMEOUT_SECONDS = 3.0


def readiness_route(db: Database, store: ObjectStore) -> Callable[[Request], Awaitable[JSONResponse]]:
    """503 naming the parts that failed (details only in the log: anyone may ask), else 200."""

    async def database() -> None:
        async with db.session() as session:
            await session.execute(sa.text("SELECT 1"))

    async def ready(_request: Request) -> JSONResponse:
        checks = {"database": database(), "storage": store.check()}
        results = await asyncio.gather(
            *(asyncio.wait_for(check, READY_TIMEOUT_SECONDS) for check in checks.values()),
            return_exceptions=True,
        )
        failed: dict[str, str] = {}
        for part, result in zip(checks, results, strict=True):
            if isinstance(result, BaseException):
                reason = "timed out" if isinstance(result, TimeoutError) else "unreachable"
                failed[part] = reason
                logger.warning(
                    "not ready: the %s is %s (%s: %s)", part, reason, type(result).__name__, result
                )
        if failed:
            return JSONResponse({"status": "unavailable", "failed": failed}, 503)
        return JSONResponse({"status": "ready"})

    return ready
