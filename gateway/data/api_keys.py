"""API keys: created and revoked by the CLI, looked up by hash on each backend request."""

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.errors import Conflict, NotFound
from gateway.ids import new_id
from gateway.tables import ApiKey, api_keys_table

LIVE = api_keys_table.c.revokedAt.is_(None)


async def create_api_key(session: AsyncSession, *, name: str, key_hash: str, prefix: str, now: str) -> ApiKey:
    taken = await session.execute(sa.select(api_keys_table.c.id).where(api_keys_table.c.name == name, LIVE))
    if taken.first() is not None:
        raise Conflict(f"a live key is already named {name!r}; revoke it first or pick another name")
    key = ApiKey(id=new_id(), name=name, prefix=prefix, keyHash=key_hash, createdAt=now)
    session.add(key)
    await session.flush()
    return key


async def list_api_keys(session: AsyncSession) -> list[ApiKey]:
    statement = sa.select(ApiKey).order_by(api_keys_table.c.createdAt, api_keys_table.c.id)
    return list((await session.execute(statement)).scalars())


async def revoke_api_key(session: AsyncSession, *, name_or_id: str, now: str) -> ApiKey:
    """Revoke the live key with this name, or the key with this id."""
    named = sa.or_(sa.and_(api_keys_table.c.name == name_or_id, LIVE), api_keys_table.c.id == name_or_id)
    key = (await session.execute(sa.select(ApiKey).where(named))).scalars().first()
    if key is None:
        raise NotFound(f"no live key is named {name_or_id!r} and no key has that id")
    if key.revokedAt is None:
        key.revokedAt = now
        await session.flush()
    return key


async def find_live_key(session: AsyncSession, *, key_hash: str) -> ApiKey | None:
    statement = sa.select(ApiKey).where(api_keys_table.c.keyHash == key_hash, LIVE)
    return (await session.execute(statement)).scalars().first()


async def count_live_keys(session: AsyncSession) -> int:
    return int(
        (
            await session.execute(sa.select(sa.func.count()).select_from(api_keys_table).where(LIVE))
        ).scalar_one()
    )
