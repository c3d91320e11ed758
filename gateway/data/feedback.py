"""Feedback: one row per step (a second rating of the same step updates the first)."""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data.access import Access, not_yours, require_writable_row, require_writable_thread
from gateway.data.common import KEEP, Keep, from_row, insert
from gateway.data.pagination import Ordering, Page, PageRequest, count_by_parent, fetch_pages_by_parent
from gateway.errors import BadUserInput, Conflict, NotFound
from gateway.ids import new_id
from gateway.tables import Feedback, feedbacks_table, steps_table

FEEDBACK_ORDER = Ordering("feedbacks:id", (feedbacks_table.c.id,))
FEEDBACK_VALUES = (0, 1)


async def get_feedback_of_steps(session: AsyncSession, *, step_ids: Sequence[str]) -> dict[str, Feedback]:
    statement = sa.select(Feedback).where(feedbacks_table.c.forId.in_(list(step_ids)))
    return {row.forId: row for row in (await session.execute(statement)).scalars()}


async def get_feedbacks_by_ids(
    session: AsyncSession, *, ids: Sequence[str], access: Access
) -> dict[str, Feedback]:
    statement = sa.select(Feedback).where(feedbacks_table.c.id.in_(list(ids)), *access.readable_feedbacks())
    return {row.id: row for row in (await session.execute(statement)).scalars()}


async def list_feedbacks_of_threads(
    session: AsyncSession, *, thread_ids: Sequence[str], request: PageRequest
) -> dict[str, Page[Feedback]]:
    return await fetch_pages_by_parent(
        session,
        model=Feedback,
        parent_column=feedbacks_table.c.threadId,
        parent_ids=thread_ids,
        ordering=FEEDBACK_ORDER,
        request=request,
    )


async def count_feedbacks_of_threads(session: AsyncSession, *, thread_ids: Sequence[str]) -> dict[str, int]:
    return await count_by_parent(session, parent_column=feedbacks_table.c.threadId, parent_ids=thread_ids)


async def upsert_feedback(
    session: AsyncSession,
    *,
    for_id: str,
    value: int,
    access: Access,
    comment: str | Keep | None = KEEP,
    feedback_id: str | None = None,
) -> Feedback:
    """Rate a step. Keyed by the step, so concurrent ratings of one step make one row. A user
    rates steps of their own threads only."""
    if value not in FEEDBACK_VALUES:
        raise BadUserInput(
            f"feedback value must be 0 (thumbs down) or 1 (thumbs up), not {value}", field="value"
        )
    missing_step = NotFound(f"step {for_id} does not exist", field="forId")
    thread_id = (
        await session.execute(
            sa.select(steps_table.c.threadId).where(steps_table.c.id == for_id, *access.readable_steps())
        )
    ).scalar_one_or_none()
    if thread_id is None:
        raise missing_step
    await require_writable_thread(session, access=access, thread_id=thread_id, missing=missing_step)
    if feedback_id is not None and not access.everything:
        taken = sa.select(feedbacks_table.c.id).where(
            feedbacks_table.c.id == feedback_id, sa.not_(sa.and_(*access.readable_feedbacks()))
        )
        if (await session.execute(taken)).first() is not None:
            raise not_yours("feedback", feedback_id)
    if feedback_id is not None:
        other_step = (
            await session.execute(
                sa.select(feedbacks_table.c.forId).where(
                    feedbacks_table.c.id == feedback_id, *access.readable_feedbacks()
                )
            )
        ).scalar_one_or_none()
        if other_step is not None and other_step != for_id:
            raise Conflict(f"feedback {feedback_id} rates step {other_step}, not {for_id}", field="id")
    new_row = {
        "id": feedback_id or new_id(),
        "forId": for_id,
        "threadId": thread_id,
        "value": value,
        "comment": None if comment is KEEP else comment,
    }
    statement = insert(session, feedbacks_table).values(new_row)
    set_ = {"value": statement.excluded.value}
    if comment is not KEEP:
        set_["comment"] = statement.excluded.comment
    statement = statement.on_conflict_do_update(index_elements=[feedbacks_table.c.forId], set_=set_)
    row = (await session.execute(statement.returning(*feedbacks_table.c))).one()
    return from_row(Feedback, row)  # type: ignore[no-any-return]


async def delete_feedback(session: AsyncSession, *, feedback_id: str, access: Access) -> None:
    missing = NotFound(f"feedback {feedback_id} does not exist", field="id")
    if not access.everything:
        await require_writable_row(
            session,
            access=access,
            table=feedbacks_table,
            row_id=feedback_id,
            readable=access.readable_feedbacks(),
            missing=missing,
        )
    deleted = (
        await session.execute(
            sa.delete(feedbacks_table)
            .where(feedbacks_table.c.id == feedback_id)
            .returning(feedbacks_table.c.id)
        )
    ).first()
    if deleted is None:
        raise missing
