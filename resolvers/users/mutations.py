import strawberry

from gateway.data import users
from gateway.errors import BadUserInput
from resolvers.context import Info
from resolvers.ids import parse_optional_id
from resolvers.scalars import JSONObject
from resolvers.types import User


@strawberry.input(description="A user to create or update, keyed by identifier (or by id to rename).")
class UserInput:
    identifier: str
    id: strawberry.ID | None = None
    metadata: JSONObject | None = strawberry.field(
        default=None, description="Merged key by key into the stored metadata; a null value deletes the key."
    )


@strawberry.type
class UserMutations:
    @strawberry.mutation(description="Create a user or update it. Retrying changes nothing.")
    async def upsert_user(self, info: Info, input: UserInput) -> User:
        user_id = parse_optional_id(input.id, "input.id")
        if not input.identifier.strip():
            raise BadUserInput("`identifier` must not be empty", field="identifier")
        async with info.context.write() as session:
            row = await users.upsert_user(
                session, identifier=input.identifier, user_id=user_id, metadata=input.metadata
            )
        return User.from_row(row)
