"""Subscriptions over real sockets, on SQLite and PostgreSQL: every kind of event, in commit order,
resumable with `after`, authorized like queries."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from gateway.auth import api_key_prefix, hash_api_key, new_api_key
from gateway.client import GatewayClient
from gateway.client import GatewayError as ClientError
from gateway.data import api_keys
from gateway.database import Database
from gateway.events import EventHub
from gateway.timestamps import utc_now
from gateway.websocket_server import GatewayWebSocketProtocol
from resolvers.subscriptions import decode_event_cursor, encode_event_cursor
from tests.conftest import (
    TEST_API_KEY,
    Api,
    _free_port,
    client_of,
    new_uuid,
    open_settings,
    running,
    secured_settings,
    user_token,
)
from tests.live import (
    RECEIVE_TIMEOUT,
    THREAD_EVENTS,
    USER_THREAD_EVENTS,
    StalledClient,
    live_client,
    served,
    until_live,
)
from tests.test_faults import proxy_to
from tests.test_operations import samples

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
        await until_live(client, api, await client.subscribe(THREAD_EVENTS, t=thread_id), thread_id=thread_id)
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


async def test_a_subscription_without_after_starts_at_its_start(api: Api, url: str) -> None:
    """What was written before anyone watched is not replayed to a subscription without `after`,
    however the process's event hub skipped over it."""
    thread_id = await new_thread(api)
    for _ in range(3):
        await new_step(api, thread_id, name="before")
    async with live_client(url) as client:
        subscription_id = await client.subscribe(THREAD_EVENTS, t=thread_id)
        probes: list[str] = []
        for _attempt in range(40):  # a subscription starts a moment after its message is sent
            probes.append(await new_step(api, thread_id, name="probe"))
            with contextlib.suppress(TimeoutError):
                received, event = await client.next_with_id(wait=0.5)
                break
        else:
            raise AssertionError("the subscription never went live")
    assert received == subscription_id
    assert event["kind"] == "STEP_CREATED"
    assert event["step"]["id"] in probes, event


async def test_the_event_carries_the_current_state(api: Api, url: str) -> None:
    thread_id = await new_thread(api)
    async with live_client(url) as client:
        await until_live(client, api, await client.subscribe(THREAD_EVENTS, t=thread_id), thread_id=thread_id)
        step_id = await new_step(api, thread_id, output="partial")
        event = await client.next_event()
        assert event["kind"] == "STEP_CREATED"
        assert event["step"]["id"] == step_id


async def test_the_sidebar_feed_sees_threads_created_renamed_active_and_deleted(api: Api, url: str) -> None:
    user = await api.ok('mutation { upsertUser(input: {identifier: "sidebar@example.com"}) { id } }')
    user_id = user["upsertUser"]["id"]
    async with live_client(url) as client:
        await until_live(client, api, await client.subscribe(USER_THREAD_EVENTS, u=user_id), user_id=user_id)
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
        await until_live(client, api, await client.subscribe(THREAD_EVENTS, t=thread_id), thread_id=thread_id)
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
        await until_live(client, api, subscription_id, thread_id=thread_id)
        step_id = await new_step(api, thread_id)
        await api.ok(APPEND, id=step_id, d="hi")
        events = await client.events(2)
        assert [event["kind"] for event in events] == ["STEP_CREATED", "STEP_OUTPUT_APPENDED"]
        await client.send({"id": subscription_id, "type": "stop"})
        assert await client.receive() == {"id": subscription_id, "type": "complete"}


