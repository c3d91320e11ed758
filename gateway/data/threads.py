"""Threads: the filtered, keyset-paginated thread list, partial upserts, and deletion with all
that hangs off a thread."""

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data.access import Access, check_writable_thread, not_yours, require_writable_thread
from gateway.data.common import (
    KEEP,
    Keep,
    changed,
    dialect_insert,
    dialect_name,
    from_row,
    given,
    insert,
    metadata_patch_to_new,
    update_values,
)
from gateway.data.pagination import Ordering, Page, PageRequest, count_rows, fetch_page
from gateway.errors import BadUserInput, Forbidden, GatewayError, NotFound
from gateway.jsonops import like_pattern, sql_icontains, sql_json_contains, sql_tags_contain_all
from gateway.tables import (
    Thread,
    UUIDText,
    elements_table,
    feedbacks_table,
    pending_uploads_table,
    steps_table,
    threads_table,
    users_table,
)

THREAD_ORDERINGS = {
    ("updatedAt", True): Ordering(
        "threads:updatedAt:desc", (threads_table.c.updatedAt, threads_table.c.id), True
    ),
    ("updatedAt", False): Ordering("threads:updatedAt:asc", (threads_table.c.updatedAt, threads_table.c.id)),
    ("createdAt", True): Ordering(
        "threads:createdAt:desc", (threads_table.c.createdAt, threads_table.c.id), True
    ),
    ("createdAt", False): Ordering("threads:createdAt:asc", (threads_table.c.createdAt, threads_table.c.id)),
}


@dataclass(frozen=True)
class ThreadFilter:
    user_id: str | None = None
    user_identifier: str | None = None
    search: str | None = None
    feedback: int | None = None
    tags: tuple[str, ...] = ()
    created_after: str | None = None
    created_before: str | None = None
    metadata: str | None = None  # JSON text of an object, so the filter stays hashable


@dataclass
class ThreadChanges:
    """What an upsert sets; `KEEP` leaves the stored value alone. `metadata` is a patch."""

    name: str | Keep | None = KEEP
    userId: str | Keep | None = KEEP
    userIdentifier: str | Keep = KEEP  # names the owner by identifier (instead of, or with, userId)
    tags: list[str] | Keep | None = KEEP
    metadata: dict[str, Any] | Keep = KEEP
    createdAt: str | Keep = KEEP


def filter_conditions(
    thread_filter: ThreadFilter, parameter: str | None = None
) -> list[sa.ColumnElement[bool]]:
    """The filter's conditions; the user it names and its search pattern as parameters
    `{parameter}.userId`, `{parameter}.userIdentifier` and `{parameter}.search` when a name is
    given (the rest of the filter is in the SQL)."""
    threads, steps, feedbacks = threads_table.c, steps_table.c, feedbacks_table.c
    conditions: list[sa.ColumnElement[bool]] = []

    def named(name: str, value: str, type_: Any) -> Any:
        return value if parameter is None else sa.bindparam(f"{parameter}.{name}", value, type_=type_)

    if thread_filter.user_id is not None:
        conditions.append(threads.userId == named("userId", thread_filter.user_id, UUIDText()))
    if thread_filter.user_identifier is not None:
        identifier = named("userIdentifier", thread_filter.user_identifier, sa.Text())
        owner = sa.select(users_table.c.id).where(users_table.c.identifier == identifier)
        conditions.append(threads.userId.in_(owner.scalar_subquery()))
    if thread_filter.search:
        search: Any = thread_filter.search
        if parameter is not None:  # bound as the pattern `sql_icontains` would make of it
            search = sa.bindparam(f"{parameter}.search", like_pattern(search), type_=sa.Text())
        step_matches = sa.select(sa.literal(1)).where(
            steps.threadId == threads.id,
            sa.or_(
                sql_icontains(steps.input, search),
                sql_icontains(steps.output, search),
            ),
        )
        conditions.append(sa.or_(sql_icontains(threads.name, search), step_matches.exists()))
    if thread_filter.feedback is not None:
        rated = sa.select(sa.literal(1)).where(
            feedbacks.threadId == threads.id, feedbacks.value == thread_filter.feedback
        )
        conditions.append(rated.exists())
    if thread_filter.tags:
        conditions.append(sql_tags_contain_all(threads.tags, list(thread_filter.tags)))
    if thread_filter.created_after is not None:
        conditions.append(threads.createdAt > thread_filter.created_after)
    if thread_filter.created_before is not None:
        conditions.append(threads.createdAt < thread_filter.created_before)
    if thread_filter.metadata is not None:
        conditions.append(sql_json_contains(threads.metadata, json.loads(thread_filter.metadata)))
    return conditions


