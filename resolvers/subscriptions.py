"""Subscriptions: a thread's events and a user's thread list, live, resumable with a cursor.

The transports (gateway.live: WebSocket, SSE) do not run strawberry's subscription machinery,
which would execute the selection once per subscriber for every event. Instead a subscription is
prepared here once (validated, limited, authorized like a query), and subscribers with the same
selection and caller share a `SelectionGroup` that renders each event once, to JSON bytes.
"""

import asyncio
import base64
import binascii
import enum
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import strawberry
from graphql import (
    ExecutionResult,
    Executor,
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    VariableNode,
    execute_subscription_event,
    specified_rules,
)
from graphql.execution.collect_fields import collect_fields
from graphql.execution.values import get_argument_values

from gateway import tables
from gateway.auth import CallerKind
from gateway.data import thread_events, threads
from gateway.data.access import Access
from gateway.errors import BadUserInput, CursorExpired, GatewayError, NotFound, ServiceUnavailable
from gateway.jsonops import to_json_bytes
from gateway.timestamps import parse_timestamp
from resolvers.context import OUTAGE_MESSAGE, GatewayContext, Info, is_outage
from resolvers.documents import prepare
from resolvers.ids import parse_id, parse_optional_id
from resolvers.limits import check_operation
from resolvers.types import Element, Feedback, Step, Thread

logger = logging.getLogger("gateway.subscriptions")

CURSOR_PREFIX = "ev1:"
MAX_POSITION = 2**63 - 1


@strawberry.enum(description="What happened to a thread or what is in it.")
class ThreadEventKind(enum.Enum):
    THREAD_CREATED = "THREAD_CREATED"
    THREAD_UPDATED = "THREAD_UPDATED"
    THREAD_DELETED = "THREAD_DELETED"
    STEP_CREATED = "STEP_CREATED"
    STEP_UPDATED = "STEP_UPDATED"
    STEP_OUTPUT_APPENDED = "STEP_OUTPUT_APPENDED"
    STEP_DELETED = "STEP_DELETED"
    ELEMENT_CREATED = "ELEMENT_CREATED"
    ELEMENT_DELETED = "ELEMENT_DELETED"
    FEEDBACK_UPSERTED = "FEEDBACK_UPSERTED"
    FEEDBACK_DELETED = "FEEDBACK_DELETED"


def encode_event_cursor(position: int, recorded_at: str) -> str:
    return base64.urlsafe_b64encode(f"{CURSOR_PREFIX}{position}:{recorded_at}".encode()).decode().rstrip("=")


@dataclass(frozen=True)
class EventCursor:
    position: int
    recorded_at: datetime


def decode_event_cursor(cursor: str) -> EventCursor:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        position, recorded_at = text.removeprefix(CURSOR_PREFIX).split(":", 1)
        # Positions are 64-bit integers in both databases: a larger one is no event's.
        if not text.startswith(CURSOR_PREFIX) or not position.isdigit() or int(position) > MAX_POSITION:
            raise ValueError(text)
        return EventCursor(int(position), parse_timestamp(recorded_at))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadUserInput("`after` is not a cursor of an event", argument="after") from None


