"""Users: upserted by identifier, looked up by id or identifier, listed and searched."""

import sqlalchemy as sa
from starlette.applications import Starlette

from gateway.tables import feedbacks_table
from tests.conftest import Api, new_uuid, statement_log
from tests.test_errors import snapshot

UPSERT_USER = """
mutation($input: UserInput!) { upsertUser(input: $input) { id identifier metadata createdAt } }"""


async def test_upsert_by_identifier_is_idempotent_and_merges_metadata(api: Api) -> None:
    first = await api.ok(UPSERT_USER, input={"identifier": "ada", "metadata": {"role": "admin", "x": 1}})
    again = await api.ok(UPSERT_USER, input={"identifier": "ada", "metadata": {"x": None, "plan": "pro"}})
    assert again["upsertUser"]["id"] == first["upsertUser"]["id"]
    assert again["upsertUser"]["metadata"] == {"role": "admin", "plan": "pro"}
    assert again["upsertUser"]["createdAt"] == first["upsertUser"]["createdAt"]
    retried = await api.ok(UPSERT_USER, input={"identifier": "ada", "metadata": {"x": None, "plan": "pro"}})
    assert retried == again


async def test_client_chosen_id_and_rename(api: Api) -> None:
    user_id = new_uuid()
    created = await api.ok(UPSERT_USER, input={"id": user_id, "identifier": "old@example.com"})
    assert created["upsertUser"]["id"] == user_id
    renamed = await api.ok(UPSERT_USER, input={"id": user_id, "identifier": "new@example.com"})
    assert renamed["upsertUser"]["identifier"] == "new@example.com"
    found = await api.ok('{ user(identifier: "new@example.com") { id } }')
    assert found["user"]["id"] == user_id
    assert (await api.ok('{ user(identifier: "old@example.com") { id } }'))["user"] is None


async def test_identifier_of_another_user_is_a_conflict(api: Api) -> None:
    await api.ok(UPSERT_USER, input={"identifier": "taken"})
    other = new_uuid()
    await api.ok(UPSERT_USER, input={"id": other, "identifier": "mine"})
    assert await api.code(UPSERT_USER, input={"id": other, "identifier": "taken"}) == "CONFLICT"
    assert await api.code(UPSERT_USER, input={"id": new_uuid(), "identifier": "taken"}) == "CONFLICT"
    assert (await api.ok('{ user(identifier: "mine") { id } }'))["user"]["id"] == other


async def test_user_lookup_needs_exactly_one_key_and_viewer_is_null_without_auth(api: Api) -> None:
    assert await api.code("{ user { id } }") == "BAD_USER_INPUT"
    assert (await api.ok("{ viewer { id } }"))["viewer"] is None
    assert (await api.ok(f'{{ user(id: "{new_uuid()}") {{ id }} }}'))["user"] is None


async def test_users_are_listed_by_identifier_and_searched_in_any_case(api: Api) -> None:
    for identifier in ("carol@Example.com", "alice@example.com", "bob@other.org"):
        await api.ok(UPSERT_USER, input={"identifier": identifier})
    listed = await api.ok(
        "{ users(first: 2) { totalCount pageInfo { hasNextPage endCursor } edges { node { identifier } } } }"
    )
    page = listed["users"]
    assert [edge["node"]["identifier"] for edge in page["edges"]] == ["alice@example.com", "bob@other.org"]
    assert page["totalCount"] == 3 and page["pageInfo"]["hasNextPage"] is True
    rest = await api.ok(
        "query($after: String) { users(first: 2, after: $after) { edges { node { identifier } } } }",
        after=page["pageInfo"]["endCursor"],
    )
    assert [edge["node"]["identifier"] for edge in rest["users"]["edges"]] == ["carol@Example.com"]
    searched = await api.ok('{ users(search: "EXAMPLE") { edges { node { identifier } } } }')
    assert {edge["node"]["identifier"] for edge in searched["users"]["edges"]} == {
        "alice@example.com",
        "carol@Example.com",
    }


