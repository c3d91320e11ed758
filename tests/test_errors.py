"""Bad input gets a clear GraphQL error carrying `extensions.code`, and writes nothing, on SQLite
and PostgreSQL alike; unexpected failures are masked, with a request id that leads to the log."""

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.data import threads as data_threads
from gateway.database import Database
from resolvers.compiled import CompiledReads
from tests.conftest import TABLES_CHILDREN_FIRST, Api, new_uuid

BAD_ID = "not-a-uuid"
NUL = "\x00"
GRAPHQL_NUL = "\\u0000"  # the escape inside a GraphQL string literal

Snapshot = dict[str, list[str]]
USER_METADATA = (
    'mutation($v: JSONObject) { upsertUser(input: {identifier: "ada@example.com", metadata: $v}) { id } }'
)
UPSERT_THREAD = "mutation($i: ThreadInput!) { upsertThread(input: $i) { id } }"


async def snapshot(db: Database) -> Snapshot:
    """Every row of every table, so a comparison catches inserts, updates and deletes alike."""
    state: Snapshot = {}
    async with db.session() as session:
        for table in TABLES_CHILDREN_FIRST:
            rows = (await session.execute(sa.text(f"SELECT * FROM {table}"))).mappings().all()
            state[table] = sorted(json.dumps(dict(row), sort_keys=True, default=str) for row in rows)
    return state


@dataclass
class World:
    """A user owning a thread with a step, a child step and a feedback on the step."""

    user_id: str
    thread_id: str
    step_id: str
    child_id: str
    feedback_id: str


@pytest.fixture
async def world(api: Api) -> World:
    return await make_world(api)


async def make_world(api: Api) -> World:
    user = await api.ok(
        'mutation { upsertUser(input: {identifier: "ada@example.com", metadata: {role: "admin"}}) { id } }'
    )
    user_id = user["upsertUser"]["id"]
    thread_id, step_id, child_id = new_uuid(), new_uuid(), new_uuid()
    await api.ok(
        'mutation($id: ID!, $user: ID!) { upsertThread(input: {id: $id, name: "Chat", userId: $user,'
        ' tags: ["a"], metadata: {k: "v"}}) { id } }',
        id=thread_id,
        user=user_id,
    )
    step = (
        "mutation($id: ID!, $thread: ID!, $parent: ID) { upsertStep(input: {id: $id, threadId: $thread,"
        ' parentId: $parent, name: "s", type: "user_message", output: "hello",'
        ' createdAt: "2026-01-01T00:00:00.000Z"}) { id } }'
    )
    await api.ok(step, id=step_id, thread=thread_id, parent=None)
    await api.ok(step, id=child_id, thread=thread_id, parent=step_id)
    feedback = await api.ok(
        'mutation($step: ID!) { upsertFeedback(input: {forId: $step, value: 1, comment: "good"}) { id } }',
        step=step_id,
    )
    return World(user_id, thread_id, step_id, child_id, feedback["upsertFeedback"]["id"])


async def refused(api: Api, db: Database, code: str, query: str, **variables: Any) -> dict[str, Any]:
    """Run a request that must fail with `code` and leave every table exactly as it was."""
    before = await snapshot(db)
    error = await api.error(query, **variables)
    assert error.get("extensions", {}).get("code") == code, error
    assert await snapshot(db) == before, f"a refused request changed the database: {error}"
    return error


async def thread_exists(api: Api, thread_id: str) -> bool:
    data = await api.ok("query($id: ID!) { thread(id: $id) { id } }", id=thread_id)
    return data["thread"] is not None