@strawberry.type(description="One change to a thread or to what is in it, in commit order.")
class ThreadEvent:
    cursor: str = strawberry.field(
        description="Opaque, strictly increasing per subscription: pass it as `after` to resume."
    )
    kind: ThreadEventKind
    thread_id: strawberry.ID
    entity_id: strawberry.Private[str | None]

    @strawberry.field(description="The thread's current state, for THREAD_* (null once deleted).")
    async def thread(self, info: Info) -> Thread | None:
        if not self.kind.name.startswith("THREAD_") or self.kind is ThreadEventKind.THREAD_DELETED:
            return None
        row = await info.context.loaders.thread_by_id.load(self.thread_id)
        return Thread.from_row(row) if row else None

    @strawberry.field(description="The step's current state, for STEP_* (null once deleted).")
    async def step(self, info: Info) -> Step | None:
        if not self.kind.name.startswith("STEP_") or self.entity_id is None:
            return None
        if self.kind is ThreadEventKind.STEP_DELETED:
            return None
        row = await info.context.loaders.step_by_id.load(self.entity_id)
        return Step.from_row(row) if row else None

    delta: str | None = strawberry.field(description="STEP_OUTPUT_APPENDED: exactly the text appended.")

    @strawberry.field(description="The element, for ELEMENT_CREATED (null once deleted).")
    async def element(self, info: Info) -> Element | None:
        if self.kind is not ThreadEventKind.ELEMENT_CREATED or self.entity_id is None:
            return None
        row = await info.context.loaders.element_by_id.load(self.entity_id)
        return Element.from_row(row) if row else None

    @strawberry.field(description="The feedback, for FEEDBACK_UPSERTED (null once deleted).")
    async def feedback(self, info: Info) -> Feedback | None:
        if self.kind is not ThreadEventKind.FEEDBACK_UPSERTED or self.entity_id is None:
            return None
        row = await info.context.loaders.feedback_by_id.load(self.entity_id)
        return Feedback.from_row(row) if row else None

    deleted_id: strawberry.ID | None = strawberry.field(description="*_DELETED: the id that is gone.")

    @classmethod
    def from_row(cls, row: tables.ThreadEvent) -> "ThreadEvent":
        assert row.position is not None
        kind = ThreadEventKind(row.kind)
        return cls(
            cursor=encode_event_cursor(row.position, row.createdAt),
            kind=kind,
            thread_id=strawberry.ID(row.threadId),
            entity_id=row.entityId,
            delta=row.delta,
            deleted_id=strawberry.ID(row.entityId)
            if kind.name.endswith("_DELETED") and row.entityId
            else None,
        )


SERVED_ELSEWHERE = (
    "subscriptions are served over WebSocket (graphql-transport-ws, graphql-ws) and Server-Sent "
    "Events at /graphql"
)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="One thread's changes, in commit order. `after`: replay every retained event "
        "after this cursor first. Completes after THREAD_DELETED."
    )
    async def thread_events(  # pragma: no cover - the transports never call it (see the module)
        self, info: Info, thread_id: strawberry.ID, after: str | None = None
    ) -> AsyncGenerator[ThreadEvent, None]:
        raise BadUserInput(SERVED_ELSEWHERE)
        yield  # an async generator, for the schema

    @strawberry.subscription(
        description="A user's thread list (the sidebar): their threads created, changed (also by "
        "new steps), deleted. `userId` defaults to the caller; API keys may name any user."
    )
    async def user_thread_events(  # pragma: no cover - the transports never call it (see the module)
        self, info: Info, user_id: strawberry.ID | None = None, after: str | None = None
    ) -> AsyncGenerator[ThreadEvent, None]:
        raise BadUserInput(SERVED_ELSEWHERE)
        yield  # an async generator, for the schema


@dataclass(frozen=True)
class Feed:
    """What a subscription watches: one thread, or one user's thread list."""

    kind: str  # "thread" or "user"
    key: str


class FinalRendering(str):
    """A rendering that ends its subscription once sent: the caller can no longer read the thread."""


@dataclass(eq=False)
class SelectionGroup:
    """Subscribers with one selection and one caller: each event is rendered once for all."""

    executor: Executor[Any]
    context: GatewayContext
    members: int = 0
    checks: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))

    async def render_many(self, events: Sequence[tables.ThreadEvent]) -> list[str | BaseException]:
        """Each event as the `payload` of a `next` message (`{"data": ...}` as JSON text), or the
        exception rendering it raised. Rendered together: one read per field for all of them."""
        # Fresh loaders: the current state of what the events name, not what an earlier one read.
        self.context.reset_loaders()
        return await asyncio.gather(*(self._render(event) for event in events), return_exceptions=True)

    async def _render(self, event: tables.ThreadEvent) -> str:
        ending: GatewayError | None = None
        try:
            if not await self._still_readable(event):
                ending = NotFound(f"thread {event.threadId} not found")
        except Exception as error:
            if not is_outage(error):
                raise
            # Neither delivered nor skipped: the subscription ends, retryable; resuming rechecks.
            ending = ServiceUnavailable(OUTAGE_MESSAGE)
        if ending is not None:
            return FinalRendering(to_json_bytes({"data": None, "errors": [error_payload(ending)]}).decode())
        result = execute_subscription_event(
            self.executor.build_per_event_executor(ThreadEvent.from_row(event))
        )
        if not isinstance(result, ExecutionResult):
            result = await result
        return to_json_bytes(format_result(result, self.context.request_id)).decode()

    async def _still_readable(self, event: tables.ThreadEvent) -> bool:
        """Whether the caller may still read the event's thread, rechecked on every change of the
        thread itself (a new owner, no longer shared): the events after it are not theirs to see.
        A thread deleted since stays readable here: its THREAD_DELETED event ends the feed."""
        access = self.context.access
        if access.everything or event.kind != ThreadEventKind.THREAD_UPDATED.value or event.activity:
            return True
        # A batch's events render at once: their checks take turns, not the whole pool.
        async with self.checks, self.context.db.session() as session:
            if await threads.get_threads_by_ids(session, ids=[event.threadId], access=access):
                return True
            return not await threads.get_threads_by_ids(session, ids=[event.threadId], access=Access())


