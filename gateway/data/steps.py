"""Steps: a thread's steps page by page (many threads in one statement), partial upserts that are
safe against concurrent writers, streamed output, and deletion of a step with its descendants."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data.access import Access, not_yours, require_writable_thread
from gateway.data.common import (
    KEEP,
    Keep,
    changed,
    from_row,
    given,
    insert,
    metadata_patch_to_new,
    update_values,
)
from gateway.data.pagination import (
    Ordering,
    Page,
    PageRequest,
    count_by_parent,
    count_rows,
    fetch_page,
    fetch_pages_by_parent,
)
from gateway.data.threads import ensure_thread
from gateway.errors import BadUserInput, Conflict, NotFound
from gateway.jsonops import sql_json_contains
from gateway.tables import Step, elements_table, feedbacks_table, steps_table, threads_table

STEP_ORDER = Ordering("steps:createdAt", (steps_table.c.createdAt, steps_table.c.id))
FAVORITE_ORDER = Ordering("favorites:createdAt:desc", (steps_table.c.createdAt, steps_table.c.id), True)


@dataclass(frozen=True)
class StepFilter:
    types: tuple[str, ...] = ()
    root_only: bool = False


@dataclass
class StepChanges:
    """What an upsert sets; `KEEP` leaves the stored value alone. `metadata` is a patch."""

    name: str | Keep = KEEP
    type: str | Keep = KEEP
    parentId: str | Keep | None = KEEP
    input: str | Keep | None = KEEP
    output: str | Keep | None = KEEP
    isError: bool | Keep | None = KEEP
    streaming: bool | Keep = KEEP
    waitForAnswer: bool | Keep | None = KEEP
    showInput: str | Keep | None = KEEP
    language: str | Keep | None = KEEP
    command: str | Keep | None = KEEP
    modes: Any | Keep = KEEP
    defaultOpen: bool | Keep | None = KEEP
    autoCollapse: bool | Keep | None = KEEP
    tags: list[str] | Keep | None = KEEP
    metadata: dict[str, Any] | Keep = KEEP
    generation: dict[str, Any] | Keep | None = KEEP
    createdAt: str | Keep = KEEP
    start: str | Keep | None = KEEP
    end: str | Keep | None = KEEP


# A step created by an update that arrived before its create still satisfies Chainlit's NOT NULLs.
NEW_STEP_DEFAULTS = {"name": "", "type": "undefined", "streaming": False}


def step_filter_conditions(step_filter: StepFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if step_filter.types:
        conditions.append(steps_table.c.type.in_(step_filter.types))
    if step_filter.root_only:
        conditions.append(steps_table.c.parentId.is_(None))
    return conditions


async def get_steps_by_ids(session: AsyncSession, *, ids: Sequence[str], access: Access) -> dict[str, Step]:
    statement = sa.select(Step).where(steps_table.c.id.in_(list(ids)), *access.readable_steps())
    return {row.id: row for row in (await session.execute(statement)).scalars()}


async def list_steps_of_threads(
    session: AsyncSession, *, thread_ids: Sequence[str], request: PageRequest, step_filter: StepFilter
) -> dict[str, Page[Step]]:
    """Each thread's steps, oldest first, one page per thread, in one statement."""
    return await fetch_pages_by_parent(
        session,
        model=Step,
        parent_column=steps_table.c.threadId,
        parent_ids=thread_ids,
        ordering=STEP_ORDER,
        request=request,
        where=step_filter_conditions(step_filter),
    )


async def count_steps_of_threads(
    session: AsyncSession, *, thread_ids: Sequence[str], step_filter: StepFilter
) -> dict[str, int]:
    return await count_by_parent(
        session,
        parent_column=steps_table.c.threadId,
        parent_ids=thread_ids,
        where=step_filter_conditions(step_filter),
    )


# A child may sit in another thread than its parent (parentId is not checked on write), so children
# are filtered by the caller's access, unlike a thread's steps, which share their visible thread.


async def list_children_of_steps(
    session: AsyncSession, *, parent_ids: Sequence[str], request: PageRequest, access: Access
) -> dict[str, Page[Step]]:
    return await fetch_pages_by_parent(
        session,
        model=Step,
        parent_column=steps_table.c.parentId,
        parent_ids=parent_ids,
        ordering=STEP_ORDER,
        request=request,
        where=access.readable_steps(),
    )


