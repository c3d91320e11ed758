"""A Chatsky context storage that keeps a bot's conversations in the gateway, over GraphQL:

    from chatsky import Pipeline
    from gateway.chatsky import GatewayContextStorage

    storage = GatewayContextStorage("http://127.0.0.1:8000/graphql", api_key="...")
    pipeline = Pipeline(script, start_label, context_storage=storage)

It needs the `chatsky` extra (`pip install 'conversation-gateway[chatsky]'`, Chatsky 0.10); the
gateway itself never imports this module. Each Chatsky context becomes a thread that frontends list,
page, search and rate like any other:

- the thread's id is a UUID derived from the context id (and the storage's `namespace`), so the
  same context id always finds the same thread; its metadata holds the context id
  (`chatskyContextId`; one the gateway cannot store as text, with a NUL or a lone surrogate, is
  there readable and in `chatskyContextIdBase64` exactly, as UTF-8 with surrogates), the
  namespace (`chatskyStorage`) and the MAIN record (`chatskyMain`: the current turn id,
  Chatsky's own created/updated times as integer nanoseconds in decimal strings, `misc` and
  `framework_data` as base64);
- each turn's request is a `user_message` step and each response an `assistant_message` step, a
  label a `chatsky_label` step; a step's `output` is the message's text (the label as
  `flow.node`), and its `metadata.chatsky` holds the field, the key and the item's bytes exactly
  (base64). Steps' `createdAt` is the context's creation time plus three milliseconds a key
  (request, label, response), so the gateway's step order is the turn order whatever order the
  items are written in; `start` is when the item was written;
- one `chatsky_keys` step per field of a context lists the keys of its items that exist, so
  Chatsky's key listing is one small read.

Each read is one GraphQL request (loading many items on demand: one request per 30), and reads
issued together share one (`ReadBatcher`: Chatsky starts a turn with seven reads at once, which go
out as one query the gateway answers with one SQL statement). A turn's write is one request and one
transaction (`applyThreadChanges`), so a turn is stored whole or not at all. (Only a write of more
than 497 items is split, in key order, with the MAIN record in its last part.)
"""

import asyncio
import base64
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chatsky.context_storages.database import DBContextStorage, NameConfig
from chatsky.core.ctx_utils import ContextMainInfo

from gateway.client import DEFAULT_ATTEMPTS, GatewayClient, GatewayError
from gateway.timestamps import format_timestamp

NAMESPACE = uuid.UUID("5f0c7f52-8d53-4b8e-9f0e-6c3b0b1e7a11")  # of the ids this module derives
PAGE = 100  # the gateway's largest page
ALIASES = 30  # the gateway's default GATEWAY_MAX_QUERY_ALIASES
BATCH = 500  # applyThreadChanges' largest batch (the fields' keys steps take three places)
STEP_TYPES = {
    NameConfig._labels_field: "chatsky_label",
    NameConfig._requests_field: "user_message",
    NameConfig._responses_field: "assistant_message",
}
STEP_NAMES = {
    NameConfig._labels_field: "Label",
    NameConfig._requests_field: "User",
    NameConfig._responses_field: "Assistant",
}
# A turn's items in the gateway's order: the request, the label it led to, the response.
TURN_OFFSETS = {NameConfig._requests_field: 0, NameConfig._labels_field: 1, NameConfig._responses_field: 2}
KEYS_STEP_TYPE = "chatsky_keys"

MAIN_FIELD = "thread(id: $id) { metadata }"
KEYS_FIELD = "step(id: $id) { metadata }"
LATEST_FIELD = """thread(id: $id) {
    steps(last: $last, before: $before, filter: {types: $types}) {
      pageInfo { hasPreviousPage startCursor }
      edges { node { metadata } }
    }
  }"""
