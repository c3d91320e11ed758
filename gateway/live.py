"""Subscriptions' transports: WebSocket at /graphql (`graphql-transport-ws`, and the legacy
`graphql-ws`), and Server-Sent Events (graphql-sse, distinct connections mode: a POST or GET of
/graphql accepting `text/event-stream`).

Credentials are those of HTTP: the upgrade request's `Authorization` (or `X-API-Key`) header, or
the same keys in `connection_init`'s payload (browsers cannot set WebSocket headers). A socket
without a valid credential is closed with 4401 (none given) or 4403 (refused); a key revoked or a
token expired later closes it with 4403 too (credentials are checked again every
GATEWAY_SUBSCRIPTION_AUTH_RECHECK_SECONDS, and when a token's `exp` comes).

Each connection has one bounded outbox: under `gateway serve` its messages are written to the
socket as the event hub dispatches (SocketOutbox, gateway.websocket_server), elsewhere queued for a
writer task (Outbox). A subscriber that cannot keep up is closed (code 1013, reason saying so)
rather than slowing the writers or the other subscribers; it resumes with the cursor of the last
event it received.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import jwt
import orjson
import strawberry
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gateway.attachments import Attachments
from gateway.auth import Authenticator, Caller, CallerKind, credential_of
from gateway.data import thread_events
from gateway.database import Database
from gateway.errors import GatewayError, Unauthenticated
from gateway.events import EventHub
from gateway.ids import new_id
from gateway.metrics import EVENTS_SENT, SUBSCRIBERS_TOO_SLOW, SUBSCRIPTIONS
from gateway.tables import ThreadEvent
from gateway.unit_of_work import is_outage
from gateway.websocket_server import SEND_NOW, SendNow
from resolvers.context import GatewayContext
from resolvers.extensions import RETRY_AFTER_SECONDS
from resolvers.limits import Limits
from resolvers.subscriptions import (
    FinalRendering,
    PreparedSubscription,
    SelectionGroup,
    SubscriptionRefused,
    ThreadEventKind,
    prepare_subscription,
    replay_batches,
)

logger = logging.getLogger("gateway.live")

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
CONNECTION_INIT_TIMEOUT_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 15.0
CLOSE_TOO_SLOW = 1013
TOO_SLOW_REASON = "subscriber too slow: resume with the cursor of the last event received"
REPLAY_CHUNK = 100  # events of a replay read and rendered together
ROOM_POLL_SECONDS = 0.01
STALL_SECONDS = 30.0  # a replay's reader that takes nothing for this long is too slow
CLOSE_GRACE_SECONDS = 10.0  # after the close frame, until a peer that does not answer is cut off


@dataclass
class LiveSettings:
    retention: timedelta = timedelta(hours=24)
    buffer: int = 1000  # messages queued for one connection before it is closed as too slow
    auth_recheck_seconds: float = 60.0
    allowed_origins: tuple[str, ...] = ()


class Outbox:
    """One connection's outgoing messages, queued for a task to send (SSE's stream; a WebSocket's
    writer under a server without the `send_now` extension): never blocks a producer. A
    subscriber with `bound` messages still queued when a step of the event loop begins to add
    more is too slow (a batch of events added in one step counts once it has been added)."""

    def __init__(
        self, bound: int, on_overflow: Callable[[], None] | None = None, *, paced: bool = True
    ) -> None:
        self.bound = bound
        self.on_overflow = on_overflow
        # False when nothing drains it yet (SSE's stream starts after the replay): no waiting.
        self.paced = paced
        self.messages: deque[str] = deque()
        self.ready = asyncio.Event()
        self.overflowed = False
        self.closed = False
        self._queued_before_step: int | None = None

    async def wait_for_room(self, room: int) -> None:
        if not self.paced:
            return
        await _until_room(self, lambda: len(self.messages), room)

    def put(self, message: str) -> None:
        if self.closed:  # also after an overflow: a later event must not fill a gap
            return
        if self._queued_before_step is None:
            self._queued_before_step = len(self.messages)
            asyncio.get_running_loop().call_soon(self._end_step)
        if self._queued_before_step >= self.bound:
            self.overflow()
        else:
            self.messages.append(message)
            self.ready.set()

    def _end_step(self) -> None:
        self._queued_before_step = None

    def overflow(self) -> None:
        if not self.overflowed and self.on_overflow is not None:
            self.on_overflow()  # the writer may be stuck sending to this very subscriber
        self.overflowed = self.closed = True  # what is queued still goes out, then the error
        self.ready.set()


class SocketFlusher:
    """Writes what was put in SocketOutboxes during one step of the event loop, all of them from
    one callback (a callback per socket cost a twelfth of the fan-out)."""

    def __init__(self) -> None:
        self.due: list[SocketOutbox] = []

    def add(self, outbox: "SocketOutbox") -> None:
        if not self.due:
            asyncio.get_running_loop().call_soon(self._flush)
        self.due.append(outbox)

    def _flush(self) -> None:
        due, self.due = self.due, []
        for outbox in due:
            try:
                outbox.flush()
            except Exception:  # one broken socket must not keep the others' messages
                logger.exception("writing to a subscriber's socket failed")
                outbox.fail()


class SocketOutbox:
    """One WebSocket's outgoing messages, written by the `send_now` extension of
    gateway.websocket_server without a writer task: what is put during one step of the event loop
    (an event, or a batch of them, dispatched to every subscriber) is written once that step is
    done, with one write per socket. What the peer has not read waits in the transport's buffer;
    a subscriber with `bound` messages waiting there, not even begun, is too slow."""

    def __init__(
        self,
        sender: SendNow,
        bound: int,
        *,
        flusher: SocketFlusher,
        on_overflow: Callable[[], None],
        on_failure: Callable[[], None],
    ) -> None:
        self.sender = sender
        self.bound = bound
        self.flusher = flusher
        self.on_overflow = on_overflow
        self.on_failure = on_failure
        self.pending: list[str] = []
        self.written = 0  # bytes handed to the transport
        self.unread_starts: deque[int] = deque()  # where each message the peer has not begun starts
        self.closed = False

    def unread_count(self) -> int:
        """Messages written that the peer has not begun to read."""
        unread = self.unread_starts
        if unread:
            taken = self.written - self.sender.buffered_bytes()
            while unread and unread[0] < taken:
                unread.popleft()
        return len(unread)

    async def wait_for_room(self, room: int) -> None:
        await _until_room(self, lambda: self.unread_count() + len(self.pending), room, self.sender.closing)

    def put(self, message: str) -> None:
        if self.closed:
            return
        if self.unread_starts and self.unread_count() >= self.bound:
            self.overflow()
            return
        if not self.pending:
            self.flusher.add(self)
        self.pending.append(message)

    def overflow(self) -> None:
        self._end(self.on_overflow)

    def fail(self) -> None:
        self._end(self.on_failure)

    def _end(self, then: Callable[[], None]) -> None:
        """Nothing more is written; `then` closes the session (once)."""
        if not self.closed:
            self.closed = True
            self.pending.clear()
            then()

    def flush(self) -> None:
        messages, self.pending = self.pending, []
        if self.closed or not messages:
            return
        sizes = self.sender.send_texts(messages)
        if not sizes:  # the socket is closing
            self.closed = True
            return
        start = self.written
        self.written += sum(sizes)
        if self.sender.buffered_bytes():
            for size in sizes:
                self.unread_starts.append(start)
                start += size

    def close(self, code: int, reason: str) -> None:
        """What is pending, then the close frame; a peer that reads neither is cut off."""
        self.flush()
        self.closed = True
        self.sender.close(code, reason, grace=CLOSE_GRACE_SECONDS)


async def _until_room(
    outbox: "Outbox | SocketOutbox",
    waiting: Callable[[], int],
    room: int,
    gone: Callable[[], bool] = lambda: False,
) -> None:
    """Until `room` more messages fit under the outbox's bound. A peer that reads nothing for
    STALL_SECONDS is too slow; a closed outbox or socket ends the wait."""
    loop = asyncio.get_running_loop()
    seen, deadline = -1, 0.0
    while not outbox.closed:
        count = waiting()
        if count + room <= outbox.bound:
            return
        if gone():
            outbox.closed = True
            return
        if count != seen:
            seen, deadline = count, loop.time() + STALL_SECONDS
        elif loop.time() > deadline:
            outbox.overflow()
            return
        # Nothing tells when the peer reads (the transport's buffer shrinks silently): a poll,
        # paid only by a replay that outruns its reader.
        await asyncio.sleep(ROOM_POLL_SECONDS)


class MessageSink(Protocol):
    """Where a subscription's messages go: an Outbox or a SocketOutbox."""

    bound: int
    closed: bool

    def put(self, message: str) -> None: ...

    def overflow(self) -> None:
        """The subscriber is too slow: close it."""
        ...

    async def wait_for_room(self, room: int) -> None:
        """Until `room` more messages fit (a replay waits for its reader)."""
        ...


