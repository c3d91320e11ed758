import enum
import json
from typing import Annotated

import strawberry

from gateway.data import threads
from gateway.data.threads import ThreadFilter
from gateway.errors import BadUserInput
from resolvers.connection import Connection, list_connection, page_request
from resolvers.context import Info
from resolvers.ids import parse_id, parse_optional_id
from resolvers.scalars import DateTime, JSONObject
from resolvers.types import After, Before, PageSize, PageSizeFromEnd, Thread


@strawberry.input(name="ThreadFilter", description="Which threads to list; all conditions must hold.")
class ThreadFilterInput:
    user_id: strawberry.ID | None = strawberry.field(default=None, description="Threads of this user.")
    user_identifier: str | None = strawberry.field(
        default=None, description="Threads of the user with this identifier."
    )
    search: str | None = strawberry.field(
        default=None, description="Text in the thread's name or any step's input or output, any case."
    )
    feedback: int | None = strawberry.field(
        default=None, description="Threads holding a feedback of this value: 0 thumbs down, 1 thumbs up."
    )
    tags: list[str] | None = strawberry.field(default=None, description="Threads carrying all these tags.")
    created_after: DateTime | None = None
    created_before: DateTime | None = None
    metadata: JSONObject | None = strawberry.field(
        default=None, description="Threads whose metadata contains this object (JSON containment)."
    )

    def to_filter(self) -> ThreadFilter:
        if self.feedback is not None and self.feedback not in (0, 1):
            raise BadUserInput("`filter.feedback` must be 0 or 1", argument="filter.feedback")
        return ThreadFilter(
            user_id=parse_optional_id(self.user_id, "filter.userId"),
            user_identifier=self.user_identifier,
            search=self.search or None,
            feedback=self.feedback,
            tags=tuple(self.tags or ()),
            created_after=self.created_after,
            created_before=self.created_before,
            metadata=json.dumps(self.metadata, sort_keys=True) if self.metadata is not None else None,
        )


@strawberry.enum(description="What the thread list is sorted by.")
class ThreadOrderField(enum.Enum):
    UPDATED_AT = "updatedAt"
    CREATED_AT = "createdAt"


@strawberry.enum
class OrderDirection(enum.Enum):
    ASC = "asc"
    DESC = "desc"


@strawberry.input(description="The thread list's order; the id breaks ties.")
class ThreadOrder:
    field: ThreadOrderField = ThreadOrderField.UPDATED_AT
    direction: OrderDirection = OrderDirection.DESC


@strawberry.type
class ThreadQueries:
    @strawberry.field(description="A thread by id: a user's own, or one shared with everyone (read-only).")
    async def thread(self, info: Info, id: strawberry.ID) -> Thread | None:
        row = await info.context.loaders.thread_by_id.load(parse_id(id, "id"))
        return Thread.from_row(row) if row else None

    @strawberry.field(
        description="Threads, most recently active first unless `orderBy` says otherwise; a user's own only."
    )
    async def threads(
        self,
        info: Info,
        first: PageSize = None,
        after: After = None,
        last: PageSizeFromEnd = None,
        before: Before = None,
        filter_: Annotated[ThreadFilterInput | None, strawberry.argument(name="filter")] = None,
        order_by: ThreadOrder | None = None,
    ) -> Connection[Thread]:
        request = page_request(first, after, last, before)
        thread_filter = filter_.to_filter() if filter_ else ThreadFilter()
        order = order_by or ThreadOrder()
        return await list_connection(
            info.context.db,
            fetch=lambda session: threads.list_threads(
                session,
                thread_filter=thread_filter,
                request=request,
                order_field=order.field.value,
                descending=order.direction is OrderDirection.DESC,
                access=info.context.access,
            ),
            count=lambda session: threads.count_threads(
                session, thread_filter=thread_filter, access=info.context.access
            ),
            node=Thread.from_row,
        )
