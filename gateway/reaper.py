"""Deletes stored objects whose rows are gone, in the background, until each deletion succeeds.

A delete mutation writes the object keys to `gateway_object_deletions` in its own transaction and
then `kick()`s the reaper, which deletes the objects right after the request, off its path. A
deletion that fails (the storage is down, a network error) stays in the table with its error and
is tried again after a growing delay (5 s, 10 s, 20 s ... at most 10 min), also after a restart,
by any replica using the same store (each row names its store): deleting an object twice is
harmless.
"""

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from gateway import retention
from gateway.data import object_deletions
from gateway.database import Database
from gateway.storage import ObjectStore
from gateway.timestamps import format_timestamp

logger = logging.getLogger("gateway.reaper")

BATCH = 100
CONCURRENCY = 16
MAX_DELAY_SECONDS = 600


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(5 * 2 ** min(attempts, 10), MAX_DELAY_SECONDS))


class ObjectReaper:
    def __init__(
        self, db: Database, store: ObjectStore, *, interval: float = 30.0, retention_days: float | None = None
    ) -> None:
        self.db = db
        self.store = store
        self.interval = interval
        self.retention_days = retention_days
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        """Work now (after a delete committed) instead of at the next interval."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            await self._warn_of_other_stores()
            self._task = asyncio.create_task(self._loop(), name="gateway-object-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _warn_of_other_stores(self) -> None:
        try:
            async with self.db.session() as session:
                others = await object_deletions.deletions_of_other_stores(session, store=self.store.location)
        except Exception:  # only a warning: never keep the gateway from starting
            logger.exception("could not count the deletions recorded for other stores")
            return
        for store, count in others.items():
            logger.warning(
                "%d stored objects of %s wait to be deleted, but this gateway uses %s: "
                "only a gateway configured with that store deletes them",
                count,
                store,
                self.store.location,
            )

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            self._wake.clear()
            try:
                if self.retention_days is not None:
                    await self.apply_retention(self.retention_days)
                while await self.run_once() == BATCH:
                    pass  # a full batch: there may be more due
            except Exception:  # the database may be down too: try again at the next interval
                logger.exception("the object reaper failed; it tries again in %s s", self.interval)

    async def apply_retention(self, days: float) -> int:
        """Delete the threads not active for `days` days (GATEWAY_RETENTION_DAYS), batch by batch,
        their objects through the outbox; returns how many."""
        cutoff, deleted = retention.cutoff_of(days), 0
        while threads := await retention.prune_batch(
            self.db, cutoff=cutoff, user_identifier=None, store=self.store.location
        ):
            deleted += len(threads)
        if deleted:
            logger.info("retention: deleted %d threads not active since %s", deleted, cutoff)
        return deleted

    async def drain(self) -> int:
        """Try every deletion of this store once now, also those waiting for a later retry (for the
        CLI, which has no background task); returns how many are still waiting."""
        async with self.db.transaction() as session:
            await object_deletions.retry_now(
                session, store=self.store.location, now=format_timestamp(datetime.now(UTC))
            )
        while await self.run_once() == BATCH:
            pass
        async with self.db.session() as session:
            return await object_deletions.count_deletions(session, store=self.store.location)

    async def run_once(self) -> int:
        """Give up uploads never completed, then try every due deletion once; returns how many
        deletions were due."""
        now = datetime.now(UTC)
        store = self.store.location
        async with self.db.transaction() as session:
            abandoned = await object_deletions.expire_pending_uploads(
                session, store=store, now=format_timestamp(now)
            )
            await object_deletions.enqueue_deletions(
                session, object_keys=abandoned, store=store, now=format_timestamp(now)
            )
        async with self.db.session() as session:
            due = await object_deletions.due_deletions(
                session, store=store, now=format_timestamp(now), limit=BATCH
            )
        if not due:
            return 0
        limit = asyncio.Semaphore(CONCURRENCY)

        async def delete(key: str) -> BaseException | None:
            async with limit:
                try:
                    await self.store.delete(key)
                except Exception as error:
                    return error
                return None

        outcomes = await asyncio.gather(*(delete(item.objectKey) for item in due))
        async with self.db.transaction() as session:
            await object_deletions.finish_deletions(
                session, ids=[item.id for item, error in zip(due, outcomes, strict=True) if error is None]
            )
            for item, error in zip(due, outcomes, strict=True):
                if error is not None:
                    logger.warning(
                        "could not delete stored object %s (attempt %d): %s",
                        item.objectKey,
                        item.attempts + 1,
                        error,
                    )
                    await object_deletions.postpone_deletion(
                        session,
                        deletion_id=item.id,
                        error=f"{type(error).__name__}: {error}",
                        next_attempt_at=format_timestamp(now + retry_delay(item.attempts)),
                    )
        return len(due)
