"""The compiled read path answers exactly as the resolvers do.

The suite runs with GATEWAY_COMPILED_READS_VERIFY=true (see conftest): every query the compiled
path answers is run on the resolvers too, and a difference answers COMPILED_READ_MISMATCH. Here,
besides the queries the other tests send, a generator makes queries over the schema (random
selections, aliases, fragments, nesting, page sizes, cursors taken from earlier answers, filters,
orders) and runs each as four callers: open development mode, a backend's key, the owner of the
threads and another user. Every answer must be the same JSON on both paths, and most of them must
really come from the compiled path (else the comparison proves nothing).
"""

import base64
import json
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from gateway.database import Database
from gateway.tables import steps_table, threads_table
from tests.conftest import (
    TEST_API_KEY,
    Api,
    clear_tables,
    client_of,
    new_uuid,
    running,
    secured_settings,
    statement_log,
    user_token,
)
from tests.test_authorization import ALICE, BOB, World, build_world

# Generated queries per caller (each seed is one reproducible query); set more for a longer hunt.
SEEDS = range(int(os.environ.get("GATEWAY_TEST_GENERATED_QUERIES", "60")))

STEP_FIELDS = [
    *("id", "threadId", "parentId", "name", "type", "input", "output", "isError", "streaming"),
    *("waitForAnswer", "showInput", "language", "command", "modes", "defaultOpen", "autoCollapse"),
    *("tags", "metadata", "generation", "createdAt", "start", "end"),
]
THREAD_FIELDS = ["id", "name", "createdAt", "updatedAt", "tags", "metadata", "userId", "userIdentifier"]
FEEDBACK_FIELDS = ["id", "forId", "threadId", "value", "comment"]
ELEMENT_FIELDS = [
    *("id", "threadId", "forId", "type", "name", "mime", "size", "display", "language", "page"),
    *("props", "objectKey", "chainlitKey", "sizeBytes", "createdAt", "url"),
]
USER_FIELDS = ["id", "identifier", "metadata", "createdAt"]


