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


# --- writes: a step's write costs statements bounded by its request's shape, never by its rows ----

UPSERT_STEP = "mutation($i: StepInput!) { upsertStep(input: $i) { id output threadId } }"
APPEND = 'mutation($id: ID!) { appendStepOutput(id: $id, delta: "more") { output } }'
INGEST = "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { index error { code } } }"
RATE = "mutation($s: ID!, $v: Int!) { upsertFeedback(input: {forId: $s, value: $v}) { id value } }"


async def test_a_backends_step_write_is_one_statement(
    api: Api, sql_statements: StatementLog, backend: str
) -> None:
    thread_id, step_id = new_uuid(), new_uuid()
    await api.ok(UPSERT_STEP, i={"id": new_uuid(), "threadId": thread_id, "name": "first", "type": "run"})
    sql_statements.clear()
    fields = {"id": step_id, "threadId": thread_id, "name": "a", "type": "assistant_message", "output": "x"}
    await api.ok(UPSERT_STEP, i={**fields, "metadata": {"model": "m"}})
    # The thread, created if missing, rides in the same statement (a CTE); SQLite runs no INSERT in
    # a WITH, so there it is inserted only when the step finds it missing.
    assert sql_statements.count == 1, sql_statements.statements
    sql_statements.clear()
    new_thread = {**fields, "id": new_uuid(), "threadId": new_uuid()}
    assert (await api.ok(UPSERT_STEP, i=new_thread))["upsertStep"]["threadId"] == new_thread["threadId"]
    assert sql_statements.count == (1 if backend == "postgresql" else 3), sql_statements.statements
    sql_statements.clear()
    await api.ok(UPSERT_STEP, i={"id": step_id, "output": "changed"})
    assert sql_statements.count == 1, sql_statements.statements
    sql_statements.clear()
    assert (await api.ok(APPEND, id=step_id))["appendStepOutput"]["output"] == "changedmore"
    assert sql_statements.count == 1, sql_statements.statements
    # Rating it, then changing the rating: one statement each (the step's thread found in it).
    for value in (1, 0):
        sql_statements.clear()
        assert (await api.ok(RATE, s=step_id, v=value))["upsertFeedback"]["value"] == value
        assert sql_statements.count == 1, sql_statements.statements


async def test_a_users_step_write_is_a_check_and_the_write(
    secured_app: Starlette, secured_api: Api, backend: str
) -> None:
    user = secured_api.with_headers(Authorization=f"Bearer {user_token('writer')}")
    thread_id, step_id = new_uuid(), new_uuid()
    await user.ok('mutation { upsertUser(input: {identifier: "writer"}) { id } }')
    # Each request also looks up the token's user (one statement), as reads do. A new thread rides
    # in the write's statement (on SQLite it is a statement of its own).
    with statement_log(secured_app.state.db) as log:
        await user.ok(UPSERT_STEP, i={"id": new_uuid(), "threadId": thread_id, "name": "first"})
    assert log.count == 1 + (2 if backend == "postgresql" else 3), log.statements
    with statement_log(secured_app.state.db) as log:
        await user.ok(UPSERT_STEP, i={"id": step_id, "threadId": thread_id, "output": "x", "tags": ["t"]})
    assert log.count == 1 + 2, log.statements
    with statement_log(secured_app.state.db) as log:
        assert (await user.ok(APPEND, id=step_id))["appendStepOutput"]["output"] == "xmore"
    assert log.count == 1 + 1, log.statements
    with statement_log(secured_app.state.db) as log:  # the user's access is a condition of it
        assert (await user.ok(RATE, s=step_id, v=1))["upsertFeedback"]["value"] == 1
    assert log.count == 1 + 1, log.statements


@pytest.mark.parametrize("existing_thread", [True, False])
async def test_a_backends_batch_costs_the_same_statements_for_10_steps_as_for_100(
    api: Api, sql_statements: StatementLog, existing_thread: bool
) -> None:
    counts = []
    for size in (10, 100):
        thread_id = new_uuid()
        if existing_thread:
            await api.ok(UPSERT_STEP, i={"id": new_uuid(), "threadId": thread_id})
        batch = [
            {"id": new_uuid(), "threadId": thread_id, "name": "s", "type": "run", "output": f"{index}"}
            for index in range(size)
        ]
        sql_statements.clear()
        results = (await api.ok(INGEST, s=batch))["ingestSteps"]
        assert [result["error"] for result in results] == [None] * size
        counts.append(sql_statements.count)
    # Where the steps are, the threads created if missing, the multi-row upsert.
    assert counts == [3, 3], sql_statements.statements


async def test_a_users_batch_costs_the_same_statements_for_10_steps_as_for_100(
    secured_app: Starlette, secured_api: Api
) -> None:
    user = secured_api.with_headers(Authorization=f"Bearer {user_token('writer')}")
    counts = []
    for size in (10, 100):
        thread_id, root = new_uuid(), new_uuid()
        await user.ok(UPSERT_STEP, i={"id": root, "threadId": thread_id})
        batch = [
            {"id": new_uuid(), "threadId": thread_id, "parentId": root, "output": f"{index}"}
            for index in range(size)
        ]
        with statement_log(secured_app.state.db) as log:
            results = (await user.ok(INGEST, s=batch))["ingestSteps"]
        assert [result["error"] for result in results] == [None] * size
        counts.append(log.count)
    # The token's user; where the steps and parents are; their threads; the threads created if
    # missing; the multi-row upsert.
    assert counts == [5, 5], log.statements


APPLY = "mutation($i: ThreadChangesInput!) { applyThreadChanges(input: $i) { thread { id } deletedStepIds } }"


@pytest.mark.parametrize("size", [10, 200])
async def test_a_threads_changes_cost_statements_bounded_by_their_shape(
    api: Api, sql_statements: StatementLog, size: int
) -> None:
    thread_id = new_uuid()
    old = [{"id": new_uuid(), "type": "user_message", "output": f"old {index}"} for index in range(size)]
    await api.ok(APPLY, i={"thread": {"id": thread_id}, "upsertSteps": old})
    sql_statements.clear()
    new = [{"id": new_uuid(), "type": "assistant_message", "output": f"new {index}"} for index in range(size)]
    changes = {
        "thread": {"id": thread_id, "metadata": {"turn": 2}},
        "upsertSteps": new,
        "deleteStepIds": [step["id"] for step in old],
    }
    applied = (await api.ok(APPLY, i=changes))["applyThreadChanges"]
    assert len(applied["deletedStepIds"]) == size
    # The thread's upsert; the deletes (their ids, feedback, elements, steps); the steps' lookup, one
    # multi-row upsert; the thread read back. As many for 10 steps as for 200.
    assert sql_statements.count == 8, sql_statements.statements
