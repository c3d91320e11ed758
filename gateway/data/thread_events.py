"""The event log (`gateway_thread_events`, written by triggers: migrations 0009, 0010): reading events
in position order, for the live feed and for a subscriber's replay, and pruning old ones."""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.tables import ThreadEvent, thread_events_table

THREAD_KINDS = ("THREAD_CREATED", "THREAD_UPDATED", "THREAD_DELETED")
events = thread_events_table.c


async def latest_position(session: AsyncSession) -> int:
    """The highest position committed so far (0: none)."""
    found = await session.scalar(sa.select(sa.func.max(events.position)))
    return int(found or 0)


async def events_after(session: AsyncSession, *, after: int, limit: int) -> Sequence[ThreadEvent]:
    """Every thread's events after `after`, in order (the live feed of a process)."""
    statement = sa.select(ThreadEvent).where(events.position > after).order_by(events.position).limit(limit)
    return (await session.execute(statement)).scalars().all()


async def thread_events_between(
    session: AsyncSession, *, thread_id: str, after: int, through: int, limit: int
) -> Sequence[ThreadEvent]:
    """One thread's own events (not the activity of its steps) in (after, through], in order."""
    statement = (
        sa.select(ThreadEvent)
        .where(
            events.threadId == thread_id,
            events.position > after,
            events.position <= through,
            events.activity.is_(False),
        )
        .order_by(events.position)
        .limit(limit)
    )
    return (await session.execute(statement)).scalars().all()


async def user_events_between(
    session: AsyncSession, *, user_id: str, after: int, through: int, limit: int
) -> Sequence[ThreadEvent]:
    """The events of a user's thread list (their threads created, changed, deleted, given to
    another owner: migration 0010's THREAD_DELETED, which is `activity`) in (after, through]."""
    statement = (
        sa.select(ThreadEvent)
        .where(
            events.userId == user_id,
            events.kind.in_(THREAD_KINDS),
            events.position > after,
            events.position <= through,
        )
        .order_by(events.position)
        .limit(limit)
    )
    return (await session.execute(statement)).scalars().all()


async def thread_deletion_after(session: AsyncSession, *, thread_id: str, after: int) -> ThreadEvent | None:
    """The THREAD_DELETED event of the thread after `after`, if it was deleted since. Not the
    `activity` one of an owner change (migration 0010): that thread still exists, and the old
    owner may no longer read its feed."""
    statement = sa.select(ThreadEvent).where(
        events.threadId == thread_id,
        events.kind == "THREAD_DELETED",
        events.position > after,
        events.activity.is_(False),
    )
    return (await session.execute(statement.limit(1))).scalars().first()


async def prune_events(session: AsyncSession, *, before: str) -> int:
    """Delete the events recorded before `before` (a timestamp); returns how many."""
    result = await session.execute(sa.delete(thread_events_table).where(events.createdAt < before))
    return int(getattr(result, "rowcount", 0) or 0)
