"""Reads the database answers as JSON: a selection of threads, steps, feedback and users, with
their nested lists and pages, turned into one SQL statement that builds the response's JSON
(PostgreSQL `json_build_object`/`json_agg`, SQLite `json_object`/`json_group_array`).

This is how Hasura and PostGraphile serve reads: the database already holds the rows and builds
JSON in C, so the gateway sends one statement and writes the bytes out, instead of turning rows
into objects and objects into JSON field by field. The selection says which keys to output and
from which columns; the caller's access, filters, keyset cursors and page sizes are the same
conditions (the same functions) the row-by-row data access uses, so both answer alike.

Each level is a subquery over one table: the page's rows (access, filter, cursor, LIMIT size+1,
numbered in reading order), then one JSON object or array built over them; a nested list or object
is a subquery correlated to its parent's row. Base tables appear only in the innermost selects, so
no nested level can be correlated to the wrong table.
"""

import secrets
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from gateway.data.access import ACCESS_USER_PARAMETER, Access
from gateway.data.elements import ELEMENT_ORDER
from gateway.data.feedback import FEEDBACK_ORDER
from gateway.data.pagination import Ordering, PageRequest, cursor_conditions
from gateway.data.steps import STEP_ORDER, StepFilter, step_filter_conditions
from gateway.data.threads import THREAD_ORDERINGS, ThreadFilter, filter_conditions
from gateway.jsonops import like_pattern
from gateway.tables import UUIDText, elements_table, feedbacks_table, steps_table, threads_table, users_table

# How a column is output, mirroring the GraphQL types' serialization.
Kind = Literal[
    "plain",  # text, ids, integers: as stored
    "timestamp",  # the DateTime scalar: stored text in the canonical ISO-8601 form
    "bool",
    "tags",  # a list of strings; none is []
    "object",  # JSONObject of `row.x or {}`
    "object_or_null",  # JSONObject when the stored value is an object, else null
    "json",  # any JSON value, as stored
]

CANONICAL_TIMESTAMP_PG = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
CANONICAL_TIMESTAMP_SQLITE = (
    "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z"
)
FALSY_JSON = ("null", "false", "0", '""', "[]", "{}")
# Begins the text that stands for an element's URL until it is signed: random per process, so no
# stored value can pass for one.
SIGN_MARKER = f"gateway-sign-{secrets.token_hex(16)}:"


@dataclass(frozen=True)
class Value:
    key: str
    column: str
    kind: Kind = "plain"


@dataclass(frozen=True)
class SignedUrl:
    """An element's URL: its own for an element attached by reference; for a stored object a marker
    (`SIGN_MARKER` + JSON [object key, name, mime]) that the caller replaces by a URL signed now."""

    key: str


@dataclass(frozen=True)
class ElementList:
    """A step's elements: a plain list, oldest first."""

    key: str
    node: "Node"


@dataclass(frozen=True)
class Constant:
    """A fixed string (`__typename`)."""

    key: str
    value: str


@dataclass(frozen=True)
class OwnerOnly:
    """A thread's owner column, null for callers who do not own the thread (shared threads)."""

    key: str
    column: str


@dataclass(frozen=True)
class Related:
    """A to-one relation (a thread's user, a step's thread, parent or feedback, a feedback's step)."""

    key: str
    relation: str
    node: "Node"


@dataclass(frozen=True)
class Cursor:
    key: str


@dataclass(frozen=True)
class EdgeNode:
    key: str
    node: "Node"


@dataclass(frozen=True)
class Edges:
    key: str
    members: tuple[Cursor | EdgeNode | Constant, ...]


PageInfoField = Literal["hasNextPage", "hasPreviousPage", "startCursor", "endCursor"]


@dataclass(frozen=True)
class PageInfoValue:
    key: str
    field: PageInfoField


@dataclass(frozen=True)
class PageInfo:
    key: str
    members: tuple[PageInfoValue | Constant, ...]


@dataclass(frozen=True)
class TotalCount:
    key: str


ConnectionMember = Edges | PageInfo | TotalCount | Constant


@dataclass(frozen=True)
class Listing:
    """A to-many relation read as a Relay connection (a thread's steps, a step's children)."""

    key: str
    relation: str
    request: PageRequest
    members: tuple[ConnectionMember, ...]
    step_filter: StepFilter = field(default_factory=StepFilter)


Member = Value | Constant | OwnerOnly | Related | Listing | SignedUrl | ElementList
Node = tuple[Member, ...]


