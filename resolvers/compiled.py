"""The compiled read path: a query operation over threads, steps, feedback and users is turned into
one SQL statement that builds the response's JSON (`gateway.data.json_reads`), instead of being
resolved field by field.

The operation's selection is translated once per document and operation (kept with the prepared
document); each request binds its arguments (page sizes, cursors, filters, ids) through the same
conversions the resolvers use, and sends one statement. Anything this path does not answer exactly
as the resolvers would returns None, and the request runs on the resolver path, which then answers
it (errors included): fields it does not cover (an element's URL is signed at read time,
introspection, `@skip`/`@include`), an argument the resolvers would refuse, variables that do not
coerce, a limit exceeded, a database error. The contract never depends on the compiler.

A document of one mutation field (`upsertStep`, `appendStepOutput`, `upsertFeedback`...) whose
selection is only fields its result holds skips graphql-core's execution too: its resolver is
called with the same arguments, and its result written out as graphql-core would complete it. A
write the resolver refuses was rolled back, and the resolvers run the request again to answer it.
"""

import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import strawberry
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    get_named_type,
    specified_rules,
)
from graphql.execution.values import VariableValues, get_argument_values, get_variable_values
from strawberry.types.arguments import StrawberryArgument, convert_arguments
from strawberry.types.enum import StrawberryEnumDefinition
from strawberry.utils.str_converters import to_camel_case

from gateway.data import json_reads
from gateway.data.pagination import PageRequest
from gateway.data.threads import ThreadFilter
from gateway.database import Database
from gateway.errors import GatewayError
from gateway.jsonops import to_json_bytes
from resolvers.connection import page_request
from resolvers.context import GatewayContext
from resolvers.documents import PreparedDocument, prepare
from resolvers.extensions import batch_variables, variables_problem
from resolvers.ids import parse_id
from resolvers.limits import Limits, check_operation
from resolvers.threads.queries import OrderDirection, ThreadOrder

logger = logging.getLogger("gateway.compiled")
VALIDATION_RULES = tuple(specified_rules)


class NotCompiled(Exception):
    """The operation, or this request of it, is left to the resolver path."""


# GraphQL field -> how the database outputs it, per object type.
VALUES: dict[str, dict[str, json_reads.Kind]] = {
    "Thread": {
        "id": "plain",
        "name": "plain",
        "createdAt": "timestamp",
        "updatedAt": "timestamp",
        "tags": "tags",
        "metadata": "object",
    },
    "Step": {
        "id": "plain",
        "threadId": "plain",
        "parentId": "plain",
        "name": "plain",
        "type": "plain",
        "input": "plain",
        "output": "plain",
        "isError": "bool",
        "streaming": "bool",
        "waitForAnswer": "bool",
        "showInput": "plain",
        "language": "plain",
        "command": "plain",
        "modes": "json",
        "defaultOpen": "bool",
        "autoCollapse": "bool",
        "tags": "tags",
        "metadata": "object",
        "generation": "object_or_null",
        "createdAt": "timestamp",
        "start": "timestamp",
        "end": "timestamp",
    },
    "Feedback": {"id": "plain", "forId": "plain", "threadId": "plain", "value": "plain", "comment": "plain"},
    "User": {"id": "plain", "identifier": "plain", "metadata": "object", "createdAt": "timestamp"},
    "Element": {
        "id": "plain",
        "threadId": "plain",
        "forId": "plain",
        "type": "plain",
        "name": "plain",
        "mime": "plain",
        "size": "plain",
        "display": "plain",
        "language": "plain",
        "page": "plain",
        "props": "object_or_null",
        "objectKey": "plain",
        "chainlitKey": "plain",
        "sizeBytes": "plain",
        "createdAt": "timestamp",
    },
}
OWNER_ONLY = {("Thread", "userId"): "userId", ("Thread", "userIdentifier"): "userIdentifier"}
RELATED = {
    ("Thread", "user"): "user",
    ("Step", "thread"): "thread",
    ("Step", "parent"): "parent",
    ("Step", "feedback"): "feedback",
    ("Feedback", "step"): "step",
}
LISTINGS = {
    ("Thread", "steps"): "steps",
    ("Thread", "feedbacks"): "feedbacks",
    ("Thread", "elements"): "elements",
    ("Step", "children"): "children",
}
BY_ID = {"thread": "threads", "step": "steps", "element": "elements"}
PAGE_INFO_FIELDS = ("hasNextPage", "hasPreviousPage", "startCursor", "endCursor")


