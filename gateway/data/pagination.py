"""Keyset pagination: Relay arguments in, one page of rows and their cursors out.

A cursor encodes the sort values of its row plus the row id as tie-breaker, never an offset, so it
stays valid when its row is deleted and pages neither repeat nor skip rows while others are
inserted. Each cursor names the list and order it belongs to; any other list refuses it.
"""

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement, KeyedColumnElement

from gateway.data.common import dialect_name
from gateway.errors import BadUserInput
from gateway.ids import normalize_id
from gateway.tables import UUIDText
from gateway.validation import string_problem

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

Row = TypeVar("Row")


@dataclass(frozen=True)
class PageRequest:
    """Validated Relay arguments: `first`/`after` page forward, `last`/`before` backward."""

    first: int | None = None
    after: str | None = None
    last: int | None = None
    before: str | None = None

    @classmethod
    def build(
        cls,
        *,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> "PageRequest":
        if first is not None and last is not None:
            raise BadUserInput("give `first` or `last`, not both", argument="first")
        for name, size in (("first", first), ("last", last)):
            if size is not None and not 0 <= size <= MAX_PAGE_SIZE:
                raise BadUserInput(
                    f"`{name}` must be between 0 and {MAX_PAGE_SIZE}, not {size}", argument=name
                )
        if first is None and last is None:
            # `before` alone reads backwards from it: the page just before the cursor.
            if before is not None and after is None:
                last = DEFAULT_PAGE_SIZE
            else:
                first = DEFAULT_PAGE_SIZE
        return cls(first=first, after=after, last=last, before=before)

    @property
    def backward(self) -> bool:
        return self.last is not None

    @property
    def size(self) -> int:
        return self.last if self.last is not None else (self.first or 0)


def encode_cursor(ordering_name: str, *values: Any) -> str:
    """A cursor: the ordering's name and the row's sort values, as unpadded base64url JSON."""
    raw = json.dumps([ordering_name, list(values)], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@dataclass(frozen=True)
class Ordering:
    """How a list is sorted: its key columns (the id last) and direction, named for its cursors."""

    name: str
    columns: tuple[KeyedColumnElement[Any], ...]
    descending: bool = False

    def values_of(self, row: Any) -> list[Any]:
        return [getattr(row, column.key) for column in self.columns]

    def encode(self, row: Any) -> str:
        return encode_cursor(self.name, *self.values_of(row))

    def decode(self, cursor: str, argument: str) -> list[Any]:
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            name, values = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
            # `from None`: a RecursionError's thousands of frames need not be kept.
            raise BadUserInput(f"`{argument}` is not a valid cursor", argument=argument) from None
        if name != self.name:
            raise BadUserInput(
                f"`{argument}` is a cursor of another list or order ({name}), not of {self.name}",
                argument=argument,
            )
        # Every sort key is text or a UUID, never NULL (the migrations back-fill the legacy NULLs).
        if (
            not isinstance(values, list)
            or len(values) != len(self.columns)
            or not all(isinstance(value, str) and string_problem(value) is None for value in values)
        ):
            raise BadUserInput(f"`{argument}` is not a valid cursor", argument=argument)
        try:
            # A forged cursor must fail here, not as a database error on a value its column cannot hold.
            return [
                normalize_id(value) if isinstance(column.type, UUIDText) else value
                for value, column in zip(values, self.columns, strict=True)
            ]
        except ValueError as error:
            raise BadUserInput(f"`{argument}` is not a valid cursor", argument=argument) from error

    def order_by(self, reverse: bool = False) -> list[ColumnElement[Any]]:
        return self.order_by_columns(None, reverse=reverse)

    def order_by_columns(self, source: Any, *, reverse: bool = False) -> list[ColumnElement[Any]]:
        """ORDER BY terms on these columns, or on the same-named columns of `source` (a subquery)."""
        descending = self.descending != reverse
        columns = [column if source is None else source[column.key] for column in self.columns]
        return [column.desc() if descending else column.asc() for column in columns]

    def beyond(
        self, cursor: str, argument: str, *, forward: bool, parameter: str | None = None
    ) -> ColumnElement[bool]:
        """Rows after (`forward`) or before the cursor, in this ordering's direction; its values
        as parameters named `{parameter}.0`, `{parameter}.1`... when a name is given."""
        values = self.decode(cursor, argument)
        keys = sa.tuple_(*self.columns)
        bound = sa.tuple_(
            *[
                sa.literal(value, column.type)
                if parameter is None
                else sa.bindparam(f"{parameter}.{index}", value, type_=column.type)
                for index, (value, column) in enumerate(zip(values, self.columns, strict=True))
            ]
        )
        greater = forward != self.descending
        return keys > bound if greater else keys < bound


@dataclass
class Page(Generic[Row]):
    rows: list[Row] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)
    has_next_page: bool = False
    has_previous_page: bool = False


def cursor_conditions(
    ordering: Ordering, request: PageRequest, parameter: str | None = None
) -> list[ColumnElement[bool]]:
    """The rows between the request's cursors; their values as parameters named
    `{parameter}.after.N` and `{parameter}.before.N` when a name is given."""
    conditions = []
    for argument, cursor, forward in (("after", request.after, True), ("before", request.before, False)):
        if cursor is not None:
            name = None if parameter is None else f"{parameter}.{argument}"
            conditions.append(ordering.beyond(cursor, argument, forward=forward, parameter=name))
    return conditions


def build_page(rows: Sequence[Row], ordering: Ordering, request: PageRequest) -> Page[Row]:
    """Rows come in reading order for forward pages and reversed for backward ones, one extra row
    beyond the page telling whether more exist in that direction.

    In the direction opposite to reading, a page says there is more when it was given a cursor on
    that side (`after` forward, `before` backward), which the Relay specification allows.
    """
    more = len(rows) > request.size
    page_rows = list(rows[: request.size])
    if request.backward:
        page_rows.reverse()
        has_previous, has_next = more, request.before is not None
    else:
        has_next, has_previous = more, request.after is not None
    return Page(
        rows=page_rows,
        cursors=[ordering.encode(row) for row in page_rows],
        has_next_page=has_next,
        has_previous_page=has_previous,
    )


async def fetch_page(
    session: AsyncSession,
    *,
    model: type[Row],
    ordering: Ordering,
    request: PageRequest,
    where: Sequence[ColumnElement[bool]] = (),
) -> Page[Row]:
    """One page of one list: a single statement."""
    statement = (
        sa.select(model)
        .where(*where, *cursor_conditions(ordering, request))
        .order_by(*ordering.order_by(reverse=request.backward))
        .limit(request.size + 1)
    )
    rows = (await session.execute(statement)).scalars().all()
    return build_page(rows, ordering, request)


async def fetch_pages_by_parent(
    session: AsyncSession,
    *,
    model: type[Row],
    parent_column: KeyedColumnElement[Any],
    parent_ids: Sequence[str],
    ordering: Ordering,
    request: PageRequest,
    where: Sequence[ColumnElement[bool]] = (),
) -> dict[str, Page[Row]]:
    """The same page of many parents' lists (a thread's steps for 20 threads) in one statement.

    PostgreSQL reads each parent's page straight off the index, stopping after it (a LATERAL
    subquery with LIMIT per parent), so `last: 10` of a thread with thousands of steps reads ~10
    rows. SQLite has no LATERAL: rows are numbered per parent by a window function instead.
    """
    conditions = [*where, *cursor_conditions(ordering, request)]
    reading_order = ordering.order_by(reverse=request.backward)
    if dialect_name(session) == "postgresql":
        parents = (
            sa.func.unnest(sa.bindparam(None, list(parent_ids), postgresql.ARRAY(postgresql.UUID())))
            .table_valued("id")
            .render_derived(name="parents")
        )
        page_rows = (
            sa.select(model)
            .where(parent_column == parents.c.id, *conditions)
            .order_by(*reading_order)
            .limit(request.size + 1)
            .lateral("page_rows")
        )
        outer_order = ordering.order_by_columns(page_rows.c, reverse=request.backward)
        statement = (
            sa.select(aliased(model, page_rows))
            .select_from(parents)
            .join(page_rows, sa.true())
            .order_by(page_rows.c[parent_column.key], *outer_order)
        )
    else:
        number = sa.func.row_number().over(partition_by=parent_column, order_by=reading_order)
        numbered = (
            sa.select(model, number.label("position"))
            .where(parent_column.in_(list(parent_ids)), *conditions)
            .subquery("numbered")
        )
        statement = (
            sa.select(aliased(model, numbered))
            .where(numbered.c.position <= request.size + 1)
            .order_by(numbered.c[parent_column.key], numbered.c.position)
        )
    grouped: dict[str, list[Row]] = {parent_id: [] for parent_id in parent_ids}
    for row in (await session.execute(statement)).scalars().all():
        grouped[getattr(row, parent_column.key)].append(row)
    return {parent_id: build_page(rows, ordering, request) for parent_id, rows in grouped.items()}


async def count_by_parent(
    session: AsyncSession,
    *,
    parent_column: KeyedColumnElement[Any],
    parent_ids: Sequence[str],
    where: Sequence[ColumnElement[bool]] = (),
) -> dict[str, int]:
    statement = (
        sa.select(parent_column, sa.func.count())
        .where(parent_column.in_(list(parent_ids)), *where)
        .group_by(parent_column)
    )
    counts = {parent_id: 0 for parent_id in parent_ids}
    for parent_id, count in (await session.execute(statement)).all():
        counts[parent_id] = count
    return counts


async def count_rows(
    session: AsyncSession, *, model: type[Any], where: Sequence[ColumnElement[bool]] = ()
) -> int:
    statement = sa.select(sa.func.count()).select_from(model).where(*where)
    return int((await session.execute(statement)).scalar_one())