@dataclass(frozen=True)
class ThreadList:
    """The root `threads` connection."""

    key: str
    request: PageRequest
    members: tuple[ConnectionMember, ...]
    thread_filter: ThreadFilter
    order_field: str = "updatedAt"
    descending: bool = True


@dataclass(frozen=True)
class ById:
    """A root object by id (`thread`, `step`): null when missing or out of the caller's reach."""

    key: str
    table: Literal["threads", "steps", "elements"]
    id: str
    node: Node


RootMember = ThreadList | ById | Constant


@dataclass(frozen=True)
class _ToOne:
    table: sa.Table
    join: tuple[str, str]  # (column of the related table, column of the parent row)
    single: bool  # LIMIT 1: a step's feedback, one per step


@dataclass(frozen=True)
class _ToMany:
    table: sa.Table
    parent_column: str
    ordering: Ordering


TO_ONE = {
    "user": _ToOne(users_table, ("id", "userId"), False),
    "thread": _ToOne(threads_table, ("id", "threadId"), False),
    "parent": _ToOne(steps_table, ("id", "parentId"), False),
    "feedback": _ToOne(feedbacks_table, ("forId", "id"), True),
    "step": _ToOne(steps_table, ("id", "forId"), False),
}
TO_MANY = {
    "steps": _ToMany(steps_table, "threadId", STEP_ORDER),
    "children": _ToMany(steps_table, "parentId", STEP_ORDER),
    "feedbacks": _ToMany(feedbacks_table, "threadId", FEEDBACK_ORDER),
    "elements": _ToMany(elements_table, "threadId", ELEMENT_ORDER),
}
BY_ID = {"threads": threads_table, "steps": steps_table, "elements": elements_table}


def _readable(table: sa.Table, access: Access) -> list[ColumnElement[bool]]:
    """The caller's access to rows of this table reached by id (as the by-id loaders apply it)."""
    if table is threads_table:
        return access.readable_threads()
    if table is steps_table:
        return access.readable_steps()
    if table is users_table:
        return access.users()
    if table is elements_table:
        return access.readable_elements()
    return []  # a step's feedback: readable with its step


