"""The per-request context: the database, the caller, the request's loaders and its id."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import strawberry
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.attachments import Attachments
from gateway.auth import Caller
from gateway.data import object_deletions
from gateway.data.access import Access
from gateway.database import Database
from gateway.errors import Conflict, GatewayError, ServiceUnavailable
from gateway.timestamps import utc_now
from resolvers.limits import Limits
from resolvers.loaders import Loaders

RETRYABLE_SQLSTATES = ("40001", "40P01", "55P03")
# The server went away or cannot take the connection: connection exceptions (class 08), an
# administrator's or a crash's shutdown of the backend (57P01-57P03), too many connections (53300).
OUTAGE_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03", "53300")
OUTAGE_MESSAGE = "the database or the object store cannot be reached right now; retry the request"


def is_outage(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the database or the object store is unreachable,
    rather than that the request is wrong or the gateway has a bug."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:
        seen += 1
        if isinstance(current, DBAPIError):
            if current.connection_invalidated:
                return True
            sqlstate = getattr(current.orig, "sqlstate", None) or ""
            if sqlstate.startswith(OUTAGE_SQLSTATE_PREFIXES):
                return True
            if "database is locked" in str(current.orig):  # SQLite's writer held past busy_timeout
                return True
        elif isinstance(
            current, SQLAlchemyTimeout | OSError | TimeoutError | BotoConnectionError | HTTPClientError
        ):
            # Pool checkout timed out; refused, reset or timed out connections (to PostgreSQL or S3).
            return True
        elif isinstance(current, ClientError):
            status = current.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500:  # S3's SlowDown, InternalError, ServiceUnavailable
                return True
        elif type(current).__name__ in ("ConnectionDoesNotExistError", "InterfaceError") and (
            "closed" in str(current) or "connection" in str(current)
        ):
            return True  # asyncpg: the connection was lost mid-operation
        current = current.__cause__ or current.__context__
    return False


@dataclass
class GatewayContext:
    db: Database
    request_id: str
    caller: Caller
    limits: Limits = field(default_factory=Limits)
    attachments: Attachments | None = None
    request: Any = None
    response: Any = None
    _loaders: Loaders | None = field(default=None, init=False)
    _objects_to_delete: bool = field(default=False, init=False)
    # A write of this request committed (the compiled path may then not run the request again).
    committed: bool = field(default=False, init=False)

    @property
    def loaders(self) -> Loaders:
        """The request's batched loaders, made on first use: a request the compiled path answers
        never needs them, and making them is a tenth of a small read's CPU."""
        if self._loaders is None:
            self._loaders = Loaders(self.db, self.access)
        return self._loaders

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
    async def write(self, *, one_statement: bool = False) -> AsyncIterator[AsyncSession]:
        """One transaction for one mutation: all of it is written, or nothing.

        `one_statement`: the mutation writes with one statement (its checks only read), which is
        then its own transaction on PostgreSQL (see `Database.transaction`); whatever else a write
        must record belongs in that statement or its triggers.

        Afterwards the request's loaders start afresh, so later fields read what was written.
        """
        body_done = False
        try:
            async with self.db.transaction(one_statement=one_statement) as session:
                yield session
                body_done = True
            self.committed = True
            if self._objects_to_delete and self.attachments is not None:
                self.attachments.reaper.kick()  # committed: delete them now, off this request
        except IntegrityError as error:
            raise Conflict("the write conflicts with existing data (a unique key or reference)") from error
        except Exception as error:
            if isinstance(error, GatewayError) or not is_outage(error):
                conflict = self._retryable_conflict(error)
                if conflict is error:
                    raise
                raise conflict from error
            if body_done or (one_statement and self.db.dialect_name == "postgresql"):
                # Lost while committing (a one-statement write commits as its statement runs): the
                # database may have committed. Upserts and deletes by id are safe to send again;
                # appending output is not (the client does not retry it).
                raise ServiceUnavailable(
                    "the connection to the database was lost while committing: the write may or may "
                    "not have been stored; retrying an upsert or delete is safe",
                    outcome="unknown",
                ) from error
            raise ServiceUnavailable(OUTAGE_MESSAGE + " (nothing was written)", outcome="none") from error
        finally:
            self._objects_to_delete = False
            self._loaders = None

    @staticmethod
    def _retryable_conflict(error: Exception) -> Exception:
        """A deadlock victim's error as a retryable CONFLICT; any other error as it is."""
        # PostgreSQL picked this transaction as a deadlock victim (40P01), or could not take a
        # lock (55P03), or a serialization failure (40001): the request is safe to retry.
        if isinstance(error, DBAPIError) and getattr(error.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return Conflict("a concurrent write to the same rows won; retry the request", retryable=True)
        return error


Info = strawberry.Info[GatewayContext, None]