class QueryMaker:
    """Random, valid GraphQL documents over threads, steps, feedback and users."""

    def __init__(self, rng: random.Random, world: World, cursors: dict[str, list[str]]) -> None:
        self.rng = rng
        self.world = world
        self.cursors = cursors
        self.fragments: dict[str, str] = {}
        self.aliases = 0

    def _key(self, name: str) -> str:
        if self.rng.random() < 0.15 and self.aliases < 20:
            self.aliases += 1
            return f"a{self.aliases}: {name}"
        return name

    def _scalars(self, names: list[str], type_name: str) -> list[str]:
        picked = self.rng.sample(names, self.rng.randint(1, min(6, len(names))))
        chosen = [self._key(name) for name in picked]
        if self.rng.random() < 0.2:
            chosen.append("__typename")
        if self.rng.random() < 0.15:
            chosen.append(f"... on {type_name} {{ {self.rng.choice(names)} }}")
        if self.rng.random() < 0.15:
            name = f"F{len(self.fragments)}{type_name}"
            self.fragments[name] = (
                f"fragment {name} on {type_name} {{ {' '.join(self.rng.sample(names, 2))} }}"
            )
            chosen.append(f"...{name}")
        return chosen

    def _page_arguments(self, ordering: str) -> str:
        parts = []
        direction = self.rng.choice(["first", "last", None])
        if direction:
            parts.append(f"{direction}: {self.rng.randint(0, 4)}")
        # Mostly a cursor of this list; sometimes one of another list, which must be refused.
        if self.rng.random() < 0.9:
            pool = self.cursors.get(ordering, [])
        else:
            pool = [cursor for cursors in self.cursors.values() for cursor in cursors]
        if pool and self.rng.random() < 0.4:
            side = "after" if direction != "last" else "before"
            parts.append(f'{side}: "{self.rng.choice(pool)}"')
        return f"({', '.join(parts)})" if parts else ""

    def connection(self, node: str, ordering: str, extra_arguments: str = "") -> str:
        members = []
        if self.rng.random() < 0.9:
            edge = ["cursor"] if self.rng.random() < 0.6 else []
            edge.append(f"node {{ {node} }}")
            members.append(f"{self._key('edges')} {{ {' '.join(edge)} }}")
        if self.rng.random() < 0.6:
            info = self.rng.sample(
                ["hasNextPage", "hasPreviousPage", "startCursor", "endCursor"], self.rng.randint(1, 4)
            )
            members.append(f"pageInfo {{ {' '.join(info)} }}")
        if self.rng.random() < 0.25:
            members.append("totalCount")
        if not members:
            members.append("__typename")
        arguments = self._page_arguments(ordering)
        if extra_arguments:
            arguments = f"({arguments[1:-1]}{', ' if arguments else ''}{extra_arguments})"
        return f"{arguments} {{ {' '.join(members)} }}"

    def step(self, depth: int) -> str:
        parts = self._scalars(STEP_FIELDS, "Step")
        if depth < 3:
            if self.rng.random() < 0.3:
                parts.append(f"feedback {{ {' '.join(self._scalars(FEEDBACK_FIELDS, 'Feedback'))} }}")
            if self.rng.random() < 0.2:
                parts.append(f"elements {{ {' '.join(self._scalars(ELEMENT_FIELDS, 'Element'))} }}")
            if self.rng.random() < 0.2:
                parts.append(
                    f"{self._key('children')}{self.connection(self.step(depth + 1), 'steps:createdAt')}"
                )
            if self.rng.random() < 0.15:
                parts.append(f"thread {{ {self.thread(depth + 1)} }}")
            if self.rng.random() < 0.15:
                parts.append(f"parent {{ {' '.join(self._scalars(STEP_FIELDS, 'Step'))} }}")
        return " ".join(parts)

    def thread(self, depth: int) -> str:
        parts = self._scalars(THREAD_FIELDS, "Thread")
        if depth < 3:
            if self.rng.random() < 0.6:
                step_filter = ""
                if self.rng.random() < 0.2:
                    step_filter = self.rng.choice(
                        ["filter: {rootOnly: true}", 'filter: {types: ["assistant_message"]}']
                    )
                parts.append(
                    f"{self._key('steps')}{self.connection(self.step(depth + 1), depth + 1, step_filter)}"
                )
            if self.rng.random() < 0.2:
                feedback = " ".join(self._scalars(FEEDBACK_FIELDS, "Feedback"))
                if self.rng.random() < 0.3:
                    feedback += f" step {{ {' '.join(self._scalars(STEP_FIELDS, 'Step'))} }}"
                parts.append(f"feedbacks{self.connection(feedback, 'feedbacks:id')}")
            if self.rng.random() < 0.2:
                parts.append(f"user {{ {' '.join(self._scalars(USER_FIELDS, 'User'))} }}")
            if self.rng.random() < 0.2:
                elements = " ".join(self._scalars(ELEMENT_FIELDS, "Element"))
                parts.append(f"{self._key('elements')}{self.connection(elements, 'elements:createdAt')}")
        return " ".join(parts)

    def document(self) -> str:
        roots = []
        for index in range(self.rng.randint(1, 2)):
            kind = self.rng.choice(["threads", "threads", "thread", "step", "element"])
            if kind == "threads":
                extra = []
                ordering = "threads:updatedAt:desc"
                if self.rng.random() < 0.3:
                    extra.append(
                        self.rng.choice(
                            [
                                f'filter: {{userId: "{self.world.alice}"}}',
                                'filter: {search: "secret"}',
                                "filter: {feedback: 1}",
                                'filter: {tags: ["red"]}',
                                "filter: {metadata: {is_shared: true}}",
                            ]
                        )
                    )
                if self.rng.random() < 0.3:
                    field = self.rng.choice(["CREATED_AT", "UPDATED_AT"])
                    direction = self.rng.choice(["ASC", "DESC"])
                    ordering = (
                        f"threads:{'createdAt' if field == 'CREATED_AT' else 'updatedAt'}:{direction.lower()}"
                    )
                    extra.append(f"orderBy: {{field: {field}, direction: {direction}}}")
                roots.append(
                    f"r{index}: threads{self.connection(self.thread(0), ordering, ', '.join(extra))}"
                )
            elif kind == "thread":
                target = self.rng.choice([self.world.private, self.world.shared, self.world.bobs, new_uuid()])
                roots.append(f'r{index}: thread(id: "{target}") {{ {self.thread(1)} }}')
            elif kind == "element":
                target = self.rng.choice([self.world.element, new_uuid()])
                element = " ".join(self._scalars(ELEMENT_FIELDS, "Element"))
                roots.append(f'r{index}: element(id: "{target}") {{ {element} }}')
            else:
                target = self.rng.choice(
                    [self.world.step, self.world.child, self.world.stray, self.world.bob_step]
                )
                roots.append(f'r{index}: step(id: "{target}") {{ {self.step(1)} }}')
        return "query Generated { " + " ".join(roots) + " } " + " ".join(self.fragments.values())


