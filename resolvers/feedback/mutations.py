import strawberry

from gateway.data import feedback
from gateway.data.common import KEEP
from resolvers.context import Info
from resolvers.ids import parse_id, parse_optional_id
from resolvers.types import DeletePayload, Feedback


@strawberry.input(description="A rating of a step. A step has one feedback: rating it again updates it.")
class FeedbackInput:
    for_id: strawberry.ID = strawberry.field(description="The step rated.")
    value: int = strawberry.field(description="1 thumbs up, 0 thumbs down.")
    comment: str | None = strawberry.field(
        default=strawberry.UNSET, description="Kept as it is when not given."
    )
    id: strawberry.ID | None = None


@strawberry.type
class FeedbackMutations:
    @strawberry.mutation(description="Rate a step, or change its rating.")
    async def upsert_feedback(self, info: Info, input: FeedbackInput) -> Feedback:
        for_id = parse_id(input.for_id, "input.forId")
        feedback_id = parse_optional_id(input.id, "input.id")
        async with info.context.write(one_statement=True) as session:  # see feedback.upsert_feedback
            row = await feedback.upsert_feedback(
                session,
                for_id=for_id,
                value=input.value,
                access=info.context.access,
                comment=KEEP if input.comment is strawberry.UNSET else input.comment,
                feedback_id=feedback_id,
            )
        return Feedback.from_row(row)

    @strawberry.mutation(description="Delete a feedback.")
    async def delete_feedback(self, info: Info, id: strawberry.ID) -> DeletePayload:
        feedback_id = parse_id(id, "id")
        async with info.context.write() as session:
            await feedback.delete_feedback(session, feedback_id=feedback_id, access=info.context.access)
        return DeletePayload(id=strawberry.ID(feedback_id))
