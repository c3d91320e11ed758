"""The event hub of one process: reads the event log (gateway.data.thread_events) in position order
and hands each event to the subscriptions watching its thread or its owner.

One reader per process, woken three ways: by this process's own writes (`kick()` after a commit),
by PostgreSQL's NOTIFY (every replica's writes, and a Chainlit app's own, through the triggers of
migration 0009: one listening connection per process, reconnected when it drops), and by a slow
poll (SQLite's other processes; a safety net). Whatever woke it, it reads every event after the
last one it handed out, so a missed wake-up or a reconnect loses nothing.

Subscribers sharing a `group` (same selection, same caller) get one rendering of each event: the
payload is built once per distinct selection, not once per subscriber. The background loop also
prunes events older than the retention.
"""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
from sqlalchemy.engine import make_url

from gateway.data import thread_events
from gateway.data.thread_events import THREAD_KINDS
from gateway.database import Database
from gateway.tables import ThreadEvent
from gateway.timestamps import format_timestamp

logger = logging.getLogger("gateway.events")

NOTIFY_CHANNEL = "gateway_thread_events"  # migration 0009's trigger notifies it
LISTENER_NAME = "gateway-event-listener"  # its application_name, to tell it apart in pg_stat_activity
READ_BATCH = 500
LISTENER_PING_SECONDS = 2.0


class EventGroup(Protocol):
    """Subscribers that receive the same rendering of an event (same selection, same caller)."""

    async def render_many(self, events: Sequence[ThreadEvent]) -> list[Any]:
        """Each event's rendering, or the exception rendering it raised."""
        ...


_NOT_RENDERED = object()


class Subscriber(Hashable, Protocol):
    @property
    def group(self) -> EventGroup: ...

    def deliver(self, event: ThreadEvent, rendered: Any) -> None:
        """Take the event, never blocking: a subscriber too slow to keep up closes itself."""
        ...


