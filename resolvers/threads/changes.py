"""`applyThreadChanges`: a thread's upsert, its steps' upserts and deletes, in one transaction."""

import strawberry

from gateway.data import thread_changes
from gateway.data.steps import StepWrite
from gateway.data.thread_changes import ItemError
from gateway.errors import BadUserInput, GatewayError
from gateway.timestamps import utc_now
from resolvers.context import Info
from resolvers.ids import parse_id
from resolvers.steps.mutations import MAX_INGEST_BATCH, StepInput, checked_step_writes
from resolvers.threads.mutations import ThreadInput
from resolvers.threads.mutations import thread_changes as parse_thread_changes
from resolvers.types import Step, Thread


@strawberry.input(
    description="A thread's changes, applied together: the thread's upsert (as upsertThread), the "
    "deletes of some of its steps, and upserts of its steps (as upsertStep; threadId may be left out)."
)
class ThreadChangesInput:
    thread: ThreadInput
    upsert_steps: list[StepInput] = strawberry.field(
        default_factory=list,
        description="Steps of this thread to create or change, in order; created ones without "
        "createdAt are a millisecond apart, in this order.",
    )
    delete_step_ids: list[strawberry.ID] = strawberry.field(
        default_factory=list,
        description="Steps of this thread to delete, with their child steps, feedback and elements. "
        "An id of no step of the thread is passed over (so a retried batch changes nothing).",
    )


@strawberry.type(description="What applyThreadChanges wrote.")
class ThreadChangesPayload:
    thread: Thread
    steps: list[Step] = strawberry.field(description="The steps upserted, in the order given.")
    deleted_step_ids: list[strawberry.ID] = strawberry.field(
        description="The ids of deleteStepIds that were steps of the thread, now deleted."
    )


def _item_error(path: str, error: GatewayError) -> GatewayError:
    """The error of one item of the batch, naming it (`upsertSteps[2]`) in its message (once: a
    message about one of its fields names it already, `input.upsertSteps[2].id`) and in
    `extensions.item`; same code."""
    named = error.message.startswith(f"`input.{path}.")
    message = error.message if named else f"{path}: {error.message}"
    return type(error)(message, **{**error.extensions, "item": path})


@strawberry.type
class ThreadChangesMutations:
    @strawberry.mutation(
        description="Apply a thread's changes in one transaction, all or nothing: upsert the thread, "
        "delete the steps of deleteStepIds, then upsert the steps of upsertSteps "
        f"(together at most {MAX_INGEST_BATCH}). The first item that fails fails the whole request, "
        "its error naming the item (extensions.item); nothing is written. Safe to retry."
    )
    async def apply_thread_changes(self, info: Info, input: ThreadChangesInput) -> ThreadChangesPayload:
        size = len(input.upsert_steps) + len(input.delete_step_ids)
        if size > MAX_INGEST_BATCH:
            raise BadUserInput(
                f"at most {MAX_INGEST_BATCH} steps to upsert and delete together, not {size}",
                argument="input",
            )
        thread_id, changes = parse_thread_changes(input.thread, "input.thread")
        writes: list[StepWrite] = []
        for index, checked in enumerate(
            checked_step_writes(input.upsert_steps, "input.upsertSteps[{index}]")
        ):
            path = f"upsertSteps[{index}]"
            if isinstance(checked, GatewayError):
                raise _item_error(path, checked)
            if checked.thread_id not in (None, thread_id):
                raise _item_error(
                    path,
                    BadUserInput(
                        f"step {checked.step_id} names thread {checked.thread_id}, not this thread "
                        f"{thread_id}",
                        field="threadId",
                    ),
                )
            writes.append(
                StepWrite(
                    step_id=checked.step_id, thread_id=thread_id, changes=checked.changes, now=checked.now
                )
            )
        delete_ids = [
            parse_id(step_id, f"input.deleteStepIds[{index}]")
            for index, step_id in enumerate(input.delete_step_ids)
        ]
        both = {write.step_id for write in writes} & set(delete_ids)
        if both:
            raise BadUserInput(f"step {min(both)} is both upserted and deleted", argument="input")
        try:
            async with info.context.write() as session:
                applied = await thread_changes.apply_thread_changes(
                    session,
                    thread_id=thread_id,
                    thread_changes=changes,
                    writes=writes,
                    delete_step_ids=delete_ids,
                    access=info.context.access,
                    now=utc_now(),
                )
                await info.context.forget_objects(session, applied.object_keys)
        except ItemError as failed:
            raise _item_error(f"upsertSteps[{failed.index}]", failed.error) from None
        return ThreadChangesPayload(
            thread=Thread.from_row(applied.thread),
            steps=[Step.from_row(row) for row in applied.steps],
            deleted_step_ids=[strawberry.ID(step_id) for step_id in applied.deleted_step_ids],
        )
