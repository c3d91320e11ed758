"""Elements: bytes uploaded through GraphQL, stored on local disk or in S3, read back through URLs
signed at read time, and deleted with their rows (retried until the storage answers).

S3 is a real S3 protocol server: moto's ThreadedMotoServer, over HTTP on 127.0.0.1. Every test runs
on both stores and both databases.
"""

import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from gateway.attachments import Attachments
from gateway.config import Settings
from gateway.data import object_deletions
from gateway.database import Database
from gateway.storage import PART_SIZE
from gateway.tables import pending_uploads_table
from tests.conftest import (
    BUCKET,
    TEST_API_KEY,
    Api,
    S3Server,
    clear_tables,
    client_of,
    new_uuid,
    running,
    user_token,
)

CREATE = """
mutation($input: ElementInput!, $file: Upload) {
  createElement(input: $input, file: $file) { id name mime sizeBytes objectKey url threadId forId }
}"""
ELEMENT = "query($id: ID!) { element(id: $id) { id url sizeBytes } }"


@dataclass
class Stored:
    """A gateway with one store, a backend client, and a view of what the store holds."""

    app: Starlette
    api: Api
    db: Database
    objects: Callable[[], Awaitable[dict[str, bytes]]]

    @property
    def attachments(self) -> Attachments:
        attachments: Attachments = self.app.state.attachments
        return attachments

    async def pending_deletions(self) -> list[str]:
        async with self.db.session() as session:
            return [item.objectKey for item in await object_deletions.pending_deletions(session)]

    async def settle(self) -> None:
        """Let the reaper do every due deletion now (it runs after each delete anyway)."""
        await self.attachments.reaper.run_once()


def _settings(database_url: str, storage_url: str, s3: S3Server | None, **overrides: Any) -> Settings:
    return Settings(
        database_url=database_url,
        auto_migrate=False,
        api_keys=TEST_API_KEY,
        jwt_secret="element-tests-secret-0123456789abcdefghijklmnopqrstuvwxyz",
        storage_url=storage_url,
        s3_endpoint_url=s3.url if s3 else None,
        **overrides,
    )


