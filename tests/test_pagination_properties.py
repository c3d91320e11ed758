"""Keyset pagination, property-based, through GraphQL: pages neither repeat nor skip rows while rows
are inserted and deleted between page fetches, and a cursor stays valid after its row is deleted.

Each example pages through one list with random page sizes, and between fetches inserts rows (on
both sides of the cursor, often with the cursor row's very sort value, so the id breaks the tie)
and deletes rows, the cursor's own included. Every page is checked against a model: the rows alive
at the fetch, in the list's order, strictly beyond the cursor. At the end comes the contract a
client relies on: each row that existed at the start and was not deleted was seen exactly once,
no row was seen twice, rows came in the list's order, and "more" was false exactly at the end.

Tables are emptied per test, not per example, so every example works in a list of its own: the
threads of a fresh user, or the steps of a fresh thread.
"""

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import Api

PROPERTY_SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

MAX_INITIAL_ROWS = 18
INITIAL_SLOTS = (0, 3)  # four createdAt values for up to 18 rows: many ties
INSERT_SLOTS = (-1, 4)  # inserts also land before the oldest and after the newest
MAX_INSERTS = 12
MAX_PAGES = 100
BASE_MOMENT = datetime(2026, 1, 1, tzinfo=UTC)

Key = tuple[str, str]  # (sort value, id): the list's order, the id breaking ties

CONNECTION_FIELDS = (
    "edges { cursor node { id createdAt updatedAt } } pageInfo { hasNextPage hasPreviousPage }"
)
THREADS_BY_CREATED_AT = f"""
query($userId: ID!, $first: Int!, $after: String) {{
  threads(first: $first, after: $after, filter: {{userId: $userId}},
          orderBy: {{field: CREATED_AT, direction: DESC}}) {{ {CONNECTION_FIELDS} }}
}}"""
THREADS_BY_DEFAULT_ORDER = f"""
query($userId: ID!, $first: Int!, $after: String) {{
  threads(first: $first, after: $after, filter: {{userId: $userId}}) {{ {CONNECTION_FIELDS} }}
}}"""
STEP_FIELDS = "edges { cursor node { id createdAt } } pageInfo { hasNextPage hasPreviousPage }"
STEPS_OF_THREAD = f"""
query($id: ID!, $first: Int, $after: String, $last: Int, $before: String) {{
  thread(id: $id) {{ steps(first: $first, after: $after, last: $last, before: $before) {{ {STEP_FIELDS} }} }}
}}"""
UPSERT_USER = "mutation($identifier: String!) { upsertUser(input: {identifier: $identifier}) { id } }"
UPSERT_THREAD = "upsertThread(input: $input) { id createdAt updatedAt }"
UPSERT_STEP = "upsertStep(input: $input) { id createdAt }"
DELETE_THREAD = "mutation($id: ID!) { deleteThread(id: $id) { id } }"
DELETE_STEP = "mutation($id: ID!) { deleteStep(id: $id) { id } }"


