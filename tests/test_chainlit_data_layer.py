"""GatewayDataLayer: Chainlit's data layer backed by the gateway, called the way Chainlit calls it.

Each test starts a gateway (an API key, element bytes on local disk) on SQLite and on PostgreSQL,
and talks to it through the data layer over the in-process ASGI transport. Chainlit objects are
the real ones: `User`, `Feedback`, `Pagination`, `ThreadFilter`, `cl.Text`/`cl.File`/`cl.Image`,
a `WebsocketSession` whose queued writes wait for the first user message, and `cl.Message`, whose
writes Chainlit schedules as background tasks.
"""

import os
import tempfile

# Importing chainlit writes `.chainlit/config.toml` and `.files/` under the app root: a scratch one.
os.environ.setdefault("CHAINLIT_APP_ROOT", tempfile.mkdtemp(prefix="chainlit-app-"))

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import chainlit as cl
import chainlit.data
import httpx
import pytest
from chainlit.config import config as chainlit_config
from chainlit.context import init_http_context, init_ws_context
from chainlit.data.base import BaseDataLayer
from chainlit.session import WebsocketSession
from chainlit.step import StepDict
from chainlit.types import Feedback, Pagination, ThreadFilter
from chainlit.user import PersistedUser, User
from chainlit.utils import utc_now
from starlette.applications import Starlette

import gateway.client
from gateway.chainlit import GatewayDataLayer
from gateway.client import GatewayError
from gateway.config import Settings
from gateway.database import Database
from tests.conftest import QUIET_REAPER, TEST_API_KEY, clear_tables, new_uuid, running

GRAPHQL_URL = "http://localhost/graphql"
POLLS = 200  # bounded waits for Chainlit's background writes: at most POLLS * POLL_PAUSE seconds
POLL_PAUSE = 0.025

T = TypeVar("T")


@dataclass
class Gateway:
    """A started gateway, its data layer, and where it keeps element bytes."""

    app: Starlette
    layer: GatewayDataLayer
    files: Path

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self.app)

    def layer_over(
        self, transport: httpx.AsyncBaseTransport, *, api_key: str = TEST_API_KEY, attempts: int = 3
    ) -> GatewayDataLayer:
        """Another data layer on the same gateway, over `transport`."""
        return GatewayDataLayer(url=GRAPHQL_URL, api_key=api_key, transport=transport, attempts=attempts)

    async def fetch(self, url: str) -> httpx.Response:
        """GET a read URL the gateway handed out, as a browser would."""
        assert url.startswith("http://localhost/files/"), url
        async with httpx.AsyncClient(transport=self.transport()) as browser:
            return await browser.get(url)

    def stored_files(self) -> list[Path]:
        return [path for path in self.files.rglob("*") if path.is_file()] if self.files.exists() else []

    async def reap(self) -> None:
        """Run the deletions of stored bytes that are due (the reaper also runs after each delete)."""
        await self.app.state.attachments.reaper.run_once()