class _Builder:
    """Builds the statement for one dialect and one caller."""

    def __init__(self, dialect: str, access: Access) -> None:
        self.postgres = dialect == "postgresql"
        self.access = access
        self.aliases = 0

    def _name(self) -> str:
        self.aliases += 1
        return f"j{self.aliases}"

    # JSON building blocks

    def _object(self, pairs: Sequence[tuple[str, ColumnElement[Any]]]) -> ColumnElement[Any]:
        arguments: list[ColumnElement[Any]] = []
        for key, value in pairs:
            # Keys are GraphQL names ([_A-Za-z][_0-9A-Za-z]*): inlined, the text stays the same per
            # selection, so the statement cache and PostgreSQL's prepared statements are reused.
            arguments += [sa.literal_column(f"'{key}'"), value]
        return sa.func.json_build_object(*arguments) if self.postgres else sa.func.json_object(*arguments)

    def _json(self, text: str) -> ColumnElement[Any]:
        return (
            sa.literal_column(f"'{text}'::json")
            if self.postgres
            else sa.func.json(sa.literal_column(f"'{text}'"))
        )

    def _boolean(self, condition: ColumnElement[bool]) -> ColumnElement[Any]:
        if self.postgres:
            return condition
        return sa.case((condition, self._json("true")), else_=self._json("false"))

    def _agg(self, value: ColumnElement[Any], order: ColumnElement[Any]) -> Any:
        """A JSON array of the value over the page's rows, in list order."""
        if self.postgres:
            return sa.func.json_agg(aggregate_order_by(value, order))
        return sa.func.json_group_array(value)  # in the order of the (ordered) page

    def _element(self, array: ColumnElement[Any], index: int) -> ColumnElement[Any]:
        """An item of a JSON array as text (index -1: the last); null for an empty array."""
        if self.postgres:
            return array.op("->>")(sa.literal_column(str(index)))
        return sa.func.json_extract(array, sa.literal_column("'$[0]'" if index == 0 else "'$[#-1]'"))

    def _embedded(self, scalar: ColumnElement[Any]) -> ColumnElement[Any]:
        """A JSON value from a subquery: SQLite forgets it is JSON across a subquery."""
        return scalar if self.postgres else sa.func.json(scalar)

    def _value(self, column: ColumnElement[Any], kind: Kind) -> ColumnElement[Any]:
        if kind == "plain":
            return column
        if kind == "timestamp":
            canonical = (
                column.regexp_match(CANONICAL_TIMESTAMP_PG)
                if self.postgres
                else column.op("GLOB")(sa.literal_column(f"'{CANONICAL_TIMESTAMP_SQLITE}'"))
            )
            return sa.case((canonical, column), else_=sa.func.gateway_display_timestamp(column))
        if kind == "bool":
            if self.postgres:
                return column
            return sa.case(
                (column.is_(None), sa.null()), (column != 0, self._json("true")), else_=self._json("false")
            )
        if kind == "tags":
            if self.postgres:
                return sa.func.coalesce(sa.func.to_json(column), self._json("[]"))
            return sa.func.coalesce(sa.func.json(column), self._json("[]"))
        if kind == "object":
            if self.postgres:
                falsy: list[ColumnElement[Any]] = [
                    sa.literal_column(f"'{text}'::jsonb") for text in FALSY_JSON
                ]
                # In the column's own type: CASE cannot mix json and jsonb.
                empty: ColumnElement[Any] = sa.literal_column("'{}'::jsonb")
                return sa.case((sa.or_(column.is_(None), column.in_(falsy)), empty), else_=column)
            falsy_text: list[ColumnElement[Any]] = [sa.literal_column(f"'{text}'") for text in FALSY_JSON]
            return sa.case(
                (sa.or_(column.is_(None), sa.func.json(column).in_(falsy_text)), self._json("{}")),
                else_=sa.func.json(column),
            )
        if kind == "object_or_null":
            if self.postgres:
                return sa.case((sa.func.jsonb_typeof(column) == "object", column), else_=sa.null())
            return sa.case((sa.func.json_type(column) == "object", sa.func.json(column)), else_=sa.null())
        return column if self.postgres else sa.func.json(column)

    def _cursor(self, ordering: Ordering, row: Any) -> ColumnElement[Any]:
        """The cursor `Ordering.encode` makes, built by the database from the row's sort keys."""
        values = [row.c[column.key] for column in ordering.columns]
        if not self.postgres:
            return sa.func.gateway_cursor(sa.literal_column(f"'{ordering.name}'"), *values)
        parts: list[ColumnElement[Any]] = []
        for index, value in enumerate(values):
            if index:
                parts.append(sa.literal_column("','"))
            parts.append(sa.cast(sa.func.to_json(sa.cast(value, sa.Text)), sa.Text))
        text = sa.func.concat(
            sa.literal_column(f"'[\"{ordering.name}\",['"), *parts, sa.literal_column("']]'")
        )
        encoded = sa.func.encode(
            sa.func.convert_to(text, sa.literal_column("'UTF8'")), sa.literal_column("'base64'")
        )
        # base64url without padding or line breaks, as Python's urlsafe_b64encode(...).rstrip("=")
        return sa.func.rtrim(
            sa.func.translate(encoded, sa.literal_column("E'+/\\n'"), sa.literal_column("'-_'")),
            sa.literal_column("'='"),
        )

    # Levels

    def _columns_for(self, table: sa.Table, node: Node, ordering: Ordering | None) -> list[str]:
        """The columns a level's rows must carry: those its members output or join on."""
        needed: list[str] = ["id"]
        for member in node:
            if isinstance(member, Value):
                needed.append(member.column)
            elif isinstance(member, OwnerOnly):
                needed += ["userId", member.column]
            elif isinstance(member, SignedUrl):
                needed += ["objectKey", "url", "name", "mime"]
            elif isinstance(member, Related):
                needed.append(TO_ONE[member.relation].join[1])
        if ordering is not None:
            needed += [column.key for column in ordering.columns]
        return [name for name in dict.fromkeys(needed) if name in table.c]

    def node(self, node: Node, row: Any, path: str) -> ColumnElement[Any]:
        """One JSON object of a row (a subquery's row `row`); `path` names its parameters."""
        pairs: list[tuple[str, ColumnElement[Any]]] = []
        for member in node:
            if isinstance(member, Value):
                pairs.append((member.key, self._value(row.c[member.column], member.kind)))
            elif isinstance(member, Constant):
                pairs.append((member.key, sa.literal_column(f"'{member.value}'")))
            elif isinstance(member, OwnerOnly):
                owner = row.c.userId
                if self.access.everything:
                    pairs.append((member.key, row.c[member.column]))
                else:
                    owned = owner == self.access.user
                    pairs.append((member.key, sa.case((owned, row.c[member.column]), else_=sa.null())))
            elif isinstance(member, Related):
                pairs.append((member.key, self._related(member, row, f"{path}.{member.key}")))
            elif isinstance(member, SignedUrl):
                pairs.append((member.key, self._signed_url(row)))
            elif isinstance(member, ElementList):
                pairs.append((member.key, self._elements_of_step(member, row, f"{path}.{member.key}")))
            else:
                pairs.append((member.key, self._listing(member, row, f"{path}.{member.key}")))
        return self._object(pairs)

    def _related(self, member: Related, parent: Any, path: str) -> ColumnElement[Any]:
        relation = TO_ONE[member.relation]
        table = relation.table
        own_column, parent_column = relation.join
        inner = sa.select(*[table.c[name] for name in self._columns_for(table, member.node, None)]).where(
            table.c[own_column] == parent.c[parent_column], *_readable(table, self.access)
        )
        if relation.single:
            inner = inner.limit(1)
        one = inner.correlate(parent).subquery(self._name())
        return self._embedded(sa.select(self.node(member.node, one, path)).select_from(one).scalar_subquery())

    def _signed_url(self, row: Any) -> ColumnElement[Any]:
        parts = [row.c.objectKey, row.c.name, row.c.mime]
        described = (
            sa.cast(sa.func.json_build_array(*parts), sa.Text)
            if self.postgres
            else sa.func.json_array(*parts)
        )
        marked = sa.literal_column(f"'{SIGN_MARKER}'").concat(described)
        return sa.case((row.c.objectKey.is_(None), row.c.url), else_=marked)

    def _elements_of_step(self, member: ElementList, parent: Any, path: str) -> ColumnElement[Any]:
        table = elements_table
        order = (table.c.createdAt, table.c.id)
        columns = dict.fromkeys([*self._columns_for(table, member.node, None), "createdAt", "id"])
        inner = (
            sa.select(*[table.c[name] for name in columns])
            .where(table.c.forId == parent.c.id, *self.access.readable_elements())
            .order_by(*order)
            .correlate(parent)
            .subquery(self._name())
        )
        node = self.node(member.node, inner, path)
        if self.postgres:
            listed = sa.func.json_agg(aggregate_order_by(node, inner.c.createdAt, inner.c.id))
            return sa.select(sa.func.coalesce(listed, self._json("[]"))).select_from(inner).scalar_subquery()
        return sa.func.json(sa.select(sa.func.json_group_array(node)).select_from(inner).scalar_subquery())

    def _listing(self, member: Listing, parent: Any, path: str) -> ColumnElement[Any]:
        relation = TO_MANY[member.relation]
        table = relation.table
        where = [table.c[relation.parent_column] == parent.c.id]
        if member.relation == "steps":
            where += step_filter_conditions(member.step_filter)
        elif member.relation == "children":
            where += self.access.readable_steps()
        return self._embedded(
            self.connection(
                table,
                relation.ordering,
                member.request,
                member.members,
                where=where,
                correlate=parent,
                path=path,
            )
        )

    def connection(
        self,
        table: sa.Table,
        ordering: Ordering,
        request: PageRequest,
        members: tuple[ConnectionMember, ...],
        *,
        where: list[ColumnElement[bool]],
        path: str,
        correlate: Any = None,
    ) -> ColumnElement[Any]:
        """A Relay connection as one JSON object: the page (size + 1 rows, to tell whether more
        follow), its edges in list order, its pageInfo, and totalCount when selected."""
        nodes = [
            edge.node
            for edges in members
            if isinstance(edges, Edges)
            for edge in edges.members
            if isinstance(edge, EdgeNode)
        ]
        columns: list[str] = []
        for node in nodes or [()]:
            columns += self._columns_for(table, node, ordering)
        reading = ordering.order_by(reverse=request.backward)
        inner = (
            sa.select(
                *[table.c[name] for name in dict.fromkeys(columns)],
                sa.func.row_number().over(order_by=reading).label("position"),
            )
            .where(*where, *cursor_conditions(ordering, request, path))
            .order_by(*reading)
            .limit(sa.bindparam(f"{path}.limit", request.size + 1, type_=sa.Integer()))
        )
        if correlate is not None:
            inner = inner.correlate(correlate)
        page = inner.subquery(self._name())
        # `last` pages are read backwards: their edges come out in list order, the last read first.
        listed = page.c.position.desc() if request.backward else page.c.position.asc()
        if request.backward and not self.postgres:
            # json_group_array takes the rows in the order its FROM gives them.
            page = sa.select(page).order_by(listed).subquery(self._name())
            listed = page.c.position.desc()
        size = sa.bindparam(f"{path}.size", request.size, type_=sa.Integer())
        on_page = page.c.position <= size
        more = sa.func.count() > size
        pairs: list[tuple[str, ColumnElement[Any]]] = []
        for member in members:
            if isinstance(member, Constant):
                pairs.append((member.key, sa.literal_column(f"'{member.value}'")))
            elif isinstance(member, TotalCount):
                pairs.append((member.key, self._count(table, where, correlate)))
            elif isinstance(member, Edges):
                edge = self._object(
                    [
                        (item.key, self._cursor(ordering, page))
                        if isinstance(item, Cursor)
                        else (item.key, sa.literal_column(f"'{item.value}'"))
                        if isinstance(item, Constant)
                        else (item.key, self.node(item.node, page, f"{path}.{member.key}.{item.key}"))
                        for item in member.members
                    ]
                )
                edges = self._agg(edge, listed).filter(on_page)
                if self.postgres:  # json_agg of no rows is NULL, json_group_array's is []
                    edges = sa.func.coalesce(edges, self._json("[]"))
                pairs.append((member.key, edges))
            else:
                info: list[tuple[str, ColumnElement[Any]]] = []
                for item in member.members:
                    if isinstance(item, Constant):
                        info.append((item.key, sa.literal_column(f"'{item.value}'")))
                    elif item.field == "hasNextPage":
                        info.append(
                            (
                                item.key,
                                self._boolean(more)
                                if not request.backward
                                else self._boolean(sa.literal(request.before is not None)),
                            )
                        )
                    elif item.field == "hasPreviousPage":
                        info.append(
                            (
                                item.key,
                                self._boolean(more)
                                if request.backward
                                else self._boolean(sa.literal(request.after is not None)),
                            )
                        )
                    else:
                        # The first or last of the page's cursors, in list order.
                        cursors = self._agg(self._cursor(ordering, page), listed).filter(on_page)
                        index = 0 if item.field == "startCursor" else -1
                        info.append((item.key, self._element(cursors, index)))
                pairs.append((member.key, self._object(info)))
        answer = sa.select(self._object(pairs))
        if _reads_page(members, request):
            answer = answer.select_from(page)  # aggregates only: one row, even for an empty page
        return answer.scalar_subquery()

    def _count(self, table: sa.Table, where: list[ColumnElement[bool]], correlate: Any) -> ColumnElement[Any]:
        counting = sa.select(sa.func.count()).select_from(table).where(*where)
        if correlate is not None:
            counting = counting.correlate(correlate)
        return counting.scalar_subquery()

    def root(self, members: Sequence[RootMember]) -> sa.Select[Any]:
        pairs: list[tuple[str, ColumnElement[Any]]] = []
        for member in members:
            path = f"r.{member.key}"
            if isinstance(member, Constant):
                pairs.append((member.key, sa.literal_column(f"'{member.value}'")))
            elif isinstance(member, ThreadList):
                ordering = THREAD_ORDERINGS[(member.order_field, member.descending)]
                where = [
                    *self.access.owned_threads(),
                    *filter_conditions(member.thread_filter, f"{path}.filter"),
                ]
                listing = self.connection(
                    threads_table, ordering, member.request, member.members, where=where, path=path
                )
                pairs.append((member.key, self._embedded(listing)))
            else:
                table = BY_ID[member.table]
                row_id = sa.bindparam(f"{path}.id", member.id, type_=UUIDText())
                inner = sa.select(
                    *[table.c[name] for name in self._columns_for(table, member.node, None)]
                ).where(table.c.id == row_id, *_readable(table, self.access))
                one = inner.subquery(self._name())
                found = sa.select(self.node(member.node, one, path)).select_from(one).scalar_subquery()
                pairs.append((member.key, self._embedded(found)))
        data = self._object(pairs)
        return sa.select(sa.cast(data, sa.Text) if self.postgres else data)  # the text, not parsed