LATEST_VARIABLES = {"id": "ID!", "last": "Int!", "before": "String", "types": "[String!]"}
ALL = """
query($id: ID!, $after: String, $types: [String!]) {
  thread(id: $id) {
    steps(first: 100, after: $after, filter: {types: $types}) {
      pageInfo { hasNextPage endCursor }
      edges { node { metadata } }
    }
  }
}"""
APPLY = "mutation($input: ThreadChangesInput!) { applyThreadChanges(input: $input) { thread { id } } }"
DELETE = "mutation($id: ID!) { deleteThread(id: $id) { id } }"
LIST = """
query($metadata: JSONObject!) {
  threads(first: 100, filter: {metadata: $metadata}) { edges { node { id } } }
}"""


@dataclass
class _Read:
    """One read of a batch: a root field, its arguments as variables (name: (type, value))."""

    field: str  # with `$name` for each variable; renamed apart when batched
    variables: dict[str, tuple[str, Any]]
    answer: "asyncio.Future[Any]"


@dataclass
class _Batch:
    reads: list[_Read] = field(default_factory=list)


class ReadBatcher:
    """Reads issued together go out as one request, each an aliased root field of one query (which
    the gateway answers with one SQL statement). Chatsky starts a turn with seven reads at once (the
    MAIN record, and each field's keys and latest items): one request instead of seven."""

    TICKS = 3  # loop iterations a batch waits for the reads gathered with it (Chatsky nests gathers)

    def __init__(self, client: Callable[[], GatewayClient]) -> None:
        self.client = client
        self._open: dict[asyncio.AbstractEventLoop, _Batch] = {}
        self._flushing: set[asyncio.Task[None]] = set()

    async def read(self, field_: str, variables: dict[str, tuple[str, Any]]) -> Any:
        loop = asyncio.get_running_loop()
        batch = self._open.get(loop)
        if batch is None:
            batch = self._open[loop] = _Batch()
            task = loop.create_task(self._flush(loop, batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        answer: asyncio.Future[Any] = loop.create_future()
        batch.reads.append(_Read(field_, variables, answer))
        return await answer

    async def _flush(self, loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
        for _ in range(self.TICKS):
            await asyncio.sleep(0)
        del self._open[loop]
        await asyncio.gather(*(self._send(part) for part in _chunks(batch.reads, ALIASES)))

    async def _send(self, reads: Sequence[_Read]) -> None:
        definitions: list[str] = []
        fields: list[str] = []
        values: dict[str, Any] = {}
        for index, read in enumerate(reads):
            text = read.field
            # Longest names first, so that `$id` does not rename the start of `$ids`.
            for name in sorted(read.variables, key=len, reverse=True):
                kind, value = read.variables[name]
                text = text.replace(f"${name}", f"$r{index}_{name}")
                definitions.append(f"$r{index}_{name}: {kind}")
                values[f"r{index}_{name}"] = value
            fields.append(f"r{index}: {text}")
        try:
            data = await self.client().execute(
                f"query({', '.join(definitions)}) {{ {' '.join(fields)} }}", values
            )
        except Exception as error:
            for read in reads:
                if not read.answer.done():
                    read.answer.set_exception(error)
            return
        for index, read in enumerate(reads):
            if not read.answer.done():
                read.answer.set_result(data[f"r{index}"])


def _id(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, json.dumps(parts)))


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _storable(text: str) -> str:
    """Text the gateway stores (no NUL, no lone surrogate): for the readable copy only."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def readable(field_name: str, data: bytes) -> str | None:
    """The text a person reads for an item: a message's text, a label as `flow.node`; None when
    the bytes are no such JSON."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    if field_name == NameConfig._labels_field:
        flow, node = value.get("flow_name"), value.get("node_name")
        return _storable(f"{flow}.{node}") if isinstance(flow, str) and isinstance(node, str) else None
    text = value.get("text")
    return _storable(text) if isinstance(text, str) else None


def _timestamp(milliseconds: int) -> str:
    return format_timestamp(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=milliseconds))


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[start : start + size] for start in range(0, len(items), size))


