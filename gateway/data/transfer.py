"""Whole threads in and out, for `gateway export`, `gateway import` and retention: threads page by
page with everything that hangs off them (one statement per table and page), a thread written
whole in one transaction (one multi-row statement per table), and threads past a retention age.

These run with the database's own credentials (operator tools): no caller's access applies.
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data.common import dialect_insert, dialect_name
from gateway.errors import Conflict
from gateway.tables import UUIDText, elements_table, feedbacks_table, steps_table, threads_table, users_table

Row = dict[str, Any]
THREAD_COLUMNS = tuple(column.name for column in threads_table.c)
STEP_COLUMNS = tuple(column.name for column in steps_table.c)
ELEMENT_COLUMNS = tuple(column.name for column in elements_table.c)
FEEDBACK_COLUMNS = tuple(column.name for column in feedbacks_table.c)
USER_COLUMNS = tuple(column.name for column in users_table.c)
TABLES = {table.name: table for table in (threads_table, steps_table, elements_table, feedbacks_table)}


@dataclass(frozen=True)
class ThreadSelection:
    """Which threads an export (or a prune) takes: one user's (by identifier), and last active
    (`updatedAt`) at or after `since` and before `until`."""

    user_identifier: str | None = None
    since: str | None = None
    until: str | None = None

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        threads = threads_table.c
        conditions: list[sa.ColumnElement[bool]] = []
        if self.user_identifier is not None:
            owner = sa.select(users_table.c.id).where(users_table.c.identifier == self.user_identifier)
            conditions.append(threads.userId.in_(owner.scalar_subquery()))
        if self.since is not None:
            conditions.append(threads.updatedAt >= self.since)
        if self.until is not None:
            conditions.append(threads.updatedAt < self.until)
        return conditions


def _as_dict(row: Any) -> Row:
    """A Core row as a dict by column name."""
    return dict(row._mapping)


def _position(moment: str, thread_id: str) -> Any:
    """A keyset position (a timestamp, a thread id), typed as the columns it is compared with."""
    return sa.tuple_(sa.literal(moment, sa.Text()), sa.literal(thread_id, UUIDText()))


async def count_threads(session: AsyncSession, *, selection: ThreadSelection) -> int:
    statement = sa.select(sa.func.count()).select_from(threads_table).where(*selection.conditions())
    return int((await session.execute(statement)).scalar_one())


async def user_page(
    session: AsyncSession, *, selection: ThreadSelection, after: str | None, limit: int
) -> list[Row]:
    """Users in identifier order after `after`: with a time window, only owners of selected
    threads; with a user, that user; otherwise every user (also those without threads)."""
    users = users_table.c
    conditions: list[sa.ColumnElement[bool]] = []
    if selection.user_identifier is not None:
        conditions.append(users.identifier == selection.user_identifier)
    if selection.since is not None or selection.until is not None:
        owners = sa.select(threads_table.c.userId).where(*selection.conditions())
        conditions.append(users.id.in_(owners.scalar_subquery()))
    if after is not None:
        conditions.append(users.identifier > after)
    statement = sa.select(*users_table.c).where(*conditions).order_by(users.identifier).limit(limit)
    return [_as_dict(row) for row in await session.execute(statement)]


async def thread_page(
    session: AsyncSession, *, selection: ThreadSelection, after: tuple[str, str] | None, limit: int
) -> list[Row]:
    """Threads in (createdAt, id) order after `after`: a stable order, so an export is repeatable."""
    threads = threads_table.c
    conditions = selection.conditions()
    if after is not None:
        conditions.append(sa.tuple_(threads.createdAt, threads.id) > _position(*after))
    statement = (
        sa.select(*threads_table.c).where(*conditions).order_by(threads.createdAt, threads.id).limit(limit)
    )
    return [_as_dict(row) for row in await session.execute(statement)]


async def _children(
    session: AsyncSession, table: sa.Table, thread_ids: Sequence[str], order: Sequence[sa.Column[Any]]
) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = {thread_id: [] for thread_id in thread_ids}
    statement = sa.select(*table.c).where(table.c.threadId.in_(list(thread_ids))).order_by(*order)
    for row in await session.execute(statement):
        grouped[row.threadId].append(_as_dict(row))
    return grouped


async def contents_of_threads(
    session: AsyncSession, *, thread_ids: Sequence[str]
) -> tuple[dict[str, list[Row]], dict[str, list[Row]], dict[str, list[Row]]]:
    """The threads' steps, elements and feedback, each oldest first, one statement per table."""
    steps = await _children(session, steps_table, thread_ids, (steps_table.c.createdAt, steps_table.c.id))
    elements = await _children(
        session, elements_table, thread_ids, (elements_table.c.createdAt, elements_table.c.id)
    )
    feedback = await _children(session, feedbacks_table, thread_ids, (feedbacks_table.c.id,))
    return steps, elements, feedback


