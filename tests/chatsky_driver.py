"""A Chatsky bot using the gateway as its context storage, run in a process of its own by
tests/test_chatsky.py (importing Chatsky applies `nest_asyncio` to the whole process, which the
gateway's own tests must not run under).

    python -m tests.chatsky_driver URL happy-paths   # prints what it did, as JSON
    python -m tests.chatsky_driver URL clear-all
    python -m tests.chatsky_driver URL storage       # the storage's own promises, asserted here
"""

import asyncio
import json
import os
import sys
from typing import Any

import httpx
from chatsky import Context, Message, Pipeline
from chatsky.core.ctx_utils import ContextMainInfo
from chatsky.utils.testing import HAPPY_PATH, TOY_SCRIPT_KWARGS, check_happy_path

from gateway.chatsky import GatewayContextStorage

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "all": {"partial_read_config": {"labels": "__all__", "requests": "__all__", "responses": "__all__"}},
    "rewrite": {"rewrite_existing": True},
}


def happy_paths(url: str) -> dict[str, Any]:
    """Chatsky's own happy-path check in each configuration, then the same path once more under a
    context id of ours (so the caller can find its thread)."""
    contexts = {}
    for name, options in CONFIGURATIONS.items():
        storage = GatewayContextStorage(url, api_key=os.environ.get("GATEWAY_CHATSKY_API_KEY"), **options)
        pipeline = Pipeline(**TOY_SCRIPT_KWARGS, context_storage=storage)
        check_happy_path(pipeline, happy_path=HAPPY_PATH)
        ctx_id = f"happy path {name}"
        for request, expected in HAPPY_PATH:
            context = pipeline(Message.model_validate(request), ctx_id)
            assert context.last_response == Message.model_validate(expected), context.last_response
        contexts[name] = {"contextId": ctx_id, "threadId": storage.thread_id(ctx_id)}
    texts = [[Message.model_validate(turn).text for turn in pair] for pair in HAPPY_PATH]
    return {"contexts": contexts, "happyPath": texts}


def clear_all(url: str) -> dict[str, Any]:
    storage = GatewayContextStorage(url, api_key=os.environ.get("GATEWAY_CHATSKY_API_KEY"))
    asyncio.run(storage.clear_all())
    return {}


async def _storage_promises(url: str) -> dict[str, Any]:
    storage = GatewayContextStorage(url, api_key=os.environ.get("GATEWAY_CHATSKY_API_KEY"))
    await storage.connect()
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(json.loads(request.content)["query"])

    storage._client().http.event_hooks["request"].append(count)
    ctx_id = "Ünïcode / context #1 🙂"
    zeros, not_utf8 = bytes(16), b"\xff\xfe\x00\x80"
    awkward = json.dumps({"text": "a NUL \u0000 and a lone \ud800"}).encode()
    info = ContextMainInfo(current_turn_id=3, created_at=2**63 - 1, updated_at=1, misc={"k": [1, "é"]})

    # A turn's write: the MAIN record and all its items in one request.
    requests = [(1, zeros), (2, not_utf8), (3, awkward)]
    labels = [(0, b"label 0"), (1, b"label 1"), (2, b"label 2"), (3, b"label 3")]
    await storage.update_context(ctx_id, info, [("requests", requests, []), ("labels", labels, [])])
    assert len(sent) == 1, sent
    assert await storage.load_main_info(ctx_id) == info  # nanoseconds exact, misc byte for byte
    assert sorted(await storage.load_field_items(ctx_id, "requests", [1, 2, 3, 4])) == requests

    # The latest items: one request, asking for N only, newest key first.
    storage._subscripts["requests"] = 2
    sent.clear()
    assert await storage.load_field_latest(ctx_id, "requests") == [(3, awkward), (2, not_utf8)]
    assert len(sent) == 1 and "steps(last: $r0_last" in sent[0], sent

    # None deletes exactly that item: a label, never the request at the same key.
    await storage.update_context(ctx_id, None, [("labels", [], [1]), ("requests", [(4, b"4")], [])])
    assert await storage.load_field_keys(ctx_id, "labels") == [0, 2, 3]
    assert await storage.load_field_keys(ctx_id, "requests") == [1, 2, 3, 4]
    assert await storage.load_field_items(ctx_id, "labels", [1]) == []

    # A turn starts with one request: the MAIN record, each field's keys and latest items.
    message, label = Message("hello").model_dump_json().encode(), b'{"flow_name":"f","node_name":"n"}'
    turns = [("labels", [(0, label), (1, label)], []), ("requests", [(1, message)], [])]
    await storage.update_context("turns", ContextMainInfo(current_turn_id=1), turns)
    sent.clear()
    context = await Context.connected(storage, start_label=("flow", "node"), id="turns")
    assert len(sent) == 1, sent
    assert context.current_turn_id == 1 and (await context.requests[1]).text == "hello"

    # Another process recreates a context: a write without the MAIN record then places its items by
    # the context as stored now, not as this storage saw it before (the latest stay the latest).
    other = GatewayContextStorage(url, api_key=os.environ.get("GATEWAY_CHATSKY_API_KEY"))
    first = ContextMainInfo(created_at=4 * 10**18)
    await storage.update_context("again", first, [("requests", [(1, b"a")], [])])
    await other.delete_context("again")
    recreated = ContextMainInfo(current_turn_id=3, created_at=10**18)
    await other.update_context("again", recreated, [("requests", [(2, b"2"), (3, b"3")], [])])
    await storage.update_context("again", None, [("requests", [(1, b"1")], [])])
    assert await storage.load_field_latest("again", "requests") == [(3, b"3"), (2, b"2")]
    await other.close()

    # Any string is a context id, even one the gateway cannot store as text.
    odd_id = "a NUL \u0000, a lone \ud800"
    await storage.update_context(odd_id, info, [("requests", [(1, zeros)], [])])
    assert await storage.load_main_info(odd_id) == info
    assert await storage.load_field_latest(odd_id, "requests") == [(1, zeros)]
    await storage.close()
    odd = {"threadId": storage.thread_id(odd_id), "contextId": odd_id}
    return {"threadId": storage.thread_id(ctx_id), "contextId": ctx_id, "odd": odd}


def storage_promises(url: str) -> dict[str, Any]:
    return asyncio.run(_storage_promises(url))


if __name__ == "__main__":
    url, command = sys.argv[1:3]
    commands = {"happy-paths": happy_paths, "clear-all": clear_all, "storage": storage_promises}
    print(json.dumps(commands[command](url)))
