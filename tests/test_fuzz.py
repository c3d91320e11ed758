"""Schema fuzzing over HTTP, on SQLite and PostgreSQL: hypothesis builds operations from the schema
itself (any root field, its arguments as variables) with hostile values (NUL, lone surrogates,
NaN and Infinity, huge and deeply nested JSON, megabyte strings, URLs with spaces) and real ids
taken from earlier answers, so writes reach existing rows.

What must hold for every request: no HTTP 5xx, no INTERNAL_SERVER_ERROR, every error carries
`extensions.code`, the answer is strict JSON; and afterwards everything written reads back as
strict JSON. The run is bounded for CI (GATEWAY_FUZZ_EXAMPLES, default 60 per database);
`bench/fuzz.py` runs it longer.
"""

import json
import os
import uuid
from typing import Any

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    get_named_type,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.database import Database
from resolvers.schema import schema
from tests.conftest import Api
from tests.test_errors import World, make_world

EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "60"))
GRAPHQL_SCHEMA: GraphQLSchema = schema._schema
ROOT_FIELDS = [
    (kind, name)
    for kind, root in (("query", GRAPHQL_SCHEMA.query_type), ("mutation", GRAPHQL_SCHEMA.mutation_type))
    if root is not None
    for name in sorted(root.fields)
]
HOSTILE_TEXT = [
    "",
    "  ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "😀",
    "x" * 3000,
    "y" * 300_000,
    " https://example.com/a.png",
    "https://example.com/a.png",
    "javascript:alert(1)",
    "' OR 1=1 --",
    "%_\\",
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00",
    "NaN",
]


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} in the answer: not JSON")

    return json.loads(text, parse_constant=refuse)


# --- values -----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e308, -1e308, 5e-324])
    | st.text(max_size=8)
    | st.sampled_from(HOSTILE_TEXT[:8]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"k": value}
    return value


def known_id(ids: list[str]) -> st.SearchStrategy[str]:
    """One of the ids seen so far. Drawn as a position, not from the list: the list grows with the
    answers, and hypothesis must see the same kind of draw when it replays an example."""
    return st.integers(min_value=0, max_value=2**16).map(lambda position: ids[position % len(ids)])


def text_values(ids: list[str]) -> st.SearchStrategy[str]:
    return st.text(max_size=12) | st.sampled_from(HOSTILE_TEXT) | known_id(ids)


def value_for(kind: GraphQLInputType, ids: list[str], depth: int = 0) -> st.SearchStrategy[Any]:
    if isinstance(kind, GraphQLNonNull):
        return value_for_named(kind.of_type, ids, depth)
    return st.none() | value_for_named(kind, ids, depth)


def value_for_named(kind: Any, ids: list[str], depth: int) -> st.SearchStrategy[Any]:
    if isinstance(kind, GraphQLList):
        return st.lists(value_for(kind.of_type, ids, depth + 1), max_size=3)
    if isinstance(kind, GraphQLEnumType):
        return st.sampled_from([*kind.values, "NOPE"])
    if isinstance(kind, GraphQLInputObjectType):
        if depth > 3:
            return st.just({})
        required = {
            name: value_for(field.type, ids, depth + 1)
            for name, field in kind.fields.items()
            if isinstance(field.type, GraphQLNonNull)
        }
        optional = {
            name: value_for(field.type, ids, depth + 1)
            for name, field in kind.fields.items()
            if not isinstance(field.type, GraphQLNonNull)
        }
        return st.fixed_dictionaries(required, optional=optional)
    assert isinstance(kind, GraphQLScalarType), kind
    name = kind.name
    if name == "ID":
        return known_id(ids) | st.just(str(uuid.uuid4())) | st.sampled_from(HOSTILE_TEXT[:6])
    if name == "String":
        return text_values(ids)
    if name == "Int":
        return st.integers(min_value=-5, max_value=150) | st.sampled_from([2**31, -(2**40), 10**20])
    if name == "Float":
        return st.floats(allow_nan=True, allow_infinity=True)
    if name == "Boolean":
        return st.booleans()
    if name == "DateTime":
        return st.sampled_from(
            ["2026-01-01T00:00:00.000Z", "2026-13-01T00:00:00Z", "now", "9999-12-31T23:59:59+14:00"]
        )
    if name in ("JSON", "JSONObject"):
        return st.dictionaries(
            st.text(max_size=6) | st.just("x" * 300), json_values, max_size=4
        ) | st.sampled_from([deep(80), {"a": deep(70)}, [1, 2], "text"])
    if name == "Upload":
        return st.none()
    return st.text(max_size=8)


