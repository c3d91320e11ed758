"""Parsing ids from clients: malformed ones are BAD_USER_INPUT naming the argument."""

from gateway.errors import BadUserInput
from gateway.ids import normalize_id


def parse_id(value: str, argument: str) -> str:
    try:
        return normalize_id(value)
    except ValueError:
        raise BadUserInput(f"`{argument}` must be a UUID, not {value!r}", argument=argument) from None


def parse_optional_id(value: str | None, argument: str) -> str | None:
    return None if value is None else parse_id(value, argument)
