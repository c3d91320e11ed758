"""Query limits and request guards, as a client meets them over HTTP on SQLite and PostgreSQL.

A query over a cap (tokens, depth, aliases, cost) is refused before anything runs, naming its figure
(`extensions.value`) and the cap (`extensions.maximum`); one exactly at the cap runs and reports its
cost. Introspection and GraphiQL can be turned off; bodies over the size cap get 413, whether
their length is declared or streamed; simple (CSRF-prone) content types need a preflight header;
the secured gateway authenticates before it measures anything.
"""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from gateway.config import Settings
from gateway.database import Database
from resolvers.limits import LIST_ESTIMATE
from tests.conftest import TEST_API_KEY, Api, clear_tables, client_of, new_uuid, running, secured_settings
from tests.test_errors import snapshot

HISTORY = (
    "{ threads(first: 20) { edges { node { id name steps(last: 10) {"
    " edges { node { id output feedback { value } } } } } } } }"
)
THREADS = "query($n: Int!) { threads(first: $n) { edges { node { id } } } }"
UPSERT_USER = (
    "mutation($id: String!, $m: JSONObject) { upsertUser(input: {identifier: $id, metadata: $m}) { id } }"
)
PREFLIGHT = "Apollo-Require-Preflight"
BODY_CAP = 2048


@pytest.fixture(autouse=True)
async def _empty_tables(db: Database) -> None:
    """Every test starts from empty tables (no CLI-created key either: open mode stays open)."""
    await clear_tables(db)


@asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[tuple[Api, Database]]:
    async with running(settings) as application, client_of(application) as client:
        db: Database = application.state.db
        yield client, db


def open_settings(database_url: str, **overrides: Any) -> Settings:
    return Settings(database_url=database_url, auto_migrate=False, **overrides)


async def cost_of(api: Api, query: str, **variables: Any) -> int:
    """The cost an accepted query reports (under the default cap of 5000)."""
    body = (await api.post(query, variables)).json()
    assert "errors" not in body, body
    cost: dict[str, int] = body["extensions"]["cost"]
    assert cost["maximum"] == 5000, cost
    return cost["requested"]


async def limit_error(api: Api, query: str, value: int, maximum: int, **variables: Any) -> dict[str, Any]:
    """The single error of a query a cap refused: its figures reported, nothing run."""
    body = (await api.post(query, variables)).json()
    assert body.get("data") is None, body
    assert len(body.get("errors", [])) == 1, body
    error: dict[str, Any] = body["errors"][0]
    assert (error["extensions"]["value"], error["extensions"]["maximum"]) == (value, maximum), error
    return error


async def refused(api: Api, query: str, code: str, value: int, maximum: int, **variables: Any) -> None:
    error = await limit_error(api, query, value, maximum, **variables)
    assert error["extensions"].get("code") == code, error


def three_threads() -> tuple[str, list[str]]:
    """A mutation creating three threads: 102 tokens (3 x 33 + `mutation { }`), depth 5
    (upsertThread > steps > edges > node > id), 3 aliases, cost 3 x (1 + 1 + 3 x 1) = 15."""
    ids = [new_uuid() for _ in range(3)]
    fields = " ".join(
        f'{alias}: upsertThread(input: {{id: "{id_}", name: "{alias}"}})'
        " { id steps(first: 3) { edges { node { id } } } }"
        for alias, id_ in zip("abc", ids, strict=True)
    )
    return f"mutation {{ {fields} }}", ids


LIMITS = [
    pytest.param("max_query_tokens", "MAX_TOKENS_EXCEEDED", 102, id="tokens"),
    pytest.param("max_query_depth", "MAX_DEPTH_EXCEEDED", 5, id="depth"),
    pytest.param("max_query_aliases", "MAX_ALIASES_EXCEEDED", 3, id="aliases"),
    pytest.param("max_query_cost", "MAX_COST_EXCEEDED", 15, id="cost"),
]


