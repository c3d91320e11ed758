"""`gateway import llm`: the `llm` CLI's SQLite log (logs.db) as threads and steps.

llm 0.36 logs to content-addressed tables: `threads` (a tip message), `turns` (one model call: the
messages after `parent_message_hash` up to `tip_message_hash`, with model, options, usage),
`messages` (a chain by `parent_hash`, with a role) and their `parts` (text, reasoning, tool_call,
tool_result, attachment). Logs of earlier versions hold `conversations` and `responses` (with
`tool_calls`, `tool_results`, `prompt_attachments`) instead. Both are read; the file is opened
read-only and never migrated.

Each user message becomes a `user_message` step (the system prompt in its metadata, attachments
as elements); each assistant message an `assistant_message` step (the text, the turn's model,
options and token usage in `generation`), its tool calls child `tool` steps, their results the
output of those. llm's ids are ULIDs: a thread's and a turn's (or response's) 128 bits become the
UUID of the thread and of the assistant step, bit for bit (so they sort by time as the ULIDs do),
and the original id stays in metadata. Other steps get name-based UUIDs (uuid5) of what they come
from, so importing a grown log again finds the same ids and adds only what is new.
"""

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.data.transfer import Row
from gateway.timestamps import format_timestamp
from gateway.transfer import ImportRun, ObjectSource, ThreadRecord

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
NAMESPACE = uuid.UUID("6f0b1d0e-8a52-4c1e-9a39-3f1b8c7d2e10")  # of the ids this importer derives


def default_log_path() -> Path:
    """Where llm keeps its log: $LLM_USER_PATH/logs.db, else its app directory (as llm finds it)."""
    import os

    import click

    base = os.environ.get("LLM_USER_PATH")
    return Path(base or click.get_app_dir("io.datasette.llm")) / "logs.db"


def ulid_to_uuid(ulid: str) -> str:
    """The UUID with the same 128 bits as the ULID (Crockford base32, any case): time order kept."""
    if len(ulid) != 26:
        raise ValueError(f"{ulid!r} is not a ULID")
    value = 0
    for char in ulid.upper():
        digit = CROCKFORD.find(char)
        if digit < 0:
            raise ValueError(f"{ulid!r} is not a ULID")
        value = value * 32 + digit
    if value >= 1 << 128:
        raise ValueError(f"{ulid!r} is not a ULID")
    return str(uuid.UUID(int=value))


def derived_id(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "\x1f".join(parts)))


def id_of(llm_id: str, *context: str) -> str:
    """A ULID's own bits; an id of any other form, a name-based UUID."""
    try:
        return ulid_to_uuid(llm_id)
    except ValueError:
        return derived_id(*context, llm_id)


def moment(text: str | None) -> datetime | None:
    """llm's timestamps (ISO-8601, with or without a zone, `T` or a space): UTC."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _column(row: sqlite3.Row, name: str) -> Any:
    """The column's value, None where this version of the log has no such column."""
    return row[name] if name in row.keys() else None  # noqa: SIM118 - `in row` tests the values


