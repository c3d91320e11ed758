"""The tables, column for column as Chainlit's SQL data layer creates them, plus the gateway's additions.

Column names are Chainlit's quoted camelCase; the Python attributes carry the same names so that a
reader can match code to SQL at a glance. `metadata` is reserved by SQLModel, so its attribute is
`metadata_`. The schema itself is created and upgraded only by the Alembic migrations.
"""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from gateway.ids import normalize_id


class UUIDText(sa.types.TypeDecorator[str]):
    """A UUID held as its canonical string: native `UUID` on PostgreSQL, text on SQLite.

    Canonical lowercase text sorts like PostgreSQL's byte order, so the id tie-breaker of keyset
    pagination orders rows the same way on both databases.
    """

    impl = sa.String(36)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=False))
        return dialect.type_descriptor(sa.String(36))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else normalize_id(str(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else str(value)


# None is stored as SQL NULL, not as the JSON value null, so "no value" has one representation.
JSONDocument = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TagList = sa.JSON(none_as_null=True).with_variant(postgresql.ARRAY(sa.Text()), "postgresql")


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(sa_column=sa.Column("id", UUIDText(), primary_key=True))
    identifier: str = Field(sa_column=sa.Column("identifier", sa.Text(), nullable=False, unique=True))
    metadata_: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column("metadata", JSONDocument, nullable=False)
    )
    createdAt: str | None = Field(default=None, sa_column=sa.Column("createdAt", sa.Text()))


class Thread(SQLModel, table=True):
    __tablename__ = "threads"

    id: str = Field(sa_column=sa.Column("id", UUIDText(), primary_key=True))
    createdAt: str | None = Field(default=None, sa_column=sa.Column("createdAt", sa.Text()))
    name: str | None = Field(default=None, sa_column=sa.Column("name", sa.Text()))
    userId: str | None = Field(
        default=None,
        sa_column=sa.Column("userId", UUIDText(), sa.ForeignKey("users.id", ondelete="CASCADE")),
    )
    userIdentifier: str | None = Field(default=None, sa_column=sa.Column("userIdentifier", sa.Text()))
    tags: list[str] | None = Field(default=None, sa_column=sa.Column("tags", TagList))
    metadata_: dict[str, Any] | None = Field(default=None, sa_column=sa.Column("metadata", JSONDocument))
    # Gateway addition: moved by every write to the thread or its steps; the thread list's order.
    updatedAt: str | None = Field(default=None, sa_column=sa.Column("updatedAt", sa.Text()))


class Step(SQLModel, table=True):
    __tablename__ = "steps"

    id: str = Field(sa_column=sa.Column("id", UUIDText(), primary_key=True))
    name: str = Field(sa_column=sa.Column("name", sa.Text(), nullable=False))
    type: str = Field(sa_column=sa.Column("type", sa.Text(), nullable=False))
    threadId: str = Field(
        sa_column=sa.Column(
            "threadId", UUIDText(), sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False
        )
    )
    parentId: str | None = Field(default=None, sa_column=sa.Column("parentId", UUIDText()))
    streaming: bool = Field(default=False, sa_column=sa.Column("streaming", sa.Boolean(), nullable=False))
    waitForAnswer: bool | None = Field(default=None, sa_column=sa.Column("waitForAnswer", sa.Boolean()))
    isError: bool | None = Field(default=None, sa_column=sa.Column("isError", sa.Boolean()))
    metadata_: dict[str, Any] | None = Field(default=None, sa_column=sa.Column("metadata", JSONDocument))
    tags: list[str] | None = Field(default=None, sa_column=sa.Column("tags", TagList))
    input: str | None = Field(default=None, sa_column=sa.Column("input", sa.Text()))
    output: str | None = Field(default=None, sa_column=sa.Column("output", sa.Text()))
    createdAt: str | None = Field(default=None, sa_column=sa.Column("createdAt", sa.Text()))
    start: str | None = Field(default=None, sa_column=sa.Column("start", sa.Text()))
    end: str | None = Field(default=None, sa_column=sa.Column("end", sa.Text()))
    generation: dict[str, Any] | None = Field(default=None, sa_column=sa.Column("generation", JSONDocument))
    showInput: str | None = Field(default=None, sa_column=sa.Column("showInput", sa.Text()))
    language: str | None = Field(default=None, sa_column=sa.Column("language", sa.Text()))
    indent: int | None = Field(default=None, sa_column=sa.Column("indent", sa.Integer()))
    # Columns current Chainlit writes that its documented DDL lacks.
    command: str | None = Field(default=None, sa_column=sa.Column("command", sa.Text()))
    modes: Any | None = Field(default=None, sa_column=sa.Column("modes", JSONDocument))
    defaultOpen: bool | None = Field(default=None, sa_column=sa.Column("defaultOpen", sa.Boolean()))
    autoCollapse: bool | None = Field(default=None, sa_column=sa.Column("autoCollapse", sa.Boolean()))


class Element(SQLModel, table=True):
    __tablename__ = "elements"

    id: str = Field(sa_column=sa.Column("id", UUIDText(), primary_key=True))
    threadId: str | None = Field(
        default=None,
        sa_column=sa.Column("threadId", UUIDText(), sa.ForeignKey("threads.id", ondelete="CASCADE")),
    )
    type: str | None = Field(default=None, sa_column=sa.Column("type", sa.Text()))
    url: str | None = Field(default=None, sa_column=sa.Column("url", sa.Text()))
    chainlitKey: str | None = Field(default=None, sa_column=sa.Column("chainlitKey", sa.Text()))
    name: str = Field(sa_column=sa.Column("name", sa.Text(), nullable=False))
    display: str | None = Field(default=None, sa_column=sa.Column("display", sa.Text()))
    objectKey: str | None = Field(default=None, sa_column=sa.Column("objectKey", sa.Text()))
    size: str | None = Field(default=None, sa_column=sa.Column("size", sa.Text()))
    page: int | None = Field(default=None, sa_column=sa.Column("page", sa.Integer()))
    language: str | None = Field(default=None, sa_column=sa.Column("language", sa.Text()))
    forId: str | None = Field(default=None, sa_column=sa.Column("forId", UUIDText()))
    mime: str | None = Field(default=None, sa_column=sa.Column("mime", sa.Text()))
    props: dict[str, Any] | None = Field(default=None, sa_column=sa.Column("props", JSONDocument))
    # Gateway additions: the stored object's byte count, and the order of a thread's elements.
    sizeBytes: int | None = Field(default=None, sa_column=sa.Column("sizeBytes", sa.BigInteger()))
    createdAt: str | None = Field(default=None, sa_column=sa.Column("createdAt", sa.Text()))


class Feedback(SQLModel, table=True):
    __tablename__ = "feedbacks"

    id: str = Field(sa_column=sa.Column("id", UUIDText(), primary_key=True))
    forId: str = Field(sa_column=sa.Column("forId", UUIDText(), nullable=False))
    threadId: str = Field(
        sa_column=sa.Column(
            "threadId", UUIDText(), sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False
        )
    )
    value: int = Field(sa_column=sa.Column("value", sa.Integer(), nullable=False))
    comment: str | None = Field(default=None, sa_column=sa.Column("comment", sa.Text()))


users_table: sa.Table = User.__table__  # type: ignore[attr-defined]
threads_table: sa.Table = Thread.__table__  # type: ignore[attr-defined]
steps_table: sa.Table = Step.__table__  # type: ignore[attr-defined]
elements_table: sa.Table = Element.__table__  # type: ignore[attr-defined]
feedbacks_table: sa.Table = Feedback.__table__  # type: ignore[attr-defined]


class ApiKey(SQLModel, table=True):
    """A backend's API key: only its SHA-256 hash is kept (the key itself is shown once)."""

    __tablename__ = "gateway_api_keys"

    id: str = Field(sa_column=sa.Column("id", sa.String(36), primary_key=True))
    name: str = Field(sa_column=sa.Column("name", sa.Text(), nullable=False))
    prefix: str = Field(sa_column=sa.Column("prefix", sa.Text(), nullable=False))
    keyHash: str = Field(sa_column=sa.Column("keyHash", sa.String(64), nullable=False, unique=True))
    createdAt: str = Field(sa_column=sa.Column("createdAt", sa.Text(), nullable=False))
    revokedAt: str | None = Field(default=None, sa_column=sa.Column("revokedAt", sa.Text()))


api_keys_table: sa.Table = ApiKey.__table__  # type: ignore[attr-defined]


class ObjectDeletion(SQLModel, table=True):
    """A stored object to delete (the outbox of deletions; see migrations 0005, 0006)."""

    __tablename__ = "gateway_object_deletions"

    id: str = Field(sa_column=sa.Column("id", sa.String(36), primary_key=True))
    objectKey: str = Field(sa_column=sa.Column("objectKey", sa.Text(), nullable=False))
    createdAt: str = Field(sa_column=sa.Column("createdAt", sa.Text(), nullable=False))
    attempts: int = Field(default=0, sa_column=sa.Column("attempts", sa.Integer(), nullable=False))
    lastError: str | None = Field(default=None, sa_column=sa.Column("lastError", sa.Text()))
    nextAttemptAt: str = Field(sa_column=sa.Column("nextAttemptAt", sa.Text(), nullable=False))
    # `ObjectStore.location` of the store holding the object (migration 0006); NULL: any store.
    store: str | None = Field(default=None, sa_column=sa.Column("store", sa.Text()))


object_deletions_table: sa.Table = ObjectDeletion.__table__  # type: ignore[attr-defined]


class PendingUpload(SQLModel, table=True):
    """An upload a client was given a URL for, not completed yet (see migrations 0005, 0006)."""

    __tablename__ = "gateway_pending_uploads"

    id: str = Field(sa_column=sa.Column("id", sa.String(36), primary_key=True))
    objectKey: str = Field(sa_column=sa.Column("objectKey", sa.Text(), nullable=False))
    element: dict[str, Any] = Field(sa_column=sa.Column("element", sa.JSON(), nullable=False))
    userId: str | None = Field(default=None, sa_column=sa.Column("userId", sa.String(36)))
    expiresAt: str = Field(sa_column=sa.Column("expiresAt", sa.Text(), nullable=False))
    store: str | None = Field(default=None, sa_column=sa.Column("store", sa.Text()))
    threadId: str | None = Field(default=None, sa_column=sa.Column("threadId", UUIDText()))


pending_uploads_table: sa.Table = PendingUpload.__table__  # type: ignore[attr-defined]


class ThreadEvent(SQLModel, table=True):
    """One change to a thread or what is in it, recorded by triggers in the writing transaction
    (migration 0009); `position` orders them for subscribers (NULL until the write commits)."""

    __tablename__ = "gateway_thread_events"

    id: int = Field(sa_column=sa.Column("id", sa.BigInteger(), primary_key=True))
    position: int | None = Field(default=None, sa_column=sa.Column("position", sa.BigInteger(), unique=True))
    threadId: str = Field(sa_column=sa.Column("threadId", UUIDText(), nullable=False))
    userId: str | None = Field(default=None, sa_column=sa.Column("userId", UUIDText()))
    kind: str = Field(sa_column=sa.Column("kind", sa.Text(), nullable=False))
    entityId: str | None = Field(default=None, sa_column=sa.Column("entityId", UUIDText()))
    delta: str | None = Field(default=None, sa_column=sa.Column("delta", sa.Text()))
    # Only the thread's updatedAt moved (a step was written): for the owner's list, not the thread.
    activity: bool = Field(default=False, sa_column=sa.Column("activity", sa.Boolean(), nullable=False))
    createdAt: str = Field(sa_column=sa.Column("createdAt", sa.Text(), nullable=False))


thread_events_table: sa.Table = ThreadEvent.__table__  # type: ignore[attr-defined]