def cursor(name: str, values: list[Any]) -> str:
    """A cursor as the gateway encodes them (for forging ones it never made)."""
    raw = json.dumps([name, values]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- malformed ids --------------------------------------------------------------------------------

# Each case: the request, the argument it names, and the valid ids it also needs (from the world).
MALFORMED_ID_CASES: dict[str, tuple[str, str, dict[str, str]]] = {
    "thread(id)": ("query($v: ID!) { thread(id: $v) { id } }", "id", {}),
    "step(id)": ("query($v: ID!) { step(id: $v) { id } }", "id", {}),
    "user(id)": ("query($v: ID!) { user(id: $v) { id } }", "id", {}),
    "upsertThread input.id": (
        'mutation($v: ID!) { upsertThread(input: {id: $v, name: "x"}) { id } }',
        "input.id",
        {},
    ),
    "upsertThread input.userId": (
        "mutation($v: ID!, $t: ID!) { upsertThread(input: {id: $t, userId: $v}) { id } }",
        "input.userId",
        {"t": "thread_id"},
    ),
    "upsertStep input.id": (
        'mutation($v: ID!, $t: ID!) { upsertStep(input: {id: $v, threadId: $t, name: "s"}) { id } }',
        "input.id",
        {"t": "thread_id"},
    ),
    "upsertStep input.threadId": (
        'mutation($v: ID!, $s: ID!) { upsertStep(input: {id: $s, threadId: $v, name: "s"}) { id } }',
        "input.threadId",
        {"s": "step_id"},
    ),
    "upsertStep input.parentId": (
        "mutation($v: ID!, $s: ID!, $t: ID!) {"
        " upsertStep(input: {id: $s, threadId: $t, parentId: $v}) { id } }",
        "input.parentId",
        {"s": "child_id", "t": "thread_id"},
    ),
    "deleteThread id": ("mutation($v: ID!) { deleteThread(id: $v) { id } }", "id", {}),
    "deleteStep id": ("mutation($v: ID!) { deleteStep(id: $v) { id } }", "id", {}),
    "deleteFeedback id": ("mutation($v: ID!) { deleteFeedback(id: $v) { id } }", "id", {}),
    "appendStepOutput id": ('mutation($v: ID!) { appendStepOutput(id: $v, delta: "x") { id } }', "id", {}),
    "upsertFeedback input.forId": (
        "mutation($v: ID!) { upsertFeedback(input: {forId: $v, value: 1}) { id } }",
        "input.forId",
        {},
    ),
    "upsertFeedback input.id": (
        "mutation($v: ID!, $s: ID!) { upsertFeedback(input: {forId: $s, value: 0, id: $v}) { id } }",
        "input.id",
        {"s": "step_id"},
    ),
    "threads filter.userId": (
        "query($v: ID!) { threads(filter: {userId: $v}) { totalCount } }",
        "filter.userId",
        {},
    ),
    "favoriteSteps userId": ("query($v: ID!) { favoriteSteps(userId: $v) { totalCount } }", "userId", {}),
}


@pytest.mark.parametrize("case", MALFORMED_ID_CASES)
async def test_malformed_id_is_bad_user_input_naming_the_argument(
    api: Api, db: Database, world: World, case: str
) -> None:
    query, argument, valid = MALFORMED_ID_CASES[case]
    variables = {"v": BAD_ID, **{name: getattr(world, attribute) for name, attribute in valid.items()}}
    error = await refused(api, db, "BAD_USER_INPUT", query, **variables)
    assert f"`{argument}`" in error["message"]
    assert BAD_ID in error["message"]


@pytest.mark.parametrize(
    "value", ["", "1234", "g" * 32, "00000000-0000-0000-0000-00000000000Z", "' OR 1=1 --", "x" * 10_000]
)
async def test_malformed_id_values_are_refused(api: Api, value: str) -> None:
    error = await api.error("query($id: ID!) { thread(id: $id) { id } }", id=value)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert "`id`" in error["message"]


async def test_malformed_id_in_an_inline_literal(api: Api, db: Database) -> None:
    error = await refused(api, db, "BAD_USER_INPUT", f'mutation {{ deleteThread(id: "{BAD_ID}") {{ id }} }}')
    assert "`id`" in error["message"]


# --- unknown ids ----------------------------------------------------------------------------------

UNKNOWN_ID_MUTATIONS = {
    "deleteThread": "mutation($v: ID!) { deleteThread(id: $v) { id } }",
    "deleteStep": "mutation($v: ID!) { deleteStep(id: $v) { id } }",
    "deleteFeedback": "mutation($v: ID!) { deleteFeedback(id: $v) { id } }",
    "appendStepOutput": 'mutation($v: ID!) { appendStepOutput(id: $v, delta: "more") { id } }',
    "upsertFeedback on a missing step": (
        "mutation($v: ID!) { upsertFeedback(input: {forId: $v, value: 1}) { id } }"
    ),
    "upsertStep without threadId": 'mutation($v: ID!) { upsertStep(input: {id: $v, name: "x"}) { id } }',
}


@pytest.mark.parametrize("case", UNKNOWN_ID_MUTATIONS)
async def test_unknown_id_is_not_found(api: Api, db: Database, world: World, case: str) -> None:
    missing = new_uuid()
    error = await refused(api, db, "NOT_FOUND", UNKNOWN_ID_MUTATIONS[case], v=missing)
    assert missing in error["message"]


@pytest.mark.parametrize("field", ["thread", "step", "user"])
async def test_reading_an_unknown_id_is_null_not_an_error(api: Api, world: World, field: str) -> None:
    body = (await api.post(f"query($id: ID!) {{ {field}(id: $id) {{ id }} }}", {"id": new_uuid()})).json()
    assert body["data"] == {field: None} and "errors" not in body


# --- cursors --------------------------------------------------------------------------------------

THREADS_AFTER = "query($after: String) { threads(after: $after) { edges { node { id } } } }"
THREADS_BEFORE = "query($before: String) { threads(before: $before, last: 5) { edges { node { id } } } }"
STEPS_AFTER = (
    "query($id: ID!, $after: String) { thread(id: $id) { steps(after: $after) { edges { cursor } } } }"
)


@pytest.mark.parametrize(
    "garbage",
    [
        "garbage",
        "!!!not base64!!!",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"{}").decode(),
        base64.urlsafe_b64encode(b"null").decode(),
        base64.urlsafe_b64encode(b'"ab"').decode(),
        cursor("threads:updatedAt:desc", ["2026-01-01T00:00:00.000Z"]),  # one value short
        cursor("threads:updatedAt:desc", [{"a": 1}, []]),
        cursor("threads:updatedAt:desc", "not a list"),  # type: ignore[arg-type]
    ],
)
async def test_garbage_cursor_is_bad_user_input(api: Api, world: World, garbage: str) -> None:
    for query, argument in ((THREADS_AFTER, "after"), (THREADS_BEFORE, "before")):
        error = await api.error(query, **{argument: garbage})
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        assert f"`{argument}`" in error["message"]


