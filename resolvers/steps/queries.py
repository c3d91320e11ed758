import strawberry

from gateway.data import steps
from resolvers.connection import Connection, list_connection, page_request
from resolvers.context import Info
from resolvers.ids import parse_id, parse_optional_id
from resolvers.types import After, PageSize, Step


@strawberry.type
class StepQueries:
    @strawberry.field(description="A step by id.")
    async def step(self, info: Info, id: strawberry.ID) -> Step | None:
        row = await info.context.loaders.step_by_id.load(parse_id(id, "id"))
        return Step.from_row(row) if row else None

    @strawberry.field(
        description="Steps marked `metadata.favorite = true`, newest first; of one user's threads if given."
    )
    async def favorite_steps(
        self, info: Info, user_id: strawberry.ID | None = None, first: PageSize = None, after: After = None
    ) -> Connection[Step]:
        owner = parse_optional_id(user_id, "userId")
        request = page_request(first, after)
        return await list_connection(
            info.context.db,
            fetch=lambda session: steps.list_favorite_steps(
                session, user_id=owner, request=request, access=info.context.access
            ),
            count=lambda session: steps.count_favorite_steps(
                session, user_id=owner, access=info.context.access
            ),
            node=Step.from_row,
        )
