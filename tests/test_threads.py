"""Threads: upserts that change only what they are given, the thread list and its filters, deletion."""

import asyncio

import pytest
import sqlalchemy as sa

from gateway.database import Database
from tests.conftest import Api, new_uuid

UPSERT_THREAD = """
mutation($input: ThreadInput!) {
  upsertThread(input: $input) { id name createdAt updatedAt userId userIdentifier tags metadata }
}"""
UPSERT_USER = (
    "mutation($identifier: String!) { upsertUser(input: {identifier: $identifier}) { id identifier } }"
)
UPSERT_STEP = """
mutation($input: StepInput!) { upsertStep(input: $input) { id threadId output } }"""
THREAD_IDS = """
query($filter: ThreadFilter, $first: Int, $orderBy: ThreadOrder) {
  threads(first: $first, filter: $filter, orderBy: $orderBy) { totalCount edges { node { id } } }
}"""


async def upsert_thread(api: Api, **fields: object) -> dict[str, object]:
    data = await api.ok(UPSERT_THREAD, input=fields)
    thread: dict[str, object] = data["upsertThread"]
    return thread


async def create_user(api: Api, identifier: str) -> str:
    user_id: str = (await api.ok(UPSERT_USER, identifier=identifier))["upsertUser"]["id"]
    return user_id


async def listed(api: Api, thread_filter: dict[str, object] | None = None, **arguments: object) -> list[str]:
    data = await api.ok(THREAD_IDS, filter=thread_filter, **arguments)
    return [edge["node"]["id"] for edge in data["threads"]["edges"]]


async def test_create_then_partial_update_keeps_fields_not_given(api: Api) -> None:
    user_id = await create_user(api, "ada@example.com")
    thread_id = new_uuid()
    created = await upsert_thread(
        api, id=thread_id, name="Trip", userId=user_id, tags=["travel"], metadata={"lang": "en", "mood": "ok"}
    )
    assert created["userIdentifier"] == "ada@example.com"
    assert str(created["createdAt"]).endswith("Z") and len(str(created["createdAt"])) == 24

    renamed = await upsert_thread(api, id=thread_id, name="Trip to Rome")
    assert renamed["name"] == "Trip to Rome"
    assert renamed["tags"] == ["travel"]
    assert renamed["userId"] == user_id
    assert renamed["metadata"] == {"lang": "en", "mood": "ok"}
    assert renamed["createdAt"] == created["createdAt"]

    cleared = await upsert_thread(api, id=thread_id, name=None)
    assert cleared["name"] is None and cleared["tags"] == ["travel"]


async def test_metadata_merges_key_by_key_and_null_deletes(api: Api) -> None:
    thread_id = new_uuid()
    await upsert_thread(api, id=thread_id, metadata={"a": 1, "b": {"x": 1}, "c": "keep"})
    merged = await upsert_thread(
        api, id=thread_id, metadata={"a": 2, "b": {"y": 2}, "c": None, "d": [1, None]}
    )
    assert merged["metadata"] == {"a": 2, "b": {"y": 2}, "d": [1, None]}


async def test_retried_upsert_changes_nothing_not_even_updated_at(api: Api) -> None:
    thread_id = new_uuid()
    first = await upsert_thread(api, id=thread_id, name="Same", tags=["a"], metadata={"k": "v"})
    await asyncio.sleep(0.01)
    retried = await upsert_thread(api, id=thread_id, name="Same", tags=["a"], metadata={"k": "v"})
    assert retried == first
    await asyncio.sleep(0.01)
    changed = await upsert_thread(api, id=thread_id, name="Other")
    assert str(changed["updatedAt"]) > str(first["updatedAt"])