@pytest.fixture
async def gw(
    database_url: str, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    """A fresh gateway and its data layer, in Chainlit's context of an HTTP call (no websocket:
    queued methods run at once), with no data layer registered in Chainlit."""
    await clear_tables(db)
    monkeypatch.setattr(chainlit.data, "_data_layer", None)
    monkeypatch.setattr(chainlit.data, "_data_layer_initialized", True)
    files = tmp_path / "files"
    settings = Settings(
        database_url=database_url,
        auto_migrate=False,
        api_keys=TEST_API_KEY,
        storage_url=f"file://{files}",
        reaper_interval_seconds=QUIET_REAPER,
    )
    async with running(settings) as app:
        layer = GatewayDataLayer(
            url=GRAPHQL_URL, api_key=TEST_API_KEY, transport=httpx.ASGITransport(app=app)
        )
        init_http_context()
        try:
            yield Gateway(app, layer, files)
        finally:
            await layer.close()


# --- helpers ---


def step_dict(
    thread_id: str,
    step_id: str | None = None,
    *,
    output: str = "",
    created_at: str | None = None,
    **fields: Any,
) -> StepDict:
    """A step as Chainlit's `Step.to_dict()` makes it (override any key with `fields`)."""
    now = created_at or utc_now()
    step: dict[str, Any] = {
        "name": "Assistant",
        "type": "assistant_message",
        "id": step_id or new_uuid(),
        "threadId": thread_id,
        "parentId": None,
        "streaming": False,
        "metadata": {},
        "tags": None,
        "input": "",
        "isError": False,
        "output": output,
        "createdAt": now,
        "start": now,
        "end": now,
        "language": None,
        "defaultOpen": False,
        "autoCollapse": False,
        "showInput": "json",
        "generation": None,
    }
    step.update(fields)
    return cast(StepDict, step)


def instant(timestamp: object) -> datetime:
    assert isinstance(timestamp, str) and timestamp, f"not a timestamp: {timestamp!r}"
    return datetime.fromisoformat(timestamp)


async def new_user(layer: GatewayDataLayer, identifier: str) -> PersistedUser:
    user = await layer.create_user(User(identifier=identifier))
    assert user is not None
    return user


async def thread_with_step(
    layer: GatewayDataLayer, *, user_id: str | None = None, name: str | None = None, output: str = "hi"
) -> tuple[str, StepDict]:
    """A thread (of `user_id`) with one assistant message; returns its id and the step."""
    thread_id = new_uuid()
    await layer.update_thread(thread_id, name=name, user_id=user_id)
    step = step_dict(thread_id, output=output)
    await layer.create_step(step)
    return thread_id, step


async def stored_step(layer: GatewayDataLayer, step_id: str) -> StepDict:
    step = await layer.get_step(step_id)
    assert step is not None, f"step {step_id} is not in the gateway"
    return step


async def eventually(read: Callable[[], Awaitable[T]], accept: Callable[[T], bool]) -> T:
    """Poll `read` until `accept` takes its value: a bounded wait for Chainlit's background writes."""
    for _ in range(POLLS):
        value = await read()
        if accept(value):
            return value
        await asyncio.sleep(POLL_PAUSE)
    raise AssertionError(f"not reached after {POLLS} polls; the last value read: {value!r}")


async def next_millisecond() -> None:
    """Let the clock leave the current millisecond (the gateway's timestamp resolution), so the
    next write is stamped strictly later than every write before it."""
    start = utc_now()[:23]
    await asyncio.sleep(0.0011)
    assert utc_now()[:23] != start


async def list_ids(layer: GatewayDataLayer, filters: ThreadFilter) -> list[str]:
    """The ids of the threads one `list_threads` page of 100 returns."""
    page = await layer.list_threads(Pagination(first=100), filters)
    assert not page.pageInfo.hasNextPage
    return [thread["id"] for thread in page.data]


def record_data_layer_tasks(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.Task[Any]]:
    """The tasks Chainlit starts (`asyncio.create_task`) to run GatewayDataLayer methods, from now on
    until the end of the test."""
    scheduled: list[asyncio.Task[Any]] = []
    create_task = asyncio.create_task

    def recording(coroutine: Any, **options: Any) -> asyncio.Task[Any]:
        task = create_task(coroutine, **options)
        if getattr(coroutine, "__qualname__", "").startswith("GatewayDataLayer."):
            scheduled.append(task)
        return task

    monkeypatch.setattr(asyncio, "create_task", recording)
    return scheduled


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts requests; the first `failures` fail to connect, the rest reach `inner`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, failures: int = 0) -> None:
        self.inner = inner
        self.failures = failures
        self.requests = 0
        self.delivered = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.requests <= self.failures:
            raise httpx.ConnectError("connection refused", request=request)
        self.delivered += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def ignore_emit(event: str, data: Any) -> None:
    pass


async def ignore_emit_call(kind: str, data: Any, seconds: int | None) -> None:
    return None


# --- users ---


