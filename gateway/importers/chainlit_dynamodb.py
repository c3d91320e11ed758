"""`gateway import chainlit-dynamodb`: a table written by Chainlit's `DynamoDBDataLayer`.

Its single-table layout: `PK`/`SK` pairs `USER#<identifier>`/`USER`, `THREAD#<id>`/`THREAD`,
`THREAD#<id>`/`STEP#<id>` (a step's feedback inside its item) and `THREAD#<id>`/`ELEMENT#<id>`, and
the `UserThread` index (`UserThreadPK` `USER#<identifier>`). In that layer a user's id is their
identifier; here users get a UUID of their own (name-based, so a second import finds the same),
and a user who already exists (by identifier) keeps theirs.

The table is read with aioboto3 page by page: a scan for the users, a scan for the threads, and
for each thread a query of its partition (`LastEvaluatedKey` followed everywhere), so memory holds
one page and one thread. Elements keep their object keys and URLs; with `copy_objects` their S3
objects are copied into the gateway's store, under the same keys.
"""

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

import aioboto3
from boto3.dynamodb.types import TypeDeserializer

from gateway.data.transfer import ELEMENT_COLUMNS, STEP_COLUMNS, Row
from gateway.ids import normalize_id
from gateway.timestamps import display_timestamp
from gateway.transfer import ImportRun, ObjectSource, ThreadRecord

NAMESPACE = uuid.UUID("0d9f7c3e-5b1a-4e8f-b2c4-7a6e1f3d9c21")  # of the ids this importer derives
TIMESTAMPS = ("createdAt", "start", "end")
_deserializer = TypeDeserializer()


def _plain(value: Any) -> Any:
    """DynamoDB's numbers (Decimal) as int or float, sets as lists, throughout."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | set | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def _item(raw: dict[str, Any]) -> dict[str, Any]:
    return {key: _plain(_deserializer.deserialize(value)) for key, value in raw.items()}


def uuid_of(value: str, kind: str) -> str:
    """The id itself when it is a UUID (Chainlit makes uuid4s), else a name-based UUID of it."""
    try:
        return normalize_id(value)
    except ValueError:
        return str(uuid.uuid5(NAMESPACE, f"{kind}\x1f{value}"))


def user_uuid(identifier: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"user\x1f{identifier}"))


def _timestamps(row: Row) -> Row:
    for name in TIMESTAMPS:
        if isinstance(row.get(name), str):
            row[name] = display_timestamp(row[name])
    return row


def _bucket_of(url: str | None) -> str | None:
    """The bucket of Chainlit's S3 URL `https://<bucket>.s3.<endpoint>/<key>`."""
    host = urlparse(url or "").hostname or ""
    return host.split(".s3.", 1)[0] if ".s3." in host else None