Framing = Callable[[str, str], str]  # (subscription id, rendered payload) -> message text


@dataclass(eq=False)
class LiveSubscription:
    """One subscription of a connection, registered with the hub (a `gateway.events.Subscriber`)."""

    id: str
    group: SelectionGroup
    outbox: MessageSink
    frame_next: Framing
    on_complete: Callable[["LiveSubscription"], None]
    completes_on_delete: bool
    group_key: tuple[Any, ...] = ()
    last_position: int = 0
    replaying: bool = True
    pending: list[tuple[ThreadEvent, str]] = field(default_factory=list)
    done: bool = False

    def __hash__(self) -> int:
        return id(self)

    def deliver(self, event: ThreadEvent, rendered: Any) -> None:
        if self.done:
            return
        if self.replaying:
            if len(self.pending) >= self.outbox.bound:  # live events held while it replays
                self.outbox.overflow()
                return
            self.pending.append((event, rendered))
            return
        self.send(event, rendered)

    def send(self, event: ThreadEvent, rendered: str) -> None:
        assert event.position is not None
        if self.done or event.position <= self.last_position:
            return  # already sent (the replay and the live feed meet here)
        self.last_position = event.position
        if not self.outbox.closed:
            self.outbox.put(self.frame_next(self.id, rendered))
            EVENTS_SENT.inc()
        if isinstance(rendered, FinalRendering) or (
            self.completes_on_delete and event.kind == ThreadEventKind.THREAD_DELETED.value
        ):
            self.on_complete(self)


