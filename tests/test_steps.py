"""Steps: upserts by client id, races between writers, streamed output, batches, nesting, deletion."""

import asyncio
from typing import Any

import pytest

from gateway.data import steps
from tests.conftest import Api, new_uuid, user_token

STEP_FIELDS = (
    "id threadId parentId name type input output isError streaming metadata tags createdAt showInput"
)
UPSERT_STEP = f"mutation($input: StepInput!) {{ upsertStep(input: $input) {{ {STEP_FIELDS} }} }}"
STEP = f"query($id: ID!) {{ step(id: $id) {{ {STEP_FIELDS} }} }}"
THREAD_STEPS = """
query($id: ID!, $first: Int, $after: String, $last: Int, $before: String, $filter: StepFilter) {
  thread(id: $id) {
    updatedAt
    steps(first: $first, after: $after, last: $last, before: $before, filter: $filter) {
      totalCount
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
      edges { cursor node { id output } }
    }
  }
}"""


async def upsert_step(api: Api, **fields: object) -> dict[str, object]:
    step: dict[str, object] = (await api.ok(UPSERT_STEP, input=fields))["upsertStep"]
    return step


async def step_ids(api: Api, thread_id: str, **arguments: object) -> list[str]:
    data = await api.ok(THREAD_STEPS, id=thread_id, **arguments)
    return [edge["node"]["id"] for edge in data["thread"]["steps"]["edges"]]


async def test_first_step_creates_its_thread(api: Api) -> None:
    thread_id, step_id = new_uuid(), new_uuid()
    step = await upsert_step(
        api, id=step_id, threadId=thread_id, name="user", type="user_message", input="hello", showInput="true"
    )
    assert step["threadId"] == thread_id and step["input"] == "hello" and step["streaming"] is False
    thread = (await api.ok("query($id: ID!) { thread(id: $id) { id createdAt updatedAt } }", id=thread_id))[
        "thread"
    ]
    assert thread["id"] == thread_id and thread["updatedAt"] >= thread["createdAt"]


async def test_partial_update_never_blanks_fields_it_was_not_given(api: Api) -> None:
    thread_id, step_id = new_uuid(), new_uuid()
    created = await upsert_step(
        api,
        id=step_id,
        threadId=thread_id,
        name="llm",
        type="llm",
        input="question",
        output="ans",
        metadata={"model": "m1"},
        tags=["t"],
        isError=False,
    )
    updated = await upsert_step(api, id=step_id, output="answer", metadata={"tokens": 12})
    assert updated["input"] == "question" and updated["name"] == "llm" and updated["type"] == "llm"
    assert updated["tags"] == ["t"] and updated["createdAt"] == created["createdAt"]
    assert updated["metadata"] == {"model": "m1", "tokens": 12}
    assert updated["output"] == "answer"
    cleared = await upsert_step(api, id=step_id, threadId=thread_id, output=None)
    assert cleared["output"] is None and cleared["input"] == "question"


async def test_update_without_thread_id_of_a_missing_step_is_not_found(api: Api) -> None:
    assert await api.code(UPSERT_STEP, input={"id": new_uuid(), "output": "x"}) == "NOT_FOUND"


async def test_retried_step_upsert_does_not_move_the_thread(api: Api) -> None:
    thread_id, step_id = new_uuid(), new_uuid()
    fields = {"id": step_id, "threadId": thread_id, "name": "a", "type": "run", "metadata": {"k": 1}}
    await upsert_step(api, **fields)
    before = (await api.ok(THREAD_STEPS, id=thread_id))["thread"]["updatedAt"]
    await asyncio.sleep(0.01)
    await upsert_step(api, **fields)
    after = (await api.ok(THREAD_STEPS, id=thread_id))["thread"]["updatedAt"]
    assert after == before