@dataclass
class Tally:
    """What an import did to rows of one kind."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0

    def add(self, other: "Tally") -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.failed += other.failed

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged + self.failed


@dataclass
class ThreadWritten:
    """What writing one thread did: per kind, and the stored objects no row names any more."""

    threads: Tally = field(default_factory=Tally)
    steps: Tally = field(default_factory=Tally)
    elements: Tally = field(default_factory=Tally)
    feedback: Tally = field(default_factory=Tally)
    orphaned_keys: list[str] = field(default_factory=list)
    skipped: bool = False  # the database holds this copy of the thread, or a newer one


async def write_user(session: AsyncSession, *, user: Row) -> tuple[str, str]:
    """Create the user, or bring its metadata up to the line's, keyed by identifier (a user who
    already signed in has an id of their own); returns (the stored id, created|updated|unchanged)."""
    users = users_table.c
    stored = (
        await session.execute(
            sa.select(users.id, users.metadata).where(users.identifier == user["identifier"])
        )
    ).first()
    if stored is None:
        await session.execute(sa.insert(users_table).values({name: user.get(name) for name in USER_COLUMNS}))
        return user["id"], "created"
    if stored.metadata == user["metadata"]:
        return stored.id, "unchanged"
    await session.execute(
        sa.update(users_table).where(users.id == stored.id).values(metadata=user["metadata"])
    )
    return stored.id, "updated"


@functools.cache
def _upsert(dialect: str, table_name: str) -> Any:
    """INSERT .. ON CONFLICT (id) DO UPDATE of every column but the id, only where a value differs
    and the row is the same thread's; RETURNING the ids written (new or changed). The rows come as
    parameters (one multi-row statement); built once per database and table."""
    table = TABLES[table_name]
    statement = dialect_insert(dialect, table)
    set_ = {
        column.name: statement.excluded[column.name]
        for column in table.c
        if column.name not in ("id", "threadId")
    }
    where = sa.and_(
        table.c.threadId == statement.excluded.threadId,
        sa.or_(*[table.c[name].is_distinct_from(value) for name, value in set_.items()]),
    )
    statement = statement.on_conflict_do_update(index_elements=[table.c.id], set_=set_, where=where)
    return statement.returning(table.c.id)


@functools.cache
def _upsert_thread(dialect: str) -> Any:
    """INSERT .. ON CONFLICT (id) DO UPDATE of every column of a thread (the row as parameters)."""
    statement = dialect_insert(dialect, threads_table)
    set_ = {name: statement.excluded[name] for name in THREAD_COLUMNS if name != "id"}
    return statement.on_conflict_do_update(index_elements=[threads_table.c.id], set_=set_)


@functools.cache
def _ids_of_thread() -> Any:
    """Each table's ids of the thread `thread_id` (a parameter), tagged by table, in one statement."""
    thread_id = sa.bindparam("thread_id", type_=UUIDText())
    return sa.union_all(
        *(
            sa.select(sa.literal(table.name).label("kind"), table.c.id).where(table.c.threadId == thread_id)
            for table in (feedbacks_table, steps_table, elements_table)
        )
    )


async def _write_children(
    session: AsyncSession,
    *,
    table: sa.Table,
    columns: Sequence[str],
    existing: set[str],
    rows: list[Row],
) -> tuple[Tally, list[Row]]:
    """Make the thread's rows of `table` (those now `existing`) the ones given: stale ones deleted
    (returned), the others upserted in one multi-row statement. A row whose id another thread holds
    fails the thread."""
    given = {row["id"] for row in rows}
    stale_ids = sorted(existing - given)
    stale: list[Row] = []
    if stale_ids:
        returning = [table.c.id] + ([table.c.objectKey] if "objectKey" in table.c else [])
        for start in range(0, len(stale_ids), 1000):
            deleted = sa.delete(table).where(table.c.id.in_(stale_ids[start : start + 1000]))
            stale += [_as_dict(row) for row in await session.execute(deleted.returning(*returning))]
    tally = Tally()
    if not rows:
        return tally, stale
    parameters = [{name: row.get(name) for name in columns} for row in rows]
    statement = _upsert(dialect_name(session), table.name)
    written = set((await session.execute(statement, parameters)).scalars())
    for row_id in given:
        if row_id in written:
            if row_id in existing:
                tally.updated += 1
            else:
                tally.created += 1
        elif row_id in existing:
            tally.unchanged += 1
        else:
            raise Conflict(f"{table.name[:-1]} {row_id} belongs to another thread")
    return tally, stale