def moment(slot: int) -> str:
    """One of a few client-chosen timestamps: equal slots make equal sort values."""
    return (BASE_MOMENT + timedelta(seconds=slot)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def ranked_id(rank: int) -> str:
    """A UUID whose first 32 bits are `rank`, so Hypothesis chooses how the ids of one example sort;
    the random rest keeps ids unique across examples (tables are not emptied between them)."""
    return str(uuid.UUID(int=(rank << 96) | (uuid.uuid4().int & ((1 << 96) - 1))))


async def create_many(
    api: Api, mutation_field: str, input_type: str, inputs: list[dict[str, Any]]
) -> list[Any]:
    """Create rows with one upsert each, all in one request (aliased mutation fields run in order)."""
    if not inputs:
        return []
    variables = ", ".join(f"$input{index}: {input_type}!" for index in range(len(inputs)))
    fields = " ".join(
        f"row{index}: " + mutation_field.replace("$input", f"$input{index}") for index in range(len(inputs))
    )
    data = await api.ok(
        f"mutation({variables}) {{ {fields} }}", **{f"input{index}": row for index, row in enumerate(inputs)}
    )
    return [data[f"row{index}"] for index in range(len(inputs))]


@dataclass
class Page:
    edges: list[tuple[str, Key]]  # (cursor, key), in the list's order as returned
    has_next_page: bool
    has_previous_page: bool


@dataclass
class Listing:
    """One list as the API serves it: how to fetch a page and how to add and remove its rows."""

    descending: bool  # the list's order
    backward: bool  # paging with `last`/`before` from the end
    fetch: Callable[[int, str | None], Awaitable[Page]]
    create: Callable[[list[tuple[str, int]]], Awaitable[list[Key]]]  # (id, createdAt slot) -> keys
    delete: Callable[[str], Awaitable[None]]


@dataclass
class Ids:
    """Ranks of the ids of one example, each used once."""

    used: set[int] = field(default_factory=set)

    def take(self, rank: int) -> str:
        while rank in self.used:
            rank = (rank + 1) % (1 << 32)
        self.used.add(rank)
        return ranked_id(rank)


def page_of(connection: dict[str, Any], sort_field: str) -> Page:
    info = connection["pageInfo"]
    return Page(
        edges=[
            (edge["cursor"], (edge["node"][sort_field], edge["node"]["id"])) for edge in connection["edges"]
        ],
        has_next_page=info["hasNextPage"],
        has_previous_page=info["hasPreviousPage"],
    )


# A uniform row count: plain lists are mostly short, and short lists end after a page or two.
INITIAL_ROWS = st.integers(0, MAX_INITIAL_ROWS).flatmap(
    lambda count: st.lists(
        st.tuples(st.integers(*INITIAL_SLOTS), st.integers(0, 1023)), min_size=count, max_size=count
    )
)
PAGE_SIZES = st.integers(1, 7)
INSERT = st.tuples(st.just("insert"), st.integers(*INSERT_SLOTS), st.integers(0, 1023))
DELETE_CURSOR_ROW = st.just(("delete cursor row",))
DELETE_ANY_ROW = st.tuples(st.just("delete row"), st.integers(0, 1000))
INSERTS_ONLY = st.lists(INSERT, max_size=3)
# Deleting the cursor row is the case that matters most: it weighs double.
INSERTS_AND_DELETES = st.lists(
    st.one_of(INSERT, DELETE_CURSOR_ROW, DELETE_CURSOR_ROW, DELETE_ANY_ROW), max_size=3
)


async def page_through(
    data: st.DataObject, listing: Listing, operations: st.SearchStrategy[list[Any]]
) -> None:
    """Page to the end of the list with random page sizes and operations in between, checking every
    page against the model, then the whole walk against the pagination contract."""
    ids = Ids()
    initial = data.draw(INITIAL_ROWS, label="initial rows (createdAt slot, id rank)")
    keys = await listing.create([(ids.take(rank), slot) for slot, rank in initial])
    alive: dict[str, Key] = {key[1]: key for key in keys}
    initially_alive, deleted = set(alive), set()
    # The direction rows are read in: a backward walk of an ascending list reads it descending.
    reading_descending = listing.descending != listing.backward

    def ahead(key: Key, cursor_key: Key | None) -> bool:
        """Whether `key` comes strictly after the cursor in reading order."""
        return cursor_key is None or (key < cursor_key if reading_descending else key > cursor_key)

    seen: list[Key] = []  # in reading order
    cursor: str | None = None
    cursor_key: Key | None = None
    inserts_left = MAX_INSERTS
    for _ in range(MAX_PAGES):
        size = data.draw(PAGE_SIZES, label="page size")
        page = await listing.fetch(size, cursor)
        read = [key for _, key in page.edges]
        if listing.backward:
            read.reverse()
        has_more = page.has_previous_page if listing.backward else page.has_next_page
        has_behind = page.has_next_page if listing.backward else page.has_previous_page

        remaining = sorted(
            (key for key in alive.values() if ahead(key, cursor_key)), reverse=reading_descending
        )
        assert read == remaining[:size], f"page of {size} after {cursor_key}: got {read}, model {remaining}"
        assert has_more == (len(remaining) > size), f"'more' is {has_more} with {len(remaining)} rows left"
        if cursor is None:
            assert not has_behind, "the first page says rows precede the start of the list"
        seen.extend(read)
        if cursor_key is not None and cursor_key[1] not in alive:
            event("fetched a page after a deleted row's cursor")
        if cursor_key is not None and any(key[0] == cursor_key[0] for key in read):
            event("a page held rows tied with the cursor's sort value")
        if not has_more:
            break

        # The cursor of the row read last; the next page continues from it.
        cursor, cursor_key = page.edges[0] if listing.backward else page.edges[-1]
        for operation in data.draw(operations, label="operations before the next page"):
            if operation[0] == "insert" and inserts_left > 0:
                inserts_left -= 1
                (key,) = await listing.create([(ids.take(operation[2]), operation[1])])
                event(
                    "inserted ahead of the cursor" if ahead(key, cursor_key) else "inserted behind the cursor"
                )
                alive[key[1]] = key
            elif operation[0] == "delete cursor row" and cursor_key[1] in alive:
                await listing.delete(cursor_key[1])
                deleted.add(alive.pop(cursor_key[1])[1])
            elif operation[0] == "delete row" and alive:
                victim = sorted(alive)[operation[1] % len(alive)]
                await listing.delete(victim)
                deleted.add(alive.pop(victim)[1])
    else:
        raise AssertionError(f"no last page after {MAX_PAGES} pages")
    if page.edges:  # the end indeed: nothing follows the last page's last row
        beyond_end = await listing.fetch(7, page.edges[0][0] if listing.backward else page.edges[-1][0])
        assert beyond_end.edges == [], f"rows after the last page: {beyond_end.edges}"

    seen_ids = [key[1] for key in seen]
    assert len(seen_ids) == len(set(seen_ids)), f"rows seen twice: {seen_ids}"
    assert initially_alive - deleted <= set(seen_ids), (
        f"rows never seen: {initially_alive - deleted - set(seen_ids)}"
    )
    assert all(ahead(later, earlier) for earlier, later in pairwise(seen)), f"out of order: {seen}"


async def fresh_user(api: Api) -> str:
    user_id: str = (await api.ok(UPSERT_USER, identifier=f"pager-{uuid.uuid4()}"))["upsertUser"]["id"]
    return user_id


def thread_listing(api: Api, user_id: str, *, query: str, sort_field: str) -> Listing:
    async def fetch(size: int, cursor: str | None) -> Page:
        data = await api.ok(query, userId=user_id, first=size, after=cursor)
        return page_of(data["threads"], sort_field)

    async def create(rows: list[tuple[str, int]]) -> list[Key]:
        inputs = [{"id": row_id, "userId": user_id, "createdAt": moment(slot)} for row_id, slot in rows]
        threads = await create_many(api, UPSERT_THREAD, "ThreadInput", inputs)
        for (row_id, slot), thread in zip(rows, threads, strict=True):
            assert thread["id"] == row_id and thread["createdAt"] == moment(slot)
        return [(thread[sort_field], thread["id"]) for thread in threads]

    async def delete(row_id: str) -> None:
        await api.ok(DELETE_THREAD, id=row_id)

    return Listing(descending=True, backward=False, fetch=fetch, create=create, delete=delete)


def step_listing(api: Api, thread_id: str, *, backward: bool) -> Listing:
    async def fetch(size: int, cursor: str | None) -> Page:
        arguments = {"last": size, "before": cursor} if backward else {"first": size, "after": cursor}
        data = await api.ok(STEPS_OF_THREAD, id=thread_id, **arguments)
        return page_of(data["thread"]["steps"], "createdAt")

    async def create(rows: list[tuple[str, int]]) -> list[Key]:
        inputs = [
            {"id": row_id, "threadId": thread_id, "name": "step", "type": "run", "createdAt": moment(slot)}
            for row_id, slot in rows
        ]
        steps = await create_many(api, UPSERT_STEP, "StepInput", inputs)
        for (row_id, slot), step in zip(rows, steps, strict=True):
            assert step["id"] == row_id and step["createdAt"] == moment(slot)
        return [(step["createdAt"], step["id"]) for step in steps]

    async def delete(row_id: str) -> None:
        await api.ok(DELETE_STEP, id=row_id)

    return Listing(descending=False, backward=backward, fetch=fetch, create=create, delete=delete)


@PROPERTY_SETTINGS
@given(data=st.data())
async def test_threads_by_created_at_desc_with_inserts_and_deleted_cursor_rows(
    api: Api, data: st.DataObject
) -> None:
    user_id = await fresh_user(api)
    listing = thread_listing(api, user_id, query=THREADS_BY_CREATED_AT, sort_field="createdAt")
    await page_through(data, listing, INSERTS_AND_DELETES)


@PROPERTY_SETTINGS
@given(data=st.data())
async def test_threads_in_default_order_with_inserts(api: Api, data: st.DataObject) -> None:
    """Most recently updated first: new threads go to the top (or tie with the cursor's updatedAt,
    the id deciding), so every thread that existed at the start is seen once, in order."""
    user_id = await fresh_user(api)
    listing = thread_listing(api, user_id, query=THREADS_BY_DEFAULT_ORDER, sort_field="updatedAt")
    await page_through(data, listing, INSERTS_ONLY)


@PROPERTY_SETTINGS
@given(data=st.data())
async def test_steps_backward_from_the_end_with_inserts_and_deleted_cursor_rows(
    api: Api, data: st.DataObject
) -> None:
    thread_id = str(uuid.uuid4())
    await api.ok(f"mutation($input: ThreadInput!) {{ {UPSERT_THREAD} }}", input={"id": thread_id})
    await page_through(data, step_listing(api, thread_id, backward=True), INSERTS_AND_DELETES)


@PROPERTY_SETTINGS
@given(data=st.data())
async def test_steps_forward_with_inserts_and_deleted_cursor_rows(api: Api, data: st.DataObject) -> None:
    thread_id = str(uuid.uuid4())
    await api.ok(f"mutation($input: ThreadInput!) {{ {UPSERT_THREAD} }}", input={"id": thread_id})
    await page_through(data, step_listing(api, thread_id, backward=False), INSERTS_AND_DELETES)
