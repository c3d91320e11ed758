"""Schema extensions: every error carries `extensions.code`; unexpected ones are masked and logged
with the request id; requests that cannot be run or stored (NUL characters, lone surrogates, NaN,
values nested too deep, several operations without a name) are refused before anything runs."""

import logging
import re
from collections.abc import Iterator
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import (
    GraphQLError,
    GraphQLInputObjectType,
    GraphQLSchema,
    ListTypeNode,
    NamedTypeNode,
    NonNullTypeNode,
    OperationDefinitionNode,
    OperationType,
    TypeNode,
)
from strawberry.extensions import SchemaExtension

from gateway.errors import BadUserInput, GatewayError
from gateway.validation import value_problem
from resolvers.context import OUTAGE_MESSAGE, is_outage
from resolvers.documents import prepared_for

logger = logging.getLogger("gateway.errors")
RETRY_AFTER_SECONDS = "1"
SUGGESTION = re.compile(r" ?Did you mean .*\?$")


def batch_variables(operation: OperationDefinitionNode | None, schema: GraphQLSchema) -> set[str]:
    """Variables holding a list of input objects (ingestSteps' steps): a batch, whose items the
    resolver checks one by one, so that one bad item fails alone."""
    names: set[str] = set()
    for definition in (operation.variable_definitions if operation else None) or ():
        type_node: TypeNode = definition.type
        if isinstance(type_node, NonNullTypeNode):
            type_node = type_node.type
        if isinstance(type_node, ListTypeNode):
            named = type_node.type.type if isinstance(type_node.type, NonNullTypeNode) else type_node.type
            if isinstance(named, NamedTypeNode) and isinstance(
                schema.get_type(named.name.value), GraphQLInputObjectType
            ):
                names.add(definition.variable.name.value)
    return names


def variables_problem(variables: dict[str, Any], batches: set[str]) -> str | None:
    """Why a request's variables cannot be stored (see gateway.validation), or None."""
    for name, value in variables.items():
        # A batch's items are checked by its resolver, except for what no item may hold.
        found = value_problem(value, f"${name}", surrogates=name not in batches)
        if found is not None:
            where, problem = found
            return f"`{where}`: {problem}"
    return None


class RequestChecks(SchemaExtension):
    """Refuse, before anything runs:
    - values that cannot be stored (see gateway.validation): NUL characters (PostgreSQL cannot
      store them, SQLite would), lone surrogates, NaN and Infinity, values nested deeper than
      MAX_JSON_DEPTH; in literals and variables alike, so both databases answer the same;
    - a document of several operations without `operationName` (the GraphQL specification's
      rule; strawberry would run the first);
    - a subscription sent as a plain HTTP request (gateway.live serves them)."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        problem: str | None = None
        prepared = prepared_for(context)
        operation: OperationDefinitionNode | None = None
        if context.graphql_document is not None and prepared is not None:
            operations = prepared.operations
            # `operation_name` falls back to the first operation's name; only what was sent counts.
            if len(operations) > 1 and context._provided_operation_name is None:
                problem = "the document has several operations: say which to run with `operationName`"
            named = [item for item in operations if item.name and item.name.value == context.operation_name]
            operation = named[0] if named else operations[0] if len(operations) == 1 else None
            problem = prepared.literal_problem or problem
            if operation is not None and operation.operation is OperationType.SUBSCRIPTION:
                problem = (
                    "subscriptions are served over WebSocket at /graphql (graphql-transport-ws or "
                    "graphql-ws) or as Server-Sent Events (`Accept: text/event-stream`)"
                )
        batches = batch_variables(operation, context.schema._schema)
        problem = variables_problem(context.variables or {}, batches) or problem
        if problem is not None:
            error = BadUserInput(problem)
            context.result = GraphQLExecutionResult(
                data=None, errors=[GraphQLError(error.message, original_error=error)]
            )
        yield


class ErrorCodes(SchemaExtension):
    """Give every error an `extensions.code` (the GraphQL contract's codes); replace unexpected
    ones by `INTERNAL_SERVER_ERROR` with the request id, logging the trace under that id."""

    def __init__(self) -> None:
        self._validation_errors: set[int] = set()

    def on_validate(self) -> Iterator[None]:
        yield
        self._validation_errors = {id(error) for error in self.execution_context.pre_execution_errors or []}

    def on_operation(self) -> Iterator[None]:
        self._validation_errors = set()
        yield
        result = self.execution_context.result
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = [self._shape(error) for error in errors]  # type: ignore[union-attr]
            self._answer_unavailable(result.errors, getattr(result, "data", None))  # type: ignore[union-attr]

    def _answer_unavailable(self, errors: list[GraphQLError], data: Any) -> None:
        """HTTP 503 with Retry-After when an outage is the only error and nothing succeeded, so
        proxies, load balancers and plain HTTP clients see it is worth retrying."""
        codes = {(error.extensions or {}).get("code") for error in errors}
        nothing_done = data is None or not any(value is not None for value in data.values())
        response = getattr(self.execution_context.context, "response", None)
        if codes == {"SERVICE_UNAVAILABLE"} and nothing_done and response is not None:
            response.status_code = 503
            response.headers["Retry-After"] = RETRY_AFTER_SECONDS

    def _request_id(self) -> str:
        context = self.execution_context.context
        return str(getattr(context, "request_id", "-"))

    def _shape(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if isinstance(original, GatewayError):
            return _with_code(error, original.message, original.code, original.extensions)
        if original is None or error.path is None:
            # Requests the server could not run: syntax, validation, values that do not fit (a
            # literal or variable its scalar refused is bad input, whichever way it was sent).
            if self.execution_context.graphql_document is None:
                code = "GRAPHQL_PARSE_FAILED"
            elif id(error) in self._validation_errors and original is None:
                code = "GRAPHQL_VALIDATION_FAILED"
            else:
                code = "BAD_USER_INPUT"
            message = error.message
            limits = getattr(self.execution_context.context, "limits", None)
            if limits is not None and not limits.introspection:
                # graphql-core's suggestions would describe the schema introspection hides.
                message = SUGGESTION.sub("", message)
            return _with_code(error, message, (error.extensions or {}).get("code", code), {})
        request_id = self._request_id()
        if is_outage(original):
            logger.warning(
                "database or object store unreachable in %s (request %s): %r",
                ".".join(str(part) for part in error.path),
                request_id,
                original,
            )
            return _with_code(error, OUTAGE_MESSAGE, "SERVICE_UNAVAILABLE", {"retryable": True})
        logger.error(
            "unexpected error in %s (request %s)",
            ".".join(str(part) for part in error.path),
            request_id,
            exc_info=(type(original), original, original.__traceback__),
        )
        return _with_code(
            error,
            f"Internal server error. Quote request id {request_id} when reporting it.",
            "INTERNAL_SERVER_ERROR",
            {"requestId": request_id},
        )


def _with_code(error: GraphQLError, message: str, code: str, extensions: dict[str, Any]) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={**(error.extensions or {}), **extensions, "code": code},
    )
