from typing import Annotated

import strawberry

from gateway.data import users
from gateway.errors import BadUserInput
from resolvers.connection import Connection, list_connection, page_request
from resolvers.context import Info
from resolvers.ids import parse_id
from resolvers.types import After, Before, PageSize, PageSizeFromEnd, User


@strawberry.type
class UserQueries:
    @strawberry.field(
        description="The calling user, from their token; null for a backend's API key and in open mode."
    )
    async def viewer(self, info: Info) -> User | None:
        user_id = info.context.caller.user_id
        if user_id is None:
            return None
        row = await info.context.loaders.user_by_id.load(user_id)
        return User.from_row(row) if row else None

    @strawberry.field(description="A user by id or by identifier (give one); a user sees only themselves.")
    async def user(
        self, info: Info, id: strawberry.ID | None = None, identifier: str | None = None
    ) -> User | None:
        if (id is None) == (identifier is None):
            raise BadUserInput("give exactly one of `id` and `identifier`", argument="id")
        loaders = info.context.loaders
        if id is not None:
            row = await loaders.user_by_id.load(parse_id(id, "id"))
        else:
            row = await loaders.user_by_identifier.load(identifier or "")
        return User.from_row(row) if row else None

    @strawberry.field(description="Users ordered by identifier (a user sees only themselves).")
    async def users(
        self,
        info: Info,
        first: PageSize = None,
        after: After = None,
        last: PageSizeFromEnd = None,
        before: Before = None,
        search: Annotated[
            str | None, strawberry.argument(description="Part of the identifier, any case.")
        ] = None,
    ) -> Connection[User]:
        request = page_request(first, after, last, before)
        return await list_connection(
            info.context.db,
            fetch=lambda session: users.list_users(
                session, request=request, search=search, access=info.context.access
            ),
            count=lambda session: users.count_users(session, search=search, access=info.context.access),
            node=User.from_row,
        )
