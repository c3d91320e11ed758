"""A real Chatsky bot keeps its conversations in a real gateway (`gateway serve`, on each database):
Chatsky's happy-path check passes in three storage configurations, its own context-storage suite
passes, and what the bot stored is a thread that any client reads, pages and rates over GraphQL.

Chatsky runs in processes of their own (tests/chatsky_driver.py, tests/chatsky_suite/): importing
it applies `nest_asyncio` to the whole process."""

import base64
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.migrate import upgrade_database
from tests.conftest import IN_CI, TEST_API_KEY, create_postgres_database, drop_postgres_database, new_uuid
from tests.test_cli import REPO, SERVER_START_TIMEOUT, Server, _env, _free_port, _wait_until_healthy

CHATSKY_INSTALLED = importlib.util.find_spec("chatsky") is not None
NOT_INSTALLED = "Chatsky is not installed (pip install -e '.[chatsky]'; the test extra includes it)"
pytestmark = pytest.mark.skipif(not CHATSKY_INSTALLED and not IN_CI, reason=NOT_INSTALLED)
CHATSKY_TIMEOUT = 120
KEY = {"Authorization": f"Bearer {TEST_API_KEY}"}
THREAD = """
query($id: ID!) {
  thread(id: $id) {
    id name metadata
    steps(first: 100, filter: {types: ["user_message", "assistant_message"]}) {
      edges { node { id type name output metadata feedback { value comment } } }
    }
    labels: steps(first: 100, filter: {types: ["chatsky_label"]}) { edges { node { output } } }
  }
}"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def gateway_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """`gateway serve` on a fresh database, with a backend API key; its GraphQL URL."""
    if not CHATSKY_INSTALLED:
        pytest.fail(NOT_INSTALLED + " (CI=true: the Chatsky tests must run)")
    with tempfile.TemporaryDirectory() as directory:
        if request.param == "sqlite":
            database_url = f"sqlite+aiosqlite:///{Path(directory) / 'chatsky.db'}"
        else:
            database_url = await create_postgres_database("gateway_chatsky")
        await upgrade_database(database_url)
        server, url = _serve(directory, database_url)
        try:
            yield url
        finally:
            server.stop()
            if request.param == "postgresql":
                await drop_postgres_database(database_url)


def _serve(directory: str, database_url: str) -> tuple[Server, str]:
    port = _free_port()
    settings = {
        "database_url": database_url,
        "storage_url": f"file://{Path(directory) / 'files'}",
        "port": str(port),
        "api_keys": TEST_API_KEY,
        "compiled_reads_verify": "true",
        "auto_migrate": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"],
        cwd=directory,
        env=_env(**settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(process)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        _wait_until_healthy(client, server, SERVER_START_TIMEOUT)
    return server, f"http://127.0.0.1:{port}/graphql"


def run_chatsky(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GATEWAY_CHATSKY_URL": url, "GATEWAY_CHATSKY_API_KEY": TEST_API_KEY}
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHATSKY_TIMEOUT,
        check=False,
    )


def graphql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    response = httpx.post(url, json={"query": query, "variables": variables}, headers=KEY, timeout=10)
    body = response.json()
    assert response.status_code == 200 and not body.get("errors"), body
    data: dict[str, Any] = body["data"]
    return data


def test_a_chatsky_bots_conversations_are_threads_of_the_gateway(gateway_url: str) -> None:
    other = new_uuid()
    graphql(
        gateway_url,
        'mutation($id: ID!) { upsertThread(input: {id: $id, name: "not Chatsky\'s"}) { id } }',
        id=other,
    )

    ran = run_chatsky(gateway_url, "-m", "tests.chatsky_driver", gateway_url, "happy-paths")
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    happy_path = report["happyPath"]
    for name, context in report["contexts"].items():
        thread = graphql(gateway_url, THREAD, id=context["threadId"])["thread"]
        assert thread is not None, name
        assert thread["metadata"]["chatskyContextId"] == context["contextId"]
        assert thread["metadata"]["chatskyMain"]["currentTurnId"] == len(happy_path)
        assert thread["name"] == happy_path[0][0]  # named by its first request
        steps = [edge["node"] for edge in thread["steps"]["edges"]]
        # The turns in order: each request a user message, each response an assistant message.
        assert [(step["type"], step["output"]) for step in steps] == [
            (kind, text)
            for request, response in happy_path
            for kind, text in (("user_message", request), ("assistant_message", response))
        ], name
        assert [step["metadata"]["chatsky"]["key"] for step in steps] == [
            key for key in range(1, len(happy_path) + 1) for _ in "qa"
        ]
        labels = [edge["node"]["output"] for edge in thread["labels"]["edges"]]
        assert len(labels) == len(happy_path) + 1  # and the start label, label 0, first
        assert labels[0] == "greeting_flow.start_node", labels  # readable as `flow.node`
        assert all(label.startswith("greeting_flow.") for label in labels), labels

        # A frontend rates the bot's answer like any other.
        answer = steps[1]["id"]
        graphql(
            gateway_url,
            'mutation($id: ID!) { upsertFeedback(input: {forId: $id, value: 0, comment: "rude"}) { id } }',
            id=answer,
        )
        rated = graphql(gateway_url, THREAD, id=context["threadId"])["thread"]["steps"]["edges"][1]["node"]
        assert rated["feedback"] == {"value": 0, "comment": "rude"}

    listed = graphql(
        gateway_url,
        "query($m: JSONObject!) { threads(filter: {metadata: $m}) { totalCount } }",
        m={"chatskyStorage": "chatsky"},
    )
    assert listed["threads"]["totalCount"] >= len(report["contexts"])

    # Clearing the storage removes Chatsky's threads, never the gateway's others.
    cleared = run_chatsky(gateway_url, "-m", "tests.chatsky_driver", gateway_url, "clear-all")
    assert cleared.returncode == 0, cleared.stderr
    for context in report["contexts"].values():
        assert graphql(gateway_url, THREAD, id=context["threadId"])["thread"] is None
    assert graphql(gateway_url, "query($id: ID!) { thread(id: $id) { name } }", id=other)["thread"] == {
        "name": "not Chatsky's"
    }


def test_items_are_kept_byte_for_byte_and_read_back_as_text(gateway_url: str) -> None:
    ran = run_chatsky(gateway_url, "-m", "tests.chatsky_driver", gateway_url, "storage")
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout.strip().splitlines()[-1])
    thread = graphql(gateway_url, THREAD, id=report["threadId"])["thread"]
    assert thread["metadata"]["chatskyContextId"] == report["contextId"]
    assert thread["metadata"]["chatskyMain"]["createdAt"] == str(2**63 - 1)
    outputs = [edge["node"]["output"] for edge in thread["steps"]["edges"]]
    # Bytes that are no message have no text; a text the gateway cannot store as it is (a NUL, a
    # lone surrogate) is readable with replacement characters, its bytes kept exactly.
    assert outputs == [None, None, "a NUL \ufffd and a lone ?", None]
    labels = [edge["node"]["output"] for edge in thread["labels"]["edges"]]
    assert labels == [None, None, None]  # label 1 deleted; these bytes are no label
    # A context id the gateway cannot store as text: readable, and exact in base64.
    odd = graphql(gateway_url, THREAD, id=report["odd"]["threadId"])["thread"]["metadata"]
    assert odd["chatskyContextId"] == "a NUL \ufffd, a lone ?"
    exact = base64.b64decode(odd["chatskyContextIdBase64"]).decode("utf-8", "surrogatepass")
    assert exact == report["odd"]["contextId"] == "a NUL \u0000, a lone \ud800"


def test_chatskys_own_context_storage_suite(gateway_url: str) -> None:
    suite = "tests/chatsky_suite/context_storages.py"
    ran = run_chatsky(gateway_url, "-m", "pytest", "-p", "no:cacheprovider", "-q", suite)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "14 passed" in ran.stdout, ran.stdout