async def test_concurrent_create_and_updates_of_one_step_lose_nothing(api: Api) -> None:
    """Chainlit #2789/#2583: a create racing updates of the same step lost content."""
    thread_id, step_id = new_uuid(), new_uuid()
    writes = [
        {"id": step_id, "threadId": thread_id, "name": "assistant", "type": "assistant_message"},
        {"id": step_id, "threadId": thread_id, "output": "final answer"},
        {"id": step_id, "threadId": thread_id, "metadata": {"a": 1}},
        {"id": step_id, "threadId": thread_id, "metadata": {"b": 2}},
        {"id": step_id, "threadId": thread_id, "input": "the question"},
    ]
    responses = await asyncio.gather(*(api.post(UPSERT_STEP, {"input": write}) for write in writes))
    assert all(not response.json().get("errors") for response in responses), [r.json() for r in responses]
    step = (await api.ok(STEP, id=step_id))["step"]
    assert step["name"] == "assistant" and step["type"] == "assistant_message"
    assert step["output"] == "final answer" and step["input"] == "the question"
    assert step["metadata"] == {"a": 1, "b": 2}


async def test_streamed_output_appends_atomically(api: Api) -> None:
    thread_id, step_id = new_uuid(), new_uuid()
    await upsert_step(api, id=step_id, threadId=thread_id, name="a", type="assistant_message", streaming=True)
    append = "mutation($id: ID!, $d: String!) { appendStepOutput(id: $id, delta: $d) { output } }"
    tokens = [f"<{index}>" for index in range(20)]
    responses = await asyncio.gather(*(api.post(append, {"id": step_id, "d": token}) for token in tokens))
    assert all(not response.json().get("errors") for response in responses)
    output = (await api.ok(STEP, id=step_id))["step"]["output"]
    assert sorted(output.replace(">", "> ").split()) == sorted(tokens), "every token landed exactly once"
    assert (await api.ok(append, id=step_id, d="!"))["appendStepOutput"]["output"].endswith("!")


async def test_steps_are_oldest_first_and_last_n_is_the_latest_turns(api: Api) -> None:
    thread_id = new_uuid()
    ids = []
    for minute in range(15):
        step_id = new_uuid()
        ids.append(step_id)
        await upsert_step(
            api,
            id=step_id,
            threadId=thread_id,
            output=f"turn {minute}",
            createdAt=f"2026-01-01T10:{minute:02d}:00.000Z",
        )
    assert await step_ids(api, thread_id) == ids
    latest = (await api.ok(THREAD_STEPS, id=thread_id, last=10))["thread"]["steps"]
    assert [edge["node"]["id"] for edge in latest["edges"]] == ids[5:]
    assert latest["pageInfo"]["hasPreviousPage"] is True and latest["totalCount"] == 15
    older = await api.ok(THREAD_STEPS, id=thread_id, last=10, before=latest["pageInfo"]["startCursor"])
    older_page = older["thread"]["steps"]
    assert [edge["node"]["id"] for edge in older_page["edges"]] == ids[:5]
    assert (
        older_page["pageInfo"]["hasPreviousPage"] is False and older_page["pageInfo"]["hasNextPage"] is True
    )


async def test_step_filter_by_type_and_root_only(api: Api) -> None:
    thread_id, root, child, tool = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    await upsert_step(api, id=root, threadId=thread_id, type="user_message", createdAt="2026-01-01T00:00:00Z")
    await upsert_step(
        api, id=child, threadId=thread_id, parentId=root, type="llm", createdAt="2026-01-01T00:00:01Z"
    )
    await upsert_step(api, id=tool, threadId=thread_id, type="tool", createdAt="2026-01-01T00:00:02Z")
    assert await step_ids(api, thread_id, filter={"rootOnly": True}) == [root, tool]
    assert await step_ids(api, thread_id, filter={"types": ["llm", "tool"]}) == [child, tool]


async def test_children_parent_and_nested_delete_with_feedback(api: Api) -> None:
    thread_id, root, child, grandchild, sibling = (new_uuid() for _ in range(5))
    await upsert_step(api, id=root, threadId=thread_id, type="run", createdAt="2026-01-01T00:00:00Z")
    await upsert_step(api, id=child, threadId=thread_id, parentId=root, createdAt="2026-01-01T00:00:01Z")
    await upsert_step(
        api, id=grandchild, threadId=thread_id, parentId=child, createdAt="2026-01-01T00:00:02Z"
    )
    await upsert_step(api, id=sibling, threadId=thread_id, createdAt="2026-01-01T00:00:03Z")
    tree = await api.ok(
        "query($id: ID!) { step(id: $id) { children { totalCount edges { node { id parent { id } "
        "children { edges { node { id } } } } } } } }",
        id=root,
    )
    child_node = tree["step"]["children"]["edges"][0]["node"]
    assert tree["step"]["children"]["totalCount"] == 1
    assert child_node["id"] == child and child_node["parent"]["id"] == root
    assert child_node["children"]["edges"][0]["node"]["id"] == grandchild
    await api.ok("mutation($s: ID!) { upsertFeedback(input: {forId: $s, value: 0}) { id } }", s=grandchild)

    await api.ok("mutation($id: ID!) { deleteStep(id: $id) { id } }", id=root)
    assert await step_ids(api, thread_id) == [sibling]
    remaining = await api.ok("query($id: ID!) { thread(id: $id) { feedbacks { totalCount } } }", id=thread_id)
    assert remaining["thread"]["feedbacks"]["totalCount"] == 0