@pytest.fixture(params=["local", "s3"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def open_stored(
    store_kind: str, database_url: str, db: Database, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., Any]:
    """Opens a gateway on this test's store (`async with open_stored(**settings) as stored:`)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def opened(**overrides: Any) -> AsyncIterator[Stored]:
        await clear_tables(db)
        s3: S3Server | None = None
        if store_kind == "s3":
            s3 = request.getfixturevalue("s3_server")
            prefix = f"t-{uuid.uuid4().hex[:8]}"
            storage_url = f"s3://{BUCKET}/{prefix}"

            async def objects() -> dict[str, bytes]:
                client = s3.client()  # type: ignore[union-attr]
                listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
                return {
                    item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                    for item in listed
                }
        else:
            root = tmp_path / "files"
            storage_url = f"file://{root}"

            async def objects() -> dict[str, bytes]:
                if not root.exists():
                    return {}
                return {
                    str(path.relative_to(root)): path.read_bytes()
                    for path in root.rglob("*")
                    if path.is_file()
                }

        settings = _settings(database_url, storage_url, s3, **overrides)
        async with running(settings) as app, client_of(app) as client:
            yield Stored(app, client.with_headers(Authorization=f"Bearer {TEST_API_KEY}"), db, objects)

    return opened


async def upload(
    api: Api,
    input_: dict[str, Any],
    content: bytes | None,
    *,
    filename: str = "notes.txt",
    mime: str = "text/plain",
) -> httpx.Response:
    """createElement as the GraphQL multipart request spec sends it (what upload clients do)."""
    operations = {"query": CREATE, "variables": {"input": input_, "file": None}}
    files = {"0": (filename, content or b"", mime)}
    return await api.http.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files=files,
        headers={**api.headers, "Apollo-Require-Preflight": "true"},
    )


async def created(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert response.status_code == 200 and not body.get("errors"), body
    element: dict[str, Any] = body["data"]["createElement"]
    return element


async def read(stored: Stored, url: str) -> httpx.Response:
    """Fetch a read URL as a browser would: the gateway's own route, or the S3 server."""
    if url.startswith("http://localhost/"):
        return await stored.api.http.get(url)
    async with httpx.AsyncClient() as outside:
        return await outside.get(url)


async def make_thread(api: Api) -> tuple[str, str]:
    thread_id, step_id = new_uuid(), new_uuid()
    await api.ok(
        "mutation($i: StepInput!) { upsertStep(input: $i) { id } }",
        i={"id": step_id, "threadId": thread_id, "type": "user_message", "name": "User"},
    )
    return thread_id, step_id


@pytest.mark.parametrize("size", [5, PART_SIZE * 2 + 12345], ids=["small", "three-parts"])
async def test_uploaded_bytes_read_back_through_a_fresh_url(
    open_stored: Callable[..., Any], size: int
) -> None:
    content = os.urandom(size)
    async with open_stored() as stored:
        thread_id, step_id = await make_thread(stored.api)
        name = "Résumé 2026.bin"
        element = await created(
            await upload(
                stored.api,
                {"threadId": thread_id, "forId": step_id, "name": name, "type": "file"},
                content,
                mime="application/octet-stream",
            )
        )
        assert element["sizeBytes"] == size and element["forId"] == step_id
        assert list((await stored.objects()).values()) == [content]
        response = await read(stored, (await stored.api.ok(ELEMENT, id=element["id"]))["element"]["url"])
        assert response.status_code == 200
        assert hashlib.sha256(response.content).digest() == hashlib.sha256(content).digest()
        assert response.headers["content-type"] == "application/octet-stream"
        assert "R%C3%A9sum%C3%A9%202026.bin" in response.headers["content-disposition"]
        # The URL is made at each read: a later read signs anew.
        again = (await stored.api.ok(ELEMENT, id=element["id"]))["element"]["url"]
        assert again.split("?")[0] == element["url"].split("?")[0]


async def test_an_element_by_reference_keeps_its_url_and_stores_nothing(
    open_stored: Callable[..., Any],
) -> None:
    async with open_stored() as stored:
        thread_id, _ = await make_thread(stored.api)
        data = await stored.api.ok(
            "mutation($i: ElementInput!) { createElement(input: $i) { url objectKey sizeBytes } }",
            i={"threadId": thread_id, "name": "site", "url": "https://example.com/a.png"},
        )
        assert data["createElement"] == {
            "url": "https://example.com/a.png",
            "objectKey": None,
            "sizeBytes": None,
        }
        assert await stored.objects() == {}


async def test_deleting_an_element_a_step_or_a_thread_removes_the_objects(
    open_stored: Callable[..., Any],
) -> None:
    async with open_stored() as stored:
        api = stored.api
        thread_id, step_id = await make_thread(api)
        child_id = new_uuid()
        await api.ok(
            "mutation($i: StepInput!) { upsertStep(input: $i) { id } }",
            i={"id": child_id, "threadId": thread_id, "parentId": step_id, "type": "tool", "name": "t"},
        )
        lone = await created(await upload(api, {"threadId": thread_id, "name": "a"}, b"a"))
        of_child = await created(
            await upload(api, {"threadId": thread_id, "forId": child_id, "name": "b"}, b"b")
        )
        await created(await upload(api, {"threadId": thread_id, "name": "c"}, b"c"))
        assert len(await stored.objects()) == 3

        await api.ok("mutation($id: ID!) { deleteElement(id: $id) { id } }", id=lone["id"])
        await stored.settle()
        assert lone["objectKey"] not in await stored.objects() and len(await stored.objects()) == 2

        await api.ok("mutation($id: ID!) { deleteStep(id: $id) { id } }", id=step_id)  # takes the child's
        await stored.settle()
        assert of_child["objectKey"] not in await stored.objects() and len(await stored.objects()) == 1

        await api.ok("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=thread_id)
        await stored.settle()
        assert await stored.objects() == {}
        assert await stored.pending_deletions() == []


async def test_a_deletion_the_storage_refuses_is_retried_until_it_succeeds(
    open_stored: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deletions are recorded with the rows' deletion and retried, with their error, until done."""
    monkeypatch.setattr("gateway.reaper.retry_delay", lambda attempts: timedelta(0))
    async with open_stored() as stored:
        thread_id, _ = await make_thread(stored.api)
        element = await created(await upload(stored.api, {"threadId": thread_id, "name": "x"}, b"bytes"))
        await stored.attachments.reaper.stop()  # this test runs each attempt itself
        store = stored.attachments.store
        failures = {"left": 2}
        real_delete = store.delete

        async def failing_delete(key: str) -> None:
            if failures["left"]:
                failures["left"] -= 1
                raise ConnectionError("storage unreachable")
            await real_delete(key)

        monkeypatch.setattr(store, "delete", failing_delete)
        await stored.api.ok("mutation($id: ID!) { deleteElement(id: $id) { id } }", id=element["id"])
        assert (await stored.api.ok(ELEMENT, id=element["id"]))["element"] is None  # the row went at once
        await stored.settle()
        await stored.settle()
        assert await stored.pending_deletions() == [element["objectKey"]]  # failed twice so far
        async with stored.db.session() as session:
            [pending] = await object_deletions.pending_deletions(session)
        assert pending.attempts == 2 and "storage unreachable" in (pending.lastError or "")
        assert element["objectKey"] in await stored.objects()
        await stored.settle()
        assert await stored.pending_deletions() == []
        assert await stored.objects() == {}


async def test_s3_down_during_a_delete_then_back(
    database_url: str, db: Database, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.reaper.retry_delay", lambda attempts: timedelta(0))
    await clear_tables(db)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    settings = _settings(database_url, f"s3://{BUCKET}/{prefix}", s3_server)
    async with running(settings) as app, client_of(app) as client:
        api = client.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
        attachments: Attachments = app.state.attachments
        thread_id, _ = await make_thread(api)
        element = await created(await upload(api, {"threadId": thread_id, "name": "x"}, b"bytes"))
        await attachments.reaper.stop()  # this test runs each attempt itself
        s3_server.stop()
        try:
            await api.ok("mutation($id: ID!) { deleteElement(id: $id) { id } }", id=element["id"])
            await attachments.reaper.run_once()
            async with db.session() as session:
                [pending] = await object_deletions.pending_deletions(session)
            assert pending.objectKey == element["objectKey"] and pending.attempts == 1
        finally:
            s3_server.start()
        assert s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")["KeyCount"] == 1
        await attachments.reaper.run_once()
        assert s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")["KeyCount"] == 0
        async with db.session() as session:
            assert await object_deletions.pending_deletions(session) == []


async def test_a_gateway_deletes_only_objects_of_its_own_store(
    database_url: str, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica configured with another store (by mistake, or while storage moves) must leave the
    recorded deletions to a gateway that reaches their objects, and say so when it starts."""
    await clear_tables(db)
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    async with running(_settings(database_url, f"file://{home}", None)) as app, client_of(app) as client:
        api = client.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
        reaper = app.state.attachments.reaper
        await reaper.stop()  # this test runs each attempt itself
        thread_id, _ = await make_thread(api)
        element = await created(await upload(api, {"threadId": thread_id, "name": "x"}, b"bytes"))
        await api.ok("mutation($id: ID!) { deleteElement(id: $id) { id } }", id=element["id"])

        with caplog.at_level("WARNING", logger="gateway.reaper"):
            async with running(_settings(database_url, f"file://{elsewhere}", None)) as other:
                assert await other.state.attachments.reaper.run_once() == 0
        assert f"1 stored objects of {home.as_uri()} wait to be deleted" in caplog.text
        async with db.session() as session:
            [pending] = await object_deletions.pending_deletions(session)
        assert pending.objectKey == element["objectKey"] and pending.store == home.as_uri()
        assert (home / element["objectKey"]).exists()

        assert await reaper.run_once() == 1
        assert not (home / element["objectKey"]).exists()
        async with db.session() as session:
            assert await object_deletions.pending_deletions(session) == []


async def test_a_row_that_cannot_be_written_leaves_no_object(open_stored: Callable[..., Any]) -> None:
    async with open_stored() as stored:
        first, _ = await make_thread(stored.api)
        second, _ = await make_thread(stored.api)
        element = await created(await upload(stored.api, {"threadId": first, "name": "a"}, b"first"))
        before = await stored.objects()
        # The same id in another thread: stored, then refused when the row is written.
        response = await upload(stored.api, {"id": element["id"], "threadId": second, "name": "b"}, b"second")
        assert response.json()["errors"][0]["extensions"]["code"] == "CONFLICT"
        await stored.settle()
        assert await stored.objects() == before
        # A retry of the same upload returns the element and keeps one object.
        again = await created(
            await upload(stored.api, {"id": element["id"], "threadId": first, "name": "a"}, b"x")
        )
        await stored.settle()
        assert again["id"] == element["id"] and await stored.objects() == before


async def test_uploads_over_the_limit_or_of_refused_types_leave_nothing(
    open_stored: Callable[..., Any],
) -> None:
    async with open_stored(max_upload_bytes=1000, allowed_mime_types="image/*,application/pdf") as stored:
        thread_id, _ = await make_thread(stored.api)
        too_big = await upload(
            stored.api, {"threadId": thread_id, "name": "big"}, b"x" * 1001, mime="image/png"
        )
        assert too_big.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
        wrong_type = await upload(stored.api, {"threadId": thread_id, "name": "t"}, b"x", mime="text/html")
        assert wrong_type.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        # Far over: refused by the request's size before the upload is read.
        huge = await upload(stored.api, {"threadId": thread_id, "name": "h"}, b"x" * (1024 * 1024 + 2000))
        assert (
            huge.status_code == 413 and huge.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
        )
        assert await stored.objects() == {}
        threads = await stored.api.ok(
            "query($id: ID!) { thread(id: $id) { elements { totalCount } } }", id=thread_id
        )
        assert threads["thread"]["elements"]["totalCount"] == 0
        exact = await created(
            await upload(
                stored.api, {"threadId": thread_id, "name": "ok"}, b"x" * 1000, mime="application/pdf"
            )
        )
        assert exact["sizeBytes"] == 1000


async def test_users_attach_to_their_own_threads_only(open_stored: Callable[..., Any]) -> None:
    secret = "element-tests-secret-0123456789abcdefghijklmnopqrstuvwxyz"
    async with open_stored() as stored:
        alice = stored.api.with_headers(Authorization=f"Bearer {user_token('alice', secret=secret)}")
        bob = stored.api.with_headers(Authorization=f"Bearer {user_token('bob', secret=secret)}")
        thread_id = new_uuid()
        element = await created(await upload(alice, {"threadId": thread_id, "name": "mine"}, b"alice's"))
        assert (await alice.ok(ELEMENT, id=element["id"]))["element"]["url"]
        assert (await bob.ok(ELEMENT, id=element["id"]))["element"] is None
        refused = await upload(bob, {"threadId": thread_id, "name": "intruder"}, b"bob's")
        assert refused.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        gone = await bob.post("mutation($id: ID!) { deleteElement(id: $id) { id } }", {"id": element["id"]})
        assert gone.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        assert list((await stored.objects()).values()) == [b"alice's"]


async def test_local_links_are_signed_and_expire(database_url: str, db: Database, tmp_path: Path) -> None:
    await clear_tables(db)
    settings = _settings(database_url, f"file://{tmp_path}", None, url_expiry_seconds=1)
    async with running(settings) as app, client_of(app) as client:
        api = client.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
        thread_id, _ = await make_thread(api)
        element = await created(await upload(api, {"threadId": thread_id, "name": "a.txt"}, b"secret"))
        url = element["url"]
        assert (await client.http.get(url)).content == b"secret"
        for forged in (
            url.replace("a.txt", "b.txt"),
            url[:-2] + "xx",
            url.replace("threads/", "threads/../"),
        ):
            assert (await client.http.get(forged)).status_code in (403, 404)
        expired = url.replace("expires=", "expires=1")  # a time long past, signed for another
        assert (await client.http.get(expired)).status_code == 403


REQUEST_UPLOAD = """
mutation($i: ElementInput!) { requestElementUpload(input: $i) { elementId url method headers expiresAt } }"""
COMPLETE_UPLOAD = "mutation($id: ID!) { completeElementUpload(id: $id) { id name sizeBytes url } }"


async def put_bytes(stored: Stored, target: dict[str, Any], content: bytes) -> httpx.Response:
    """PUT to the upload URL as a client would: to the bucket, or to the gateway's route."""
    if target["url"].startswith("http://localhost/"):
        return await stored.api.http.put(target["url"], content=content, headers=target["headers"])
    async with httpx.AsyncClient() as outside:
        return await outside.put(target["url"], content=content, headers=target["headers"])


async def test_a_large_file_goes_straight_to_the_store_then_is_completed(
    open_stored: Callable[..., Any],
) -> None:
    content = os.urandom(3 * 1024 * 1024)
    async with open_stored() as stored:
        thread_id, step_id = await make_thread(stored.api)
        request = {"threadId": thread_id, "forId": step_id, "name": "talk.mp3", "mime": "audio/mpeg"}
        target = (await stored.api.ok(REQUEST_UPLOAD, i=request))["requestElementUpload"]
        assert target["method"] == "PUT" and target["headers"] == {"Content-Type": "audio/mpeg"}
        element_id = target["elementId"]
        early = await stored.api.error(COMPLETE_UPLOAD, id=element_id)  # nothing PUT yet
        assert early["extensions"]["code"] == "BAD_USER_INPUT"
        assert (await stored.api.ok(ELEMENT, id=element_id))["element"] is None
        assert (await put_bytes(stored, target, content)).status_code == 200
        element = (await stored.api.ok(COMPLETE_UPLOAD, id=element_id))["completeElementUpload"]
        assert element["sizeBytes"] == len(content)
        assert (await read(stored, element["url"])).content == content
        again = (await stored.api.ok(COMPLETE_UPLOAD, id=element_id))["completeElementUpload"]
        assert again["id"] == element_id and len(await stored.objects()) == 1


async def test_an_upload_over_the_limit_is_refused_and_removed(open_stored: Callable[..., Any]) -> None:
    async with open_stored(max_upload_bytes=1000) as stored:
        thread_id, _ = await make_thread(stored.api)
        target = (await stored.api.ok(REQUEST_UPLOAD, i={"threadId": thread_id, "name": "big"}))[
            "requestElementUpload"
        ]
        response = await put_bytes(stored, target, b"x" * 2000)
        completed = await stored.api.error(COMPLETE_UPLOAD, id=target["elementId"])
        if response.status_code == 413:  # the gateway's own route refuses while receiving
            assert completed["extensions"]["code"] == "BAD_USER_INPUT"
        else:  # a presigned PUT cannot be capped: completion checks the size, removes the object
            assert completed["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
            assert (await stored.api.error(COMPLETE_UPLOAD, id=target["elementId"]))["extensions"][
                "code"
            ] == "NOT_FOUND"
        await stored.settle()
        assert await stored.objects() == {}
        assert (await stored.api.ok(ELEMENT, id=target["elementId"]))["element"] is None


async def test_an_upload_never_completed_is_removed_when_it_expires(open_stored: Callable[..., Any]) -> None:
    async with open_stored() as stored:
        thread_id, _ = await make_thread(stored.api)
        target = (await stored.api.ok(REQUEST_UPLOAD, i={"threadId": thread_id, "name": "left"}))[
            "requestElementUpload"
        ]
        await put_bytes(stored, target, b"abandoned")
        await stored.settle()
        assert len(await stored.objects()) == 1  # not expired yet: kept
        async with stored.db.transaction() as session:
            await session.execute(
                sa.text("UPDATE gateway_pending_uploads SET \"expiresAt\" = '2000-01-01T00:00:00.000Z'")
            )
        await stored.settle()
        assert await stored.objects() == {}
        assert (await stored.api.error(COMPLETE_UPLOAD, id=target["elementId"]))["extensions"][
            "code"
        ] == "NOT_FOUND"


async def test_deleting_a_user_removes_the_objects_of_their_threads_and_uploads(
    open_stored: Callable[..., Any],
) -> None:
    secret = "element-tests-secret-0123456789abcdefghijklmnopqrstuvwxyz"
    async with open_stored() as stored:
        leaving = stored.api.with_headers(Authorization=f"Bearer {user_token('leaving', secret=secret)}")
        staying = stored.api.with_headers(Authorization=f"Bearer {user_token('staying', secret=secret)}")
        kept = await created(await upload(staying, {"threadId": new_uuid(), "name": "kept"}, b"kept"))
        user_id = (await leaving.ok("{ viewer { id } }"))["viewer"]["id"]
        for name in ("a", "b"):  # in two threads
            await created(await upload(leaving, {"threadId": new_uuid(), "name": name}, name.encode()))
        thread_id = new_uuid()
        await leaving.ok("mutation($t: ID!) { upsertThread(input: {id: $t}) { id } }", t=thread_id)
        target = (await leaving.ok(REQUEST_UPLOAD, i={"threadId": thread_id, "name": "half-done"}))[
            "requestElementUpload"
        ]
        assert (await put_bytes(stored, target, b"never completed")).status_code == 200
        assert len(await stored.objects()) == 4

        await leaving.ok("mutation($id: ID!) { deleteUser(id: $id) { id } }", id=user_id)
        await stored.settle()
        assert list((await stored.objects()).values()) == [b"kept"]
        assert (await staying.ok(ELEMENT, id=kept["id"]))["element"]["url"]
        assert await stored.pending_deletions() == []


async def test_files_that_could_run_script_are_served_as_attachments(open_stored: Callable[..., Any]) -> None:
    """An uploaded HTML or SVG file must not run on the gateway's (or the bucket's) origin."""
    async with open_stored() as stored:
        thread_id, _ = await make_thread(stored.api)
        page = await created(
            await upload(
                stored.api, {"threadId": thread_id, "name": "x.html"}, b"<script>1</script>", mime="text/html"
            )
        )
        picture = await created(
            await upload(stored.api, {"threadId": thread_id, "name": "a.png"}, b"png", mime="image/png")
        )
        served = await read(stored, page["url"])
        assert served.content == b"<script>1</script>"
        assert served.headers["content-disposition"].startswith("attachment;")
        assert (await read(stored, picture["url"])).headers["content-disposition"].startswith("inline;")
        if page["url"].startswith("http://localhost/"):  # the gateway's own route
            assert served.headers["x-content-type-options"] == "nosniff"
            assert served.headers["content-security-policy"].startswith("sandbox")


async def test_bad_element_input_is_refused_and_stores_nothing(open_stored: Callable[..., Any]) -> None:
    async with open_stored() as stored:
        thread_id, _ = await make_thread(stored.api)
        for input_, content in (
            ({"threadId": thread_id, "name": "a", "mime": "text/plain; charset=ф"}, b"x"),
            ({"threadId": thread_id, "name": "a", "mime": "not a type"}, b"x"),
            ({"threadId": thread_id, "name": "a", "url": "javascript:alert(1)"}, None),
        ):
            if content is None:
                body = (await stored.api.post(CREATE, {"input": input_})).json()
            else:
                body = (await upload(stored.api, input_, content)).json()
            assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body
        as_text = await stored.api.post(
            CREATE, {"input": {"threadId": thread_id, "name": "a"}, "file": "text"}
        )
        assert as_text.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert await stored.objects() == {}


async def test_a_name_with_line_breaks_is_served_with_a_clean_header(open_stored: Callable[..., Any]) -> None:
    async with open_stored() as stored:
        thread_id, _ = await make_thread(stored.api)
        name = "a\r\nSet-Cookie: pwn=1.txt"
        element = await created(await upload(stored.api, {"threadId": thread_id, "name": name}, b"text"))
        served = await read(stored, element["url"])
        assert served.content == b"text" and "set-cookie" not in served.headers
        assert "\r" not in served.headers["content-disposition"]


async def test_a_forged_signature_of_any_text_gets_403(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    await clear_tables(db)
    async with running(_settings(database_url, f"file://{tmp_path}", None)) as app, client_of(app) as client:
        for method in ("GET", "PUT"):
            response = await client.http.request(method, "/files/x?expires=9999999999&signature=%C3%A9")
            assert response.status_code == 403


async def test_an_upload_ends_once_completed_given_up_or_replaced(open_stored: Callable[..., Any]) -> None:
    async with open_stored() as stored:
        api = stored.api
        thread_id, _ = await make_thread(api)
        completed = (await api.ok(REQUEST_UPLOAD, i={"threadId": thread_id, "name": "a"}))[
            "requestElementUpload"
        ]
        await put_bytes(stored, completed, b"first")
        await api.ok(COMPLETE_UPLOAD, id=completed["elementId"])
        if completed["url"].startswith("http://localhost/"):  # the gateway's route checks it is pending
            assert (await put_bytes(stored, completed, b"replaced")).status_code == 403

        # Bytes given to createElement for the id of a requested upload replace that upload.
        replaced = (await api.ok(REQUEST_UPLOAD, i={"threadId": thread_id, "name": "b"}))[
            "requestElementUpload"
        ]
        await put_bytes(stored, replaced, b"requested")
        await created(
            await upload(api, {"id": replaced["elementId"], "threadId": thread_id, "name": "b"}, b"given")
        )

        # Completing after the upload expired is refused; the reaper removes its bytes.
        expired = (await api.ok(REQUEST_UPLOAD, i={"threadId": thread_id, "name": "c"}))[
            "requestElementUpload"
        ]
        await put_bytes(stored, expired, b"late")
        async with stored.db.transaction() as session:
            await session.execute(
                sa.update(pending_uploads_table)
                .where(pending_uploads_table.c.id == expired["elementId"])
                .values(expiresAt="2000-01-01T00:00:00.000Z")
            )
        assert (await api.error(COMPLETE_UPLOAD, id=expired["elementId"]))["extensions"][
            "code"
        ] == "NOT_FOUND"

        await stored.settle()
        assert sorted((await stored.objects()).values()) == [b"first", b"given"]
        assert (await api.ok(ELEMENT, id=expired["elementId"]))["element"] is None


async def test_deleting_a_thread_ends_its_uploads(open_stored: Callable[..., Any]) -> None:
    """A completion arriving after its thread was deleted must not bring the thread back."""
    async with open_stored() as stored:
        thread_id, _ = await make_thread(stored.api)
        target = (await stored.api.ok(REQUEST_UPLOAD, i={"threadId": thread_id, "name": "a"}))[
            "requestElementUpload"
        ]
        await put_bytes(stored, target, b"bytes")
        await stored.api.ok("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=thread_id)
        refused = await stored.api.error(COMPLETE_UPLOAD, id=target["elementId"])
        assert refused["extensions"]["code"] == "NOT_FOUND"
        assert (await stored.api.ok("query($id: ID!) { thread(id: $id) { id } }", id=thread_id))[
            "thread"
        ] is None
        await stored.settle()
        assert await stored.objects() == {}
