"""Per-request DataLoaders: every field of one level of a query shares one SQL statement.

A loader collects the keys its fields ask for while the level resolves, then runs one batched
data-access call. Paged loaders are keyed by parent and arguments; parents asking for the same
page arguments (the usual case) share a statement.
"""

from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.dataloader import DataLoader

from gateway.data import elements, feedback, steps, threads, users
from gateway.data.access import Access
from gateway.data.pagination import Page, PageRequest
from gateway.data.steps import StepFilter
from gateway.database import Database
from gateway.errors import GatewayError
from gateway.tables import Element, Feedback, Step, Thread, User

Value = TypeVar("Value")
Params = TypeVar("Params", bound=Hashable)


def _by_key(
    db: Database, fetch: Callable[[AsyncSession, Sequence[str]], Awaitable[dict[str, Value]]]
) -> DataLoader[str, Value | None]:
    async def load(keys: list[str]) -> list[Value | None]:
        async with db.session() as session:
            found = await fetch(session, keys)
        return [found.get(key) for key in keys]

    return DataLoader(load_fn=load)


def _grouped(
    db: Database,
    fetch: Callable[[AsyncSession, Sequence[str], Any], Awaitable[dict[str, Value]]],
) -> DataLoader[tuple[str, Any], Value]:
    """Keys are (parent id, params); one call per distinct params, for all parents asking it."""

    async def load(keys: list[tuple[str, Any]]) -> list[Value | BaseException]:
        parents_by_params: dict[Any, list[str]] = defaultdict(list)
        for parent_id, params in keys:
            parents_by_params[params].append(parent_id)
        results: dict[tuple[str, Any], Value | BaseException] = {}
        async with db.session() as session:
            for params, parent_ids in parents_by_params.items():
                try:
                    found: dict[str, Value | BaseException] = dict(await fetch(session, parent_ids, params))
                except GatewayError as error:  # e.g. a bad cursor: only the fields that sent it fail
                    found = dict.fromkeys(parent_ids, error)
                for parent_id, value in found.items():
                    results[(parent_id, params)] = value
        return [results[key] for key in keys]

    return DataLoader(load_fn=load)


class Loaders:
    """The loaders of one request, reading what its caller's access reaches."""

    def __init__(self, db: Database, access: Access) -> None:
        self.user_by_id: DataLoader[str, User | None] = _by_key(
            db, lambda session, ids: users.get_users_by_ids(session, ids=ids, access=access)
        )
        self.user_by_identifier: DataLoader[str, User | None] = _by_key(
            db,
            lambda session, identifiers: users.get_users_by_identifiers(
                session, identifiers=identifiers, access=access
            ),
        )
        self.thread_by_id: DataLoader[str, Thread | None] = _by_key(
            db, lambda session, ids: threads.get_threads_by_ids(session, ids=ids, access=access)
        )
        self.step_by_id: DataLoader[str, Step | None] = _by_key(
            db, lambda session, ids: steps.get_steps_by_ids(session, ids=ids, access=access)
        )
        self.element_by_id: DataLoader[str, Element | None] = _by_key(
            db, lambda session, ids: elements.get_elements_by_ids(session, ids=ids, access=access)
        )
        self.feedback_by_id: DataLoader[str, Feedback | None] = _by_key(
            db, lambda session, ids: feedback.get_feedbacks_by_ids(session, ids=ids, access=access)
        )
        self.feedback_of_step: DataLoader[str, Feedback | None] = _by_key(
            db, lambda session, ids: feedback.get_feedback_of_steps(session, step_ids=ids)
        )
        self.elements_of_step: DataLoader[str, list[Element] | None] = _by_key(
            db, lambda session, ids: elements.get_elements_of_steps(session, step_ids=ids, access=access)
        )
        self.steps_of_thread: DataLoader[tuple[str, tuple[PageRequest, StepFilter]], Page[Step]] = _grouped(
            db,
            lambda session, ids, params: steps.list_steps_of_threads(
                session, thread_ids=ids, request=params[0], step_filter=params[1]
            ),
        )
        self.step_count_of_thread: DataLoader[tuple[str, StepFilter], int] = _grouped(
            db,
            lambda session, ids, step_filter: steps.count_steps_of_threads(
                session, thread_ids=ids, step_filter=step_filter
            ),
        )
        self.children_of_step: DataLoader[tuple[str, PageRequest], Page[Step]] = _grouped(
            db,
            lambda session, ids, request: steps.list_children_of_steps(
                session, parent_ids=ids, request=request, access=access
            ),
        )
        self.child_count_of_step: DataLoader[tuple[str, None], int] = _grouped(
            db, lambda session, ids, _: steps.count_children_of_steps(session, parent_ids=ids, access=access)
        )
        self.elements_of_thread: DataLoader[tuple[str, PageRequest], Page[Element]] = _grouped(
            db,
            lambda session, ids, request: elements.list_elements_of_threads(
                session, thread_ids=ids, request=request
            ),
        )
        self.element_count_of_thread: DataLoader[tuple[str, None], int] = _grouped(
            db, lambda session, ids, _: elements.count_elements_of_threads(session, thread_ids=ids)
        )
        self.feedbacks_of_thread: DataLoader[tuple[str, PageRequest], Page[Feedback]] = _grouped(
            db,
            lambda session, ids, request: feedback.list_feedbacks_of_threads(
                session, thread_ids=ids, request=request
            ),
        )
        self.feedback_count_of_thread: DataLoader[tuple[str, None], int] = _grouped(
            db, lambda session, ids, _: feedback.count_feedbacks_of_threads(session, thread_ids=ids)
        )
