"""Helpers of the subscription tests: a gateway served over real sockets (uvicorn on a free port,
in the test's event loop) and a minimal client of both WebSocket protocols."""

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from gateway.websocket_server import GatewayWebSocketProtocol
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
async def served(app: Starlette, *, ws: Any = GatewayWebSocketProtocol) -> AsyncIterator[str]:
    """`app` (its lifespan already run) served on a free port, with the WebSocket protocol of
    `gateway serve` unless told otherwise; yields its ws:// URL."""
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", ws=ws)
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

    async def next_with_id(self, wait: float = RECEIVE_TIMEOUT) -> tuple[str, dict[str, Any]]:
        """The next event with the id of its subscription."""
        message = await self.receive(wait)
        assert message["type"] == ("data" if self.legacy else "next"), message
        return message["id"], next(iter(message["payload"]["data"].values()))

    async def events(self, count: int) -> list[dict[str, Any]]:
        return [await self.next_event() for _ in range(count)]

    async def closed(self, wait: float = RECEIVE_TIMEOUT) -> Closed:
        try:
            while True:
                await self.receive(wait)
        except Closed as closed:
            return closed


async def until_live(
    client: LiveClient,
    api: Any,
    subscription_id: str,
    *,
    thread_id: str | None = None,
    user_id: str | None = None,
) -> None:
    """Write and delete something in the feed until the subscription receives its deletion: it is
    live (a subscription starts a moment after its message is sent; the protocol does not say
    when). A deletion, as events show the current state of what they name, but not of what is gone.
    A thread's feed: a step made and deleted in it; a user's list: a thread of theirs."""
    for _attempt in range(40):
        probe = str(uuid.uuid4())
        if thread_id is not None:
            await api.ok(
                "mutation($i: StepInput!) { upsertStep(input: $i) { id } }",
                i={"id": probe, "threadId": thread_id, "name": "probe", "type": "run"},
            )
            await api.ok("mutation($id: ID!) { deleteStep(id: $id) { id } }", id=probe)
        else:
            await api.ok(
                "mutation($i: ThreadInput!) { upsertThread(input: $i) { id } }",
                i={"id": probe, "userId": user_id},
            )
            await api.ok("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=probe)
        try:
            while True:
                received, event = await client.next_with_id(wait=0.5)
                if received == subscription_id and event.get("deletedId") == probe:
                    return
        except TimeoutError:
            continue
    raise AssertionError(f"subscription {subscription_id} never went live")


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


class StalledClient:
    """A subscriber that stops reading its socket (a frozen browser tab), on a socket that
    buffers little; written with websockets' sans-I/O protocol over a raw socket."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(
            parse_uri(url), subprotocols=[Subprotocol("graphql-transport-ws")], max_size=None
        )
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.socket.setblocking(False)
        self.address = (parse_uri(url).host, parse_uri(url).port)

    async def open(self, query: str, **variables: Any) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.socket, self.address)
        self.protocol.send_request(self.protocol.connect())
        await self._flush()
        while self.protocol.state is not State.OPEN:
            self.protocol.receive_data(await loop.sock_recv(self.socket, 4096))
        for message in (
            {"type": "connection_init"},
            {"id": "stalled", "type": "subscribe", "payload": {"query": query, "variables": variables}},
        ):
            self.protocol.send_text(json.dumps(message).encode())
        await self._flush()

    async def _flush(self) -> None:
        await asyncio.get_running_loop().sock_sendall(self.socket, b"".join(self.protocol.data_to_send()))

    async def read_to_the_end(self) -> tuple[list[dict[str, Any]], int | None, str]:
        """Everything the server sent, then the close code and reason."""
        loop = asyncio.get_running_loop()
        messages: list[dict[str, Any]] = []
        while True:
            data = await asyncio.wait_for(loop.sock_recv(self.socket, 1 << 20), RECEIVE_TIMEOUT)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    messages.append(json.loads(event.data))
                elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                    close = self.protocol.close_rcvd
                    self.socket.close()
                    return messages, close.code if close else None, close.reason if close else ""
            if not data:
                self.socket.close()
                return messages, None, ""