async def write_thread(
    session: AsyncSession,
    *,
    thread: Row,
    steps: list[Row],
    elements: list[Row],
    feedback: list[Row],
    newer_only: bool = True,
) -> ThreadWritten:
    """Make the stored thread the one given, with exactly these steps, elements and feedback, ids
    and timestamps kept. With `newer_only`, a thread stored with the same or a later `updatedAt`
    is left as it is (importing a file again changes nothing). Raises on a row that breaks a
    constraint: the caller's transaction then writes nothing of the thread."""
    written = ThreadWritten()
    threads = threads_table.c
    stored = (await session.execute(sa.select(threads.updatedAt).where(threads.id == thread["id"]))).first()
    if newer_only and stored is not None and _current(stored.updatedAt, thread):
        written.skipped = True
        written.threads.unchanged = 1
        written.steps.unchanged, written.elements.unchanged = len(steps), len(elements)
        written.feedback.unchanged = len(feedback)
        return written
    await session.execute(
        _upsert_thread(dialect_name(session)), {name: thread.get(name) for name in THREAD_COLUMNS}
    )
    existing: dict[str, set[str]] = {
        table.name: set() for table in (feedbacks_table, steps_table, elements_table)
    }
    for kind, row_id in await session.execute(_ids_of_thread(), {"thread_id": thread["id"]}):
        existing[kind].add(row_id)
    # Feedback first: a stale rating of a step may hold the step's one feedback slot (forId).
    written.feedback, _ = await _write_children(
        session,
        table=feedbacks_table,
        columns=FEEDBACK_COLUMNS,
        existing=existing["feedbacks"],
        rows=feedback,
    )
    written.steps, _ = await _write_children(
        session, table=steps_table, columns=STEP_COLUMNS, existing=existing["steps"], rows=steps
    )
    written.elements, stale = await _write_children(
        session, table=elements_table, columns=ELEMENT_COLUMNS, existing=existing["elements"], rows=elements
    )
    kept = {element.get("objectKey") for element in elements}
    written.orphaned_keys = [
        row["objectKey"] for row in stale if row["objectKey"] and row["objectKey"] not in kept
    ]
    # The steps' trigger moved the thread's activity to now: put back the line's.
    await session.execute(
        sa.update(threads_table).where(threads.id == thread["id"]).values(updatedAt=thread.get("updatedAt"))
    )
    if stored is None:
        written.threads.created = 1
    else:
        written.threads.updated = 1
    return written


async def object_keys_named(session: AsyncSession, *, object_keys: Sequence[str]) -> set[str]:
    """Which of these stored objects an element names (one statement)."""
    statement = sa.select(elements_table.c.objectKey).where(elements_table.c.objectKey.in_(list(object_keys)))
    return set((await session.execute(statement)).scalars())


def _current(stored_activity: str | None, thread: Row) -> bool:
    given = thread.get("updatedAt")
    return stored_activity is not None and given is not None and stored_activity >= given


async def thread_is_current(session: AsyncSession, *, thread: Row) -> bool:
    """Whether the database holds this thread as last active at the given time, or later."""
    statement = sa.select(threads_table.c.updatedAt).where(threads_table.c.id == thread["id"])
    stored = (await session.execute(statement)).first()
    return stored is not None and _current(stored.updatedAt, thread)


async def threads_inactive_since(
    session: AsyncSession,
    *,
    cutoff: str,
    user_identifier: str | None,
    limit: int,
    after: tuple[str, str] | None = None,
) -> list[Row]:
    """Threads whose last activity (`updatedAt`, else `createdAt`) is before `cutoff`, oldest
    first, after `after` (last activity, id): id, name, last activity, owner's identifier."""
    threads = threads_table.c
    last_active = sa.func.coalesce(threads.updatedAt, threads.createdAt)
    conditions: list[sa.ColumnElement[bool]] = [last_active < cutoff]
    if after is not None:
        conditions.append(sa.tuple_(last_active, threads.id) > _position(*after))
    if user_identifier is not None:
        conditions += ThreadSelection(user_identifier=user_identifier).conditions()
    statement = (
        sa.select(threads.id, threads.name, last_active.label("lastActivity"), threads.userIdentifier)
        .where(*conditions)
        .order_by(last_active, threads.id)
        .limit(limit)
    )
    return [_as_dict(row) for row in await session.execute(statement)]