@dataclass
class Arguments:
    """Argument values of one request: coerced by graphql-core, converted as strawberry does."""

    schema: strawberry.Schema
    variables: VariableValues

    def of(self, field: GraphQLField, node: FieldNode) -> dict[str, Any]:
        """The field's arguments by their Python names (`filter_`, `order_by`)."""
        values = get_argument_values(field, node, self.variables)
        if not any(isinstance(value, dict | list) for value in values.values()):
            return values  # scalars only (page sizes, cursors, ids): nothing to convert, same names
        definition = field.extensions["strawberry-definition"]
        converted: dict[str, Any] = {}
        for argument in definition.arguments:
            name = self.schema.config.name_converter.from_argument(argument)
            if name not in values:
                continue
            value = values[name]
            if isinstance(value, dict | list):
                plain = _plain_input(argument)
                if plain is None:  # enums, nested inputs, lists of scalars: strawberry's conversion
                    return convert_arguments(
                        values,
                        definition.arguments,
                        scalar_registry=self.schema.schema_converter.scalar_registry,
                        config=self.schema.config,
                    )
                input_class, attributes = plain
                if isinstance(value, list):  # a batch of inputs (ingestSteps)
                    value = [input_class(**{attributes[key]: v for key, v in item.items()}) for item in value]
                else:
                    value = input_class(**{attributes[key]: item for key, item in value.items()})
            converted[argument.python_name] = value
        return converted


@functools.cache  # by identity: the schema's arguments live as long as the process
def _plain_input(argument: StrawberryArgument) -> tuple[type, dict[str, str]] | None:
    """An input argument whose fields are all scalars or lists of scalars (a filter), as its class
    and its fields' Python names by GraphQL name: graphql-core has parsed every value already, so
    the instance is made directly (strawberry's general conversion costs more than the read)."""
    input_class = argument.type
    while hasattr(input_class, "of_type"):  # optional, list
        input_class = input_class.of_type
    definition = getattr(input_class, "__strawberry_definition__", None)
    if definition is None or not definition.is_input:
        return None
    attributes: dict[str, str] = {}
    for item in definition.fields:
        item_type = item.type
        while hasattr(item_type, "of_type"):  # optional, list
            item_type = item_type.of_type
        if isinstance(item_type, StrawberryEnumDefinition) or hasattr(item_type, "__strawberry_definition__"):
            return None
        attributes[item.graphql_name or to_camel_case(item.python_name)] = item.python_name
    return cast(type, input_class), attributes


