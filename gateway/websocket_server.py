"""The WebSocket protocol `gateway serve` runs: uvicorn's websockets-sansio protocol, plus one ASGI
extension, `gateway.websocket.send_now`, that writes a text message to the socket synchronously.

A subscription's event goes to every subscriber of its selection. Through ASGI each message costs
a task wake-up and four layers of `await send(...)` (starlette, uvicorn, websockets), about 13 us of
Python beside the 6 us system call: at 1,000 subscribers and 50 writes/s that was most of a core
per replica. With the extension the event hub writes each subscriber's frame as it dispatches the
event: no queue, no task. The ASGI app works without it (under another server, in tests with
uvicorn's own protocols): gateway.live then queues messages for a writer task per connection.
"""

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

SEND_NOW = "gateway.websocket.send_now"


class SendNow:
    """Writes a text message to one accepted WebSocket now (the ASGI extension's value)."""

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    def send_text(self, text: str) -> int:
        """Frames and writes `text`; returns the bytes handed to the transport (0: the socket
        is closing or closed, nothing written)."""
        protocol = self._protocol
        if (
            protocol.disconnected
            or protocol.close_sent
            or not protocol.handshake_complete
            or protocol.initial_response is not None
        ):
            return 0
        try:
            protocol.conn.send_text(text.encode())
        except InvalidState:
            return 0
        data = b"".join(protocol.conn.data_to_send())
        protocol.transport.write(data)
        return len(data)

    def buffered_bytes(self) -> int:
        """Bytes written and not yet taken by the kernel (the peer is not reading fast enough)."""
        return int(self._protocol.transport.get_write_buffer_size())


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The app's task is created, not started: it sees the extension in its scope.
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][SEND_NOW] = SendNow(self)
