"""A Chatsky bot using the gateway as its context storage, run in a process of its own by
tests/test_chatsky.py (importing Chatsky applies `nest_asyncio` to the whole process, which the
gateway's own tests must not run under).

    python -m tests.chatsky_driver URL happy-paths   # prints what it did, as JSON
    python -m tests.chatsky_driver URL clear-all
"""

import asyncio
import json
import os
import sys
from typing import Any

from chatsky import Message, Pipeline
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


if __name__ == "__main__":
    url, command = sys.argv[1:3]
    print(json.dumps({"happy-paths": happy_paths, "clear-all": clear_all}[command](url)))
