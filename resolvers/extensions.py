"""Schema extensions: every error carries `extensions.code`; unexpected ones are masked and logged
with the request id; requests that cannot be run or stored (NUL characters, values nested too deep,
several operations without a name) are refused before anything runs."""

import logging
import re
from collections.abc import Iterator
from typing import Any

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from gateway.errors import BadUserInput, GatewayError
from resolvers.documents import prepared_for

logger = logging.getLogger("gateway.errors")
NUL_PROBLEM = "strings must not contain NUL (\\u0000) characters"
MAX_JSON_DEPTH = 64
SUGGESTION = re.compile(r" ?Did you mean .*\?$")


def variable_problem(variables: Any) -> str | None:
    """Why the variables cannot be stored, walking them without recursion (a value nested
    thousands deep must get an answer, not exhaust the stack)."""
    pending = [(variables, 0)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            return f"values may be nested at most {MAX_JSON_DEPTH} levels deep"
        if isinstance(value, str):
            if "\x00" in value:
                return NUL_PROBLEM
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in str(key):
                    return NUL_PROBLEM
                pending.append((item, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
    return None


class RequestChecks(SchemaExtension):
    """Refuse, before anything runs:
    - strings holding NUL: PostgreSQL cannot store them, SQLite would; refused in literals and
      variables alike, so both databases answer the same;
    - variables nested deeper than MAX_JSON_DEPTH;
    - a document of several operations without `operationName` (the GraphQL specification's
      rule; strawberry would run the first)."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        problem: str | None = None
        prepared = prepared_for(context)
        if context.graphql_document is not None and prepared is not None:
            # `operation_name` falls back to the first operation's name; only what was sent counts.
            if len(prepared.operations) > 1 and context._provided_operation_name is None:
                problem = "the document has several operations: say which to run with `operationName`"
            if prepared.has_nul_literal:
                problem = NUL_PROBLEM
        problem = variable_problem(context.variables or {}) or problem
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