async def get_threads_by_ids(
    session: AsyncSession, *, ids: Sequence[str], access: Access
) -> dict[str, Thread]:
    statement = sa.select(Thread).where(threads_table.c.id.in_(list(ids)), *access.readable_threads())
    return {row.id: row for row in (await session.execute(statement)).scalars()}


async def list_threads(
    session: AsyncSession,
    *,
    thread_filter: ThreadFilter,
    request: PageRequest,
    access: Access,
    order_field: str = "updatedAt",
    descending: bool = True,
) -> Page[Thread]:
    """Newest activity first by default; one statement whatever the filters. A user lists only
    their own threads (threads shared with them are read by id, as Chainlit's share links do)."""
    return await fetch_page(
        session,
        model=Thread,
        ordering=THREAD_ORDERINGS[(order_field, descending)],
        request=request,
        where=[*access.owned_threads(), *filter_conditions(thread_filter)],
    )


async def count_threads(session: AsyncSession, *, thread_filter: ThreadFilter, access: Access) -> int:
    return await count_rows(
        session, model=Thread, where=[*access.owned_threads(), *filter_conditions(thread_filter)]
    )


async def _owner(
    session: AsyncSession, *, user_id: str | None, identifier: str | None
) -> tuple[str | None, str | None]:
    """(userId, userIdentifier) of the owner named by id, identifier or both; (None, None) clears."""
    if user_id is None and identifier is None:
        return None, None
    named = users_table.c.id == user_id if user_id is not None else users_table.c.identifier == identifier
    owner = (
        await session.execute(sa.select(users_table.c.id, users_table.c.identifier).where(named))
    ).first()
    if owner is None:
        field = "userId" if user_id is not None else "userIdentifier"
        raise NotFound(f"user {user_id or repr(identifier)} does not exist", field=field)
    if identifier is not None and owner.identifier != identifier:
        raise BadUserInput("`userId` and `userIdentifier` name different users", field="userIdentifier")
    return owner.id, owner.identifier


def _user_owner_fields(fields: dict[str, Any], access: Access) -> dict[str, Any]:
    """A user's threads are theirs: naming another owner (or none) is refused before any lookup,
    so whether that other user exists is not told."""
    if fields.get("userId", access.user_id) != access.user_id or fields.get(
        "userIdentifier", access.user_identifier
    ) not in (access.user_identifier, None):
        raise Forbidden("a user may only own threads themselves; leave userId and userIdentifier out")
    return {"userId": access.user_id, "userIdentifier": access.user_identifier}


async def upsert_thread(
    session: AsyncSession, *, thread_id: str, changes: ThreadChanges, access: Access, now: str
) -> Thread:
    """Create the thread, or change only the fields given, in one statement.

    `updatedAt` moves only when a value really changes, so a retried request changes nothing.
    A user's new thread is theirs; another user's thread is refused.
    """
    fields = given(changes)
    owner_fields: dict[str, Any] = {}
    if not access.everything:
        await require_writable_thread(
            session, access=access, thread_id=thread_id, missing=not_yours("thread", thread_id)
        )
        owner_fields = _user_owner_fields(fields, access)
        fields.pop("userId", None)
        fields.pop("userIdentifier", None)
    elif "userId" in fields or "userIdentifier" in fields:
        fields["userId"], fields["userIdentifier"] = await _owner(
            session, user_id=fields.get("userId"), identifier=fields.get("userIdentifier")
        )
    patch = fields.pop("metadata", None)
    new_row = {"id": thread_id, "createdAt": now, "updatedAt": now, **owner_fields, **fields}
    if patch is not None:
        new_row["metadata"] = metadata_patch_to_new(patch)
    set_ = update_values(threads_table, {**fields, **({"metadata": patch} if patch is not None else {})})
    statement = insert(session, threads_table).values(new_row)
    if set_:
        statement = statement.on_conflict_do_update(
            index_elements=[threads_table.c.id],
            set_={**set_, "updatedAt": now},
            # For a user, also refuse a thread another user created since the check above.
            where=sa.and_(changed(threads_table, set_), *access.owned_threads()),
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=[threads_table.c.id])
    row = (await session.execute(statement.returning(*threads_table.c))).one_or_none()
    if row is not None:
        return from_row(Thread, row)  # type: ignore[no-any-return]
    unchanged = await session.get(Thread, thread_id)
    if unchanged is None:  # pragma: no cover - the row exists, or the insert returned it
        raise NotFound(f"thread {thread_id} does not exist")
    if not access.owns(unchanged.userId):
        raise not_yours("thread", thread_id)
    return unchanged