@pytest.mark.parametrize(
    ("query", "variables", "cost"),
    [
        pytest.param(HISTORY, {}, 441, id="readme-history"),
        pytest.param("{ threads { edges { node { id } } } }", {}, 1 + 20, id="default-page-20"),
        pytest.param("{ threads(first: 3) { edges { node { id } } } }", {}, 1 + 3, id="first-3"),
        pytest.param(THREADS, {"n": 7}, 1 + 7, id="first-from-variable"),
        pytest.param(
            "{ threads(first: 2) { edges { node { ...T } } } }"
            " fragment T on Thread { id steps(first: 5) { edges { node { id } } } }",
            {},
            1 + 2 * (1 + (1 + 5 * 1)),
            id="fragment-spread",
        ),
        pytest.param(
            "query($id: ID!) { step(id: $id) { id children(first: 3) {"
            " edges { node { id children { edges { node { id } } } } } } } }",
            {"id": "018f0000-0000-7000-8000-000000000001"},
            1 + (1 + 3 * (1 + (1 + 20 * 1))),
            id="nested-children",
        ),
        pytest.param("{ threads(first: 50) { totalCount pageInfo { hasNextPage } } }", {}, 1, id="no-nodes"),
    ],
)
async def test_accepted_queries_report_their_cost(
    api: Api, query: str, variables: dict[str, Any], cost: int
) -> None:
    assert await cost_of(api, query, **variables) == cost


async def test_a_variable_default_page_size_is_costed_as_it_runs(api: Api) -> None:
    query = "query($n: Int = 100) { threads(first: $n) { edges { node { id } } } }"
    assert await cost_of(api, query) == 1 + 100


async def test_a_page_size_sent_as_a_float_is_costed_as_it_runs(api: Api) -> None:
    query = "query($n: Int) { threads(first: $n) { edges { node { id } } } }"
    assert await cost_of(api, query, n=100.0) == await cost_of(api, query, n=100) == 1 + 100


async def test_a_batch_costs_per_item(api: Api) -> None:
    """A list field is not one object: `ingestSteps` costs each step it is given, and what is
    selected under each (a list with no list argument counts LIST_ESTIMATE items)."""
    batch = "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { step { thread { name } } } }"
    steps = [{"id": new_uuid(), "threadId": new_uuid(), "type": "run", "name": "n"} for _ in range(7)]
    assert await cost_of(api, batch, s=steps) == 7 * (1 + 1 + 1)
    elements = (
        "{ threads(first: 2) { edges { node { steps(first: 3) { edges { node { elements { id } } } } } } } }"
    )
    assert await cost_of(api, elements) == 1 + 2 * (1 + 1 + 3 * (1 + LIST_ESTIMATE * 1))


@pytest.mark.parametrize(("setting", "code", "figure"), LIMITS)
async def test_over_a_cap_a_mutation_is_refused_and_writes_nothing(
    database_url: str, setting: str, code: str, figure: int
) -> None:
    mutation, _ = three_threads()
    async with gateway(open_settings(database_url, **{setting: figure - 1})) as (api, db):
        before = await snapshot(db)
        await refused(api, mutation, code, figure, figure - 1)
        assert await snapshot(db) == before


@pytest.mark.parametrize(("setting", "code", "figure"), LIMITS)
async def test_exactly_at_a_cap_a_mutation_runs(
    database_url: str, setting: str, code: str, figure: int
) -> None:
    mutation, ids = three_threads()
    async with gateway(open_settings(database_url, **{setting: figure})) as (api, _):
        body = (await api.post(mutation)).json()
    assert "errors" not in body, body
    assert [body["data"][alias]["id"] for alias in "abc"] == ids
    maximum = figure if setting == "max_query_cost" else 5000
    assert body["extensions"]["cost"] == {"requested": 15, "maximum": maximum}


async def test_tokens_are_counted_as_the_lexer_reads_them_before_parsing(database_url: str) -> None:
    async with gateway(open_settings(database_url, max_query_tokens=10)) as (api, _):
        # Comments and commas are no tokens: `{`, eight fields and `}` make 10.
        assert await api.ok("# a long comment, with words\n{" + ", __typename" * 8 + " }")
        await limit_error(api, "{" + " __typename" * 9 + " }", 11, 10)
        # Counted before parsing: an unbalanced document is refused by its size, not its syntax.
        await limit_error(api, "{" * 11, 11, 10)


