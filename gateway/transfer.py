"""`gateway export` and `gateway import`: conversations as JSON Lines, and the one import path
every source (a JSONL file, the `llm` CLI's log, Chainlit's DynamoDB table) goes through.

The format (version 1, documented in the README): a first line `{"format": "conversation-gateway",
"version": 1}`; then `user` lines; then one `thread` line per thread, holding its steps (nesting
kept by `parentId`), elements and feedback. Column names are the tables' own. Both ways stream:
memory holds a page of threads when exporting, one thread when importing.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import orjson
from pydantic import AfterValidator, ConfigDict, ValidationError, create_model
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from gateway.data import object_deletions
from gateway.data import transfer as data
from gateway.data.transfer import Row, Tally, ThreadSelection
from gateway.database import Database
from gateway.errors import GatewayError
from gateway.ids import normalize_id
from gateway.jsonops import to_json_bytes
from gateway.progress import Reporter
from gateway.storage import ObjectStore
from gateway.tables import UUIDText, elements_table, feedbacks_table, steps_table, threads_table, users_table
from gateway.timestamps import utc_now
from gateway.validation import value_problem

FORMAT = "conversation-gateway"
VERSION = 1
HEADER = {"format": FORMAT, "version": VERSION}
EXPORT_PAGE = 50
WRITERS_AT_ONCE = 4
FILES_SUBDIRECTORY = "elements"
KINDS = ("users", "threads", "steps", "elements", "feedback")
MAX_PROBLEMS_SHOWN = 1000

ObjectSource = Callable[[], AsyncIterator[bytes]]


# The lines' shapes, made from the tables: a field a column, strict types (nothing coerced, so
# what is imported is what was exported), ids checked as UUIDs, unknown fields refused.


def _checked_id(value: str) -> str:
    try:
        return normalize_id(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a UUID") from None


def _checked_timestamp(value: str) -> str:
    """An ISO-8601 timestamp, kept as written (ordering compares the stored text)."""
    try:
        datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO-8601 timestamp") from None
    return value


TIMESTAMP_COLUMNS = ("createdAt", "updatedAt", "start", "end")


def _line_model(name: str, table: Any, model: Any, *, leave_out: tuple[str, ...] = (), **extra: Any) -> Any:
    fields: dict[str, Any] = {}
    for info in model.model_fields.values():
        column = table.c[info.sa_column.name]
        if column.name in leave_out:
            continue
        annotation = info.annotation
        if isinstance(column.type, UUIDText):
            checked = Annotated[str, AfterValidator(_checked_id)]
            annotation = checked if column.primary_key or not column.nullable else checked | None
        elif column.name in TIMESTAMP_COLUMNS:
            annotation = Annotated[str, AfterValidator(_checked_timestamp)] | None
        default = ... if info.is_required() else info.get_default(call_default_factory=True)
        fields[column.name] = (annotation, default)
    fields.update(extra)
    return create_model(name, __config__=ConfigDict(extra="forbid", strict=True), **fields)


def _models() -> dict[str, Any]:
    from gateway.tables import Element, Feedback, Step, Thread, User

    step = _line_model("StepLine", steps_table, Step, leave_out=("threadId",))
    element = _line_model(
        "ElementLine", elements_table, Element, leave_out=("threadId",), file=(str | None, None)
    )
    feedback = _line_model("FeedbackLine", feedbacks_table, Feedback, leave_out=("threadId",))
    thread = _line_model(
        "ThreadLine",
        threads_table,
        Thread,
        type=(str, ...),
        steps=(list[step], []),  # type: ignore[valid-type]
        elements=(list[element], []),  # type: ignore[valid-type]
        feedback=(list[feedback], []),  # type: ignore[valid-type]
    )
    user = _line_model("UserLine", users_table, User, type=(str, ...))
    return {"thread": thread, "user": user}


LINE_MODELS = _models()


class ObjectNotStored(GatewayError):
    code = "OBJECT_NOT_STORED"


@dataclass
class ThreadRecord:
    """A thread to import, with its contents as rows (column names), and where the bytes of its
    elements come from (element id: a source), if they are to be stored."""

    thread: Row
    steps: list[Row] = field(default_factory=list)
    elements: list[Row] = field(default_factory=list)
    feedback: list[Row] = field(default_factory=list)
    objects: dict[str, ObjectSource] = field(default_factory=dict)


def _problem_text(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'line'}: {item['msg']}"
            for item in error.errors()[:5]
        )
    if isinstance(error, GatewayError):
        return error.message
    if isinstance(error, StatementError):
        cause = getattr(error, "orig", None) or error
        text = str(cause).strip()
        return text.splitlines()[-1] if text else type(cause).__name__
    return f"{type(error).__name__}: {error}"


class ImportRun:
    """Writes users and threads, one transaction each, counting what happened; a thread that
    fails (a constraint, bytes that cannot be stored) writes nothing and is reported by where it
    came from, and the rest goes on."""

    def __init__(self, db: Database, store: ObjectStore | None, reporter: Reporter) -> None:
        self.db, self.store, self.reporter = db, store, reporter
        self.tallies = {kind: Tally() for kind in KINDS}
        self.problems = 0
        self.user_ids: dict[str, str] = {}  # a line's user id: the stored one, where they differ
        self.objects_to_delete = False
        # PostgreSQL writes several threads at once (each in its own transaction), so one is parsed
        # and checked while the other is written; SQLite has a single writer.
        self.parallel = WRITERS_AT_ONCE if db.dialect_name == "postgresql" else 1
        self._writing: dict[asyncio.Task[None], set[str]] = {}  # each with the ids it writes
        if db.dialect_name == "postgresql":
            # An import commits once per thread: not waiting for each commit's WAL flush makes it
            # several times faster. A crash of the server may lose the last commits, never half of
            # one, and running the import again (idempotent) puts them back.
            event.listen(db.engine.sync_engine, "connect", _relaxed_commits)

    def problem(self, where: str, reason: str) -> None:
        self.problems += 1
        if self.problems <= MAX_PROBLEMS_SHOWN:
            self.reporter.line(f"{where}: {reason}")
        elif self.problems == MAX_PROBLEMS_SHOWN + 1:
            self.reporter.line("more problems: only their count is shown in the summary")

    def fail_thread(self, record: ThreadRecord, where: str, reason: str) -> None:
        self.problem(where, reason)
        self.tallies["threads"].failed += 1
        self.tallies["steps"].failed += len(record.steps)
        self.tallies["elements"].failed += len(record.elements)
        self.tallies["feedback"].failed += len(record.feedback)

    async def submit(self, record: "ThreadRecord", where: str) -> None:
        """Write the thread (`thread`), at most `parallel` at once; `finish` waits for the rest. A
        thread sharing an id with one being written waits for it: the earlier line wins."""
        if self.parallel <= 1:
            await self.thread(record, where)
            return
        ids = {record.thread["id"]} | {
            row["id"] for rows in (record.steps, record.elements, record.feedback) for row in rows
        }
        while len(self._writing) >= self.parallel or any(ids & other for other in self._writing.values()):
            done, _ = await asyncio.wait(self._writing, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                del self._writing[task]
                task.result()  # a lost connection stops the import
        self._writing[asyncio.create_task(self.thread(record, where))] = ids

    async def finish(self) -> None:
        writing, self._writing = self._writing, {}
        for task in writing:
            await task

    async def user(self, user: Row, where: str) -> None:
        await self.finish()  # threads before this line are written before it
        try:
            async with self.db.transaction() as session:
                stored_id, outcome = await data.write_user(session, user=user)
        except (IntegrityError, DBAPIError) as error:
            if _connection_lost(error):
                raise
            self.problem(where, f"user {user.get('identifier')!r}: {_problem_text(error)}")
            self.tallies["users"].failed += 1
            return
        if stored_id != user["id"]:
            self.user_ids[user["id"]] = stored_id
        setattr(self.tallies["users"], outcome, getattr(self.tallies["users"], outcome) + 1)

    async def thread(self, record: ThreadRecord, where: str) -> None:
        thread = record.thread
        if thread.get("userId") in self.user_ids:
            thread["userId"] = self.user_ids[thread["userId"]]
        stored_keys: list[str] = []  # the objects this attempt stored (or began to)
        try:
            if record.objects:
                await self._store_objects(record, stored_keys)
            async with self.db.transaction() as session:
                written = await data.write_thread(
                    session,
                    thread=thread,
                    steps=[{**row, "threadId": thread["id"]} for row in record.steps],
                    elements=[{**row, "threadId": thread["id"]} for row in record.elements],
                    feedback=[{**row, "threadId": thread["id"]} for row in record.feedback],
                )
                if written.orphaned_keys and self.store is not None:
                    await object_deletions.enqueue_deletions(
                        session, object_keys=written.orphaned_keys, store=self.store.location, now=utc_now()
                    )
                    self.objects_to_delete = True
        except (GatewayError, StatementError, OSError, ValueError) as error:
            if isinstance(error, DBAPIError) and _connection_lost(error):
                raise
            await self._forget_unnamed(stored_keys)
            self.fail_thread(record, where, f"thread {thread.get('id')}: {_problem_text(error)}")
            return
        for kind, tally in (
            ("threads", written.threads),
            ("steps", written.steps),
            ("elements", written.elements),
            ("feedback", written.feedback),
        ):
            self.tallies[kind].add(tally)

    async def _forget_unnamed(self, object_keys: list[str]) -> None:
        """The thread was not written: its objects that no stored element names go to the deletion
        outbox (an older copy of the thread may name some of them: those stay)."""
        if not object_keys or self.store is None:
            return
        async with self.db.transaction() as session:
            named = await data.object_keys_named(session, object_keys=object_keys)
            unnamed = [key for key in dict.fromkeys(object_keys) if key not in named]
            await object_deletions.enqueue_deletions(
                session, object_keys=unnamed, store=self.store.location, now=utc_now()
            )
        self.objects_to_delete = self.objects_to_delete or bool(unnamed)

    async def _store_objects(self, record: ThreadRecord, stored_keys: list[str]) -> None:
        """Store the elements' bytes (before their rows, as an upload does), under the keys they
        had, unless the thread is already here in this version or a newer one. Each key that held
        no object yet is added to `stored_keys` before its bytes are sent (a store may keep part of
        a failed put); an object that was there (another app's, say) is never this import's to
        delete."""
        if self.store is None:
            return
        async with self.db.session() as session:
            if await data.thread_is_current(session, thread=record.thread):
                return
        for element in record.elements:
            source = record.objects.get(element["id"])
            if source is None:
                continue
            if not element.get("objectKey"):
                # The same key every time the thread is imported: a newer copy overwrites the bytes.
                element["objectKey"] = (
                    f"{self.store.key_prefix}threads/{record.thread['id']}/elements/{element['id']}"
                )
            try:
                if await self.store.size(element["objectKey"]) is None:
                    stored_keys.append(element["objectKey"])
                element["sizeBytes"] = await self.store.put(
                    element["objectKey"], source(), content_type=element.get("mime"), max_bytes=2**62
                )
            except Exception as error:  # the source or the store: this thread fails, the rest goes on
                raise ObjectNotStored(
                    f"element {element['id']}: its bytes could not be stored: {_problem_text(error)}"
                ) from error

    def summary(self, title: str) -> None:
        self.reporter.summary(title, self.tallies)
        if self.problems:
            self.reporter.line(f"{self.problems} problem(s), listed above; the rest was imported")


def _relaxed_commits(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET synchronous_commit TO off")
    cursor.close()


def _connection_lost(error: DBAPIError) -> bool:
    """An error of the connection, not of the rows: stop (running again resumes), rather than
    failing every thread that follows."""
    return bool(error.connection_invalidated) or isinstance(error.orig, OSError | ConnectionError)


def _file_reader(path: Path) -> ObjectSource:
    async def read() -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, 1024 * 1024):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    return read


def _inside(directory: Path, relative: str) -> Path:
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise ValueError(f"file {relative!r} is outside {directory}")
    return path


async def import_jsonl(
    run: ImportRun, lines: Iterable[bytes], *, files: Path | None, size: int | None
) -> None:
    """Import the lines of an export (a file or stdin); problems are reported by line number."""
    phase = run.reporter.phase("import", total=size, unit="bytes" if size is not None else "lines")
    header_seen = False
    for number, raw in enumerate(lines, start=1):
        phase.advance(len(raw) if size is not None else 1)
        where = f"line {number}"
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            run.problem(where, f"not JSON: {error}")
            run.tallies["threads"].failed += 1
            continue
        if not isinstance(item, dict):
            run.problem(where, "not a JSON object")
            continue
        if not header_seen:
            if item.get("format") != FORMAT:
                run.problem(where, f"the first line must be the header {orjson.dumps(HEADER).decode()}")
                return
            if item.get("version") != VERSION:
                run.problem(
                    where,
                    f"unknown format version {item.get('version')!r}: this gateway reads version {VERSION}",
                )
                return
            header_seen = True
            continue
        kind = item.get("type")
        model = LINE_MODELS.get(kind) if isinstance(kind, str) else None
        if model is None:
            run.problem(where, f"unknown line type {kind!r} (expected 'user' or 'thread')")
            continue
        try:
            parsed = model.model_validate(item).model_dump()
        except ValidationError as error:
            run.problem(where, f"{kind} {item.get('id')}: {_problem_text(error)}")
            run.tallies["threads" if kind == "thread" else "users"].failed += 1
            continue
        if b"\\u0000" in raw and (found := value_problem(parsed, str(kind))) is not None:
            # SQLite would store it and PostgreSQL refuse it: refused on both, as the API does.
            run.problem(where, f"{kind} {parsed.get('id')}: `{found[0]}`: {found[1]}")
            run.tallies["threads" if kind == "thread" else "users"].failed += 1
            continue
        parsed.pop("type")
        if kind == "user":
            await run.user(parsed, where)
            continue
        record = ThreadRecord(
            thread=parsed,
            steps=parsed.pop("steps"),
            elements=parsed.pop("elements"),
            feedback=parsed.pop("feedback"),
        )
        for element in record.elements:
            name = element.pop("file")
            if name is not None and files is not None:
                try:
                    record.objects[element["id"]] = _file_reader(_inside(files, name))
                except ValueError as error:
                    run.problem(where, f"element {element['id']}: {error}")
        await run.submit(record, where)
        steps = run.tallies["steps"].total
        phase.note = f"{run.tallies['threads'].total:,} threads, {steps:,} steps ({phase.rate(steps):,.0f}/s)"
    await run.finish()
    phase.finish()
    if not header_seen:
        run.problem(
            "line 1", f"empty input: the first line must be the header {orjson.dumps(HEADER).decode()}"
        )


@dataclass
class ExportResult:
    users: int = 0
    threads: int = 0
    steps: int = 0
    elements: int = 0
    feedback: int = 0
    files: int = 0
    problems: int = 0

    def counts(self) -> dict[str, int]:
        return {kind: getattr(self, kind) for kind in KINDS}


def _line(kind: str, row: Row) -> bytes:
    return to_json_bytes({"type": kind, **row}) + b"\n"


def _without_thread(rows: list[Row]) -> list[Row]:
    for row in rows:
        del row["threadId"]
    return rows


async def export_jsonl(
    db: Database,
    store: ObjectStore | None,
    out: BinaryIO,
    *,
    selection: ThreadSelection,
    files: Path | None,
    reporter: Reporter,
) -> ExportResult:
    """Write the selected users and threads as JSON Lines, a page of threads at a time; with
    `files`, each element's stored bytes are copied there and its line names the file."""
    result = ExportResult()
    out.write(to_json_bytes(HEADER) + b"\n")
    async with db.session() as session:
        total = await data.count_threads(session, selection=selection)
    after_user: str | None = None
    while True:
        async with db.session() as session:
            users = await data.user_page(session, selection=selection, after=after_user, limit=500)
        for user in users:
            out.write(_line("user", user))
        result.users += len(users)
        if len(users) < 500:
            break
        after_user = users[-1]["identifier"]
    phase = reporter.phase("export", total=total, unit="threads")
    after: tuple[str, str] | None = None
    while True:
        async with db.session() as session:
            threads = await data.thread_page(session, selection=selection, after=after, limit=EXPORT_PAGE)
            ids = [thread["id"] for thread in threads]
            steps, elements, feedback = await data.contents_of_threads(session, thread_ids=ids)
        for thread in threads:
            thread_elements = _without_thread(elements[thread["id"]])
            if files is not None and store is not None:
                for element in thread_elements:
                    element["file"] = await _copy_out(store, element, files, reporter, result)
            line = {
                **thread,
                "steps": _without_thread(steps[thread["id"]]),
                "elements": thread_elements,
                "feedback": _without_thread(feedback[thread["id"]]),
            }
            out.write(_line("thread", line))
            result.steps += len(line["steps"])
            result.elements += len(thread_elements)
            result.feedback += len(line["feedback"])
        result.threads += len(threads)
        phase.advance(len(threads), note=f"{result.threads:,}/{total:,} threads, {result.steps:,} steps")
        if len(threads) < EXPORT_PAGE:
            break
        after = (threads[-1]["createdAt"], threads[-1]["id"])
    phase.finish()
    out.flush()
    return result


async def _copy_out(
    store: ObjectStore, element: Row, files: Path, reporter: Reporter, result: ExportResult
) -> str | None:
    """Copy the element's stored bytes to `files`/elements/<id>; the name, or None without them."""
    if not element.get("objectKey"):
        return None
    name = f"{FILES_SUBDIRECTORY}/{element['id']}"
    path = files / name
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        handle = await asyncio.to_thread(partial.open, "wb")
        try:
            async for chunk in store.read(element["objectKey"]):
                await asyncio.to_thread(handle.write, chunk)
        finally:
            await asyncio.to_thread(handle.close)
        await asyncio.to_thread(os.replace, partial, path)
    except Exception as error:
        await asyncio.to_thread(partial.unlink, True)
        result.problems += 1
        reporter.line(
            f"element {element['id']}: its stored object {element['objectKey']!r} was not copied: {error}"
        )
        return None
    result.files += 1
    return name