class _Translator:
    """GraphQL selections to templates; raises NotCompiled for anything it does not cover."""

    def __init__(self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode]) -> None:
        self.schema = schema
        self.fragments = fragments

    def fields(
        self, selection_set: SelectionSetNode, parent: GraphQLObjectType
    ) -> dict[str, list[FieldNode]]:
        """Fields by response key, merged as GraphQL merges them, fragments expanded."""
        collected: dict[str, list[FieldNode]] = {}
        self._collect(selection_set, parent, collected, set())
        return collected

    def _collect(
        self,
        selection_set: SelectionSetNode,
        parent: GraphQLObjectType,
        collected: dict[str, list[FieldNode]],
        spread: set[str],
    ) -> None:
        for selection in selection_set.selections:
            if selection.directives:
                raise NotCompiled("directives")
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                collected.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                if condition is None or condition.name.value == parent.name:
                    self._collect(selection.selection_set, parent, collected, spread)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in spread:
                    raise NotCompiled("fragment")
                if fragment.type_condition.name.value == parent.name:
                    self._collect(fragment.selection_set, parent, collected, spread | {name})

    def _sub(self, nodes: list[FieldNode], parent: GraphQLObjectType) -> dict[str, list[FieldNode]]:
        merged: dict[str, list[FieldNode]] = {}
        for node in nodes:
            if node.selection_set is not None:
                for key, fields in self.fields(node.selection_set, parent).items():
                    merged.setdefault(key, []).extend(fields)
        return merged

    def _child_type(self, parent: GraphQLObjectType, name: str) -> GraphQLObjectType:
        child = get_named_type(parent.fields[name].type)
        if not isinstance(child, GraphQLObjectType):
            raise NotCompiled(name)
        return child

    def node(
        self, parent: GraphQLObjectType, nodes: list[FieldNode]
    ) -> Callable[[Arguments], json_reads.Node]:
        members: list[Callable[[Arguments], json_reads.Member]] = []
        for key, fields in self._sub(nodes, parent).items():
            name = fields[0].name.value
            if name == "__typename":
                members.append(_constant(json_reads.Constant(key, parent.name)))
            elif name in VALUES.get(parent.name, {}):
                members.append(_constant(json_reads.Value(key, name, VALUES[parent.name][name])))
            elif (parent.name, name) in OWNER_ONLY:
                members.append(_constant(json_reads.OwnerOnly(key, OWNER_ONLY[(parent.name, name)])))
            elif (parent.name, name) in RELATED:
                members.append(self._related(key, parent, fields))
            elif (parent.name, name) in LISTINGS:
                members.append(self._listing(key, parent, fields))
            elif (parent.name, name) == ("Element", "url"):
                members.append(_constant(json_reads.SignedUrl(key)))
            elif (parent.name, name) == ("Step", "elements"):
                members.append(self._element_list(key, parent, fields))
            else:
                raise NotCompiled(f"{parent.name}.{name}")
        return lambda arguments: tuple(member(arguments) for member in members)

    def _related(
        self, key: str, parent: GraphQLObjectType, fields: list[FieldNode]
    ) -> Callable[[Arguments], json_reads.Member]:
        name = fields[0].name.value
        node = self.node(self._child_type(parent, name), fields)
        relation = RELATED[(parent.name, name)]
        return lambda arguments: json_reads.Related(key, relation, node(arguments))

    def connection(
        self, connection_type: GraphQLObjectType, fields: list[FieldNode]
    ) -> Callable[[Arguments], tuple[json_reads.ConnectionMember, ...]]:
        members: list[Callable[[Arguments], json_reads.ConnectionMember]] = []
        for key, selected in self._sub(fields, connection_type).items():
            name = selected[0].name.value
            if name == "__typename":
                members.append(_constant(json_reads.Constant(key, connection_type.name)))
            elif name == "totalCount":
                members.append(_constant(json_reads.TotalCount(key)))
            elif name == "pageInfo":
                members.append(
                    _constant(self._page_info(key, self._child_type(connection_type, name), selected))
                )
            elif name == "edges":
                members.append(self._edges(key, self._child_type(connection_type, name), selected))
            else:
                raise NotCompiled(f"{connection_type.name}.{name}")
        return lambda arguments: tuple(member(arguments) for member in members)

    def _page_info(
        self, key: str, page_info: GraphQLObjectType, fields: list[FieldNode]
    ) -> json_reads.PageInfo:
        members: list[json_reads.PageInfoValue | json_reads.Constant] = []
        for item_key, selected in self._sub(fields, page_info).items():
            name = selected[0].name.value
            if name == "__typename":
                members.append(json_reads.Constant(item_key, page_info.name))
            elif name in PAGE_INFO_FIELDS:
                members.append(json_reads.PageInfoValue(item_key, name))  # type: ignore[arg-type]
            else:  # pragma: no cover - PageInfo has no other fields
                raise NotCompiled(name)
        return json_reads.PageInfo(key, tuple(members))

    def _edges(
        self, key: str, edge_type: GraphQLObjectType, fields: list[FieldNode]
    ) -> Callable[[Arguments], json_reads.Edges]:
        members: list[
            Callable[[Arguments], json_reads.Cursor | json_reads.EdgeNode | json_reads.Constant]
        ] = []
        for item_key, selected in self._sub(fields, edge_type).items():
            name = selected[0].name.value
            if name == "__typename":
                members.append(_constant(json_reads.Constant(item_key, edge_type.name)))
            elif name == "cursor":
                members.append(_constant(json_reads.Cursor(item_key)))
            elif name == "node":
                members.append(
                    self._edge_node(item_key, self.node(self._child_type(edge_type, name), selected))
                )
            else:  # pragma: no cover - edges have no other fields
                raise NotCompiled(name)
        return lambda arguments: json_reads.Edges(key, tuple(member(arguments) for member in members))

    def _element_list(
        self, key: str, parent: GraphQLObjectType, fields: list[FieldNode]
    ) -> Callable[[Arguments], json_reads.Member]:
        node = self.node(self._child_type(parent, "elements"), fields)
        return lambda arguments: json_reads.ElementList(key, node(arguments))

    @staticmethod
    def _edge_node(
        key: str, node: Callable[[Arguments], json_reads.Node]
    ) -> Callable[[Arguments], json_reads.EdgeNode]:
        return lambda arguments: json_reads.EdgeNode(key, node(arguments))

    def _listing(
        self, key: str, parent: GraphQLObjectType, fields: list[FieldNode]
    ) -> Callable[[Arguments], json_reads.Member]:
        name = fields[0].name.value
        field = parent.fields[name]
        members = self.connection(self._child_type(parent, name), fields)
        relation = LISTINGS[(parent.name, name)]
        node = fields[0]

        def bind(arguments: Arguments) -> json_reads.Member:
            values = arguments.of(field, node)
            request = _page_of(values)
            step_filter = values.get("filter_")
            return json_reads.Listing(
                key,
                relation,
                request,
                members(arguments),
                **({"step_filter": step_filter.to_filter()} if step_filter else {}),
            )

        return bind

    def mutation(self, operation: OperationDefinitionNode) -> "MutationTemplate":
        mutation_type = self.schema.mutation_type
        assert mutation_type is not None
        [(key, fields), *others] = self.fields(operation.selection_set, mutation_type).items()
        name = fields[0].name.value
        if others or name == "__typename":
            raise NotCompiled("several mutation fields")  # they run in order: the resolvers' work
        field = mutation_type.fields[name]
        resolver = field.extensions["strawberry-definition"].base_resolver.wrapped_func
        return MutationTemplate(operation, key, field, fields[0], resolver, self.output(field.type, fields))

    def output(self, graphql_type: Any, fields: list[FieldNode]) -> Callable[[Any], Any]:
        """The JSON-ready value of a result for this selection, as graphql-core completes it."""
        required = isinstance(graphql_type, GraphQLNonNull)
        of_type = graphql_type.of_type if required else graphql_type
        convert: Callable[[Any], Any]
        if isinstance(of_type, GraphQLList):
            item = self.output(of_type.of_type, fields)
            convert = lambda value: [item(each) for each in value]  # noqa: E731
        elif isinstance(of_type, GraphQLScalarType):
            convert = of_type.serialize
        elif isinstance(of_type, GraphQLObjectType):
            convert = self._object_output(of_type, fields)
        else:
            raise NotCompiled(str(of_type))  # enums: strawberry's conversion
        if required:
            return convert
        return lambda value: None if value is None else convert(value)

    def _object_output(self, object_type: GraphQLObjectType, fields: list[FieldNode]) -> Callable[[Any], Any]:
        members: list[tuple[str, str | None, Callable[[Any], Any]]] = []
        for key, selected in self._sub(fields, object_type).items():
            name = selected[0].name.value
            if name == "__typename":
                members.append((key, None, _constant(object_type.name)))
                continue
            field = object_type.fields[name]
            definition = field.extensions.get("strawberry-definition")
            if definition is None or definition.base_resolver is not None or field.args:
                raise NotCompiled(f"{object_type.name}.{name}")  # resolved by a function of its own
            members.append((key, definition.python_name, self.output(field.type, selected)))
        return lambda value: {
            key: convert(value if attribute is None else getattr(value, attribute))
            for key, attribute, convert in members
        }

    def root(self, operation: OperationDefinitionNode) -> Callable[[Arguments], list[json_reads.RootMember]]:
        if operation.operation is not OperationType.QUERY:
            raise NotCompiled("not a query")
        query_type = self.schema.query_type
        assert query_type is not None
        members: list[Callable[[Arguments], json_reads.RootMember]] = []
        for key, fields in self.fields(operation.selection_set, query_type).items():
            name = fields[0].name.value
            field = query_type.fields.get(name)
            node = fields[0]
            if name == "__typename":
                members.append(_constant(json_reads.Constant(key, query_type.name)))
            elif name == "threads":
                members.append(self._thread_list(key, query_type, fields))
            elif name in BY_ID and field is not None:
                members.append(
                    self._by_id(key, name, field, node, self.node(self._child_type(query_type, name), fields))
                )
            else:
                raise NotCompiled(f"Query.{name}")
        return lambda arguments: [member(arguments) for member in members]

    def _thread_list(
        self, key: str, query_type: GraphQLObjectType, fields: list[FieldNode]
    ) -> Callable[[Arguments], json_reads.RootMember]:
        field = query_type.fields["threads"]
        members = self.connection(self._child_type(query_type, "threads"), fields)
        node = fields[0]

        def bind(arguments: Arguments) -> json_reads.RootMember:
            values = arguments.of(field, node)
            request = _page_of(values)
            thread_filter = values["filter_"].to_filter() if values.get("filter_") else ThreadFilter()
            order = values.get("order_by") or ThreadOrder()
            return json_reads.ThreadList(
                key,
                request,
                members(arguments),
                thread_filter,
                order.field.value,
                order.direction is OrderDirection.DESC,
            )

        return bind

    def _by_id(
        self,
        key: str,
        name: str,
        field: GraphQLField,
        node: FieldNode,
        selection: Callable[[Arguments], json_reads.Node],
    ) -> Callable[[Arguments], json_reads.RootMember]:
        table = BY_ID[name]

        def bind(arguments: Arguments) -> json_reads.RootMember:
            values = arguments.of(field, node)
            return json_reads.ById(key, table, parse_id(values["id"], "id"), selection(arguments))  # type: ignore[arg-type]

        return bind