async def test_garbage_cursor_on_thread_steps(api: Api, world: World) -> None:
    error = await api.error(STEPS_AFTER, id=world.thread_id, after="garbage")
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert error["path"] == ["thread", "steps"]


@pytest.mark.parametrize(
    "values",
    [
        ["2026-01-01T00:00:00.000Z", "not-a-uuid"],  # a forged id tie-breaker
        [5, "00000000-0000-0000-0000-000000000000"],  # a number where the column holds text
        ["2026-01-01T00:00:00.000Z\x00", "00000000-0000-0000-0000-000000000000"],  # NUL, past the NUL guard
    ],
    ids=["bad-id", "number-for-text", "nul"],
)
async def test_forged_cursor_with_values_the_column_cannot_hold(
    api: Api, world: World, values: list[Any]
) -> None:
    error = await api.error(THREADS_AFTER, after=cursor("threads:updatedAt:desc", values))
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert "`after`" in error["message"]


async def test_cursor_of_another_list_is_refused(api: Api, world: World) -> None:
    data = await api.ok(STEPS_AFTER, id=world.thread_id, after=None)
    steps_cursor = data["thread"]["steps"]["edges"][0]["cursor"]
    error = await api.error(THREADS_AFTER, after=steps_cursor)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert "another list" in error["message"]

    threads_cursor = (await api.ok("{ threads { edges { cursor } } }"))["threads"]["edges"][0]["cursor"]
    error = await api.error(STEPS_AFTER, id=world.thread_id, after=threads_cursor)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error


@pytest.mark.parametrize(
    "order", ["{field: CREATED_AT}", "{field: CREATED_AT, direction: ASC}", "{direction: ASC}"]
)
async def test_cursor_of_another_order_is_refused(api: Api, world: World, order: str) -> None:
    data = await api.ok(f"{{ threads(orderBy: {order}) {{ edges {{ cursor }} }} }}")
    other_order_cursor = data["threads"]["edges"][0]["cursor"]
    error = await api.error(THREADS_AFTER, after=other_order_cursor)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    # The same cursor is fine on the order that made it: only the mismatch is refused.
    await api.ok(
        f"query($after: String) {{ threads(orderBy: {order}, after: $after) {{ edges {{ cursor }} }} }}",
        after=other_order_cursor,
    )


# --- page sizes -----------------------------------------------------------------------------------

PAGE_SIZE_CASES = {
    "first: 101": ("first: 101", "`first`"),
    "first: -1": ("first: -1", "`first`"),
    "last: 101": ("last: 101", "`last`"),
    "last: -1": ("last: -1", "`last`"),
    "first and last": ("first: 1, last: 1", "`first`"),
}
CONNECTIONS = {
    "threads": ("{{ threads({args}) {{ edges {{ cursor }} }} }}", ["threads"]),
    "users": ("{{ users({args}) {{ edges {{ cursor }} }} }}", ["users"]),
    "thread.steps": (
        "query($id: ID!) {{ thread(id: $id) {{ steps({args}) {{ edges {{ cursor }} }} }} }}",
        ["thread", "steps"],
    ),
    "thread.feedbacks": (
        "query($id: ID!) {{ thread(id: $id) {{ feedbacks({args}) {{ edges {{ cursor }} }} }} }}",
        ["thread", "feedbacks"],
    ),
    "step.children": (
        "query($id: ID!) {{ step(id: $id) {{ children({args}) {{ edges {{ cursor }} }} }} }}",
        ["step", "children"],
    ),
}


@pytest.mark.parametrize("connection", CONNECTIONS)
@pytest.mark.parametrize("case", PAGE_SIZE_CASES)
async def test_page_size_out_of_range_is_bad_user_input(
    api: Api, world: World, connection: str, case: str
) -> None:
    template, path = CONNECTIONS[connection]
    args, named = PAGE_SIZE_CASES[case]
    query = template.format(args=args)
    # The nested connections resolve only under an existing parent.
    variables = {"id": world.step_id if path[0] == "step" else world.thread_id} if "$id" in query else {}
    error = await api.error(query, **variables)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert named in error["message"]
    assert error["path"] == path


@pytest.mark.parametrize("args", ["first: 100", "last: 100", "first: 0"])
async def test_page_size_limits_themselves_are_accepted(api: Api, world: World, args: str) -> None:
    await api.ok(
        f"query($id: ID!) {{ threads({args}) {{ totalCount }} thread(id: $id) {{ steps({args}) "
        "{ totalCount } } }",
        id=world.thread_id,
    )


# --- NUL bytes ------------------------------------------------------------------------------------