@dataclass
class PreparedSubscription:
    feed: Feed
    after: EventCursor | None
    group_key: tuple[Any, ...]
    executor: Executor[Any]
    root_field: str
    completes_on_delete: bool = field(default=False)


def error_payload(error: GatewayError) -> dict[str, Any]:
    return {"message": error.message, "extensions": {**error.extensions, "code": error.code}}


def format_result(result: ExecutionResult, request_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"data": result.data}
    if result.errors:
        answer["errors"] = [format_error(error, request_id) for error in result.errors]
    return answer


def format_error(error: GraphQLError, request_id: str) -> dict[str, Any]:
    original = error.original_error
    formatted: dict[str, Any] = dict(error.formatted)
    if isinstance(original, GatewayError):
        formatted.update(error_payload(original))
    elif original is not None and is_outage(original):
        formatted.update(
            message=OUTAGE_MESSAGE, extensions={"code": "SERVICE_UNAVAILABLE", "retryable": True}
        )
    elif original is not None:
        logger.error("unexpected error rendering an event (request %s)", request_id, exc_info=original)
        formatted.update(
            message=f"Internal server error. Quote request id {request_id} when reporting it.",
            extensions={"code": "INTERNAL_SERVER_ERROR", "requestId": request_id},
        )
    else:
        formatted.setdefault("extensions", {}).setdefault("code", "BAD_USER_INPUT")
    return formatted


class SubscriptionRefused(Exception):
    """The subscription cannot start: its GraphQL errors, as the transport sends them."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors

    @classmethod
    def of(cls, error: GatewayError) -> "SubscriptionRefused":
        return cls([error_payload(error)])

    @classmethod
    def outage(cls) -> "SubscriptionRefused":
        """The database could not be reached while starting: retryable, like a query's outage."""
        return cls.of(ServiceUnavailable(OUTAGE_MESSAGE))


