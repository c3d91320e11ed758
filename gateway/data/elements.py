"""Elements (attachments): read by id, by step and page by page per thread."""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data.access import Access
from gateway.data.pagination import Ordering, Page, PageRequest, count_by_parent, fetch_pages_by_parent
from gateway.tables import Element, elements_table

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