def _reads_page(members: tuple[ConnectionMember, ...], request: PageRequest) -> bool:
    """Whether a connection's JSON aggregates its page's rows (else it needs none of them: only
    constants, totalCount, or the page-info flags its arguments decide)."""
    reading_side = "hasPreviousPage" if request.backward else "hasNextPage"
    for member in members:
        if isinstance(member, Edges):
            return True
        if isinstance(member, PageInfo) and any(
            isinstance(item, PageInfoValue) and item.field in (reading_side, "startCursor", "endCursor")
            for item in member.members
        ):
            return True
    return False


def _parameters(members: Sequence[RootMember], access: Access) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """The values of a statement's named parameters, as the builder names them (by the path of
    the selection they belong to), and the shape of the request: whatever else of its arguments
    the statement holds (page directions, the rest of a filter, the order). Requests of one
    selection and one shape share a statement."""
    parameters: dict[str, Any] = {}
    shape: list[Any] = [access.everything]
    if not access.everything:
        parameters[ACCESS_USER_PARAMETER] = access.user_id
    for member in members:
        path = f"r.{member.key}"
        if isinstance(member, ThreadList):
            ordering = THREAD_ORDERINGS[(member.order_field, member.descending)]
            thread_filter = member.thread_filter
            for name, value in (
                ("userId", thread_filter.user_id),
                ("userIdentifier", thread_filter.user_identifier),
                ("search", like_pattern(thread_filter.search) if thread_filter.search else None),
            ):
                if value is not None:
                    parameters[f"{path}.filter.{name}"] = value
            given = replace(
                thread_filter,
                user_id=None if thread_filter.user_id is None else "",
                user_identifier=None if thread_filter.user_identifier is None else "",
                search=thread_filter.search and "",
            )
            shape.append((given, member.order_field, member.descending))
            _page_parameters(parameters, shape, path, ordering, member.request, member.members)
        elif isinstance(member, ById):
            parameters[f"{path}.id"] = member.id
            _node_parameters(parameters, shape, path, member.node)
    return parameters, tuple(shape)