async def test_users_are_created_read_and_updated_by_identifier(gw: Gateway) -> None:
    created = await gw.layer.create_user(User(identifier="ada@example.com", metadata={"role": "admin"}))
    assert isinstance(created, PersistedUser)
    assert created.id and instant(created.createdAt)
    assert (created.identifier, created.metadata) == ("ada@example.com", {"role": "admin"})
    assert await gw.layer.get_user("ada@example.com") == created
    assert await gw.layer.get_user("nobody@example.com") is None

    updated = await gw.layer.create_user(User(identifier="ada@example.com", metadata={"role": "user"}))
    assert updated is not None
    assert (updated.id, updated.createdAt, updated.metadata) == (
        created.id,
        created.createdAt,
        {"role": "user"},
    )
    assert await gw.layer.get_user("ada@example.com") == updated


async def test_create_user_replaces_the_stored_metadata_like_chainlits_own_layer(gw: Gateway) -> None:
    await gw.layer.create_user(User(identifier="bob@example.com", metadata={"role": "admin", "team": "a"}))
    again = await gw.layer.create_user(User(identifier="bob@example.com", metadata={"team": "b"}))
    assert again is not None and again.metadata == {"team": "b"}
    stored = await gw.layer.get_user("bob@example.com")
    assert stored is not None and stored.metadata == {"team": "b"}


# --- threads ---


async def test_update_thread_creates_then_merges_the_fields_given(gw: Gateway) -> None:
    user = await new_user(gw.layer, "owner@example.com")
    thread_id = new_uuid()
    await gw.layer.update_thread(
        thread_id, name="First", user_id=user.id, metadata={"a": 1, "b": 2}, tags=["x"]
    )
    thread = await gw.layer.get_thread(thread_id)
    assert thread is not None
    assert (thread["id"], thread["name"], thread["userId"], thread["userIdentifier"]) == (
        thread_id,
        "First",
        user.id,
        user.identifier,
    )
    assert (thread["tags"], thread["metadata"], thread["steps"], thread["elements"]) == (
        ["x"],
        {"a": 1, "b": 2},
        [],
        [],
    )

    await gw.layer.update_thread(thread_id=thread_id, metadata={"b": None, "c": {"d": 3}})
    await gw.layer.update_thread(thread_id, name="Renamed")  # as Chainlit's rename endpoint calls it
    thread = await gw.layer.get_thread(thread_id=thread_id)
    assert thread is not None
    assert thread["metadata"] == {"a": 1, "c": {"d": 3}}
    assert (thread["name"], thread["userId"], thread["tags"]) == ("Renamed", user.id, ["x"])
    assert await gw.layer.get_thread_author(thread_id) == "owner@example.com"
    assert await gw.layer.get_thread_author(new_uuid()) == ""


async def test_get_thread_has_steps_oldest_first_with_feedback_and_elements(gw: Gateway) -> None:
    thread_id = new_uuid()
    question = step_dict(
        thread_id, created_at="2026-01-01T10:00:00.000Z", type="user_message", name="User", output="Q?"
    )
    answer = step_dict(thread_id, created_at="2026-01-01T10:00:02.000Z", output="A.")
    tool = step_dict(
        thread_id, created_at="2026-01-01T10:00:01.000Z", type="tool", name="search", parentId=answer["id"]
    )
    for step in (answer, question, tool):  # written out of order
        await gw.layer.create_step(step)
    feedback_id = await gw.layer.upsert_feedback(Feedback(forId=answer["id"], value=1, comment="good"))
    image = cl.Image(url="https://example.com/cat.png", name="cat", for_id=answer["id"], thread_id=thread_id)
    await gw.layer.create_element(image)

    thread = await gw.layer.get_thread(thread_id)
    assert thread is not None
    assert [step["id"] for step in thread["steps"]] == [question["id"], tool["id"], answer["id"]]
    assert [step["output"] for step in thread["steps"]] == ["Q?", "", "A."]
    assert [step.get("feedback") for step in thread["steps"]] == [
        None,
        None,
        {"id": feedback_id, "forId": answer["id"], "value": 1, "comment": "good"},
    ]
    assert thread["steps"][1]["parentId"] == answer["id"]
    elements = thread["elements"] or []
    assert [(e["id"], e["url"], e["forId"], e["type"]) for e in elements] == [
        (image.id, "https://example.com/cat.png", answer["id"], "image")
    ]
    assert await gw.layer.get_thread(new_uuid()) is None


