"""Whose rows a caller reaches, as SQL conditions every data-access function applies.

A backend (API key, or open development mode) reaches every row. A user reaches their own
threads and all in them, and reads (only reads) threads whose `metadata.is_shared` is true
(Chainlit's sharing). Anything else is treated as missing, so another user's ids cannot be probed:
the conditions sit in the same statements that load the rows, costing no extra statement.
"""

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.errors import Forbidden, NotFound
from gateway.jsonops import sql_json_contains
from gateway.tables import UUIDText, elements_table, feedbacks_table, steps_table, threads_table, users_table

SHARED = {"is_shared": True}
ACCESS_USER_PARAMETER = "access_user_id"


@dataclass(frozen=True)
class Access:
    """`user_id` None: every row (a backend). Otherwise that user's own rows, plus shared threads to read."""

    user_id: str | None = None
    user_identifier: str | None = None

    @property
    def everything(self) -> bool:
        return self.user_id is None

    def owns(self, owner_id: str | None) -> bool:
        return self.everything or owner_id == self.user_id

    @property
    def user(self) -> sa.BindParameter[str]:
        """The user's id as a named parameter: a statement the compiled read path keeps for the
        next request of the same shape takes that request's caller (gateway.data.json_reads)."""
        return sa.bindparam(ACCESS_USER_PARAMETER, self.user_id, type_=UUIDText())

    # Conditions on each table; an empty list means no restriction.

    def users(self) -> list[sa.ColumnElement[bool]]:
        return [] if self.everything else [users_table.c.id == self.user]

    def owned_threads(self) -> list[sa.ColumnElement[bool]]:
        return [] if self.everything else [threads_table.c.userId == self.user]

    def readable_threads(self) -> list[sa.ColumnElement[bool]]:
        if self.everything:
            return []
        return [
            sa.or_(threads_table.c.userId == self.user, sql_json_contains(threads_table.c.metadata, SHARED))
        ]

    def _in_readable_thread(self, thread_id: sa.ColumnElement[Any]) -> list[sa.ColumnElement[bool]]:
        if self.everything:
            return []
        # Correlated: one primary-key probe per candidate row, never a scan of all shared threads.
        thread = sa.select(sa.literal(1)).where(threads_table.c.id == thread_id, *self.readable_threads())
        return [thread.exists()]

    def readable_steps(self) -> list[sa.ColumnElement[bool]]:
        return self._in_readable_thread(steps_table.c.threadId)

    def readable_elements(self) -> list[sa.ColumnElement[bool]]:
        return self._in_readable_thread(elements_table.c.threadId)

    def readable_feedbacks(self) -> list[sa.ColumnElement[bool]]:
        return self._in_readable_thread(feedbacks_table.c.threadId)

    def writable_steps(self) -> list[sa.ColumnElement[bool]]:
        """Steps of the caller's own threads, probed row by row (for writes by id)."""
        if self.everything:
            return []
        thread = sa.select(sa.literal(1)).where(
            threads_table.c.id == steps_table.c.threadId, *self.owned_threads()
        )
        return [thread.exists()]

    def owned_steps(self) -> list[sa.ColumnElement[bool]]:
        if self.everything:
            return []
        owned = sa.select(threads_table.c.id).where(*self.owned_threads())
        return [steps_table.c.threadId.in_(owned.scalar_subquery())]


EVERYTHING = Access()


def is_shared(metadata: dict[str, Any] | None) -> bool:
    return bool(metadata) and (metadata or {}).get("is_shared") is True


def not_yours(kind: str, row_id: str, field: str = "id") -> NotFound:
    """What a user reusing the id of another user's row gets: nothing about that row is told, only
    that this id cannot be used."""
    return NotFound(f"there is no {kind} {row_id} of yours; a new {kind} needs a new id", field=field)


async def require_writable_row(
    session: AsyncSession,
    *,
    access: Access,
    table: sa.Table,
    row_id: str,
    readable: list[sa.ColumnElement[bool]],
    missing: NotFound,
) -> None:
    """Refuse a write to a row hanging off a thread (a feedback, an element): `missing` when it does
    not exist or the caller cannot see it, then as `require_writable_thread` for its thread."""
    statement = sa.select(table.c.threadId).where(table.c.id == row_id, *readable)
    found = (await session.execute(statement)).first()
    if found is None:
        raise missing
    if found.threadId is not None:
        await require_writable_thread(session, access=access, thread_id=found.threadId, missing=missing)


async def require_writable_thread(
    session: AsyncSession, *, access: Access, thread_id: str, missing: NotFound
) -> None:
    """Refuse a write to a thread the caller does not own: `missing` (the error the caller gets
    when the row does not exist at all) for threads it cannot see, FORBIDDEN for shared ones."""
    if access.everything:
        return
    statement = sa.select(threads_table.c.userId, threads_table.c.metadata).where(
        threads_table.c.id == thread_id
    )
    thread = (await session.execute(statement)).first()
    if thread is not None:
        check_writable_thread(
            access, thread_id=thread_id, owner_id=thread.userId, metadata=thread.metadata, missing=missing
        )


def check_writable_thread(
    access: Access, *, thread_id: str, owner_id: str | None, metadata: Any, missing: NotFound
) -> None:
    """`require_writable_thread` for a thread already loaded (by a statement that loaded more)."""
    if access.owns(owner_id):
        return
    if is_shared(metadata):
        raise Forbidden(f"thread {thread_id} is shared with you to read; only its owner may change it")
    raise missing