def _page_of(values: dict[str, Any]) -> PageRequest:
    return page_request(values.get("first"), values.get("after"), values.get("last"), values.get("before"))


def _constant(value: Any) -> Callable[[Arguments], Any]:
    return lambda _arguments: value


@dataclass(frozen=True, eq=False)
class MutationTemplate:
    """A document of one mutation field whose answer is only fields its result already holds
    (no field with a resolver of its own): its resolver is called directly, and the answer
    written out from the result, without graphql-core's execution."""

    operation: OperationDefinitionNode
    key: str
    field: GraphQLField
    node: FieldNode
    resolver: Callable[..., Awaitable[Any]]
    output: Callable[[Any], Any]


@dataclass
class _ResolverInfo:
    """What the mutation resolvers read of strawberry's Info: the request's context."""

    context: GatewayContext


@dataclass(frozen=True, eq=False)  # kept by identity: the statement cache's key
class Template:
    operation: OperationDefinitionNode
    bind: Callable[[Arguments], list[json_reads.RootMember]]


def _template(
    schema: strawberry.Schema, prepared: PreparedDocument, operation_name: str | None
) -> Template | MutationTemplate | None:
    """The operation's template, translated once per prepared document; None: not compiled."""
    cache: dict[str | None, Template | MutationTemplate | None] = prepared.__dict__.setdefault("compiled", {})
    if operation_name in cache:
        return cache[operation_name]
    template: Template | MutationTemplate | None = None
    document = prepared.document
    operations = prepared.operations
    if document is not None and (operation_name is not None or len(operations) == 1):
        operation = next(
            (
                item
                for item in operations
                if operation_name is None or (item.name and item.name.value == operation_name)
            ),
            None,
        )
        graphql_schema = schema._schema
        if (
            operation is not None
            and prepared.literal_problem is None
            and not prepared.validation_errors(graphql_schema, VALIDATION_RULES)
        ):
            fragments = {
                item.name.value: item
                for item in document.definitions
                if isinstance(item, FragmentDefinitionNode)
            }
            translator = _Translator(graphql_schema, fragments)
            try:
                if operation.operation is OperationType.MUTATION:
                    template = translator.mutation(operation)
                else:
                    template = Template(operation, translator.root(operation))
            except NotCompiled as reason:
                logger.debug("not compiled (%s)", reason)
    cache[operation_name] = template
    return template


