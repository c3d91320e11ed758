"""The write side's one unit of work: one transaction, the caller's access, the stored objects to
delete once it commits (the outbox of deletions), and who to tell once it has committed (the object
reaper; the event hub, so subscribers hear of the events the transaction's triggers recorded).

Every write goes through `UnitOfWork.write`: the GraphQL mutations (resolvers and the compiled
path, which calls the same resolvers), hence the Chainlit data layer (a GraphQL client) too. What
a write records for subscribers is written by the database's triggers in this same transaction
(migration 0009), so a rolled-back write records nothing and a committed one is never lost.
"""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.attachments import Attachments
from gateway.data import object_deletions
from gateway.data.access import Access
from gateway.database import Database
from gateway.errors import Conflict, GatewayError, ServiceUnavailable
from gateway.timestamps import utc_now

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
class UnitOfWork:
    """Writes of one caller (a request): each `write()` is one transaction."""

    db: Database
    access: Access
    attachments: Attachments | None = None
    # Called after each commit (e.g. the event hub's kick: read the new events now).
    on_commit: list[Callable[[], None]] = field(default_factory=list)
    # Called after each write, committed or not (e.g. the request's loaders start afresh).
    after_write: list[Callable[[], None]] = field(default_factory=list)
    _objects_to_delete: bool = field(default=False, init=False)
    _one_statement: bool = field(default=False, init=False)
    # A write committed (the compiled path may then not run the request again).
    committed: bool = field(default=False, init=False)

    async def forget_objects(self, session: AsyncSession, object_keys: list[str]) -> None:
        """Delete these stored objects once the transaction commits (and retry until done)."""
        if self._one_statement:  # the outbox row would commit apart from the write
            raise RuntimeError("a one-statement write cannot queue object deletions")
        if object_keys and self.attachments is not None:
            await object_deletions.enqueue_deletions(
                session, object_keys=object_keys, store=self.attachments.store.location, now=utc_now()
            )
            self._objects_to_delete = True

    @asynccontextmanager
    async def write(self, *, one_statement: bool = False) -> AsyncIterator[AsyncSession]:
        """One transaction: all of it is written, or nothing; errors as the API's errors.

        `one_statement`: the block writes with one statement (its checks only read), which is then
        its own transaction on PostgreSQL (see `Database.transaction`); whatever else the write
        records belongs in that statement or its triggers (as the event log's do).
        """
        body_done = False
        self._one_statement = one_statement
        try:
            async with self.db.transaction(one_statement=one_statement) as session:
                yield session
                body_done = True
            self.committed = True
            if self._objects_to_delete and self.attachments is not None:
                self.attachments.reaper.kick()  # committed: delete them now, off this request
            for callback in self.on_commit:
                callback()
        except IntegrityError as error:
            raise Conflict("the write conflicts with existing data (a unique key or reference)") from error
        except Exception as error:
            if isinstance(error, GatewayError) or not is_outage(error):
                conflict = retryable_conflict(error)
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
            self._one_statement = False
            for callback in self.after_write:
                callback()


def retryable_conflict(error: Exception) -> Exception:
    """A deadlock victim's error as a retryable CONFLICT; any other error as it is."""
    # PostgreSQL picked this transaction as a deadlock victim (40P01), or could not take a
    # lock (55P03), or a serialization failure (40001): the request is safe to retry.
    if isinstance(error, DBAPIError) and getattr(error.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return Conflict("a concurrent write to the same rows won; retry the request", retryable=True)
    return error
