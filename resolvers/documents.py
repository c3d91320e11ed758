"""Prepared documents: what does not change between requests that send the same query text (its
token count, its parse, its validation, the facts the request checks read) is worked out once.

Clients send the same few documents over and over (a chat app's history read, its step upsert), so
parsing and validating each request again was most of a small request's CPU. The cache is bounded
in entries and in the size of the texts it keeps, so unique documents cannot grow memory.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from graphql import (
    DocumentNode,
    FloatValueNode,
    GraphQLError,
    GraphQLSchema,
    Lexer,
    OperationDefinitionNode,
    Source,
    StringValueNode,
    TokenKind,
    parse,
    visit,
)
from graphql.language import Visitor
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionContext

from gateway.validation import NON_FINITE_PROBLEM, string_problem

MAX_CACHED_QUERY_CHARS = 16_384  # longer texts are prepared per request, never kept
MAX_CACHED_DOCUMENTS = 512  # so the cache holds at most ~8 MiB of query text


def count_tokens(query: str) -> int | None:
    """The tokens the parser would read (comments excluded); None when the text does not lex, so
    the parser reports the syntax error itself."""
    lexer = Lexer(Source(query))
    count = 0
    try:
        while lexer.advance().kind is not TokenKind.EOF:
            count += 1
    except GraphQLError:
        return None
    return count


class _Literals(Visitor):
    """The first literal of the document that cannot be stored (NUL, a float beyond a double)."""

    def __init__(self) -> None:
        super().__init__()
        self.problem: str | None = None

    def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
        self.problem = self.problem or string_problem(node.value)

    def enter_float_value(self, node: FloatValueNode, *_: Any) -> None:
        if not math.isfinite(float(node.value)):
            self.problem = self.problem or f"{node.value}: {NON_FINITE_PROBLEM}"


@dataclass(eq=False)
class PreparedDocument:
    """One query text, parsed and validated at most once. Parsing waits until the token limit was
    checked, so a document over it is never parsed."""

    query: str
    tokens: int | None
    _validation: dict[int, list[GraphQLError]] = field(default_factory=dict)

    @cached_property
    def document(self) -> DocumentNode | None:
        """The parsed document; None when it does not parse (the parser reports why, per request)."""
        try:
            return parse(self.query)
        except GraphQLError:
            return None

    @cached_property
    def operations(self) -> list[OperationDefinitionNode]:
        document = self.document
        if document is None:
            return []
        return [item for item in document.definitions if isinstance(item, OperationDefinitionNode)]

    @cached_property
    def literal_problem(self) -> str | None:
        """Why a literal of the document cannot be stored (NUL, a float beyond a double), or None."""
        literals = _Literals()
        if self.document is not None:
            visit(self.document, literals)
        return literals.problem

    def validation_errors(self, schema: GraphQLSchema, rules: tuple[Any, ...]) -> list[GraphQLError]:
        """The document's validation errors under these rules (the schema's, always the same)."""
        assert self.document is not None
        key = hash(rules)
        if key not in self._validation:
            self._validation[key] = list(validate_document(schema, self.document, rules))
        return self._validation[key]

    def introspects(self, schema: GraphQLSchema) -> bool:
        """Whether the document asks for the schema (`__schema`, `__type`)."""
        return bool(self.validation_errors(schema, (NoSchemaIntrospectionCustomRule,)))


def _prepare(query: str) -> PreparedDocument:
    return PreparedDocument(query=query, tokens=count_tokens(query))


_prepare_cached = lru_cache(maxsize=MAX_CACHED_DOCUMENTS)(_prepare)


def prepare(query: str) -> PreparedDocument:
    """The prepared document of this text, shared by every request sending it (short texts)."""
    return _prepare_cached(query) if len(query) <= MAX_CACHED_QUERY_CHARS else _prepare(query)


def prepared_for(context: ExecutionContext) -> PreparedDocument | None:
    """The prepared document of a request (the same object for all its extensions, cached or not)."""
    if context.query is None:
        return None
    prepared: PreparedDocument | None = getattr(context, "_gateway_prepared", None)
    if prepared is None or prepared.query is not context.query:
        prepared = prepare(context.query)
        context._gateway_prepared = prepared  # type: ignore[attr-defined]
    return prepared


class CachedDocuments(SchemaExtension):
    """Hands strawberry the prepared document and its validation instead of parsing and validating
    again. A text that does not parse is left to strawberry, which reports the syntax error."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        prepared = prepared_for(context)
        if prepared is not None and context.graphql_document is None:
            context.graphql_document = prepared.document
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        prepared = prepared_for(context)
        if (
            prepared is not None
            and context.pre_execution_errors is None
            and prepared.document is not None
            and prepared.document is context.graphql_document
        ):
            rules = tuple(context.validation_rules)
            context.pre_execution_errors = list(prepared.validation_errors(context.schema._schema, rules))
        yield