NUL_THREAD_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "inline literal": (
        f'mutation($id: ID!) {{ upsertThread(input: {{id: $id, name: "a{GRAPHQL_NUL}b"}}) {{ id }} }}',
        {},
    ),
    "inline literal in a JSON value": (
        f'mutation($id: ID!) {{ upsertThread(input: {{id: $id, metadata: {{k: "a{GRAPHQL_NUL}"}}}})'
        " { id } }",
        {},
    ),
    "inline literal in a tags list": (
        f'mutation($id: ID!) {{ upsertThread(input: {{id: $id, tags: ["ok", "b{GRAPHQL_NUL}"]}}) {{ id }} }}',
        {},
    ),
    "variable": (
        "mutation($id: ID!, $name: String) { upsertThread(input: {id: $id, name: $name}) { id } }",
        {"name": f"a{NUL}b"},
    ),
    "JSON metadata value": (
        "mutation($id: ID!, $m: JSONObject) { upsertThread(input: {id: $id, metadata: $m}) { id } }",
        {"m": {"k": f"v{NUL}"}},
    ),
    "JSON metadata value, nested": (
        "mutation($id: ID!, $m: JSONObject) { upsertThread(input: {id: $id, metadata: $m}) { id } }",
        {"m": {"k": [1, {"deep": [f"{NUL}"]}]}},
    ),
    "JSON metadata key": (
        "mutation($id: ID!, $m: JSONObject) { upsertThread(input: {id: $id, metadata: $m}) { id } }",
        {"m": {f"k{NUL}": 1}},
    ),
    "tags list": (
        "mutation($id: ID!, $tags: [String!]) { upsertThread(input: {id: $id, tags: $tags}) { id } }",
        {"tags": ["ok", f"b{NUL}"]},
    ),
    "whole input variable": (
        "mutation($input: ThreadInput!) { upsertThread(input: $input) { id } }",
        {"input": {"name": f"{NUL}"}},
    ),
}


@pytest.mark.parametrize("case", NUL_THREAD_CASES)
async def test_nul_byte_in_a_new_thread_is_refused_and_nothing_written(
    api: Api, db: Database, case: str
) -> None:
    query, variables = NUL_THREAD_CASES[case]
    thread_id = new_uuid()
    if "input" in variables:
        variables = {"input": {"id": thread_id, **variables["input"]}}
    else:
        variables = {"id": thread_id, **variables}
    error = await refused(api, db, "BAD_USER_INPUT", query, **variables)
    assert "NUL" in error["message"]
    assert not await thread_exists(api, thread_id)


NUL_EXISTING_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "upsertThread name": (
        "mutation($t: ID!, $v: String) { upsertThread(input: {id: $t, name: $v}) { id } }",
        {"v": f"x{NUL}"},
    ),
    "upsertStep output": (
        "mutation($s: ID!, $v: String) { upsertStep(input: {id: $s, output: $v}) { id } }",
        {"v": f"x{NUL}"},
    ),
    "upsertStep generation key": (
        "mutation($s: ID!, $v: JSONObject) { upsertStep(input: {id: $s, generation: $v}) { id } }",
        {"v": {f"{NUL}": "x"}},
    ),
    "upsertStep modes": (
        "mutation($s: ID!, $v: JSON) { upsertStep(input: {id: $s, modes: $v}) { id } }",
        {"v": ["a", f"{NUL}"]},
    ),
    "appendStepOutput delta": (
        "mutation($s: ID!, $v: String!) { appendStepOutput(id: $s, delta: $v) { id } }",
        {"v": f"tok{NUL}en"},
    ),
    "upsertFeedback comment": (
        "mutation($s: ID!, $v: String) { upsertFeedback(input: {forId: $s, value: 0, comment: $v}) { id } }",
        {"v": f"bad{NUL}"},
    ),
    "upsertUser identifier": (
        "mutation($v: String!) { upsertUser(input: {identifier: $v}) { id } }",
        {"v": f"eve{NUL}@example.com"},
    ),
    "upsertUser metadata": (
        USER_METADATA,
        {"v": {"role": f"root{NUL}"}},
    ),
}


@pytest.mark.parametrize("case", NUL_EXISTING_CASES)
async def test_nul_byte_in_an_update_is_refused_and_nothing_changed(
    api: Api, db: Database, world: World, case: str
) -> None:
    query, variables = NUL_EXISTING_CASES[case]
    if "$t" in query:
        variables = {**variables, "t": world.thread_id}
    if "$s" in query:
        variables = {**variables, "s": world.step_id}
    error = await refused(api, db, "BAD_USER_INPUT", query, **variables)
    assert "NUL" in error["message"]
    data = await api.ok(
        "query($s: ID!) { step(id: $s) { output generation feedback { value comment } thread { name } } }",
        s=world.step_id,
    )
    assert data["step"] == {
        "output": "hello",
        "generation": None,
        "feedback": {"value": 1, "comment": "good"},
        "thread": {"name": "Chat"},
    }


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (f'{{ threads(filter: {{search: "a{GRAPHQL_NUL}"}}) {{ totalCount }} }}', {}),
        ("query($s: String) { threads(filter: {search: $s}) { totalCount } }", {"s": NUL}),
        ("query($m: JSONObject) { threads(filter: {metadata: $m}) { totalCount } }", {"m": {"k": NUL}}),
        ("query($t: [String!]) { threads(filter: {tags: $t}) { totalCount } }", {"t": [NUL]}),
        ("query($s: String) { users(search: $s) { totalCount } }", {"s": NUL}),
        ("query($i: String) { user(identifier: $i) { id } }", {"i": NUL}),
    ],
    ids=[
        "search literal",
        "search variable",
        "metadata filter",
        "tags filter",
        "users search",
        "user identifier",
    ],
)
async def test_nul_byte_in_a_read_is_bad_user_input(
    api: Api, world: World, query: str, variables: dict[str, Any]
) -> None:
    # PostgreSQL would fail on NUL in a query parameter; both databases must answer the same.
    error = await api.error(query, **variables)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert "NUL" in error["message"]


