"""The WebSocket protocol `gateway serve` runs: uvicorn's websockets-sansio protocol, plus one ASGI
extension, `gateway.websocket.send_now`, that writes text messages to the socket synchronously.

A subscription's event goes to every subscriber of its selection. Through ASGI each message costs
a task wake-up and four layers of `await send(...)` (starlette, uvicorn, websockets), about 13 us of
Python beside the 6 us system call: at 1,000 subscribers and 50 writes/s that was most of a core
per replica. With the extension the messages put while the event hub dispatches are written once
it is done (gateway.live.SocketOutbox): no task per message, and a batch of events read together
reaches each socket in one write. The ASGI app works without it (under another server, or uvicorn's
own protocols): gateway.live then queues messages for a writer task per connection.
"""

import contextlib
from collections.abc import Sequence

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

SEND_NOW = "gateway.websocket.send_now"


class SendNow:
    """Writes a text message to one accepted WebSocket now (the ASGI extension's value)."""

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    def send_texts(self, texts: Sequence[str]) -> list[int]:
        """Frames each text as a message and writes them all with one call (one system call when
        the socket takes them); returns each message's size as written ([]: the socket is
        closing or closed, nothing written)."""
        protocol = self._protocol
        if (
            protocol.disconnected
            or protocol.close_sent
            or not protocol.handshake_complete
            or protocol.initial_response is not None
        ):
            return []
        frames: list[bytes] = []
        try:
            for text in texts:
                protocol.conn.send_text(text.encode())
                frames.append(b"".join(protocol.conn.data_to_send()))
        except InvalidState:
            return []
        protocol.transport.write(b"".join(frames))
        return [len(frame) for frame in frames]

    def closing(self) -> bool:
        """The socket is closing or closed: nothing more reaches the peer."""
        protocol = self._protocol
        return bool(protocol.disconnected or protocol.close_sent or protocol.transport.is_closing())

    def close(self, code: int, reason: str, *, grace: float) -> None:
        """Sends the close frame now, behind what is already written, even past uvicorn's flow
        control (a peer too slow to read would hold back ASGI's close forever), and cuts the
        connection if the peer has not closed it `grace` seconds later (uvicorn's own close waits
        for the write buffer to drain, which a peer that stopped reading never lets happen)."""
        protocol = self._protocol
        if protocol.disconnected or protocol.close_sent or not protocol.handshake_complete:
            return
        with contextlib.suppress(InvalidState):
            protocol.conn.send_close(code, reason)
            protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        protocol.close_sent = True
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if protocol.read_paused:
            protocol.read_paused = False
            protocol.transport.resume_reading()
        if protocol.close_timer is not None:
            protocol.close_timer.cancel()
        protocol.close_timer = protocol.loop.call_later(grace, protocol.transport.abort)

    def buffered_bytes(self) -> int:
        """Bytes written and not yet taken by the kernel (the peer is not reading fast enough)."""
        return int(self._protocol.transport.get_write_buffer_size())


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, whose accepted sockets offer `SendNow` in their scope."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The app's task is created, not started: it sees the extension in its scope.
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][SEND_NOW] = SendNow(self)
