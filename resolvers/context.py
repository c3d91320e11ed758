"""The per-request context: the database, the caller, the request's loaders and its id."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import strawberry
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.attachments import Attachments
from gateway.auth import Caller
from gateway.data import object_deletions
from gateway.data.access import Access
from gateway.database import Database
from gateway.errors import Conflict
from gateway.timestamps import utc_now
from resolvers.limits import Limits
from resolvers.loaders import Loaders

RETRYABLE_SQLSTATES = ("40001", "40P01", "55P03")


@dataclass
class GatewayContext:
    db: Database
    request_id: str
    caller: Caller
    limits: Limits = field(default_factory=Limits)
    attachments: Attachments | None = None
    request: Any = None
    response: Any = None
    loaders: Loaders = field(init=False)
    _objects_to_delete: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.db, self.access)

    @property
    def access(self) -> Access:
        """What the caller reaches; every data-access call is given it."""
        return self.caller.access

    @property
    def files(self) -> Attachments:
        if self.attachments is None:  # pragma: no cover - the app always sets it
            raise RuntimeError("no object store configured")
        return self.attachments

    @property
    def base_url(self) -> str:
        """The gateway's own URL, for links to its routes (local files)."""
        configured = self.attachments.public_url if self.attachments else None
        return configured or (str(self.request.base_url) if self.request is not None else "")

    async def forget_objects(self, session: AsyncSession, object_keys: list[str]) -> None:
        """Delete these stored objects once the transaction commits (and retry until done)."""
        if object_keys and self.attachments is not None:
            await object_deletions.enqueue_deletions(
                session, object_keys=object_keys, store=self.attachments.store.location, now=utc_now()
            )
            self._objects_to_delete = True

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction for one mutation: all of it is written, or nothing.

        Afterwards the request's loaders start afresh, so later fields read what was written.
        """
        try:
            async with self.db.transaction() as session:
                yield session
            if self._objects_to_delete and self.attachments is not None:
                self.attachments.reaper.kick()  # committed: delete them now, off this request
        except IntegrityError as error:
            raise Conflict("the write conflicts with existing data (a unique key or reference)") from error
        except DBAPIError as error:
            # PostgreSQL picked this transaction as a deadlock victim (40P01), or could not take a
            # lock (55P03), or a serialization failure (40001): the request is safe to retry.
            if getattr(error.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
                raise Conflict(
                    "a concurrent write to the same rows won; retry the request", retryable=True
                ) from error
            raise
        finally:
            self._objects_to_delete = False
            self.loaders = Loaders(self.db, self.access)


Info = strawberry.Info[GatewayContext, None]