async def test_a_write_committing_after_a_later_one_is_not_skipped(
    api: Api, url: str, db: Database, backend: str
) -> None:
    """The sequence-before-commit trap: T1 records its event first but commits last; a reader
    that went past T2's event must still get T1's, after it, with a higher cursor."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: a transaction cannot commit past another")
    # Two threads (a step write locks its thread's row): one hub position for both.
    slow_thread, fast_thread = await new_thread(api), await new_thread(api)
    slow_step, fast_step = (
        await new_step(api, slow_thread, output=""),
        await new_step(api, fast_thread, output=""),
    )
    async with live_client(url) as client:
        await until_live(
            client, api, await client.subscribe(THREAD_EVENTS, t=slow_thread), thread_id=slow_thread
        )
        await until_live(
            client, api, await client.subscribe(THREAD_EVENTS, t=fast_thread), thread_id=fast_thread
        )
        async with db.transaction() as session:
            await session.execute(
                sa.text("UPDATE steps SET output = output || 'slow' WHERE id = :id"), {"id": slow_step}
            )
            await api.ok(APPEND, id=fast_step, d="fast")
            fast = await client.next_event()
            assert (fast["kind"], fast["delta"]) == ("STEP_OUTPUT_APPENDED", "fast")
            await asyncio.sleep(0.2)  # the hub has read past the fast event
        slow = await client.next_event()  # committed now
        assert (slow["step"]["id"], slow["delta"]) == (slow_step, "slow")
    assert decode_event_cursor(slow["cursor"]).position > decode_event_cursor(fast["cursor"]).position


async def test_writes_of_another_program_produce_events(api: Api, url: str, db: Database) -> None:
    """A Chainlit app writing the same database with its own SQL: the triggers record its writes."""
    thread_id = await new_thread(api)
    async with live_client(url) as client:
        await until_live(client, api, await client.subscribe(THREAD_EVENTS, t=thread_id), thread_id=thread_id)
        async with db.transaction() as session:
            await session.execute(
                sa.text(
                    'INSERT INTO steps (id, name, type, "threadId", streaming, output, "createdAt") '
                    "VALUES (:id, 'chainlit', 'run', :thread, false, 'direct', '2026-01-01T00:00:00.000Z')"
                ),
                {"id": new_uuid(), "thread": thread_id},
            )
        event = await client.next_event()  # the poll (SQLite) or NOTIFY (PostgreSQL) finds it
        assert event["kind"] == "STEP_CREATED" and event["step"]["output"] == "direct"


@pytest.fixture(scope="session")
async def secured_url(secured_app: Starlette) -> AsyncIterator[str]:
    async with served(secured_app) as address:
        yield address


BEARER = {"Authorization": f"Bearer {TEST_API_KEY}"}


async def test_subscriptions_follow_the_read_rules_of_queries(secured_api: Api, secured_url: str) -> None:
    backend = secured_api.with_headers(**BEARER)
    alice = (await backend.ok('mutation { upsertUser(input: {identifier: "alice@live"}) { id } }'))[
        "upsertUser"
    ]["id"]
    bob = (await backend.ok('mutation { upsertUser(input: {identifier: "bob@live"}) { id } }'))["upsertUser"][
        "id"
    ]
    alices = await new_thread(backend, userId=alice)
    bobs = await new_thread(backend, userId=bob)
    shared = await new_thread(backend, userId=bob, metadata={"is_shared": True})
    alice_token = {"Authorization": f"Bearer {user_token('alice@live')}"}

    async def refusal(query: str, headers: dict[str, str], **variables: Any) -> str:
        async with live_client(secured_url, init=headers) as client:
            await client.subscribe(query, **variables)
            message = await client.receive()
        assert message["type"] == "error", message
        code: str = message["payload"][0]["extensions"]["code"]
        return code

    assert await refusal(THREAD_EVENTS, alice_token, t=bobs) == "NOT_FOUND"
    assert await refusal(USER_THREAD_EVENTS, alice_token, u=bob) == "NOT_FOUND"
    assert await refusal(USER_THREAD_EVENTS, BEARER) == "BAD_USER_INPUT"  # an API key has no list
    # Credentials in connection_init's payload (browsers) or on the upgrade request.
    async with live_client(secured_url, init=alice_token) as client:
        own = await client.subscribe(THREAD_EVENTS, t=alices)
        watched = await client.subscribe(THREAD_EVENTS, t=shared)  # shared: readable, so watchable
        listed = await client.subscribe(USER_THREAD_EVENTS)  # her own list
        await until_live(client, backend, own, thread_id=alices)
        await until_live(client, backend, watched, thread_id=shared)
        await until_live(client, backend, listed, user_id=alice)  # last: the step probes moved her list
        await backend.ok(UPSERT_THREAD, i={"id": bobs, "name": "not for alice"})
        await backend.ok(UPSERT_THREAD, i={"id": shared, "name": "shared news"})
        await backend.ok(UPSERT_THREAD, i={"id": alices, "name": "hers"})
        seen = sorted([await client.next_with_id() for _ in range(3)], key=lambda item: item[0])
        assert [(subscription, event["thread"]["name"]) for subscription, event in seen] == [
            (own, "hers"),
            (watched, "shared news"),
            (listed, "hers"),
        ]
    async with live_client(secured_url, headers=BEARER) as client:
        subscription = await client.subscribe(USER_THREAD_EVENTS, u=bob)  # API keys: any user's list
        await until_live(client, backend, subscription, user_id=bob)
        await backend.ok(UPSERT_THREAD, i={"id": bobs, "name": "for bob"})
        assert (await client.next_event())["threadId"] == bobs


async def test_sockets_without_valid_credentials_are_closed(secured_api: Api, secured_url: str) -> None:
    async with live_client(secured_url, acknowledge=False) as client:
        await client.send({"type": "connection_init"})
        closed = await client.closed()
        assert closed.code == 4401
    async with live_client(
        secured_url, acknowledge=False, headers={"Authorization": "Bearer gw_wrong"}
    ) as client:
        await client.send({"type": "connection_init"})
        assert (await client.closed()).code == 4403
    async with live_client(secured_url, acknowledge=False) as client:
        await client.subscribe(THREAD_EVENTS, t=new_uuid())  # before connection_init
        assert (await client.closed()).code == 4401


async def test_an_expired_token_ends_its_subscriptions(secured_api: Api, secured_url: str) -> None:
    backend = secured_api.with_headers(**BEARER)
    await backend.ok('mutation { upsertUser(input: {identifier: "brief@live"}) { id } }')
    token = {"Authorization": f"Bearer {user_token('brief@live', lifetime=1)}"}
    async with live_client(secured_url, init=token) as client:
        await client.subscribe(USER_THREAD_EVENTS)
        closed = await client.closed(wait=5)
    assert closed.code == 4403 and "expired" in closed.reason


async def test_a_revoked_key_ends_its_subscriptions(database_url: str, db: Database) -> None:
    key = new_api_key()
    async with db.transaction() as session:
        await api_keys.create_api_key(
            session,
            name=f"live-{new_uuid()}",
            key_hash=hash_api_key(key),
            prefix=api_key_prefix(key),
            now=utc_now(),
        )
    settings = secured_settings(database_url, subscription_auth_recheck_seconds=0.2)
    async with (
        running(settings) as application,
        served(application) as address,
        live_client(address, init={"Authorization": f"Bearer {key}"}) as client,
    ):
        await client.subscribe(THREAD_EVENTS, t=new_uuid())
        assert (await client.receive())["payload"][0]["extensions"]["code"] == "NOT_FOUND"
        async with db.transaction() as session:
            stored = await api_keys.find_live_key(session, key_hash=hash_api_key(key))
            assert stored is not None
            await api_keys.revoke_api_key(session, name_or_id=stored.id, now=utc_now())
        closed = await client.closed(wait=5)
    assert closed.code == 4403


async def test_the_python_client_follows_a_thread_over_server_sent_events(api: Api, url: str) -> None:
    thread_id = await new_thread(api)
    step_id = await new_step(api, thread_id, output="")
    http_url = url.replace("ws://", "http://")
    async with GatewayClient(http_url) as gateway:
        received: list[dict[str, Any]] = []

        async def follow() -> None:
            async for event in gateway.subscribe(thread_id=thread_id):
                received.append(event)

        async def until(condition: Any) -> None:
            for _ in range(100):
                if condition():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(received)

        following = asyncio.create_task(follow())
        for _attempt in range(20):  # live once a probe step's deletion arrives
            probe = await new_step(api, thread_id)
            await api.ok("mutation($id: ID!) { deleteStep(id: $id) { id } }", id=probe)
            with contextlib.suppress(AssertionError):
                await until(lambda: any(event["deletedId"] == probe for event in received))  # noqa: B023
                break
        received.clear()
        await api.ok(APPEND, id=step_id, d="one ")
        await api.ok(APPEND, id=step_id, d="two ")
        await until(lambda: len(received) == 2)
        following.cancel()
        await api.ok(APPEND, id=step_id, d="three")  # while nobody listens
        await api.ok("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=thread_id)
        # Resumed from the last cursor: the missed delta, then the deletion, then the end.
        async for event in gateway.subscribe(thread_id=thread_id, after=received[-1]["cursor"]):
            received.append(event)
        assert [event["delta"] for event in received[:3]] == ["one ", "two ", "three"]
        assert received[-1]["kind"] == "THREAD_DELETED"
        with pytest.raises(ClientError) as refused:  # gone, and no cursor to resume from
            async for _event in gateway.subscribe(thread_id=thread_id):
                pass
        assert refused.value.code == "NOT_FOUND"


async def test_server_sent_events_by_hand(api: Api, url: str) -> None:
    """graphql-sse's distinct connections mode, as a browser's EventSource-like client sends it."""
    thread_id = await new_thread(api)
    http_url = url.replace("ws://", "http://")
    body = {"query": THREAD_EVENTS, "variables": {"t": thread_id}}
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", http_url, json=body, headers={"Accept": "text/event-stream"}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        assert await anext(lines) == ": subscribed"
        await api.ok("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=thread_id)
        seen = [line async for line in lines if line]
    assert seen[0] == "event: next"
    assert json.loads(seen[1].removeprefix("data: "))["data"]["threadEvents"]["kind"] == "THREAD_DELETED"
    assert seen[2:] == ["event: complete", "data:"]


@pytest.mark.parametrize(
    "ws",
    [
        pytest.param(GatewayWebSocketProtocol, id="written-at-once"),
        # Under another server the messages are queued for a writer task per socket.
        pytest.param("websockets-sansio", id="queued-through-asgi"),
    ],
)
async def test_a_slow_subscriber_is_closed_and_resumes_without_loss(
    database_url: str, api: Api, ws: Any
) -> None:
    settings = open_settings(database_url, subscription_buffer=4)
    thread_id = await new_thread(api)
    step_id = await new_step(api, thread_id, output="")
    chunk, appends = "x" * 128 * 1024, 12
    async with (
        running(settings) as application,
        served(application, ws=ws) as address,
        client_of(application) as local,
    ):
        before = await scrape_open(local)
        stalled = StalledClient(address)
        async with live_client(address, max_size=2**26) as healthy:
            await until_live(
                healthy, api, await healthy.subscribe(THREAD_EVENTS, t=thread_id), thread_id=thread_id
            )
            await stalled.open(THREAD_EVENTS, t=thread_id)
            await asyncio.sleep(0.5)  # no probe: it reads nothing until the end
            for _ in range(appends):  # each event carries the whole output so far: megabytes
                await api.ok(APPEND, id=step_id, d=chunk)
                assert len(await healthy.events(1)) == 1  # the others are not held up
        messages, code, reason = await stalled.read_to_the_end()
        assert code == 1013 and "cursor" in reason
        received = [
            next(iter(item["payload"]["data"].values())) for item in messages if item["type"] == "next"
        ]
        assert len(received) < appends
        async with live_client(address, max_size=2**26) as resumed:
            await resumed.subscribe(THREAD_EVENTS, t=thread_id, after=received[-1]["cursor"])
            received.extend(await resumed.events(appends - len(received)))
            during = await scrape_open(local)
        for _ in range(50):  # the server notices the last socket closed
            after = await scrape_open(local)
            if after[SUBSCRIPTIONS] == before[SUBSCRIPTIONS]:
                break
            await asyncio.sleep(0.05)
    assert [event["delta"] for event in received] == [chunk] * appends
    # What an operator sees: one subscriber closed as too slow, the events sent, none left open.
    assert during[TOO_SLOW] - before[TOO_SLOW] == 1
    assert during[SUBSCRIPTIONS] - before[SUBSCRIPTIONS] == 1  # the resumed one
    assert during[EVENTS_SENT] - before[EVENTS_SENT] >= 2 * appends  # the healthy one's; the others'
    assert after[SUBSCRIPTIONS] == before[SUBSCRIPTIONS]


# Steps written by another program in one transaction: the hub reads their events as one batch.
INSERT_STEP = sa.text(
    'INSERT INTO steps (id, name, type, "threadId", streaming, output, "createdAt") '
    "VALUES (:id, 'other', 'run', :thread, false, 'x', '2026-01-01T00:00:00.000Z')"
)


async def sse_lines(http: httpx.AsyncClient, url: str, variables: dict[str, Any]) -> AsyncIterator[Any]:
    """None once the graphql-sse stream is subscribed, then the `data` of each of its events."""
    body = {"query": THREAD_EVENTS, "variables": variables}
    async with http.stream("POST", url, json=body, headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line == ": subscribed":
                yield None
            elif line.startswith("data: {"):
                yield json.loads(line.removeprefix("data: "))


@pytest.mark.parametrize("transport", ["written-at-once", "queued-through-asgi", "sse"])
async def test_a_reader_keeping_up_gets_a_burst_larger_than_its_buffer(
    database_url: str, api: Api, transport: str
) -> None:
    """A transaction's many events reach the hub together; a subscriber reading as fast as it can
    is not too slow for that, whatever the transport."""
    settings = open_settings(database_url, subscription_buffer=4)
    thread_id, burst = await new_thread(api), 6
    ws = "websockets-sansio" if transport == "queued-through-asgi" else GatewayWebSocketProtocol
    async with running(settings) as application, served(application, ws=ws) as address:

        async def write_burst() -> None:
            async with application.state.db.transaction() as session:
                for _ in range(burst):
                    await session.execute(INSERT_STEP, {"id": new_uuid(), "thread": thread_id})
            application.state.events.kick()

        if transport == "sse":
            async with httpx.AsyncClient(timeout=RECEIVE_TIMEOUT) as http:
                stream = sse_lines(http, address.replace("ws://", "http://"), {"t": thread_id})
                assert await anext(stream) is None
                await api.ok(UPSERT_THREAD, i={"id": thread_id, "name": "live"})
                assert (await anext(stream))["data"]["threadEvents"]["kind"] == "THREAD_UPDATED"
                await write_burst()
                kinds = [(await anext(stream))["data"]["threadEvents"]["kind"] for _ in range(burst)]
                await stream.aclose()
        else:
            async with live_client(address) as client:
                await until_live(
                    client, api, await client.subscribe(THREAD_EVENTS, t=thread_id), thread_id=thread_id
                )
                await write_burst()
                kinds = [(await client.next_event())["kind"] for _ in range(burst)]
    assert kinds == ["STEP_CREATED"] * burst


async def test_a_resume_over_sse_longer_than_the_buffer_makes_progress_to_the_end(
    database_url: str, api: Api
) -> None:
    """Replaying more than GATEWAY_SUBSCRIPTION_BUFFER events over SSE: each stream answers at
    once with what fits, then SUBSCRIBER_TOO_SLOW; resuming from its last cursor gets the rest,
    in order, none twice."""
    settings = open_settings(database_url, subscription_buffer=4)
    thread_id = await new_thread(api)
    step_id = await new_step(api, thread_id, output="")
    async with (
        running(settings) as application,
        served(application) as address,
        httpx.AsyncClient(timeout=RECEIVE_TIMEOUT) as http,
    ):
        url = address.replace("ws://", "http://")
        stream = sse_lines(http, url, {"t": thread_id})
        assert await anext(stream) is None
        await api.ok(APPEND, id=step_id, d="start")
        cursor = (await anext(stream))["data"]["threadEvents"]["cursor"]
        await stream.aclose()
        deltas = [str(number) for number in range(10)]
        for delta in deltas:
            await api.ok(APPEND, id=step_id, d=delta)
        received: list[str] = []
        for _attempt in range(10):
            async for data in sse_lines(http, url, {"t": thread_id, "after": cursor}):
                if data is None:
                    continue
                if data.get("errors"):
                    assert data["errors"][0]["extensions"]["code"] == "SUBSCRIBER_TOO_SLOW"
                    break
                received.append(data["data"]["threadEvents"]["delta"])
                cursor = data["data"]["threadEvents"]["cursor"]
                if len(received) == len(deltas):
                    break
            if len(received) == len(deltas):
                break
    assert received == deltas


SUBSCRIPTIONS = ("gateway_subscriptions", ())
TOO_SLOW = ("gateway_subscribers_too_slow_total", ())
EVENTS_SENT = ("gateway_subscription_events_sent_total", ())


async def scrape_open(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics of an open-mode app (a local caller needs no key)."""
    response = await api.http.get("/metrics")
    assert response.status_code == 200, response.text
    found = samples(response.text)
    return {key: found.get(key, 0.0) for key in (SUBSCRIPTIONS, TOO_SLOW, EVENTS_SENT)}


