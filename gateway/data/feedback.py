"""Feedback: one row per step (a second rating of the same step updates the first)."""

import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data.access import (
    ACCESS_USER_PARAMETER,
    Access,
    not_yours,
    require_writable_row,
    require_writable_thread,
)
from gateway.data.common import KEEP, Keep, dialect_insert, dialect_name, from_row
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
    rates steps of their own threads only.

    One statement: the step's thread, the caller's access and a given id's step are conditions of
    the INSERT .. SELECT; only a refusal costs more statements, to tell why."""
    if value not in FEEDBACK_VALUES:
        raise BadUserInput(
            f"feedback value must be 0 (thumbs down) or 1 (thumbs up), not {value}", field="value"
        )
    statement = _rate_step(
        dialect_name(session),
        keep_comment=comment is KEEP,
        users_own=not access.everything,
        with_id=feedback_id is not None,
    )
    parameters = {
        "feedback_id": feedback_id or new_id(),
        "for_id": for_id,
        "value": value,
        "comment": None if comment is KEEP else comment,
    }
    if not access.everything:
        parameters[ACCESS_USER_PARAMETER] = access.user_id
    row = (await session.execute(statement, parameters)).one_or_none()
    if row is None:
        await _refuse_rating(session, for_id=for_id, access=access, feedback_id=feedback_id)
        # Every check passes now: the step or the id changed between the write and the checks.
        raise Conflict("a concurrent write to the same rows won; retry the request", retryable=True)
    return from_row(Feedback, row)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=16)
def _rate_step(dialect: str, *, keep_comment: bool, users_own: bool, with_id: bool) -> Any:
    """INSERT .. SELECT of a rating from the step's row, so the step's thread, the caller's access
    (a user's own threads) and a given id's step are conditions of the one statement; ON CONFLICT
    of the step's existing rating updates it. Built once per shape (values are parameters)."""
    for_id = sa.bindparam("for_id", type_=steps_table.c.id.type)
    feedback_id = sa.bindparam("feedback_id", type_=feedbacks_table.c.id.type)
    owner = Access(user_id="") if users_own else Access()  # its user is the access_user_id parameter
    conditions = [steps_table.c.id == for_id, *owner.writable_steps()]
    if with_id:
        # That id must not rate another step (that is a conflict, or someone else's feedback).
        rates_other = sa.select(feedbacks_table.c.id).where(
            feedbacks_table.c.id == feedback_id, feedbacks_table.c.forId != for_id
        )
        conditions.append(~rates_other.exists())
    proposed = sa.select(
        feedback_id,
        steps_table.c.id,
        steps_table.c.threadId,
        sa.bindparam("value", type_=feedbacks_table.c.value.type),
        sa.bindparam("comment", type_=feedbacks_table.c.comment.type),
    ).where(*conditions)
    statement = dialect_insert(dialect, feedbacks_table).from_select(
        ["id", "forId", "threadId", "value", "comment"], proposed
    )
    set_ = {"value": statement.excluded.value}
    if not keep_comment:
        set_["comment"] = statement.excluded.comment
    return statement.on_conflict_do_update(index_elements=[feedbacks_table.c.forId], set_=set_).returning(
        *feedbacks_table.c
    )


async def _refuse_rating(
    session: AsyncSession, *, for_id: str, access: Access, feedback_id: str | None
) -> None:
    """Raise why the caller cannot rate `for_id` (with `feedback_id`), if they cannot."""
    missing_step = NotFound(f"step {for_id} does not exist", field="forId")
    thread_id = (
        await session.execute(
            sa.select(steps_table.c.threadId).where(steps_table.c.id == for_id, *access.readable_steps())
        )
    ).scalar_one_or_none()
    if thread_id is None:
        raise missing_step
    await require_writable_thread(session, access=access, thread_id=thread_id, missing=missing_step)
    if feedback_id is None:
        return
    if not access.everything:
        taken = sa.select(feedbacks_table.c.id).where(
            feedbacks_table.c.id == feedback_id, sa.not_(sa.and_(*access.readable_feedbacks()))
        )
        if (await session.execute(taken)).first() is not None:
            raise not_yours("feedback", feedback_id)
    other_step = (
        await session.execute(
            sa.select(feedbacks_table.c.forId).where(
                feedbacks_table.c.id == feedback_id, *access.readable_feedbacks()
            )
        )
    ).scalar_one_or_none()
    if other_step is not None and other_step != for_id:
        raise Conflict(f"feedback {feedback_id} rates step {other_step}, not {for_id}", field="id")


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
