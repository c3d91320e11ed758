"""JSON, tag and text operations with the same meaning on PostgreSQL and SQLite.

PostgreSQL runs them natively (`@>`, `||`, `ILIKE` with a trigram index). SQLite has no such
operators, so the same semantics are implemented here in Python and registered on every SQLite
connection as SQL functions (see `gateway.database`). `sql_*` builders return SQLAlchemy
expressions that compile to the right form for each dialect.
"""

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

# ---- Python semantics (SQLite functions) -------------------------------------------------------


def icontains(haystack: str | None, needle: str | None) -> bool:
    """Case-insensitive substring test that folds non-ASCII letters too (SQLite's LIKE does not)."""
    if haystack is None or needle is None:
        return False
    return needle.casefold() in haystack.casefold()


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


class _Contains(FunctionElement[bool]):
    inherit_cache = True
    type = sa.Boolean()


class ICONTAINS(_Contains):
    name = "gateway_icontains"


class JSON_CONTAINS(_Contains):
    name = "gateway_json_contains"


class TAGS_CONTAIN_ALL(_Contains):
    name = "gateway_tags_contain_all"


class JSON_MERGE(FunctionElement[Any]):
    name = "gateway_json_merge"
    inherit_cache = True


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def sql_icontains(column: ColumnElement[Any], term: str) -> ColumnElement[bool]:
    return ICONTAINS(column, sa.literal(term, sa.Text()))  # type: ignore[return-value]


def sql_json_contains(column: ColumnElement[Any], pattern: dict[str, Any]) -> ColumnElement[bool]:
    return JSON_CONTAINS(column, sa.literal(json.dumps(pattern), sa.Text()))  # type: ignore[return-value]


def sql_tags_contain_all(column: ColumnElement[Any], tags: list[str]) -> ColumnElement[bool]:
    return TAGS_CONTAIN_ALL(column, sa.literal(json.dumps(tags), sa.Text()))  # type: ignore[return-value]


def sql_json_merge(column: ColumnElement[Any], patch: dict[str, Any]) -> ColumnElement[Any]:
    return JSON_MERGE(column, sa.literal(json.dumps(patch), sa.Text()))  # type: ignore[return-value]


@compiles(_Contains, "sqlite")
@compiles(JSON_MERGE, "sqlite")
def _compile_sqlite(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.visit_function(element, **kw)  # type: ignore[arg-type]


def _arguments(element: FunctionElement[Any]) -> tuple[Any, Any]:
    column, value = list(element.clauses)
    return column, value.value


@compiles(ICONTAINS, "postgresql")
def _pg_icontains(element: ICONTAINS, compiler: SQLCompiler, **kw: Any) -> str:
    column, term = _arguments(element)
    return compiler.process(column.ilike(f"%{_escape_like(term)}%", escape="\\"), **kw)  # type: ignore[no-any-return]


@compiles(JSON_CONTAINS, "postgresql")
def _pg_json_contains(element: JSON_CONTAINS, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern = _arguments(element)
    value = sa.cast(sa.literal(pattern, sa.Text()), postgresql.JSONB())
    return f"({compiler.process(column, **kw)} @> {compiler.process(value, **kw)})"


@compiles(TAGS_CONTAIN_ALL, "postgresql")
def _pg_tags_contain_all(element: TAGS_CONTAIN_ALL, compiler: SQLCompiler, **kw: Any) -> str:
    column, required = _arguments(element)
    value = sa.literal(json.loads(required), postgresql.ARRAY(sa.Text()))
    return f"({compiler.process(column, **kw)} @> {compiler.process(value, **kw)})"


@compiles(JSON_MERGE, "postgresql")
def _pg_json_merge(element: JSON_MERGE, compiler: SQLCompiler, **kw: Any) -> str:
    column, patch_text = _arguments(element)
    patch = json.loads(patch_text)
    deleted = sa.literal([key for key, value in patch.items() if value is None], postgresql.ARRAY(sa.Text()))
    kept = {key: value for key, value in patch.items() if value is not None}
    kept_value = sa.cast(sa.literal(json.dumps(kept), sa.Text()), postgresql.JSONB())
    return (
        f"((COALESCE({compiler.process(column, **kw)}, '{{}}'::jsonb) - {compiler.process(deleted, **kw)})"
        f" || {compiler.process(kept_value, **kw)})"
    )