def _loads(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class _Clock:
    """Steps' createdAt: the time of what they come from, each at least 1 ms after the previous
    (steps are ordered by createdAt, and a turn's steps must keep the chain's order)."""

    last: datetime | None = None

    def at(self, when: datetime | None) -> str:
        when = when or self.last or datetime(1970, 1, 1, tzinfo=UTC)
        if self.last is not None and when <= self.last:
            when = self.last + timedelta(milliseconds=1)
        when = when.replace(microsecond=when.microsecond // 1000 * 1000)
        if self.last is not None and when <= self.last:
            when = self.last + timedelta(milliseconds=1)
        self.last = when
        return format_timestamp(when)


@dataclass
class _Conversation:
    """What one llm thread (or legacy conversation) becomes, built step by step."""

    thread_id: str
    clock: _Clock = field(default_factory=_Clock)
    steps: list[Row] = field(default_factory=list)
    elements: list[Row] = field(default_factory=list)
    objects: dict[str, ObjectSource] = field(default_factory=dict)
    tool_steps: dict[str, Row] = field(default_factory=dict)  # tool_call_id: its step
    last_assistant: Row | None = None

    def step(self, step_id: str, kind: str, name: str, when: datetime | None, **fields: Any) -> Row:
        created = self.clock.at(when)
        row = {
            "id": step_id,
            "type": kind,
            "name": name,
            "createdAt": created,
            "start": created,
            "end": created,
            "streaming": False,
            **fields,
        }
        self.steps.append(row)
        if kind == "assistant_message":
            self.last_assistant = row
        return row

    def tool_call(
        self, step_id: str, name: str, arguments: Any, call_id: str | None, when: datetime | None
    ) -> None:
        parent = self.last_assistant["id"] if self.last_assistant else None
        row = self.step(
            step_id,
            "tool",
            name or "tool",
            when,
            parentId=parent,
            input=arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False),
            metadata={"llm": {"tool_call_id": call_id}} if call_id else None,
        )
        if call_id:
            self.tool_steps[call_id] = row

    def tool_result(
        self,
        step_id: str,
        name: str,
        output: Any,
        call_id: str | None,
        exception: str | None,
        when: datetime | None,
    ) -> None:
        text = output if isinstance(output, str) or output is None else json.dumps(output, ensure_ascii=False)
        called = self.tool_steps.get(call_id or "")
        if called is None:
            parent = self.last_assistant["id"] if self.last_assistant else None
            called = self.step(step_id, "tool", name or "tool", when, parentId=parent)
        called["output"] = text
        if exception:
            called["isError"] = True
            called["metadata"] = {**(called.get("metadata") or {}), "exception": exception}

    def attachment(self, element_id: str, row: sqlite3.Row, for_id: str, created: str) -> None:
        content = row["content"]
        name = Path(row["path"]).name if row["path"] else (row["url"] or f"attachment-{row['id'][:12]}")
        self.elements.append(
            {
                "id": element_id,
                "forId": for_id,
                "type": "file",
                "name": name[:1024],
                "display": "inline",
                "mime": row["type"],
                "url": row["url"] if content is None else None,
                "props": {"llm": {"attachment_id": row["id"], "path": row["path"]}},
                "createdAt": created,
            }
        )
        if content is not None:
            data = bytes(content)

            async def source() -> AsyncIterator[bytes]:
                yield data

            self.objects[element_id] = source


def _generation(turn: sqlite3.Row | None, llm_id_key: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """`generation` and metadata of an assistant step from its turn (or legacy response)."""
    if turn is None:
        return None, {}
    generation: dict[str, Any] = {"type": "CHAT", "provider": "llm", "model": turn["model"]}
    if _column(turn, "resolved_model"):
        generation["resolvedModel"] = turn["resolved_model"]
    options = _loads(turn["options_json"])
    if options:
        generation["settings"] = options
    for column, name in (("input_tokens", "inputTokenCount"), ("output_tokens", "outputTokenCount")):
        if turn[column] is not None:
            generation[name] = turn[column]
    if turn["input_tokens"] is not None or turn["output_tokens"] is not None:
        generation["tokenCount"] = (turn["input_tokens"] or 0) + (turn["output_tokens"] or 0)
    details = _loads(turn["token_details"])
    if details:
        generation["tokenDetails"] = details
    if turn["duration_ms"] is not None:
        generation["duration"] = turn["duration_ms"] / 1000
    return generation, {"llm": {llm_id_key: turn["id"]}}


class LlmLog:
    """A read-only view of a logs.db."""

    def __init__(self, path: Path) -> None:
        # Read-only, never migrated; used from one worker thread at a time (asyncio.to_thread).
        self.connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        self.connection.row_factory = sqlite3.Row
        self.tables = {
            row[0] for row in self.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }

    def close(self) -> None:
        self.connection.close()

    def _rows(self, sql: str, parameters: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        return list(self.connection.execute(sql, parameters))

    def _has(self, *tables: str) -> bool:
        return all(table in self.tables for table in tables)

    def count(self) -> int:
        total = 0
        if self._has("threads", "turns"):
            total += self._rows("SELECT count(*) FROM threads")[0][0]
        if self._has("responses"):
            total += self._rows(
                "SELECT count(DISTINCT coalesce(conversation_id, 'response:' || id)) FROM responses"
            )[0][0]
        return int(total)

    # llm 0.36: threads, turns, messages, parts.

    def thread_ids(self) -> Iterator[str]:
        if not self._has("threads", "turns", "messages", "parts"):
            return
        after = ""
        while page := self._rows("SELECT id FROM threads WHERE id > ? ORDER BY id LIMIT 500", (after,)):
            yield from (row["id"] for row in page)
            after = page[-1]["id"]

    def thread(self, llm_thread_id: str) -> ThreadRecord | None:
        [thread] = self._rows("SELECT * FROM threads WHERE id = ?", (llm_thread_id,))
        chain = self._rows(
            """
            WITH RECURSIVE chain(hash, parent_hash, role, depth) AS (
                SELECT hash, parent_hash, role, 0 FROM messages WHERE hash = ?
                UNION ALL
                SELECT m.hash, m.parent_hash, m.role, chain.depth + 1
                FROM messages m JOIN chain ON m.hash = chain.parent_hash
            )
            SELECT hash, parent_hash, role FROM chain ORDER BY depth DESC
            """,
            (thread["tip_message_hash"],),
        )
        turns = self._rows(
            "SELECT * FROM turns WHERE thread_id = ? ORDER BY datetime_utc, id", (llm_thread_id,)
        )
        position = {row["hash"]: index for index, row in enumerate(chain)}
        # Each message belongs to the first turn (in chain order) whose tip is at or after it.
        ends = sorted(
            (
                (position[turn["tip_message_hash"]], index)
                for index, turn in enumerate(turns)
                if turn["tip_message_hash"] in position
            )
        )
        parts = self._parts([row["hash"] for row in chain])
        thread_id = id_of(llm_thread_id, "thread")
        conversation = _Conversation(thread_id)
        started = moment(thread["datetime_utc"])
        system: list[str] = []
        first_of_turn: set[int] = set()
        for index, message in enumerate(chain):
            turn_number = next((number for end, number in ends if end >= index), len(turns) - 1)
            turn = turns[turn_number] if turns else None
            when = moment(turn["datetime_utc"]) if turn is not None else started
            message_parts = parts.get(message["hash"], [])
            texts = [text for kind, text, _ in message_parts if kind == "text" and text is not None]
            step_id = derived_id("message", thread_id, message["hash"])
            if message["role"] == "system":
                system.append("".join(texts))
                continue
            if message["role"] == "user":
                row = conversation.step(
                    step_id,
                    "user_message",
                    "user",
                    when,
                    output="".join(texts),
                    metadata={
                        "llm": {"message_hash": message["hash"]},
                        **({"system": "\n".join(system)} if system else {}),
                    },
                )
                system = []
                for number, (kind, _, payload) in enumerate(message_parts):
                    if kind == "attachment" and payload and payload.get("attachment"):
                        self._attach(conversation, payload["attachment"].get("id"), row, number)
                continue
            if message["role"] == "assistant":
                if turn is not None and turn_number not in first_of_turn:
                    first_of_turn.add(turn_number)
                    step_id = id_of(turn["id"], "turn")
                    generation, metadata = _generation(turn, "turn_id")
                else:
                    generation, metadata = (None, {"llm": {}})
                metadata["llm"]["message_hash"] = message["hash"]
                reasoning = [text for kind, text, _ in message_parts if kind == "reasoning" and text]
                if reasoning:
                    metadata["reasoning"] = "\n".join(reasoning)
                duration = timedelta(seconds=(generation or {}).get("duration", 0))
                row = conversation.step(
                    step_id,
                    "assistant_message",
                    (turn["model"] if turn is not None else None) or "assistant",
                    when,
                    output="".join(texts),
                    generation=generation,
                    metadata=metadata,
                )
                row["end"] = format_timestamp(datetime.fromisoformat(row["start"]) + duration)
            for number, (kind, _, payload) in enumerate(message_parts):
                payload = payload or {}
                part_id = derived_id("part", thread_id, message["hash"], str(number))
                if kind == "tool_call":
                    conversation.tool_call(
                        part_id,
                        payload.get("name", ""),
                        payload.get("arguments"),
                        payload.get("tool_call_id"),
                        when,
                    )
                elif kind == "tool_result":
                    conversation.tool_result(
                        part_id,
                        payload.get("name", ""),
                        payload.get("output"),
                        payload.get("tool_call_id"),
                        payload.get("exception"),
                        when,
                    )
        # The thread row is written when its first turn is logged, after the turn started.
        moments = [format_timestamp(started)] if started else []
        created = min([*moments, *(step["createdAt"] for step in conversation.steps[:1])], default=None)
        turn_times = [when for when in (moment(turn["datetime_utc"]) for turn in turns) if when is not None]
        last_turn = max(turn_times, default=started)
        thread_metadata: dict[str, Any] = {"llm": {"thread_id": llm_thread_id}}
        if turns:
            thread_metadata["model"] = turns[-1]["model"]
        if thread["forked_from"]:
            thread_metadata["llm"]["forked_from"] = thread["forked_from"]
        return ThreadRecord(
            thread={
                "id": thread_id,
                "name": thread["name"],
                "createdAt": created,
                "updatedAt": format_timestamp(last_turn) if last_turn else created,
                "metadata": thread_metadata,
                "tags": ["llm"],
            },
            steps=conversation.steps,
            elements=conversation.elements,
            objects=conversation.objects,
        )

    def _parts(self, hashes: list[str]) -> dict[str, list[tuple[str, str | None, dict[str, Any] | None]]]:
        """Each message's parts in order: (type, text with fragments resolved, payload)."""
        found: dict[str, list[tuple[str, str | None, dict[str, Any] | None]]] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._rows(
                f"SELECT * FROM parts WHERE message_hash IN ({marks}) ORDER BY message_hash, position", chunk
            ):
                payload = _loads(row["payload"]) if row["payload"] else None
                text = row["text"]
                if text is None and isinstance(payload, dict):
                    if "text_ref" in payload:
                        text = "".join(
                            piece.get("literal", "")
                            if "literal" in piece
                            else self._fragment(piece["fragment"])
                            for piece in payload["text_ref"]
                        )
                    else:
                        text = payload.get("text")
                found.setdefault(row["message_hash"], []).append((row["type"], text, payload))
        return found

    def _fragment(self, fragment_id: int) -> str:
        rows = self._rows("SELECT content FROM fragments WHERE id = ?", (fragment_id,))
        return str(rows[0]["content"]) if rows else ""

    def _attach(self, conversation: _Conversation, attachment_id: str | None, step: Row, number: int) -> None:
        if not attachment_id or not self._has("attachments"):
            return
        rows = self._rows("SELECT * FROM attachments WHERE id = ?", (attachment_id,))
        if rows:
            element_id = derived_id("attachment", step["id"], attachment_id, str(number))
            conversation.attachment(element_id, rows[0], step["id"], step["createdAt"])

    # Earlier versions: conversations and responses.

    def conversation_keys(self) -> Iterator[str]:
        """Legacy conversations (responses without one are a conversation each), except those
        the newer tables also hold."""
        if not self._has("responses"):
            return
        newer = self._has("threads")
        after = ""
        while page := self._rows(
            "SELECT DISTINCT coalesce(conversation_id, 'response:' || id) AS key FROM responses "
            "WHERE coalesce(conversation_id, 'response:' || id) > ? ORDER BY key LIMIT 500",
            (after,),
        ):
            for row in page:
                if newer and self._rows("SELECT 1 FROM threads WHERE id = ?", (row["key"],)):
                    continue
                yield row["key"]
            after = page[-1]["key"]

    def conversation(self, key: str) -> ThreadRecord:
        if key.startswith("response:"):
            responses = self._rows("SELECT * FROM responses WHERE id = ?", (key.removeprefix("response:"),))
            named: sqlite3.Row | None = None
            llm_id = responses[0]["id"]
        else:
            responses = self._rows(
                "SELECT * FROM responses WHERE conversation_id = ? ORDER BY datetime_utc, id", (key,)
            )
            found = (
                self._rows("SELECT * FROM conversations WHERE id = ?", (key,))
                if self._has("conversations")
                else []
            )
            named = found[0] if found else None
            llm_id = key
        thread_id = id_of(llm_id, "conversation")
        conversation = _Conversation(thread_id)
        for response in responses:
            when = moment(response["datetime_utc"])
            user = conversation.step(
                derived_id("prompt", thread_id, response["id"]),
                "user_message",
                "user",
                when,
                output=response["prompt"] or "",
                metadata={
                    "llm": {"response_id": response["id"]},
                    **({"system": response["system"]} if response["system"] else {}),
                },
            )
            if self._has("prompt_attachments", "attachments"):
                for number, attached in enumerate(
                    self._rows(
                        'SELECT attachment_id FROM prompt_attachments WHERE response_id = ? ORDER BY "order"',
                        (response["id"],),
                    )
                ):
                    self._attach(conversation, attached["attachment_id"], user, number)
            generation, metadata = _generation(response, "response_id")
            if _column(response, "reasoning"):
                metadata["reasoning"] = response["reasoning"]
            assistant = conversation.step(
                id_of(response["id"], "response"),
                "assistant_message",
                response["model"] or "assistant",
                when,
                output=response["response"] or "",
                generation=generation,
                metadata=metadata,
            )
            duration = timedelta(milliseconds=response["duration_ms"] or 0)
            assistant["end"] = format_timestamp(datetime.fromisoformat(assistant["start"]) + duration)
            if self._has("tool_calls"):
                for call in self._rows(
                    "SELECT * FROM tool_calls WHERE response_id = ? ORDER BY id", (response["id"],)
                ):
                    conversation.tool_call(
                        derived_id("tool_call", thread_id, str(call["id"])),
                        call["name"],
                        _loads(call["arguments"]),
                        call["tool_call_id"],
                        when,
                    )
            if self._has("tool_results"):
                for result in self._rows(
                    "SELECT * FROM tool_results WHERE response_id = ? ORDER BY id", (response["id"],)
                ):
                    conversation.tool_result(
                        derived_id("tool_result", thread_id, str(result["id"])),
                        result["name"],
                        result["output"],
                        result["tool_call_id"],
                        _column(result, "exception"),
                        when,
                    )
        created = conversation.steps[0]["createdAt"] if conversation.steps else None
        times = [when for when in (moment(response["datetime_utc"]) for response in responses) if when]
        last = max(times, default=None)
        model = (named["model"] if named is not None else None) or (
            responses[-1]["model"] if responses else None
        )
        conversation_metadata: dict[str, Any] = {"llm": {"conversation_id": llm_id}}
        if model:
            conversation_metadata["model"] = model
        return ThreadRecord(
            thread={
                "id": thread_id,
                "name": (named["name"] if named is not None else None)
                or (responses[0]["prompt"] or "")[:60]
                or None,
                "createdAt": created,
                "updatedAt": format_timestamp(last) if last else created,
                "metadata": conversation_metadata,
                "tags": ["llm"],
            },
            steps=conversation.steps,
            elements=conversation.elements,
            objects=conversation.objects,
        )


async def import_llm_log(run: ImportRun, path: Path) -> None:
    """Import every thread and legacy conversation of the log, one transaction each."""
    log = LlmLog(path)
    try:
        phase = run.reporter.phase("import llm", total=log.count(), unit="threads")
        for llm_thread_id in list(log.thread_ids()):
            record = await asyncio.to_thread(log.thread, llm_thread_id)
            if record is not None:
                await run.submit(record, f"llm thread {llm_thread_id}")
            phase.advance(1, note=f"{run.tallies['steps'].total:,} steps")
        for key in list(log.conversation_keys()):
            record = await asyncio.to_thread(log.conversation, key)
            await run.submit(record, f"llm conversation {key.removeprefix('response:')}")
            phase.advance(1, note=f"{run.tallies['steps'].total:,} steps")
        await run.finish()
        phase.finish()
    finally:
        log.close()