# A marker as the database wrote it: a JSON string starting with SIGN_MARKER.
MARKED_URL = re.compile('"' + re.escape(json_reads.SIGN_MARKER) + r'(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class CompiledAnswer:
    body: bytes
    operation: str | None  # the operation's name and type, for the log and the metrics
    operation_type: str
    signed_urls: list[str]
    status: int = 200
    error_codes: tuple[str, ...] = ()


class WriteFailed(Exception):
    """A compiled write that failed where running it again is not safe (an outage, a lost
    commit, a retryable conflict): the answer is its error, as the resolvers give it."""

    def __init__(self, template: MutationTemplate, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error
        located = GraphQLError(
            error.message,
            nodes=[template.node],
            path=[template.key],
            extensions={**error.extensions, "code": error.code},
        )
        self.formatted = (
            located.formatted
        )  # the element URLs signed for this answer (the verify mode's exception)


@dataclass
class CompiledReads:
    """Answers the query operations it covers with the database's JSON, and a document of one
    mutation whose answer its result holds by calling its resolver directly."""

    schema: strawberry.Schema
    db: Database
    limits: Limits
    hits: int = 0  # requests answered here (tests check the path really ran)
    statements: json_reads.StatementCache = field(default_factory=json_reads.StatementCache)

    async def execute(
        self, *, query: Any, variables: Any, operation_name: Any, context: GatewayContext
    ) -> CompiledAnswer | None:
        """The answer, or None for the resolver path to answer."""
        if not isinstance(query, str) or not isinstance(operation_name, str | None):
            return None
        if not isinstance(variables, dict | None):
            return None
        prepared = prepare(query)
        if prepared.tokens is None or prepared.tokens > self.limits.max_tokens:
            return None
        template = _template(self.schema, prepared, operation_name)
        if template is None:
            return None
        graphql_schema = self.schema._schema
        # A batch's items are checked one by one by its resolver (one bad item fails alone).
        batches = batch_variables(template.operation, graphql_schema)
        if variables_problem(variables or {}, batches) is not None:
            return None
        problem, cost = check_operation(graphql_schema, prepared, operation_name, variables, self.limits)
        if problem is not None:
            return None
        coerced = get_variable_values(
            graphql_schema, template.operation.variable_definitions or (), variables or {}
        )
        if not isinstance(coerced, VariableValues):
            return None
        arguments = Arguments(self.schema, coerced)
        signed: list[str] = []
        if isinstance(template, MutationTemplate):
            try:
                data = await self._write(template, arguments, context)
            except WriteFailed as failure:
                return self._failed(template, failure, cost)
        else:
            read = await self._read(template, arguments, context)
            data, signed = read if read is not None else (None, [])
        if data is None:
            return None
        self.hits += 1
        extensions = orjson.dumps({"cost": {"requested": cost, "maximum": self.limits.max_cost}})
        body = b'{"data":' + data + b',"extensions":' + extensions + b"}"
        name = template.operation.name
        return CompiledAnswer(body, name.value if name else None, template.operation.operation.value, signed)

    def _failed(self, template: MutationTemplate, failure: WriteFailed, cost: int | None) -> CompiledAnswer:
        """`data: null` with the field's error; an outage is HTTP 503 (nothing was done)."""
        self.hits += 1
        body = to_json_bytes(
            {
                "data": None,
                "errors": [failure.formatted],
                "extensions": {"cost": {"requested": cost, "maximum": self.limits.max_cost}},
            }
        )
        name = template.operation.name
        code = failure.error.code
        status = 503 if code == "SERVICE_UNAVAILABLE" else 200
        return CompiledAnswer(body, name.value if name else None, "mutation", [], status, (code,))

    async def _read(
        self, template: Template, arguments: Arguments, context: GatewayContext
    ) -> tuple[bytes, list[str]] | None:
        try:
            members = template.bind(arguments)
        except GatewayError as refusal:
            # e.g. a bad cursor: the resolvers tell which field, with its path
            logger.debug("arguments refused (%s); answered by the resolvers", refusal.message)
            return None
        try:
            async with self.db.read_engine.connect() as connection:
                # One statement sees one snapshot: no transaction to begin and roll back.
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                data = await json_reads.read_json(
                    autocommit,
                    members=members,
                    access=context.access,
                    statements=self.statements,
                    selection=template,
                )
        except GatewayError as refusal:  # a cursor of another list: the resolvers say where
            logger.debug("arguments refused (%s); answered by the resolvers", refusal.message)
            return None
        except Exception as failure:  # the resolver path answers, or reports it as it always does
            logger.debug("compiled read failed (%s); answered by the resolvers", failure, exc_info=True)
            return None
        signed: list[str] = []
        if json_reads.SIGN_MARKER in data:
            data, signed = await self._sign_urls(data, context)
        return data.encode(), signed

    async def _write(
        self, template: MutationTemplate, arguments: Arguments, context: GatewayContext
    ) -> bytes | None:
        """The mutation's resolver, called as graphql-core would call it. When it fails before
        anything was committed (a refusal, an error rolled back), None: the resolvers run the
        request again and answer it, error and all. A failure after a commit is raised."""
        try:
            result = await template.resolver(
                None, _ResolverInfo(context), **arguments.of(template.field, template.node)
            )
        except GatewayError as error:
            if context.committed or error.code == "SERVICE_UNAVAILABLE" or error.extensions.get("retryable"):
                # Written, or maybe, or an outage: running it again could write twice or wait
                # again. Answered here, as the resolvers would answer it.
                raise WriteFailed(template, error) from error
            logger.debug("compiled write refused (%s); answered by the resolvers", error.message)
            return None  # a refusal, rolled back: the resolvers run it again and answer it
        except Exception:
            if context.committed:
                raise
            return None  # rolled back: the resolvers run it again, and report what went wrong
        return to_json_bytes({template.key: template.output(result)})

    async def _sign_urls(self, data: str, context: GatewayContext) -> tuple[str, list[str]]:
        """Elements' URLs signed now, in place of the markers the database wrote for them."""
        parts: list[str] = []
        signed: list[str] = []
        end = 0
        for match in MARKED_URL.finditer(data):
            described = json.loads(match.group(0))[len(json_reads.SIGN_MARKER) :]
            object_key, name, mime = json.loads(described)
            url = await context.files.read_url(object_key, name=name, mime=mime, base_url=context.base_url)
            parts += [data[end : match.start()], json.dumps(url, ensure_ascii=False)]
            signed.append(url)
            end = match.end()
        parts.append(data[end:])
        return "".join(parts), signed
