"""Retention and bulk clean-up: `gateway prune` (also with the object store down, then back),
GATEWAY_RETENTION_DAYS in a running gateway, and the `deleteThreads` mutation, on SQLite and
PostgreSQL."""

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from gateway.config import Settings
from tests.conftest import (
    BUCKET,
    TEST_API_KEY,
    Api,
    S3Server,
    client_of,
    new_uuid,
    running,
    user_token,
)
from tests.test_elements import created, upload
from tests.test_transfer import gateway

OLD = "2020-01-01T00:00:00.000Z"
RECENT = "2999-01-01T00:00:00.000Z"  # never expires in these tests
HEADER = {"format": "conversation-gateway", "version": 1}
EXISTS = "query($id: ID!) { thread(id: $id) { id } }"


def _user(identifier: str) -> dict[str, Any]:
    return {"type": "user", "id": new_uuid(), "identifier": identifier, "metadata": {}, "createdAt": OLD}


def _thread(owner: dict[str, Any], active: str, **contents: Any) -> dict[str, Any]:
    return {
        "type": "thread",
        "id": new_uuid(),
        "name": f"{owner['identifier']} at {active}",
        "userId": owner["id"],
        "userIdentifier": owner["identifier"],
        "createdAt": OLD,
        "updatedAt": active,
        **contents,
    }


async def _import(database_url: str, lines: list[dict[str, Any]], tmp_path: Path, **settings: str) -> None:
    path = tmp_path / f"{uuid.uuid4().hex}.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [HEADER, *lines]) + "\n")
    result = await gateway(
        "import", str(path), "--files", str(tmp_path), database_url=database_url, **settings
    )
    assert result.returncode == 0, result.stderr.decode()