def _node_parameters(parameters: dict[str, Any], shape: list[Any], path: str, node: Node) -> None:
    for member in node:
        if isinstance(member, Related | ElementList):
            _node_parameters(parameters, shape, f"{path}.{member.key}", member.node)
        elif isinstance(member, Listing):
            ordering = TO_MANY[member.relation].ordering
            shape.append(member.step_filter)
            _page_parameters(
                parameters, shape, f"{path}.{member.key}", ordering, member.request, member.members
            )


def _page_parameters(
    parameters: dict[str, Any],
    shape: list[Any],
    path: str,
    ordering: Ordering,
    request: PageRequest,
    members: tuple[ConnectionMember, ...],
) -> None:
    shape.append((request.backward, request.after is not None, request.before is not None))
    parameters[f"{path}.limit"] = request.size + 1
    parameters[f"{path}.size"] = request.size
    for argument, cursor in (("after", request.after), ("before", request.before)):
        if cursor is not None:
            for index, value in enumerate(ordering.decode(cursor, argument)):
                parameters[f"{path}.{argument}.{index}"] = value
    for edges in members:
        if isinstance(edges, Edges):
            for item in edges.members:
                if isinstance(item, EdgeNode):
                    _node_parameters(parameters, shape, f"{path}.{edges.key}.{item.key}", item.node)


