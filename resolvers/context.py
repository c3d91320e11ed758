"""The per-request context: the database, the caller, the request's loaders and its id; its
writes go through the caller's unit of work (gateway.unit_of_work)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.attachments import Attachments
from gateway.auth import Caller
from gateway.data.access import Access
from gateway.database import Database
from gateway.events import EventHub
from gateway.unit_of_work import OUTAGE_MESSAGE, UnitOfWork, is_outage
from resolvers.limits import Limits
from resolvers.loaders import Loaders

__all__ = ["OUTAGE_MESSAGE", "GatewayContext", "Info", "is_outage"]


@dataclass
class GatewayContext:
    db: Database
    request_id: str
    caller: Caller
    limits: Limits = field(default_factory=Limits)
    attachments: Attachments | None = None
    request: Any = None
    response: Any = None
    events: EventHub | None = None
    _loaders: Loaders | None = field(default=None, init=False)
    unit_of_work: UnitOfWork = field(init=False)

    def __post_init__(self) -> None:
        on_commit = [self.events.kick] if self.events is not None else []
        self.unit_of_work = UnitOfWork(
            self.db, self.access, self.attachments, on_commit=on_commit, after_write=[self.reset_loaders]
        )

    @property
    def loaders(self) -> Loaders:
        """The request's batched loaders, made on first use: a request the compiled path answers
        never needs them, and making them is a tenth of a small read's CPU."""
        if self._loaders is None:
            self._loaders = Loaders(self.db, self.access)
        return self._loaders

    def reset_loaders(self) -> None:
        """Later fields read afresh (what a write wrote; the current state an event names)."""
        self._loaders = None

    @property
    def access(self) -> Access:
        """What the caller reaches; every data-access call is given it."""
        return self.caller.access

    @property
    def committed(self) -> bool:
        """A write of this request committed (the compiled path may then not run it again)."""
        return self.unit_of_work.committed

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
        await self.unit_of_work.forget_objects(session, object_keys)

    @asynccontextmanager
    async def write(self, *, one_statement: bool = False) -> AsyncIterator[AsyncSession]:
        """One transaction for one mutation (the caller's unit of work; `one_statement`: see
        `UnitOfWork.write`); afterwards the request's loaders start afresh (every write of the
        unit of work resets them), so later fields read what was written."""
        async with self.unit_of_work.write(one_statement=one_statement) as session:
            yield session


Info = strawberry.Info[GatewayContext, None]