def _objects(s3: S3Server, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return [item["Key"] for item in listed]


async def test_prune_deletes_old_threads_and_their_objects_also_when_the_store_was_down(
    api: Api, database_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    prefix = f"prune-{uuid.uuid4().hex[:8]}"
    store = {"storage_url": f"s3://{BUCKET}/{prefix}", "s3_endpoint_url": s3_server.url}
    (tmp_path / "a.txt").write_bytes(b"old bytes")
    alice, bob = _user("alice"), _user("bob")
    step = new_uuid()
    element = {
        "id": new_uuid(),
        "name": "a.txt",
        "forId": step,
        "objectKey": f"{prefix}/a.txt",
        "file": "a.txt",
    }
    old = _thread(
        alice,
        OLD,
        steps=[{"id": step, "name": "s", "type": "run", "createdAt": OLD}],
        elements=[element],
        feedback=[{"id": new_uuid(), "forId": step, "value": 1}],
    )
    recent, bobs = _thread(alice, RECENT), _thread(bob, OLD)
    await _import(database_url, [alice, bob, old, recent, bobs], tmp_path, **store)
    assert _objects(s3_server, prefix) == [f"{prefix}/a.txt"]
    # An export copies the bytes out of S3 too.
    exported = await gateway(
        "export", "--user", "alice", "--files", str(tmp_path / "out"), database_url=database_url, **store
    )
    assert exported.returncode == 0, exported.stderr.decode()
    assert (tmp_path / "out" / "elements" / element["id"]).read_bytes() == b"old bytes"

    listed = await gateway("prune", "--older-than", "30", "--dry-run", database_url=database_url, **store)
    assert listed.returncode == 0
    assert sorted(line.split("\t")[0] for line in listed.stdout.decode().splitlines()) == sorted(
        [old["id"], bobs["id"]]
    )
    assert b"dry run: 2 thread(s)" in listed.stderr
    mine = await gateway(
        "prune", "--older-than", "30", "--user", "alice", "--dry-run", database_url=database_url, **store
    )
    assert [line.split("\t")[0] for line in mine.stdout.decode().splitlines()] == [old["id"]]
    assert (await api.ok(EXISTS, id=old["id"]))["thread"] is not None

    s3_server.stop()
    try:
        pruned = await gateway(
            "prune", "--older-than", "30", "--user", "alice", database_url=database_url, **store
        )
    finally:
        s3_server.start()
    assert pruned.returncode == 0, pruned.stderr.decode()
    assert b"deleted 1 thread(s) of 'alice'" in pruned.stderr
    assert b"1 stored object(s) could not be deleted now" in pruned.stderr
    assert (await api.ok(EXISTS, id=old["id"]))["thread"] is None
    assert (await api.ok(EXISTS, id=recent["id"]))["thread"] is not None
    assert (await api.ok(EXISTS, id=bobs["id"]))["thread"] is not None
    assert _objects(s3_server, prefix) == [f"{prefix}/a.txt"]  # kept in the outbox, not lost

    again = await gateway(
        "prune", "--older-than", "30", "--user", "alice", database_url=database_url, **store
    )
    assert again.returncode == 0 and b"deleted 0 thread(s)" in again.stderr
    assert b"could not be deleted" not in again.stderr
    assert _objects(s3_server, prefix) == []

    everyone = await gateway("prune", "--older-than", "30", database_url=database_url, **store)
    assert b"deleted 1 thread(s) last active" in everyone.stderr
    assert (await api.ok(EXISTS, id=bobs["id"]))["thread"] is None


async def test_retention_days_make_the_gateway_prune_continuously(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    alice = _user("alice")
    old, recent = _thread(alice, OLD), _thread(alice, RECENT)
    await _import(database_url, [alice, old, recent], tmp_path)
    settings = Settings(
        database_url=database_url,
        auto_migrate=False,
        storage_url=f"file://{tmp_path / 'store'}",
        retention_days=30,
        reaper_interval_seconds=0.05,
    )
    async with running(settings) as app, client_of(app) as client:
        for _ in range(400):  # the background task's next rounds
            if (await client.ok(EXISTS, id=old["id"]))["thread"] is None:
                break
            await asyncio.sleep(0.05)
        assert (await client.ok(EXISTS, id=old["id"]))["thread"] is None
        assert (await client.ok(EXISTS, id=recent["id"]))["thread"] is not None


async def test_retention_days_must_be_positive(tmp_path: Path) -> None:
    result = await gateway("prune", "--older-than", "1", database_url="sqlite:///x.db", retention_days="0")
    assert result.returncode == 2 and b"GATEWAY_RETENTION_DAYS" in result.stderr
    # More days than a date can go back would stop the reaper's every round (its objects too).
    result = await gateway("prune", "--older-than", "1", database_url="sqlite:///x.db", retention_days="1e12")
    assert result.returncode == 2 and b"GATEWAY_RETENTION_DAYS" in result.stderr
    # 0 or fewer days would delete every thread, even those active now.
    for days in ("0", "-3", "nan", "1e12", "soon"):
        result = await gateway("prune", "--older-than", days, "--dry-run", database_url="sqlite:///x.db")
        assert result.returncode == 2 and b"--older-than" in result.stderr, result.stderr
        assert b"Traceback" not in result.stderr


DELETE_THREADS = """
mutation($ids: [ID!]!) { deleteThreads(ids: $ids) { index id error { code message } } }"""
UPSERT_THREAD = "mutation($input: ThreadInput!) { upsertThread(input: $input) { id } }"


async def test_delete_threads_gives_one_outcome_per_id_and_users_delete_only_their_own(
    secured_api: Api,
) -> None:
    alice = secured_api.with_headers(Authorization=f"Bearer {user_token('alice')}")
    bob = secured_api.with_headers(Authorization=f"Bearer {user_token('bob')}")
    mine, also_mine, bobs, shared = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    for thread_id in (mine, also_mine):
        await alice.ok(UPSERT_THREAD, input={"id": thread_id, "name": "mine"})
    await alice.ok(
        "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { id } }",
        s=[{"id": new_uuid(), "threadId": mine, "type": "run", "name": "s"}],
    )
    await bob.ok(UPSERT_THREAD, input={"id": bobs, "name": "bob's"})
    await bob.ok(UPSERT_THREAD, input={"id": shared, "name": "shared", "metadata": {"is_shared": True}})
    missing = new_uuid()
    ids = [mine, bobs, shared, missing, "not-an-id", also_mine]
    outcomes = (await alice.ok(DELETE_THREADS, ids=ids))["deleteThreads"]
    assert [(item["index"], item["id"], (item["error"] or {}).get("code")) for item in outcomes] == [
        (0, mine, None),
        (1, bobs, "NOT_FOUND"),
        (2, shared, "FORBIDDEN"),
        (3, missing, "NOT_FOUND"),
        (4, "not-an-id", "BAD_USER_INPUT"),
        (5, also_mine, None),
    ]
    assert outcomes[1]["error"]["message"] == outcomes[3]["error"]["message"].replace(missing, bobs)
    backend = secured_api.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
    for thread_id, kept in ((mine, False), (also_mine, False), (bobs, True), (shared, True)):
        assert ((await backend.ok(EXISTS, id=thread_id))["thread"] is not None) == kept
    # Deleting again: each id is now missing, and says so.
    again = (await alice.ok(DELETE_THREADS, ids=[mine]))["deleteThreads"]
    assert again[0]["error"]["code"] == "NOT_FOUND"


async def test_delete_threads_takes_at_most_100_ids(secured_api: Api) -> None:
    backend = secured_api.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
    error = await backend.error(DELETE_THREADS, ids=[new_uuid() for _ in range(101)])
    assert error["extensions"]["code"] == "BAD_USER_INPUT" and "at most 100" in error["message"]
    created = [new_uuid() for _ in range(100)]
    for thread_id in created:
        await backend.ok(UPSERT_THREAD, input={"id": thread_id})
    outcomes = (await backend.ok(DELETE_THREADS, ids=created))["deleteThreads"]
    assert [item["error"] for item in outcomes] == [None] * 100
    assert [(await backend.ok(EXISTS, id=thread_id))["thread"] for thread_id in created[:3]] == [None] * 3


async def test_delete_threads_deletes_the_stored_objects_of_their_elements(api: Api, app: Starlette) -> None:
    thread_id = new_uuid()
    await api.ok(UPSERT_THREAD, input={"id": thread_id})
    element = await created(await upload(api, {"threadId": thread_id, "name": "a.txt"}, b"bytes"))
    stored = Path(os.environ["GATEWAY_STORAGE_URL"].removeprefix("file://")) / element["objectKey"]
    assert stored.read_bytes() == b"bytes"
    outcomes = (await api.ok(DELETE_THREADS, ids=[thread_id]))["deleteThreads"]
    assert outcomes == [{"index": 0, "id": thread_id, "error": None}]
    await app.state.attachments.reaper.run_once()  # what the reaper does right after the delete
    assert not stored.exists()