# --- JSON that is not an object -------------------------------------------------------------------


@pytest.mark.parametrize("value", [[1, 2], "x", 3, True, 1.5], ids=["list", "string", "int", "bool", "float"])
async def test_json_object_variable_that_is_not_an_object(api: Api, db: Database, value: Any) -> None:
    thread_id = new_uuid()
    error = await refused(
        api,
        db,
        "BAD_USER_INPUT",
        "mutation($id: ID!, $m: JSONObject) { upsertThread(input: {id: $id, metadata: $m}) { id } }",
        id=thread_id,
        m=value,
    )
    assert "object" in error["message"].lower()
    assert not await thread_exists(api, thread_id)


@pytest.mark.parametrize("literal", ["[1, 2]", '"x"', "3"])
async def test_json_object_literal_that_is_not_an_object(api: Api, db: Database, literal: str) -> None:
    """The same bad value gets the same code inline as in a variable: the client sent bad input."""
    thread_id = new_uuid()
    await refused(
        api,
        db,
        "BAD_USER_INPUT",
        f"mutation($id: ID!) {{ upsertThread(input: {{id: $id, metadata: {literal}}}) {{ id }} }}",
        id=thread_id,
    )
    assert not await thread_exists(api, thread_id)


@pytest.mark.parametrize(
    "query",
    [
        "mutation($s: ID!, $v: JSONObject) { upsertStep(input: {id: $s, metadata: $v}) { id } }",
        "mutation($s: ID!, $v: JSONObject) { upsertStep(input: {id: $s, generation: $v}) { id } }",
        USER_METADATA,
        "query($v: JSONObject) { threads(filter: {metadata: $v}) { totalCount } }",
    ],
    ids=["step metadata", "step generation", "user metadata", "threads filter"],
)
async def test_json_object_arguments_refuse_a_list(api: Api, db: Database, world: World, query: str) -> None:
    variables: dict[str, Any] = {"v": [1, 2]}
    if "$s" in query:
        variables["s"] = world.step_id
    await refused(api, db, "BAD_USER_INPUT", query, **variables)


async def test_null_metadata_is_bad_user_input(api: Api, db: Database, world: World) -> None:
    error = await refused(
        api,
        db,
        "BAD_USER_INPUT",
        "mutation($id: ID!) { upsertThread(input: {id: $id, metadata: null}) { id } }",
        id=world.thread_id,
    )
    assert "metadata" in error["message"]


# --- feedback values ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2, -1])
async def test_feedback_value_out_of_range(api: Api, db: Database, world: World, value: int) -> None:
    # On the rated step (would update the feedback) and on the unrated child (would create one).
    for step_id in (world.step_id, world.child_id):
        error = await refused(
            api,
            db,
            "BAD_USER_INPUT",
            "mutation($s: ID!, $v: Int!) { upsertFeedback(input: {forId: $s, value: $v}) { id } }",
            s=step_id,
            v=value,
        )
        assert str(value) in error["message"]


@pytest.mark.parametrize("value", [5, -1, 2])
async def test_feedback_filter_out_of_range(api: Api, world: World, value: int) -> None:
    error = await api.error("query($v: Int) { threads(filter: {feedback: $v}) { totalCount } }", v=value)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert "filter.feedback" in error["message"]


# --- timestamps -----------------------------------------------------------------------------------

BAD_TIMESTAMPS = ["2026-01-01T00:00:00", "2026-01-01", "yesterday", "", "2026-13-01T00:00:00Z"]


@pytest.mark.parametrize("value", BAD_TIMESTAMPS)
async def test_bad_timestamp_variable(api: Api, db: Database, value: str) -> None:
    thread_id = new_uuid()
    error = await refused(
        api,
        db,
        "BAD_USER_INPUT",
        "mutation($id: ID!, $at: DateTime) { upsertThread(input: {id: $id, createdAt: $at}) { id } }",
        id=thread_id,
        at=value,
    )
    assert "Traceback" not in error["message"]
    assert not await thread_exists(api, thread_id)


@pytest.mark.parametrize("value", ["2026-01-01T00:00:00", "yesterday"])
async def test_bad_timestamp_literal(api: Api, db: Database, value: str) -> None:
    """Inline as in a variable, a timestamp the scalar refuses is BAD_USER_INPUT."""
    thread_id = new_uuid()
    await refused(
        api,
        db,
        "BAD_USER_INPUT",
        f'mutation($id: ID!) {{ upsertThread(input: {{id: $id, createdAt: "{value}"}}) {{ id }} }}',
        id=thread_id,
    )
    assert not await thread_exists(api, thread_id)


async def test_naive_timestamp_error_says_an_offset_is_needed(api: Api) -> None:
    error = await api.error(
        "mutation($id: ID!, $at: DateTime) { upsertThread(input: {id: $id, createdAt: $at}) { id } }",
        id=new_uuid(),
        at="2026-01-01T00:00:00",
    )
    assert "offset" in error["message"]


