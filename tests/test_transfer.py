"""`gateway export` and `gateway import`: JSON Lines out of one database and into another, run as an
operator runs them (the CLI in its own process), on SQLite and PostgreSQL; what was imported is
read back through GraphQL."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings
from tests.conftest import (
    Api,
    client_of,
    create_postgres_database,
    drop_postgres_database,
    new_uuid,
    running,
)
from tests.test_cli import _env
from tests.test_elements import created, upload

CLI_TIMEOUT = 120

INGEST = """
mutation($steps: [StepInput!]!) { ingestSteps(steps: $steps) { id error { code message } } }"""
USER = "mutation($input: UserInput!) { upsertUser(input: $input) { id } }"
THREAD = "mutation($input: ThreadInput!) { upsertThread(input: $input) { id } }"
FEEDBACK = "mutation($input: FeedbackInput!) { upsertFeedback(input: $input) { id } }"
READ_THREAD = """
query($id: ID!) {
  thread(id: $id) {
    name tags metadata createdAt updatedAt user { identifier metadata }
    steps(first: 50) { edges { node { id name type input output parentId metadata generation
      feedback { value comment } } } }
    elements(first: 10) { edges { node { id name mime sizeBytes url } } }
  }
}"""


async def gateway(
    *args: str, database_url: str, stdin: bytes | None = None, **settings: str
) -> subprocess.CompletedProcess[bytes]:
    """The CLI in its own process, while this process's event loop goes on (the gateways the
    tests run keep answering, and finish their transactions)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", *args],
        env=_env(
            database_url=database_url,
            storage_url=settings.pop("storage_url", os.environ["GATEWAY_STORAGE_URL"]),
            **settings,
        ),
        input=stdin,
        capture_output=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


@pytest.fixture
async def empty_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A second database, empty (the CLI migrates it), of the same kind as the test's."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'target.db'}"
        return
    url = await create_postgres_database("gateway_import")
    try:
        yield url
    finally:
        await drop_postgres_database(url)


async def write_conversation(api: Api) -> dict[str, str]:
    """A user with a thread holding what users rely on: unicode, metadata, tags, nested steps,
    feedback, an element with stored bytes and one with only a URL."""
    user_id = (
        await api.ok(USER, input={"identifier": "zoë@example.com", "metadata": {"plan": "pro", "n": 1}})
    )["upsertUser"]["id"]
    thread_id, question, answer, tool = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    await api.ok(
        THREAD,
        input={
            "id": thread_id,
            "name": "Ünïcode 🧵 — naïve café",
            "userId": user_id,
            "tags": ["support", "日本語"],
            "metadata": {"nested": {"a": [1, 2.5, None, True]}, "emoji": "🎉"},
        },
    )
    steps: list[dict[str, Any]] = [
        {"id": question, "threadId": thread_id, "type": "user_message", "name": "user", "input": "Hé ¿?"},
        {
            "id": answer,
            "threadId": thread_id,
            "type": "assistant_message",
            "name": "bot",
            "output": 'Réponse\nmulti-line "quoted"',
            "generation": {"model": "tiny", "usage": {"input": 3, "output": 5}},
            "metadata": {"k": "v"},
            "tags": ["t1"],
        },
        {"id": tool, "threadId": thread_id, "parentId": answer, "type": "tool", "name": "search"},
    ]
    results = (await api.ok(INGEST, steps=steps))["ingestSteps"]
    assert all(result["error"] is None for result in results), results
    await api.ok(FEEDBACK, input={"forId": answer, "value": 1, "comment": "merci ✓"})
    with_bytes = await created(
        await upload(api, {"threadId": thread_id, "forId": answer, "name": "notes.txt"}, b"bytes \x00\xff")
    )
    await api.ok(
        "mutation($input: ElementInput!) { createElement(input: $input) { id } }",
        input={
            "threadId": thread_id,
            "name": "link",
            "url": "https://example.com/a.png",
            "mime": "image/png",
        },
    )
    return {"user": user_id, "thread": thread_id, "answer": answer, "element": with_bytes["id"]}


async def export(database_url: str, path: Path, *extra: str, **settings: str) -> bytes:
    result = await gateway("export", "--output", str(path), *extra, database_url=database_url, **settings)
    assert result.returncode == 0, result.stderr.decode()
    return await asyncio.to_thread(path.read_bytes)


async def imported(database_url: str, *args: str, stdin: bytes | None = None, **settings: str) -> str:
    result = await gateway("import", *args, database_url=database_url, stdin=stdin, **settings)
    assert result.returncode == 0, result.stderr.decode()
    return result.stderr.decode()


