"""Elements (attachments): read by id, by step and page by page per thread; attached and deleted."""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data.access import Access, not_yours, require_writable_row, require_writable_thread
from gateway.data.common import from_row, insert
from gateway.data.pagination import Ordering, Page, PageRequest, count_by_parent, fetch_pages_by_parent
from gateway.errors import BadUserInput, Conflict, NotFound
from gateway.tables import Element, elements_table, steps_table

ELEMENT_ORDER = Ordering("elements:createdAt", (elements_table.c.createdAt, elements_table.c.id))


async def get_elements_by_ids(
    session: AsyncSession, *, ids: Sequence[str], access: Access
) -> dict[str, Element]:
    statement = sa.select(Element).where(elements_table.c.id.in_(list(ids)), *access.readable_elements())
    return {row.id: row for row in (await session.execute(statement)).scalars()}


async def get_elements_of_steps(
    session: AsyncSession, *, step_ids: Sequence[str], access: Access
) -> dict[str, list[Element]]:
    # The access condition too: an element's thread is its own column, not its step's.
    statement = (
        sa.select(Element)
        .where(elements_table.c.forId.in_(list(step_ids)), *access.readable_elements())
        .order_by(elements_table.c.createdAt, elements_table.c.id)
    )
    grouped: dict[str, list[Element]] = {step_id: [] for step_id in step_ids}
    for row in (await session.execute(statement)).scalars():
        grouped[row.forId].append(row)  # type: ignore[index]
    return grouped


async def list_elements_of_threads(
    session: AsyncSession, *, thread_ids: Sequence[str], request: PageRequest
) -> dict[str, Page[Element]]:
    return await fetch_pages_by_parent(
        session,
        model=Element,
        parent_column=elements_table.c.threadId,
        parent_ids=thread_ids,
        ordering=ELEMENT_ORDER,
        request=request,
    )


async def count_elements_of_threads(session: AsyncSession, *, thread_ids: Sequence[str]) -> dict[str, int]:
    return await count_by_parent(session, parent_column=elements_table.c.threadId, parent_ids=thread_ids)


async def check_element_target(
    session: AsyncSession, *, thread_id: str, for_id: str | None, access: Access
) -> None:
    """Refuse an element the caller may not attach there: to a thread not theirs, or to a step of
    another thread. A thread that does not exist yet is fine: it is created with the element."""
    await require_writable_thread(
        session, access=access, thread_id=thread_id, missing=not_yours("thread", thread_id, "threadId")
    )
    if for_id is None:
        return
    step_thread = (
        await session.execute(sa.select(steps_table.c.threadId).where(steps_table.c.id == for_id))
    ).scalar_one_or_none()
    # Backends may attach to a step not written yet (Chainlit queues writes); users only to steps
    # of the same thread, so they learn nothing of steps elsewhere.
    if step_thread != thread_id and (step_thread is not None or not access.everything):
        raise BadUserInput(f"forId {for_id} is not a step of thread {thread_id}", field="forId")


async def insert_element(
    session: AsyncSession, *, values: dict[str, Any], access: Access
) -> tuple[Element, bool]:
    """Insert the element; (row, True). A retry with the same id and thread returns the stored row
    and False; the same id in another thread is a conflict (for a user, not found)."""
    statement = insert(session, elements_table).values(values)
    statement = statement.on_conflict_do_nothing(index_elements=[elements_table.c.id])
    row = (await session.execute(statement.returning(*elements_table.c))).one_or_none()
    if row is not None:
        return from_row(Element, row), True
    element_id = values["id"]
    existing = await session.get(Element, element_id)
    if existing is None or existing.threadId != values["threadId"]:
        if not access.everything:
            raise not_yours("element", element_id)
        raise Conflict(f"element {element_id} exists in another thread", field="id")
    return existing, False


async def delete_element(session: AsyncSession, *, element_id: str, access: Access) -> str | None:
    """Delete the element's row; returns its stored object's key, if it has one."""
    missing = NotFound(f"element {element_id} does not exist", field="id")
    await require_writable_row(
        session,
        access=access,
        table=elements_table,
        row_id=element_id,
        readable=access.readable_elements(),
        missing=missing,
    )
    deleted = await session.execute(
        sa.delete(elements_table)
        .where(elements_table.c.id == element_id)
        .returning(elements_table.c.objectKey)
    )
    return deleted.scalar_one_or_none()