async def test_ingest_steps_reports_one_outcome_per_item(api: Api) -> None:
    thread_id, good, other_thread = new_uuid(), new_uuid(), new_uuid()
    owned_elsewhere = new_uuid()
    await upsert_step(api, id=owned_elsewhere, threadId=other_thread)
    batch = [
        {"id": good, "threadId": thread_id, "name": "a", "type": "user_message", "output": "hi"},
        {"id": "not-a-uuid", "threadId": thread_id},
        {"id": owned_elsewhere, "threadId": thread_id, "output": "moved?"},
        {"id": new_uuid(), "output": "no thread"},
        {"id": new_uuid(), "threadId": thread_id, "name": None},
    ]
    data = await api.ok(
        "mutation($steps: [StepInput!]!) { ingestSteps(steps: $steps) { index id step { id output } "
        "error { code message } } }",
        steps=batch,
    )
    outcomes = data["ingestSteps"]
    assert [outcome["index"] for outcome in outcomes] == [0, 1, 2, 3, 4]
    assert outcomes[0]["step"] == {"id": good, "output": "hi"} and outcomes[0]["error"] is None
    assert [outcome["error"]["code"] for outcome in outcomes[1:]] == [
        "BAD_USER_INPUT",
        "CONFLICT",
        "NOT_FOUND",
        "BAD_USER_INPUT",
    ]
    assert await step_ids(api, thread_id) == [good]
    assert (await api.ok(STEP, id=owned_elsewhere))["step"]["output"] is None


async def test_ingest_steps_rejects_oversized_batches(api: Api) -> None:
    batch = [{"id": new_uuid(), "threadId": new_uuid()} for _ in range(501)]
    code = await api.code("mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { index } }", s=batch)
    assert code == "BAD_USER_INPUT"
    assert (await api.ok("{ threads { totalCount } }"))["threads"]["totalCount"] == 0


async def test_favorite_steps_of_a_user(api: Api) -> None:
    user = (await api.ok('mutation { upsertUser(input: {identifier: "fav"}) { id } }'))["upsertUser"]["id"]
    thread_id, favorite, plain, foreign = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    await api.ok(
        "mutation($t: ID!, $u: ID!) { upsertThread(input: {id: $t, userId: $u}) { id } }", t=thread_id, u=user
    )
    await upsert_step(api, id=favorite, threadId=thread_id, metadata={"favorite": True})
    await upsert_step(api, id=plain, threadId=thread_id, metadata={"favorite": False})
    await upsert_step(api, id=foreign, threadId=new_uuid(), metadata={"favorite": True})
    data = await api.ok(
        "query($u: ID) { favoriteSteps(userId: $u) { totalCount edges { node { id } } } }", u=user
    )
    assert [edge["node"]["id"] for edge in data["favoriteSteps"]["edges"]] == [favorite]
    assert data["favoriteSteps"]["totalCount"] == 1


async def test_a_batch_without_times_keeps_its_order(api: Api) -> None:
    thread_id = new_uuid()
    batch = [{"id": new_uuid(), "threadId": thread_id, "output": f"turn {index}"} for index in range(8)]
    await api.ok("mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { index } }", s=batch)
    assert await step_ids(api, thread_id) == [step["id"] for step in batch]


