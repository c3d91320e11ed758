"""`gateway import chainlit-dynamodb`: a table written by Chainlit's own `DynamoDBDataLayer` (and its
`S3StorageClient` for element bytes) against moto's server over HTTP, imported through the CLI and
read back through GraphQL, on SQLite and PostgreSQL."""

import os
import tempfile

# Importing chainlit writes `.chainlit/config.toml` and `.files/` under the app root: a scratch one.
os.environ.setdefault("CHAINLIT_APP_ROOT", tempfile.mkdtemp(prefix="chainlit-app-"))

import uuid
from pathlib import Path
from typing import Any

import boto3
import chainlit as cl
from chainlit.context import init_http_context
from chainlit.data.dynamodb import DynamoDBDataLayer
from chainlit.data.storage_clients.s3 import S3StorageClient
from chainlit.types import Feedback
from chainlit.user import User
from chainlit.utils import utc_now

from tests.conftest import Api, S3Server, new_uuid
from tests.test_transfer import gateway

READ = """
query($id: ID!) {
  thread(id: $id) {
    name tags metadata createdAt user { identifier metadata }
    steps(first: 10) { edges { node { id type name output parentId feedback { value comment } } } }
    elements(first: 5) { edges { node { id name mime objectKey sizeBytes forId } } }
  }
}"""


def create_table(s3: S3Server, name: str) -> None:
    """The table as Chainlit's documentation creates it: PK/SK, and the UserThread index."""
    client = boto3.client("dynamodb", endpoint_url=s3.url, region_name="us-east-1")
    client.create_table(
        TableName=name,
        AttributeDefinitions=[
            {"AttributeName": attribute, "AttributeType": "S"}
            for attribute in ("PK", "SK", "UserThreadPK", "UserThreadSK")
        ],
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "UserThread",
                "KeySchema": [
                    {"AttributeName": "UserThreadPK", "KeyType": "HASH"},
                    {"AttributeName": "UserThreadSK", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["id", "name"]},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def step(thread_id: str, kind: str, output: str, **fields: Any) -> dict[str, Any]:
    now = utc_now()
    return {
        "id": new_uuid(),
        "threadId": thread_id,
        "type": kind,
        "name": kind,
        "output": output,
        "input": "",
        "createdAt": now,
        "start": now,
        "end": now,
        "streaming": False,
        "metadata": {"n": 1.5},
        **fields,
    }


async def write_with_chainlit(s3: S3Server, table: str, bucket: str) -> dict[str, Any]:
    client = boto3.client("dynamodb", endpoint_url=s3.url, region_name="us-east-1")
    storage = S3StorageClient(bucket=bucket, endpoint_url=s3.url, region_name="us-east-1")
    layer = DynamoDBDataLayer(table_name=table, client=client, storage_provider=storage)
    user = await layer.create_user(User(identifier="ada@example.com", metadata={"role": "admin"}))
    assert user is not None
    thread_id = new_uuid()
    init_http_context(thread_id=thread_id, user=user)
    await layer.update_thread(
        thread_id, name="Dynamo chat ✓", user_id=user.id, metadata={"env": "prod"}, tags=["a", "b"]
    )
    question = step(thread_id, "user_message", "Bonjour ?")
    answer = step(thread_id, "assistant_message", "Salut !")
    tool = step(thread_id, "tool", "42", parentId=answer["id"])
    for item in (question, answer, tool):
        await layer.create_step(item)  # type: ignore[arg-type]
    await layer.update_step({**answer, "output": "Salut, ça va ?"})  # type: ignore[typeddict-item]
    await layer.upsert_feedback(Feedback(forId=answer["id"], threadId=thread_id, value=1, comment="top"))
    text = cl.Text(content="some notes", name="notes.txt", for_id=answer["id"], thread_id=thread_id)
    text.mime = "text/plain"
    await layer.create_element(text)
    return {"thread": thread_id, "question": question, "answer": answer, "tool": tool, "element": text.id}


async def test_a_chainlit_dynamodb_table_becomes_users_threads_steps_feedback_and_elements(
    api: Api, database_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    table, bucket = f"chainlit-{uuid.uuid4().hex[:8]}", f"app-{uuid.uuid4().hex[:8]}"
    create_table(s3_server, table)
    s3_server.client().create_bucket(Bucket=bucket)
    written = await write_with_chainlit(s3_server, table, bucket)
    store = tmp_path / "store"
    arguments = ("import", "chainlit-dynamodb", "--table", table, "--region", "us-east-1")
    arguments += ("--endpoint-url", s3_server.url, "--copy-objects")
    result = await gateway(*arguments, database_url=database_url, storage_url=f"file://{store}")
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "users: 1 created" in stderr and "threads: 1 created" in stderr
    assert (
        "steps: 3 created" in stderr and "feedback: 1 created" in stderr and "elements: 1 created" in stderr
    )

    thread = (await api.ok(READ, id=written["thread"]))["thread"]
    assert thread["name"] == "Dynamo chat ✓"
    assert thread["tags"] == ["a", "b"] and thread["metadata"] == {"env": "prod"}
    assert thread["user"] == {"identifier": "ada@example.com", "metadata": {"role": "admin"}}
    steps = {edge["node"]["id"]: edge["node"] for edge in thread["steps"]["edges"]}
    assert steps[written["question"]["id"]]["output"] == "Bonjour ?"
    answer = steps[written["answer"]["id"]]
    assert answer["output"] == "Salut, ça va ?"
    assert answer["feedback"] == {"value": 1, "comment": "top"}
    assert steps[written["tool"]["id"]]["parentId"] == written["answer"]["id"]
    [element] = [edge["node"] for edge in thread["elements"]["edges"]]
    key = f"ada@example.com/{written['thread']}/{written['element']}"  # Chainlit's own key
    assert (element["id"], element["objectKey"], element["forId"]) == (
        written["element"],
        key,
        written["answer"]["id"],
    )
    assert element["sizeBytes"] == len(b"some notes")
    assert (store / key).read_bytes() == b"some notes"  # copied into the gateway's store

    # Again: nothing changes.
    result = await gateway(*arguments, database_url=database_url, storage_url=f"file://{store}")
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "users: 0 created, 0 updated, 1 unchanged" in stderr
    assert "threads: 0 created, 0 updated, 1 unchanged, 0 failed" in stderr


async def test_a_missing_table_is_named(database_url: str, s3_server: S3Server) -> None:
    result = await gateway(
        "import",
        "chainlit-dynamodb",
        "--table",
        "no-such-table",
        "--region",
        "us-east-1",
        "--endpoint-url",
        s3_server.url,
        database_url=database_url,
    )
    assert result.returncode == 1
    assert b"cannot read the DynamoDB table 'no-such-table'" in result.stderr