async def test_events_older_than_the_retention_are_pruned_and_their_cursors_expire(
    database_url: str, api: Api, db: Database
) -> None:
    settings = open_settings(database_url, event_retention=timedelta(seconds=1), event_poll_seconds=0.2)
    thread_id = await new_thread(api)
    async with (
        running(settings) as application,
        served(application) as address,
        live_client(address) as client,
    ):
        await until_live(client, api, await client.subscribe(THREAD_EVENTS, t=thread_id), thread_id=thread_id)
        await api.ok(UPSERT_THREAD, i={"id": thread_id, "name": "soon forgotten"})
        cursor = (await client.next_event())["cursor"]
        count = sa.text('SELECT count(*) FROM gateway_thread_events WHERE "threadId" = :t')
        for _ in range(50):  # the background task prunes what is older than a second
            await asyncio.sleep(0.1)
            async with db.session() as session:
                if await session.scalar(count, {"t": thread_id}) == 0:
                    break
        else:
            raise AssertionError("the events were not pruned")
        await client.subscribe(THREAD_EVENTS, t=thread_id, after=cursor)
        message = await client.receive()
    assert message["payload"][0]["extensions"]["code"] == "CURSOR_EXPIRED"


async def test_a_subscription_sent_as_a_plain_request_says_where_to_go(api: Api) -> None:
    error = await api.error(THREAD_EVENTS, t=new_uuid())
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "WebSocket" in error["message"]


