from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import strawberry

from gateway.data import steps
from gateway.data.common import KEEP
from gateway.data.steps import StepChanges, StepRow, StepWrite
from gateway.errors import BadUserInput, GatewayError
from gateway.timestamps import format_timestamp, utc_now
from gateway.validation import STEP_LIMITS, check_input
from resolvers.context import Info
from resolvers.ids import parse_id, parse_optional_id
from resolvers.scalars import DateTime, JSONObject
from resolvers.types import DeletePayload, Step

MAX_INGEST_BATCH = 500


@strawberry.input(
    description="A step to create, or the fields of one to change (others stay as they are). "
    "Creating needs threadId; a missing thread is created."
)
class StepInput:
    id: strawberry.ID
    thread_id: strawberry.ID | None = strawberry.UNSET
    parent_id: strawberry.ID | None = strawberry.UNSET
    name: str | None = strawberry.UNSET
    type: str | None = strawberry.UNSET
    input: str | None = strawberry.UNSET
    output: str | None = strawberry.UNSET
    is_error: bool | None = strawberry.UNSET
    streaming: bool | None = strawberry.UNSET
    wait_for_answer: bool | None = strawberry.UNSET
    show_input: str | None = strawberry.UNSET
    language: str | None = strawberry.UNSET
    command: str | None = strawberry.UNSET
    modes: strawberry.scalars.JSON | None = strawberry.UNSET
    default_open: bool | None = strawberry.UNSET
    auto_collapse: bool | None = strawberry.UNSET
    tags: list[str] | None = strawberry.UNSET
    metadata: JSONObject | None = strawberry.field(
        default=strawberry.UNSET,
        description="Merged key by key into the stored metadata; a null value deletes the key.",
    )
    generation: JSONObject | None = strawberry.UNSET
    created_at: DateTime | None = strawberry.UNSET
    start: DateTime | None = strawberry.UNSET
    end: DateTime | None = strawberry.UNSET


NOT_NULL_FIELDS = {
    "name": "name",
    "type": "type",
    "streaming": "streaming",
    "metadata": "metadata",
    "createdAt": "created_at",
}


def _given(value: Any) -> Any:
    return KEEP if value is strawberry.UNSET else value


def step_changes(step_input: StepInput, path: str = "input") -> tuple[str, str | None, StepChanges]:
    """Validate a step input (at `path` in the request) into (step id, thread id or None, changes)."""
    step_id = parse_id(step_input.id, f"{path}.id")
    check_input(step_input, path, STEP_LIMITS)
    thread_id = None if step_input.thread_id is strawberry.UNSET else step_input.thread_id
    if step_input.thread_id is None:
        raise BadUserInput("`threadId` cannot be null", field="threadId")
    for graphql_name, attribute in NOT_NULL_FIELDS.items():
        if getattr(step_input, attribute) is None:
            raise BadUserInput(f"`{graphql_name}` cannot be null", field=graphql_name)
    parent = step_input.parent_id
    changes = StepChanges(
        name=_given(step_input.name),
        type=_given(step_input.type),
        parentId=KEEP if parent is strawberry.UNSET else parse_optional_id(parent, f"{path}.parentId"),
        input=_given(step_input.input),
        output=_given(step_input.output),
        isError=_given(step_input.is_error),
        streaming=_given(step_input.streaming),
        waitForAnswer=_given(step_input.wait_for_answer),
        showInput=_given(step_input.show_input),
        language=_given(step_input.language),
        command=_given(step_input.command),
        modes=_given(step_input.modes),
        defaultOpen=_given(step_input.default_open),
        autoCollapse=_given(step_input.auto_collapse),
        tags=_given(step_input.tags),
        metadata=_given(step_input.metadata),
        generation=_given(step_input.generation),
        createdAt=_given(step_input.created_at),
        start=_given(step_input.start),
        end=_given(step_input.end),
    )
    return step_id, parse_optional_id(thread_id, f"{path}.threadId"), changes