class EventHub:
    def __init__(
        self,
        db: Database,
        *,
        poll_seconds: float = 1.0,
        retention: timedelta = timedelta(hours=24),
        listen: bool = True,
    ) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.retention = retention
        self.listen = listen and db.dialect_name == "postgresql"
        # Every event up to here has been handed to the subscribers watching then.
        self.position = 0
        self._threads: dict[str, set[Subscriber]] = defaultdict(set)
        self._users: dict[str, set[Subscriber]] = defaultdict(set)
        # Subscriber -> the (index, key) entries it is in: unwatch visits only those, not every
        # watched thread (closing 10,000 subscriptions would otherwise take quadratic time).
        self._entries: dict[Subscriber, list[tuple[dict[str, set[Subscriber]], str]]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pruned_at = 0.0
        self._skipped_at = float("-inf")
        self._stopping = False
        self.listener_connected = asyncio.Event()

    async def start(self) -> None:
        if self._tasks:
            return
        async with self.db.session() as session:
            self.position = await thread_events.latest_position(session)
        self._tasks.append(asyncio.create_task(self._read_loop(), name="gateway-event-reader"))
        if self.listen:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="gateway-event-listener"))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def kick(self) -> None:
        """Read the log now (a write committed, or NOTIFY said one did)."""
        self._wake.set()

    def watch_thread(self, thread_id: str, subscriber: Subscriber) -> int:
        """Hand `subscriber` every event of the thread after the returned position (which it
        reads from the log itself, for a replay)."""
        return self._watch(self._threads, thread_id, subscriber)

    def watch_user(self, user_id: str, subscriber: Subscriber) -> int:
        """Hand `subscriber` the thread events of the user's list after the returned position."""
        return self._watch(self._users, user_id, subscriber)

    def _watch(self, index: dict[str, set[Subscriber]], key: str, subscriber: Subscriber) -> int:
        watching = index[key]
        if subscriber not in watching:
            watching.add(subscriber)
            self._entries.setdefault(subscriber, []).append((index, key))
        return self.position

    def unwatch(self, subscriber: Subscriber) -> None:
        """Stop handing `subscriber` anything (whatever it watched)."""
        for index, key in self._entries.pop(subscriber, ()):
            watching = index[key]
            watching.discard(subscriber)
            if not watching:
                del index[key]

    @property
    def subscriber_count(self) -> int:
        return sum(len(watching) for watching in self._threads.values()) + sum(
            len(watching) for watching in self._users.values()
        )

    @property
    def watched_count(self) -> int:
        """Threads and user lists with at least one subscriber (an entry goes with its last one)."""
        return len(self._threads) + len(self._users)

    async def _read_loop(self) -> None:
        while not self._stopping:
            # asyncio.timeout, not wait_for: a cancellation arriving with a wake-up is not lost.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.read_new_events()
                await self._prune_when_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be down: the next wake-up reads from the same place
                logger.exception("reading the event log failed; retrying in %s s", self.poll_seconds)

    async def read_new_events(self) -> None:
        if not self._threads and not self._users:
            # Nobody here watches: move past what is there without reading it, at most once per
            # poll (every write wakes the hub; a query per write for no one is a write's tenth).
            # A subscriber arriving meanwhile is handed out what came since, as any other: correct,
            # and at most a poll's worth of events is read again.
            loop_time = asyncio.get_running_loop().time()
            if loop_time - self._skipped_at < self.poll_seconds:
                return
            self._skipped_at = loop_time
            async with self.db.session() as session:
                latest = await thread_events.latest_position(session)
            if not self._threads and not self._users:  # else someone started watching meanwhile
                self.position = max(self.position, latest)
                return
        while True:
            async with self.db.session() as session:
                batch = await thread_events.events_after(session, after=self.position, limit=READ_BATCH)
            if batch:
                await self._dispatch(batch)
            if len(batch) < READ_BATCH:
                return

    async def _dispatch(self, batch: Sequence[ThreadEvent]) -> None:
        """Hands each event of the batch to the subscribers watching then, in order. Each group
        renders its events of the batch together (one read per field for all of them), and only
        then is anything handed out: a subscriber's events of one batch go out in one write."""
        assert batch[-1].position is not None
        # Set before any await: a subscriber registering while these render replays them.
        self.position = batch[-1].position
        handouts: list[tuple[ThreadEvent, dict[EventGroup, list[Subscriber]]]] = []
        wanted: dict[EventGroup, list[ThreadEvent]] = defaultdict(list)
        for event in batch:
            targets: list[Subscriber] = []
            if not event.activity:
                targets.extend(self._threads.get(event.threadId, ()))
            if event.userId is not None and event.kind in THREAD_KINDS:
                targets.extend(self._users.get(event.userId, ()))
            if not targets:
                continue
            by_group: dict[EventGroup, list[Subscriber]] = defaultdict(list)
            for subscriber in targets:
                by_group[subscriber.group].append(subscriber)
            for group in by_group:
                wanted[group].append(event)
            handouts.append((event, by_group))
        if not handouts:
            return
        groups = list(wanted)
        rendered = await asyncio.gather(*(group.render_many(wanted[group]) for group in groups))
        renderings: dict[tuple[EventGroup, int | None], Any] = {}
        for group, results in zip(groups, rendered, strict=True):
            for event, result in zip(wanted[group], results, strict=True):
                if isinstance(result, BaseException):
                    logger.error("rendering event %s failed", event.position, exc_info=result)
                else:
                    renderings[group, event.position] = result
        for event, by_group in handouts:
            for group, subscribers in by_group.items():
                result = renderings.get((group, event.position), _NOT_RENDERED)
                if result is not _NOT_RENDERED:
                    for subscriber in subscribers:
                        subscriber.deliver(event, result)

    async def _prune_when_due(self) -> None:
        interval = min(60.0, self.retention.total_seconds() / 4)
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._pruned_at < interval:
            return
        self._pruned_at = loop_time
        await self.prune()

    async def prune(self) -> int:
        """Delete the events older than the retention (any replica may: deleting twice is harmless)."""
        cutoff = format_timestamp(datetime.now(UTC) - self.retention)
        async with self.db.transaction() as session:
            return await thread_events.prune_events(session, before=cutoff)

    async def _listen_loop(self) -> None:
        dsn = make_url(self.db.url).set(drivername="postgresql").render_as_string(hide_password=False)
        delay = 0.2
        while not self._stopping:
            connection: Any = None
            try:
                connection = await asyncpg.connect(
                    dsn, timeout=10, server_settings={"application_name": LISTENER_NAME}
                )
                await connection.add_listener(NOTIFY_CHANNEL, lambda *_: self.kick())
                self.listener_connected.set()
                self.kick()  # catch up with what committed while nobody listened
                delay = 0.2
                while not connection.is_closed():
                    await asyncio.sleep(LISTENER_PING_SECONDS)
                    await connection.execute("SELECT 1")  # notices a connection dropped silently
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("the event listener's connection failed (%r); reconnecting", error)
            finally:
                self.listener_connected.clear()
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
