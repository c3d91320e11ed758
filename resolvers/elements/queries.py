import strawberry

from resolvers.context import Info
from resolvers.ids import parse_id
from resolvers.types import Element


@strawberry.type
class ElementQueries:
    @strawberry.field(description="An element by id.")
    async def element(self, info: Info, id: strawberry.ID) -> Element | None:
        row = await info.context.loaders.element_by_id.load(parse_id(id, "id"))
        return Element.from_row(row) if row else None