def checked_step_writes(step_inputs: Sequence[StepInput], path: str) -> list[StepWrite | GatewayError]:
    """Each step input of a batch validated into a write, or its error (naming the input as `path`,
    where `{index}` is its position). Steps
    created without a createdAt keep the batch's order: a millisecond apart, the last one now
    (otherwise they would tie, and their order would fall to the client's ids)."""
    now = datetime.now(UTC)
    checked: list[StepWrite | GatewayError] = []
    for index, step_input in enumerate(step_inputs):
        created_if_new = format_timestamp(now - timedelta(milliseconds=len(step_inputs) - 1 - index))
        try:
            step_id, thread_id, changes = step_changes(step_input, path.format(index=index))
        except GatewayError as error:
            checked.append(error)
            continue
        checked.append(StepWrite(step_id=step_id, thread_id=thread_id, changes=changes, now=created_if_new))
    return checked


@strawberry.type(description="Why one step of a batch was not written.")
class IngestError:
    code: str
    message: str


@strawberry.type(description="The outcome of one step of a batch: the step written, or its error.")
class IngestResult:
    index: int = strawberry.field(description="Position of the step in the batch.")
    id: strawberry.ID
    step: Step | None
    error: IngestError | None


def _ingest_result(index: int, step_input: StepInput, outcome: StepRow | GatewayError) -> IngestResult:
    if isinstance(outcome, GatewayError):
        error = IngestError(code=outcome.code, message=outcome.message)
        return IngestResult(index=index, id=step_input.id, step=None, error=error)
    return IngestResult(index=index, id=strawberry.ID(outcome.id), step=Step.from_row(outcome), error=None)


@strawberry.type
class StepMutations:
    @strawberry.mutation(
        description="Create a step, or change only the fields given; creates the thread if missing. "
        "Safe to retry, and safe against a concurrent write of the same step."
    )
    async def upsert_step(self, info: Info, input: StepInput) -> Step:
        step_id, thread_id, changes = step_changes(input)
        # A backend's upsert is one statement (steps.upsert_step); a user's checks access first.
        async with info.context.write(one_statement=info.context.access.everything) as session:
            row = await steps.upsert_step(
                session,
                step_id=step_id,
                thread_id=thread_id,
                changes=changes,
                access=info.context.access,
                now=utc_now(),
            )
        return Step.from_row(row)

    @strawberry.mutation(
        description="Append streamed tokens to a step's output (atomic: concurrent appends all land)."
    )
    async def append_step_output(self, info: Info, id: strawberry.ID, delta: str) -> Step:
        step_id = parse_id(id, "id")
        async with info.context.write(one_statement=True) as session:
            row = await steps.append_step_output(
                session, step_id=step_id, delta=delta, access=info.context.access
            )
        return Step.from_row(row)

    @strawberry.mutation(
        description=f"Upsert up to {MAX_INGEST_BATCH} steps in one transaction, each on its own: "
        "one outcome per step, in order; a failing step does not stop the others."
    )
    async def ingest_steps(
        self, info: Info, steps_: Annotated[list[StepInput], strawberry.argument(name="steps")]
    ) -> list[IngestResult]:
        if len(steps_) > MAX_INGEST_BATCH:
            raise BadUserInput(
                f"at most {MAX_INGEST_BATCH} steps per batch, not {len(steps_)}", argument="steps"
            )
        checked = checked_step_writes(steps_, "input")
        writes = [item for item in checked if isinstance(item, StepWrite)]
        async with info.context.write() as session:
            written = iter(await steps.ingest_steps(session, writes=writes, access=info.context.access))
        return [
            _ingest_result(index, step_input, next(written) if isinstance(item, StepWrite) else item)
            for index, (step_input, item) in enumerate(zip(steps_, checked, strict=True))
        ]

    @strawberry.mutation(description="Delete a step with its child steps, their feedback and elements.")
    async def delete_step(self, info: Info, id: strawberry.ID) -> DeletePayload:
        step_id = parse_id(id, "id")
        async with info.context.write() as session:
            object_keys = await steps.delete_step(session, step_id=step_id, access=info.context.access)
            await info.context.forget_objects(session, object_keys)
        return DeletePayload(id=strawberry.ID(step_id))