async def _add_odd_rows(db: Database, world: World) -> None:
    """Values the serializers must render alike: Chainlit's timestamps (microseconds, no zone),
    JSON of every kind, quotes and non-ASCII text, booleans and nulls."""
    odd = {
        "id": new_uuid(),
        "threadId": world.private,
        "name": 'quote " backslash \\ é 日本',
        "type": "tool",
        "streaming": True,
        "isError": False,
        "waitForAnswer": None,
        "createdAt": "2025-01-02T03:04:05.678901",
        "start": "2025-01-02 03:04:05+02:00",
        "end": "not a timestamp",
        "metadata": {"nested": {"list": [1, 2.5, None, True, "x"]}, "favorite": False},
        "generation": {"model": "m", "tokens": 12},
        "modes": ["a", {"b": 1}],
        "tags": ["red", "blue"],
        "defaultOpen": True,
    }
    async with db.transaction() as session:
        await session.execute(sa.insert(steps_table).values(odd))
        await session.execute(
            sa.update(threads_table).where(threads_table.c.id == world.private).values(tags=["red"])
        )


@pytest.fixture
async def callers(secured_app: Starlette, app: Starlette, db: Database) -> AsyncIterator[dict[str, Api]]:
    """The four callers, over Alice's and Bob's world (see test_authorization) with odd rows."""
    await clear_tables(db)
    async with client_of(secured_app) as secured, client_of(app) as open_mode:
        yield {
            "open": open_mode,
            "backend": secured.with_headers(Authorization=f"Bearer {TEST_API_KEY}"),
            "alice": secured.with_headers(Authorization=f"Bearer {user_token(ALICE)}"),
            "bob": secured.with_headers(Authorization=f"Bearer {user_token(BOB)}"),
        }


@pytest.fixture
async def world(callers: dict[str, Api], db: Database) -> World:
    built = await build_world(callers["backend"], db)
    await _add_odd_rows(db, built)
    return built


def _hits(*applications: Starlette) -> int:
    return sum(application.state.compiled_reads.hits for application in applications)


async def test_generated_queries_answer_alike_on_both_paths(
    callers: dict[str, Api], world: World, secured_app: Starlette, app: Starlette
) -> None:
    cursors: dict[str, list[str]] = {}
    sent = 0
    before = _hits(secured_app, app)
    for seed in SEEDS:
        document = QueryMaker(random.Random(seed), world, cursors).document()
        for caller, api in callers.items():
            response = await api.post(document)
            body = response.json()
            assert response.status_code == 200, (seed, caller, document, body)
            codes = {error["extensions"]["code"] for error in body.get("errors", [])}
            assert "COMPILED_READ_MISMATCH" not in codes, (seed, caller, document, body)
            sent += 1
            _collect_cursors(body.get("data"), cursors)
    compiled = _hits(secured_app, app) - before
    # Some generated documents are refused (a cursor of another list), which the resolvers
    # answer; the rest must have been compiled.
    assert compiled >= sent * 0.8, (compiled, sent)