async def count_children_of_steps(
    session: AsyncSession, *, parent_ids: Sequence[str], access: Access
) -> dict[str, int]:
    return await count_by_parent(
        session, parent_column=steps_table.c.parentId, parent_ids=parent_ids, where=access.readable_steps()
    )


def _favorite_conditions(user_id: str | None, access: Access) -> list[sa.ColumnElement[bool]]:
    conditions = [sql_json_contains(steps_table.c.metadata, {"favorite": True}), *access.owned_steps()]
    if user_id is not None:
        owned = sa.select(threads_table.c.id).where(threads_table.c.userId == user_id)
        conditions.append(steps_table.c.threadId.in_(owned.scalar_subquery()))
    return conditions


async def list_favorite_steps(
    session: AsyncSession, *, user_id: str | None, request: PageRequest, access: Access
) -> Page[Step]:
    """Steps whose `metadata.favorite` is true (Chainlit's favorites), newest first; a user's own."""
    return await fetch_page(
        session,
        model=Step,
        ordering=FAVORITE_ORDER,
        request=request,
        where=_favorite_conditions(user_id, access),
    )


async def count_favorite_steps(session: AsyncSession, *, user_id: str | None, access: Access) -> int:
    return await count_rows(session, model=Step, where=_favorite_conditions(user_id, access))


async def _writable_step(session: AsyncSession, *, step_id: str, access: Access, missing: NotFound) -> Step:
    """The step, if the caller may change it: `missing` when it does not exist or the caller cannot
    see it (the same answer, so ids cannot be probed); FORBIDDEN in a thread shared read-only."""
    statement = sa.select(Step).where(steps_table.c.id == step_id, *access.readable_steps())
    step = (await session.execute(statement)).scalars().first()
    if step is None:
        raise missing
    await require_writable_thread(session, access=access, thread_id=step.threadId, missing=missing)
    return step


def _missing_step(step_id: str) -> NotFound:
    return NotFound(f"step {step_id} does not exist", field="id")


def _not_created(step_id: str) -> NotFound:
    return NotFound(f"step {step_id} does not exist; give its threadId to create it", field="id")


async def _check_user_step_write(
    session: AsyncSession,
    *,
    step_id: str,
    thread_id: str | None,
    parent_id: str | None,
    access: Access,
    now: str,
) -> None:
    """A user writes steps only in threads of their own (a missing thread is created theirs), and
    nests them only under steps of the same thread."""
    existing = (
        await session.execute(sa.select(steps_table.c.threadId).where(steps_table.c.id == step_id))
    ).first()
    if existing is not None:
        hidden = _not_created(step_id) if thread_id is None else not_yours("step", step_id)
        step = await _writable_step(session, step_id=step_id, access=access, missing=hidden)
        if thread_id is not None and step.threadId != thread_id:
            # Told before `thread_id` is looked at: the answer says nothing of that thread.
            raise Conflict(
                f"step {step_id} belongs to thread {step.threadId}, not {thread_id}", field="threadId"
            )
        thread_id = step.threadId
    if thread_id is not None:
        await ensure_thread(session, thread_id=thread_id, access=access, now=now)
        await require_writable_thread(
            session, access=access, thread_id=thread_id, missing=not_yours("thread", thread_id, "threadId")
        )
    if parent_id is not None:
        # The parent must already be in the step's own thread: a user cannot hang steps under
        # (and so into the view of) another user's conversation, nor learn whether an id exists.
        parent = sa.select(steps_table.c.id).where(
            steps_table.c.id == parent_id, steps_table.c.threadId == thread_id
        )
        if (await session.execute(parent)).first() is None:
            raise BadUserInput(f"parentId {parent_id} is not a step of this step's thread", field="parentId")