@pytest.mark.parametrize("field", ["createdAt", "start", "end"])
async def test_bad_timestamp_on_a_step(api: Api, db: Database, world: World, field: str) -> None:
    step_id = new_uuid()
    await refused(
        api,
        db,
        "BAD_USER_INPUT",
        f"mutation($s: ID!, $t: ID!, $at: DateTime) {{"
        f" upsertStep(input: {{id: $s, threadId: $t, {field}: $at}}) {{ id }} }}",
        s=step_id,
        t=world.thread_id,
        at="2026-01-01T00:00:00",
    )


async def test_non_string_timestamp_and_filter_timestamp(api: Api, world: World) -> None:
    error = await api.error(
        "query($at: DateTime) { threads(filter: {createdAfter: $at}) { totalCount } }", at=17
    )
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    error = await api.error(
        "query($at: DateTime) { threads(filter: {createdBefore: $at}) { totalCount } }",
        at="2026-01-01T00:00:00",
    )
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error


# --- failed mutations write nothing ---------------------------------------------------------------


async def test_step_moved_to_a_new_thread_is_a_conflict_and_creates_no_thread(
    api: Api, db: Database, world: World
) -> None:
    other_thread = new_uuid()
    for change in ("", ', output: "changed"'):  # with nothing else to set, and with a change
        error = await refused(
            api,
            db,
            "CONFLICT",
            f"mutation($s: ID!, $t: ID!) {{ upsertStep(input: {{id: $s, threadId: $t{change}}}) {{ id }} }}",
            s=world.step_id,
            t=other_thread,
        )
        assert world.thread_id in error["message"]
        assert not await thread_exists(api, other_thread)
    data = await api.ok("query($s: ID!) { step(id: $s) { threadId output } }", s=world.step_id)
    assert data["step"] == {"threadId": world.thread_id, "output": "hello"}


async def test_thread_of_a_missing_user_is_not_found_and_not_created(
    api: Api, db: Database, world: World
) -> None:
    thread_id, missing_user = new_uuid(), new_uuid()
    error = await refused(
        api,
        db,
        "NOT_FOUND",
        'mutation($id: ID!, $u: ID!) { upsertThread(input: {id: $id, name: "x", userId: $u}) { id } }',
        id=thread_id,
        u=missing_user,
    )
    assert missing_user in error["message"]
    assert not await thread_exists(api, thread_id)
    # Nor is an existing thread handed to a missing user.
    await refused(
        api,
        db,
        "NOT_FOUND",
        "mutation($id: ID!, $u: ID!) { upsertThread(input: {id: $id, userId: $u}) { id } }",
        id=world.thread_id,
        u=missing_user,
    )


async def test_thread_of_a_missing_user_identifier_is_not_found(api: Api, db: Database) -> None:
    thread_id = new_uuid()
    await refused(
        api,
        db,
        "NOT_FOUND",
        'mutation($id: ID!) { upsertThread(input: {id: $id, userIdentifier: "nobody@example.com"}) { id } }',
        id=thread_id,
    )
    assert not await thread_exists(api, thread_id)


async def test_user_id_and_identifier_naming_different_users(api: Api, db: Database, world: World) -> None:
    await api.ok('mutation { upsertUser(input: {identifier: "bob@example.com"}) { id } }')
    thread_id = new_uuid()
    await refused(
        api,
        db,
        "BAD_USER_INPUT",
        "mutation($id: ID!, $u: ID!) { upsertThread(input: {id: $id, userId: $u,"
        ' userIdentifier: "bob@example.com"}) { id } }',
        id=thread_id,
        u=world.user_id,
    )
    assert not await thread_exists(api, thread_id)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ("threadId: null", "threadId"),
        ("name: null", "name"),
        ("type: null", "type"),
        ("streaming: null", "streaming"),
        ("metadata: null", "metadata"),
        ("createdAt: null", "createdAt"),
    ],
)
async def test_step_null_for_a_required_field(
    api: Api, db: Database, world: World, fields: str, named: str
) -> None:
    error = await refused(
        api,
        db,
        "BAD_USER_INPUT",
        f"mutation($s: ID!) {{ upsertStep(input: {{id: $s, {fields}}}) {{ id }} }}",
        s=world.step_id,
    )
    assert named in error["message"]


async def test_step_that_is_its_own_parent_creates_nothing(api: Api, db: Database) -> None:
    step_id, thread_id = new_uuid(), new_uuid()
    await refused(
        api,
        db,
        "BAD_USER_INPUT",
        "mutation($s: ID!, $t: ID!) { upsertStep(input: {id: $s, threadId: $t, parentId: $s}) { id } }",
        s=step_id,
        t=thread_id,
    )
    assert not await thread_exists(api, thread_id)


async def test_feedback_id_of_another_step_is_a_conflict(api: Api, db: Database, world: World) -> None:
    await refused(
        api,
        db,
        "CONFLICT",
        "mutation($s: ID!, $f: ID!) { upsertFeedback(input: {forId: $s, value: 0, id: $f}) { id } }",
        s=world.child_id,
        f=world.feedback_id,
    )


async def test_renaming_a_user_to_a_taken_identifier_is_a_conflict(
    api: Api, db: Database, world: World
) -> None:
    await api.ok('mutation { upsertUser(input: {identifier: "bob@example.com"}) { id } }')
    await refused(
        api,
        db,
        "CONFLICT",
        'mutation($id: ID!) { upsertUser(input: {id: $id, identifier: "bob@example.com",'
        ' metadata: {role: "x"}}) { id } }',
        id=new_uuid(),
    )


