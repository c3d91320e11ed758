"""Hostile input, as an attacker sends it over HTTP, on SQLite and PostgreSQL: every value that
cannot be stored as strict JSON or text is a BAD_USER_INPUT naming where it is, before anything is
written; bodies that are no JSON object are a 400; identifiers and names have documented limits;
a user cannot learn whether another user's element exists."""

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette

from gateway import migrate
from gateway.config import Settings
from gateway.database import Database
from gateway.migrate import upgrade_database
from gateway.validation import MAX_IDENTIFIER_CHARS, MAX_JSON_KEY_CHARS, MAX_NAME_CHARS, MAX_TAG_CHARS
from tests.conftest import Api, client_of, new_uuid, running, user_token
from tests.test_errors import World, make_world, refused, snapshot, thread_exists

UPSERT_THREAD = "mutation($i: ThreadInput!) { upsertThread(input: $i) { id } }"
UPSERT_STEP = "mutation($i: StepInput!) { upsertStep(input: $i) { id } }"
INGEST = "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { index step { id } error { code message } } }"
LONE_SURROGATE = "\ud800"


async def raw_post(api: Api, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST bytes as they are (httpx's json= would refuse what an attacker sends)."""
    response = await api.http.post(
        "/graphql", content=body, headers={**api.headers, "content-type": "application/json"}
    )
    return response.status_code, json.loads(response.text)  # strict: the answer must be JSON


def body_with(variables_json: str, query: str = UPSERT_THREAD) -> bytes:
    return f'{{"query": {json.dumps(query)}, "variables": {variables_json}}}'.encode()


@pytest.fixture
async def world(api: Api) -> World:
    return await make_world(api)


def strict_json(text: str) -> Any:
    """What a browser's JSON.parse accepts: no NaN, no Infinity."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --- row 1: NaN, Infinity, 1e400 ------------------------------------------------------------------

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(
    ("query", "variables", "where"),
    [
        (UPSERT_THREAD, '{"i": {"id": "%(thread)s", "metadata": {"score": %(n)s}}}', "$i.metadata.score"),
        (UPSERT_STEP, '{"i": {"id": "%(step)s", "generation": {"t": [1, %(n)s]}}}', "$i.generation.t.1"),
        (UPSERT_STEP, '{"i": {"id": "%(step)s", "modes": %(n)s}}', "$i.modes"),
        (
            "query($m: JSONObject) { threads(filter: {metadata: $m}) { totalCount } }",
            '{"m": {"k": %(n)s}}',
            "$m.k",
        ),
    ],
    ids=["thread metadata", "step generation", "step modes", "metadata filter"],
)
async def test_non_finite_numbers_are_refused_naming_the_field(
    api: Api, db: Database, world: World, number: str, query: str, variables: str, where: str
) -> None:
    before = await snapshot(db)
    status, body = await raw_post(
        api, body_with(variables % {"thread": world.thread_id, "step": world.step_id, "n": number}, query)
    )
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", body
    assert f"`{where}`" in error["message"] and "finite" in error["message"]
    assert status < 500
    assert await snapshot(db) == before


async def test_non_finite_literal_is_refused(api: Api, db: Database, world: World) -> None:
    await refused(
        api,
        db,
        "BAD_USER_INPUT",
        "mutation($t: ID!) { upsertThread(input: {id: $t, metadata: {k: 1e400}}) { id } }",
        t=world.thread_id,
    )


async def test_finite_numbers_still_round_trip(api: Api, world: World) -> None:
    metadata = {"big": 1.7e308, "small": -5e-324, "int": 10**30, "zero": -0.0}
    await api.ok(UPSERT_THREAD, i={"id": world.thread_id, "metadata": metadata})
    response = await api.post("query($t: ID!) { thread(id: $t) { metadata } }", {"t": world.thread_id})
    stored = strict_json(response.text)["data"]["thread"]["metadata"]
    # PostgreSQL's jsonb keeps numbers as decimals: 1.7e308 may come back as its integer.
    assert float(stored["big"]) == 1.7e308 and stored["int"] == 10**30 and stored["small"] == -5e-324


# --- row 2: lone surrogates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (UPSERT_THREAD, {"i": {"id": "THREAD", "name": f"a{LONE_SURROGATE}"}}),
        (UPSERT_THREAD, {"i": {"id": "THREAD", "metadata": {f"k{LONE_SURROGATE}": 1}}}),
        (UPSERT_THREAD, {"i": {"id": "THREAD", "tags": [LONE_SURROGATE]}}),
        ("mutation($s: ID!, $d: String!) { appendStepOutput(id: $s, delta: $d) { id } }", {"d": "\udc00"}),
        ("query($q: String) { threads(filter: {search: $q}) { totalCount } }", {"q": LONE_SURROGATE}),
        ("query($q: String) { user(identifier: $q) { id } }", {"q": LONE_SURROGATE}),
    ],
    ids=["name", "metadata key", "tag", "append delta", "search", "user identifier"],
)
async def test_lone_surrogate_is_bad_user_input(
    api: Api, db: Database, world: World, query: str, variables: dict[str, Any]
) -> None:
    text = json.dumps(variables).replace("THREAD", world.thread_id)  # json escapes: \ud800
    if "$s" in query:
        text = text[:-1] + f', "s": "{world.step_id}"}}'
    before = await snapshot(db)
    status, body = await raw_post(api, body_with(text, query))
    [error] = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", body
    assert "surrogate" in error["message"]
    assert status < 500
    assert await snapshot(db) == before


async def test_lone_surrogate_fails_only_its_item_of_a_batch(api: Api, world: World) -> None:
    good, bad = "018f0000-0000-7000-8000-00000000b001", "018f0000-0000-7000-8000-00000000b002"
    steps = [
        {"id": good, "threadId": world.thread_id, "name": "fine"},
        {"id": bad, "threadId": world.thread_id, "name": "x", "output": f"half {LONE_SURROGATE}"},
    ]
    status, body = await raw_post(api, body_with(json.dumps({"s": steps}), INGEST))
    assert status == 200 and "errors" not in body, body
    first, second = body["data"]["ingestSteps"]
    assert first["step"] == {"id": good} and first["error"] is None
    assert second["step"] is None and second["error"]["code"] == "BAD_USER_INPUT"
    assert "`input.output`" in second["error"]["message"]
    assert (await api.ok("query($s: ID!) { step(id: $s) { id } }", s=bad))["step"] is None


async def test_cesu8_surrogate_bytes_are_a_400(api: Api) -> None:
    # The three bytes CESU-8 (and Java's "modified UTF-8") use for U+D800: not UTF-8.
    body = b'{"query": "{ threads(filter: {search: \\"' + b"\xed\xa0\x80" + b'\\"}) { totalCount } }"}'
    status, answer = await raw_post(api, body)
    assert status == 400
    assert answer["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


# --- row 3: bodies that are no JSON object --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{}",
        b'{"query": "{ viewer { id } }", "variables": {"a": "\xc3"}}',
        b'"{ viewer { id } }"',
        b"42",
        b"null",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"query": "{ viewer { id } }", "variables": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
        b'{"query": "{ viewer { id } }", "variables": {"a": ' + b"9" * 5000 + b"}}",
        b'{"query": "{ viewer { id } }", "variables": NaN}',
    ],
    ids=[
        "utf-16",
        "bad utf-8",
        "a string",
        "a number",
        "null",
        "nested",
        "nested variable",
        "huge integer",
        "NaN",
    ],
)
async def test_a_body_that_is_no_json_object_is_a_400(api: Api, db: Database, body: bytes) -> None:
    before = await snapshot(db)
    status, answer = await raw_post(api, body)
    assert status == 400, answer
    [error] = answer["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert await snapshot(db) == before


# --- row 4: cursors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000 + b"]" * 100_000, b'["threads:updatedAt:desc", ["\\ud800", "x"]]'],
    ids=["deeply nested", "lone surrogate"],
)
async def test_cursor_decoding_to_hostile_json_is_bad_user_input(api: Api, raw: bytes) -> None:
    forged = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    error = await api.error("query($a: String) { threads(after: $a) { totalCount } }", a=forged)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert "`after`" in error["message"]


# --- row 5: length limits -------------------------------------------------------------------------

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("query", "variables", "field", "limit"),
    [
        (
            "mutation($v: String!) { upsertUser(input: {identifier: $v}) { id } }",
            {"v": "u" * MIB},
            "input.identifier",
            MAX_IDENTIFIER_CHARS,
        ),
        (
            UPSERT_THREAD,
            {"i": {"id": "THREAD", "name": "n" * (MAX_NAME_CHARS + 1)}},
            "input.name",
            MAX_NAME_CHARS,
        ),
        (UPSERT_THREAD, {"i": {"id": "THREAD", "tags": ["t" * MIB]}}, "input.tags.0", MAX_TAG_CHARS),
        (
            UPSERT_THREAD,
            {"i": {"id": "THREAD", "userIdentifier": "u" * MIB}},
            "input.userIdentifier",
            MAX_IDENTIFIER_CHARS,
        ),
        (
            UPSERT_THREAD,
            {"i": {"id": "THREAD", "metadata": {"k" * (MAX_JSON_KEY_CHARS + 1): 1}}},
            "input.metadata",
            MAX_JSON_KEY_CHARS,
        ),
        (UPSERT_STEP, {"i": {"id": "STEP", "type": "t" * MIB}}, "input.type", MAX_NAME_CHARS),
        (
            UPSERT_STEP,
            {"i": {"id": "STEP", "tags": ["t" * (MAX_TAG_CHARS + 1)]}},
            "input.tags.0",
            MAX_TAG_CHARS,
        ),
    ],
    ids=[
        "user identifier",
        "thread name",
        "tag",
        "thread userIdentifier",
        "metadata key",
        "step type",
        "tag 2",
    ],
)
async def test_values_over_the_length_limits_are_refused_with_the_limit(
    api: Api, db: Database, world: World, query: str, variables: dict[str, Any], field: str, limit: int
) -> None:
    text = json.dumps(variables).replace("THREAD", world.thread_id).replace("STEP", world.step_id)
    error = await refused(api, db, "BAD_USER_INPUT", query, **json.loads(text))
    assert f"`{field}`" in error["message"] and str(limit) in error["message"], error["message"][:300]


async def test_values_at_the_limits_are_accepted(api: Api, world: World) -> None:
    await api.ok(
        UPSERT_THREAD,
        i={
            "id": world.thread_id,
            "name": "é" * MAX_NAME_CHARS,
            "tags": ["😀" * MAX_TAG_CHARS],
            "metadata": {"k" * MAX_JSON_KEY_CHARS: 1},
        },
    )
    identifier = "😀" * MAX_IDENTIFIER_CHARS  # 2 KiB of UTF-8: within PostgreSQL's index row limit
    await api.ok("mutation($v: String!) { upsertUser(input: {identifier: $v}) { id } }", v=identifier)
    assert (await api.ok("query($v: String) { user(identifier: $v) { identifier } }", v=identifier))["user"]


# --- row 6: a validly signed token naming no possible user ----------------------------------------


@pytest.mark.parametrize(
    "sub",
    ["eve\x00@example.com", "u" * (MAX_IDENTIFIER_CHARS + 1), "x" * MIB, "\ud800"],
    ids=["nul", "long", "mib", "surrogate"],
)
async def test_token_whose_subject_is_no_identifier_is_unauthenticated(
    secured_api: Api, db: Database, sub: str
) -> None:
    before = await snapshot(db)
    token = user_token(sub)
    response = await secured_api.post("{ viewer { id } }", None, Authorization=f"Bearer {token}")
    assert response.status_code == 401, response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert await snapshot(db) == before  # no user was created


# --- row 8: requestElementUpload is no existence oracle -------------------------------------------


async def test_request_upload_with_another_users_element_id_is_not_found(
    secured_app: Starlette, secured_api: Api
) -> None:
    ada = secured_api.with_headers(Authorization=f"Bearer {user_token('ada@example.com')}")
    eve = secured_api.with_headers(Authorization=f"Bearer {user_token('eve@example.com')}")
    thread, element = "018f0000-0000-7000-8000-00000000c001", "018f0000-0000-7000-8000-00000000c002"
    eve_thread = "018f0000-0000-7000-8000-00000000c003"
    await ada.ok(
        "mutation($t: ID!, $e: ID!) { createElement(input: {id: $e, threadId: $t, name: 'n',"
        ' url: "https://example.com/a.png"}) { id } }'.replace("'n'", '"n"'),
        t=thread,
        e=element,
    )
    request = (
        "mutation($t: ID!, $e: ID!) { requestElementUpload(input: {id: $e, threadId: $t,"
        ' name: "x.bin"}) { elementId } }'
    )
    error = await eve.error(request, t=eve_thread, e=element)
    assert error["extensions"]["code"] == "NOT_FOUND", error
    assert "exists" not in error["message"]
    # Its owner is told it exists: that is no secret to them.
    assert (await ada.error(request, t=thread, e=element))["extensions"]["code"] == "CONFLICT"


# --- row 12: URLs ---------------------------------------------------------------------------------

CREATE_BY_URL = (
    "mutation($t: ID!, $u: String!) { createElement(input: {threadId: $t, name: 'n', url: $u})"
    " { url } }".replace("'n'", '"n"')
)


async def test_url_is_stripped(api: Api, world: World) -> None:
    data = await api.ok(CREATE_BY_URL, t=world.thread_id, u="  https://example.com/a.png\n")
    assert data["createElement"]["url"] == "https://example.com/a.png"


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "/relative", "https://", "http:///nohost", "https://a b.com/", "ftp://x/y", ""],
)
async def test_url_that_is_no_absolute_http_url_is_refused(
    api: Api, db: Database, world: World, url: str
) -> None:
    error = await refused(api, db, "BAD_USER_INPUT", CREATE_BY_URL, t=world.thread_id, u=url)
    assert "`input.url`" in error["message"]
    assert await thread_exists(api, world.thread_id)


# --- row 7: a document of several mutations, one failing in the middle ----------------------------

THREE_MUTATIONS = (
    "mutation($a: ID!, $b: ID!, $c: ID!) {"
    ' first: upsertThread(input: {id: $a, name: "one"}) { id name }'
    " middle: deleteThread(id: $b) { id }"
    ' last: upsertThread(input: {id: $c, name: "three"}) { id } }'
)


async def test_mutations_answer_each_for_itself_and_stop_at_a_failure(
    api: Api, db: Database, world: World
) -> None:
    first, missing, last = (new_uuid() for _ in range(3))
    response = await api.post(THREE_MUTATIONS, {"a": first, "b": missing, "c": last})
    assert response.status_code == 200
    body = response.json()
    # The first was committed and says so; the failed one is null with its error; the last did
    # not run, and says so too.
    assert body["data"] == {"first": {"id": first, "name": "one"}, "middle": None, "last": None}
    middle, after = body["errors"]
    assert middle["path"] == ["middle"] and middle["extensions"]["code"] == "NOT_FOUND"
    assert after["path"] == ["last"] and after["extensions"]["code"] == "NOT_RUN"
    assert await thread_exists(api, first)
    assert not await thread_exists(api, last)


async def test_when_the_first_mutation_fails_nothing_ran_and_data_is_null(api: Api, db: Database) -> None:
    first, last = (new_uuid() for _ in range(2))
    before = await snapshot(db)
    body = (
        await api.post(
            "mutation($a: ID!, $c: ID!) { deleteThread(id: $a) { id }"
            ' last: upsertThread(input: {id: $c, name: "x"}) { id } }',
            {"a": first, "c": last},
        )
    ).json()
    assert body["data"] is None
    assert [error["extensions"]["code"] for error in body["errors"]] == ["NOT_FOUND", "NOT_RUN"]
    assert await snapshot(db) == before


# --- row 1, rows written before the fix -----------------------------------------------------------


async def test_migration_repairs_non_finite_numbers_sqlite_stored(tmp_path: Path) -> None:
    """SQLite rows older gateways wrote with NaN/Infinity are served as strict JSON after
    `gateway migrate` (the numbers become null); PostgreSQL's jsonb never took them."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(lambda sync: command.upgrade(migrate._config(sync), "0006"))
        thread, step = new_uuid(), new_uuid()
        await connection.execute(
            sa.text(
                'INSERT INTO threads (id, metadata, "updatedAt")'
                " VALUES (:id, :m, '2026-01-01T00:00:00.000Z')"
            ),
            {"id": thread, "m": '{"score":NaN,"list":[Infinity,1,{"x":-Infinity}],"ok":"NaN"}'},
        )
        await connection.execute(
            sa.text(
                'INSERT INTO steps (id, "threadId", name, type, streaming, generation, "createdAt")'
                " VALUES (:id, :t, 's', 'run', 0, :g, '2026-01-01T00:00:00.000Z')"
            ),
            {"id": step, "t": thread, "g": '{"temperature":NaN}'},
        )
        await connection.commit()
    await engine.dispose()
    await upgrade_database(url)
    async with running(Settings(database_url=url, auto_migrate=False)) as app, client_of(app) as api:
        response = await api.post(
            "query($t: ID!) { thread(id: $t) { metadata steps { edges { node { generation } } } } }",
            {"t": thread},
        )
    thread_data = strict_json(response.text)["data"]["thread"]
    assert thread_data["metadata"] == {"score": None, "list": [None, 1, {"x": None}], "ok": "NaN"}
    assert thread_data["steps"]["edges"][0]["node"]["generation"] == {"temperature": None}
