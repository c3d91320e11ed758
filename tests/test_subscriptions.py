"""Subscriptions over real sockets, on SQLite and PostgreSQL: every kind of event, in commit order,
resumable with `after`, authorized like queries."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette

from tests.conftest import Api, new_uuid
from tests.live import THREAD_EVENTS, USER_THREAD_EVENTS, live_client, served

UPSERT_THREAD = "mutation($i: ThreadInput!) { upsertThread(input: $i) { id } }"
UPSERT_STEP = "mutation($i: StepInput!) { upsertStep(input: $i) { id } }"
APPEND = "mutation($id: ID!, $d: String!) { appendStepOutput(id: $id, delta: $d) { id } }"


@pytest.fixture(scope="session")
async def url(app: Starlette) -> AsyncIterator[str]:
    async with served(app) as address:
        yield address


async def new_thread(api: Api, **fields: Any) -> str:
    thread_id = new_uuid()
    await api.ok(UPSERT_THREAD, i={"id": thread_id, "name": "first", **fields})
    return thread_id


async def new_step(api: Api, thread_id: str, **fields: Any) -> str:
    step_id = new_uuid()
    await api.ok(
        UPSERT_STEP,
        i={"id": step_id, "threadId": thread_id, "name": "reply", "type": "assistant_message", **fields},
    )
    return step_id


async def test_every_kind_of_event_of_a_thread_arrives_in_order_then_completes(api: Api, url: str) -> None:
    thread_id = await new_thread(api)
    async with live_client(url) as client:
        await client.subscribe(THREAD_EVENTS, t=thread_id)
        await asyncio.sleep(0.2)  # subscribed (the first event proves it, below)
        await api.ok(UPSERT_THREAD, i={"id": thread_id, "name": "renamed"})
        step_id = await new_step(api, thread_id)
        await api.ok(APPEND, id=step_id, d="Hel")
        await api.ok(APPEND, id=step_id, d="lo ✓")
        await api.ok(UPSERT_STEP, i={"id": step_id, "isError": True})
        feedback = await api.ok(
            "mutation($i: FeedbackInput!) { upsertFeedback(input: $i) { id } }",
            i={"forId": step_id, "value": 1},
        )
        feedback_id = feedback["upsertFeedback"]["id"]
        await api.ok("mutation($id: ID!) { deleteFeedback(id: $id) { id } }", id=feedback_id)
        element = await api.ok(
            "mutation($i: ElementInput!) { createElement(input: $i) { id } }",
            i={"threadId": thread_id, "name": "logo", "url": "https://example.com/logo.png", "type": "image"},
        )
        element_id = element["createElement"]["id"]
        await api.ok("mutation($id: ID!) { deleteElement(id: $id) { id } }", id=element_id)
        await api.ok("mutation($id: ID!) { deleteStep(id: $id) { id } }", id=step_id)
        await api.ok("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=thread_id)

        events = await client.events(11)
        kinds = [event["kind"] for event in events]
        assert kinds == [
            "THREAD_UPDATED",
            "STEP_CREATED",
            "STEP_OUTPUT_APPENDED",
            "STEP_OUTPUT_APPENDED",
            "STEP_UPDATED",
            "FEEDBACK_UPSERTED",
            "FEEDBACK_DELETED",
            "ELEMENT_CREATED",
            "ELEMENT_DELETED",
            "STEP_DELETED",
            "THREAD_DELETED",
        ], kinds
        assert events[0]["thread"] == {"id": thread_id, "name": "renamed"}
        assert [event["delta"] for event in events[2:4]] == ["Hel", "lo ✓"]
        assert events[5]["feedback"] is None or events[5]["feedback"]["id"] == feedback_id
        assert events[6]["deletedId"] == feedback_id
        assert events[8]["deletedId"] == element_id
        assert events[9]["deletedId"] == step_id and events[9]["step"] is None
        assert events[10]["deletedId"] == thread_id and events[10]["thread"] is None
        assert all(event["threadId"] == thread_id for event in events)
        assert len({event["cursor"] for event in events}) == len(events)
        completed = await client.receive()
        assert completed == {"id": "s1", "type": "complete"}


async def test_the_event_carries_the_current_state(api: Api, url: str) -> None:
    thread_id = await new_thread(api)
    async with live_client(url) as client:
        await client.subscribe(THREAD_EVENTS, t=thread_id)
        await asyncio.sleep(0.2)
        step_id = await new_step(api, thread_id, output="partial")
        event = await client.next_event()
        assert event["kind"] == "STEP_CREATED"
        assert event["step"]["id"] == step_id


async def test_the_sidebar_feed_sees_threads_created_renamed_active_and_deleted(api: Api, url: str) -> None:
    user = await api.ok('mutation { upsertUser(input: {identifier: "sidebar@example.com"}) { id } }')
    user_id = user["upsertUser"]["id"]
    async with live_client(url) as client:
        await client.subscribe(USER_THREAD_EVENTS, u=user_id)
        await asyncio.sleep(0.2)
        thread_id = await new_thread(api, userId=user_id)
        await new_thread(api)  # someone else's: not in this list
        await api.ok(UPSERT_THREAD, i={"id": thread_id, "name": "renamed"})
        await asyncio.sleep(0.01)  # updatedAt moves by at least a millisecond
        await new_step(api, thread_id)
        await api.ok("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=thread_id)
        events = await client.events(3)
        assert [event["kind"] for event in events] == [
            "THREAD_CREATED",
            "THREAD_UPDATED",
            "THREAD_UPDATED",  # a step was written: the thread moves to the top
        ]
        assert events[1]["thread"]["name"] == "renamed"
        # Deleting its steps first may move it once more, in the same transaction.
        last = await client.next_event()
        while last["kind"] == "THREAD_UPDATED":
            last = await client.next_event()
        assert last["kind"] == "THREAD_DELETED" and last["deletedId"] == thread_id


async def test_resume_after_a_disconnect_while_concurrent_writers_append(api: Api, url: str) -> None:
    """No gap, no duplicate at the seam; deltas in cursor order spell the stored output."""
    thread_id = await new_thread(api)
    step_id = await new_step(api, thread_id, output="")
    writers, appends_each = 4, 15

    async def writer(number: int) -> None:
        for index in range(appends_each):
            await api.ok(APPEND, id=step_id, d=f"[{number}.{index}]")

    received: list[dict[str, Any]] = []
    async with live_client(url) as client:
        await client.subscribe(THREAD_EVENTS, t=thread_id)
        await asyncio.sleep(0.2)
        writing = asyncio.gather(*(writer(number) for number in range(writers)))
        received.extend(await client.events(10))
    # Disconnected while the writers go on; resume from the last cursor received.
    await asyncio.sleep(0.05)
    async with live_client(url) as client:
        await client.subscribe(THREAD_EVENTS, t=thread_id, after=received[-1]["cursor"])
        while len(received) < writers * appends_each:
            received.append(await client.next_event())
        await writing
        await asyncio.sleep(0.3)
        await api.ok(APPEND, id=step_id, d="!")
        last = await client.next_event()
    assert last["delta"] == "!"
    cursors = [event["cursor"] for event in received]
    assert len(set(cursors)) == len(cursors)
    deltas = [event["delta"] for event in received]
    assert sorted(deltas) == sorted(f"[{n}.{i}]" for n in range(writers) for i in range(appends_each))
    stored = await api.ok("query($id: ID!) { step(id: $id) { output } }", id=step_id)
    assert "".join(deltas) + "!" == stored["step"]["output"]


async def test_a_thread_one_cannot_read_is_not_found(api: Api, url: str) -> None:
    async with live_client(url) as client:
        await client.subscribe(THREAD_EVENTS, t=new_uuid())
        message = await client.receive()
    assert message["type"] == "error"
    assert message["payload"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_a_cursor_older_than_the_retention_is_expired(api: Api, url: str) -> None:
    from resolvers.subscriptions import encode_event_cursor

    thread_id = await new_thread(api)
    async with live_client(url) as client:
        await client.subscribe(
            THREAD_EVENTS, t=thread_id, after=encode_event_cursor(1, "2020-01-01T00:00:00.000Z")
        )
        message = await client.receive()
        assert message["payload"][0]["extensions"]["code"] == "CURSOR_EXPIRED"
        await client.subscribe(THREAD_EVENTS, t=thread_id, after="not a cursor")
        message = await client.receive()
        assert message["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_the_legacy_graphql_ws_protocol(api: Api, url: str) -> None:
    thread_id = await new_thread(api)
    async with live_client(url, legacy=True) as client:
        subscription_id = await client.subscribe(THREAD_EVENTS, t=thread_id)
        await asyncio.sleep(0.2)
        step_id = await new_step(api, thread_id)
        await api.ok(APPEND, id=step_id, d="hi")
        events = await client.events(2)
        assert [event["kind"] for event in events] == ["STEP_CREATED", "STEP_OUTPUT_APPENDED"]
        await client.send({"id": subscription_id, "type": "stop"})
        assert await client.receive() == {"id": subscription_id, "type": "complete"}