async def test_a_thread_that_stops_being_readable_ends_its_subscription(
    secured_api: Api, secured_url: str
) -> None:
    backend = secured_api.with_headers(**BEARER)
    bob = (await backend.ok('mutation { upsertUser(input: {identifier: "bob@unshared"}) { id } }'))[
        "upsertUser"
    ]["id"]
    await backend.ok('mutation { upsertUser(input: {identifier: "carol@unshared"}) { id } }')
    shared = await new_thread(backend, userId=bob, metadata={"is_shared": True})
    step = await new_step(backend, shared, output="")
    carol_token = {"Authorization": f"Bearer {user_token('carol@unshared')}"}
    async with live_client(secured_url, init=carol_token) as client:
        watched = await client.subscribe(THREAD_EVENTS, t=shared)
        await until_live(client, backend, watched, thread_id=shared)
        await backend.ok(UPSERT_THREAD, i={"id": shared, "metadata": {"is_shared": False}})
        await backend.ok(APPEND, id=step, d="private words")
        ended = await client.receive()
        assert ended["type"] == "next" and ended["id"] == watched, ended
        assert ended["payload"]["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        assert "private words" not in json.dumps(ended)
        assert await client.receive() == {"id": watched, "type": "complete"}


async def test_a_cursor_beyond_any_position_is_bad_input(api: Api, url: str) -> None:
    """A forged cursor's position past what the databases' integers hold: a clear error, not a 500."""
    thread_id = await new_thread(api)
    forged = encode_event_cursor(10**30, utc_now())
    async with live_client(url) as client:
        await client.subscribe(THREAD_EVENTS, t=thread_id, after=forged)
        message = await client.receive()
    assert message["type"] == "error"
    assert message["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    body = {"query": THREAD_EVENTS, "variables": {"t": thread_id, "after": forged}}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            url.replace("ws://", "http://"), json=body, headers={"Accept": "text/event-stream"}
        )
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_an_expired_token_ends_its_server_sent_events(secured_api: Api, secured_url: str) -> None:
    backend = secured_api.with_headers(**BEARER)
    user = (await backend.ok('mutation { upsertUser(input: {identifier: "brief@sse"}) { id } }'))[
        "upsertUser"
    ]["id"]
    thread_id = await new_thread(backend, userId=user)
    token = {"Authorization": f"Bearer {user_token('brief@sse', lifetime=1)}"}
    body = {"query": THREAD_EVENTS, "variables": {"t": thread_id}}
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream(
            "POST",
            secured_url.replace("ws://", "http://"),
            json=body,
            headers={"Accept": "text/event-stream", **token},
        ) as response,
    ):
        assert response.status_code == 200
        seen = [line async for line in response.aiter_lines() if line and not line.startswith(":")]
    assert seen[0] == "event: next"
    error = json.loads(seen[1].removeprefix("data: "))["errors"][0]
    assert error["extensions"]["code"] == "UNAUTHENTICATED" and "expired" in error["message"]
    assert seen[2:] == ["event: complete", "data:"]


