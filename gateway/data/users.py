"""Users: looked up by id or identifier, listed by identifier, upserted by identifier."""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data.access import Access
from gateway.data.common import from_row, insert, metadata_patch_to_new
from gateway.data.pagination import Ordering, Page, PageRequest, count_rows, fetch_page
from gateway.data.threads import delete_threads
from gateway.errors import Conflict, NotFound
from gateway.ids import new_id
from gateway.jsonops import sql_icontains, sql_json_merge
from gateway.tables import User, pending_uploads_table, threads_table, users_table
from gateway.timestamps import utc_now

USER_ORDER = Ordering("users:identifier", (users_table.c.identifier, users_table.c.id))


async def get_users_by_ids(session: AsyncSession, *, ids: Sequence[str], access: Access) -> dict[str, User]:
    statement = sa.select(User).where(users_table.c.id.in_(list(ids)), *access.users())
    return {row.id: row for row in (await session.execute(statement)).scalars()}


async def get_users_by_identifiers(
    session: AsyncSession, *, identifiers: Sequence[str], access: Access
) -> dict[str, User]:
    statement = sa.select(User).where(users_table.c.identifier.in_(list(identifiers)), *access.users())
    return {row.identifier: row for row in (await session.execute(statement)).scalars()}


def _conditions(search: str | None, access: Access) -> list[sa.ColumnElement[bool]]:
    return [*access.users(), *([sql_icontains(users_table.c.identifier, search)] if search else [])]


async def list_users(
    session: AsyncSession, *, request: PageRequest, access: Access, search: str | None = None
) -> Page[User]:
    return await fetch_page(
        session, model=User, ordering=USER_ORDER, request=request, where=_conditions(search, access)
    )


async def count_users(session: AsyncSession, *, access: Access, search: str | None = None) -> int:
    return await count_rows(session, model=User, where=_conditions(search, access))


async def ensure_user(session: AsyncSession, *, identifier: str) -> User:
    """The user with this identifier, created if missing (a token's first request)."""
    values = {"id": new_id(), "identifier": identifier, "metadata": {}, "createdAt": utc_now()}
    statement = insert(session, users_table).values(values)
    await session.execute(statement.on_conflict_do_nothing(index_elements=[users_table.c.identifier]))
    found = await session.execute(sa.select(User).where(users_table.c.identifier == identifier))
    return found.scalars().one()


async def upsert_user(
    session: AsyncSession,
    *,
    identifier: str,
    user_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> User:
    """Create the user, or update it: metadata merges key by key, a null value deletes a key.

    Without an id the identifier is the key (what Chainlit looks users up by), so concurrent first
    logins of one user make one row. With the id of an existing user, its identifier may change.
    """
    patch = metadata or {}
    set_: dict[str, Any] = {"identifier": sa.literal(identifier)}
    if patch:
        set_["metadata"] = sql_json_merge(users_table.c.metadata, patch)
    if user_id is not None:
        renamed = (
            await session.execute(
                sa.update(users_table)
                .where(users_table.c.id == user_id)
                .values(set_)
                .returning(*users_table.c)
            )
        ).one_or_none()
        if renamed is not None:
            # Chainlit lists a user's threads by this copy of the identifier: keep it in step.
            owned = sa.update(threads_table).where(threads_table.c.userId == user_id)
            await session.execute(owned.values(userIdentifier=identifier))
            return from_row(User, renamed)  # type: ignore[no-any-return]
    values = {
        "id": user_id or new_id(),
        "identifier": identifier,
        "metadata": metadata_patch_to_new(patch),
        "createdAt": utc_now(),
    }
    statement = insert(session, users_table).values(values)
    statement = statement.on_conflict_do_update(index_elements=[users_table.c.identifier], set_=set_)
    row = (await session.execute(statement.returning(*users_table.c))).one()
    if user_id is not None and row.id != user_id:
        raise Conflict(
            f"identifier {identifier!r} belongs to another user than {user_id}", field="identifier"
        )
    return from_row(User, row)  # type: ignore[no-any-return]


async def delete_user(session: AsyncSession, *, user_id: str, access: Access) -> list[str]:
    """Delete the user with their threads (and those threads' steps, elements and feedback) and
    their uploads not completed yet; returns the stored objects' keys. A user may delete only
    themselves: any other id answers as an id never used."""
    missing = NotFound(f"user {user_id} does not exist", field="id")
    if not access.owns(user_id):
        raise missing
    owned = sa.select(threads_table.c.id).where(threads_table.c.userId == user_id)
    object_keys = await delete_threads(session, thread_ids=owned)
    abandoned = sa.delete(pending_uploads_table).where(pending_uploads_table.c.userId == user_id)
    object_keys += (await session.execute(abandoned.returning(pending_uploads_table.c.objectKey))).scalars()
    deleted = sa.delete(users_table).where(users_table.c.id == user_id).returning(users_table.c.id)
    if (await session.execute(deleted)).first() is None:
        raise missing  # the transaction rolls back: nothing was deleted
    return object_keys
