"""applyThreadChanges: a thread, its steps' deletes and upserts in one transaction, all or nothing."""

from typing import Any

from tests.conftest import TEST_API_KEY, Api, new_uuid, user_token
from tests.test_readme import block

APPLY = """
mutation($input: ThreadChangesInput!) {
  applyThreadChanges(input: $input) {
    thread { id name metadata updatedAt userId }
    steps { id threadId type output createdAt }
    deletedStepIds
  }
}"""
THREAD = """
query($id: ID!) {
  thread(id: $id) {
    id name metadata updatedAt
    steps { edges { node { id type output feedback { value } } } }
  }
}"""
UPSERT_STEP = "mutation($i: StepInput!) { upsertStep(input: $i) { id } }"
UPSERT_FEEDBACK = "mutation($i: FeedbackInput!) { upsertFeedback(input: $i) { id } }"


async def thread_of(api: Api, thread_id: str) -> dict[str, Any] | None:
    thread: dict[str, Any] | None = (await api.ok(THREAD, id=thread_id))["thread"]
    return thread


def step_ids(thread: dict[str, Any] | None) -> list[str]:
    assert thread is not None
    return [edge["node"]["id"] for edge in thread["steps"]["edges"]]


async def test_a_thread_and_its_steps_are_written_together_and_a_retry_changes_nothing(api: Api) -> None:
    thread_id, old, child, first, second = (new_uuid() for _ in range(5))
    await api.ok(UPSERT_STEP, i={"id": old, "threadId": thread_id, "output": "old"})
    await api.ok(UPSERT_STEP, i={"id": child, "threadId": thread_id, "parentId": old, "output": "child"})
    await api.ok(UPSERT_FEEDBACK, i={"forId": child, "value": 1})
    changes = {
        "thread": {"id": thread_id, "name": "Turn 1", "metadata": {"turn": 1}},
        "upsertSteps": [
            {"id": first, "type": "user_message", "output": "hello"},
            {"id": second, "threadId": thread_id, "type": "assistant_message", "output": "hi"},
        ],
        "deleteStepIds": [old, new_uuid()],
    }
    applied = (await api.ok(APPLY, input=changes))["applyThreadChanges"]
    assert applied["thread"]["name"] == "Turn 1" and applied["thread"]["metadata"] == {"turn": 1}
    assert [step["id"] for step in applied["steps"]] == [first, second]
    assert {step["threadId"] for step in applied["steps"]} == {thread_id}
    assert applied["steps"][0]["createdAt"] < applied["steps"][1]["createdAt"]
    assert applied["deletedStepIds"] == [old]
    thread = await thread_of(api, thread_id)
    assert step_ids(thread) == [first, second]  # the deleted step took its child with it
    assert thread is not None and thread["updatedAt"] == applied["thread"]["updatedAt"]

    again = (await api.ok(APPLY, input=changes))["applyThreadChanges"]
    assert again["deletedStepIds"] == []
    assert again["thread"]["updatedAt"] == applied["thread"]["updatedAt"]
    assert again["steps"] == applied["steps"]
    assert await thread_of(api, thread_id) == thread


async def test_one_bad_item_writes_nothing_and_names_the_item(api: Api) -> None:
    thread_id, kept, elsewhere = new_uuid(), new_uuid(), new_uuid()
    await api.ok(UPSERT_STEP, i={"id": kept, "threadId": thread_id, "output": "kept"})
    await api.ok(UPSERT_STEP, i={"id": elsewhere, "threadId": new_uuid(), "output": "elsewhere"})
    before = await thread_of(api, thread_id)
    good = {"id": new_uuid(), "type": "user_message", "output": "lost"}
    cases = [
        # A step of another thread: found only when writing, after the thread and the deletes.
        ({"id": elsewhere, "output": "moved?"}, "CONFLICT", "upsertSteps[1]"),
        ({"id": "not-a-uuid"}, "BAD_USER_INPUT", "upsertSteps[1]"),
        ({"id": new_uuid(), "name": None}, "BAD_USER_INPUT", "upsertSteps[1]"),
        ({"id": new_uuid(), "threadId": new_uuid()}, "BAD_USER_INPUT", "upsertSteps[1]"),
        ({"id": new_uuid(), "output": "nul \u0000"}, "BAD_USER_INPUT", None),  # the whole request
    ]
    for bad, code, item in cases:
        changes = {
            "thread": {"id": thread_id, "name": "renamed"},
            "upsertSteps": [good, bad],
            "deleteStepIds": [kept],
        }
        error = await api.error(APPLY, input=changes)
        assert error["extensions"]["code"] == code, error
        assert error["extensions"].get("item") == item, error
        if item is not None:  # named once, at the start of the message
            assert error["message"].startswith((f"`input.{item}.", f"{item}: ")), error
            assert error["message"].count(item) == 1, error
        assert await thread_of(api, thread_id) == before
    new_thread = new_uuid()
    error = await api.error(APPLY, input={"thread": {"id": new_thread}, "upsertSteps": [good, cases[0][0]]})
    assert error["extensions"]["code"] == "CONFLICT"
    assert await thread_of(api, new_thread) is None
    assert (await api.ok("query($id: ID!) { step(id: $id) { id } }", id=good["id"]))["step"] is None