async def test_thread_owner_is_resolved(api: Api) -> None:
    user_id = (await api.ok(UPSERT_USER, input={"identifier": "owner"}))["upsertUser"]["id"]
    thread_id = new_uuid()
    await api.ok(
        'mutation($t: ID!) { upsertThread(input: {id: $t, userIdentifier: "owner"}) { id } }', t=thread_id
    )
    data = await api.ok(
        "query($t: ID!) { thread(id: $t) { userId userIdentifier user { id identifier } } }", t=thread_id
    )
    assert data["thread"] == {
        "userId": user_id,
        "userIdentifier": "owner",
        "user": {"id": user_id, "identifier": "owner"},
    }


async def test_renaming_a_user_renames_the_owner_of_their_threads(api: Api) -> None:
    user_id = new_uuid()
    await api.ok(UPSERT_USER, input={"id": user_id, "identifier": "before@example.com"})
    thread_id = new_uuid()
    await api.ok(
        "mutation($t: ID!, $u: ID!) { upsertThread(input: {id: $t, userId: $u}) { id } }",
        t=thread_id,
        u=user_id,
    )
    await api.ok(UPSERT_USER, input={"id": user_id, "identifier": "after@example.com"})
    data = await api.ok("query($t: ID!) { thread(id: $t) { userIdentifier } }", t=thread_id)
    assert data["thread"]["userIdentifier"] == "after@example.com"
    listed = await api.ok('{ threads(filter: {userIdentifier: "after@example.com"}) { totalCount } }')
    assert listed["threads"]["totalCount"] == 1


DELETE_USER = "mutation($id: ID!) { deleteUser(id: $id) { id } }"
THREAD_WITH_STEP = """
mutation($t: ID!, $u: ID!, $s: ID!) {
  upsertThread(input: {id: $t, userId: $u, name: "chat"}) { id }
  upsertStep(input: {id: $s, threadId: $t, type: "user_message", name: "User", output: "hi"}) { id }
  upsertFeedback(input: {forId: $s, value: 1}) { id }
}"""


async def make_user_with_threads(api: Api, identifier: str, threads: int) -> tuple[str, list[str], list[str]]:
    user_id: str = (await api.ok(UPSERT_USER, input={"identifier": identifier}))["upsertUser"]["id"]
    thread_ids, step_ids = [new_uuid() for _ in range(threads)], [new_uuid() for _ in range(threads)]
    for thread_id, step_id in zip(thread_ids, step_ids, strict=True):
        await api.ok(THREAD_WITH_STEP, t=thread_id, u=user_id, s=step_id)
    return user_id, thread_ids, step_ids


async def test_deleting_a_user_deletes_their_threads_and_nothing_else(app: Starlette, api: Api) -> None:
    ada, ada_threads, ada_steps = await make_user_with_threads(api, "ada", threads=2)
    bob, bob_threads, bob_steps = await make_user_with_threads(api, "bob", threads=1)

    assert (await api.ok(DELETE_USER, id=ada))["deleteUser"] == {"id": ada}

    assert (await api.ok("query($id: ID!) { user(id: $id) { id } }", id=ada))["user"] is None
    for thread_id, step_id in zip(ada_threads, ada_steps, strict=True):
        gone = await api.ok(
            "query($t: ID!, $s: ID!) { thread(id: $t) { id } step(id: $s) { id } }", t=thread_id, s=step_id
        )
        assert gone == {"thread": None, "step": None}
    kept = await api.ok(
        "query($t: ID!, $s: ID!) { thread(id: $t) { user { id } } step(id: $s) { feedback { value } } }",
        t=bob_threads[0],
        s=bob_steps[0],
    )
    assert kept == {"thread": {"user": {"id": bob}}, "step": {"feedback": {"value": 1}}}
    async with app.state.db.session() as session:  # the feedback went with the threads, too
        assert (await session.execute(sa.select(sa.func.count()).select_from(feedbacks_table))).scalar() == 1

    before = await snapshot(app.state.db)
    assert await api.code(DELETE_USER, id=ada) == "NOT_FOUND"  # deleted already
    assert await api.code(DELETE_USER, id="not-an-id") == "BAD_USER_INPUT"
    assert await snapshot(app.state.db) == before


async def test_deleting_a_user_costs_the_same_statements_for_any_number_of_threads(
    app: Starlette, api: Api
) -> None:
    counts = []
    for threads in (1, 6):
        user_id, _, _ = await make_user_with_threads(api, f"user-{threads}", threads=threads)
        with statement_log(app.state.db) as log:
            await api.ok(DELETE_USER, id=user_id)
        counts.append(log.count)
    assert counts[0] == counts[1], counts
