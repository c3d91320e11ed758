"""A small async client for the gateway's GraphQL API, for Python backends (and the Chainlit data
layer in `gateway.chainlit`).

One pooled `httpx.AsyncClient` for the client's life. The gateway's writes are upserts and deletes
by id (all but `appendStepOutput`), so a request that fails on the way (connection refused or
reset, a timeout), that the gateway answers `SERVICE_UNAVAILABLE` (its database restarting, its
object store unreachable; HTTP 503) or that the database picked as a deadlock victim (`CONFLICT`
with `retryable: true`) is sent again, up to `attempts` times in all, after a pause that doubles
each time (0.25 s, 0.5 s, 1 s, 2 s, capped at 4 s), with random jitter so that many clients do not
come back at once. The default (5 attempts, about 4 s) rides out a database restart. A call marked
`idempotent=False` is sent again only when it cannot have arrived (the connection failed) or the
database aborted it (a deadlock victim wrote nothing).
"""

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

logger = logging.getLogger("gateway.client")

RETRY_PAUSE_SECONDS = 0.25
MAX_RETRY_PAUSE_SECONDS = 4.0
DEFAULT_ATTEMPTS = 5
UNAVAILABLE_STATUSES = (502, 503, 504)  # the gateway's 503, or a proxy's in front of it
DEFAULT_EVENT_SELECTION = (
    "cursor kind threadId delta deletedId thread { id name updatedAt } step { id output }"
)
THREAD_EVENTS = (
    "subscription($threadId: ID!, $after: String) { threadEvents(threadId: $threadId, after: $after) { %s } }"
)
USER_THREAD_EVENTS = (
    "subscription($userId: ID, $after: String) { userThreadEvents(userId: $userId, after: $after) { %s } }"
)