async def test_round_trip_into_an_empty_database_gives_the_same_lines(
    api: Api, database_url: str, empty_database: str, tmp_path: Path
) -> None:
    ids = await write_conversation(api)
    files, target_files = tmp_path / "export-files", tmp_path / "target-store"
    first = await export(database_url, tmp_path / "first.jsonl", "--files", str(files))
    lines = [json.loads(line) for line in first.splitlines()]
    assert lines[0] == {"format": "conversation-gateway", "version": 1}
    assert [line["type"] for line in lines[1:]] == ["user", "thread"]
    thread = lines[2]
    assert len(thread["steps"]) == 3 and len(thread["feedback"]) == 1
    stored = next(element for element in thread["elements"] if element["id"] == ids["element"])
    assert (files / stored["file"]).read_bytes() == b"bytes \x00\xff"

    storage = f"file://{target_files}"
    summary = await imported(
        empty_database, str(tmp_path / "first.jsonl"), "--files", str(files), storage_url=storage
    )
    assert "threads: 1 created, 0 updated, 0 unchanged, 0 failed" in summary
    assert "steps: 3 created" in summary and "elements: 2 created" in summary
    assert "feedback: 1 created" in summary and "users: 1 created" in summary
    second = await export(empty_database, tmp_path / "second.jsonl", storage_url=storage)
    without_files = await export(database_url, tmp_path / "plain.jsonl")
    assert second == without_files
    assert (target_files / stored["objectKey"]).read_bytes() == b"bytes \x00\xff"

    # Again: nothing changes, not even the thread's activity.
    summary = await imported(
        empty_database, str(tmp_path / "first.jsonl"), "--files", str(files), storage_url=storage
    )
    assert "threads: 0 created, 0 updated, 1 unchanged, 0 failed" in summary
    assert "steps: 0 created, 0 updated, 3 unchanged" in summary
    assert await export(empty_database, tmp_path / "third.jsonl", storage_url=storage) == second

    # What the target serves is the source's conversation.
    settings = Settings(database_url=empty_database, auto_migrate=False, storage_url=storage)
    async with running(settings) as app, client_of(app) as target:
        served = (await target.ok(READ_THREAD, id=ids["thread"]))["thread"]
    original = (await api.ok(READ_THREAD, id=ids["thread"]))["thread"]
    for element in (*served["elements"]["edges"], *original["elements"]["edges"]):
        element["node"].pop("url") if element["node"]["sizeBytes"] else None
    assert served == original
    assert served["user"] == {"identifier": "zoë@example.com", "metadata": {"plan": "pro", "n": 1}}


async def test_a_newer_copy_of_a_thread_replaces_the_stored_one(
    api: Api, database_url: str, empty_database: str, tmp_path: Path
) -> None:
    ids = await write_conversation(api)
    old = await export(database_url, tmp_path / "old.jsonl")
    await imported(empty_database, str(tmp_path / "old.jsonl"))
    await api.ok(INGEST, steps=[{"id": ids["answer"], "output": "edited"}])
    new_step = new_uuid()
    await api.ok(
        INGEST, steps=[{"id": new_step, "threadId": ids["thread"], "type": "user_message", "name": "u"}]
    )
    await api.ok(f'mutation {{ deleteElement(id: "{ids["element"]}") {{ id }} }}')
    new = await export(database_url, tmp_path / "new.jsonl")
    assert new != old
    summary = await imported(empty_database, "-", stdin=new)
    assert "threads: 0 created, 1 updated, 0 unchanged" in summary
    assert "steps: 1 created, 1 updated, 2 unchanged" in summary
    assert await export(empty_database, tmp_path / "after.jsonl") == new
    # An older copy does not overwrite a newer one.
    summary = await imported(empty_database, "-", stdin=old)
    assert "threads: 0 created, 0 updated, 1 unchanged" in summary
    assert await export(empty_database, tmp_path / "kept.jsonl") == new


async def test_export_selects_by_user_and_activity(api: Api, database_url: str, tmp_path: Path) -> None:
    await write_conversation(api)
    other = new_uuid()
    await api.ok(THREAD, input={"id": other, "name": "anonymous"})
    everything = (await export(database_url, tmp_path / "all.jsonl")).splitlines()
    assert len(everything) == 4  # header, user, two threads
    mine = (await export(database_url, tmp_path / "mine.jsonl", "--user", "zoë@example.com")).splitlines()
    assert [json.loads(line).get("type") for line in mine] == [None, "user", "thread"]
    future = (
        await export(database_url, tmp_path / "future.jsonl", "--since", "2999-01-01T00:00:00Z")
    ).splitlines()
    assert len(future) == 1
    past = (
        await export(database_url, tmp_path / "past.jsonl", "--until", "2999-01-01T00:00:00+00:00")
    ).splitlines()
    assert len(past) == 4
    result = await gateway("export", "--since", "yesterday", database_url=database_url)
    assert result.returncode == 2 and b"--since" in result.stderr
    # stdout by default, progress and summary on stderr.
    result = await gateway("export", database_url=database_url)
    assert result.returncode == 0 and result.stdout.splitlines() == everything
    assert b"exported: 1 users, 2 threads, 3 steps, 2 elements, 1 feedback" in result.stderr


