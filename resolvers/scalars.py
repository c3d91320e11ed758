"""Custom scalars: `DateTime` (ISO-8601 UTC text, milliseconds, `Z`) and `JSONObject`."""

from typing import Any, NewType

import strawberry
from graphql import StringValueNode, ValueNode
from strawberry.types.scalar import ScalarDefinition

from gateway.timestamps import display_timestamp, normalize_timestamp

DateTime = NewType("DateTime", str)
JSONObject = NewType("JSONObject", dict)  # type: ignore[type-arg]


def _parse_datetime(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("DateTime must be an ISO-8601 string such as 2026-11-22T05:17:33.123Z")
    try:
        return normalize_timestamp(value)
    except ValueError as error:
        raise ValueError(f"{value!r} is not an ISO-8601 timestamp with a UTC offset: {error}") from error


def _parse_datetime_literal(node: ValueNode, _variables: dict[str, Any] | None = None) -> str:
    if not isinstance(node, StringValueNode):
        raise ValueError("DateTime must be an ISO-8601 string")
    return _parse_datetime(node.value)


def _parse_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, not {type(value).__name__}")
    return value


SCALARS: dict[object, ScalarDefinition] = {
    DateTime: strawberry.scalar(
        name="DateTime",
        description="A moment as ISO-8601 UTC text with milliseconds, e.g. 2026-11-22T05:17:33.123Z. "
        "Input must carry an offset (Z or +hh:mm); it is stored in UTC.",
        serialize=display_timestamp,
        parse_value=_parse_datetime,
        parse_literal=_parse_datetime_literal,
    ),
    JSONObject: strawberry.scalar(
        name="JSONObject",
        description="A JSON object (a map of string keys to any JSON values).",
        serialize=lambda value: value,
        parse_value=_parse_object,
    ),
}