class StatementCache:
    """Statements by dialect, selection and shape (least recently used out first): each is built
    and compiled once, then each request only binds its values."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._statements: OrderedDict[Any, sa.Select[Any]] = OrderedDict()

    def statement(self, key: Any, build: Callable[[], sa.Select[Any]]) -> sa.Select[Any]:
        statement = self._statements.get(key)
        if statement is None:
            statement = build()
            self._statements[key] = statement
            if len(self._statements) > self.size:
                self._statements.popitem(last=False)
        else:
            self._statements.move_to_end(key)
        return statement


def json_statement(dialect: str, *, members: Sequence[RootMember], access: Access) -> sa.Select[Any]:
    """The statement that answers these root fields with one JSON object."""
    return _Builder(dialect, access).root(members)


async def read_json(
    connection: AsyncConnection,
    *,
    members: Sequence[RootMember],
    access: Access,
    statements: StatementCache | None = None,
    selection: Hashable = None,
) -> str:
    """The JSON text of `data`: every root field, as one statement builds it. With a cache, the
    statement is kept for `selection` (what the members select, whatever their arguments)."""
    dialect = connection.dialect.name
    parameters, shape = _parameters(members, access)  # first: a bad cursor is refused before any SQL
    if statements is None or selection is None:
        statement = json_statement(dialect, members=members, access=access)
    else:
        statement = statements.statement(
            (dialect, selection, shape), lambda: json_statement(dialect, members=members, access=access)
        )
    text = (await connection.execute(statement, parameters)).scalar_one()
    return str(text)