def _item(step: dict[str, Any] | None, field_name: str) -> tuple[int, bytes] | None:
    """(key, bytes) of an item step; None for no step, or a step that is not this field's item."""
    item = ((step or {}).get("metadata") or {}).get("chatsky")
    if not isinstance(item, dict) or item.get("field") != field_name:
        return None
    return int(item["key"]), _decode(item["data"])


class GatewayContextStorage(DBContextStorage):  # type: ignore[misc]  # chatsky ships no types
    """Chatsky 0.10's `DBContextStorage` over the gateway's GraphQL API (see the module's doc).

    `url` is the GraphQL endpoint; `api_key` a backend's key (None in open development mode).
    `namespace` separates bots sharing a gateway: their context ids map to different threads, and
    `clear_all` removes only the threads of its own namespace."""

    is_concurrent: bool = True

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        rewrite_existing: bool = False,
        partial_read_config: dict[str, Any] | None = None,
        *,
        namespace: str = "chatsky",
        timeout: float = 30.0,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        super().__init__(url, rewrite_existing, partial_read_config)
        self.url, self.api_key, self.namespace = url, api_key, namespace
        self.timeout, self.attempts = timeout, attempts
        self._clients: dict[asyncio.AbstractEventLoop, GatewayClient] = {}
        self._reads = ReadBatcher(self._client)

    # --- the connection: one pooled client per event loop ------------------------------------

    def _client(self) -> GatewayClient:
        """The pooled client of the running loop (Chatsky may run each turn in a loop of its own)."""
        loop = asyncio.get_running_loop()
        for other in [other for other in self._clients if other.is_closed()]:
            del self._clients[other]
        client = self._clients.get(loop)
        if client is None:
            client = GatewayClient(
                self.url, api_key=self.api_key, timeout=self.timeout, attempts=self.attempts
            )
            self._clients[loop] = client
        return client

    async def _connect(self) -> None:
        await self._client().execute("{ __typename }")

    async def close(self) -> None:
        """Close the running loop's connections (the others close with their loops)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()

    # --- ids and records -----------------------------------------------------------------------

    def thread_id(self, ctx_id: str) -> str:
        """The id of the thread holding the context `ctx_id`."""
        return _id(self.namespace, ctx_id)

    def item_step_id(self, ctx_id: str, field_name: str, key: int) -> str:
        return _id(self.namespace, ctx_id, field_name, key)

    def _keys_step_id(self, ctx_id: str, field_name: str) -> str:
        return _id(self.namespace, ctx_id, field_name, "keys")

    def _marker(self, ctx_id: str) -> dict[str, Any]:
        marker = {"chatskyStorage": self.namespace, "chatskyContextId": _storable(ctx_id)}
        if marker["chatskyContextId"] != ctx_id:
            # Text the gateway cannot store (a NUL, a lone surrogate): readable above, exact here.
            marker["chatskyContextIdBase64"] = _encode(ctx_id.encode("utf-8", "surrogatepass"))
        return marker

    @staticmethod
    def _main_record(ctx_info: ContextMainInfo) -> dict[str, Any]:
        dumped = ctx_info.model_dump(mode="python")
        record = {
            "currentTurnId": dumped["current_turn_id"],
            "createdAt": str(dumped["created_at"]),
            "updatedAt": str(dumped["updated_at"]),
            "misc": _encode(dumped["misc"]),
            "frameworkData": _encode(dumped["framework_data"]),
        }
        if dumped.get("origin_interface") is not None:
            record["originInterface"] = dumped["origin_interface"]
        return record

    # --- DBContextStorage ----------------------------------------------------------------------

    async def _load_main_info(self, ctx_id: str) -> ContextMainInfo | None:
        thread = await self._reads.read(MAIN_FIELD, {"id": ("ID!", self.thread_id(ctx_id))})
        record = ((thread or {}).get("metadata") or {}).get("chatskyMain")
        if not isinstance(record, dict):
            return None
        return ContextMainInfo.model_validate(
            {
                "current_turn_id": record["currentTurnId"],
                "created_at": int(record["createdAt"]),
                "updated_at": int(record["updatedAt"]),
                "misc": _decode(record["misc"]),
                "framework_data": _decode(record["frameworkData"]),
                "origin_interface": record.get("originInterface"),
            }
        )

    async def _update_context(
        self,
        ctx_id: str,
        ctx_info: ContextMainInfo | None,
        field_info: list[tuple[str, list[tuple[int, bytes | None]]]],
    ) -> None:
        stored = ctx_info
        if stored is None:
            # Items without the MAIN record: their place in the thread counts from the context's
            # creation as stored now. Read, not remembered: another process may have recreated the
            # context since, and a bot's memory would grow with every context it ever served.
            # (Chatsky's own contexts always write their MAIN record along.)
            stored = await self._load_main_info(ctx_id)
        base = (stored.created_at if stored is not None else 0) // 1_000_000
        now = datetime.now(UTC)
        items: dict[str, tuple[str, int, bytes | None]] = {}  # step id: the last write of an item
        for field_name, field_items in field_info:
            for key, data in field_items:
                items[self.item_step_id(ctx_id, field_name, key)] = (field_name, key, data)
        ordered = sorted(items.items(), key=lambda entry: (entry[1][1], TURN_OFFSETS[entry[1][0]]))
        thread: dict[str, Any] = {"id": self.thread_id(ctx_id), "metadata": self._marker(ctx_id)}
        if ctx_info is not None:
            thread["createdAt"] = _timestamp(ctx_info.created_at // 1_000_000)
        for field_name, key, data in items.values():
            first = readable(field_name, data) if key == 1 and data is not None else None
            if field_name == NameConfig._requests_field and first is not None:
                thread["name"] = first[:200]  # a conversation is named by its first request
        parts = list(_chunks(ordered, BATCH - len(STEP_TYPES))) or [[]]
        for number, part in enumerate(parts):
            upserts: list[dict[str, Any]] = []
            deletes: list[str] = []
            keys: dict[str, dict[str, bool | None]] = {}  # field: {key: True, or None: deleted}
            for step_id, (field_name, key, data) in part:
                keys.setdefault(field_name, {})[str(key)] = None if data is None else True
                if data is None:
                    deletes.append(step_id)
                    continue
                upserts.append(
                    {
                        "id": step_id,
                        "type": STEP_TYPES[field_name],
                        "name": STEP_NAMES[field_name],
                        "output": readable(field_name, data),
                        "createdAt": _timestamp(base + 3 * key + TURN_OFFSETS[field_name]),
                        "start": format_timestamp(now),
                        "metadata": {"chatsky": {"field": field_name, "key": key, "data": _encode(data)}},
                    }
                )
            upserts += [
                {
                    "id": self._keys_step_id(ctx_id, field_name),
                    "type": KEYS_STEP_TYPE,
                    "name": f"Chatsky keys: {field_name}",
                    "createdAt": _timestamp(base),
                    "metadata": field_keys,
                }
                for field_name, field_keys in keys.items()
            ]
            if number == len(parts) - 1 and ctx_info is not None:
                thread["metadata"] = {**self._marker(ctx_id), "chatskyMain": self._main_record(ctx_info)}
            changes = {"thread": thread, "upsertSteps": upserts, "deleteStepIds": deletes}
            await self._client().execute(APPLY, {"input": changes})

    async def _delete_context(self, ctx_id: str) -> None:
        try:
            await self._client().execute(DELETE, {"id": self.thread_id(ctx_id)})
        except GatewayError as error:
            if error.code != "NOT_FOUND":
                raise

    async def _load_field_latest(self, ctx_id: str, field_name: str) -> list[tuple[int, bytes]]:
        subscript = self._subscripts[field_name]
        if isinstance(subscript, int):
            return await self._latest(ctx_id, field_name, subscript)
        if subscript == "__all__":
            found = await self._all(ctx_id, field_name)
        else:
            found = await self._load_field_items(ctx_id, field_name, list(subscript))
        return sorted(found, reverse=True)

    async def _latest(self, ctx_id: str, field_name: str, count: int) -> list[tuple[int, bytes]]:
        """The last `count` items, newest first: one request for up to a page of them."""
        found: list[tuple[int, bytes]] = []
        before: str | None = None
        while len(found) < count:
            variables = {
                "id": self.thread_id(ctx_id),
                "last": min(PAGE, count - len(found)),
                "before": before,
                "types": [STEP_TYPES[field_name]],
            }
            typed = {name: (LATEST_VARIABLES[name], value) for name, value in variables.items()}
            thread = await self._reads.read(LATEST_FIELD, typed)
            if thread is None:
                break
            page = thread["steps"]
            items = [_item(edge["node"], field_name) for edge in page["edges"]]
            found += sorted((item for item in items if item is not None), reverse=True)
            if not page["pageInfo"]["hasPreviousPage"]:
                break
            before = page["pageInfo"]["startCursor"]
        return found

    async def _all(self, ctx_id: str, field_name: str) -> list[tuple[int, bytes]]:
        found: list[tuple[int, bytes]] = []
        after: str | None = None
        while True:
            variables = {"id": self.thread_id(ctx_id), "after": after, "types": [STEP_TYPES[field_name]]}
            thread = (await self._client().execute(ALL, variables))["thread"]
            if thread is None:
                return found
            page = thread["steps"]
            found += [item for edge in page["edges"] if (item := _item(edge["node"], field_name))]
            if not page["pageInfo"]["hasNextPage"]:
                return found
            after = page["pageInfo"]["endCursor"]

    async def _load_field_keys(self, ctx_id: str, field_name: str) -> list[int]:
        keys_step = {"id": ("ID!", self._keys_step_id(ctx_id, field_name))}
        step = await self._reads.read(KEYS_FIELD, keys_step)
        return sorted(int(key) for key in (step or {}).get("metadata") or {})

    async def _load_field_items(
        self, ctx_id: str, field_name: str, keys: list[int]
    ) -> list[tuple[int, bytes]]:
        wanted = sorted(set(keys))
        parts = await asyncio.gather(
            *(self._items(ctx_id, field_name, part) for part in _chunks(wanted, ALIASES))
        )
        return [item for part in parts for item in part]

    async def _items(self, ctx_id: str, field_name: str, keys: Sequence[int]) -> list[tuple[int, bytes]]:
        """The items of these keys that exist, in key order: one request (aliases of `step`)."""
        variables = {
            f"k{index}": self.item_step_id(ctx_id, field_name, key) for index, key in enumerate(keys)
        }
        arguments = ", ".join(f"${name}: ID!" for name in variables)
        fields = " ".join(f"{name}: step(id: ${name}) {{ metadata }}" for name in variables)
        data = await self._client().execute(f"query({arguments}) {{ {fields} }}", variables)
        found = [_item(data[name], field_name) for name in variables]
        return [item for item in found if item is not None]

    async def _clear_all(self) -> None:
        """Delete every context of this storage's namespace (threads only it wrote)."""
        while True:
            data = await self._client().execute(LIST, {"metadata": {"chatskyStorage": self.namespace}})
            ids = [edge["node"]["id"] for edge in data["threads"]["edges"]]
            if not ids:
                return
            await asyncio.gather(*(self._delete_threads(part) for part in _chunks(ids, ALIASES)))

    async def _delete_threads(self, thread_ids: Sequence[str]) -> None:
        variables = {f"t{index}": thread_id for index, thread_id in enumerate(thread_ids)}
        arguments = ", ".join(f"${name}: ID!" for name in variables)
        fields = " ".join(f"{name}: deleteThread(id: ${name}) {{ id }}" for name in variables)
        try:
            await self._client().execute(f"mutation({arguments}) {{ {fields} }}", variables)
        except GatewayError as error:
            if error.code != "NOT_FOUND":  # deleted meanwhile: the next listing goes on
                raise