async def test_a_subscription_selected_through_fragments_is_served(api: Api, url: str) -> None:
    """GraphQL lets the root field sit in a fragment, or be skipped: served, or a clear error."""
    thread_id = await new_thread(api)
    spread = (
        "subscription($t: ID!) { ...Feed } "
        "fragment Feed on Subscription { threadEvents(threadId: $t) { kind deletedId } }"
    )
    inline = "subscription($t: ID!) { ... on Subscription { threadEvents(threadId: $t) { kind } } }"
    skipped = "subscription($t: ID!) { threadEvents(threadId: $t) @include(if: false) { kind } }"
    async with live_client(url) as client:
        await client.subscribe(spread, t=thread_id)
        await client.subscribe(inline, t=new_uuid())
        await client.subscribe(skipped, t=thread_id)
        refusals = sorted([await client.receive(), await client.receive()], key=lambda item: item["id"])
        assert [(item["id"], item["payload"][0]["extensions"]["code"]) for item in refusals] == [
            ("s2", "NOT_FOUND"),
            ("s3", "GRAPHQL_VALIDATION_FAILED"),  # a root field may not be skipped
        ]
        await api.ok("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=thread_id)
        assert await client.next_event() == {"kind": "THREAD_DELETED", "deletedId": thread_id}


async def test_a_thread_given_to_another_user_leaves_the_old_owners_list(
    secured_api: Api, secured_url: str
) -> None:
    """The old owner's list is told the thread is gone from it (THREAD_DELETED, live and on
    resume), the new owner's list that it changed; the thread's own feed sees no deletion."""
    backend = secured_api.with_headers(**BEARER)
    alice = (await backend.ok('mutation { upsertUser(input: {identifier: "alice@moved"}) { id } }'))[
        "upsertUser"
    ]["id"]
    bob = (await backend.ok('mutation { upsertUser(input: {identifier: "bob@moved"}) { id } }'))[
        "upsertUser"
    ]["id"]
    moved = await new_thread(backend, userId=alice)
    async with live_client(secured_url, headers=BEARER) as client:
        alices = await client.subscribe(USER_THREAD_EVENTS, u=alice)
        bobs = await client.subscribe(USER_THREAD_EVENTS, u=bob)
        feed = await client.subscribe(THREAD_EVENTS, t=moved)
        await until_live(client, backend, feed, thread_id=moved)
        await until_live(client, backend, bobs, user_id=bob)
        await until_live(client, backend, alices, user_id=alice)  # last: the step probes moved her list
        await backend.ok(UPSERT_THREAD, i={"id": moved, "name": "still alice's"})
        received = dict([await client.next_with_id() for _ in range(2)])  # her list, the feed
        before = received[alices]["cursor"]
        await backend.ok(UPSERT_THREAD, i={"id": moved, "userId": bob})
        seen = dict([await client.next_with_id() for _ in range(3)])
        assert seen[alices] == {**seen[alices], "kind": "THREAD_DELETED", "deletedId": moved, "thread": None}
        assert seen[alices]["threadId"] == moved
        assert seen[bobs]["kind"] == "THREAD_UPDATED" and seen[bobs]["thread"]["id"] == moved
        assert seen[feed]["kind"] == "THREAD_UPDATED"  # the thread goes on: no deletion in its feed
        positions = {key: decode_event_cursor(event["cursor"]).position for key, event in seen.items()}
        assert positions[alices] < positions[bobs] == positions[feed]  # both databases: the loss first
    async with live_client(secured_url, headers=BEARER) as client:
        await client.subscribe(USER_THREAD_EVENTS, u=alice, after=before)
        replayed = await client.next_event()
    assert (replayed["kind"], replayed["deletedId"]) == ("THREAD_DELETED", moved)
    assert replayed["cursor"] == seen[alices]["cursor"]


async def test_the_old_owner_cannot_resume_a_thread_given_away(secured_api: Api, secured_url: str) -> None:
    """Resuming with a cursor from before the owner change is NOT_FOUND, not a replay of what the
    new owner wrote since (the old owner's list got THREAD_DELETED: the thread's feed did not)."""
    backend = secured_api.with_headers(**BEARER)
    alice = (await backend.ok('mutation { upsertUser(input: {identifier: "alice@given"}) { id } }'))[
        "upsertUser"
    ]["id"]
    bob = (await backend.ok('mutation { upsertUser(input: {identifier: "bob@given"}) { id } }'))[
        "upsertUser"
    ]["id"]
    alice_token = {"Authorization": f"Bearer {user_token('alice@given')}"}
    given = await new_thread(backend, userId=alice)
    async with live_client(secured_url, init=alice_token) as client:
        watched = await client.subscribe(THREAD_EVENTS, t=given)
        await until_live(client, backend, watched, thread_id=given)
        await backend.ok(UPSERT_THREAD, i={"id": given, "name": "still hers"})
        cursor = (await client.next_event())["cursor"]
        await backend.ok(UPSERT_THREAD, i={"id": given, "userId": bob})
        ended = await client.receive()
        assert ended["payload"]["errors"][0]["extensions"]["code"] == "NOT_FOUND", ended
    await new_step(backend, given, output="bob's private words")
    async with live_client(secured_url, init=alice_token) as client:
        await client.subscribe(THREAD_EVENTS, t=given, after=cursor)
        message = await client.receive()
    assert message["type"] == "error", message
    assert message["payload"][0]["extensions"]["code"] == "NOT_FOUND"
    assert "private" not in json.dumps(message)


async def test_a_subscription_whose_start_meets_an_outage_is_retryable(
    database_url: str, backend: str
) -> None:
    """The database lost after the subscription was accepted (its first read of the event log, or
    its replay, fails): SERVICE_UNAVAILABLE and retryable on every transport (over SSE a 503), as
    when the outage hits its authorization; not an internal error."""
    async with contextlib.AsyncExitStack() as stack:
        url = make_url(database_url)
        if backend == "postgresql":
            proxy = await stack.enter_async_context(proxy_to(url.host or "127.0.0.1", url.port or 5432))
            url = url.set(host="127.0.0.1", port=proxy.port)
        settings = open_settings(url.render_as_string(hide_password=False))
        application = await stack.enter_async_context(running(settings))
        address = await stack.enter_async_context(served(application))
        if backend == "postgresql":
            await proxy.cut()  # PostgreSQL goes away: its connections drop, new ones are refused
        else:
            # SQLite has no server to lose: the subscriptions' reads go to a server that is not there.
            gone = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{_free_port()}/gone")
            stack.push_async_callback(gone.dispose)
            application.state.live.db = gone
        # A user's list: accepting it reads nothing, so the outage meets the subscription's start.
        user, recent = new_uuid(), encode_event_cursor(1, utc_now())
        errors = []
        for legacy in (False, True):
            async with live_client(address, legacy=legacy) as client:
                await client.subscribe(USER_THREAD_EVENTS, u=user)  # reads the latest position
                await client.subscribe(USER_THREAD_EVENTS, u=user, after=recent)  # replays
                for _ in range(2):
                    message = await client.receive()
                    assert message["type"] == "error", message
                    errors.append(message["payload"] if legacy else message["payload"][0])
                    if legacy:
                        assert await client.receive() == {"id": message["id"], "type": "complete"}
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                address.replace("ws://", "http://"),
                json={"query": USER_THREAD_EVENTS, "variables": {"u": user}},
                headers={"Accept": "text/event-stream"},
            )
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
        errors.extend(response.json()["errors"])
    assert len(errors) == 5
    for error in errors:
        assert error["extensions"] == {"code": "SERVICE_UNAVAILABLE", "retryable": True}, error
        assert error == errors[0]


