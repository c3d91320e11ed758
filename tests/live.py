"""Helpers of the subscription tests: a gateway served over real sockets (uvicorn on a free port,
in the test's event loop) and a minimal client of both WebSocket protocols."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import _free_port

RECEIVE_TIMEOUT = 10.0

THREAD_EVENTS = """
subscription($t: ID!, $after: String) {
  threadEvents(threadId: $t, after: $after) {
    cursor kind threadId delta deletedId
    thread { id name }
    step { id output }
    element { id name }
    feedback { id value }
  }
}"""

USER_THREAD_EVENTS = """
subscription($u: ID, $after: String) {
  userThreadEvents(userId: $u, after: $after) { cursor kind threadId deletedId thread { id name } }
}"""


@asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[str]:
    """`app` (its lifespan already run) served on a free port; yields its ws:// URL."""
    port = _free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    try:
        yield f"ws://127.0.0.1:{port}/graphql"
    finally:
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait_for(task, 10)


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class LiveClient:
    """One socket; `subscribe` then `next_event` / `messages` of that subscription."""

    def __init__(self, socket: ClientConnection, legacy: bool) -> None:
        self.socket = socket
        self.legacy = legacy
        self._count = 0

    async def init(self, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        await self.send({"type": "connection_init", **({"payload": payload} if payload is not None else {})})
        return await self.receive()

    async def send(self, message: dict[str, Any]) -> None:
        await self.socket.send(json.dumps(message))

    async def receive(self, wait: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        while True:
            try:
                text = await asyncio.wait_for(self.socket.recv(), wait)
            except ConnectionClosed as closed:
                received = closed.rcvd
                raise Closed(
                    received.code if received else None, received.reason if received else ""
                ) from None
            message: dict[str, Any] = json.loads(text)
            if message.get("type") != "ka":
                return message

    async def subscribe(self, query: str, **variables: Any) -> str:
        self._count += 1
        subscription_id = f"s{self._count}"
        kind = "start" if self.legacy else "subscribe"
        await self.send(
            {"id": subscription_id, "type": kind, "payload": {"query": query, "variables": variables}}
        )
        return subscription_id

    async def next_event(self, wait: float = RECEIVE_TIMEOUT) -> dict[str, Any]:
        """The next event's `data` root field; fails on anything else."""
        message = await self.receive(wait)
        assert message["type"] == ("data" if self.legacy else "next"), message
        assert not message["payload"].get("errors"), message
        data: dict[str, Any] = message["payload"]["data"]
        return next(iter(data.values()))

    async def events(self, count: int) -> list[dict[str, Any]]:
        return [await self.next_event() for _ in range(count)]

    async def closed(self, wait: float = RECEIVE_TIMEOUT) -> Closed:
        try:
            while True:
                await self.receive(wait)
        except Closed as closed:
            return closed


@asynccontextmanager
async def live_client(
    url: str,
    *,
    legacy: bool = False,
    headers: dict[str, str] | None = None,
    init: dict[str, Any] | None = None,
    acknowledge: bool = True,
    **options: Any,
) -> AsyncIterator[LiveClient]:
    protocol = "graphql-ws" if legacy else "graphql-transport-ws"
    async with connect(url, subprotocols=[protocol], additional_headers=headers or {}, **options) as socket:  # type: ignore[list-item]
        client = LiveClient(socket, legacy)
        if acknowledge:
            ack = await client.init(init)
            assert ack["type"] == "connection_ack", ack
        yield client