async def test_a_bad_cursor_fails_only_the_field_that_sent_it(api: Api) -> None:
    thread_id, step_id = new_uuid(), new_uuid()
    await upsert_step(api, id=step_id, threadId=thread_id, output="x")
    response = await api.post(
        "query($id: ID!) { thread(id: $id) { good: steps(first: 1) { edges { node { id } } } "
        'bad: steps(after: "garbage") { edges { node { id } } } } }',
        {"id": thread_id},
    )
    body = response.json()
    assert [error["path"] for error in body["errors"]] == [["thread", "bad"]]
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    good = await api.ok(
        "query($id: ID!) { thread(id: $id) { good: steps(first: 1) { edges { node { id } } } } }",
        id=thread_id,
    )
    assert good["thread"]["good"]["edges"][0]["node"]["id"] == step_id


async def test_each_thread_in_a_list_gets_its_own_page_of_steps(api: Api) -> None:
    """Many parents' pages come from one statement; each must hold only its parent's rows."""
    expected: dict[str, list[str]] = {}
    for thread_index in range(4):
        thread_id = new_uuid()
        expected[thread_id] = []
        for minute in range(3 + thread_index):
            step_id = new_uuid()
            expected[thread_id].append(step_id)
            await upsert_step(
                api,
                id=step_id,
                threadId=thread_id,
                createdAt=f"2026-01-0{thread_index + 1}T00:{minute:02d}:00Z",
            )
    data = await api.ok(
        "{ threads(first: 10) { edges { node { id "
        "latest: steps(last: 2) { pageInfo { hasPreviousPage } edges { node { id threadId } } } "
        "oldest: steps(first: 2) { pageInfo { hasNextPage } edges { node { id } } } } } } }"
    )
    for edge in data["threads"]["edges"]:
        node = edge["node"]
        ids = expected[node["id"]]
        assert [step["node"]["id"] for step in node["latest"]["edges"]] == ids[-2:]
        assert {step["node"]["threadId"] for step in node["latest"]["edges"]} == {node["id"]}
        assert [step["node"]["id"] for step in node["oldest"]["edges"]] == ids[:2]
        assert node["latest"]["pageInfo"]["hasPreviousPage"] and node["oldest"]["pageInfo"]["hasNextPage"]
    assert len(data["threads"]["edges"]) == 4


INGEST = (
    "mutation($s: [StepInput!]!) { ingestSteps(steps: $s) { index id "
    f"step {{ {STEP_FIELDS} }} error {{ code message }} }} }}"
)


async def test_a_batch_repeating_an_id_applies_each_write_on_top_of_the_earlier(api: Api) -> None:
    thread_id, step_id, other = new_uuid(), new_uuid(), new_uuid()
    batch = [
        {"id": step_id, "threadId": thread_id, "name": "a", "type": "run", "metadata": {"x": 1, "y": 1}},
        {"id": other, "threadId": thread_id, "output": "other"},
        {"id": step_id, "threadId": thread_id, "output": "first", "metadata": {"x": None, "z": 3}},
        {"id": step_id, "output": "second", "metadata": {"y": None}},  # no threadId: an update
        {"id": step_id, "threadId": thread_id, "output": "second"},  # changes nothing
        {"id": step_id, "threadId": new_uuid(), "output": "moved?"},
    ]
    results = (await api.ok(INGEST, s=batch))["ingestSteps"]
    assert [result["index"] for result in results] == list(range(6))
    steps = [result["step"] for result in results]
    assert steps[0]["metadata"] == {"x": 1, "y": 1} and steps[0]["output"] is None
    assert steps[1]["output"] == "other"
    assert steps[2]["metadata"] == {"y": 1, "z": 3} and steps[2]["output"] == "first"
    assert steps[3]["metadata"] == {"z": 3} and steps[3]["output"] == "second"
    assert steps[4] == steps[3]
    assert steps[5] is None and results[5]["error"]["code"] == "CONFLICT"
    assert {steps[index]["createdAt"] for index in (0, 2, 3, 4)} == {steps[0]["createdAt"]}
    assert steps[0]["name"] == steps[4]["name"] == "a"
    assert (await api.ok(STEP, id=step_id))["step"] == steps[4]
    assert await step_ids(api, thread_id) == [step_id, other]