def _line(**thread: Any) -> bytes:
    return json.dumps({"type": "thread", "id": new_uuid(), **thread}).encode()


async def test_bad_lines_are_reported_by_number_and_the_rest_imported(
    api: Api, database_url: str, empty_database: str, tmp_path: Path
) -> None:
    good, clash = new_uuid(), new_uuid()
    step = new_uuid()
    lines = [
        b'{"format":"conversation-gateway","version":1}',
        b"{not json",
        _line(id=good, name="fine", steps=[{"id": step, "name": "s", "type": "run"}]),
        _line(steps=[{"id": "not-a-uuid", "name": "s", "type": "run"}]),
        _line(name=7),
        b'{"type":"mystery"}',
        # A step id another thread holds: the whole thread fails, nothing of it is written.
        _line(
            id=clash,
            name="clash",
            steps=[{"id": new_uuid(), "name": "a", "type": "run"}, {"id": step, "name": "b", "type": "run"}],
        ),
        _line(userId=new_uuid(), name="owner missing"),
        _line(name="nul \u0000 inside"),
        _line(name="when?", createdAt="yesterday"),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = await gateway("import", str(path), database_url=empty_database)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "line 2: not JSON" in stderr
    assert "line 4:" in stderr and "not a UUID" in stderr
    assert "line 5:" in stderr and "name" in stderr
    assert "line 6: unknown line type 'mystery'" in stderr
    assert f"line 7: thread {clash}: step {step} belongs to another thread" in stderr
    assert "line 8:" in stderr
    assert "line 9:" in stderr and "`thread.name`: strings must not contain NUL" in stderr
    assert "line 10:" in stderr and "'yesterday' is not an ISO-8601 timestamp" in stderr
    assert "threads: 1 created, 0 updated, 0 unchanged, 7 failed" in stderr
    assert "line 3" not in stderr
    exported = (await export(empty_database, tmp_path / "out.jsonl")).splitlines()
    assert [json.loads(line)["id"] for line in exported[1:]] == [good]

    for header, reason in (
        (b'{"format":"conversation-gateway","version":2}', "unknown format version 2"),
        (b'{"type":"thread"}', "the first line must be the header"),
    ):
        result = await gateway("import", "-", database_url=empty_database, stdin=header + b"\n" + lines[2])
        assert result.returncode == 1 and f"line 1: {reason}".encode() in result.stderr
    result = await gateway("import", str(tmp_path / "missing.jsonl"), database_url=empty_database)
    assert result.returncode == 1 and b"cannot read" in result.stderr


async def test_a_thread_that_fails_leaves_none_of_its_files_in_the_store(
    empty_database: str, tmp_path: Path
) -> None:
    files, target_files = tmp_path / "files", tmp_path / "target-store"
    (files / "elements").mkdir(parents=True)
    (files / "elements" / "notes").write_bytes(b"orphan?")
    step, element = new_uuid(), new_uuid()
    lines = [
        b'{"format":"conversation-gateway","version":1}',
        _line(name="first", steps=[{"id": step, "name": "s", "type": "run"}]),
        # Its bytes are stored before its rows, then its step clashes: the thread writes nothing.
        _line(
            name="clash",
            steps=[{"id": step, "name": "s", "type": "run"}],
            elements=[{"id": element, "name": "notes.txt", "file": "elements/notes"}],
        ),
        # The same, to a key where the store already holds an object no element names (another
        # app's, say): that object is not the import's to delete.
        _line(
            name="clash over a kept object",
            steps=[{"id": step, "name": "s", "type": "run"}],
            elements=[{"id": new_uuid(), "name": "a", "objectKey": "shared/kept", "file": "elements/notes"}],
        ),
    ]
    (target_files / "shared").mkdir(parents=True)
    (target_files / "shared" / "kept").write_bytes(b"not the import's")
    path = tmp_path / "clash.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    storage = f"file://{target_files}"
    result = await gateway(
        "import", str(path), "--files", str(files), database_url=empty_database, storage_url=storage
    )
    assert result.returncode == 1 and b"belongs to another thread" in result.stderr
    assert [p for p in target_files.rglob("*") if p.is_file() and element in str(p)] == []
    assert (target_files / "shared" / "kept").is_file()
