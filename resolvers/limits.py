"""Query limits, checked before anything runs: tokens (before parsing), then depth, aliases and a
static cost of the operation to run. The cost of an accepted query is reported in the response's
`extensions.cost`.

The cost counts the objects a query may return. Every object field costs 1 plus what is selected
under it; a connection costs 1 plus its page size (`first` or `last`, 20 when neither is given)
times the cost of one of its nodes; `edges` and `pageInfo` add nothing of their own. A plain
list of objects counts as many items as the list argument it is given (`ingestSteps(steps:)`), or
LIST_ESTIMATE items (a step's `elements`). The history
query (20 threads, each with its last 10 steps and their feedback) costs 1 + 20 * (1 + 1 + 10 * 2)
= 441. Introspection fields (`__schema`, `__type`) are left out of depth and cost: GraphiQL's own
introspection query is deep but cheap; turn introspection off instead where it should not run.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    get_nullable_type,
    is_list_type,
    value_from_ast_untyped,
)
from strawberry.extensions import SchemaExtension

from gateway.data.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from gateway.errors import GatewayError
from resolvers.documents import PreparedDocument, prepared_for

FREE_TYPES = ("PageInfo",)  # with every `...Edge` type: parts of a connection, not objects of their own
LIST_ESTIMATE = 5  # items assumed in a list field with no list argument to count (a step's elements)


@dataclass(frozen=True)
class Limits:
    max_depth: int = 15
    max_aliases: int = 30
    max_tokens: int = 5000
    max_cost: int = 5000
    introspection: bool = True


class QueryLimitExceeded(GatewayError):
    """A query over one of the limits; `code` names the limit, `value` and `maximum` the figures."""

    def __init__(self, code: str, what: str, value: int, maximum: int) -> None:
        super().__init__(
            f"the query's {what} is {value}, over the maximum of {maximum}; ask for less "
            "(smaller pages, fewer nested fields) or split it",
            value=value,
            maximum=maximum,
        )
        self.code = code


class IntrospectionDisabled(GatewayError):
    code = "INTROSPECTION_DISABLED"


@dataclass
class Measures:
    depth: int
    cost: int


class OperationMeasurer:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDefinitionNode],
        variables: dict[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables

    def measure(self, selection_set: SelectionSetNode, parent: GraphQLNamedType) -> Measures:
        depth, cost = 0, 0
        for field, field_parent in self._fields(selection_set, parent, set()):
            name = field.name.value
            if name.startswith("__") or not isinstance(field_parent, GraphQLObjectType):
                continue
            definition = field_parent.fields.get(name)
            if definition is None:
                continue
            child_type = get_named_type(definition.type)
            returns_list = is_list_type(get_nullable_type(definition.type))
            if field.selection_set is None:
                depth = max(depth, 1)
                continue
            inner = self.measure(field.selection_set, child_type)
            depth = max(depth, 1 + inner.depth)
            if child_type.name.endswith("Connection"):
                cost += 1 + self._page_size(field) * inner.cost
            elif child_type.name.endswith("Edge") or child_type.name in FREE_TYPES:
                cost += inner.cost
            elif returns_list:
                cost += self._list_length(field) * (1 + inner.cost)
            else:
                cost += 1 + inner.cost
        return Measures(depth, cost)

    def _fields(
        self, selection_set: SelectionSetNode, parent: GraphQLNamedType, spread: set[str]
    ) -> Iterator[tuple[FieldNode, GraphQLNamedType]]:
        """The fields of a selection set, fragments expanded (each named fragment once per path)."""
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                yield selection, parent
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self.schema.get_type(condition.name.value) if condition else parent
                yield from self._fields(selection.selection_set, inner or parent, spread)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in spread:
                    continue
                inner = self.schema.get_type(fragment.type_condition.name.value) or parent
                yield from self._fields(fragment.selection_set, inner, spread | {name})

    def _page_size(self, field: FieldNode) -> int:
        for argument in field.arguments or ():
            if argument.name.value not in ("first", "last"):
                continue
            value: Any = None
            if isinstance(argument.value, IntValueNode):
                value = int(argument.value.value)
            elif isinstance(argument.value, VariableNode):
                value = self.variables.get(argument.value.name.value)
            # JSON's 100.0 is a valid Int too, and runs as 100.
            if isinstance(value, int | float) and float(value).is_integer():
                # A size over the maximum is refused when the field runs, with its own message.
                return max(0, min(int(value), MAX_PAGE_SIZE))
        return DEFAULT_PAGE_SIZE

    def _list_length(self, field: FieldNode) -> int:
        """Items of the first list argument (a batch's length), else LIST_ESTIMATE."""
        for argument in field.arguments or ():
            if isinstance(argument.value, ListValueNode):
                return len(argument.value.values)
            if isinstance(argument.value, VariableNode):
                value = self.variables.get(argument.value.name.value)
                if isinstance(value, list):
                    return len(value)
        return LIST_ESTIMATE


def _alias_count(selection_sets: list[SelectionSetNode]) -> int:
    count = 0
    pending = list(selection_sets)
    while pending:
        selection_set = pending.pop()
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode) and selection.alias is not None:
                count += 1
            inner = getattr(selection, "selection_set", None)
            if inner is not None:
                pending.append(inner)
    return count


