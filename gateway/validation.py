"""What the gateway accepts as input, checked in one place at the boundary: the request body (strict
JSON), every value a request carries (no NUL, no lone surrogate, no NaN or Infinity, bounded
nesting), and the length limits of identifiers, names, tags, JSON keys, MIME types and URLs.

Both databases must answer the same and every stored value must read back as strict JSON: SQLite
would store `NaN` (and serve text no browser's `JSON.parse` accepts) and a NUL, PostgreSQL fails
on both, and neither can encode a lone UTF-16 surrogate.
"""

import json
import math
import re
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import BadUserInput

# Length limits, in characters, the same on both databases. PostgreSQL cannot index a value over
# ~2,700 bytes (a btree row); 512 characters stay under it even as 4-byte UTF-8.
MAX_IDENTIFIER_CHARS = 512  # users' identifiers (and the token claim naming one)
MAX_NAME_CHARS = 1024  # names of threads, steps and elements; a step's type, language, command
MAX_TAG_CHARS = 256
MAX_TAGS = 100
MAX_JSON_KEY_CHARS = 256  # keys of metadata, generation, props, modes
MAX_MIME_CHARS = 255  # RFC 6838: a type and a subtype of at most 127 characters each
MAX_URL_CHARS = 8192
MAX_JSON_DEPTH = 64

NUL_PROBLEM = "strings must not contain NUL (\\u0000) characters"
SURROGATE_PROBLEM = "strings must not contain lone UTF-16 surrogates (\\ud800-\\udfff): they are not text"
NON_FINITE_PROBLEM = "numbers must be finite: NaN, Infinity and numbers beyond ±1.8e308 are not JSON"
_SURROGATE = re.compile("[\ud800-\udfff]")


class NotJson(str):
    """What the strict body parser puts where the body held NaN, Infinity or a number too large
    for a double: the request is refused by `value_problem`, which can name where it was."""

    __slots__ = ()


def string_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL_PROBLEM
    if _SURROGATE.search(text):
        return SURROGATE_PROBLEM
    return None


