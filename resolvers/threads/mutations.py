import strawberry

from gateway.data import threads
from gateway.data.common import KEEP
from gateway.data.threads import ThreadChanges
from gateway.errors import BadUserInput, GatewayError
from gateway.timestamps import utc_now
from gateway.validation import IDENTIFIER, JSON_VALUE, NAME, TAGS, check_input
from resolvers.context import Info
from resolvers.ids import parse_id, parse_optional_id
from resolvers.scalars import DateTime, JSONObject
from resolvers.types import DeletePayload, Thread


@strawberry.input(description="A thread to create, or the fields of one to change (others stay as they are).")
class ThreadInput:
    id: strawberry.ID
    name: str | None = strawberry.UNSET
    user_id: strawberry.ID | None = strawberry.field(default=strawberry.UNSET, description="The owner.")
    user_identifier: str | None = strawberry.field(
        default=strawberry.UNSET, description="The owner, by identifier (instead of userId)."
    )
    tags: list[str] | None = strawberry.UNSET
    metadata: JSONObject | None = strawberry.field(
        default=strawberry.UNSET,
        description="Merged key by key into the stored metadata; a null value deletes the key.",
    )
    created_at: DateTime | None = strawberry.field(
        default=strawberry.UNSET, description="Defaults to now on create."
    )


MAX_DELETE_BATCH = 100


@strawberry.type(description="Why one id of a bulk delete was not deleted.")
class DeleteError:
    code: str
    message: str


@strawberry.type(description="The outcome of one id of a bulk delete: `error` is null when it was deleted.")
class DeleteResult:
    index: int = strawberry.field(description="Position of the id in the list.")
    id: strawberry.ID
    error: DeleteError | None


THREAD_LIMITS = {"name": NAME, "user_identifier": IDENTIFIER, "tags": TAGS, "metadata": JSON_VALUE}


def thread_changes(thread_input: ThreadInput, path: str = "input") -> tuple[str, ThreadChanges]:
    """Validate a thread input (at `path` in the request) into (thread id, changes)."""
    thread_id = parse_id(thread_input.id, f"{path}.id")
    check_input(thread_input, path, THREAD_LIMITS)
    if thread_input.metadata is None:
        raise BadUserInput("`metadata` cannot be null; to delete a key, set it to null", field="metadata")
    if thread_input.created_at is None:
        raise BadUserInput("`createdAt` cannot be null", field="createdAt")
    user_id = thread_input.user_id
    changes = ThreadChanges(
        name=KEEP if thread_input.name is strawberry.UNSET else thread_input.name,
        userId=KEEP if user_id is strawberry.UNSET else parse_optional_id(user_id, f"{path}.userId"),
        userIdentifier=KEEP
        if thread_input.user_identifier in (strawberry.UNSET, None)
        else thread_input.user_identifier,
        tags=KEEP if thread_input.tags is strawberry.UNSET else thread_input.tags,
        metadata=KEEP if thread_input.metadata is strawberry.UNSET else thread_input.metadata,
        createdAt=KEEP if thread_input.created_at is strawberry.UNSET else thread_input.created_at,
    )
    return thread_id, changes


@strawberry.type
class ThreadMutations:
    @strawberry.mutation(
        description="Create a thread, or change only the fields given. Retrying changes nothing "
        "(not even updatedAt)."
    )
    async def upsert_thread(self, info: Info, input: ThreadInput) -> Thread:
        thread_id, changes = thread_changes(input)
        async with info.context.write() as session:
            row = await threads.upsert_thread(
                session, thread_id=thread_id, changes=changes, access=info.context.access, now=utc_now()
            )
        return Thread.from_row(row)

    @strawberry.mutation(
        description="Delete a thread with its steps, elements and feedback; the elements' stored "
        "objects are deleted right after."
    )
    async def delete_thread(self, info: Info, id: strawberry.ID) -> DeletePayload:
        thread_id = parse_id(id, "id")
        async with info.context.write() as session:
            object_keys = await threads.delete_thread(
                session, thread_id=thread_id, access=info.context.access
            )
            await info.context.forget_objects(session, object_keys)
        return DeletePayload(id=strawberry.ID(thread_id))

    @strawberry.mutation(
        description=f"Delete up to {MAX_DELETE_BATCH} threads (each with its steps, elements and "
        "feedback; the elements' stored objects are deleted right after) in one transaction, each on "
        "its own: one outcome per id, in order; an id that cannot be deleted does not stop the others."
    )
    async def delete_threads(self, info: Info, ids: list[strawberry.ID]) -> list[DeleteResult]:
        if len(ids) > MAX_DELETE_BATCH:
            raise BadUserInput(f"at most {MAX_DELETE_BATCH} ids per call, not {len(ids)}", argument="ids")
        parsed: list[str | GatewayError] = []
        for index, given in enumerate(ids):
            try:
                parsed.append(parse_id(given, f"ids[{index}]"))
            except GatewayError as bad_id:
                parsed.append(bad_id)
        async with info.context.write() as session:
            refused, object_keys = await threads.delete_threads_by_ids(
                session,
                thread_ids=[item for item in parsed if isinstance(item, str)],
                access=info.context.access,
            )
            await info.context.forget_objects(session, object_keys)
        results = []
        for index, (given, item) in enumerate(zip(ids, parsed, strict=True)):
            why = item if isinstance(item, GatewayError) else refused.get(item)
            results.append(
                DeleteResult(
                    index=index,
                    id=strawberry.ID(item) if isinstance(item, str) else given,
                    error=None if why is None else DeleteError(code=why.code, message=why.message),
                )
            )
        return results