def _collect_cursors(value: Any, cursors: dict[str, list[str]]) -> None:
    """Cursors of the answers, by the list (and order) they belong to."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("cursor", "startCursor", "endCursor") and isinstance(item, str):
                ordering = json.loads(base64.urlsafe_b64decode(item + "=" * (-len(item) % 4)))[0]
                cursors.setdefault(ordering, []).append(item)
            else:
                _collect_cursors(item, cursors)
    elif isinstance(value, list):
        for item in value:
            _collect_cursors(item, cursors)


HISTORY = """
query History($user: ID!) {
  threads(first: 20, filter: {userId: $user}) {
    pageInfo { hasNextPage endCursor }
    edges { node { id name updatedAt steps(last: 10) {
      pageInfo { hasPreviousPage startCursor }
      edges { node { id type name input output createdAt feedback { value comment } } }
    } } }
  }
}"""


async def test_the_history_read_is_one_statement(database_url: str, db: Database) -> None:
    """Threads, their latest steps and the steps' feedback: one SQL statement, however many rows."""
    await clear_tables(db)
    settings = secured_settings(database_url, compiled_reads_verify=False)
    async with running(settings) as application, client_of(application) as client:
        backend = client.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
        world = await build_world(backend, db)
        before = _hits(application)
        with statement_log(application.state.db) as log:
            data = await backend.ok(HISTORY, user=world.alice)
        assert _hits(application) == before + 1
        assert log.count == 1, log.statements
        names = [edge["node"]["name"] for edge in data["threads"]["edges"]]
        assert sorted(names) == ["Alice's secret plans", "Alice's shared recipe"]


async def test_turned_off_every_query_runs_on_the_resolvers(database_url: str, db: Database) -> None:
    await clear_tables(db)
    settings = secured_settings(database_url, compiled_reads=False)
    async with running(settings) as application, client_of(application) as client:
        backend = client.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
        world = await build_world(backend, db)
        data = await backend.ok(HISTORY, user=world.alice)
        assert len(data["threads"]["edges"]) == 2
        assert application.state.compiled_reads.hits == 0


async def test_fields_it_does_not_cover_are_answered_by_the_resolvers(
    callers: dict[str, Api], world: World, secured_app: Starlette
) -> None:
    """A root field it does not cover (the favorites list, the viewer) sends the whole operation
    to the resolvers, which answer it in full."""
    before = _hits(secured_app)
    data = await callers["alice"].ok(
        "query($id: ID!) { viewer { identifier } thread(id: $id) { name } favoriteSteps { totalCount } }",
        id=world.private,
    )
    assert data == {
        "viewer": {"identifier": ALICE},
        "thread": {"name": "Alice's secret plans"},
        "favoriteSteps": {"totalCount": 1},
    }
    assert _hits(secured_app) == before


async def test_stored_elements_get_urls_signed_at_read_time(
    callers: dict[str, Api], world: World, secured_app: Starlette
) -> None:
    """Elements are read by the database too; the URL of a stored object is signed as it is
    answered, and serves the bytes."""
    operations = {
        "query": "mutation($i: ElementInput!, $f: Upload) { createElement(input: $i, file: $f) { id } }",
        "variables": {"i": {"threadId": world.private, "forId": world.step, "name": "notes.txt"}, "f": None},
    }
    backend = callers["backend"]
    response = await backend.http.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"file": ["variables.f"]})},
        files={"file": ("notes.txt", b"compiled bytes", "text/plain")},
        headers={**backend.headers, "Apollo-Require-Preflight": "true"},
    )
    assert not response.json().get("errors"), response.text
    before = _hits(secured_app)
    data = await callers["alice"].ok(
        """query($id: ID!) { thread(id: $id) {
             elements { edges { node { name url } } }
             steps(first: 5) { edges { node { id elements { name url } } } }
           } }""",
        id=world.private,
    )
    assert _hits(secured_app) == before + 1
    nodes = [edge["node"] for edge in data["thread"]["elements"]["edges"]]
    [stored] = [node for node in nodes if node["name"] == "notes.txt"]
    assert (await backend.http.get(stored["url"])).content == b"compiled bytes"
    [step] = [edge["node"] for edge in data["thread"]["steps"]["edges"] if edge["node"]["id"] == world.step]
    assert [element["name"] for element in step["elements"]] == ["plan.pdf", "notes.txt"]