# --- documents --------------------------------------------------------------------------------------


def selection(field: GraphQLField, depth: int = 0) -> str:
    """A small selection of the field's result: its scalars, and one level of objects below."""
    named = get_named_type(field.type)
    if not isinstance(named, GraphQLObjectType):
        return ""
    parts = []
    for name, child in sorted(named.fields.items()):
        if any(isinstance(arg.type, GraphQLNonNull) for arg in child.args.values()):
            continue
        child_type = get_named_type(child.type)
        if isinstance(child_type, GraphQLObjectType):
            if depth < 2:
                parts.append(f"{name} {selection(child, depth + 1)}")
        else:
            parts.append(name)
    return "{ " + " ".join(parts or ["__typename"]) + " }"


@st.composite
def operations(draw: st.DrawFn, ids: list[str]) -> tuple[str, dict[str, Any]]:
    kind, name = draw(st.sampled_from(ROOT_FIELDS))
    root = GRAPHQL_SCHEMA.query_type if kind == "query" else GRAPHQL_SCHEMA.mutation_type
    assert root is not None
    field = root.fields[name]
    declared, passed, variables = [], [], {}
    for arg_name, arg in field.args.items():
        required = isinstance(arg.type, GraphQLNonNull)
        if not required and not draw(st.booleans()):
            continue
        declared.append(f"${arg_name}: {arg.type}")
        passed.append(f"{arg_name}: ${arg_name}")
        variables[arg_name] = draw(value_for(arg.type, ids))
    header = f"({', '.join(declared)})" if declared else ""
    arguments = f"({', '.join(passed)})" if passed else ""
    return f"{kind}{header} {{ {name}{arguments} {selection(field)} }}", variables


def ids_in(value: Any, found: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith(("id", "Id")) and isinstance(item, str) and item not in found:
                found.append(item)
            ids_in(item, found)
    elif isinstance(value, list):
        for item in value:
            ids_in(item, found)


READ_BACK = (
    "{ threads(first: 15) { edges { node { id name tags metadata userIdentifier"
    " steps(last: 15) { edges { node { id name type input output tags metadata generation modes"
    " showInput language command feedback { comment } } } }"
    " elements(first: 10) { edges { node { name mime props url } } } } } }"
    " users(first: 50) { edges { node { identifier metadata } } } }"
)


async def assert_sane(api: Api, document: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"query": document, "variables": variables}, allow_nan=True)  # NaN as sent
    response = await api.http.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, (response.status_code, response.text[:500], document)
    answer: dict[str, Any] = strict_json(response.text)
    for error in answer.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        assert code, (error, document)
        assert code != "INTERNAL_SERVER_ERROR", (error, document, str(variables)[:500])
    return answer


@pytest.fixture
async def world(api: Api) -> World:
    return await make_world(api)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    derandomize=os.environ.get("CI", "") != "",  # CI: the same examples every run
)
@given(data=st.data())
async def test_fuzzed_operations_get_coded_answers_and_store_strict_json(
    api: Api, db: Database, world: World, data: st.DataObject
) -> None:
    ids = [world.user_id, world.thread_id, world.step_id, world.child_id, world.feedback_id]
    for _ in range(3):  # a few operations per example, later ones using ids the earlier returned
        document, variables = data.draw(operations(ids))
        answer = await assert_sane(api, document, variables)
        ids_in(answer.get("data"), ids)
    everything = await assert_sane(api, READ_BACK, {})
    assert "errors" not in everything, everything["errors"]
