"""Pieces every data-access module uses: the dialect's INSERT, and `KEEP` for fields not given."""

import dataclasses
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from gateway.jsonops import sql_json_merge


class Keep(enum.Enum):
    """A field a partial update was not given: the stored value stays as it is."""

    KEEP = "KEEP"


KEEP = Keep.KEEP


def given(changes: Any) -> dict[str, Any]:
    """The fields of a changes dataclass that were given, by column attribute name."""
    return {
        item.name: getattr(changes, item.name)
        for item in dataclasses.fields(changes)
        if getattr(changes, item.name) is not KEEP
    }


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def insert(session: AsyncSession, table: sa.Table) -> Any:
    """INSERT with `ON CONFLICT` support for the session's database."""
    return dialect_insert(dialect_name(session), table)


def dialect_insert(dialect: str, table: sa.Table) -> Any:
    """`insert` by dialect name, for statements built once and kept."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def changed(table: sa.Table, values: dict[str, Any]) -> ColumnElement[bool]:
    """True when any of the values differs from the stored row (NULL-safe)."""
    return sa.or_(*[table.c[name].is_distinct_from(value) for name, value in values.items()])


def metadata_patch_to_new(patch: dict[str, Any]) -> dict[str, Any]:
    """A metadata patch applied to no metadata at all: its null values delete nothing."""
    return {key: value for key, value in patch.items() if value is not None}


def update_values(table: sa.Table, fields: dict[str, Any]) -> dict[str, Any]:
    """SET values for an update: metadata merges key by key, every other field is replaced."""
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "metadata":
            values[name] = sql_json_merge(table.c[name], value)
        else:
            values[name] = sa.literal(value, table.c[name].type) if value is not None else sa.null()
    return values


def from_row(model: type[Any], row: sa.Row[Any]) -> Any:
    """A table model instance from a Core row (RETURNING), mapping column names to attributes."""
    mapper = sa.inspect(model)
    attributes = {
        column.key: attribute.key for attribute in mapper.column_attrs for column in attribute.columns
    }
    return model(**{attributes[name]: value for name, value in row._mapping.items() if name in attributes})