async def test_a_batch_mixing_good_and_bad_steps_writes_the_good_ones_in_order(api: Api) -> None:
    thread_id, first, later, own_parent = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    stranger_thread = new_uuid()
    batch = [
        {"id": first, "output": "no thread yet"},  # the create comes later in the batch
        {"id": first, "threadId": thread_id, "output": "created"},
        {"id": later, "threadId": thread_id, "parentId": first, "tags": ["a"]},
        {"id": own_parent, "threadId": thread_id, "parentId": own_parent},
        {"id": first, "output": "updated", "isError": True},  # no threadId: the step made above
        {"id": "nope", "threadId": thread_id},
        {"id": new_uuid(), "threadId": stranger_thread, "type": None},
    ]
    results = (await api.ok(INGEST, s=batch))["ingestSteps"]
    codes = [result["error"]["code"] if result["error"] else None for result in results]
    assert codes == ["NOT_FOUND", None, None, "BAD_USER_INPUT", None, "BAD_USER_INPUT", "BAD_USER_INPUT"]
    assert results[4]["step"]["output"] == "updated" and results[4]["step"]["isError"] is True
    assert results[2]["step"]["parentId"] == first and results[2]["step"]["tags"] == ["a"]
    assert await step_ids(api, thread_id) == [first, later]
    assert (await api.ok("query($id: ID!) { thread(id: $id) { id } }", id=stranger_thread))["thread"] is None


async def test_a_retried_batch_changes_nothing(api: Api) -> None:
    thread_id, existing = new_uuid(), new_uuid()
    await upsert_step(api, id=existing, threadId=thread_id, name="old", type="run", metadata={"k": 1})
    # The batch's new steps are dated up to a few milliseconds before it runs: later than `existing`.
    await asyncio.sleep(0.02)
    batch = [
        {"id": existing, "threadId": thread_id, "output": "answer", "metadata": {"k": None, "n": 2}},
        *({"id": new_uuid(), "threadId": thread_id, "output": f"turn {index}"} for index in range(5)),
        {"id": new_uuid(), "threadId": thread_id, "metadata": {"gone": None}, "tags": []},
    ]
    first = (await api.ok(INGEST, s=batch))["ingestSteps"]
    assert all(result["error"] is None for result in first)
    assert first[0]["step"]["metadata"] == {"n": 2} and first[-1]["step"]["metadata"] == {}
    before = (await api.ok(THREAD_STEPS, id=thread_id))["thread"]
    await asyncio.sleep(0.01)
    again = (await api.ok(INGEST, s=batch))["ingestSteps"]
    assert again == first
    after = (await api.ok(THREAD_STEPS, id=thread_id))["thread"]
    assert after == before
    assert [edge["node"]["id"] for edge in after["steps"]["edges"]] == [step["id"] for step in batch]


async def test_a_users_batch_keeps_each_steps_access_rules(secured_api: Api) -> None:
    alice = secured_api.with_headers(Authorization=f"Bearer {user_token('alice@example.com')}")
    bob = secured_api.with_headers(Authorization=f"Bearer {user_token('bob@example.com')}")
    bobs_thread, bobs_step = new_uuid(), new_uuid()
    await bob.ok(UPSERT_STEP, input={"id": bobs_step, "threadId": bobs_thread, "output": "bob's"})
    bobs_shared, new_thread = new_uuid(), new_uuid()
    await bob.ok(
        "mutation($id: ID!) { upsertThread(input: {id: $id, metadata: {is_shared: true}}) { id } }",
        id=bobs_shared,
    )
    thread_id, step_id = new_uuid(), new_uuid()
    batch = [
        {"id": step_id, "threadId": thread_id, "name": "a", "type": "run"},  # her new thread
        {"id": step_id, "output": "more"},
        {"id": new_uuid(), "threadId": thread_id, "parentId": step_id},
        {"id": new_uuid(), "threadId": bobs_thread, "output": "into Bob's"},
        {"id": bobs_step, "output": "Bob's step"},
        {"id": new_uuid(), "threadId": thread_id, "parentId": bobs_step},
        {"id": bobs_step, "threadId": new_thread},  # Bob's step, and a thread nobody made
        {"id": step_id, "threadId": new_thread},  # her step, in another thread
        {"id": new_uuid(), "threadId": bobs_shared},
    ]
    results = (await alice.ok(INGEST, s=batch))["ingestSteps"]
    codes = [result["error"]["code"] if result["error"] else None for result in results]
    refused = ["NOT_FOUND", "NOT_FOUND", "BAD_USER_INPUT", "NOT_FOUND", "CONFLICT", "FORBIDDEN"]
    assert codes == [None, None, None, *refused]
    thread = "query($id: ID!) { thread(id: $id) { id } }"
    assert (await alice.ok(thread, id=new_thread))["thread"] is None
    assert results[1]["step"]["output"] == "more" and results[2]["step"]["parentId"] == step_id
    assert (await bob.ok(STEP, id=bobs_step))["step"]["output"] == "bob's"
    assert await step_ids(alice, thread_id) == [step_id, results[2]["id"]]


