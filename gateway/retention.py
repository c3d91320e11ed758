"""Retention: threads not active for a number of days are deleted, with their steps, feedback,
elements and stored objects (the objects through the deletion outbox, so a store that cannot be
reached loses nothing: the reaper deletes them when it can). `gateway prune` does it once;
GATEWAY_RETENTION_DAYS makes the reaper's background task do it continuously."""

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from gateway.data import object_deletions, transfer
from gateway.data.threads import delete_threads
from gateway.data.transfer import Row
from gateway.database import Database
from gateway.tables import threads_table
from gateway.timestamps import format_timestamp, utc_now

BATCH = 100


def cutoff_of(days: float, now: datetime | None = None) -> str:
    """The moment before which a thread's last activity makes it expire."""
    return format_timestamp((now or datetime.now(UTC)) - timedelta(days=days))


async def expired_threads(
    db: Database, *, cutoff: str, user_identifier: str | None, after: tuple[str, str] | None = None
) -> list[Row]:
    """A batch of expired threads, oldest first, after `after` (last activity, id): what a dry run
    lists."""
    async with db.session() as session:
        return await transfer.threads_inactive_since(
            session, cutoff=cutoff, user_identifier=user_identifier, limit=BATCH, after=after
        )


async def prune_batch(db: Database, *, cutoff: str, user_identifier: str | None, store: str) -> list[Row]:
    """Delete a batch of expired threads in one transaction, their stored objects recorded in the
    outbox in the same transaction; returns the threads deleted (none: all done)."""
    async with db.transaction() as session:
        threads = await transfer.threads_inactive_since(
            session, cutoff=cutoff, user_identifier=user_identifier, limit=BATCH
        )
        if not threads:
            return []
        # Still expired, and locked until deleted: a step written since the batch was read keeps
        # its thread. (Ids first: deleting the steps moves the thread's activity to now.)
        still_expired = (
            sa.select(threads_table.c.id)
            .where(
                threads_table.c.id.in_([thread["id"] for thread in threads]),
                sa.func.coalesce(threads_table.c.updatedAt, threads_table.c.createdAt) < cutoff,
            )
            .with_for_update()
        )
        ids = set((await session.execute(still_expired)).scalars())
        object_keys = await delete_threads(session, thread_ids=sorted(ids))
        await object_deletions.enqueue_deletions(session, object_keys=object_keys, store=store, now=utc_now())
    return [thread for thread in threads if thread["id"] in ids]