class LiveService:
    """Starts subscriptions for the transports: prepares them, shares selection groups, replays."""

    def __init__(
        self,
        schema: strawberry.Schema,
        db: Database,
        hub: EventHub,
        auth: Authenticator,
        limits: Limits,
        attachments: Attachments,
        settings: LiveSettings,
    ) -> None:
        self.schema = schema
        self.db = db
        self.hub = hub
        self.auth = auth
        self.limits = limits
        self.attachments = attachments
        self.settings = settings
        self._groups: dict[tuple[Any, ...], SelectionGroup] = {}
        self.flusher = SocketFlusher()

    def context(self, caller: Caller, request_id: str) -> GatewayContext:
        return GatewayContext(
            db=self.db,
            request_id=request_id,
            caller=caller,
            limits=self.limits,
            attachments=self.attachments,
            events=self.hub,
        )

    async def prepare(self, payload: Any, caller: Caller, request_id: str) -> PreparedSubscription:
        if not isinstance(payload, dict):
            raise SubscriptionRefused(
                [{"message": "the payload must be an object", "extensions": {"code": "BAD_USER_INPUT"}}]
            )
        try:
            return await prepare_subscription(
                self.schema,
                query=payload.get("query"),
                variables=payload.get("variables"),
                operation_name=payload.get("operationName"),
                context=self.context(caller, request_id),
                retention=self.settings.retention,
            )
        except SubscriptionRefused:
            raise
        except Exception as error:
            if is_outage(error):
                raise SubscriptionRefused.outage() from error
            raise

    async def start(
        self,
        prepared: PreparedSubscription,
        *,
        subscription_id: str,
        outbox: MessageSink,
        frame_next: Framing,
        on_complete: Callable[[LiveSubscription], None],
    ) -> LiveSubscription:
        """Register, replay what came after `after`, then go live: no gap, no duplicate. Raises
        SubscriptionRefused when the database cannot be reached meanwhile (retryable)."""
        group = self._groups.get(prepared.group_key)
        if group is None:
            context = prepared.executor.context_value
            group = SelectionGroup(prepared.executor, context)
            self._groups[prepared.group_key] = group
        group.members += 1
        SUBSCRIPTIONS.inc()
        subscription = LiveSubscription(
            id=subscription_id,
            group=group,
            outbox=outbox,
            frame_next=frame_next,
            on_complete=on_complete,
            completes_on_delete=prepared.completes_on_delete,
            group_key=prepared.group_key,
        )
        feed = prepared.feed
        watch = self.hub.watch_thread if feed.kind == "thread" else self.hub.watch_user
        through = watch(feed.key, subscription)
        try:
            if prepared.after is None:
                # Events from now on: not those committed before that the hub has yet to hand out.
                async with self.db.session() as session:
                    subscription.last_position = max(through, await thread_events.latest_position(session))
            else:
                subscription.last_position = prepared.after.position
                # In batches the subscriber has room for: a long replay is paced by its reading.
                size = max(1, min(REPLAY_CHUNK, self.settings.buffer // 2))
                replay = replay_batches(
                    group.context, feed, after=prepared.after.position, through=through, size=size
                )
                async with contextlib.aclosing(replay):
                    waited = False
                    async for part in replay:
                        if waited:
                            await outbox.wait_for_room(len(part))
                        waited = True
                        if subscription.done or outbox.closed:
                            break
                        for event, rendered in zip(part, await group.render_many(part), strict=True):
                            if isinstance(rendered, BaseException):
                                raise rendered
                            subscription.send(event, rendered)
            subscription.replaying = False
            for event, rendered in subscription.pending:
                subscription.send(event, rendered)
            subscription.pending.clear()
        except BaseException as error:
            self.stop(subscription)
            if isinstance(error, Exception) and is_outage(error):
                raise SubscriptionRefused.outage() from error
            raise
        return subscription

    def stop(self, subscription: LiveSubscription) -> None:
        if subscription.done:
            return
        subscription.done = True
        SUBSCRIPTIONS.dec()
        self.hub.unwatch(subscription)
        key = subscription.group_key
        group = self._groups.get(key)
        if group is not None:
            group.members -= 1
            if group.members <= 0:
                del self._groups[key]

    @property
    def group_count(self) -> int:
        return len(self._groups)

    async def authenticate(self, headers: Mapping[str, str], client_host: str | None) -> Caller:
        return await self.auth.authenticate(headers, client_host)

    async def until_credentials_end(
        self, headers: Mapping[str, str], client_host: str | None
    ) -> Unauthenticated:
        """Returns once the credential of these headers is revoked or expired (checked again
        every `auth_recheck_seconds`, and when a token expires)."""
        while True:
            wait = self.settings.auth_recheck_seconds
            expiry = self.seconds_until_expiry(headers)
            if expiry is not None:
                wait = min(wait, expiry + 0.05)
            await asyncio.sleep(wait)
            try:
                await self.authenticate(headers, client_host)
            except Unauthenticated as error:
                return error
            except Exception:  # an outage: keep the subscription, check again later
                logger.warning("could not check a subscriber's credentials again", exc_info=True)

    def seconds_until_expiry(self, headers: Mapping[str, str]) -> float | None:
        """Seconds until the credential's token expires (None: not a token, or no `exp`)."""
        try:
            credential = credential_of(headers)
        except GatewayError:
            return None
        if credential is None or credential.token.count(".") != 2:
            return None
        try:
            claims = jwt.decode(credential.token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        expiry = claims.get("exp")
        if not isinstance(expiry, int | float):
            return None
        return max(0.0, float(expiry) - time.time() + self.auth.settings.jwt_leeway_seconds)


def revocable(caller: Caller) -> bool:
    """Whether the credential can stop being valid while a subscription is open: a stored key (it
    can be revoked) or a token (it expires); not open mode, not GATEWAY_API_KEYS (fixed)."""
    if caller.kind is CallerKind.DEVELOPER:
        return False
    return not (caller.kind is CallerKind.BACKEND and caller.name.startswith("GATEWAY_API_KEYS["))


def _json(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


def _next_frame(kind: str) -> Framing:
    def frame(subscription_id: str, rendered: str) -> str:
        return f'{{"id":{_json_string(subscription_id)},"type":"{kind}","payload":{rendered}}}'

    return frame


def _json_string(value: str) -> str:
    return orjson.dumps(value).decode()


class WebSocketSession:
    """One WebSocket connection speaking either protocol."""

    def __init__(self, service: LiveService, websocket: WebSocket, protocol: str) -> None:
        self.service = service
        self.websocket = websocket
        self.protocol = protocol
        self.legacy = protocol == LEGACY_WS
        send_now = websocket.scope.get("extensions", {}).get(SEND_NOW)
        self.outbox: Outbox | SocketOutbox = (
            SocketOutbox(
                send_now,
                service.settings.buffer,
                flusher=service.flusher,
                on_overflow=self._too_slow,
                on_failure=lambda: self._mark_closed(1011, "Internal error writing to the socket"),
            )
            if isinstance(send_now, SendNow)
            else Outbox(service.settings.buffer, on_overflow=self._too_slow)
        )
        self.subscriptions: dict[str, LiveSubscription] = {}
        self.starting: dict[str, asyncio.Task[None]] = {}
        self.caller: Caller | None = None
        self.headers: dict[str, str] = {}
        self.request_id = websocket.scope.get("state", {}).get("request_id") or new_id()
        self.close_code: tuple[int, str] | None = None
        self._closed = asyncio.Event()
        self._main: asyncio.Task[Any] | None = None

    async def run(self) -> None:
        self._main = asyncio.current_task()
        writer = asyncio.create_task(
            self._write(self.outbox) if isinstance(self.outbox, Outbox) else self._keep_alive()
        )
        rechecks: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(CONNECTION_INIT_TIMEOUT_SECONDS):
                init = await self._receive()
            if init is None:
                return
            if init.get("type") != "connection_init":
                await self._close(4401 if not self.legacy else 4400, "Unauthorized: connection_init first")
                return
            if not await self._authenticate(init.get("payload")):
                return
            self._send({"type": "connection_ack"})
            if self.legacy:
                self._send({"type": "ka"})
            if self._revocable():
                rechecks = asyncio.create_task(self._recheck_credentials())
            while not self._closed.is_set():
                message = await self._receive()
                if message is None:
                    return
                await self._handle(message)
        except TimeoutError:
            await self._close(4408, "Connection initialisation timeout")
        except WebSocketDisconnect:
            pass
        except asyncio.CancelledError:
            if self.close_code is None:
                raise  # the server is stopping
            # `_mark_closed` from another task (too slow, credentials gone): close below.
        finally:
            self._closed.set()
            for task in self.starting.values():
                task.cancel()
            for subscription in list(self.subscriptions.values()):
                self.service.stop(subscription)
            if rechecks is not None:
                rechecks.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if (
                self.close_code is not None
                and self.websocket.application_state != WebSocketState.DISCONNECTED
            ):
                if isinstance(self.outbox, SocketOutbox):
                    self.outbox.close(*self.close_code)  # behind what is pending, even to a stalled peer
                else:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.websocket.close(*self.close_code), 2)

    async def _receive(self) -> dict[str, Any] | None:
        try:
            message = await self.websocket.receive()
        except asyncio.CancelledError:
            if self._closed.is_set() and self.close_code is not None:
                return None  # `_mark_closed` cancelled the wait: the session ends
            raise
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None and message.get("bytes") is not None:
            text = message["bytes"].decode("utf-8", "replace")
        try:
            parsed = orjson.loads(text or "")
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("type"), str):
            await self._close(4400, "Invalid message received")
            return None
        return parsed

    async def _authenticate(self, payload: Any) -> bool:
        headers = {key.lower(): value for key, value in self.websocket.headers.items()}
        if isinstance(payload, dict):
            for key, value in payload.items():
                if (
                    isinstance(key, str)
                    and isinstance(value, str)
                    and key.lower() in ("authorization", "x-api-key")
                ):
                    headers[key.lower()] = value
        client = self.websocket.client
        try:
            self.caller = await self.service.authenticate(headers, client.host if client else None)
        except Unauthenticated as error:
            given = credential_of_safely(headers)
            code = 4403 if given else 4401
            if self.legacy:
                self._send({"type": "connection_error", "payload": {"message": error.message}})
            await self._close(code, ("Forbidden: " if given else "Unauthorized: ") + error.message)
            return False
        except Exception as error:
            if not is_outage(error):
                raise
            await self._close(1013, "the database cannot be reached right now; retry")
            return False
        self.headers = headers
        return True

    def _revocable(self) -> bool:
        return self.caller is not None and revocable(self.caller)

    async def _recheck_credentials(self) -> None:
        """Close the socket once its key is revoked or its token expires."""
        client = self.websocket.client
        error = await self.service.until_credentials_end(self.headers, client.host if client else None)
        await self._close(4403, "Forbidden: " + error.message)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "connection_init":
            await self._close(4429, "Too many initialisation requests")
        elif kind == "ping" and not self.legacy:
            self._send({"type": "pong", **({"payload": message["payload"]} if "payload" in message else {})})
        elif kind == "pong" and not self.legacy:
            pass
        elif kind == ("start" if self.legacy else "subscribe"):
            subscription_id = message.get("id")
            if not isinstance(subscription_id, str) or not subscription_id:
                await self._close(4400, "Invalid message received: a subscription needs an `id`")
                return
            if subscription_id in self.subscriptions or subscription_id in self.starting:
                await self._close(4409, f"Subscriber for {subscription_id} already exists")
                return
            self.starting[subscription_id] = asyncio.create_task(
                self._subscribe(subscription_id, message.get("payload"))
            )
        elif kind == ("stop" if self.legacy else "complete"):
            subscription_id = message.get("id")
            if isinstance(subscription_id, str):
                task = self.starting.pop(subscription_id, None)
                if task is not None:
                    task.cancel()
                subscription = self.subscriptions.pop(subscription_id, None)
                if subscription is not None:
                    self.service.stop(subscription)
                    if self.legacy:
                        self._send({"type": "complete", "id": subscription_id})
        elif kind == "connection_terminate" and self.legacy:
            await self._close(1000, "terminated")
        else:
            await self._close(4400, f"Invalid message received: unknown type {kind!r}")

    async def _subscribe(self, subscription_id: str, payload: Any) -> None:
        assert self.caller is not None
        try:
            prepared = await self.service.prepare(payload, self.caller, self.request_id)
            subscription = await self.service.start(
                prepared,
                subscription_id=subscription_id,
                outbox=self.outbox,
                frame_next=_next_frame("data" if self.legacy else "next"),
                on_complete=self._completed,
            )
            if not subscription.done:
                self.subscriptions[subscription_id] = subscription
        except SubscriptionRefused as refusal:
            payload_errors: Any = refusal.errors[0] if self.legacy else refusal.errors
            self._send({"id": subscription_id, "type": "error", "payload": payload_errors})
            if self.legacy:
                self._send({"id": subscription_id, "type": "complete"})
        except Exception:
            logger.exception("starting a subscription failed (request %s)", self.request_id)
            error = {
                "message": f"Internal server error. Quote request id {self.request_id} when reporting it.",
                "extensions": {"code": "INTERNAL_SERVER_ERROR", "requestId": self.request_id},
            }
            self._send({"id": subscription_id, "type": "error", "payload": error if self.legacy else [error]})
        finally:
            self.starting.pop(subscription_id, None)

    def _completed(self, subscription: LiveSubscription) -> None:
        """The thread was deleted: its subscription completes after that event."""
        self.service.stop(subscription)
        self.subscriptions.pop(subscription.id, None)
        self._send({"id": subscription.id, "type": "complete"})

    def _send(self, message: dict[str, Any]) -> None:
        self.outbox.put(_json(message))

    async def _close(self, code: int, reason: str) -> None:
        self._mark_closed(code, reason)

    def _mark_closed(self, code: int, reason: str) -> None:
        """Ends the session: `run` stops its tasks and closes the socket with this code."""
        if self.close_code is None:
            self.close_code = (code, reason[:120])
        self._closed.set()
        if self._main is not None and self._main is not asyncio.current_task():
            self._main.cancel()  # it waits for the client's next message

    def _too_slow(self) -> None:
        SUBSCRIBERS_TOO_SLOW.inc()
        self.outbox.closed = True
        self._mark_closed(CLOSE_TOO_SLOW, TOO_SLOW_REASON)

    async def _keep_alive(self) -> None:
        """The legacy protocol's `ka` messages, when messages are written at once."""
        while self.legacy:
            await asyncio.sleep(KEEP_ALIVE_SECONDS)
            if self.caller is not None:
                self._send({"type": "ka"})

    async def _write(self, outbox: Outbox) -> None:
        """Sends the queued messages, when they cannot be written at once (see SocketOutbox)."""
        keep_alive = KEEP_ALIVE_SECONDS if self.legacy else None
        while True:
            if keep_alive is None:
                await outbox.ready.wait()
            else:
                try:
                    async with asyncio.timeout(keep_alive):  # not wait_for: it can swallow a cancel
                        await outbox.ready.wait()
                except TimeoutError:
                    if self.caller is not None:
                        outbox.put(_json({"type": "ka"}))
            outbox.ready.clear()
            if outbox.overflowed:
                outbox.closed = True
                await self._close(CLOSE_TOO_SLOW, TOO_SLOW_REASON)
                return
            while outbox.messages:
                await self.websocket.send_text(outbox.messages.popleft())
                if outbox.overflowed:
                    break


def credential_of_safely(headers: Mapping[str, str]) -> bool:
    try:
        return credential_of(headers) is not None
    except GatewayError:
        return True  # a malformed credential was given


async def serve_websocket(service: LiveService, websocket: WebSocket) -> None:
    origin = websocket.headers.get("origin")
    if origin is not None and not _origin_allowed(origin, websocket.headers.get("host", ""), service):
        await websocket.close(4403, "Forbidden: this origin may not open subscriptions")
        return
    offered = websocket.scope.get("subprotocols") or []
    protocol = next((item for item in offered if item in (TRANSPORT_WS, LEGACY_WS)), None)
    if protocol is None:
        await websocket.accept()
        await websocket.close(4406, "Subprotocol not acceptable: use graphql-transport-ws or graphql-ws")
        return
    await websocket.accept(subprotocol=protocol)
    await WebSocketSession(service, websocket, protocol).run()


def _origin_allowed(origin: str, host: str, service: LiveService) -> bool:
    """A browser page may subscribe from the gateway's own origin or a configured CORS origin
    (CORS does not cover WebSockets: without this, any site could use a local gateway's open mode)."""
    if origin in service.settings.allowed_origins or "*" in service.settings.allowed_origins:
        return True
    return origin.split("://", 1)[-1] == host


async def serve_sse(service: LiveService, request: Request, caller: Caller, payload: Any) -> Response:
    """graphql-sse, distinct connections mode: one subscription per response stream."""
    request_id = request.scope.get("state", {}).get("request_id") or new_id()
    outbox = Outbox(service.settings.buffer, paced=False)  # its stream starts after the replay
    finished = asyncio.Event()

    def completed(subscription: LiveSubscription) -> None:
        service.stop(subscription)
        finished.set()
        outbox.ready.set()

    try:
        prepared = await service.prepare(payload, caller, request_id)
        subscription = await service.start(
            prepared,
            subscription_id="sse",
            outbox=outbox,
            frame_next=lambda _id, rendered: f"event: next\ndata: {rendered}\n\n",
            on_complete=completed,
        )
    except SubscriptionRefused as refusal:
        code = refusal.errors[0].get("extensions", {}).get("code")
        status = {"NOT_FOUND": 404, "SERVICE_UNAVAILABLE": 503}.get(str(code), 400)
        # Retry-After as on every other 503 of the gateway (resolvers.extensions, gateway.app).
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
        return Response(
            orjson.dumps({"errors": refusal.errors}), status, headers, media_type="application/json"
        )

    credentials_ended: list[Unauthenticated] = []

    async def recheck_credentials() -> None:
        client = request.client
        credentials_ended.append(
            await service.until_credentials_end(request.headers, client.host if client else None)
        )
        finished.set()
        outbox.ready.set()

    rechecks = asyncio.create_task(recheck_credentials()) if revocable(caller) else None

    async def stream() -> AsyncIterator[str]:
        try:
            yield ": subscribed\n\n"
            while True:
                while outbox.messages and not credentials_ended:
                    yield outbox.messages.popleft()
                if credentials_ended:
                    ended = credentials_ended[0]
                    error = {"message": ended.message, "extensions": {**ended.extensions, "code": ended.code}}
                    yield f"event: next\ndata: {_json({'errors': [error]})}\n\n"
                    break
                if outbox.overflowed:
                    SUBSCRIBERS_TOO_SLOW.inc()
                    error = {
                        "message": TOO_SLOW_REASON,
                        "extensions": {"code": "SUBSCRIBER_TOO_SLOW", "retryable": True},
                    }
                    yield f"event: next\ndata: {_json({'errors': [error]})}\n\n"
                    break
                if finished.is_set():
                    break
                outbox.ready.clear()
                try:
                    async with asyncio.timeout(KEEP_ALIVE_SECONDS):
                        await outbox.ready.wait()
                except TimeoutError:
                    yield ":\n\n"  # keeps proxies from closing an idle stream
            yield "event: complete\ndata:\n\n"
        finally:
            if rechecks is not None:
                rechecks.cancel()
            service.stop(subscription)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
