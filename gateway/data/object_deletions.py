"""The outbox of stored objects to delete: filled in the transaction that deletes their rows,
emptied by `gateway.reaper` once each object is gone. And uploads not completed yet, whose objects
join the outbox when they expire."""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data.access import Access
from gateway.ids import new_id
from gateway.tables import ObjectDeletion, PendingUpload, object_deletions_table, pending_uploads_table


async def enqueue_deletions(
    session: AsyncSession, *, object_keys: Sequence[str], store: str, now: str
) -> None:
    """Record objects of `store` (its `ObjectStore.location`) to delete."""
    rows = [
        {
            "id": new_id(),
            "objectKey": key,
            "store": store,
            "createdAt": now,
            "attempts": 0,
            "nextAttemptAt": now,
        }
        for key in object_keys
    ]
    if rows:
        await session.execute(sa.insert(object_deletions_table), rows)


def _in_store(table: sa.Table, store: str) -> sa.ColumnElement[bool]:
    """Rows of this store, and rows recorded before stores were named (any store takes those)."""
    return sa.or_(table.c.store == store, table.c.store.is_(None))


async def due_deletions(session: AsyncSession, *, store: str, now: str, limit: int) -> list[ObjectDeletion]:
    statement = (
        sa.select(ObjectDeletion)
        .where(object_deletions_table.c.nextAttemptAt <= now, _in_store(object_deletions_table, store))
        .order_by(object_deletions_table.c.nextAttemptAt)
        .limit(limit)
    )
    return list((await session.execute(statement)).scalars())


async def finish_deletions(session: AsyncSession, *, ids: Sequence[str]) -> None:
    if ids:
        await session.execute(sa.delete(object_deletions_table).where(object_deletions_table.c.id.in_(ids)))


async def postpone_deletion(
    session: AsyncSession, *, deletion_id: str, error: str, next_attempt_at: str
) -> None:
    await session.execute(
        sa.update(object_deletions_table)
        .where(object_deletions_table.c.id == deletion_id)
        .values(
            attempts=object_deletions_table.c.attempts + 1,
            lastError=error[:2000],
            nextAttemptAt=next_attempt_at,
        )
    )


async def deletions_of_other_stores(session: AsyncSession, *, store: str) -> dict[str, int]:
    """How many deletions wait for each store other than this one (no gateway of ours reaches
    them, if storage moved)."""
    table = object_deletions_table
    statement = (
        sa.select(table.c.store, sa.func.count())
        .where(table.c.store != store)
        .group_by(table.c.store)
        .order_by(table.c.store)
    )
    return {name: count for name, count in (await session.execute(statement)).all()}


async def retry_now(session: AsyncSession, *, store: str, now: str) -> None:
    """Make this store's deletions waiting for a later retry due now."""
    table = object_deletions_table
    await session.execute(
        sa.update(table).where(table.c.nextAttemptAt > now, _in_store(table, store)).values(nextAttemptAt=now)
    )


async def count_deletions(session: AsyncSession, *, store: str) -> int:
    """How many deletions of this store wait (due or postponed)."""
    table = object_deletions_table
    statement = sa.select(sa.func.count()).select_from(table).where(_in_store(table, store))
    return int((await session.execute(statement)).scalar_one())


async def pending_deletions(session: AsyncSession) -> list[ObjectDeletion]:
    """Every deletion still to do, oldest first (for `gateway` operators and tests)."""
    statement = sa.select(ObjectDeletion).order_by(object_deletions_table.c.createdAt)
    return list((await session.execute(statement)).scalars())


async def add_pending_upload(session: AsyncSession, *, upload: PendingUpload) -> None:
    session.add(upload)
    await session.flush()


async def get_pending_upload(
    session: AsyncSession, *, element_id: str, access: Access
) -> PendingUpload | None:
    """The caller's pending upload of this element (a backend's: any)."""
    statement = sa.select(PendingUpload).where(pending_uploads_table.c.id == element_id)
    if not access.everything:
        statement = statement.where(pending_uploads_table.c.userId == access.user_id)
    return (await session.execute(statement)).scalars().first()


async def take_pending_upload(
    session: AsyncSession, *, element_id: str, access: Access, now: str
) -> str | None:
    """Remove the caller's pending upload of this element, if it has not expired; returns its
    object key. Taking it in the transaction that writes the element makes the completion and the
    reaper's expiry exclude each other: only one of them gets the row."""
    table = pending_uploads_table
    statement = sa.delete(table).where(table.c.id == element_id, table.c.expiresAt > now)
    if not access.everything:
        statement = statement.where(table.c.userId == access.user_id)
    return (await session.execute(statement.returning(table.c.objectKey))).scalar_one_or_none()


async def upload_is_pending(session: AsyncSession, *, object_key: str, now: str) -> bool:
    """Whether an upload to this key was asked for and is neither completed nor expired."""
    table = pending_uploads_table
    statement = sa.select(table.c.id).where(table.c.objectKey == object_key, table.c.expiresAt > now)
    return (await session.execute(statement)).first() is not None


async def expire_pending_uploads(session: AsyncSession, *, store: str, now: str) -> list[str]:
    """Drop this store's uploads never completed in time; returns their object keys (to delete)."""
    expired = sa.delete(pending_uploads_table).where(
        pending_uploads_table.c.expiresAt < now, _in_store(pending_uploads_table, store)
    )
    return list((await session.execute(expired.returning(pending_uploads_table.c.objectKey))).scalars())