async def test_list_is_newest_activity_first_and_reads_do_not_reorder(api: Api) -> None:
    older, newer = new_uuid(), new_uuid()
    await upsert_thread(api, id=older, name="older")
    await asyncio.sleep(0.01)
    await upsert_thread(api, id=newer, name="newer")
    assert await listed(api) == [newer, older]

    await api.ok("query($id: ID!) { thread(id: $id) { steps { edges { node { id } } } } }", id=older)
    assert await listed(api) == [newer, older], "reading a thread must not bump it"

    await asyncio.sleep(0.01)
    await api.ok(
        UPSERT_STEP, input={"id": new_uuid(), "threadId": older, "name": "u", "type": "user_message"}
    )
    assert await listed(api) == [older, newer], "a new step is activity: the thread moves to the top"

    ascending = await listed(api, orderBy={"field": "UPDATED_AT", "direction": "ASC"})
    assert ascending == [newer, older]
    by_creation = await listed(api, orderBy={"field": "CREATED_AT", "direction": "DESC"})
    assert by_creation == [newer, older]


async def test_filters_by_owner(api: Api) -> None:
    ada, bob = await create_user(api, "ada"), await create_user(api, "bob")
    adas, bobs = new_uuid(), new_uuid()
    await upsert_thread(api, id=adas, userId=ada)
    await upsert_thread(api, id=bobs, userIdentifier="bob")
    await upsert_thread(api, id=new_uuid())
    assert await listed(api, {"userId": ada}) == [adas]
    assert await listed(api, {"userIdentifier": "bob"}) == [bobs]
    assert await listed(api, {"userId": bob, "userIdentifier": "bob"}) == [bobs]
    assert await listed(api, {"userIdentifier": "nobody"}) == []


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("ROME", {"named"}),
        ("weather", {"asked", "answered"}),
        ("ÜBER", {"german"}),
        ("москв", {"russian"}),
        ("50%", {"percent"}),
        ("_", set()),
    ],
)
async def test_search_matches_names_and_step_input_and_output_in_any_case(
    api: Api, term: str, expected: set[str]
) -> None:
    threads = {
        label: new_uuid() for label in ("named", "asked", "answered", "german", "russian", "percent", "none")
    }
    await upsert_thread(api, id=threads["named"], name="Trip to Rome")
    texts = {
        "asked": {"input": "What is the Weather?"},
        "answered": {"output": "The weather is fine"},
        "german": {"output": "Eine Frage über Straßen"},
        "russian": {"input": "Погода в Москве"},
        "percent": {"output": "growth of 50% a year"},
        "none": {"output": "nothing relevant"},
    }
    for label, text in texts.items():
        await api.ok(UPSERT_STEP, input={"id": new_uuid(), "threadId": threads[label], **text})
    found = set(await listed(api, {"search": term}))
    assert found == {threads[label] for label in expected}


async def test_feedback_filter_thumbs_down_and_up(api: Api) -> None:
    liked, disliked, unrated = new_uuid(), new_uuid(), new_uuid()
    for thread_id, value in ((liked, 1), (disliked, 0), (unrated, None)):
        step_id = new_uuid()
        await api.ok(UPSERT_STEP, input={"id": step_id, "threadId": thread_id, "output": "x"})
        if value is not None:
            await api.ok(
                "mutation($s: ID!, $v: Int!) { upsertFeedback(input: {forId: $s, value: $v}) { id } }",
                s=step_id,
                v=value,
            )
    assert await listed(api, {"feedback": 0}) == [disliked]
    assert await listed(api, {"feedback": 1}) == [liked]