async def test_fragments_do_not_hide_depth_or_aliases(database_url: str) -> None:
    settings = open_settings(database_url, max_query_depth=3, max_query_aliases=2)
    async with gateway(settings) as (api, _):
        assert await api.ok("{ threads { edges { cursor } } }")
        deep = "{ threads { ...T } } fragment T on ThreadConnection { edges { node { id } } }"
        await refused(api, deep, "MAX_DEPTH_EXCEEDED", 4, 3)
        aliased = "{ ...Q } fragment Q on Query { a: __typename b: __typename c: __typename }"
        await refused(api, aliased, "MAX_ALIASES_EXCEEDED", 3, 2)


async def test_introspection_turned_off_refuses_only_introspection(database_url: str) -> None:
    async with gateway(open_settings(database_url, introspection=False)) as (api, _):
        for query in (
            "{ __schema { types { name } } }",
            '{ __type(name: "Thread") { name } }',
            "{ ...I } fragment I on Query { __schema { queryType { name } } }",
        ):
            body = (await api.post(query)).json()
            assert body.get("data") is None, body
            assert [error["extensions"]["code"] for error in body["errors"]] == ["INTROSPECTION_DISABLED"]
        assert await api.ok("{ __typename }") == {"__typename": "Query"}
        assert await api.ok("{ threads { totalCount } }") == {"threads": {"totalCount": 0}}
        # Nor do validation errors suggest the names introspection would have told.
        error = await api.error("{ thred { id } }")
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert "thred" in error["message"] and "Did you mean" not in error["message"], error
    async with gateway(open_settings(database_url)) as (api, _):
        assert "Did you mean 'thread'" in (await api.error("{ thred { id } }"))["message"]


async def test_introspection_is_answered_by_default(api: Api) -> None:
    data = await api.ok('{ __schema { queryType { name } } __type(name: "Thread") { name } }')
    assert data == {"__schema": {"queryType": {"name": "Query"}}, "__type": {"name": "Thread"}}


async def graphiql_page(api: Api) -> httpx.Response:
    return await api.http.get("/graphql", headers={"Accept": "text/html"})


async def test_graphiql_turned_off_serves_no_page(database_url: str) -> None:
    async with gateway(open_settings(database_url, graphiql=False)) as (api, _):
        page = await graphiql_page(api)
    assert 400 <= page.status_code < 500, page.text
    assert "text/html" not in page.headers.get("content-type", "")
    assert "graphiql" not in page.text.lower()


async def test_graphiql_is_served_by_default(api: Api) -> None:
    page = await graphiql_page(api)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "graphiql" in page.text.lower()


def user_body(size: int, identifier: str = "big@example.com") -> bytes:
    """A JSON upsertUser request of exactly `size` bytes, its metadata padded."""

    def encode(pad: str) -> bytes:
        variables = {"id": identifier, "m": {"pad": pad}}
        return json.dumps({"query": UPSERT_USER, "variables": variables}).encode()

    body = encode("x" * (size - len(encode(""))))
    assert len(body) == size
    return body


async def chunks(body: bytes, size: int = 500) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def post_raw(
    api: Api,
    body: bytes,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    *,
    streamed: bool = False,
) -> httpx.Response:
    """POST `body` as is; `streamed` sends it in chunks, without a Content-Length."""
    content = chunks(body) if streamed else body
    all_headers = {**api.headers, "Content-Type": content_type, **(headers or {})}
    response = await api.http.post("/graphql", content=content, headers=all_headers)
    assert ("content-length" in response.request.headers) is not streamed
    return response


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    [error] = response.json()["errors"]
    assert error["extensions"] == {"code": "PAYLOAD_TOO_LARGE", "maximum": BODY_CAP}, error


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "streamed"])
async def test_body_over_the_cap_gets_413_and_writes_nothing(database_url: str, streamed: bool) -> None:
    async with gateway(open_settings(database_url, max_body_bytes=BODY_CAP)) as (api, db):
        before = await snapshot(db)
        assert_too_large(await post_raw(api, user_body(BODY_CAP + 1), streamed=streamed))
        assert await snapshot(db) == before


