"""Relay connections: `edges { cursor node }`, `pageInfo`, and `totalCount` counted only when asked."""

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from gateway.data.pagination import Page, PageRequest
from gateway.database import Database

Node = TypeVar("Node")
Row = TypeVar("Row")


@strawberry.type(description="Where a page sits in its list (Relay cursor connections).")
class PageInfo:
    has_next_page: bool = strawberry.field(description="More rows follow the last edge.")
    has_previous_page: bool = strawberry.field(description="More rows precede the first edge.")
    start_cursor: str | None = strawberry.field(description="Cursor of the first edge; pass as `before`.")
    end_cursor: str | None = strawberry.field(description="Cursor of the last edge; pass as `after`.")


@strawberry.type
class Edge(Generic[Node]):
    cursor: str = strawberry.field(
        description="Opaque position of this node; stays valid if the node is deleted."
    )
    node: Node


@strawberry.type
class Connection(Generic[Node]):
    edges: list[Edge[Node]]
    page_info: PageInfo
    count: strawberry.Private[Callable[[], Awaitable[int]]]

    @strawberry.field(
        description="Rows in the whole list (all pages); costs a count, so ask only when needed."
    )
    async def total_count(self) -> int:
        return await self.count()


def connection_from_page(
    page: Page[Row], node: Callable[[Row], Node], count: Callable[[], Awaitable[int]]
) -> Connection[Node]:
    return Connection(
        edges=[
            Edge(cursor=cursor, node=node(row)) for row, cursor in zip(page.rows, page.cursors, strict=True)
        ],
        page_info=PageInfo(
            has_next_page=page.has_next_page,
            has_previous_page=page.has_previous_page,
            start_cursor=page.cursors[0] if page.cursors else None,
            end_cursor=page.cursors[-1] if page.cursors else None,
        ),
        count=count,
    )


def page_request(
    first: int | None = None, after: str | None = None, last: int | None = None, before: str | None = None
) -> PageRequest:
    return PageRequest.build(first=first, after=after, last=last, before=before)


async def list_connection(
    db: Database,
    *,
    fetch: Callable[[AsyncSession], Awaitable[Page[Row]]],
    count: Callable[[AsyncSession], Awaitable[int]],
    node: Callable[[Row], Node],
) -> Connection[Node]:
    """A top-level list: one statement for the page, one more only if `totalCount` is selected."""
    async with db.session() as session:
        page = await fetch(session)

    async def total() -> int:
        async with db.session() as session:
            return await count(session)

    return connection_from_page(page, node, total)


async def nested_connection(
    pages: DataLoader[tuple[str, Any], Page[Row]],
    counts: DataLoader[tuple[str, Any], int],
    *,
    parent_id: str,
    page_params: Hashable,
    count_params: Hashable = None,
    node: Callable[[Row], Node],
) -> Connection[Node]:
    """A list under each parent (a thread's steps): batched with its siblings by the loaders."""
    page = await pages.load((parent_id, page_params))
    return connection_from_page(page, node, lambda: counts.load((parent_id, count_params)))