async def upsert_step(
    session: AsyncSession,
    *,
    step_id: str,
    thread_id: str | None,
    changes: StepChanges,
    access: Access,
    now: str,
) -> Step:
    """Create the step, or change only the fields given, atomically (`INSERT .. ON CONFLICT`), so an
    update racing the create of the same step loses nothing. With a `threadId`, a missing thread is
    created. A database trigger moves the thread's `updatedAt` when the step row really changes."""
    fields = given(changes)
    if fields.get("parentId") == step_id:
        raise BadUserInput("a step cannot be its own parent", field="parentId")
    if not access.everything:
        await _check_user_step_write(
            session,
            step_id=step_id,
            thread_id=thread_id,
            parent_id=fields.get("parentId"),
            access=access,
            now=now,
        )
    patch = fields.pop("metadata", None)
    updates = {**fields, **({"metadata": patch} if patch is not None else {})}
    set_ = update_values(steps_table, updates)
    returning = [*steps_table.c]
    if thread_id is None:
        if not set_:
            return await _existing_step(session, step_id)
        statement = (
            sa.update(steps_table)
            .where(steps_table.c.id == step_id, changed(steps_table, set_))
            .values(set_)
            .returning(*returning)
        )
    else:
        await ensure_thread(session, thread_id=thread_id, access=access, now=now)
        new_row = {**NEW_STEP_DEFAULTS, "createdAt": now, **fields, "id": step_id, "threadId": thread_id}
        if patch is not None:
            new_row["metadata"] = metadata_patch_to_new(patch)
        insert_statement = insert(session, steps_table).values(new_row)
        # Rows of another thread are never touched; that case is a conflict, told apart below.
        same_thread = steps_table.c.threadId == thread_id
        if set_:
            statement = insert_statement.on_conflict_do_update(
                index_elements=[steps_table.c.id],
                set_=set_,
                where=sa.and_(same_thread, changed(steps_table, set_)),
            ).returning(*returning)
        else:
            statement = insert_statement.on_conflict_do_nothing(index_elements=[steps_table.c.id]).returning(
                *returning
            )
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        step = await _existing_step(session, step_id)
        if thread_id is not None and step.threadId != thread_id:
            # If someone else made it since the check above, a user is told nothing of it.
            await require_writable_thread(
                session, access=access, thread_id=step.threadId, missing=not_yours("step", step_id)
            )
            raise Conflict(
                f"step {step_id} belongs to thread {step.threadId}, not {thread_id}", field="threadId"
            )
        return step
    return from_row(Step, row)  # type: ignore[no-any-return]


async def _existing_step(session: AsyncSession, step_id: str) -> Step:
    step = await session.get(Step, step_id)
    if step is None:
        raise _not_created(step_id)
    return step


async def append_step_output(session: AsyncSession, *, step_id: str, delta: str, access: Access) -> Step:
    """Append streamed tokens in the database itself, so concurrent appends all land."""
    if not access.everything:
        await _writable_step(session, step_id=step_id, access=access, missing=_missing_step(step_id))
    statement = (
        sa.update(steps_table)
        .where(steps_table.c.id == step_id)
        .values(output=sa.func.coalesce(steps_table.c.output, "") + delta)
        .returning(*steps_table.c)
    )
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        raise _missing_step(step_id)
    return from_row(Step, row)  # type: ignore[no-any-return]


async def delete_step(session: AsyncSession, *, step_id: str, access: Access) -> list[str]:
    """Delete the step, its descendants, and their feedback and elements; returns object keys."""
    step = await _writable_step(session, step_id=step_id, access=access, missing=_missing_step(step_id))
    tree = sa.select(steps_table.c.id).where(steps_table.c.id == step_id).cte("subtree", recursive=True)
    children = sa.select(steps_table.c.id).where(
        steps_table.c.parentId == tree.c.id, steps_table.c.threadId == step.threadId
    )
    tree = tree.union(children)
    in_tree = sa.select(tree.c.id)
    await session.execute(sa.delete(feedbacks_table).where(feedbacks_table.c.forId.in_(in_tree)))
    object_keys = (
        (
            await session.execute(
                sa.delete(elements_table)
                .where(elements_table.c.forId.in_(in_tree))
                .returning(elements_table.c.objectKey)
            )
        )
        .scalars()
        .all()
    )
    await session.execute(sa.delete(steps_table).where(steps_table.c.id.in_(in_tree)))
    return [key for key in object_keys if key]
