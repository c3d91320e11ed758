"""A thread's changes in one transaction: the thread's upsert, its steps' deletes and upserts, all
or nothing. For backends that keep a conversation's state in the gateway and must never leave a
half-written turn (Chatsky's context storage, `gateway.chatsky`)."""

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.data import steps, threads
from gateway.data.access import Access
from gateway.data.common import from_row
from gateway.data.steps import StepRow, StepWrite
from gateway.data.threads import ThreadChanges
from gateway.errors import GatewayError
from gateway.tables import Thread, threads_table


class ItemError(Exception):
    """The item at `index` of the batch's `upsertSteps` failed (with `error`): nothing is written."""

    def __init__(self, index: int, error: GatewayError) -> None:
        super().__init__(error.message)
        self.index = index
        self.error = error


@dataclass(frozen=True)
class AppliedChanges:
    thread: Thread
    steps: list[StepRow]  # in the order of the writes
    deleted_step_ids: list[str]  # the ids named that were steps of the thread
    object_keys: list[str]  # stored objects of the deleted steps' elements


async def apply_thread_changes(
    session: AsyncSession,
    *,
    thread_id: str,
    thread_changes: ThreadChanges,
    writes: Sequence[StepWrite],
    delete_step_ids: Sequence[str],
    access: Access,
    now: str,
) -> AppliedChanges:
    """Upsert the thread (with the access checks of `upsert_thread`: a user writes only their own
    threads), delete the steps named that are in it (with their descendants), then upsert the steps
    (as `ingest_steps`, each to this thread). The first step that fails raises `ItemError`, and the
    caller's transaction writes nothing. Statements are bounded by the batch's shape, not its length.
    """
    await threads.upsert_thread(session, thread_id=thread_id, changes=thread_changes, access=access, now=now)
    deleted, object_keys = await steps.delete_steps_of_thread(
        session, thread_id=thread_id, step_ids=delete_step_ids, access=access
    )
    outcomes = (
        await steps.ingest_steps(session, writes=writes, access=access, written_threads={thread_id})
        if writes
        else []
    )
    written: list[StepRow] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, GatewayError):
            raise ItemError(index, outcome)
        written.append(outcome)
    # The steps' writes moved the thread's updatedAt (a trigger): answer with the row as it is now.
    current = (
        await session.execute(sa.select(*threads_table.c).where(threads_table.c.id == thread_id))
    ).one()
    return AppliedChanges(from_row(Thread, current), written, deleted, object_keys)