async def test_delete_thread_removes_it_and_a_second_delete_does_not_raise(gw: Gateway) -> None:
    thread_id, step = await thread_with_step(gw.layer, name="to delete")
    assert await gw.layer.get_thread_author(thread_id) == ""  # a thread of nobody
    await gw.layer.delete_thread(thread_id)
    assert await gw.layer.get_thread(thread_id) is None
    assert await gw.layer.get_step(step["id"]) is None
    await gw.layer.delete_thread(thread_id)


# --- steps ---


async def test_create_step_before_its_thread_creates_the_thread(gw: Gateway) -> None:
    thread_id = new_uuid()
    step = step_dict(thread_id, type="user_message", name="User", output="first words")
    await gw.layer.create_step(step)
    thread = await gw.layer.get_thread(thread_id)
    assert thread is not None
    assert [(s["id"], s["output"]) for s in thread["steps"]] == [(step["id"], "first words")]


async def test_an_empty_output_does_not_blank_a_streamed_step(gw: Gateway) -> None:
    thread_id = new_uuid()
    step = step_dict(thread_id, output="Hello world")
    await gw.layer.create_step(step)
    await gw.layer.update_step({**step, "output": "", "streaming": False})
    assert (await stored_step(gw.layer, step["id"]))["output"] == "Hello world"
    await gw.layer.update_step({**step, "output": "Hello again"})
    assert (await stored_step(gw.layer, step["id"]))["output"] == "Hello again"


@pytest.mark.parametrize("show_input", [True, False, "json", "python"])
async def test_show_input_round_trips(gw: Gateway, show_input: bool | str) -> None:
    step = step_dict(new_uuid(), type="tool", name="tool", input="{}", showInput=show_input)
    await gw.layer.create_step(step)
    assert (await stored_step(gw.layer, step["id"]))["showInput"] == show_input


async def test_get_step_returns_the_stored_fields(gw: Gateway) -> None:
    thread_id = new_uuid()
    parent = step_dict(thread_id, type="run", name="on_message")
    step = step_dict(
        thread_id,
        type="tool",
        name="calculator",
        parentId=parent["id"],
        input="1 + 1",
        output="2",
        metadata={"unit": "none", "nested": {"k": [1, 2]}},
        created_at="2026-02-03T04:05:06.789Z",
        start="2026-02-03T04:05:06.789Z",
        end="2026-02-03T04:05:07.001Z",
        isError=True,
        language="python",
        tags=["math"],
    )
    await gw.layer.create_step(parent)
    await gw.layer.create_step(step)
    got = await stored_step(gw.layer, step["id"])
    expected_fields = ("id", "threadId", "name", "type", "parentId", "input", "output", "metadata", "isError")
    assert {key: got.get(key) for key in expected_fields} == {key: step.get(key) for key in expected_fields}
    assert (got.get("language"), got.get("tags")) == ("python", ["math"])
    for key in ("createdAt", "start", "end"):
        assert instant(got.get(key)) == instant(step.get(key)), key
    assert await gw.layer.get_step(new_uuid()) is None


async def test_delete_step_deletes_its_descendants_only(gw: Gateway) -> None:
    thread_id = new_uuid()
    parent = step_dict(thread_id, type="run", name="on_message")
    child = step_dict(thread_id, type="tool", name="tool", parentId=parent["id"])
    grandchild = step_dict(thread_id, type="llm", name="llm", parentId=child["id"])
    sibling = step_dict(thread_id, output="stays")
    for step in (parent, child, grandchild, sibling):
        await gw.layer.create_step(step)
    await gw.layer.delete_step(parent["id"])
    for gone in (parent, child, grandchild):
        assert await gw.layer.get_step(gone["id"]) is None
    thread = await gw.layer.get_thread(thread_id)
    assert thread is not None and [step["id"] for step in thread["steps"]] == [sibling["id"]]