class DynamoTable:
    def __init__(
        self,
        table: str,
        *,
        region: str | None,
        endpoint_url: str | None,
        s3_endpoint_url: str | None,
        bucket: str | None,
    ) -> None:
        self.table, self.region, self.endpoint_url = table, region, endpoint_url
        self.s3_endpoint_url, self.bucket = s3_endpoint_url or endpoint_url, bucket
        self.session = aioboto3.Session()

    async def _pages(
        self, client: Any, operation: str, **arguments: Any
    ) -> AsyncIterator[list[dict[str, Any]]]:
        start: dict[str, Any] = {}
        while True:
            answer = await getattr(client, operation)(TableName=self.table, **arguments, **start)
            yield [_item(raw) for raw in answer.get("Items", [])]
            if "LastEvaluatedKey" not in answer:
                return
            start = {"ExclusiveStartKey": answer["LastEvaluatedKey"]}

    async def count_threads(self, client: Any) -> int:
        total = 0
        start: dict[str, Any] = {}
        while True:
            answer = await client.scan(
                TableName=self.table,
                Select="COUNT",
                FilterExpression="SK = :thread",
                ExpressionAttributeValues={":thread": {"S": "THREAD"}},
                **start,
            )
            total += int(answer.get("Count", 0))
            if "LastEvaluatedKey" not in answer:
                return total
            start = {"ExclusiveStartKey": answer["LastEvaluatedKey"]}

    def users(self, client: Any) -> AsyncIterator[list[dict[str, Any]]]:
        return self._pages(
            client, "scan", FilterExpression="SK = :user", ExpressionAttributeValues={":user": {"S": "USER"}}
        )

    def threads(self, client: Any) -> AsyncIterator[list[dict[str, Any]]]:
        return self._pages(
            client,
            "scan",
            FilterExpression="SK = :thread",
            ExpressionAttributeValues={":thread": {"S": "THREAD"}},
        )

    async def partition(self, client: Any, pk: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        async for page in self._pages(
            client,
            "query",
            KeyConditionExpression="PK = :pk",
            ExpressionAttributeValues={":pk": {"S": pk}},
        ):
            items += page
        return items

    def object_source(self, s3: Any, bucket: str, key: str) -> ObjectSource:
        async def read() -> AsyncIterator[bytes]:
            answer = await s3.get_object(Bucket=bucket, Key=key)
            body = answer["Body"]
            try:
                async for chunk in body.iter_chunks(1024 * 1024):
                    yield chunk
            finally:
                body.close()

        return read


def thread_record(header: dict[str, Any], items: list[dict[str, Any]]) -> ThreadRecord:
    """One thread's items (its partition) as rows."""
    raw_id = str(header["PK"]).removeprefix("THREAD#")
    thread_id = uuid_of(raw_id, "thread")
    step_ids: dict[str, str] = {}
    steps: list[Row] = []
    feedback: list[Row] = []
    elements: list[Row] = []
    for item in items:
        if str(item["SK"]).startswith("STEP#"):
            step_ids[str(item.get("id") or item["SK"].removeprefix("STEP#"))] = ""
    for raw in step_ids:
        step_ids[raw] = uuid_of(raw, "step")
    activity = [display_timestamp(header.get("createdAt")) or ""]
    for item in items:
        kind = str(item["SK"])
        if kind.startswith("STEP#"):
            raw = str(item.get("id") or kind.removeprefix("STEP#"))
            row = _timestamps({name: item[name] for name in STEP_COLUMNS if name in item})
            row["id"] = step_ids[raw]
            row.setdefault("name", "")
            row.setdefault("type", "undefined")
            row["streaming"] = bool(row.get("streaming", False))
            if row.get("parentId"):
                row["parentId"] = step_ids.get(row["parentId"]) or uuid_of(str(row["parentId"]), "step")
            row.pop("threadId", None)
            steps.append(row)
            activity += [row.get(name) or "" for name in TIMESTAMPS]
            rating = item.get("feedback")
            if isinstance(rating, dict) and rating.get("value") is not None:
                feedback.append(
                    {
                        "id": uuid_of(str(rating.get("id") or f"feedback:{raw}"), "feedback"),
                        "forId": row["id"],
                        "value": int(rating["value"]),
                        "comment": rating.get("comment"),
                    }
                )
        elif kind.startswith("ELEMENT#"):
            raw = str(item.get("id") or kind.removeprefix("ELEMENT#"))
            row = {name: item[name] for name in ELEMENT_COLUMNS if name in item}
            row["id"] = uuid_of(raw, "element")
            row["name"] = str(row.get("name") or "")
            if row.get("forId"):
                row["forId"] = step_ids.get(row["forId"]) or uuid_of(str(row["forId"]), "step")
            if row.get("size") is not None:
                row["size"] = str(row["size"])
            extras = {key: item[key] for key in ("autoPlay", "playerConfig") if item.get(key) is not None}
            if extras:
                row["props"] = {**(row.get("props") or {}), **extras}
            row.pop("threadId", None)
            elements.append(row)
    owner = header.get("userId") or header.get("userIdentifier")
    metadata = header.get("metadata") or {}
    if thread_id != raw_id:
        metadata = {**metadata, "chainlit_thread_id": raw_id}
    thread = {
        "id": thread_id,
        "name": header.get("name"),
        "createdAt": display_timestamp(header.get("createdAt")),
        "updatedAt": max(activity) or None,
        "userId": user_uuid(str(owner)) if owner else None,
        "userIdentifier": str(owner) if owner else None,
        "tags": header.get("tags"),
        "metadata": metadata,
    }
    # Chainlit's update_thread rewrites createdAt on every call: the oldest step is older.
    first_step = min((row["createdAt"] for row in steps if row.get("createdAt")), default=None)
    if first_step is not None and (thread["createdAt"] is None or first_step < thread["createdAt"]):
        thread["createdAt"] = first_step
    return ThreadRecord(thread=thread, steps=steps, elements=elements, feedback=feedback)


async def import_chainlit_dynamodb(run: ImportRun, source: DynamoTable, *, copy_objects: bool) -> None:
    dynamo_options = {"region_name": source.region, "endpoint_url": source.endpoint_url}
    async with source.session.client("dynamodb", **dynamo_options) as client:
        s3_options = {"region_name": source.region, "endpoint_url": source.s3_endpoint_url}
        async with source.session.client("s3", **s3_options) as s3:
            async for page in source.users(client):
                for item in page:
                    identifier = str(item.get("identifier") or str(item["PK"]).removeprefix("USER#"))
                    user = {
                        "id": user_uuid(identifier),
                        "identifier": identifier,
                        "metadata": item.get("metadata") or {},
                        "createdAt": display_timestamp(item.get("createdAt")),
                    }
                    await run.user(user, f"item {item['PK']}")
            phase = run.reporter.phase(
                "import chainlit-dynamodb", total=await source.count_threads(client), unit="threads"
            )
            async for page in source.threads(client):
                for header in page:
                    items = await source.partition(client, str(header["PK"]))
                    record = thread_record(header, items)
                    if copy_objects:
                        for element in record.elements:
                            bucket = source.bucket or _bucket_of(element.get("url"))
                            if element.get("objectKey") and bucket:
                                record.objects[element["id"]] = source.object_source(
                                    s3, bucket, element["objectKey"]
                                )
                    await run.submit(record, f"item {header['PK']}")
                    phase.advance(1, note=f"{run.tallies['steps'].total:,} steps")
            await run.finish()
            phase.finish()