class GatewayError(Exception):
    """The gateway refused a request: `code` is its `extensions.code` (NOT_FOUND, FORBIDDEN,
    BAD_USER_INPUT, UNAUTHENTICATED, ...)."""

    def __init__(self, message: str, *, code: str | None, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.code = code
        self.errors = errors


@dataclass(frozen=True)
class UploadFile:
    """A file for a GraphQL `Upload` variable: its bytes, or a path read when the request is sent
    (again for a retry), streamed rather than loaded."""

    name: str
    content: bytes | None = None
    path: Path | None = None
    mime: str = "application/octet-stream"

    def open(self) -> bytes | IO[bytes]:
        if self.content is not None:
            return self.content
        if self.path is None:
            raise ValueError("an upload needs content or a path")
        return self.path.open("rb")


class GatewayClient:
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        attempts: int = DEFAULT_ATTEMPTS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`url` is the GraphQL endpoint (`http://host:8000/graphql`); a backend authenticates with
        `api_key`, a user with a `token`. `transport` is httpx's (tests pass the ASGI app's)."""
        headers = {"Accept": "application/json"}
        if api_key or token:
            headers["Authorization"] = f"Bearer {api_key or token}"
        self.url = url
        self.attempts = max(1, attempts)
        self.http = httpx.AsyncClient(headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> "GatewayClient":
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def execute(
        self,
        document: str,
        variables: Mapping[str, Any] | None = None,
        *,
        files: Mapping[str, UploadFile] | None = None,
        idempotent: bool = True,
    ) -> dict[str, Any]:
        """Run one operation and return its `data`; raises `GatewayError` if the gateway answered
        with errors, `httpx.HTTPError` if it could not be reached after every attempt.

        `files` maps variable names (holding null in `variables`) to files, sent as a GraphQL
        multipart request."""
        for attempt in range(1, self.attempts + 1):
            try:
                response = await self._send(document, dict(variables or {}), files)
                return self._data_of(response)
            except (httpx.TransportError, GatewayError) as error:
                if attempt == self.attempts or not _retryable(error, idempotent=idempotent):
                    raise
                logger.warning(
                    "gateway request failed (%s); attempt %d of %d", error, attempt + 1, self.attempts
                )
                await asyncio.sleep(retry_pause(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self, document: str, variables: dict[str, Any], files: Mapping[str, UploadFile] | None
    ) -> httpx.Response:
        if not files:
            return await self.http.post(self.url, json={"query": document, "variables": variables})
        operations = {"query": document, "variables": {**variables, **dict.fromkeys(files)}}
        names = list(files)
        mapping = {str(index): [f"variables.{name}"] for index, name in enumerate(names)}
        opened = {str(index): files[name].open() for index, name in enumerate(names)}
        try:
            return await self.http.post(
                self.url,
                data={"operations": json.dumps(operations), "map": json.dumps(mapping)},
                files={
                    key: (files[name].name, opened[key], files[name].mime)
                    for key, name in zip(opened, names, strict=True)
                },
                # The gateway refuses multipart requests without it (they could be cross-site forms).
                headers={"Apollo-Require-Preflight": "true"},
            )
        finally:
            for body in opened.values():
                if not isinstance(body, bytes):
                    body.close()

    async def subscribe(
        self,
        *,
        thread_id: str | None = None,
        user_id: str | None = None,
        after: str | None = None,
        selection: str = DEFAULT_EVENT_SELECTION,
        resume: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a thread (`thread_id`), or of a user's thread list (`user_id`; a user's
        token: their own when omitted), as they happen, over Server-Sent Events. `after`: first
        every retained event after this cursor. A dropped connection (or one closed as too slow)
        is opened again from the last cursor received, so no event is lost or repeated; the
        iterator ends when the thread is deleted. `selection` is the ThreadEvent fields wanted
        (`cursor` is always added)."""
        variables: dict[str, Any]
        if thread_id is not None:
            document, variables = THREAD_EVENTS % f"cursor {selection}", {"threadId": thread_id}
        else:
            document, variables = USER_THREAD_EVENTS % f"cursor {selection}", {"userId": user_id}
        failures = 0
        while True:
            try:
                async for event in self._event_stream(document, {**variables, "after": after}):
                    failures = 0
                    after = event["cursor"]
                    yield event
                return
            except (httpx.TransportError, _StreamInterrupted) as error:
                failures += 1
                if not resume or failures >= self.attempts:
                    raise
                logger.warning("the event stream broke (%s); resuming from the last event", error)
                await asyncio.sleep(retry_pause(failures))

    async def _event_stream(self, document: str, variables: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One graphql-sse stream: each `next` event's subscription field, until `complete`."""
        body = {"query": document, "variables": variables}
        headers = {"Accept": "text/event-stream"}
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        async with self.http.stream(
            "POST", self.url, json=body, headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                await response.aread()
                self._data_of(response)  # raises the refusal (NOT_FOUND, CURSOR_EXPIRED, ...)
                raise GatewayError(f"the gateway answered HTTP {response.status_code}", code=None, errors=[])
            kind, data = "message", []
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        kind = value
                    elif name == "data":
                        data.append(value)
                    continue
                if kind == "complete":
                    return
                if kind == "next" and data:
                    payload = json.loads("\n".join(data))
                    errors = payload.get("errors") or []
                    if any((item.get("extensions") or {}).get("retryable") for item in errors):
                        raise _StreamInterrupted(errors[0].get("message", "the stream was interrupted"))
                    if errors:
                        code = (errors[0].get("extensions") or {}).get("code")
                        raise GatewayError(
                            errors[0].get("message", "event refused"), code=code, errors=errors
                        )
                    yield next(iter(payload["data"].values()))
                kind, data = "message", []
        raise _StreamInterrupted("the event stream ended without `complete`")

    @staticmethod
    def _data_of(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            if response.status_code in UNAVAILABLE_STATUSES:
                raise GatewayError(
                    f"the gateway is unavailable (HTTP {response.status_code})",
                    code="SERVICE_UNAVAILABLE",
                    errors=[{"extensions": {"code": "SERVICE_UNAVAILABLE", "retryable": True}}],
                ) from None
            response.raise_for_status()
            raise GatewayError(
                f"the gateway answered HTTP {response.status_code} without JSON", code=None, errors=[]
            ) from None
        errors: list[dict[str, Any]] = body.get("errors") or []
        if errors:
            first = errors[0]
            code = (first.get("extensions") or {}).get("code")
            raise GatewayError(
                first.get("message", "the gateway refused the request"), code=code, errors=errors
            )
        data: dict[str, Any] = body.get("data") or {}
        return data


class _StreamInterrupted(Exception):
    """The event stream stopped before its end (a subscriber too slow; the server going away)."""


def retry_pause(attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, ...): doubling, capped, with
    jitter (0.5 to 1.5 times)."""
    pause: float = min(RETRY_PAUSE_SECONDS * 2 ** (attempt - 1), MAX_RETRY_PAUSE_SECONDS)
    return pause * random.uniform(0.5, 1.5)


def _retryable(error: Exception, *, idempotent: bool) -> bool:
    if isinstance(error, GatewayError):
        # A document of several mutations: the fields not run after a failure say nothing more.
        extensions = [
            item.get("extensions") or {}
            for item in error.errors
            if (item.get("extensions") or {}).get("code") != "NOT_RUN"
        ]
        if not extensions or not all(item.get("retryable") is True for item in extensions):
            return False
        # A deadlock victim (CONFLICT) wrote nothing; an outage may have struck while committing.
        return idempotent or all(item.get("code") == "CONFLICT" for item in extensions)
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return True  # nothing was sent
    return idempotent  # it may have arrived, and its answer was lost