# --- Chainlit sessions ---


async def test_a_websocket_session_writes_steps_only_after_the_first_user_message(gw: Gateway) -> None:
    thread_id = new_uuid()
    session = WebsocketSession(
        id=new_uuid(),
        socket_id=new_uuid(),
        emit=ignore_emit,
        emit_call=ignore_emit_call,
        user_env={},
        client_type="webapp",
        thread_id=thread_id,
    )
    try:
        init_ws_context(session)
        step = step_dict(thread_id, output="Welcome!")
        await gw.layer.create_step(step)
        await gw.layer.update_step({**step, "output": "Welcome back!"})
        assert {name: len(queue) for name, queue in session.thread_queues.items()} == {
            "create_step": 1,
            "update_step": 1,
        }
        assert await gw.layer.get_step(step["id"]) is None
        assert await gw.layer.get_thread(thread_id) is None

        session.has_first_interaction = True
        await session.flush_method_queue()
        assert (await stored_step(gw.layer, step["id"]))["output"] == "Welcome back!"
        assert all(not queue for queue in session.thread_queues.values())
    finally:
        await session.delete()


async def test_cl_message_send_and_update_reach_the_gateway(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Register the layer as an app does (@cl.data_layer); monkeypatch restores Chainlit's state.
    monkeypatch.setattr(chainlit.data, "_data_layer_initialized", False)
    monkeypatch.setattr(chainlit_config.code, "data_layer", None)
    cl.data_layer(lambda: gw.layer)
    assert chainlit.data.get_data_layer() is gw.layer

    scheduled = record_data_layer_tasks(monkeypatch)
    user = await new_user(gw.layer, "chatter@example.com")
    thread_id = new_uuid()
    init_http_context(thread_id=thread_id, user=user)  # schedules update_thread(thread_id, user_id)
    message = cl.Message(content="hello")
    await message.send()
    sent = await eventually(lambda: gw.layer.get_step(message.id), lambda step: step is not None)
    assert sent is not None
    assert (sent["threadId"], sent["type"], sent["output"]) == (thread_id, "assistant_message", "hello")

    message.content = "hello, world"
    await message.update()
    await eventually(
        lambda: gw.layer.get_step(message.id),
        lambda step: step is not None and step["output"] == "hello, world",
    )
    assert await eventually(lambda: gw.layer.get_thread_author(thread_id), bool) == user.identifier
    # Chainlit scheduled these three writes; all of them ended, and none failed.
    assert sorted(task.get_coro().__qualname__ for task in scheduled) == [  # type: ignore[union-attr]
        "GatewayDataLayer.create_step",
        "GatewayDataLayer.update_step",
        "GatewayDataLayer.update_thread",
    ]
    await asyncio.wait_for(asyncio.gather(*scheduled), timeout=10)


# --- feedback and favorites ---


async def test_feedback_is_upserted_shown_on_its_step_and_deleted_once(gw: Gateway) -> None:
    thread_id, step = await thread_with_step(gw.layer)
    feedback_id = await gw.layer.upsert_feedback(Feedback(forId=step["id"], value=1, comment="great"))
    assert feedback_id
    again = await gw.layer.upsert_feedback(
        feedback=Feedback(id=feedback_id, forId=step["id"], threadId=thread_id, value=0, comment="wrong")
    )
    assert again == feedback_id
    thread = await gw.layer.get_thread(thread_id)
    assert thread is not None
    assert thread["steps"][0].get("feedback") == {
        "id": feedback_id,
        "forId": step["id"],
        "value": 0,
        "comment": "wrong",
    }
    assert await gw.layer.delete_feedback(feedback_id) is True
    assert await gw.layer.delete_feedback(feedback_id) is False
    assert (await stored_step(gw.layer, step["id"])).get("feedback") is None


async def test_favorite_steps_follow_set_step_favorite(gw: Gateway) -> None:
    user = await new_user(gw.layer, "fan@example.com")
    _, step = await thread_with_step(gw.layer, user_id=user.id, output="keep this")
    _, other = await thread_with_step(gw.layer, user_id=user.id, output="not this")
    favorite = await gw.layer.set_step_favorite(step, True)
    assert favorite["metadata"]["favorite"] is True
    favorites = await gw.layer.get_favorite_steps(user.id)
    assert [(s["id"], s["output"], s["metadata"].get("favorite")) for s in favorites] == [
        (step["id"], "keep this", True)
    ]
    await gw.layer.set_step_favorite(favorite, False)
    assert await gw.layer.get_favorite_steps(user.id) == []
    assert (await stored_step(gw.layer, other["id"]))["metadata"].get("favorite") is None


# --- elements ---


async def test_elements_store_their_bytes_or_keep_their_url(gw: Gateway, tmp_path: Path) -> None:
    thread_id, step = await thread_with_step(gw.layer)
    upload = tmp_path / "data.bin"
    upload.write_bytes(os.urandom(3000) + b"\x00end")
    text = cl.Text(content="some text", name="notes.txt", for_id=step["id"], thread_id=thread_id)
    file = cl.File(path=str(upload), name="data.bin", for_id=step["id"], thread_id=thread_id)
    image = cl.Image(url="https://example.com/cat.png", name="cat", for_id=step["id"], thread_id=thread_id)
    for element in (text, file, image):
        await gw.layer.create_element(element)

    for element, content in ((text, b"some text"), (file, upload.read_bytes())):
        stored = await gw.layer.get_element(thread_id, element.id)
        assert stored is not None
        assert (stored["id"], stored["name"], stored["forId"], stored["threadId"]) == (
            element.id,
            element.name,
            step["id"],
            thread_id,
        )
        assert stored["url"] is not None
        response = await gw.fetch(stored["url"])
        assert response.status_code == 200
        assert response.content == content
    assert len(gw.stored_files()) == 2

    by_reference = await gw.layer.get_element(thread_id, image.id)
    assert by_reference is not None
    assert (by_reference["url"], by_reference["type"], by_reference["objectKey"]) == (
        "https://example.com/cat.png",
        "image",
        None,
    )
    assert await gw.layer.get_element(new_uuid(), text.id) is None  # another thread's id
    assert await gw.layer.get_element(thread_id, new_uuid()) is None


async def test_delete_element_removes_the_row_then_the_stored_bytes(gw: Gateway) -> None:
    thread_id, step = await thread_with_step(gw.layer)
    text = cl.Text(content="short-lived", name="tmp.txt", for_id=step["id"], thread_id=thread_id)
    await gw.layer.create_element(text)
    assert len(gw.stored_files()) == 1

    await gw.layer.delete_element(text.id, new_uuid())  # not in that thread: nothing happens
    assert await gw.layer.get_element(thread_id, text.id) is not None
    await gw.layer.delete_element(text.id, thread_id)
    assert await gw.layer.get_element(thread_id, text.id) is None
    await gw.reap()
    assert gw.stored_files() == []
    await gw.layer.delete_element(text.id, thread_id)  # deleted already: no error


async def test_a_retried_create_element_leaves_one_element(gw: Gateway) -> None:
    thread_id, step = await thread_with_step(gw.layer)
    text = cl.Text(content="once", name="once.txt", for_id=step["id"], thread_id=thread_id)
    await gw.layer.create_element(text)
    await gw.layer.create_element(text)
    thread = await gw.layer.get_thread(thread_id)
    assert thread is not None
    assert [element["id"] for element in thread["elements"] or []] == [text.id]
    await gw.reap()
    assert [path.read_bytes() for path in gw.stored_files()] == [b"once"]


async def test_an_element_chainlit_updates_in_place_is_stored_with_its_changes(gw: Gateway) -> None:
    """CustomElement.update() (and TaskList's) send the same element again with new props."""
    thread_id, step = await thread_with_step(gw.layer)
    counter = cl.CustomElement(name="Counter", props={"count": 1}, for_id=step["id"], thread_id=thread_id)
    await gw.layer.create_element(counter)
    counter.props = {"count": 2}
    await gw.layer.create_element(counter)
    stored = await gw.layer.get_element(thread_id, counter.id)
    assert stored is not None and stored["props"] == {"count": 2}
    tasks = cl.CustomElement(name="Tasks", props={}, for_id="", thread_id=thread_id)  # as TaskList sends
    await gw.layer.create_element(tasks)
    stored = await gw.layer.get_element(thread_id, tasks.id)
    assert stored is not None and stored["forId"] is None
    await gw.reap()
    assert len(gw.stored_files()) == 2  # the first counter's bytes went with its first row


# --- list_threads ---


async def test_list_threads_pages_one_users_threads_by_latest_activity(gw: Gateway) -> None:
    user = await new_user(gw.layer, "many@example.com")
    other = await new_user(gw.layer, "other@example.com")
    thread_ids: list[str] = []
    for number in range(100):
        thread_id, _ = await thread_with_step(gw.layer, user_id=user.id, name=f"thread {number}")
        thread_ids.append(thread_id)
        await next_millisecond()
    await gw.layer.create_step(step_dict(thread_ids[0], output="back to the first"))  # most recent now
    await next_millisecond()
    others = [(await thread_with_step(gw.layer, user_id=other.id))[0] for _ in range(3)]

    pages = []
    cursor: str | None = None
    while True:
        page = await gw.layer.list_threads(Pagination(first=35, cursor=cursor), ThreadFilter(userId=user.id))
        pages.append(page)
        if not page.pageInfo.hasNextPage:
            break
        assert len(pages) < 4, "more pages than threads"
        cursor = page.pageInfo.endCursor
    assert [len(page.data) for page in pages] == [35, 35, 30]
    assert [page.pageInfo.hasNextPage for page in pages] == [True, True, False]
    listed = [thread["id"] for page in pages for thread in page.data]
    assert listed == [thread_ids[0], *reversed(thread_ids[1:])]
    assert not set(listed) & set(others)
    assert all(thread["userId"] == user.id for page in pages for thread in page.data)
    # Listed, createdAt carries the last activity (Chainlit's sidebar groups threads by it, in order).
    activity = [instant(thread["createdAt"]) for page in pages for thread in page.data]
    assert activity == sorted(activity, reverse=True)


async def test_list_threads_filters_by_feedback_zero_and_one(gw: Gateway) -> None:
    user = await new_user(gw.layer, "rater@example.com")
    by_value: dict[int | None, list[str]] = {0: [], 1: [], None: []}
    for value in (0, 1, None, 0, 1, None):
        thread_id, step = await thread_with_step(gw.layer, user_id=user.id)
        if value is not None:
            await gw.layer.upsert_feedback(Feedback(forId=step["id"], value=value))
        by_value[value].append(thread_id)
    for value in (0, 1):
        listed = await list_ids(gw.layer, ThreadFilter(userId=user.id, feedback=value))
        assert sorted(listed) == sorted(by_value[value]), f"feedback={value}"
    assert len(await list_ids(gw.layer, ThreadFilter(userId=user.id))) == 6


async def test_list_threads_searches_names_and_step_outputs(gw: Gateway) -> None:
    user = await new_user(gw.layer, "searcher@example.com")
    by_name, _ = await thread_with_step(gw.layer, user_id=user.id, name="a needle in the name")
    by_output, _ = await thread_with_step(gw.layer, user_id=user.id, name="plain", output="found the needle")
    await thread_with_step(gw.layer, user_id=user.id, name="plain", output="nothing here")
    other = await new_user(gw.layer, "other-searcher@example.com")
    await thread_with_step(gw.layer, user_id=other.id, name="needle of someone else")
    listed = await list_ids(gw.layer, ThreadFilter(userId=user.id, search="needle"))
    assert sorted(listed) == sorted([by_name, by_output])


async def test_list_threads_without_a_user_id_is_refused(gw: Gateway) -> None:
    with pytest.raises(ValueError, match="userId"):
        await gw.layer.list_threads(Pagination(first=20), ThreadFilter())


# --- the client: retries and refusals ---


async def test_a_call_is_retried_after_connection_errors(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.client, "RETRY_PAUSE_SECONDS", 0)
    flaky = CountingTransport(gw.transport(), failures=2)
    layer = gw.layer_over(flaky, attempts=3)
    try:
        thread_id = new_uuid()
        await layer.update_thread(thread_id, name="made on the third try")
        assert (flaky.requests, flaky.delivered) == (3, 1)
        thread = await gw.layer.get_thread(thread_id)
        assert thread is not None and thread["name"] == "made on the third try"
    finally:
        await layer.close()


async def test_connection_errors_propagate_after_the_last_attempt(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.client, "RETRY_PAUSE_SECONDS", 0)
    down = CountingTransport(gw.transport(), failures=3)
    layer = gw.layer_over(down, attempts=3)
    try:
        thread_id = new_uuid()
        with pytest.raises(httpx.ConnectError):
            await layer.update_thread(thread_id, name="never made")
        assert (down.requests, down.delivered) == (3, 0)
        assert await gw.layer.get_thread(thread_id) is None
    finally:
        await layer.close()


async def test_gateway_refusals_raise_gateway_error_and_are_not_retried(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.client, "RETRY_PAUSE_SECONDS", 0)
    counted = CountingTransport(gw.transport())
    intruder = gw.layer_over(counted, api_key="gw_not-a-key-of-this-gateway", attempts=3)
    try:
        with pytest.raises(GatewayError) as refused:
            await intruder.get_user("ada@example.com")
        assert refused.value.code == "UNAUTHENTICATED"
        assert counted.requests == 1
    finally:
        await intruder.close()

    counted = CountingTransport(gw.transport())
    layer = gw.layer_over(counted, attempts=3)
    try:
        with pytest.raises(GatewayError) as invalid:
            await layer.create_step(step_dict(new_uuid(), created_at="not a time"))
        assert invalid.value.code == "BAD_USER_INPUT"
        with pytest.raises(GatewayError) as missing:
            await layer.update_thread(new_uuid(), user_id=new_uuid())  # no such user
        assert missing.value.code == "NOT_FOUND"
        assert counted.requests == 2
    finally:
        await layer.close()


# --- the rest of BaseDataLayer ---


async def test_close_closes_the_pooled_client_and_there_is_no_debug_url(gw: Gateway) -> None:
    layer = gw.layer_over(gw.transport())
    assert await layer.build_debug_url() == ""
    assert await layer.get_user("anyone@example.com") is None
    assert not layer.client.http.is_closed
    await layer.close()
    assert layer.client.http.is_closed


def test_every_abstract_method_of_base_data_layer_is_implemented() -> None:
    required = BaseDataLayer.__abstractmethods__
    assert required  # the installed Chainlit declares some
    assert GatewayDataLayer.__abstractmethods__ == frozenset()
    assert sorted(name for name in required if name not in vars(GatewayDataLayer)) == []


def test_the_example_app_registers_the_gateway_data_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/chainlit_app.py, as `chainlit run` loads it: its data layer is the gateway's."""
    import copy
    import runpy

    monkeypatch.setenv("GATEWAY_API_KEY", TEST_API_KEY)
    code = copy.copy(chainlit_config.code)  # the app's callbacks land here: put them back after
    previous = (chainlit.data._data_layer, chainlit.data._data_layer_initialized)
    try:
        runpy.run_path(str(Path(__file__).parent.parent / "examples" / "chainlit_app.py"))
        chainlit.data._data_layer, chainlit.data._data_layer_initialized = None, False
        layer = chainlit.data.get_data_layer()
        assert isinstance(layer, GatewayDataLayer)
        assert layer.client.url == "http://127.0.0.1:8000/graphql"
    finally:
        chainlit_config.code = code
        chainlit.data._data_layer, chainlit.data._data_layer_initialized = previous
