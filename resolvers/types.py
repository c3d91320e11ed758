"""The object types of the graph. They reference each other (a thread's steps, a step's thread),
so they live together; each nested field resolves through the request's batched loaders."""

from typing import Annotated, Any

import sqlalchemy as sa
import strawberry

from gateway import tables
from gateway.data.steps import StepFilter
from resolvers.connection import Connection, nested_connection, page_request
from resolvers.context import Info
from resolvers.scalars import DateTime, JSONObject

PageSize = Annotated[
    int | None, strawberry.argument(description="Page size from the start (default 20, at most 100).")
]
PageSizeFromEnd = Annotated[
    int | None, strawberry.argument(description="Page size from the end (at most 100).")
]
After = Annotated[str | None, strawberry.argument(description="Rows after this cursor.")]
Before = Annotated[str | None, strawberry.argument(description="Rows before this cursor.")]


@strawberry.type(description="Someone who talks to the assistant, known by an identifier (e.g. an email).")
class User:
    id: strawberry.ID
    identifier: str
    metadata: JSONObject
    created_at: DateTime | None

    @classmethod
    def from_row(cls, row: tables.User) -> "User":
        return cls(
            id=strawberry.ID(row.id),
            identifier=row.identifier,
            metadata=JSONObject(row.metadata_ or {}),
            created_at=DateTime(row.createdAt) if row.createdAt else None,
        )


@strawberry.input(name="StepFilter", description="Which of a thread's steps to list.")
class StepFilterInput:
    types: list[str] | None = strawberry.field(default=None, description="Only steps of these types.")
    root_only: bool = strawberry.field(default=False, description="Only top-level steps (no parentId).")

    def to_filter(self) -> StepFilter:
        return StepFilter(types=tuple(self.types or ()), root_only=self.root_only)


@strawberry.type(description="A conversation: its steps, attachments and feedback.")
class Thread:
    id: strawberry.ID
    name: str | None
    created_at: DateTime | None
    updated_at: DateTime | None = strawberry.field(
        description="Last write to the thread or its steps (never moved by reads); the list's order."
    )
    tags: list[str]
    metadata: JSONObject
    owner_id: strawberry.Private[str | None]
    owner_identifier: strawberry.Private[str | None]

    @classmethod
    def from_row(cls, row: tables.Thread) -> "Thread":
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            created_at=DateTime(row.createdAt) if row.createdAt else None,
            updated_at=DateTime(row.updatedAt) if row.updatedAt else None,
            tags=list(row.tags or []),
            metadata=JSONObject(row.metadata_ or {}),
            owner_id=row.userId,
            owner_identifier=row.userIdentifier,
        )

    # A thread shared with other users does not tell them who owns it.

    @strawberry.field(description="The owner's id (null for other users reading a shared thread).")
    def user_id(self, info: Info) -> strawberry.ID | None:
        owner = self.owner_id if info.context.access.owns(self.owner_id) else None
        return strawberry.ID(owner) if owner else None

    @strawberry.field(description="The owner's identifier (null for other users reading a shared thread).")
    def user_identifier(self, info: Info) -> str | None:
        return self.owner_identifier if info.context.access.owns(self.owner_id) else None

    @strawberry.field(description="The thread's owner (null for other users reading a shared thread).")
    async def user(self, info: Info) -> User | None:
        if self.owner_id is None:
            return None
        row = await info.context.loaders.user_by_id.load(self.owner_id)
        return User.from_row(row) if row else None

    @strawberry.field(description="The thread's steps, oldest first: `last: 10` is the latest ten.")
    async def steps(
        self,
        info: Info,
        first: PageSize = None,
        after: After = None,
        last: PageSizeFromEnd = None,
        before: Before = None,
        filter_: Annotated[StepFilterInput | None, strawberry.argument(name="filter")] = None,
    ) -> Connection["Step"]:
        step_filter = filter_.to_filter() if filter_ else StepFilter()
        loaders = info.context.loaders
        return await nested_connection(
            loaders.steps_of_thread,
            loaders.step_count_of_thread,
            parent_id=self.id,
            page_params=(page_request(first, after, last, before), step_filter),
            count_params=step_filter,
            node=Step.from_row,
        )

    @strawberry.field(description="The thread's elements (attachments), oldest first.")
    async def elements(
        self,
        info: Info,
        first: PageSize = None,
        after: After = None,
        last: PageSizeFromEnd = None,
        before: Before = None,
    ) -> Connection["Element"]:
        loaders = info.context.loaders
        return await nested_connection(
            loaders.elements_of_thread,
            loaders.element_count_of_thread,
            parent_id=self.id,
            page_params=page_request(first, after, last, before),
            node=Element.from_row,
        )

    @strawberry.field(description="Feedback given on the thread's steps.")
    async def feedbacks(
        self,
        info: Info,
        first: PageSize = None,
        after: After = None,
        last: PageSizeFromEnd = None,
        before: Before = None,
    ) -> Connection["Feedback"]:
        loaders = info.context.loaders
        return await nested_connection(
            loaders.feedbacks_of_thread,
            loaders.feedback_count_of_thread,
            parent_id=self.id,
            page_params=page_request(first, after, last, before),
            node=Feedback.from_row,
        )