class QueryLimits(SchemaExtension):
    """Refuse queries over the limits of the request's context (`context.limits`) before they run."""

    def __init__(self) -> None:
        self.cost: int | None = None

    def _limits(self) -> Limits:
        return getattr(self.execution_context.context, "limits", None) or Limits()

    def on_parse(self) -> Iterator[None]:
        limits = self._limits()
        prepared = prepared_for(self.execution_context)
        if prepared is not None:
            tokens = prepared.tokens
            if tokens is not None and tokens > limits.max_tokens:
                error = QueryLimitExceeded("MAX_TOKENS_EXCEEDED", "token count", tokens, limits.max_tokens)
                # Raised before parsing, this error skips `ErrorCodes`' shaping: it carries its code.
                raise GraphQLError(
                    error.message, original_error=error, extensions={**error.extensions, "code": error.code}
                )
        yield

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        if context.result is None and context.graphql_document is not None:
            problem = self._problem()
            if problem is not None:
                context.result = GraphQLExecutionResult(
                    data=None, errors=[GraphQLError(problem.message, original_error=problem)]
                )
        yield

    def _problem(self) -> GatewayError | None:
        context = self.execution_context
        prepared = prepared_for(context)
        if prepared is None:  # pragma: no cover - a document always comes from a text here
            return None
        problem, self.cost = check_operation(
            context.schema._schema, prepared, context.operation_name, context.variables, self._limits()
        )
        return problem

    def get_results(self) -> dict[str, Any]:
        if self.cost is None:
            return {}
        return {"cost": {"requested": self.cost, "maximum": self._limits().max_cost}}


def check_operation(
    schema: GraphQLSchema,
    prepared: PreparedDocument,
    operation_name: str | None,
    variables: dict[str, Any] | None,
    limits: Limits,
) -> tuple[GatewayError | None, int | None]:
    """The limit an operation is over (or None), and its cost when it was measured."""
    document = prepared.document
    assert document is not None
    if not limits.introspection and prepared.introspects(schema):
        return IntrospectionDisabled("introspection is turned off on this gateway"), None
    operation = next(
        (
            item
            for item in prepared.operations
            if operation_name is None or (item.name and item.name.value == operation_name)
        ),
        None,
    )
    if operation is None:
        return None, None  # graphql-core reports the unknown operation
    fragments = {
        item.name.value: item for item in document.definitions if isinstance(item, FragmentDefinitionNode)
    }
    aliases = _alias_count([operation.selection_set, *(item.selection_set for item in fragments.values())])
    if aliases > limits.max_aliases:
        return QueryLimitExceeded("MAX_ALIASES_EXCEEDED", "alias count", aliases, limits.max_aliases), None
    root = schema.get_root_type(operation.operation)
    if root is None:
        return None, None
    # A variable not sent takes its default: a page size hidden there costs what it fetches.
    defaults = {
        definition.variable.name.value: value_from_ast_untyped(definition.default_value)
        for definition in operation.variable_definitions or ()
        if definition.default_value is not None
    }
    measures = OperationMeasurer(schema, fragments, {**defaults, **(variables or {})}).measure(
        operation.selection_set, root
    )
    if measures.depth > limits.max_depth:
        return QueryLimitExceeded("MAX_DEPTH_EXCEEDED", "depth", measures.depth, limits.max_depth), None
    if measures.cost > limits.max_cost:
        return QueryLimitExceeded("MAX_COST_EXCEEDED", "cost", measures.cost, limits.max_cost), None
    return None, measures.cost
