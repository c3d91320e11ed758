"""Who sees and changes what: every query and mutation, run by four callers against one world.

The callers: anonymous (no credentials), Alice and Bob (user tokens), and a backend (API key).
The world: Alice's private thread (a step with a child, feedback, an element, a favorite), Alice's
shared thread (`metadata.is_shared`), Bob's thread, and a step in Alice's thread whose parent is
Bob's step. Each case states what each caller gets. Besides:
- every refused request writes nothing (all tables compared before and after);
- where Bob gets NOT_FOUND for Alice's row, he gets the same answer, word for word, for an id that
  does not exist at all, so ids of others cannot be probed;
- anonymous callers get 401 UNAUTHENTICATED for everything.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from gateway.database import Database
from gateway.tables import elements_table
from tests.conftest import TEST_API_KEY, Api, new_uuid, user_token
from tests.test_errors import snapshot

ALICE = "alice@example.com"
BOB = "bob@example.com"
CALLERS = ("anonymous", "alice", "bob", "backend")


@dataclass
class World:
    alice: str = ""
    bob: str = ""
    private: str = field(default_factory=new_uuid)  # Alice's thread
    shared: str = field(default_factory=new_uuid)  # Alice's thread, shared read-only
    bobs: str = field(default_factory=new_uuid)  # Bob's thread
    step: str = field(default_factory=new_uuid)  # in Alice's private thread, a favorite
    child: str = field(default_factory=new_uuid)  # child of `step`
    shared_step: str = field(default_factory=new_uuid)
    bob_step: str = field(default_factory=new_uuid)
    stray: str = field(default_factory=new_uuid)  # in Alice's thread, parent is Bob's step
    feedback: str = ""  # on `step`
    shared_feedback: str = ""  # on `shared_step`
    element: str = field(default_factory=new_uuid)  # on `step`
    fresh: str = field(default_factory=new_uuid)  # an id nobody used yet


UPSERT_THREAD = "mutation($i: ThreadInput!) { upsertThread(input: $i) { id } }"
UPSERT_STEP = "mutation($i: StepInput!) { upsertStep(input: $i) { id } }"
UPSERT_FEEDBACK = "mutation($i: FeedbackInput!) { upsertFeedback(input: $i) { id } }"


async def build_world(backend: Api, db: Database) -> World:
    world = World()
    for identifier in (ALICE, BOB):
        user = await backend.ok(f'mutation {{ upsertUser(input: {{identifier: "{identifier}"}}) {{ id }} }}')
        setattr(world, "alice" if identifier == ALICE else "bob", user["upsertUser"]["id"])
    threads = [
        {"id": world.private, "name": "Alice's secret plans", "userId": world.alice},
        {"id": world.shared, "name": "Alice's shared recipe", "userId": world.alice},
        {"id": world.bobs, "name": "Bob's chat", "userId": world.bob},
    ]
    for thread in threads:
        await backend.ok(UPSERT_THREAD, i=thread)
    await backend.ok(UPSERT_THREAD, i={"id": world.shared, "metadata": {"is_shared": True}})
    steps: list[dict[str, Any]] = [
        {"id": world.step, "threadId": world.private, "output": "secret", "metadata": {"favorite": True}},
        {"id": world.child, "threadId": world.private, "parentId": world.step, "output": "child"},
        {"id": world.shared_step, "threadId": world.shared, "output": "recipe"},
        {"id": world.bob_step, "threadId": world.bobs, "output": "bob's words"},
        {"id": world.stray, "threadId": world.private, "parentId": world.bob_step, "output": "stray"},
    ]
    for step in steps:
        await backend.ok(UPSERT_STEP, i={"type": "assistant_message", "name": "Assistant", **step})
    world.feedback = (await backend.ok(UPSERT_FEEDBACK, i={"forId": world.step, "value": 0}))[
        "upsertFeedback"
    ]["id"]
    world.shared_feedback = (await backend.ok(UPSERT_FEEDBACK, i={"forId": world.shared_step, "value": 1}))[
        "upsertFeedback"
    ]["id"]
    async with db.transaction() as session:  # no element mutation exists yet: the row is written directly
        await session.execute(
            sa.insert(elements_table).values(
                id=world.element,
                threadId=world.private,
                forId=world.step,
                name="plan.pdf",
                createdAt="2026-01-01T00:00:00.000Z",
            )
        )
    return world


Expected = str | Callable[[World], Any]  # an error code, or the data the caller must get


@dataclass(frozen=True)
class Case:
    name: str
    document: str
    variables: Callable[[World], dict[str, Any]]
    read: Callable[[dict[str, Any]], Any]
    alice: Expected
    bob: Expected
    backend: Expected
    # The variable holding the target id ("i.threadId": a field of variable i): Bob's refusal must
    # read the same for an id never used.
    probe: str | None = None


def node_ids(connection: dict[str, Any]) -> set[str]:
    return {edge["node"]["id"] for edge in connection["edges"]}


def field_of(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda data: data[name]


def nothing(_world: World) -> None:
    return None


THREADS = "query($f: ThreadFilter) { threads(filter: $f) { edges { node { id } } } }"
STEP_INPUT = {"type": "assistant_message", "name": "Assistant"}

CASES = [
    # --- queries ---
    Case(
        "viewer",
        "{ viewer { identifier } }",
        lambda w: {},
        field_of("viewer"),
        alice=lambda w: {"identifier": ALICE},
        bob=lambda w: {"identifier": BOB},
        backend=nothing,
    ),
    Case(
        "user by id",
        "query($id: ID!) { user(id: $id) { identifier } }",
        lambda w: {"id": w.alice},
        field_of("user"),
        alice=lambda w: {"identifier": ALICE},
        bob=nothing,
        backend=lambda w: {"identifier": ALICE},
    ),
    Case(
        "user by identifier",
        "query($x: String!) { user(identifier: $x) { id } }",
        lambda w: {"x": ALICE},
        field_of("user"),
        alice=lambda w: {"id": w.alice},
        bob=nothing,
        backend=lambda w: {"id": w.alice},
    ),
    Case(
        "users",
        "{ users { edges { node { id } } } }",
        lambda w: {},
        lambda data: node_ids(data["users"]),
        alice=lambda w: {w.alice},
        bob=lambda w: {w.bob},
        backend=lambda w: {w.alice, w.bob},
    ),
    Case(
        "thread",
        "query($id: ID!) { thread(id: $id) { name } }",
        lambda w: {"id": w.private},
        field_of("thread"),
        alice=lambda w: {"name": "Alice's secret plans"},
        bob=nothing,
        backend=lambda w: {"name": "Alice's secret plans"},
    ),
    Case(
        "shared thread",
        "query($id: ID!) { thread(id: $id) { name } }",
        lambda w: {"id": w.shared},
        field_of("thread"),
        alice=lambda w: {"name": "Alice's shared recipe"},
        bob=lambda w: {"name": "Alice's shared recipe"},
        backend=lambda w: {"name": "Alice's shared recipe"},
    ),
    Case(
        "threads",
        THREADS,
        lambda w: {},
        lambda data: node_ids(data["threads"]),
        alice=lambda w: {w.private, w.shared},
        bob=lambda w: {w.bobs},
        backend=lambda w: {w.private, w.shared, w.bobs},
    ),
    Case(
        "threads of another user by id",
        THREADS,
        lambda w: {"f": {"userId": w.alice}},
        lambda data: node_ids(data["threads"]),
        alice=lambda w: {w.private, w.shared},
        bob=lambda w: set(),
        backend=lambda w: {w.private, w.shared},
    ),
    Case(
        "threads of another user by identifier",
        THREADS,
        lambda w: {"f": {"userIdentifier": ALICE}},
        lambda data: node_ids(data["threads"]),
        alice=lambda w: {w.private, w.shared},
        bob=lambda w: set(),
        backend=lambda w: {w.private, w.shared},
    ),
    Case(
        "threads searched",
        THREADS,
        lambda w: {"f": {"search": "SECRET"}},
        lambda data: node_ids(data["threads"]),
        alice=lambda w: {w.private},
        bob=lambda w: set(),
        backend=lambda w: {w.private},
    ),
    Case(
        "threads counted",
        "{ threads { totalCount } }",
        lambda w: {},
        lambda data: data["threads"]["totalCount"],
        alice=lambda w: 2,
        bob=lambda w: 1,
        backend=lambda w: 3,
    ),
    Case(
        "step",
        "query($id: ID!) { step(id: $id) { output } }",
        lambda w: {"id": w.step},
        field_of("step"),
        alice=lambda w: {"output": "secret"},
        bob=nothing,
        backend=lambda w: {"output": "secret"},
    ),
    Case(
        "step of a shared thread",
        "query($id: ID!) { step(id: $id) { output } }",
        lambda w: {"id": w.shared_step},
        field_of("step"),
        alice=lambda w: {"output": "recipe"},
        bob=lambda w: {"output": "recipe"},
        backend=lambda w: {"output": "recipe"},
    ),
    Case(
        "element",
        "query($id: ID!) { element(id: $id) { name } }",
        lambda w: {"id": w.element},
        field_of("element"),
        alice=lambda w: {"name": "plan.pdf"},
        bob=nothing,
        backend=lambda w: {"name": "plan.pdf"},
    ),
    Case(
        "favorite steps",
        "{ favoriteSteps { edges { node { id } } } }",
        lambda w: {},
        lambda data: node_ids(data["favoriteSteps"]),
        alice=lambda w: {w.step},
        bob=lambda w: set(),
        backend=lambda w: {w.step},
    ),
    Case(
        "favorite steps of another user",
        "query($u: ID) { favoriteSteps(userId: $u) { totalCount edges { node { id } } } }",
        lambda w: {"u": w.alice},
        lambda data: (data["favoriteSteps"]["totalCount"], node_ids(data["favoriteSteps"])),
        alice=lambda w: (1, {w.step}),
        bob=lambda w: (0, set()),
        backend=lambda w: (1, {w.step}),
    ),
    Case(
        "nested fields of a shared thread",
        "query($id: ID!) { thread(id: $id) { userId userIdentifier user { identifier } "
        "steps { edges { node { id } } } feedbacks { edges { node { id } } } } }",
        lambda w: {"id": w.shared},
        lambda data: (
            data["thread"]
            and (
                data["thread"]["userId"],
                data["thread"]["userIdentifier"],
                data["thread"]["user"],
                node_ids(data["thread"]["steps"]),
                node_ids(data["thread"]["feedbacks"]),
            )
        ),
        alice=lambda w: (w.alice, ALICE, {"identifier": ALICE}, {w.shared_step}, {w.shared_feedback}),
        # Bob reads the conversation, not who had it.
        bob=lambda w: (None, None, None, {w.shared_step}, {w.shared_feedback}),
        backend=lambda w: (w.alice, ALICE, {"identifier": ALICE}, {w.shared_step}, {w.shared_feedback}),
    ),
    Case(
        "nested fields of a step",
        "query($id: ID!) { step(id: $id) { thread { id } feedback { id } elements { id } "
        "children { totalCount edges { node { id } } } } }",
        lambda w: {"id": w.step},
        field_of("step"),
        alice=lambda w: {
            "thread": {"id": w.private},
            "feedback": {"id": w.feedback},
            "elements": [{"id": w.element}],
            "children": {"totalCount": 1, "edges": [{"node": {"id": w.child}}]},
        },
        bob=nothing,
        backend=lambda w: {
            "thread": {"id": w.private},
            "feedback": {"id": w.feedback},
            "elements": [{"id": w.element}],
            "children": {"totalCount": 1, "edges": [{"node": {"id": w.child}}]},
        },
    ),
    Case(
        "children in another user's thread",
        "query($id: ID!) { step(id: $id) { children { totalCount edges { node { id } } } } }",
        lambda w: {"id": w.bob_step},
        lambda data: (
            data["step"] and (data["step"]["children"]["totalCount"], node_ids(data["step"]["children"]))
        ),
        alice=nothing,
        bob=lambda w: (0, set()),
        backend=lambda w: (1, {w.stray}),
    ),
    Case(
        "parent in another user's thread",
        "query($id: ID!) { step(id: $id) { parent { id } } }",
        lambda w: {"id": w.stray},
        field_of("step"),
        alice=lambda w: {"parent": None},
        bob=nothing,
        backend=lambda w: {"parent": {"id": w.bob_step}},
    ),
    # --- mutations ---
    Case(
        "upsertUser",
        'mutation($x: String!) { upsertUser(input: {identifier: $x, metadata: {theme: "dark"}}) '
        "{ metadata } }",
        lambda w: {"x": ALICE},
        field_of("upsertUser"),
        alice=lambda w: {"metadata": {"theme": "dark"}},
        bob="FORBIDDEN",
        backend=lambda w: {"metadata": {"theme": "dark"}},
    ),
    Case(
        "deleteUser",
        "mutation($id: ID!) { deleteUser(id: $id) { id } }",
        lambda w: {"id": w.alice},
        field_of("deleteUser"),
        alice=lambda w: {"id": w.alice},
        bob="NOT_FOUND",
        backend=lambda w: {"id": w.alice},
        probe="id",
    ),
    Case(
        "upsertThread",
        'mutation($id: ID!) { upsertThread(input: {id: $id, name: "Renamed"}) { name } }',
        lambda w: {"id": w.private},
        field_of("upsertThread"),
        alice=lambda w: {"name": "Renamed"},
        bob="NOT_FOUND",
        backend=lambda w: {"name": "Renamed"},
    ),
    Case(
        "upsertThread of a shared thread",
        'mutation($id: ID!) { upsertThread(input: {id: $id, name: "Renamed"}) { name } }',
        lambda w: {"id": w.shared},
        field_of("upsertThread"),
        alice=lambda w: {"name": "Renamed"},
        bob="FORBIDDEN",
        backend=lambda w: {"name": "Renamed"},
    ),
    Case(
        "upsertThread owned by another user",
        "mutation($id: ID!, $u: ID!) { upsertThread(input: {id: $id, userId: $u}) { userId } }",
        lambda w: {"id": w.fresh, "u": w.alice},
        field_of("upsertThread"),
        alice=lambda w: {"userId": w.alice},
        bob="FORBIDDEN",
        backend=lambda w: {"userId": w.alice},
    ),
    Case(
        "upsertThread new",
        'mutation($id: ID!) { upsertThread(input: {id: $id, name: "Mine"}) { userIdentifier } }',
        lambda w: {"id": w.fresh},
        field_of("upsertThread"),
        alice=lambda w: {"userIdentifier": ALICE},
        bob=lambda w: {"userIdentifier": BOB},
        backend=lambda w: {"userIdentifier": None},
    ),
    Case(
        "deleteThread",
        "mutation($id: ID!) { deleteThread(id: $id) { id } }",
        lambda w: {"id": w.private},
        field_of("deleteThread"),
        alice=lambda w: {"id": w.private},
        bob="NOT_FOUND",
        backend=lambda w: {"id": w.private},
        probe="id",
    ),
    Case(
        "deleteThread of a shared thread",
        "mutation($id: ID!) { deleteThread(id: $id) { id } }",
        lambda w: {"id": w.shared},
        field_of("deleteThread"),
        alice=lambda w: {"id": w.shared},
        bob="FORBIDDEN",
        backend=lambda w: {"id": w.shared},
    ),
    Case(
        "upsertStep",
        'mutation($id: ID!) { upsertStep(input: {id: $id, output: "changed"}) { output } }',
        lambda w: {"id": w.step},
        field_of("upsertStep"),
        alice=lambda w: {"output": "changed"},
        bob="NOT_FOUND",
        backend=lambda w: {"output": "changed"},
        probe="id",
    ),
    Case(
        "upsertStep into another user's thread",
        UPSERT_STEP,
        lambda w: {"i": {"id": w.fresh, "threadId": w.private, **STEP_INPUT}},
        field_of("upsertStep"),
        alice=lambda w: {"id": w.fresh},
        bob="NOT_FOUND",
        backend=lambda w: {"id": w.fresh},
    ),
    Case(
        "upsertStep into a new thread",
        "mutation($i: StepInput!) { upsertStep(input: $i) { thread { userIdentifier } } }",
        lambda w: {"i": {"id": w.fresh, "threadId": new_uuid(), **STEP_INPUT}},
        field_of("upsertStep"),
        alice=lambda w: {"thread": {"userIdentifier": ALICE}},
        bob=lambda w: {"thread": {"userIdentifier": BOB}},
        backend=lambda w: {"thread": {"userIdentifier": None}},
    ),
    Case(
        "upsertStep moved to another thread",
        UPSERT_STEP,
        lambda w: {"i": {"id": w.bob_step, "threadId": w.private}},
        field_of("upsertStep"),
        alice="NOT_FOUND",
        bob="CONFLICT",  # about his own step only: the same whichever thread he names
        backend="CONFLICT",
        probe="i.threadId",
    ),
    Case(
        "upsertStep under another user's step",
        UPSERT_STEP,
        lambda w: {"i": {"id": w.fresh, "threadId": w.bobs, "parentId": w.shared_step, **STEP_INPUT}},
        field_of("upsertStep"),
        alice="NOT_FOUND",
        bob="BAD_USER_INPUT",  # not even under a shared thread's step: nothing lands in Alice's view
        backend=lambda w: {"id": w.fresh},
        probe="i.parentId",
    ),
    Case(
        "appendStepOutput",
        'mutation($id: ID!) { appendStepOutput(id: $id, delta: "!") { output } }',
        lambda w: {"id": w.step},
        field_of("appendStepOutput"),
        alice=lambda w: {"output": "secret!"},
        bob="NOT_FOUND",
        backend=lambda w: {"output": "secret!"},
        probe="id",
    ),
    Case(
        "appendStepOutput in a shared thread",
        'mutation($id: ID!) { appendStepOutput(id: $id, delta: "!") { output } }',
        lambda w: {"id": w.shared_step},
        field_of("appendStepOutput"),
        alice=lambda w: {"output": "recipe!"},
        bob="FORBIDDEN",
        backend=lambda w: {"output": "recipe!"},
    ),
    Case(
        "ingestSteps",
        "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { step { output } error { code } } }",
        lambda w: {"s": [{"id": w.step, "output": "batched"}]},
        field_of("ingestSteps"),
        alice=lambda w: [{"step": {"output": "batched"}, "error": None}],
        bob=lambda w: [{"step": None, "error": {"code": "NOT_FOUND"}}],
        backend=lambda w: [{"step": {"output": "batched"}, "error": None}],
    ),
    Case(
        "deleteStep",
        "mutation($id: ID!) { deleteStep(id: $id) { id } }",
        lambda w: {"id": w.step},
        field_of("deleteStep"),
        alice=lambda w: {"id": w.step},
        bob="NOT_FOUND",
        backend=lambda w: {"id": w.step},
        probe="id",
    ),
    Case(
        "upsertFeedback",
        "mutation($id: ID!) { upsertFeedback(input: {forId: $id, value: 1}) { value } }",
        lambda w: {"id": w.step},
        field_of("upsertFeedback"),
        alice=lambda w: {"value": 1},
        bob="NOT_FOUND",
        backend=lambda w: {"value": 1},
        probe="id",
    ),
    Case(
        "upsertFeedback in a shared thread",
        "mutation($id: ID!) { upsertFeedback(input: {forId: $id, value: 0}) { value } }",
        lambda w: {"id": w.shared_step},
        field_of("upsertFeedback"),
        alice=lambda w: {"value": 0},
        bob="FORBIDDEN",
        backend=lambda w: {"value": 0},
    ),
    Case(
        "upsertFeedback reusing another user's feedback id",
        "mutation($s: ID!, $f: ID!) { upsertFeedback(input: {forId: $s, value: 1, id: $f}) { id } }",
        lambda w: {"s": w.bob_step, "f": w.feedback},
        field_of("upsertFeedback"),
        alice="NOT_FOUND",
        bob="NOT_FOUND",
        backend="CONFLICT",
    ),
    Case(
        "deleteFeedback",
        "mutation($id: ID!) { deleteFeedback(id: $id) { id } }",
        lambda w: {"id": w.feedback},
        field_of("deleteFeedback"),
        alice=lambda w: {"id": w.feedback},
        bob="NOT_FOUND",
        backend=lambda w: {"id": w.feedback},
        probe="id",
    ),
]


def caller_headers(caller: str) -> dict[str, str]:
    if caller == "backend":
        return {"Authorization": f"Bearer {TEST_API_KEY}"}
    if caller in ("alice", "bob"):
        return {"Authorization": f"Bearer {user_token(ALICE if caller == 'alice' else BOB)}"}
    return {}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_each_caller_gets_exactly_its_share(
    secured_api: Api, db: Database, case: Case, caller: str
) -> None:
    world = await build_world(secured_api.with_headers(**caller_headers("backend")), db)
    client = secured_api.with_headers(**caller_headers(caller))
    variables = case.variables(world)
    before = await snapshot(db)
    response = await client.post(case.document, variables)
    body = response.json()
    expected: Expected = "UNAUTHENTICATED" if caller == "anonymous" else getattr(case, caller)
    if isinstance(expected, str):
        assert body.get("data") is None or all(value is None for value in body["data"].values()), body
        assert [error["extensions"]["code"] for error in body.get("errors", [])] == [expected], body
        assert await snapshot(db) == before, "a refused request wrote something"
        if caller == "anonymous":
            assert response.status_code == 401
        if caller == "bob" and case.probe is not None:
            await assert_same_as_missing(client, case, variables, body["errors"][0])
        return
    assert response.status_code == 200 and not body.get("errors"), body
    assert case.read(body["data"]) == expected(world)


async def assert_same_as_missing(
    client: Api, case: Case, variables: dict[str, Any], error: dict[str, Any]
) -> None:
    """Another user's row answers exactly as a row that never existed."""
    name, _, field_name = (case.probe or "").partition(".")
    missing = new_uuid()
    if field_name:
        target = variables[name][field_name]
        probing = {**variables, name: {**variables[name], field_name: missing}}
    else:
        target = variables[name]
        probing = {**variables, name: missing}
    body = (await client.post(case.document, probing)).json()
    [missing_error] = body["errors"]
    assert missing_error["message"].replace(missing, target) == error["message"]
    assert missing_error["extensions"] == error["extensions"]
    assert missing_error["path"] == error["path"]