async def test_refused_arguments_get_the_resolvers_error(callers: dict[str, Api], world: World) -> None:
    """A bad cursor or page size is reported by the resolvers, with the field's path."""
    error = await callers["backend"].error('{ threads(after: "not-a-cursor") { edges { cursor } } }')
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["path"] == ["threads"]
    error = await callers["backend"].error("{ threads(first: 101) { edges { cursor } } }")
    assert error["extensions"]["code"] == "BAD_USER_INPUT"


# --- writes: a single mutation field whose answer its result holds is run without graphql-core ---

UPSERT = "mutation Up($i: StepInput!) { upsertStep(input: $i) { id output streaming createdAt __typename } }"
APPEND = "mutation($id: ID!, $d: String!) { appendStepOutput(id: $id, delta: $d) { output } }"


async def test_a_step_write_is_answered_without_graphql_execution(
    callers: dict[str, Api], world: World, secured_app: Starlette
) -> None:
    backend = callers["backend"]
    step_id = new_uuid()
    before = _hits(secured_app)
    data = await backend.ok(UPSERT, i={"id": step_id, "threadId": world.private, "output": "Hel"})
    assert data["upsertStep"]["id"] == step_id and data["upsertStep"]["output"] == "Hel"
    assert data["upsertStep"]["streaming"] is False and data["upsertStep"]["__typename"] == "Step"
    assert data["upsertStep"]["createdAt"].endswith("Z")
    assert (await backend.ok(APPEND, id=step_id, d="lo"))["appendStepOutput"] == {"output": "Hello"}
    assert _hits(secured_app) == before + 2
    # What the database holds, read back: each write happened once.
    step = await backend.ok("query($id: ID!) { step(id: $id) { output } }", id=step_id)
    assert step == {"step": {"output": "Hello"}}


async def test_a_refused_write_is_answered_by_the_resolvers_and_writes_nothing(
    callers: dict[str, Api], world: World, secured_app: Starlette
) -> None:
    """A write the resolver refuses is rolled back, then run on the resolvers, which answer the
    refusal with its path; an append is not applied twice."""
    alice, bob = callers["alice"], callers["bob"]
    error = await bob.error(APPEND, id=world.step, d=" leaked")
    assert error["extensions"]["code"] == "NOT_FOUND" and error["path"] == ["appendStepOutput"]
    missing = await alice.error(APPEND, id=new_uuid(), d="x")
    assert missing["extensions"]["code"] == "NOT_FOUND"
    step = await alice.ok("query($id: ID!) { step(id: $id) { output } }", id=world.step)
    assert step == {"step": {"output": "secret"}}
    before = _hits(secured_app)
    assert (await alice.ok(APPEND, id=world.step, d="!"))["appendStepOutput"] == {"output": "secret!"}
    assert _hits(secured_app) == before + 1


async def test_writes_it_does_not_cover_run_on_the_resolvers(
    callers: dict[str, Api], world: World, secured_app: Starlette
) -> None:
    """A field resolved by a function of its own (a step's thread), or several mutation fields
    (they run in order, each answering for itself), go through graphql-core."""
    backend = callers["backend"]
    before = _hits(secured_app)
    data = await backend.ok(
        "mutation($i: StepInput!) { upsertStep(input: $i) { id thread { name } } }",
        i={"id": new_uuid(), "threadId": world.private},
    )
    assert data["upsertStep"]["thread"] == {"name": "Alice's secret plans"}
    both = await backend.ok(
        "mutation($a: StepInput!, $b: StepInput!) {"
        " a: upsertStep(input: $a) { id } b: upsertStep(input: $b) { id } }",
        a={"id": new_uuid(), "threadId": world.private},
        b={"id": new_uuid(), "threadId": world.private},
    )
    assert set(both) == {"a", "b"}
    assert _hits(secured_app) == before