async def test_closed_subscriptions_leave_nothing_in_the_event_hub(api: Api, database_url: str) -> None:
    """Subscriptions stopped one by one, then a socket closed with the rest: the hub forgets each,
    and a thread or list nobody watches any more."""
    first, second = await new_thread(api), await new_thread(api)
    settings = open_settings(database_url)
    async with running(settings) as application, served(application) as address:
        hub: EventHub = application.state.events

        async def until_watching(subscribers: int, feeds: int) -> None:
            for _ in range(200):  # a subscription starts a moment after its message is sent
                if (hub.subscriber_count, hub.watched_count) == (subscribers, feeds):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError((hub.subscriber_count, hub.watched_count))

        async def stop(client: Any, subscription_id: str) -> None:
            await client.send({"id": subscription_id, "type": "complete"})
            await client.send({"type": "ping"})
            assert await client.receive() == {"type": "pong"}  # messages are handled in order

        async with live_client(address) as client:
            once = await client.subscribe(THREAD_EVENTS, t=first)
            await client.subscribe(THREAD_EVENTS, t=second)
            twice = await client.subscribe(THREAD_EVENTS, t=first)
            await client.subscribe(USER_THREAD_EVENTS, u=new_uuid())
            await until_watching(subscribers=4, feeds=3)
            await stop(client, once)
            assert (hub.subscriber_count, hub.watched_count) == (3, 3)  # `first` is still watched
            await stop(client, twice)
            assert (hub.subscriber_count, hub.watched_count) == (2, 2)
        await until_watching(subscribers=0, feeds=0)  # the socket closed with two subscriptions