async def test_blank_user_identifier(api: Api, db: Database) -> None:
    await refused(api, db, "BAD_USER_INPUT", 'mutation { upsertUser(input: {identifier: "  "}) { id } }')


@pytest.mark.parametrize(
    "query",
    ['query($id: ID) { user(id: $id, identifier: "ada@example.com") { id } }', "{ user(id: null) { id } }"],
    ids=["both", "neither"],
)
async def test_user_by_both_or_neither_of_id_and_identifier(api: Api, world: World, query: str) -> None:
    error = await api.error(query, **({"id": world.user_id} if "$id" in query else {}))
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error


async def test_a_batch_over_the_limit_writes_nothing(api: Api, db: Database) -> None:
    thread_id = new_uuid()
    steps = [{"id": new_uuid(), "threadId": thread_id, "name": "s"} for _ in range(501)]
    await refused(
        api, db, "BAD_USER_INPUT", "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { index } }", s=steps
    )


async def test_failed_items_of_a_batch_write_nothing_while_the_others_land(
    api: Api, db: Database, world: World
) -> None:
    good, moved_thread = new_uuid(), new_uuid()
    steps = [
        {"id": good, "threadId": world.thread_id, "name": "ok"},
        {"id": new_uuid(), "threadId": BAD_ID, "name": "bad id"},
        {"id": world.step_id, "threadId": moved_thread, "output": "moved"},  # another thread's step
        {"id": new_uuid(), "name": "no thread, no step"},
    ]
    data = await api.ok(
        "mutation($s: [StepInput!]!) {"
        " ingestSteps(steps: $s) { index id step { id } error { code message } } }",
        s=steps,
    )
    results = data["ingestSteps"]
    assert [result["index"] for result in results] == [0, 1, 2, 3]
    assert results[0]["step"] == {"id": good} and results[0]["error"] is None
    assert [result["error"]["code"] for result in results[1:]] == ["BAD_USER_INPUT", "CONFLICT", "NOT_FOUND"]
    assert "`input.threadId`" in results[1]["error"]["message"]
    assert all(result["step"] is None for result in results[1:])
    # The conflicting item's savepoint took the thread it created with it.
    assert not await thread_exists(api, moved_thread)
    data = await api.ok("query($s: ID!) { step(id: $s) { threadId output } }", s=world.step_id)
    assert data["step"] == {"threadId": world.thread_id, "output": "hello"}
    async with db.session() as session:
        assert (await session.execute(sa.text("SELECT COUNT(*) FROM steps"))).scalar_one() == 3


# --- requests the server cannot run ---------------------------------------------------------------


@pytest.mark.parametrize("query", ["{ threads { ", "mutation {", "}", "{ thread(id: ) { id } }"])
async def test_syntax_error_is_parse_failed(api: Api, db: Database, query: str) -> None:
    error = await refused(api, db, "GRAPHQL_PARSE_FAILED", query)
    assert "Syntax Error" in error["message"]


@pytest.mark.parametrize(
    "query",
    [
        "{ threads { nope } }",
        "{ nope }",
        'mutation { upsertThread(input: {id: "00000000-0000-0000-0000-000000000000", nope: 1}) { id } }',
        "query($id: ID!) { thread(id: $id) { id } }  query Other { viewer { id } }",  # anonymous + named
        "{ thread { id } }",  # a required argument missing
    ],
    ids=[
        "unknown field",
        "unknown root field",
        "unknown input field",
        "ambiguous operations",
        "missing argument",
    ],
)
async def test_invalid_document_is_validation_failed(api: Api, db: Database, query: str) -> None:
    await refused(api, db, "GRAPHQL_VALIDATION_FAILED", query)


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        ("query($n: Int) { threads(first: $n) { totalCount } }", {"n": "ten"}),
        ("query($n: Int) { threads(first: $n) { totalCount } }", {"n": 1.5}),
        ("query($id: ID!) { thread(id: $id) { id } }", {}),
        ("query($id: ID!) { thread(id: $id) { id } }", {"id": None}),
        ("query($id: ID!) { thread(id: $id) { id } }", {"id": {"a": 1}}),
        (UPSERT_THREAD, {"i": {"id": new_uuid(), "nope": 1}}),
        (UPSERT_THREAD, {"i": {"name": "no id"}}),
        (UPSERT_THREAD, {"i": {"id": new_uuid(), "tags": [1]}}),
        ("query($o: ThreadOrder) { threads(orderBy: $o) { totalCount } }", {"o": {"field": "NAME"}}),
    ],
    ids=[
        "string for Int",
        "float for Int",
        "missing",
        "null for non-null",
        "object for ID",
        "unknown input field",
        "missing input field",
        "number in a list of strings",
        "unknown enum value",
    ],
)
async def test_variable_of_the_wrong_type_is_bad_user_input(
    api: Api, db: Database, query: str, variables: dict[str, Any]
) -> None:
    await refused(api, db, "BAD_USER_INPUT", query, **variables)