@strawberry.type(
    description="One event of a thread: a message, a tool call, an LLM run. Steps nest by parentId."
)
class Step:
    id: strawberry.ID
    thread_id: strawberry.ID
    parent_id: strawberry.ID | None
    name: str
    type: str = strawberry.field(description="e.g. user_message, assistant_message, tool, llm, run.")
    input: str | None
    output: str | None
    is_error: bool | None
    streaming: bool
    wait_for_answer: bool | None
    show_input: str | None = strawberry.field(
        description="Chainlit's showInput: 'true', 'false' or a language."
    )
    language: str | None
    command: str | None
    modes: strawberry.scalars.JSON | None
    default_open: bool | None
    auto_collapse: bool | None
    tags: list[str]
    metadata: JSONObject
    generation: JSONObject | None
    created_at: DateTime | None
    start: DateTime | None
    end: DateTime | None

    @classmethod
    def from_row(cls, row: tables.Step | sa.Row[Any]) -> "Step":
        """From a loaded step, or from a write's RETURNING row (whose `metadata` keeps its name)."""
        metadata = row.metadata_ if isinstance(row, tables.Step) else row._mapping["metadata"]
        return cls(
            id=strawberry.ID(row.id),
            thread_id=strawberry.ID(row.threadId),
            parent_id=strawberry.ID(row.parentId) if row.parentId else None,
            name=row.name,
            type=row.type,
            input=row.input,
            output=row.output,
            is_error=row.isError,
            streaming=row.streaming,
            wait_for_answer=row.waitForAnswer,
            show_input=row.showInput,
            language=row.language,
            command=row.command,
            modes=row.modes,
            default_open=row.defaultOpen,
            auto_collapse=row.autoCollapse,
            tags=list(row.tags or []),
            metadata=JSONObject(metadata or {}),
            generation=JSONObject(row.generation) if isinstance(row.generation, dict) else None,
            created_at=DateTime(row.createdAt) if row.createdAt else None,
            start=DateTime(row.start) if row.start else None,
            end=DateTime(row.end) if row.end else None,
        )

    @strawberry.field
    async def thread(self, info: Info) -> Thread | None:
        row = await info.context.loaders.thread_by_id.load(self.thread_id)
        return Thread.from_row(row) if row else None

    @strawberry.field(description="The step this one is nested in.")
    async def parent(self, info: Info) -> "Step | None":
        if self.parent_id is None:
            return None
        row = await info.context.loaders.step_by_id.load(self.parent_id)
        return Step.from_row(row) if row else None

    @strawberry.field(description="Steps nested in this one, oldest first.")
    async def children(
        self,
        info: Info,
        first: PageSize = None,
        after: After = None,
        last: PageSizeFromEnd = None,
        before: Before = None,
    ) -> Connection["Step"]:
        loaders = info.context.loaders
        return await nested_connection(
            loaders.children_of_step,
            loaders.child_count_of_step,
            parent_id=self.id,
            page_params=page_request(first, after, last, before),
            node=Step.from_row,
        )

    @strawberry.field(description="The feedback on this step, if any (one per step).")
    async def feedback(self, info: Info) -> "Feedback | None":
        row = await info.context.loaders.feedback_of_step.load(self.id)
        return Feedback.from_row(row) if row else None

    @strawberry.field(description="Elements attached to this step.")
    async def elements(self, info: Info) -> list["Element"]:
        rows = await info.context.loaders.elements_of_step.load(self.id)
        return [Element.from_row(row) for row in rows or []]


@strawberry.type(description="An attachment (file, image, audio, PDF...) of a thread or a step.")
class Element:
    id: strawberry.ID
    thread_id: strawberry.ID | None
    for_id: strawberry.ID | None = strawberry.field(description="The step it is attached to.")
    type: str | None
    name: str
    mime: str | None
    size: str | None = strawberry.field(description="Chainlit's display size: small, medium or large.")
    display: str | None
    language: str | None
    page: int | None
    props: JSONObject | None
    object_key: str | None
    chainlit_key: str | None
    size_bytes: int | None = strawberry.field(description="The stored object's size in bytes.")
    created_at: DateTime | None
    external_url: strawberry.Private[str | None]

    @classmethod
    def from_row(cls, row: tables.Element) -> "Element":
        return cls(
            id=strawberry.ID(row.id),
            thread_id=strawberry.ID(row.threadId) if row.threadId else None,
            for_id=strawberry.ID(row.forId) if row.forId else None,
            type=row.type,
            name=row.name,
            mime=row.mime,
            size=row.size,
            display=row.display,
            language=row.language,
            page=row.page,
            props=JSONObject(row.props) if isinstance(row.props, dict) else None,
            object_key=row.objectKey,
            chainlit_key=row.chainlitKey,
            size_bytes=row.sizeBytes,
            created_at=DateTime(row.createdAt) if row.createdAt else None,
            external_url=row.url,
        )

    @strawberry.field(
        description="Where to read the bytes: for a stored object, a URL signed now that expires "
        "(GATEWAY_URL_EXPIRY_SECONDS); for an element attached by reference, its own URL."
    )
    async def url(self, info: Info) -> str | None:
        if self.object_key is None:
            return self.external_url
        return await info.context.files.read_url(
            self.object_key, name=self.name, mime=self.mime, base_url=info.context.base_url
        )


@strawberry.type(description="A rating of a step: 1 thumbs up, 0 thumbs down, with an optional comment.")
class Feedback:
    id: strawberry.ID
    for_id: strawberry.ID = strawberry.field(description="The step rated.")
    thread_id: strawberry.ID
    value: int
    comment: str | None

    @classmethod
    def from_row(cls, row: tables.Feedback) -> "Feedback":
        return cls(
            id=strawberry.ID(row.id),
            for_id=strawberry.ID(row.forId),
            thread_id=strawberry.ID(row.threadId),
            value=row.value,
            comment=row.comment,
        )

    @strawberry.field(description="The step rated.")
    async def step(self, info: Info) -> Step | None:
        row = await info.context.loaders.step_by_id.load(self.for_id)
        return Step.from_row(row) if row else None


@strawberry.type(description="What a delete removed.")
class DeletePayload:
    id: strawberry.ID