async def test_a_step_both_upserted_and_deleted_and_oversized_batches_are_refused(api: Api) -> None:
    thread_id, step_id = new_uuid(), new_uuid()
    both = {"thread": {"id": thread_id}, "upsertSteps": [{"id": step_id}], "deleteStepIds": [step_id]}
    assert await api.code(APPLY, input=both) == "BAD_USER_INPUT"
    oversized = {
        "thread": {"id": thread_id},
        "upsertSteps": [{"id": new_uuid()} for _ in range(300)],
        "deleteStepIds": [new_uuid() for _ in range(201)],
    }
    assert await api.code(APPLY, input=oversized) == "BAD_USER_INPUT"
    assert await thread_of(api, thread_id) is None


async def test_users_apply_changes_only_to_their_own_threads(secured_api: Api) -> None:
    backend = secured_api.with_headers(Authorization=f"Bearer {TEST_API_KEY}")
    alice = secured_api.with_headers(Authorization=f"Bearer {user_token('alice@example.com')}")
    bob = secured_api.with_headers(Authorization=f"Bearer {user_token('bob@example.com')}")
    alices, alices_step, shared, bobs_step = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    created = await alice.ok(
        APPLY,
        input={"thread": {"id": alices}, "upsertSteps": [{"id": alices_step, "output": "mine"}]},
    )
    owner = created["applyThreadChanges"]["thread"]["userId"]
    assert owner is not None
    await backend.ok(
        "mutation($i: ThreadInput!) { upsertThread(input: $i) { id } }",
        i={"id": shared, "userId": owner, "metadata": {"is_shared": True}},
    )
    before = await thread_of(backend, alices)

    # Another user's thread: as if it did not exist (the same answer as upsertThread's).
    error = await bob.error(APPLY, input={"thread": {"id": alices}, "deleteStepIds": [alices_step]})
    missing = await bob.error(
        "mutation($i: ThreadInput!) { upsertThread(input: $i) { id } }", i={"id": alices}
    )
    assert error["extensions"]["code"] == "NOT_FOUND" and error["message"] == missing["message"]
    # A shared thread is read-only for others.
    assert await bob.code(APPLY, input={"thread": {"id": shared}}) == "FORBIDDEN"
    # Deleting through one's own thread touches only that thread's steps.
    own = await bob.ok(
        APPLY,
        input={
            "thread": {"id": new_uuid()},
            "upsertSteps": [{"id": bobs_step, "output": "bob"}],
            "deleteStepIds": [alices_step],
        },
    )
    assert own["applyThreadChanges"]["deletedStepIds"] == []
    # Nor can a user's batch take over another user's step.
    steal = await bob.error(APPLY, input={"thread": {"id": new_uuid()}, "upsertSteps": [{"id": alices_step}]})
    assert steal["extensions"]["code"] == "NOT_FOUND" and steal["extensions"]["item"] == "upsertSteps[0]"
    assert await thread_of(backend, alices) == before


async def test_the_readme_example_runs(api: Api) -> None:
    turn = block("graphql", "mutation Turn")
    written = (await api.ok(turn))["applyThreadChanges"]
    assert [step["id"] for step in written["steps"]] == [
        "0193a1b2-0000-7000-8000-0000000000c1",
        "0193a1b2-0000-7000-8000-0000000000c2",
    ]
    assert written["deletedStepIds"] == []
    assert (await api.ok(turn))["applyThreadChanges"] == written