async def test_concurrent_batches_over_the_same_steps_in_opposite_orders_both_land(api: Api) -> None:
    thread_id = new_uuid()
    ids = [new_uuid() for _ in range(20)]
    await api.ok(INGEST, s=[{"id": step_id, "threadId": thread_id} for step_id in ids])
    batches = [
        [{"id": step_id, "threadId": thread_id, "output": f"{name} {step_id}"} for step_id in order]
        for name, order in (("a", ids), ("b", ids[::-1]))
    ]
    responses = await asyncio.gather(*(api.post(INGEST, {"s": batch}) for batch in batches))
    bodies = [response.json() for response in responses]
    assert all(not body.get("errors") for body in bodies), bodies
    assert all(result["error"] is None for body in bodies for result in body["data"]["ingestSteps"])
    outputs = {
        step["node"]["output"].split()[0]
        for step in (await api.ok(THREAD_STEPS, id=thread_id, first=20))["thread"]["steps"]["edges"]
    }
    assert len(outputs) == 1, "one batch landed whole, then the other"


async def test_a_step_made_in_another_thread_while_a_batch_runs_is_a_conflict_that_leaves_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch decides on where its steps were when it began; a step another writer makes in
    between (here: one the batch is made not to see) is told apart by RETURNING, and the thread
    created for it alone goes away again."""
    elsewhere, step_id, new_thread, good = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    await upsert_step(api, id=step_id, threadId=elsewhere, output="theirs")
    load = steps._Replay.load

    async def stale_load(*args: Any, **kwargs: Any) -> steps._Replay:
        replay = await load(*args, **kwargs)
        replay.steps.pop(step_id, None)
        return replay

    monkeypatch.setattr(steps._Replay, "load", stale_load)
    batch = [
        {"id": step_id, "threadId": new_thread, "output": "moved?"},
        {"id": good, "threadId": elsewhere, "output": "fine"},
    ]
    results = (await api.ok(INGEST, s=batch))["ingestSteps"]
    assert results[0]["error"]["code"] == "CONFLICT" and elsewhere in results[0]["error"]["message"]
    assert results[1]["step"]["output"] == "fine"
    assert (await api.ok("query($id: ID!) { thread(id: $id) { id } }", id=new_thread))["thread"] is None
    assert (await api.ok(STEP, id=step_id))["step"]["output"] == "theirs"


async def test_a_users_new_thread_made_by_another_user_meanwhile_takes_no_step(
    secured_api: Api, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check finds the thread missing; another user makes it before the write (here: the
    check is made not to see it). The write, which creates the thread in the same statement, sees
    that it did not and refuses, retryable. (SQLite lets no writer in between.)"""
    if backend != "postgresql":
        pytest.skip("on SQLite the transaction holds the write lock from its start")
    alice = secured_api.with_headers(Authorization=f"Bearer {user_token('alice@example.com')}")
    bob = secured_api.with_headers(Authorization=f"Bearer {user_token('bob@example.com')}")
    bobs_thread, step_id = new_uuid(), new_uuid()
    await bob.ok(UPSERT_STEP, input={"id": new_uuid(), "threadId": bobs_thread, "output": "bob's"})
    check = steps._load_and_check_user_step_write

    async def blind_check(*args: Any, **kwargs: Any) -> bool:
        await check(*args, **{**kwargs, "thread_id": None})
        return True

    monkeypatch.setattr(steps, "_load_and_check_user_step_write", blind_check)
    error = await alice.error(UPSERT_STEP, input={"id": step_id, "threadId": bobs_thread, "output": "x"})
    assert error["extensions"]["code"] == "CONFLICT" and error["extensions"]["retryable"] is True
    monkeypatch.undo()
    assert (await bob.ok(STEP, id=step_id))["step"] is None