async def test_tags_created_range_and_metadata_filters(api: Api) -> None:
    a, b, c = new_uuid(), new_uuid(), new_uuid()
    await upsert_thread(
        api,
        id=a,
        tags=["work", "urgent"],
        createdAt="2026-01-01T00:00:00.000Z",
        metadata={"project": "x", "flags": {"pinned": True}},
    )
    await upsert_thread(api, id=b, tags=["work"], createdAt="2026-02-01T00:00:00Z", metadata={"project": "y"})
    await upsert_thread(api, id=c, createdAt="2026-03-01T01:00:00+01:00")
    assert await listed(api, {"tags": ["work"]}) == [b, a]
    assert await listed(api, {"tags": ["work", "urgent"]}) == [a]
    assert await listed(api, {"tags": ["urgent", "missing"]}) == []
    assert set(await listed(api, {"createdAfter": "2026-01-15T00:00:00Z"})) == {b, c}
    assert await listed(api, {"createdBefore": "2026-01-15T00:00:00Z"}) == [a]
    assert await listed(api, {"metadata": {"project": "x"}}) == [a]
    assert await listed(api, {"metadata": {"flags": {"pinned": True}}}) == [a]
    assert await listed(api, {"metadata": {"flags": {"pinned": False}}}) == []
    assert await listed(api, {"metadata": {"project": "y"}, "tags": ["work"]}) == [b]
    created = await api.ok("query($id: ID!) { thread(id: $id) { createdAt } }", id=c)
    assert created["thread"]["createdAt"] == "2026-03-01T00:00:00.000Z", "offsets are stored as UTC"


async def test_total_count_counts_the_whole_filtered_list(api: Api) -> None:
    for index in range(5):
        await upsert_thread(api, id=new_uuid(), tags=["even"] if index % 2 == 0 else [])
    data = await api.ok(THREAD_IDS, filter={"tags": ["even"]}, first=2)
    assert data["threads"]["totalCount"] == 3
    assert len(data["threads"]["edges"]) == 2