async def test_a_declared_length_over_the_cap_is_refused_unread(database_url: str) -> None:
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        async for chunk in chunks(user_body(BODY_CAP + 1)):
            read.append(chunk)
            yield chunk

    headers = {"Content-Type": "application/json", "Content-Length": str(BODY_CAP + 1)}
    async with gateway(open_settings(database_url, max_body_bytes=BODY_CAP)) as (api, _):
        assert_too_large(await api.http.post("/graphql", content=body(), headers=headers))
    assert read == []


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "streamed"])
async def test_body_at_the_cap_is_accepted(database_url: str, streamed: bool) -> None:
    async with gateway(open_settings(database_url, max_body_bytes=BODY_CAP)) as (api, _):
        response = await post_raw(api, user_body(BODY_CAP), streamed=streamed)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["upsertUser"]["id"]


CSRF_MUTATION = 'mutation { upsertUser(input: {identifier: "csrf@example.com"}) { id } }'
MUTATION_JSON = json.dumps({"query": CSRF_MUTATION})
SIMPLE_REQUESTS = [
    pytest.param(
        "multipart/form-data; boundary=b",
        '--b\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
        f'{MUTATION_JSON}\r\n--b\r\nContent-Disposition: form-data; name="map"\r\n\r\n{{}}\r\n--b--\r\n',
        id="multipart",
    ),
    pytest.param("text/plain", MUTATION_JSON, id="text-plain"),
    pytest.param("Text/Plain; charset=utf-8", MUTATION_JSON, id="text-plain-charset"),
    pytest.param("application/x-www-form-urlencoded", urlencode({"query": CSRF_MUTATION}), id="form"),
]


@pytest.mark.parametrize(("content_type", "body"), SIMPLE_REQUESTS)
@pytest.mark.parametrize("headers", [{}, {PREFLIGHT: ""}], ids=["no-header", "empty-header"])
async def test_simple_content_types_need_a_preflight_header(
    api: Api, db: Database, content_type: str, body: str, headers: dict[str, str]
) -> None:
    before = await snapshot(db)
    response = await post_raw(api, body.encode(), content_type, headers)
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert PREFLIGHT in error["message"], error
    assert await snapshot(db) == before


@pytest.mark.parametrize(("content_type", "body"), SIMPLE_REQUESTS)
@pytest.mark.parametrize("header", [PREFLIGHT, "X-Apollo-Operation-Name"])
async def test_a_preflight_header_lifts_the_csrf_refusal(
    api: Api, content_type: str, body: str, header: str
) -> None:
    response = await post_raw(api, body.encode(), content_type, {header: "true"})
    # Uploads are not served yet: some other answer, but not the CSRF refusal.
    assert PREFLIGHT not in response.text, response.text


async def test_limits_apply_to_an_authenticated_backend(database_url: str) -> None:
    settings = secured_settings(database_url, max_query_depth=3, max_body_bytes=BODY_CAP)
    async with gateway(settings) as (anonymous, _):
        api = anonymous.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
        assert await cost_of(api, "{ threads(first: 4) { edges { cursor } } }") == 1
        await refused(api, "{ threads { edges { node { id } } } }", "MAX_DEPTH_EXCEEDED", 4, 3)
        assert_too_large(await post_raw(api, user_body(BODY_CAP + 1)))


async def test_an_anonymous_caller_is_refused_before_any_limit(database_url: str) -> None:
    settings = secured_settings(database_url, max_query_depth=3, max_body_bytes=BODY_CAP)
    async with gateway(settings) as (api, db):
        before = await snapshot(db)
        for response in (
            await api.post("{ threads { edges { node { id } } } }"),
            await post_raw(api, user_body(BODY_CAP + 1)),
        ):
            assert response.status_code == 401, response.text
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["UNAUTHENTICATED"]
        assert await snapshot(db) == before