async def ensure_thread(session: AsyncSession, *, thread_id: str, access: Access, now: str) -> None:
    """Create an empty thread when a step arrives before its thread (Chainlit queues them so); a
    user's is theirs. Whether an existing thread may be written is for the caller to check."""
    statement = insert_missing_threads(dialect_name(session))
    await session.execute(statement, new_thread_row(thread_id, access, now))


def new_thread_row(thread_id: str, access: Access, now: str) -> dict[str, Any]:
    """The row of an empty thread a step (or element) creates: the caller's, if a user."""
    return {
        "id": thread_id,
        "createdAt": now,
        "updatedAt": now,
        "userId": access.user_id,
        "userIdentifier": access.user_identifier,
    }


@functools.cache
def insert_missing_threads(dialect: str) -> Any:
    """INSERT of `new_thread_row`s (the parameters: one, or many for one multi-row statement) that
    leaves existing threads alone. Built once per database."""
    statement = dialect_insert(dialect, threads_table)
    return statement.on_conflict_do_nothing(index_elements=[threads_table.c.id])


async def delete_thread(session: AsyncSession, *, thread_id: str, access: Access) -> list[str]:
    """Delete the thread with its steps, elements and feedback; returns the stored objects' keys."""
    missing = NotFound(f"thread {thread_id} does not exist")
    await require_writable_thread(session, access=access, thread_id=thread_id, missing=missing)
    exists = (
        await session.execute(sa.select(threads_table.c.id).where(threads_table.c.id == thread_id))
    ).first()
    if exists is None:
        raise missing
    return await delete_threads(session, thread_ids=[thread_id])


async def delete_threads_by_ids(
    session: AsyncSession, *, thread_ids: Sequence[str], access: Access
) -> tuple[dict[str, GatewayError], list[str]]:
    """Delete each of these threads the caller may delete, as `delete_thread` would, whatever their
    number in one statement per table; returns why the others were not (by id) and the stored
    objects' keys."""
    threads = threads_table.c
    statement = sa.select(threads.id, threads.userId, threads.metadata).where(
        threads.id.in_(sorted(set(thread_ids)))
    )
    found = {row.id: row for row in await session.execute(statement)}
    refused: dict[str, GatewayError] = {}
    deletable: list[str] = []
    for thread_id in dict.fromkeys(thread_ids):
        missing = NotFound(f"thread {thread_id} does not exist")
        row = found.get(thread_id)
        try:
            if row is None:
                raise missing
            check_writable_thread(
                access, thread_id=thread_id, owner_id=row.userId, metadata=row.metadata, missing=missing
            )
        except GatewayError as error:
            refused[thread_id] = error
            continue
        deletable.append(thread_id)
    object_keys = await delete_threads(session, thread_ids=deletable) if deletable else []
    return refused, object_keys


async def delete_threads(
    session: AsyncSession, *, thread_ids: Sequence[str] | sa.Select[tuple[str]]
) -> list[str]:
    """Delete these threads (ids, or a query of ids) with their feedback, elements, steps and
    uploads not completed, one statement per table whatever their number; returns the stored
    objects' keys.

    Children are deleted explicitly: databases Chainlit created from older DDL have no foreign keys.
    """
    ids = thread_ids if isinstance(thread_ids, sa.Select) else list(thread_ids)
    await session.execute(sa.delete(feedbacks_table).where(feedbacks_table.c.threadId.in_(ids)))
    elements = sa.delete(elements_table).where(elements_table.c.threadId.in_(ids))
    object_keys = list((await session.execute(elements.returning(elements_table.c.objectKey))).scalars())
    uploads = sa.delete(pending_uploads_table).where(pending_uploads_table.c.threadId.in_(ids))
    object_keys += (await session.execute(uploads.returning(pending_uploads_table.c.objectKey))).scalars()
    await session.execute(sa.delete(steps_table).where(steps_table.c.threadId.in_(ids)))
    await session.execute(sa.delete(threads_table).where(threads_table.c.id.in_(ids)))
    return [key for key in object_keys if key]