async def prepare_subscription(
    schema: strawberry.Schema,
    *,
    query: Any,
    variables: Any,
    operation_name: Any,
    context: GatewayContext,
    retention: timedelta,
) -> PreparedSubscription:
    """Validate, limit and authorize a subscription, as a query would be (raises SubscriptionRefused)."""
    if not isinstance(query, str) or not query.strip():
        raise SubscriptionRefused.of(BadUserInput("a subscription needs a `query`"))
    if variables is not None and not isinstance(variables, dict):
        raise SubscriptionRefused.of(BadUserInput("`variables` must be an object"))
    if operation_name is not None and not isinstance(operation_name, str):
        raise SubscriptionRefused.of(BadUserInput("`operationName` must be a string"))
    graphql_schema = schema._schema
    prepared = prepare(query)
    if prepared.tokens is None or prepared.tokens > context.limits.max_tokens:
        raise SubscriptionRefused.of(BadUserInput("the document is over the token limit"))
    if prepared.document is None:
        raise SubscriptionRefused(
            [{"message": "the document does not parse", "extensions": {"code": "GRAPHQL_PARSE_FAILED"}}]
        )
    problems = prepared.validation_errors(graphql_schema, tuple(specified_rules))
    if problems:
        raise SubscriptionRefused(
            [{**error.formatted, "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}} for error in problems]
        )
    limit, _cost = check_operation(graphql_schema, prepared, operation_name, variables, context.limits)
    if limit is not None:
        raise SubscriptionRefused.of(limit)
    built = Executor.build(
        graphql_schema,
        prepared.document,
        context_value=context,
        raw_variable_values=variables,
        operation_name=operation_name,
    )
    if isinstance(built, list):
        raise SubscriptionRefused(
            [{**error.formatted, "extensions": {"code": "BAD_USER_INPUT"}} for error in built]
        )
    operation: OperationDefinitionNode = built.operation
    if operation.operation is not OperationType.SUBSCRIPTION:
        raise SubscriptionRefused.of(
            BadUserInput("only subscription operations are served here; send queries and mutations over HTTP")
        )
    subscription_type = graphql_schema.subscription_type
    assert subscription_type is not None
    # The root field as execution finds it: through fragments, and not one skipped by @include/@skip.
    collected = collect_fields(
        graphql_schema, built.fragments, built.variable_values, subscription_type, operation
    ).grouped_field_set
    if not collected:
        raise SubscriptionRefused.of(BadUserInput("the subscription selects no field (all are skipped)"))
    root: FieldNode = next(iter(collected.values()))[0].node
    field_def = subscription_type.fields[root.name.value]
    try:
        arguments = get_argument_values(field_def, root, built.variable_values)
    except GraphQLError as error:
        raise SubscriptionRefused([{**error.formatted, "extensions": {"code": "BAD_USER_INPUT"}}]) from None
    try:
        after = _live_cursor(arguments.get("after"), retention)
        feed = await _authorized_feed(root.name.value, arguments, context, after)
    except GatewayError as error:
        raise SubscriptionRefused.of(error) from None
    # The cursor a subscriber resumes from changes nothing of what is rendered: not in the key.
    after_variables = {
        argument.value.name.value
        for argument in root.arguments or ()
        if argument.name.value == "after" and isinstance(argument.value, VariableNode)
    }
    shown_variables = {key: value for key, value in (variables or {}).items() if key not in after_variables}
    group_key = (query, operation_name, to_json_bytes(shown_variables), context.access)
    return PreparedSubscription(
        feed=feed,
        after=after,
        group_key=group_key,
        executor=built,
        root_field=root.name.value,
        completes_on_delete=feed.kind == "thread",
    )


async def _authorized_feed(
    field_name: str, arguments: dict[str, Any], context: GatewayContext, after: EventCursor | None
) -> Feed:
    """Exactly the read rules of queries: a thread the caller cannot read is NOT_FOUND. A client
    resuming after its thread was deleted gets what it missed, up to THREAD_DELETED."""
    caller = context.caller
    if field_name == "threadEvents":
        thread_id = parse_id(arguments["threadId"], "threadId")
        async with context.db.session() as session:
            found = await threads.get_threads_by_ids(session, ids=[thread_id], access=context.access)
            deleted = None
            if thread_id not in found and after is not None:
                deleted = await thread_events.thread_deletion_after(
                    session, thread_id=thread_id, after=after.position
                )
        if thread_id not in found and (deleted is None or not context.access.owns(deleted.userId)):
            raise NotFound(f"thread {thread_id} not found")
        return Feed("thread", thread_id)
    user_id = parse_optional_id(arguments.get("userId"), "userId")
    if caller.kind is CallerKind.USER:
        if user_id is not None and user_id != caller.user_id:
            raise NotFound(f"user {user_id} not found")
        assert caller.user_id is not None
        return Feed("user", caller.user_id)
    if user_id is None:
        raise BadUserInput(
            "an API key has no thread list of its own: name the user with `userId`", argument="userId"
        )
    return Feed("user", user_id)


def _live_cursor(after: Any, retention: timedelta) -> EventCursor | None:
    if after is None:
        return None
    cursor = decode_event_cursor(str(after))
    if cursor.recorded_at < datetime.now(UTC) - retention:
        raise CursorExpired(
            "events after this cursor are no longer kept (older than the retention): reload the "
            "thread or list, then subscribe without `after`",
            retentionSeconds=int(retention.total_seconds()),
        )
    return cursor


async def replay_batches(
    context: GatewayContext, feed: Feed, *, after: int, through: int, size: int
) -> AsyncGenerator[Sequence[tables.ThreadEvent], None]:
    """The feed's retained events in (after, through], in order, `size` at a time: each batch read
    when the previous one is taken, so a long resume holds one batch, not all it missed (and no
    connection while its reader catches up)."""
    while True:
        async with context.db.session() as session:
            if feed.kind == "thread":
                batch = await thread_events.thread_events_between(
                    session, thread_id=feed.key, after=after, through=through, limit=size
                )
            else:
                batch = await thread_events.user_events_between(
                    session, user_id=feed.key, after=after, through=through, limit=size
                )
        if batch:
            yield batch
        if len(batch) < size:
            return
        assert batch[-1].position is not None
        after = batch[-1].position