@pytest.mark.parametrize(
    "body",
    [
        {"query": "query A { viewer { id } }", "operationName": "Nope"},
        {"query": "{ viewer { id } }", "variables": [1]},
        {"query": ""},
        {"variables": {}},
    ],
    ids=["unknown operationName", "variables not an object", "empty query", "no query"],
)
async def test_malformed_request_is_a_graphql_error_with_a_code(api: Api, db: Database, body: Any) -> None:
    """Errors the HTTP layer finds are GraphQL errors too (JSON with a code), not bare text."""
    before = await snapshot(db)
    response = await api.http.post("/graphql", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/"), response.text
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert await snapshot(db) == before


async def test_body_that_is_not_json_is_a_graphql_error_with_a_code(api: Api) -> None:
    response = await api.http.post(
        "/graphql", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error


# --- unexpected errors are masked -----------------------------------------------------------------


def _boom(*_: Any, **__: Any) -> Any:
    raise RuntimeError("secret detail")


async def _on_the_resolvers(*_args: Any, **_kwargs: Any) -> None:
    """The compiled read path declining: the query runs on the resolvers, where the fault is."""
    return None


async def test_unexpected_error_is_masked_and_logged_with_the_request_id(
    api: Api, world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("resolvers.threads.queries.threads.list_threads", _boom)
    monkeypatch.setattr(CompiledReads, "execute", _on_the_resolvers)
    caplog.set_level(logging.ERROR, logger="gateway.errors")
    response = await api.post("{ threads { edges { node { id } } } }")
    body = response.json()
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert error["path"] == ["threads"]
    for leak in ("secret detail", "Traceback", "RuntimeError", "list_threads"):
        assert leak not in response.text
    request_id = response.headers["X-Request-ID"]
    assert request_id
    assert error["extensions"]["requestId"] == request_id
    assert request_id in error["message"]

    [record] = [r for r in caplog.records if r.name == "gateway.errors"]
    assert record.levelno == logging.ERROR
    assert request_id in record.getMessage()
    assert record.exc_info is not None and "secret detail" in str(record.exc_info[1])
    assert "secret detail" in caplog.text
    assert "Traceback" in caplog.text


async def test_masked_error_quotes_the_client_request_id(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("resolvers.threads.queries.threads.list_threads", _boom)
    monkeypatch.setattr(CompiledReads, "execute", _on_the_resolvers)
    caplog.set_level(logging.ERROR, logger="gateway.errors")
    response = await api.post("{ threads { totalCount } }", None, **{"X-Request-ID": "client-req.42"})
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert response.headers["X-Request-ID"] == "client-req.42"
    assert error["extensions"]["requestId"] == "client-req.42"
    assert "secret detail" not in response.text
    assert "client-req.42" in caplog.text
    assert "secret detail" in caplog.text


@pytest.mark.parametrize("given", ["has space", "x" * 65, "new\\nline", "<script>"])
async def test_unsafe_client_request_id_is_replaced(
    api: Api, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    monkeypatch.setattr("resolvers.threads.queries.threads.list_threads", _boom)
    monkeypatch.setattr(CompiledReads, "execute", _on_the_resolvers)
    response = await api.post("{ threads { totalCount } }", None, **{"X-Request-ID": given})
    [error] = response.json()["errors"]
    request_id = response.headers["X-Request-ID"]
    assert request_id != given
    assert error["extensions"]["requestId"] == request_id


async def test_unexpected_error_after_a_write_rolls_it_back(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_upsert = data_threads.upsert_thread

    async def write_then_fail(*args: Any, **kwargs: Any) -> Any:
        await real_upsert(*args, **kwargs)
        raise RuntimeError("secret detail")

    monkeypatch.setattr("resolvers.threads.mutations.threads.upsert_thread", write_then_fail)
    thread_id = new_uuid()
    error = await refused(
        api,
        db,
        "INTERNAL_SERVER_ERROR",
        'mutation($id: ID!) { upsertThread(input: {id: $id, name: "x"}) { id } }',
        id=thread_id,
    )
    assert "secret detail" not in error["message"]
    monkeypatch.undo()
    assert not await thread_exists(api, thread_id)


async def test_client_errors_are_not_logged_as_incidents(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway")
    await api.error("query($id: ID!) { thread(id: $id) { id } }", id=BAD_ID)
    await api.error("{ nope }")
    await api.error("mutation($id: ID!) { deleteThread(id: $id) { id } }", id=new_uuid())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_several_operations_need_an_operation_name(api: Api) -> None:
    document = 'query A { viewer { id } } mutation B { upsertUser(input: {identifier: "sneaky"}) { id } }'
    error = await api.error(document)
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "operationName" in error["message"]
    response = await api.http.post("/graphql", json={"query": document, "operationName": "A"})
    assert response.json()["data"] == {"viewer": None}
    assert (await api.ok('{ user(identifier: "sneaky") { id } }'))["user"] is None


async def test_values_nested_too_deep_are_refused_with_a_code(api: Api) -> None:
    deep: dict[str, object] = {}
    value = deep
    for _ in range(200):
        value["k"] = {}
        value = value["k"]  # type: ignore[assignment]
    thread_id = new_uuid()
    response = await api.post(
        "mutation($id: ID!, $m: JSONObject) { upsertThread(input: {id: $id, metadata: $m}) { id } }",
        {"id": thread_id, "m": deep},
    )
    body = response.json()
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body
    assert "nested" in body["errors"][0]["message"]
    assert (await api.ok("query($id: ID!) { thread(id: $id) { id } }", id=thread_id))["thread"] is None
