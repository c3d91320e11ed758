"""A read costs a number of SQL statements bounded by the depth of the query, not by its rows."""

import pytest
from starlette.applications import Starlette

from tests.conftest import TEST_API_KEY, Api, StatementLog, new_uuid, statement_log, user_token

HISTORY = """
query($user: ID!) {
  threads(first: 20, filter: {userId: $user}) {
    edges { node { id name steps(last: 10) { edges { node { id output feedback { value comment } } } } } }
  }
}"""
HISTORY_DEEP = """
query($user: ID!) {
  threads(first: 20, filter: {userId: $user}) {
    totalCount
    edges { node {
      id user { identifier }
      steps(last: 10) { totalCount edges { node {
        id feedback { value } elements { id } parent { id }
        children(first: 5) { edges { node { id } } }
      } } }
    } }
  }
}"""


async def seed(api: Api, threads: int, steps_per_thread: int) -> str:
    user_id: str = (await api.ok('mutation { upsertUser(input: {identifier: "reader"}) { id } }'))[
        "upsertUser"
    ]["id"]
    batch = []
    for _ in range(threads):
        thread_id = new_uuid()
        await api.ok(
            'mutation($t: ID!, $u: ID!) { upsertThread(input: {id: $t, userId: $u, name: "t"}) { id } }',
            t=thread_id,
            u=user_id,
        )
        parent = None
        for index in range(steps_per_thread):
            step_id = new_uuid()
            batch.append({"id": step_id, "threadId": thread_id, "output": f"o{index}", "parentId": parent})
            parent = step_id if index % 3 == 0 else parent
    for start in range(0, len(batch), 500):
        await api.ok(
            "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { index } }", s=batch[start : start + 500]
        )
    for step in batch[::4]:
        await api.ok(
            "mutation($s: ID!) { upsertFeedback(input: {forId: $s, value: 1}) { id } }", s=step["id"]
        )
    return user_id


@pytest.mark.parametrize("threads", [20, 40])
async def test_history_query_runs_one_statement_per_level(
    api: Api, sql_statements: StatementLog, threads: int
) -> None:
    user_id = await seed(api, threads=threads, steps_per_thread=12)
    sql_statements.clear()
    data = await api.ok(HISTORY, user=user_id)
    assert len(data["threads"]["edges"]) == 20
    assert all(len(edge["node"]["steps"]["edges"]) == 10 for edge in data["threads"]["edges"])
    rated = [
        step
        for edge in data["threads"]["edges"]
        for step in edge["node"]["steps"]["edges"]
        if step["node"]["feedback"]
    ]
    assert rated, "the seed rates some of the latest steps"
    # The compiled read path answers with 1 statement. The suite's verify mode runs the query on the
    # resolvers too: threads, their last 10 steps, those steps' feedback, 3 statements for 20
    # threads and 200 steps.
    assert sql_statements.count == 1 + 3, sql_statements.statements


async def test_deeper_query_adds_one_statement_per_field_level(
    api: Api, sql_statements: StatementLog
) -> None:
    user_id = await seed(api, threads=20, steps_per_thread=12)
    sql_statements.clear()
    data = await api.ok(HISTORY_DEEP, user=user_id)
    assert data["threads"]["totalCount"] == 20
    assert data["threads"]["edges"][0]["node"]["steps"]["totalCount"] == 12
    # Compiled: 1 statement. On the resolvers (the suite's verify run): threads + count, user,
    # steps + count, feedback, elements, parent, children: 9, whatever the rows.
    assert sql_statements.count == 1 + 9, sql_statements.statements


async def test_a_users_history_costs_one_statement_more_for_the_user_lookup(
    secured_app: Starlette, secured_api: Api
) -> None:
    """Authorization rides in the statements that load the rows: a user's token adds the lookup of
    its user, and nothing per level or per row."""
    backend = secured_api.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
    user_id = await seed(backend, threads=20, steps_per_thread=12)
    reader = secured_api.with_headers(Authorization=f"Bearer {user_token('reader')}")
    with statement_log(secured_app.state.db) as log:
        data = await reader.ok(HISTORY, user=user_id)
    assert len(data["threads"]["edges"]) == 20
    assert log.count == 1 + 1 + 3, log.statements  # the user, the compiled read, the verify run
    with statement_log(secured_app.state.db) as log:
        deep = await reader.ok(HISTORY_DEEP, user=user_id)
    assert deep["threads"]["totalCount"] == 20
    assert log.count == 1 + 1 + 9, log.statements
