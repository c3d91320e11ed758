import strawberry

from gateway.data import users
from gateway.errors import BadUserInput, Forbidden
from gateway.validation import IDENTIFIER, JSON_VALUE, check_input
from resolvers.context import Info
from resolvers.ids import parse_id, parse_optional_id
from resolvers.scalars import JSONObject
from resolvers.types import DeletePayload, User


@strawberry.input(description="A user to create or update, keyed by identifier (or by id to rename).")
class UserInput:
    identifier: str
    id: strawberry.ID | None = None
    metadata: JSONObject | None = strawberry.field(
        default=None, description="Merged key by key into the stored metadata; a null value deletes the key."
    )


USER_LIMITS = {"identifier": IDENTIFIER, "metadata": JSON_VALUE}


@strawberry.type
class UserMutations:
    @strawberry.mutation(
        description="Create a user or update it. Retrying changes nothing. A user may update only "
        "their own metadata."
    )
    async def upsert_user(self, info: Info, input: UserInput) -> User:
        user_id = parse_optional_id(input.id, "input.id")
        if not input.identifier.strip():
            raise BadUserInput("`identifier` must not be empty", field="identifier")
        check_input(input, "input", USER_LIMITS)
        caller = info.context.caller
        if caller.user_id is not None and (
            input.identifier != caller.name or user_id not in (None, caller.user_id)
        ):
            # Not NOT_FOUND: the answer is the same whether or not the other user exists.
            raise Forbidden("a user may only update themselves, under their own identifier")
        async with info.context.write() as session:
            row = await users.upsert_user(
                session, identifier=input.identifier, user_id=user_id, metadata=input.metadata
            )
        return User.from_row(row)

    @strawberry.mutation(
        description="Delete a user with their threads (and the threads' steps, elements and "
        "feedback); the elements' stored objects are deleted right after. A user may delete only "
        "themselves."
    )
    async def delete_user(self, info: Info, id: strawberry.ID) -> DeletePayload:
        user_id = parse_id(id, "id")
        async with info.context.write() as session:
            object_keys = await users.delete_user(session, user_id=user_id, access=info.context.access)
            await info.context.forget_objects(session, object_keys)
        return DeletePayload(id=strawberry.ID(user_id))
