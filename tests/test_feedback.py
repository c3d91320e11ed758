"""Feedback: one per step, updated in place, removed with what it rates."""

import asyncio

from tests.conftest import Api, new_uuid

UPSERT_FEEDBACK = """
mutation($input: FeedbackInput!) { upsertFeedback(input: $input) { id forId threadId value comment } }"""


async def make_step(api: Api) -> tuple[str, str]:
    thread_id, step_id = new_uuid(), new_uuid()
    await api.ok(
        'mutation($s: ID!, $t: ID!) { upsertStep(input: {id: $s, threadId: $t, output: "x"}) { id } }',
        s=step_id,
        t=thread_id,
    )
    return thread_id, step_id


async def test_second_feedback_on_a_step_updates_the_first(api: Api) -> None:
    thread_id, step_id = await make_step(api)
    first = (await api.ok(UPSERT_FEEDBACK, input={"forId": step_id, "value": 1, "comment": "great"}))[
        "upsertFeedback"
    ]
    assert first["threadId"] == thread_id
    second = (await api.ok(UPSERT_FEEDBACK, input={"forId": step_id, "value": 0}))["upsertFeedback"]
    assert second["id"] == first["id"]
    assert second["value"] == 0 and second["comment"] == "great", "a comment not given is kept"
    third = await api.ok(UPSERT_FEEDBACK, input={"forId": step_id, "value": 0, "comment": None})
    assert third["upsertFeedback"]["comment"] is None
    data = await api.ok(
        "query($t: ID!) { thread(id: $t) { feedbacks { totalCount "
        "edges { node { id value step { id } } } } } }",
        t=thread_id,
    )
    assert data["thread"]["feedbacks"]["totalCount"] == 1
    assert data["thread"]["feedbacks"]["edges"][0]["node"]["step"]["id"] == step_id


async def test_concurrent_ratings_of_one_step_make_one_row(api: Api) -> None:
    thread_id, step_id = await make_step(api)
    responses = await asyncio.gather(
        *(api.post(UPSERT_FEEDBACK, {"input": {"forId": step_id, "value": index % 2}}) for index in range(6))
    )
    assert all(not response.json().get("errors") for response in responses)
    data = await api.ok("query($t: ID!) { thread(id: $t) { feedbacks { totalCount } } }", t=thread_id)
    assert data["thread"]["feedbacks"]["totalCount"] == 1


async def test_feedback_id_of_another_step_is_a_conflict(api: Api) -> None:
    _, step_a = await make_step(api)
    _, step_b = await make_step(api)
    feedback_id = (await api.ok(UPSERT_FEEDBACK, input={"forId": step_a, "value": 1}))["upsertFeedback"]["id"]
    code = await api.code(UPSERT_FEEDBACK, input={"id": feedback_id, "forId": step_b, "value": 1})
    assert code == "CONFLICT"
    step_b_feedback = await api.ok("query($s: ID!) { step(id: $s) { feedback { id } } }", s=step_b)
    assert step_b_feedback["step"]["feedback"] is None


async def test_delete_feedback(api: Api) -> None:
    _, step_id = await make_step(api)
    feedback_id = (await api.ok(UPSERT_FEEDBACK, input={"forId": step_id, "value": 1}))["upsertFeedback"][
        "id"
    ]
    await api.ok("mutation($id: ID!) { deleteFeedback(id: $id) { id } }", id=feedback_id)
    assert (await api.ok("query($s: ID!) { step(id: $s) { feedback { id } } }", s=step_id))["step"][
        "feedback"
    ] is None
    assert (
        await api.code("mutation($id: ID!) { deleteFeedback(id: $id) { id } }", id=feedback_id) == "NOT_FOUND"
    )


async def test_rating_does_not_move_the_thread(api: Api) -> None:
    thread_id, step_id = await make_step(api)
    query = "query($t: ID!) { thread(id: $t) { updatedAt } }"
    before = (await api.ok(query, t=thread_id))["thread"]["updatedAt"]
    await asyncio.sleep(0.01)
    await api.ok(UPSERT_FEEDBACK, input={"forId": step_id, "value": 1})
    assert (await api.ok(query, t=thread_id))["thread"]["updatedAt"] == before