async def test_delete_thread_removes_its_steps_elements_and_feedback(api: Api) -> None:
    thread_id, step_id, other_thread = new_uuid(), new_uuid(), new_uuid()
    await api.ok(UPSERT_STEP, input={"id": step_id, "threadId": thread_id, "output": "x"})
    await api.ok(UPSERT_STEP, input={"id": new_uuid(), "threadId": other_thread, "output": "y"})
    feedback = await api.ok(
        "mutation($s: ID!) { upsertFeedback(input: {forId: $s, value: 0}) { id } }", s=step_id
    )
    deleted = await api.ok("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=thread_id)
    assert deleted["deleteThread"]["id"] == thread_id
    after = await api.ok(
        "query($t: ID!, $s: ID!) { thread(id: $t) { id } step(id: $s) { id } }", t=thread_id, s=step_id
    )
    assert after == {"thread": None, "step": None}
    assert await listed(api, {"feedback": 0}) == []
    assert feedback["upsertFeedback"]["id"]
    assert await listed(api) == [other_thread]
    assert await api.code("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=thread_id) == "NOT_FOUND"


async def test_steps_written_by_another_app_move_their_thread_too(api: Api, db: Database) -> None:
    """A Chainlit app may keep writing to the same database; its step writes are activity too."""
    older, newer = new_uuid(), new_uuid()
    await upsert_thread(api, id=older, name="older")
    await asyncio.sleep(0.01)
    await upsert_thread(api, id=newer, name="newer")
    assert await listed(api) == [newer, older]
    await asyncio.sleep(0.01)
    step_id = new_uuid()
    async with db.transaction() as session:
        await session.execute(
            sa.text(
                'INSERT INTO steps (id, name, type, "threadId", streaming, "createdAt") '
                "VALUES (:id, 'user', 'user_message', :thread, false, '2026-01-01T00:00:00.000Z')"
            ),
            {"id": step_id, "thread": older},
        )
    assert await listed(api) == [older, newer]
    await asyncio.sleep(0.01)
    async with db.transaction() as session:
        await session.execute(sa.text("DELETE FROM steps WHERE id = :id"), {"id": step_id})
    await asyncio.sleep(0.01)
    await upsert_thread(api, id=newer, name="newer, renamed")
    assert await listed(api) == [newer, older]
    await api.ok(UPSERT_STEP, input={"id": new_uuid(), "threadId": older, "output": "x"})
    assert await listed(api) == [older, newer]


async def test_threads_another_app_writes_without_times_still_page(api: Api, db: Database) -> None:
    """Chainlit's update_thread inserts no createdAt when it merges metadata; NULL sort keys would
    have no place in a keyset page (skipped, or a cursor that cannot be used)."""
    ours = new_uuid()
    await upsert_thread(api, id=ours, name="ours")
    theirs = [new_uuid(), new_uuid()]
    async with db.transaction() as session:
        await session.execute(
            sa.text("INSERT INTO threads (id, name) VALUES (:id, 'no times')"), {"id": theirs[0]}
        )
        await session.execute(
            sa.text('INSERT INTO threads (id, "createdAt", "updatedAt") VALUES (:id, NULL, NULL)'),
            {"id": theirs[1]},
        )
    for order in ({"field": "CREATED_AT", "direction": "DESC"}, {"field": "UPDATED_AT", "direction": "ASC"}):
        seen: list[str] = []
        after = None
        for _ in range(5):
            data = await api.ok(
                "query($after: String, $order: ThreadOrder) { "
                "threads(first: 1, after: $after, orderBy: $order) { totalCount "
                "pageInfo { hasNextPage endCursor } edges { node { id createdAt updatedAt } } } }",
                after=after,
                order=order,
            )
            page = data["threads"]
            assert all(edge["node"]["createdAt"] and edge["node"]["updatedAt"] for edge in page["edges"])
            seen += [edge["node"]["id"] for edge in page["edges"]]
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        assert sorted(seen) == sorted([ours, *theirs]) and page["totalCount"] == 3


async def test_reads_do_not_wait_for_a_write_in_progress(api: Api, db: Database) -> None:
    """A long write (a batch, a slow client) must not stall every reader, on SQLite too."""
    await upsert_thread(api, id=new_uuid(), name="committed")
    async with db.transaction() as session:
        await session.execute(
            sa.text("INSERT INTO threads (id, name) VALUES (:id, 'pending')"), {"id": new_uuid()}
        )
        data = await asyncio.wait_for(
            api.ok("{ threads { totalCount edges { node { name } } } }"), timeout=10
        )
        assert data["threads"]["totalCount"] == 1, "an uncommitted write is not visible"
    assert (await api.ok("{ threads { totalCount } }"))["threads"]["totalCount"] == 2


async def test_thread_list_pages_backward_and_between_two_cursors(api: Api) -> None:
    ids = [new_uuid() for _ in range(6)]
    for day, thread_id in enumerate(ids):
        await upsert_thread(api, id=thread_id, createdAt=f"2026-01-0{day + 1}T00:00:00Z")
    query = """
    query($first: Int, $after: String, $last: Int, $before: String) {
      threads(first: $first, after: $after, last: $last, before: $before,
              orderBy: {field: CREATED_AT, direction: ASC}) {
        pageInfo { hasNextPage hasPreviousPage startCursor endCursor } edges { cursor node { id } }
      }
    }"""
    everything = (await api.ok(query, first=6))["threads"]
    cursors = [edge["cursor"] for edge in everything["edges"]]
    tail = (await api.ok(query, last=2))["threads"]
    assert [edge["node"]["id"] for edge in tail["edges"]] == ids[4:]
    assert tail["pageInfo"]["hasPreviousPage"] is True
    before_tail = (await api.ok(query, last=3, before=tail["pageInfo"]["startCursor"]))["threads"]
    assert [edge["node"]["id"] for edge in before_tail["edges"]] == ids[1:4]
    between = (await api.ok(query, first=10, after=cursors[0], before=cursors[4]))["threads"]
    assert [edge["node"]["id"] for edge in between["edges"]] == ids[1:4]
    assert between["pageInfo"]["hasNextPage"] is False
    between_last = (await api.ok(query, last=2, after=cursors[0], before=cursors[4]))["threads"]
    assert [edge["node"]["id"] for edge in between_last["edges"]] == ids[2:4]
    assert between_last["pageInfo"]["hasPreviousPage"] is True