def _items(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        yield from ((str(key), item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        yield from ((str(index), item) for index, item in enumerate(value))
    elif is_dataclass(value) and not isinstance(value, type):  # a strawberry input object
        yield from ((_camel(field.name), getattr(value, field.name)) for field in fields(value))


def value_problem(value: Any, path: str, *, surrogates: bool = True) -> tuple[str, str] | None:
    """(where, why) the first value that cannot be stored is, walking without recursion (a value
    nested thousands deep must get an answer, not exhaust the stack)."""
    pending = [(value, path, 0)]
    while pending:
        item, where, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            return where, f"values may be nested at most {MAX_JSON_DEPTH} levels deep"
        if isinstance(item, NotJson):
            return where, NON_FINITE_PROBLEM
        if isinstance(item, str):
            problem = string_problem(item) if surrogates else NUL_PROBLEM if "\x00" in item else None
            if problem:
                return where, problem
        elif isinstance(item, float):
            if not math.isfinite(item):
                return where, NON_FINITE_PROBLEM
        else:
            if isinstance(item, dict):
                for key in item:
                    problem = string_problem(str(key)) if surrogates else None
                    if problem or "\x00" in str(key):
                        return f"{where}.{key!r}", problem or NUL_PROBLEM
            pending.extend((child, f"{where}.{name}", depth + 1) for name, child in _items(item))
    return None


def check_value(value: Any, field: str) -> None:
    """Refuse a value (an input object, a list, JSON) holding anything `value_problem` finds."""
    found = value_problem(value, field)
    if found is not None:
        where, problem = found
        raise BadUserInput(f"`{where}`: {problem}", field=where)


def check_length(value: str | None, field: str, limit: int) -> None:
    if value is not None and len(value) > limit:
        message = f"`{field}` is {len(value)} characters long; at most {limit} are allowed"
        raise BadUserInput(message, field=field, limit=limit)


def check_tags(tags: list[str] | None, field: str) -> None:
    if tags is None:
        return
    if len(tags) > MAX_TAGS:
        raise BadUserInput(f"`{field}` holds {len(tags)} tags; at most {MAX_TAGS} are allowed", field=field)
    for index, tag in enumerate(tags):
        check_length(tag, f"{field}.{index}", MAX_TAG_CHARS)


def check_json_keys(value: Any, field: str) -> None:
    """Keys of a JSON value at any depth stay under MAX_JSON_KEY_CHARS (they are matched, merged
    and shown as names)."""
    pending = [(value, field)]
    while pending:
        item, where = pending.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if len(str(key)) > MAX_JSON_KEY_CHARS:
                    raise BadUserInput(
                        f"a key in `{where}` is {len(str(key))} characters long; at most "
                        f"{MAX_JSON_KEY_CHARS} are allowed",
                        field=where,
                        limit=MAX_JSON_KEY_CHARS,
                    )
                pending.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            pending.extend((child, f"{where}.{index}") for index, child in enumerate(item))


def checked_url(url: str | None, field: str) -> str | None:
    """An absolute http(s) URL with a host, stripped of surrounding whitespace. Clients render it
    as a link: javascript: or data: URLs would run in their pages, and a relative one goes nowhere."""
    if url is None:
        return None
    stripped = url.strip()
    check_length(stripped, field, MAX_URL_CHARS)
    try:
        parts = urlsplit(stripped)
        absolute = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a malformed IPv6 host
        absolute = False
    if not absolute:
        raise BadUserInput(f"`{field}` must be an absolute http or https URL", field=field)
    if any(character.isspace() or ord(character) < 0x20 for character in stripped):
        raise BadUserInput(f"`{field}` must not contain spaces or control characters", field=field)
    return stripped


NAME, IDENTIFIER, TAGS, JSON_VALUE, MIME = "name", "identifier", "tags", "json", "mime"
_LIMITS = {NAME: MAX_NAME_CHARS, IDENTIFIER: MAX_IDENTIFIER_CHARS, MIME: MAX_MIME_CHARS}


STEP_LIMITS = {
    **dict.fromkeys(("name", "type", "language", "command", "show_input"), NAME),
    "tags": TAGS,
    **dict.fromkeys(("metadata", "generation", "modes"), JSON_VALUE),
}
ELEMENT_LIMITS = {
    **dict.fromkeys(("name", "type", "display", "size", "language", "chainlit_key"), NAME),
    "mime": MIME,
    "props": JSON_VALUE,
}


def _camel(name: str) -> str:
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part.title() for part in rest)


def check_input(value: Any, path: str, kinds: dict[str, str]) -> None:
    """Check an input object: no value `value_problem` refuses (lone surrogates: a batch's items
    are checked here, one by one), and each attribute named in `kinds` within its kind's limit."""
    check_value(value, path)
    for attribute, kind in kinds.items():
        given = getattr(value, attribute, None)
        field = f"{path}.{_camel(attribute)}"
        if kind == TAGS:
            check_tags(given if isinstance(given, list) else None, field)
        elif kind == JSON_VALUE:
            check_json_keys(given, field)
        elif isinstance(given, str):
            check_length(given, field, _LIMITS[kind])


# --- the request body -----------------------------------------------------------------------------


def _strict_float(text: str) -> float | NotJson:
    number = float(text)
    return number if math.isfinite(number) else NotJson(text)


def loads_strict(body: str | bytes) -> dict[str, Any]:
    """Parse a request body as strict JSON: UTF-8, an object at the top, no NaN or Infinity (they
    become `NotJson` markers, refused with the path of the variable holding them), nesting within
    the parser's reach. Raises ValueError saying what is wrong."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"the request body is not UTF-8 (byte {error.start})") from None
    try:
        data = json.loads(body, parse_constant=NotJson, parse_float=_strict_float)
    except RecursionError:
        raise ValueError("the request body is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, or an integer of more than 4,300 digits
        raise ValueError(f"the request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the request body must be a JSON object, not {type(data).__name__}")
    query = data.get("query")
    if isinstance(query, str) and (problem := string_problem(query)):
        raise ValueError(f"`query`: {problem}")
    return data
