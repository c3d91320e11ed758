"""JSON, tag and text operations with the same meaning on PostgreSQL and SQLite.

PostgreSQL runs them natively (`@>`, `||`, `ILIKE` with a trigram index). SQLite has no such
operators, so the same semantics are implemented here in Python and registered on every SQLite
connection as SQL functions (see `gateway.database`). `sql_*` builders return SQLAlchemy
expressions that compile to the right form for each dialect.
"""

import json
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

# ---- Python semantics (SQLite functions) -------------------------------------------------------


def icontains(haystack: str | None, needle: str | None) -> bool:
    """Case-insensitive substring test for any alphabet (SQLite's LIKE folds ASCII only). It
    lowercases like PostgreSQL's ILIKE does, so both databases find the same rows."""
    if haystack is None or needle is None:
        return False
    return needle.lower() in haystack.lower()


def json_contains(document: Any, pattern: Any) -> bool:
    """PostgreSQL's `jsonb @> jsonb`: objects contain the pattern's keys with containing values;
    arrays contain every pattern element somewhere; scalars are equal."""
    if isinstance(pattern, dict):
        return isinstance(document, dict) and all(
            key in document and json_contains(document[key], value) for key, value in pattern.items()
        )
    if isinstance(pattern, list):
        if not isinstance(document, list):
            return False
        return all(any(json_contains(item, wanted) for item in document) for wanted in pattern)
    if isinstance(pattern, bool) or isinstance(document, bool):
        return type(pattern) is type(document) and pattern == document
    return bool(document == pattern)


def merge_metadata(current: dict[str, Any] | None, patch: dict[str, Any]) -> dict[str, Any]:
    """Top-level merge: each key of the patch replaces the stored one; a null value deletes it."""
    merged = dict(current or {})
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def sqlite_json_contains(document_text: str | None, pattern_text: str) -> bool:
    if document_text is None:
        return False
    return json_contains(json.loads(document_text), json.loads(pattern_text))


def sqlite_json_merge(document_text: str | None, patch_text: str) -> str:
    current = json.loads(document_text) if document_text else None
    if not isinstance(current, dict):
        current = None
    merged = merge_metadata(current, json.loads(patch_text))
    return json.dumps(merged, ensure_ascii=False, separators=(",", ":"))


def sqlite_tags_contain_all(tags_text: str | None, required_text: str) -> bool:
    tags = json.loads(tags_text) if tags_text else []
    return isinstance(tags, list) and set(json.loads(required_text)) <= set(tags)


# ---- SQL expressions -----------------------------------------------------------------------------
# Every construct takes (column, one bound parameter) and both dialects render both, because
# compiled statements are cached by structure and reused with new parameter values: a value must
# never be read at compile time, and every bound parameter must appear in the SQL.


class _GatewayFunction(FunctionElement[Any]):
    inherit_cache = True


class ICONTAINS(_GatewayFunction):
    """(column, LIKE pattern `%term%`, backslash-escaped)."""

    name = "gateway_icontains"
    type = sa.Boolean()
    inherit_cache = True


class JSON_CONTAINS(_GatewayFunction):
    """(column, pattern as JSON text)."""

    name = "gateway_json_contains"
    type = sa.Boolean()
    inherit_cache = True


class TAGS_CONTAIN_ALL(_GatewayFunction):
    """(column, required tags as a JSON array text)."""

    name = "gateway_tags_contain_all"
    type = sa.Boolean()
    inherit_cache = True


class JSON_MERGE(_GatewayFunction):
    """(column, patch as JSON text): keys set, null values delete."""

    name = "gateway_json_merge"
    inherit_cache = True


def like_pattern(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def term_of_like_pattern(pattern: str) -> str:
    inner, term, escaped = pattern[1:-1], [], False
    for character in inner:
        if escaped or character != "\\":
            term.append(character)
            escaped = False
        else:
            escaped = True
    return "".join(term)


def sqlite_icontains(haystack: str | None, pattern: str | None) -> bool:
    return pattern is not None and icontains(haystack, term_of_like_pattern(pattern))


def _text(value: str) -> Any:
    return sa.bindparam(None, value, sa.Text())


def sql_icontains(column: ColumnElement[Any], term: str | sa.BindParameter[str]) -> ColumnElement[bool]:
    """The column holds the term, any case; a bound parameter is taken as its `like_pattern`."""
    pattern = term if isinstance(term, sa.BindParameter) else _text(like_pattern(term))
    return ICONTAINS(column, pattern)


def sql_json_contains(column: ColumnElement[Any], pattern: dict[str, Any]) -> ColumnElement[bool]:
    return JSON_CONTAINS(column, _text(json.dumps(pattern)))


def sql_tags_contain_all(column: ColumnElement[Any], tags: list[str]) -> ColumnElement[bool]:
    return TAGS_CONTAIN_ALL(column, _text(json.dumps(tags)))


def sql_json_merge(
    column: ColumnElement[Any], patch: dict[str, Any] | ColumnElement[Any]
) -> ColumnElement[Any]:
    """The column merged with a patch: a dict, or a JSON column (an upsert's `excluded` row)."""
    return JSON_MERGE(column, patch if isinstance(patch, ColumnElement) else _text(json.dumps(patch)))


def _rendered(element: _GatewayFunction, compiler: SQLCompiler, **kw: Any) -> list[str]:
    return [compiler.process(argument, **kw) for argument in element.clauses]


@compiles(_GatewayFunction, "sqlite")
def _compile_sqlite(element: _GatewayFunction, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{element.name}({', '.join(_rendered(element, compiler, **kw))})"


@compiles(ICONTAINS, "postgresql")
def _pg_icontains(element: ICONTAINS, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern = _rendered(element, compiler, **kw)
    return f"({column} ILIKE {pattern} ESCAPE '\\')"


@compiles(JSON_CONTAINS, "postgresql")
def _pg_json_contains(element: JSON_CONTAINS, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern = _rendered(element, compiler, **kw)
    return f"({column} @> CAST({pattern} AS JSONB))"


@compiles(TAGS_CONTAIN_ALL, "postgresql")
def _pg_tags_contain_all(element: TAGS_CONTAIN_ALL, compiler: SQLCompiler, **kw: Any) -> str:
    column, tags = _rendered(element, compiler, **kw)
    return f"({column} @> ARRAY(SELECT jsonb_array_elements_text(CAST({tags} AS JSONB))))"


@compiles(JSON_MERGE, "postgresql")
def _pg_json_merge(element: JSON_MERGE, compiler: SQLCompiler, **kw: Any) -> str:
    column, patch = _rendered(element, compiler, **kw)
    return (
        # Rows written by others may hold no object (SQL NULL, JSON null): merge into {} then.
        f"(SELECT ((CASE WHEN jsonb_typeof({column}) = 'object' THEN {column} ELSE '{{}}'::jsonb END)"
        " - ARRAY(SELECT key FROM jsonb_each(gateway_patch.doc) WHERE jsonb_typeof(value) = 'null'))"
        " || COALESCE((SELECT jsonb_object_agg(key, value) FROM jsonb_each(gateway_patch.doc)"
        " WHERE jsonb_typeof(value) <> 'null'), '{}'::jsonb)"
        f" FROM (SELECT CAST({patch} AS JSONB) AS doc) AS gateway_patch)"
    )


def to_json_bytes(value: Any) -> bytes:
    """`value` as JSON: orjson's, or for what orjson refuses (an integer past 64 bits, a lone
    surrogate echoed from the input) the standard encoder's, which writes it escaped."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()