class CountingSubscriber:
    """A hub subscriber that counts how often the hub looks it up (each set lookup hashes it)."""

    def __init__(self) -> None:
        self.lookups = 0
        self.group: Any = None

    def __hash__(self) -> int:
        self.lookups += 1
        return id(self)

    def deliver(self, event: Any, rendered: Any) -> None:
        raise AssertionError("no event is dispatched here")


async def test_unwatching_visits_only_what_the_subscriber_watched(tmp_path: Path) -> None:
    """Closing a subscription costs the same however many other threads are watched (10,000
    sockets closing must not take quadratic time): the hub looks the subscriber up in its own
    entries only, and removes an entry with its last subscriber."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")  # nothing here reads the log
    hub = EventHub(db, listen=False)
    others = [CountingSubscriber() for _ in range(1000)]
    for number, other in enumerate(others):
        hub.watch_thread(f"thread-{number}", other)
    subscriber = CountingSubscriber()
    hub.watch_thread("thread-0", subscriber)  # shared with another subscriber
    hub.watch_thread("mine", subscriber)
    hub.watch_user("user", subscriber)
    assert (hub.subscriber_count, hub.watched_count) == (1003, 1002)
    subscriber.lookups = 0
    hub.unwatch(subscriber)
    assert subscriber.lookups <= 10, subscriber.lookups  # not one per watched thread
    assert (hub.subscriber_count, hub.watched_count) == (1000, 1000)  # `mine` and `user` are gone
    hub.unwatch(subscriber)  # twice: nothing more to do
    for other in others:
        hub.unwatch(other)
    assert (hub.subscriber_count, hub.watched_count) == (0, 0)
    await db.dispose()
